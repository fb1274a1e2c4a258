package kmsadapter

// SetTestHook makes CreateKey call hook between its steps ("created-record",
// "generated"); an error stops CreateKey there as a crash would.
func (c *Client) SetTestHook(hook func(step string) error) { c.testHook = hook }

// BlobHeaderLen exposes the header length for tests.
const BlobHeaderLen = blobHeaderLen

// EncodeContext exposes the encryption context encoding for tests.
var EncodeContext = encodeContext

package kmsadapter_test

import (
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/stretchr/testify/require"
)

func TestEncryptDecryptRoundTrip(t *testing.T) {
	e := newEnv(t)
	id := e.createKey("", "")
	out, err := e.c.Encrypt(bg, &kms.EncryptInput{KeyId: str(id), Plaintext: []byte("hello"), EncryptionContext: map[string]string{"a": "b"}})
	require.NoError(t, err)
	dec, err := e.c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: out.CiphertextBlob, EncryptionContext: map[string]string{"a": "b"}})
	require.NoError(t, err)
	require.Equal(t, "hello", string(dec.Plaintext))
	_, err = e.c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: out.CiphertextBlob, EncryptionContext: map[string]string{"a": "c"}})
	require.Equal(t, "InvalidCiphertextException", code(err), "%v", err)
}

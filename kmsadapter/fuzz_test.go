package kmsadapter_test

import (
	"bytes"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/stretchr/testify/require"
)

// mutate applies a mutation script to a valid blob, so that the committed
// seed corpus means the same against any key: each 3 bytes (op, pos, val)
// flip, truncate, insert or delete at pos/256 of the blob. A script
// starting with 0xFF is itself the blob.
func mutate(valid, script []byte) []byte {
	if len(script) > 0 && script[0] == 0xFF {
		return script[1:]
	}
	b := bytes.Clone(valid)
	for i := 0; i+2 < len(script); i += 3 {
		op, val := script[i]%4, script[i+2]
		pos := int(script[i+1]) * len(b) / 256
		switch {
		case op == 0 && pos < len(b):
			b[pos] ^= val | 1
		case op == 1:
			b = b[:pos]
		case op == 2:
			b = append(b[:pos], append([]byte{val}, b[pos:]...)...)
		case op == 3 && pos < len(b):
			b = append(b[:pos], b[pos+1:]...)
		}
	}
	return b
}

// FuzzDecrypt feeds mutated ciphertext blobs to Decrypt: they never panic
// and always fail with InvalidCiphertextException (ValidationException
// when empty or longer than 6144 bytes, as AWS checks the length first).
func FuzzDecrypt(f *testing.F) {
	e := newEnv(f)
	id := e.createKey("", "")
	ec := map[string]string{"purpose": "fuzz"}
	out, err := e.c.Encrypt(bg, &kms.EncryptInput{KeyId: str(id), Plaintext: []byte("fuzzing the blob"), EncryptionContext: ec})
	require.NoError(f, err)
	valid := out.CiphertextBlob
	f.Add([]byte{})             // the valid blob itself
	f.Add([]byte{0, 0, 0x02})   // the format version
	f.Add([]byte{0, 10, 1})     // the key ID
	f.Add([]byte{0, 120, 1})    // the key version
	f.Add([]byte{0, 180, 0x80}) // the IV
	f.Add([]byte{0, 255, 1})    // the tag
	f.Add([]byte{1, 128, 0})    // truncated
	f.Add([]byte{2, 30, 0})     // a byte inserted in the header
	f.Add([]byte{3, 5, 0})      // a byte deleted from the header
	f.Add([]byte{0xFF, 1})      // one byte
	f.Add(append([]byte{0xFF}, make([]byte, 6145)...))
	f.Fuzz(func(t *testing.T, script []byte) {
		blob := mutate(valid, script)
		_, err := e.c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: blob, EncryptionContext: ec})
		switch {
		case bytes.Equal(blob, valid):
			require.NoError(t, err)
		case len(blob) == 0 || len(blob) > 6144:
			require.Equal(t, "ValidationException", code(err), "%v", err)
		default:
			require.Equal(t, "InvalidCiphertextException", code(err), "%v", err)
		}
	})
}

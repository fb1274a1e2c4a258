package kmsadapter_test

import (
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/stretchr/testify/require"
)

// TestConcurrentUse encrypts and decrypts from several goroutines while
// the key is rotated, tagged and re-described: under -race, and every
// ciphertext made along the way decrypts.
func TestConcurrentUse(t *testing.T) {
	e := newEnv(t)
	id := e.createKey("", "")
	_, err := e.c.CreateAlias(bg, &kms.CreateAliasInput{AliasName: str("alias/busy"), TargetKeyId: str(id)})
	require.NoError(t, err)
	const workers, perWorker, rotations = 4, 40, 5
	var wg sync.WaitGroup
	blobs := make(chan []byte, workers*perWorker)
	errs := make(chan error, workers*perWorker+2*rotations)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perWorker {
				out, err := e.c.Encrypt(bg, &kms.EncryptInput{KeyId: str("alias/busy"), Plaintext: []byte("concurrent")})
				if err != nil {
					errs <- err
					return
				}
				blobs <- out.CiphertextBlob
				if _, err := e.c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: out.CiphertextBlob}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range rotations {
			if _, err := e.c.RotateKeyOnDemand(bg, &kms.RotateKeyOnDemandInput{KeyId: str(id)}); err != nil {
				errs <- err
			}
			if _, err := e.c.TagResource(bg, &kms.TagResourceInput{KeyId: str(id), Tags: []types.Tag{{TagKey: str("round"), TagValue: str(string(rune('a' + i)))}}}); err != nil {
				errs <- err
			}
		}
	}()
	wg.Wait()
	close(errs)
	close(blobs)
	for err := range errs {
		require.NoError(t, err)
	}
	versions := map[uint32]bool{}
	for b := range blobs {
		versions[blobVersion(b)] = true
		out, err := e.c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: b})
		require.NoError(t, err)
		require.Equal(t, "concurrent", string(out.Plaintext))
	}
	rots, err := e.c.ListKeyRotations(bg, &kms.ListKeyRotationsInput{KeyId: str(id)})
	require.NoError(t, err)
	require.Len(t, rots.Rotations, rotations)
	t.Logf("ciphertexts under %d key versions", len(versions))
}

// Command envelope encrypts a file the way S3 client-side encryption
// does: a fresh data key from GenerateDataKey encrypts the file locally
// with AES-256-GCM; only the data key's encrypted copy is stored beside
// the data, and only the KMS key (here: in HSMs) can turn it back into a
// key. No cloud-held key ever sees the data or the data key in plaintext.
//
// File format (all lengths big-endian uint32):
//
//	"HKEV1"  magic and version
//	len, encrypted data key (a kmsadapter ciphertext blob)
//	12-byte nonce
//	AES-256-GCM ciphertext of the file, tag appended
//
// The file name is bound to both layers: it is the KMS encryption
// context of the data key and the GCM additional data of the content.
//
//	go run ./examples/envelope [file]
//
// Without a file it encrypts a sample. The KMS is a throwaway SoftHSM2
// token.
package main

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/kmsadapter"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
)

const magic = "HKEV1"

// encryptFile seals plaintext for name under the KMS key keyID.
func encryptFile(ctx context.Context, api kmsadapter.API, keyID, name string, plaintext []byte) ([]byte, error) {
	dk, err := api.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{
		KeyId: aws.String(keyID), KeySpec: types.DataKeySpecAes256,
		EncryptionContext: map[string]string{"file": name},
	})
	if err != nil {
		return nil, err
	}
	defer clear(dk.Plaintext)
	gcm, err := newGCM(dk.Plaintext)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out := []byte(magic)
	out = binary.BigEndian.AppendUint32(out, uint32(len(dk.CiphertextBlob)))
	out = append(out, dk.CiphertextBlob...)
	out = append(out, nonce...)
	return gcm.Seal(out, nonce, plaintext, []byte(name)), nil
}

// decryptFile opens what encryptFile sealed.
func decryptFile(ctx context.Context, api kmsadapter.API, name string, sealed []byte) ([]byte, error) {
	bad := errors.New("not an envelope-encrypted file")
	if len(sealed) < len(magic)+4 || string(sealed[:len(magic)]) != magic {
		return nil, bad
	}
	rest := sealed[len(magic):]
	n := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	if uint64(len(rest)) < uint64(n)+12 {
		return nil, bad
	}
	blob, rest := rest[:n], rest[n:]
	dk, err := api.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: blob, EncryptionContext: map[string]string{"file": name}})
	if err != nil {
		return nil, err
	}
	defer clear(dk.Plaintext)
	gcm, err := newGCM(dk.Plaintext)
	if err != nil {
		return nil, err
	}
	return gcm.Open(nil, rest[:12], rest[12:], []byte(name))
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func main() {
	if err := run(context.Background()); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context) (err error) {
	name, data := "sample.txt", bytes.Repeat([]byte("quarterly numbers, confidential\n"), 1000)
	if len(os.Args) > 1 {
		name = filepath.Base(os.Args[1])
		if data, err = os.ReadFile(os.Args[1]); err != nil {
			return err
		}
	}
	dir, err := os.MkdirTemp("", "hsmkms-envelope-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sh, err := softhsmtest.NewCluster(dir, 1)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, sh.Close()) }()
	m := sh.Members[0]
	tok, err := hsm.Open(ctx, m.Config(), hsm.WithInterceptor(m.Faults))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, tok.Close()) }()
	cfg := kmsadapter.DefaultConfig()
	cfg.StorePath = filepath.Join(dir, "kms.db")
	var api kmsadapter.API
	client, err := kmsadapter.New(tok, nil, cfg)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, client.Close()) }()
	api = client

	key, err := api.CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("file encryption")})
	if err != nil {
		return err
	}
	sealed, err := encryptFile(ctx, api, *key.KeyMetadata.KeyId, name, data)
	if err != nil {
		return err
	}
	out := filepath.Join(dir, name+".hkev")
	if err := os.WriteFile(out, sealed, 0o600); err != nil {
		return err
	}
	fmt.Printf("%s: %d bytes -> %d bytes (%d of them the encrypted data key)\n", name, len(data), len(sealed), binary.BigEndian.Uint32(sealed[len(magic):]))

	back, err := os.ReadFile(out)
	if err != nil {
		return err
	}
	plain, err := decryptFile(ctx, api, name, back)
	if err != nil {
		return err
	}
	fmt.Printf("decrypted: identical to the original: %v\n", bytes.Equal(plain, data))

	// Renaming the file breaks both bindings.
	_, err = decryptFile(ctx, api, "other.txt", back)
	var badCT *types.InvalidCiphertextException
	fmt.Printf("under another name: InvalidCiphertextException: %v\n", errors.As(err, &badCT))
	return nil
}

package cluster

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"slices"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
)

// kwpWrap is AES key wrap with padding (RFC 5649), for this test.
func kwpWrap(t *testing.T, kek, pt []byte) []byte {
	block, err := aes.NewCipher(kek)
	if err != nil {
		t.Fatal(err)
	}
	var a [8]byte
	binary.BigEndian.PutUint32(a[:4], 0xA65959A6)
	binary.BigEndian.PutUint32(a[4:], uint32(len(pt)))
	padded := make([]byte, (len(pt)+7)/8*8)
	copy(padded, pt)
	n := len(padded) / 8
	if n == 1 {
		out := make([]byte, 16)
		block.Encrypt(out, append(a[:], padded...))
		return out
	}
	var b [16]byte
	for j := 0; j < 6; j++ {
		for i := 0; i < n; i++ {
			copy(b[:8], a[:])
			copy(b[8:], padded[i*8:(i+1)*8])
			block.Encrypt(b[:], b[:])
			binary.BigEndian.PutUint64(a[:], binary.BigEndian.Uint64(b[:8])^uint64(n*j+i+1))
			copy(padded[i*8:], b[8:])
		}
	}
	return append(a[:], padded...)
}

// TestUnwrapPrivateKeyReplicates: a PKCS#8 private key imported with
// RSA_AES_KEY_WRAP, without its public key, is unwrapped on one member,
// its public key derived there, and the pair copied to the others; every
// member then has the original's public key and signs with it. Material
// of the wrong spec is left nowhere.
func TestUnwrapPrivateKeyReplicates(t *testing.T) {
	e := newEnv(t, 3, nil)
	ctx := context.Background()
	if _, err := e.c.GenerateKey(ctx, "import-key", hsm.RSA2048, hsm.KeyOptions{Usage: hsm.UsageWrap}); err != nil {
		t.Fatal(err)
	}
	der, err := e.c.PublicKey(ctx, "import-key")
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		t.Fatal(err)
	}
	wrap := func(key any) []byte {
		p8, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		eph := make([]byte, 32)
		_, _ = rand.Read(eph)
		we, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, pk.(*rsa.PublicKey), eph, nil)
		if err != nil {
			t.Fatal(err)
		}
		return append(we, kwpWrap(t, eph, p8)...)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	w := hsm.Wrapping{Mechanism: hsm.RSAAESKeyWrap, Hash: crypto.SHA1}
	digest := sha256.Sum256([]byte("imported"))
	for _, c := range []struct {
		id   hsm.KeyID
		spec hsm.KeySpec
		key  crypto.Signer
		sc   hsm.SigningScheme
	}{
		{"imported-rsa", hsm.RSA2048, rsaKey, hsm.PKCS1v15},
		{"imported-ec", hsm.ECP256, ecKey, hsm.ECDSA},
	} {
		info, err := e.c.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "import-key", Wrapping: w, Wrapped: wrap(c.key),
			ID: c.id, Spec: c.spec, Options: hsm.KeyOptions{Usage: hsm.UsageSign}})
		if err != nil {
			t.Fatal(err)
		}
		if info.Spec != c.spec || !info.Extractable {
			t.Fatalf("%s: %+v", c.id, info)
		}
		want, _ := x509.MarshalPKIXPublicKey(c.key.Public())
		for i := range 3 {
			tok := e.c.members[i].token()
			got, err := tok.PublicKey(ctx, c.id)
			if err != nil {
				t.Fatalf("member %d: %v", i, err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("member %d: %s has another public key", i, c.id)
			}
			sig, err := tok.Sign(ctx, c.id, c.sc, crypto.SHA256, digest[:])
			if err != nil {
				t.Fatalf("member %d: %v", i, err)
			}
			switch k := c.key.Public().(type) {
			case *rsa.PublicKey:
				err = rsa.VerifyPKCS1v15(k, crypto.SHA256, digest[:], sig)
			case *ecdsa.PublicKey:
				if !ecdsa.VerifyASN1(k, digest[:], sig) {
					err = errors.New("signature does not verify")
				}
			}
			if err != nil {
				t.Fatalf("member %d: %v", i, err)
			}
		}
	}
	_, err = e.c.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "import-key", Wrapping: w, Wrapped: wrap(p384),
		ID: "wrong", Spec: hsm.ECP256, Options: hsm.KeyOptions{Usage: hsm.UsageSign}})
	if !errors.Is(err, hsm.ErrInvalidInput) {
		t.Fatalf("P-384 material as EC_P256: %v", err)
	}
	for i := range 3 {
		if slices.Contains(e.tokenKeys(i), "wrong") {
			t.Fatalf("member %d holds the refused key", i)
		}
	}
	e.requireStates(Healthy, Healthy, Healthy)
	// The ID of a refused import is free again.
	if _, err := e.c.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "import-key", Wrapping: w, Wrapped: wrap(ecKey),
		ID: "wrong", Spec: hsm.ECP256, Options: hsm.KeyOptions{Usage: hsm.UsageSign}}); err != nil {
		t.Fatal(err)
	}
}

package cluster

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"slices"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
)

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
		out, err := softhsmtest.RSAAESKeyWrap(pk.(*rsa.PublicKey), p8)
		if err != nil {
			t.Fatal(err)
		}
		return out
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

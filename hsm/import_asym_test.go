package hsm_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"
)

// rsaAESWrap wraps material as AWS KMS's RSA_AES_KEY_WRAP_SHA_1 wants it:
// an ephemeral AES key under RSA-OAEP, then the material under it with AES
// key wrap with padding.
func rsaAESWrap(t *testing.T, pub *rsa.PublicKey, material []byte) []byte {
	t.Helper()
	out, err := softhsmtest.RSAAESKeyWrap(pub, material)
	require.NoError(t, err)
	return out
}

// TestUnwrapPrivateKey: a PKCS#8 private key imported without its public
// key gets a public key derived inside the token, the original's; material
// of another size or curve than the spec is ErrInvalidInput and leaves
// nothing behind.
func TestUnwrapPrivateKey(t *testing.T) {
	ctx := context.Background()
	tok := open(t, member(t), nil)
	wrapPub := importWrappingKey(t, tok)
	rsaAES := hsm.Wrapping{Mechanism: hsm.RSAAESKeyWrap, Hash: crypto.SHA1}

	rsa2048, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	rsa3072, err := rsa.GenerateKey(rand.Reader, 3072)
	require.NoError(t, err)
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	require.NoError(t, err)
	p521, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	require.NoError(t, err)

	for _, c := range []struct {
		name string
		spec hsm.KeySpec
		key  crypto.Signer
		sc   hsm.SigningScheme
	}{
		{"rsa2048", hsm.RSA2048, rsa2048, hsm.PKCS1v15},
		{"rsa3072", hsm.RSA3072, rsa3072, hsm.PKCS1v15},
		{"p256", hsm.ECP256, p256, hsm.ECDSA},
		{"p384", hsm.ECP384, p384, hsm.ECDSA},
		{"p521", hsm.ECP521, p521, hsm.ECDSA},
	} {
		t.Run(c.name, func(t *testing.T) {
			p8, err := x509.MarshalPKCS8PrivateKey(c.key)
			require.NoError(t, err)
			id := hsm.KeyID("imported-" + c.name)
			info, err := tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "import", Wrapping: rsaAES, Wrapped: rsaAESWrap(t, wrapPub, p8), ID: id, Spec: c.spec,
				Options: hsm.KeyOptions{Usage: hsm.UsageSign}})
			require.NoError(t, err)
			require.Equal(t, c.spec, info.Spec)
			want, err := x509.MarshalPKIXPublicKey(c.key.Public())
			require.NoError(t, err)
			got, err := tok.PublicKey(ctx, id)
			require.NoError(t, err)
			require.Equal(t, want, got, "the derived public key is the original's")

			digest := sha256.Sum256([]byte("imported"))
			sig, err := tok.Sign(ctx, id, c.sc, crypto.SHA256, digest[:])
			require.NoError(t, err)
			switch k := c.key.Public().(type) {
			case *rsa.PublicKey:
				require.NoError(t, rsa.VerifyPKCS1v15(k, crypto.SHA256, digest[:], sig))
			case *ecdsa.PublicKey:
				require.True(t, ecdsa.VerifyASN1(k, digest[:], sig))
			}
			info, err = tok.Describe(ctx, id)
			require.NoError(t, err)
			require.False(t, info.Extractable)
		})
	}

	// Material of another size or curve than the spec, and material of
	// another key type, are refused and leave nothing.
	for _, c := range []struct {
		name string
		spec hsm.KeySpec
		key  any
	}{
		{"rsa3072-as-2048", hsm.RSA2048, rsa3072},
		{"p384-as-p256", hsm.ECP256, p384},
		{"p256-as-p521", hsm.ECP521, p256},
	} {
		t.Run(c.name, func(t *testing.T) {
			p8, err := x509.MarshalPKCS8PrivateKey(c.key)
			require.NoError(t, err)
			id := hsm.KeyID("wrong-" + c.name)
			_, err = tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "import", Wrapping: rsaAES, Wrapped: rsaAESWrap(t, wrapPub, p8), ID: id, Spec: c.spec,
				Options: hsm.KeyOptions{Usage: hsm.UsageSign}})
			require.ErrorIs(t, err, hsm.ErrInvalidInput)
			_, err = tok.Describe(ctx, id)
			require.ErrorIs(t, err, hsm.ErrKeyNotFound)
		})
	}
	t.Run("ec-as-rsa", func(t *testing.T) {
		p8, err := x509.MarshalPKCS8PrivateKey(p256)
		require.NoError(t, err)
		_, err = tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "import", Wrapping: rsaAES, Wrapped: rsaAESWrap(t, wrapPub, p8), ID: "wrong-type", Spec: hsm.RSA2048,
			Options: hsm.KeyOptions{Usage: hsm.UsageSign}})
		require.ErrorIs(t, err, hsm.ErrInvalidInput)
		_, err = tok.Describe(ctx, "wrong-type")
		require.ErrorIs(t, err, hsm.ErrKeyNotFound)
	})
	t.Run("oaep-ec", func(t *testing.T) {
		p8, err := x509.MarshalPKCS8PrivateKey(p256)
		require.NoError(t, err)
		blob, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, wrapPub, p8, nil)
		require.NoError(t, err)
		_, err = tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "import", Wrapping: hsm.Wrapping{Mechanism: hsm.RSAOAEP, Hash: crypto.SHA1}, Wrapped: blob, ID: "oaep-ec", Spec: hsm.ECP256,
			Options: hsm.KeyOptions{Usage: hsm.UsageSign}})
		require.NoError(t, err)
		want, err := x509.MarshalPKIXPublicKey(p256.Public())
		require.NoError(t, err)
		got, err := tok.PublicKey(ctx, "oaep-ec")
		require.NoError(t, err)
		require.Equal(t, want, got)
	})
	// The token holds the wrapping key and the six imports only.
	keys, err := tok.ListKeys(ctx)
	require.NoError(t, err)
	require.Len(t, keys, 7)
}

// TestUnwrapPairCheckWithoutSigning: a private key imported with a public
// key is checked against it even when the pair may not sign: an RSA
// key's modulus and exponent are compared, an EC key's curve is compared
// and a session copy of the pair that may sign proves the point. A public
// key of another pair is ErrInvalidInput and leaves nothing behind; the
// right one is kept.
func TestUnwrapPairCheckWithoutSigning(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, nil)
	wrapPub := importWrappingKey(t, tok)
	p, s := secondClient(t, m, tok)
	rsaAES := hsm.Wrapping{Mechanism: hsm.RSAAESKeyWrap, Hash: crypto.SHA1}

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	rsaOther, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	p256Other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	require.NoError(t, err)
	spki := func(k crypto.Signer) []byte {
		der, err := x509.MarshalPKIXPublicKey(k.Public())
		require.NoError(t, err)
		return der
	}
	wrapped := func(k crypto.Signer) []byte {
		p8, err := x509.MarshalPKCS8PrivateKey(k)
		require.NoError(t, err)
		return rsaAESWrap(t, wrapPub, p8)
	}

	for _, usage := range []hsm.Usage{hsm.UsageWrap, hsm.UsageEncrypt} {
		for _, c := range []struct {
			name      string
			spec      hsm.KeySpec
			key, pubk crypto.Signer
		}{
			{"rsa-other-public-key", hsm.RSA2048, rsaKey, rsaOther},
			{"p256-other-public-key", hsm.ECP256, p256, p256Other},
			{"p384-material-as-p256", hsm.ECP256, p384, p256},
		} {
			id := hsm.KeyID(fmt.Sprintf("%s-%d", c.name, usage))
			_, err := tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "import", Wrapping: rsaAES, Wrapped: wrapped(c.key), ID: id, Spec: c.spec,
				PublicKey: spki(c.pubk), Options: hsm.KeyOptions{Usage: usage}})
			require.ErrorIs(t, err, hsm.ErrInvalidInput, "%s, usage %d: a mismatched pair was accepted", c.name, usage)
			_, err = tok.Describe(ctx, id)
			require.ErrorIs(t, err, hsm.ErrKeyNotFound)
		}
		for _, c := range []struct {
			name string
			spec hsm.KeySpec
			key  crypto.Signer
		}{{"rsa", hsm.RSA2048, rsaKey}, {"p256", hsm.ECP256, p256}} {
			id := hsm.KeyID(fmt.Sprintf("%s-%d", c.name, usage))
			info, err := tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "import", Wrapping: rsaAES, Wrapped: wrapped(c.key), ID: id, Spec: c.spec,
				PublicKey: spki(c.key), Options: hsm.KeyOptions{Usage: usage}})
			require.NoError(t, err, "%s, usage %d", c.name, usage)
			require.Equal(t, usage, info.Usage)
			got, err := tok.PublicKey(ctx, id)
			require.NoError(t, err)
			require.Equal(t, spki(c.key), got)
		}
	}
	require.Empty(t, findObjects(t, p, s, pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)), "no session object is left")
	keys, err := tok.ListKeys(ctx)
	require.NoError(t, err)
	require.Len(t, keys, 5, "the wrapping key and the four good imports only")
}

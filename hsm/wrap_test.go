package hsm_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestTrustedWrapping: keys created extractable leave the token only
// wrapped, and only under a wrapping key the SO marked trusted; they come
// back through UnwrapKey as working keys.
func TestTrustedWrapping(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, nil)
	pad := hsm.Wrapping{Mechanism: hsm.AESKeyWrapPad}

	kek, err := tok.CreateTrustedWrappingKey(ctx, "kek", m.SOPIN(), hsm.KeyOptions{})
	require.NoError(t, err)
	assert.True(t, kek.Trusted)
	got, err := tok.Describe(ctx, "kek")
	require.NoError(t, err)
	assert.True(t, got.Trusted, "the token reports CKA_TRUSTED")
	assert.Equal(t, hsm.UsageWrap, got.Usage)
	assert.False(t, got.Extractable)
	keys, err := tok.ListKeys(ctx)
	require.NoError(t, err)
	require.Len(t, keys, 1, "the SO's public original was destroyed")

	_, err = tok.GenerateKey(ctx, "plain-kek", hsm.AES256, hsm.KeyOptions{Usage: hsm.UsageWrap})
	require.NoError(t, err)
	_, err = tok.GenerateKey(ctx, "aes", hsm.AES256, hsm.KeyOptions{Extractable: true})
	require.NoError(t, err)
	_, err = tok.GenerateKey(ctx, "ec", hsm.ECP256, hsm.KeyOptions{Extractable: true})
	require.NoError(t, err)
	_, err = tok.GenerateKey(ctx, "rsa", hsm.RSA2048, hsm.KeyOptions{Extractable: true})
	require.NoError(t, err)
	_, err = tok.GenerateKey(ctx, "mac", hsm.HMAC384, hsm.KeyOptions{Extractable: true})
	require.NoError(t, err)

	// Under an untrusted wrapping key, wrap-with-trusted refuses.
	_, err = tok.WrapKey(ctx, "plain-kek", "aes", pad)
	require.ErrorIs(t, err, hsm.ErrWrongKeyType)

	// AES: wrap, destroy, unwrap, and the old ciphertext decrypts.
	ct, iv, err := tok.EncryptGCM(ctx, "aes", nil, []byte("kept"), nil)
	require.NoError(t, err)
	blob, err := tok.WrapKey(ctx, "kek", "aes", pad)
	require.NoError(t, err)
	require.NoError(t, tok.DestroyKey(ctx, "aes"))
	info, err := tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "kek", Wrapping: pad, Wrapped: blob, ID: "aes", Spec: hsm.AES256, Options: hsm.KeyOptions{Extractable: true}})
	require.NoError(t, err)
	assert.Equal(t, hsm.AES256, info.Spec)
	pt, err := tok.DecryptGCM(ctx, "aes", iv, ct, nil)
	require.NoError(t, err)
	assert.Equal(t, "kept", string(pt))
	d, err := tok.Describe(ctx, "aes")
	require.NoError(t, err)
	assert.Equal(t, hsm.AES256, d.Spec, "the spec survives an unwrap")
	assert.True(t, d.Extractable)

	// HMAC: the copy computes the same MAC.
	mac, err := tok.MAC(ctx, "mac", crypto.SHA384, []byte("m"))
	require.NoError(t, err)
	blob, err = tok.WrapKey(ctx, "kek", "mac", pad)
	require.NoError(t, err)
	_, err = tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "kek", Wrapping: pad, Wrapped: blob, ID: "mac-copy", Spec: hsm.HMAC384})
	require.NoError(t, err)
	require.NoError(t, tok.VerifyMAC(ctx, "mac-copy", crypto.SHA384, []byte("m"), mac))

	// Key pairs: the copy signs, Go verifies with the original public key.
	for _, c := range []struct {
		id   hsm.KeyID
		spec hsm.KeySpec
		sc   hsm.SigningScheme
	}{{"ec", hsm.ECP256, hsm.ECDSA}, {"rsa", hsm.RSA2048, hsm.PSS}} {
		pub, err := tok.PublicKey(ctx, c.id)
		require.NoError(t, err)
		blob, err := tok.WrapKey(ctx, "kek", c.id, pad)
		require.NoError(t, err)
		copyID := c.id + "-copy"
		_, err = tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "kek", Wrapping: pad, Wrapped: blob, ID: copyID, Spec: c.spec, PublicKey: pub})
		require.NoError(t, err)
		digest := sha256.Sum256([]byte("replicated"))
		sig, err := tok.Sign(ctx, copyID, c.sc, crypto.SHA256, digest[:])
		require.NoError(t, err)
		pk, err := x509.ParsePKIXPublicKey(pub)
		require.NoError(t, err)
		switch k := pk.(type) {
		case *ecdsa.PublicKey:
			assert.True(t, ecdsa.VerifyASN1(k, digest[:], sig))
		case *rsa.PublicKey:
			assert.NoError(t, rsa.VerifyPSS(k, crypto.SHA256, digest[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}))
		}
		copyPub, err := tok.PublicKey(ctx, copyID)
		require.NoError(t, err)
		assert.Equal(t, pub, copyPub)
	}

	// A public key that does not belong to the wrapped private key is
	// refused, and nothing is left behind.
	_, err = tok.GenerateKey(ctx, "ec-other", hsm.ECP256, hsm.KeyOptions{})
	require.NoError(t, err)
	otherPub, err := tok.PublicKey(ctx, "ec-other")
	require.NoError(t, err)
	blob, err = tok.WrapKey(ctx, "kek", "ec", pad)
	require.NoError(t, err)
	_, err = tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "kek", Wrapping: pad, Wrapped: blob, ID: "mismatch", Spec: hsm.ECP256, PublicKey: otherPub})
	require.ErrorIs(t, err, hsm.ErrInvalidInput)
	_, err = tok.Describe(ctx, "mismatch")
	require.ErrorIs(t, err, hsm.ErrKeyNotFound)
}

// TestTransportKey: the SO imports another token's RSA public key as
// trusted, and an extractable trusted wrapping key travels under it to the
// other token, which unwraps it inside the HSM.
func TestTransportKey(t *testing.T) {
	ctx := context.Background()
	c := softhsmtestNew(t, 2)
	donor, joiner := open(t, c[0], nil), open(t, c[1], nil)

	_, err := donor.CreateTrustedWrappingKey(ctx, "kek", c[0].SOPIN(), hsm.KeyOptions{Extractable: true})
	require.NoError(t, err)
	_, err = joiner.GenerateKey(ctx, "transport", hsm.RSA2048, hsm.KeyOptions{Usage: hsm.UsageWrap})
	require.NoError(t, err)
	spki, err := joiner.PublicKey(ctx, "transport")
	require.NoError(t, err)
	require.NoError(t, donor.ImportTrustedPublicKey(ctx, "transport", hsm.RSA2048, spki, c[0].SOPIN()))
	tr, err := donor.Describe(ctx, "transport")
	require.NoError(t, err)
	assert.True(t, tr.Trusted)

	oaep := hsm.Wrapping{Mechanism: hsm.RSAOAEP, Hash: crypto.SHA1}
	blob, err := donor.WrapKey(ctx, "transport", "kek", oaep)
	require.NoError(t, err)
	_, err = joiner.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "transport", Wrapping: oaep, Wrapped: blob, ID: "kek", Spec: hsm.AES256, Options: hsm.KeyOptions{Usage: hsm.UsageWrap}})
	require.NoError(t, err)

	// Both now hold the same wrapping key: a key wrapped by the donor
	// unwraps on the joiner and decrypts the donor's ciphertext.
	_, err = donor.GenerateKey(ctx, "data", hsm.AES256, hsm.KeyOptions{Extractable: true})
	require.NoError(t, err)
	ct, iv, err := donor.EncryptGCM(ctx, "data", nil, []byte("across HSMs"), nil)
	require.NoError(t, err)
	pad := hsm.Wrapping{Mechanism: hsm.AESKeyWrapPad}
	w, err := donor.WrapKey(ctx, "kek", "data", pad)
	require.NoError(t, err)
	_, err = joiner.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "kek", Wrapping: pad, Wrapped: w, ID: "data", Spec: hsm.AES256})
	require.NoError(t, err)
	pt, err := joiner.DecryptGCM(ctx, "data", iv, ct, nil)
	require.NoError(t, err)
	assert.Equal(t, "across HSMs", string(pt))

	// A public key alone cannot sign or be wrapped.
	d := sha256.Sum256(nil)
	_, err = donor.Sign(ctx, "transport", hsm.PKCS1v15, crypto.SHA256, d[:])
	assert.ErrorIs(t, err, hsm.ErrWrongKeyType)
}

// TestImportKeyMaterial wraps AES key material in Go exactly as an AWS KMS
// user does for ImportKeyMaterial, and unwraps it inside the token.
func TestImportKeyMaterial(t *testing.T) {
	ctx := context.Background()
	tok := open(t, member(t), nil)
	rpk := importWrappingKey(t, tok)

	material := make([]byte, 32)
	_, err := rand.Read(material)
	require.NoError(t, err)

	// RSAES_OAEP_SHA_1.
	oaepBlob, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, rpk, material, nil)
	require.NoError(t, err)
	// RSA_AES_KEY_WRAP_SHA_1: an ephemeral AES key under RSA-OAEP, then
	// the material under it with AES key wrap with padding (RFC 5649).
	eph := make([]byte, 32)
	_, err = rand.Read(eph)
	require.NoError(t, err)
	wrappedEph, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, rpk, eph, nil)
	require.NoError(t, err)
	kwpBlob := append(wrappedEph, mustKWP(t, eph, material)...)

	for name, c := range map[string]struct {
		w    hsm.Wrapping
		blob []byte
	}{
		"RSAES_OAEP_SHA_1":       {hsm.Wrapping{Mechanism: hsm.RSAOAEP, Hash: crypto.SHA1}, oaepBlob},
		"RSA_AES_KEY_WRAP_SHA_1": {hsm.Wrapping{Mechanism: hsm.RSAAESKeyWrap, Hash: crypto.SHA1}, kwpBlob},
	} {
		t.Run(name, func(t *testing.T) {
			id := hsm.KeyID("imported-" + name[:8])
			_, err := tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "import", Wrapping: c.w, Wrapped: c.blob, ID: id, Spec: hsm.AES256})
			require.NoError(t, err)
			ct, iv, err := tok.EncryptGCM(ctx, id, nil, []byte("imported"), []byte("aad"))
			require.NoError(t, err)
			// The token encrypted under exactly the imported material.
			block, err := aes.NewCipher(material)
			require.NoError(t, err)
			gcm, err := cipher.NewGCM(block)
			require.NoError(t, err)
			pt, err := gcm.Open(nil, iv, ct, []byte("aad"))
			require.NoError(t, err)
			assert.Equal(t, "imported", string(pt))

			// A corrupted blob is the vague ErrDecrypt and creates nothing.
			bad := append([]byte(nil), c.blob...)
			bad[len(bad)-1] ^= 1
			_, err = tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "import", Wrapping: c.w, Wrapped: bad, ID: id + "-bad", Spec: hsm.AES256})
			require.ErrorIs(t, err, hsm.ErrDecrypt)
			_, err = tok.Describe(ctx, id+"-bad")
			require.ErrorIs(t, err, hsm.ErrKeyNotFound)
		})
	}
	// 128-bit material offered as an AES-256 key is refused where the blob
	// shows its length (AES key wrap with padding), and nothing is created.
	short := make([]byte, 16)
	_, err = rand.Read(short)
	require.NoError(t, err)
	shortBlob := append(bytes.Clone(wrappedEph), mustKWP(t, eph, short)...)
	_, err = tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "import", Wrapping: hsm.Wrapping{Mechanism: hsm.RSAAESKeyWrap, Hash: crypto.SHA1}, Wrapped: shortBlob, ID: "short", Spec: hsm.AES256})
	require.ErrorIs(t, err, hsm.ErrInvalidInput)
	_, err = tok.Describe(ctx, "short")
	require.ErrorIs(t, err, hsm.ErrKeyNotFound)
	_, err = tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "import", Wrapping: hsm.Wrapping{Mechanism: hsm.RSAAESKeyWrap, Hash: crypto.SHA1}, Wrapped: shortBlob, ID: "short", Spec: hsm.AES128})
	require.NoError(t, err, "the same blob is a valid AES-128 key")

	// SHA-256 OAEP is not available on SoftHSM 2.6: a clear error.
	_, err = tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "import", Wrapping: hsm.Wrapping{Mechanism: hsm.RSAOAEP, Hash: crypto.SHA256}, Wrapped: oaepBlob, ID: "x", Spec: hsm.AES256})
	require.ErrorIs(t, err, hsm.ErrUnsupported)
}

// TestGenerateWrapped: a key generated as a session object and wrapped
// under a trusted key exists on the token only once unwrapped, and then
// works; nothing is left behind by the generation itself.
func TestGenerateWrapped(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, nil)
	pad := hsm.Wrapping{Mechanism: hsm.AESKeyWrapPad}
	_, err := tok.CreateTrustedWrappingKey(ctx, "kek", m.SOPIN(), hsm.KeyOptions{})
	require.NoError(t, err)
	_, err = tok.GenerateKey(ctx, "plain-kek", hsm.AES256, hsm.KeyOptions{Usage: hsm.UsageWrap})
	require.NoError(t, err)

	for _, spec := range []hsm.KeySpec{hsm.AES256, hsm.HMAC256, hsm.ECP256, hsm.RSA2048} {
		blob, pub, err := tok.GenerateWrapped(ctx, "kek", spec, hsm.KeyOptions{})
		require.NoError(t, err, spec)
		assert.Equal(t, spec.Asymmetric(), pub != nil, spec)
		keys, err := tok.ListKeys(ctx)
		require.NoError(t, err)
		assert.Len(t, keys, 2, "%s: generation alone leaves no token object", spec)

		id := hsm.KeyID("gw-" + string(spec))
		info, err := tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "kek", Wrapping: pad, Wrapped: blob, ID: id, Spec: spec, PublicKey: pub, Options: hsm.KeyOptions{Extractable: true}})
		require.NoError(t, err, spec)
		assert.Equal(t, spec, info.Spec)
		switch spec {
		case hsm.AES256:
			ct, iv, err := tok.EncryptGCM(ctx, id, nil, []byte("x"), nil)
			require.NoError(t, err)
			_, err = tok.DecryptGCM(ctx, id, iv, ct, nil)
			require.NoError(t, err)
		case hsm.HMAC256:
			mac, err := tok.MAC(ctx, id, crypto.SHA256, []byte("x"))
			require.NoError(t, err)
			require.NoError(t, tok.VerifyMAC(ctx, id, crypto.SHA256, []byte("x"), mac))
		default:
			got, err := tok.PublicKey(ctx, id)
			require.NoError(t, err)
			assert.Equal(t, pub, got)
		}
		require.NoError(t, tok.DestroyKey(ctx, id))
	}
	// An untrusted wrapping key is refused.
	_, _, err = tok.GenerateWrapped(ctx, "plain-kek", hsm.AES256, hsm.KeyOptions{})
	require.ErrorIs(t, err, hsm.ErrWrongKeyType)
}

// mustKWP is softhsmtest.KeyWrapPad for a test.
func mustKWP(t *testing.T, kek, plaintext []byte) []byte {
	t.Helper()
	out, err := softhsmtest.KeyWrapPad(kek, plaintext)
	require.NoError(t, err)
	return out
}

// importWrappingKey makes the RSA key "import" that key material is
// wrapped under for import, and returns its public key.
func importWrappingKey(t *testing.T, tok *hsm.Token) *rsa.PublicKey {
	t.Helper()
	ctx := context.Background()
	_, err := tok.GenerateKey(ctx, "import", hsm.RSA2048, hsm.KeyOptions{Usage: hsm.UsageWrap})
	require.NoError(t, err)
	der, err := tok.PublicKey(ctx, "import")
	require.NoError(t, err)
	pk, err := x509.ParsePKIXPublicKey(der)
	require.NoError(t, err)
	return pk.(*rsa.PublicKey)
}

// TestStaleWrappingKeyHandle: a wrapping key destroyed and made again
// under its ID behind a Token's back (here by a second PKCS#11 client,
// which copies it and destroys the original) leaves the Token a stale
// cached handle. WrapKey, UnwrapKey and GenerateWrapped look the key up
// again and succeed, and the token stays healthy; a wrapping key that is
// really gone is the caller's ErrKeyNotFound.
func TestStaleWrappingKeyHandle(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, nil)
	p, s := secondClient(t, m, tok)
	pad := hsm.Wrapping{Mechanism: hsm.AESKeyWrapPad}
	_, err := tok.CreateTrustedWrappingKey(ctx, "kek", m.SOPIN(), hsm.KeyOptions{})
	require.NoError(t, err)
	_, err = tok.GenerateKey(ctx, "data", hsm.AES256, hsm.KeyOptions{Extractable: true})
	require.NoError(t, err)
	kek := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_ID, []byte("kek"))}
	replace := func() {
		t.Helper()
		objs := findObjects(t, p, s, kek...)
		require.Len(t, objs, 1)
		// The copy keeps the key, its ID, label and CKA_TRUSTED; only
		// the handle changes.
		_, err := p.CopyObject(s, objs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)})
		require.NoError(t, err)
		require.NoError(t, p.DestroyObject(s, objs[0]))
	}

	blob, err := tok.WrapKey(ctx, "kek", "data", pad) // kek's handle is cached
	require.NoError(t, err)
	replace()
	blob2, err := tok.WrapKey(ctx, "kek", "data", pad)
	require.NoError(t, err, "WrapKey with a stale wrapping key handle")
	replace()
	_, err = tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "kek", Wrapping: pad, Wrapped: blob, ID: "copy", Spec: hsm.AES256})
	require.NoError(t, err, "UnwrapKey with a stale unwrapping key handle")
	replace()
	_, _, err = tok.GenerateWrapped(ctx, "kek", hsm.ECP256, hsm.KeyOptions{})
	require.NoError(t, err, "GenerateWrapped with a stale wrapping key handle")
	assert.True(t, tok.Health().Healthy)

	// The copy is a working key: it unwraps what was wrapped under it.
	_, err = tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "kek", Wrapping: pad, Wrapped: blob2, ID: "copy2", Spec: hsm.AES256})
	require.NoError(t, err)

	// Really gone: the caller's error, not the member's.
	objs := findObjects(t, p, s, kek...)
	require.Len(t, objs, 1)
	require.NoError(t, p.DestroyObject(s, objs[0]))
	_, err = tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "kek", Wrapping: pad, Wrapped: blob, ID: "copy3", Spec: hsm.AES256})
	require.ErrorIs(t, err, hsm.ErrKeyNotFound)
	_, err = tok.WrapKey(ctx, "kek", "data", pad)
	require.ErrorIs(t, err, hsm.ErrKeyNotFound)
	_, _, err = tok.GenerateWrapped(ctx, "kek", hsm.AES256, hsm.KeyOptions{})
	require.ErrorIs(t, err, hsm.ErrKeyNotFound)
	assert.Equal(t, hsm.ClassCaller, hsm.Classify(err))
	assert.True(t, tok.Health().Healthy)

	// The classifier counts the wrap-specific handle codes as the caller's,
	// as it does CKR_KEY_HANDLE_INVALID.
	for _, c := range []uint{pkcs11.CKR_KEY_HANDLE_INVALID, pkcs11.CKR_WRAPPING_KEY_HANDLE_INVALID, pkcs11.CKR_UNWRAPPING_KEY_HANDLE_INVALID} {
		assert.Equal(t, hsm.ClassCaller, hsm.Classify(hsm.CKR(c)), hsm.CKR(c).Error())
	}
}

// TestOAEPUnwrapSecretLength: secret key material imported with RSA-OAEP
// must be of the spec's length, which the OAEP blob does not show and
// SoftHSM does not report; the token measures it. Material of another
// length is ErrInvalidInput and leaves nothing behind, session objects
// included; material of the right length is the key.
func TestOAEPUnwrapSecretLength(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, nil)
	pub := importWrappingKey(t, tok)
	p, s := secondClient(t, m, tok)
	oaep := hsm.Wrapping{Mechanism: hsm.RSAOAEP, Hash: crypto.SHA1}
	wrap := func(material []byte) []byte {
		blob, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, pub, material, nil)
		require.NoError(t, err)
		return blob
	}
	material := func(n int) []byte {
		b := make([]byte, n)
		_, err := rand.Read(b)
		require.NoError(t, err)
		return b
	}

	for _, c := range []struct {
		spec hsm.KeySpec
		n    int
	}{{hsm.AES256, 16}, {hsm.AES256, 7}, {hsm.AES256, 40}, {hsm.AES128, 32}, {hsm.HMAC512, 1}, {hsm.HMAC512, 32}, {hsm.HMAC256, 64}} {
		id := hsm.KeyID("short-" + string(c.spec))
		_, err := tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "import", Wrapping: oaep, Wrapped: wrap(material(c.n)), ID: id, Spec: c.spec})
		require.ErrorIs(t, err, hsm.ErrInvalidInput, "%d bytes as %s", c.n, c.spec)
		assert.Equal(t, hsm.ClassCaller, hsm.Classify(err))
		_, err = tok.Describe(ctx, id)
		require.ErrorIs(t, err, hsm.ErrKeyNotFound)
	}
	assert.Empty(t, findObjects(t, p, s, pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)), "no session object is left")

	// The right lengths are taken, and are the material.
	aes128 := material(16)
	_, err := tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "import", Wrapping: oaep, Wrapped: wrap(aes128), ID: "aes128", Spec: hsm.AES128})
	require.NoError(t, err)
	ct, iv, err := tok.EncryptGCM(ctx, "aes128", nil, []byte("x"), nil)
	require.NoError(t, err)
	block, err := aes.NewCipher(aes128)
	require.NoError(t, err)
	gcm, err := cipher.NewGCM(block)
	require.NoError(t, err)
	_, err = gcm.Open(nil, iv, ct, nil)
	require.NoError(t, err)

	hmac512 := material(64)
	_, err = tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "import", Wrapping: oaep, Wrapped: wrap(hmac512), ID: "hmac512", Spec: hsm.HMAC512})
	require.NoError(t, err)
	got, err := tok.MAC(ctx, "hmac512", crypto.SHA512, []byte("x"))
	require.NoError(t, err)
	h := hmac.New(sha512.New, hmac512)
	h.Write([]byte("x"))
	assert.Equal(t, h.Sum(nil), got)
	assert.Empty(t, findObjects(t, p, s, pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)), "no session object is left")
	assert.True(t, tok.Health().Healthy)
}

// TestUnwrapFailureFollowsProfile: a blob that fails its integrity check
// is ErrDecrypt when the token's profile lists the code the token gives
// for it (SoftHSM's CKR_GENERAL_ERROR); on a profile that does not, that
// code is a device failure, the member's, and keeps its code.
func TestUnwrapFailureFollowsProfile(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, nil)
	other := hsm.ProfileSoftHSM2
	other.DecryptFailureCodes = nil
	strict := open(t, m, func(c *hsm.Config) { c.Profile = &other })
	_, err := tok.GenerateKey(ctx, "kek", hsm.AES256, hsm.KeyOptions{Usage: hsm.UsageWrap})
	require.NoError(t, err)
	importWrappingKey(t, tok)

	for name, req := range map[string]hsm.UnwrapRequest{
		"aes key wrap": {WrappingKey: "kek", Wrapping: hsm.Wrapping{Mechanism: hsm.AESKeyWrapPad}, Wrapped: bytes.Repeat([]byte{1}, 40), Spec: hsm.AES256},
		"rsa-oaep":     {WrappingKey: "import", Wrapping: hsm.Wrapping{Mechanism: hsm.RSAOAEP, Hash: crypto.SHA1}, Wrapped: bytes.Repeat([]byte{1}, 256), Spec: hsm.AES256},
	} {
		req.ID = "garbage"
		_, err := tok.UnwrapKey(ctx, req)
		require.ErrorIs(t, err, hsm.ErrDecrypt, name)
		_, err = strict.UnwrapKey(ctx, req)
		require.NotErrorIs(t, err, hsm.ErrDecrypt, name)
		require.ErrorIs(t, err, hsm.CKR(pkcs11.CKR_GENERAL_ERROR), name)
		assert.Equal(t, hsm.ClassMember, hsm.Classify(err), name)
	}
}

// TestCheckValue: check values computed here from known material
// (imported under RSA-OAEP, so the token keeps no CKA_CHECK_VALUE of its
// own) match, after the format byte: 8 bytes of the SHA-256 of an AES
// key's encryption of the fixed block, 8 bytes of an HMAC key's MAC of
// the fixed message, a key pair's SHA-256 of its public key. Different keys differ, an unknown key is ErrKeyNotFound,
// and a key whose usage forbids the operation is ErrUnsupported.
func TestCheckValue(t *testing.T) {
	ctx := context.Background()
	tok := open(t, member(t), nil)
	rpk := importWrappingKey(t, tok)
	imp := func(id hsm.KeyID, spec hsm.KeySpec, material []byte) {
		t.Helper()
		blob, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, rpk, material, nil)
		require.NoError(t, err)
		_, err = tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "import", Wrapping: hsm.Wrapping{Mechanism: hsm.RSAOAEP, Hash: crypto.SHA1}, Wrapped: blob, ID: id, Spec: spec})
		require.NoError(t, err)
	}
	aesKey := bytes.Repeat([]byte{0x2b}, 32)
	macKey := bytes.Repeat([]byte{0x5c}, 32)
	imp("aes", hsm.AES256, aesKey)
	imp("mac", hsm.HMAC256, macKey)
	imp("mac224", hsm.HMAC224, macKey[:28])

	v1 := func(b []byte) []byte { return append([]byte{hsm.CheckValueV1}, b...) }
	block, err := aes.NewCipher(aesKey)
	require.NoError(t, err)
	enc := make([]byte, aes.BlockSize)
	block.Encrypt(enc, []byte("hsmkms check v1\x00"))
	sum := sha256.Sum256(enc)
	want := v1(sum[:8])
	got, err := tok.CheckValue(ctx, "aes")
	require.NoError(t, err)
	assert.Equal(t, want, got)

	mac := hmac.New(sha256.New, macKey)
	mac.Write([]byte("hsmkms check value"))
	got, err = tok.CheckValue(ctx, "mac")
	require.NoError(t, err)
	assert.Equal(t, v1(mac.Sum(nil)[:8]), got)
	mac = hmac.New(sha256.New224, macKey[:28])
	mac.Write([]byte("hsmkms check value"))
	got, err = tok.CheckValue(ctx, "mac224")
	require.NoError(t, err)
	assert.Equal(t, v1(mac.Sum(nil)[:8]), got, "an HMAC_224 key's check value uses SHA-224")

	_, err = tok.GenerateKey(ctx, "other", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)
	other, err := tok.CheckValue(ctx, "other")
	require.NoError(t, err)
	assert.NotEqual(t, want, other)

	for _, spec := range []hsm.KeySpec{hsm.ECP256, hsm.RSA2048} {
		id := hsm.KeyID("pair-" + string(spec))
		_, err := tok.GenerateKey(ctx, id, spec, hsm.KeyOptions{})
		require.NoError(t, err)
		pub, err := tok.PublicKey(ctx, id)
		require.NoError(t, err)
		want := sha256.Sum256(pub)
		got, err := tok.CheckValue(ctx, id)
		require.NoError(t, err)
		assert.Equal(t, v1(want[:]), got, spec)
	}
	_, err = tok.CheckValue(ctx, "absent")
	require.ErrorIs(t, err, hsm.ErrKeyNotFound)
	_, err = tok.GenerateKey(ctx, "wrap-only", hsm.AES256, hsm.KeyOptions{Usage: hsm.UsageWrap})
	require.NoError(t, err)
	_, err = tok.CheckValue(ctx, "wrap-only")
	require.ErrorIs(t, err, hsm.ErrUnsupported)
}

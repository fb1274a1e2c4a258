package hsm_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRoundTrips creates a key of every spec and runs every operation it
// supports, checking signatures with Go's crypto against the exported
// public key.
func TestRoundTrips(t *testing.T) {
	ctx := context.Background()
	tok := open(t, member(t), nil)

	for _, spec := range hsm.KeySpecs {
		t.Run(string(spec), func(t *testing.T) {
			id := hsm.KeyID("rt-" + strings.ToLower(string(spec)))
			usage := hsm.UsageSign
			if spec == hsm.AES128 || spec == hsm.AES256 {
				usage = hsm.UsageEncrypt
			}
			if strings.HasPrefix(string(spec), "RSA") {
				usage = hsm.UsageSign | hsm.UsageEncrypt
			}
			info, err := tok.GenerateKey(ctx, id, spec, hsm.KeyOptions{Usage: usage})
			require.NoError(t, err)
			assert.Equal(t, spec, info.Spec)

			// A fresh resolution reads the same spec back from the token.
			got, err := tok.Describe(ctx, id)
			require.NoError(t, err)
			assert.Equal(t, spec, got.Spec)
			assert.Equal(t, usage, got.Usage)
			assert.False(t, got.Extractable)

			msg := []byte("the quick brown fox")
			digest := sha256.Sum256(msg)
			switch {
			case spec == hsm.AES128 || spec == hsm.AES256:
				ct, iv, err := tok.EncryptGCM(ctx, id, nil, msg, []byte("aad"))
				require.NoError(t, err)
				require.Len(t, iv, hsm.GCMIVSize)
				require.Len(t, ct, len(msg)+hsm.GCMTagSize)
				pt, err := tok.DecryptGCM(ctx, id, iv, ct, []byte("aad"))
				require.NoError(t, err)
				assert.Equal(t, msg, pt)

			case strings.HasPrefix(string(spec), "HMAC"):
				h := map[hsm.KeySpec]crypto.Hash{hsm.HMAC224: crypto.SHA224, hsm.HMAC256: crypto.SHA256, hsm.HMAC384: crypto.SHA384, hsm.HMAC512: crypto.SHA512}[spec]
				mac, err := tok.MAC(ctx, id, h, msg)
				require.NoError(t, err)
				assert.Len(t, mac, h.Size())
				require.NoError(t, tok.VerifyMAC(ctx, id, h, msg, mac))

			case strings.HasPrefix(string(spec), "RSA"):
				der, err := tok.PublicKey(ctx, id)
				require.NoError(t, err)
				pk, err := x509.ParsePKIXPublicKey(der)
				require.NoError(t, err)
				rpk := pk.(*rsa.PublicKey)

				for _, sc := range []hsm.SigningScheme{hsm.PKCS1v15, hsm.PSS} {
					sig, err := tok.Sign(ctx, id, sc, crypto.SHA256, digest[:])
					require.NoError(t, err)
					require.NoError(t, tok.Verify(ctx, id, sc, crypto.SHA256, digest[:], sig))
					if sc == hsm.PKCS1v15 {
						require.NoError(t, rsa.VerifyPKCS1v15(rpk, crypto.SHA256, digest[:], sig))
					} else {
						require.NoError(t, rsa.VerifyPSS(rpk, crypto.SHA256, digest[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}))
					}
				}
				// RSA-OAEP both ways, and Go's encryption decrypts in the token.
				ct, err := tok.EncryptOAEP(ctx, id, crypto.SHA1, msg)
				require.NoError(t, err)
				pt, err := tok.DecryptOAEP(ctx, id, crypto.SHA1, ct)
				require.NoError(t, err)
				assert.Equal(t, msg, pt)
				goCT, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, rpk, msg, nil)
				require.NoError(t, err)
				pt, err = tok.DecryptOAEP(ctx, id, crypto.SHA1, goCT)
				require.NoError(t, err)
				assert.Equal(t, msg, pt)
				// SoftHSM 2.6 does OAEP with SHA-1 only; the profile says so.
				_, err = tok.EncryptOAEP(ctx, id, crypto.SHA256, msg)
				assert.ErrorIs(t, err, hsm.ErrUnsupported)

			default: // EC
				sig, err := tok.Sign(ctx, id, hsm.ECDSA, crypto.SHA256, digest[:])
				require.NoError(t, err)
				require.NoError(t, tok.Verify(ctx, id, hsm.ECDSA, crypto.SHA256, digest[:], sig))
				der, err := tok.PublicKey(ctx, id)
				require.NoError(t, err)
				if spec == hsm.ECSecp256k1 {
					// crypto/x509 does not know secp256k1; the SPKI names it.
					assert.True(t, bytes.Contains(der, []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a}))
					return
				}
				pk, err := x509.ParsePKIXPublicKey(der)
				require.NoError(t, err)
				assert.True(t, ecdsa.VerifyASN1(pk.(*ecdsa.PublicKey), digest[:], sig), "Go rejects the token's signature")
			}
		})
	}
}

func TestGCMIVModes(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, nil)
	_, err := tok.GenerateKey(ctx, "gcm", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)
	msg := []byte("payload")

	// The caller's IV is used and returned.
	iv := bytes.Repeat([]byte{7}, hsm.GCMIVSize)
	ct, used, err := tok.EncryptGCM(ctx, "gcm", iv, msg, nil)
	require.NoError(t, err)
	assert.Equal(t, iv, used)
	pt, err := tok.DecryptGCM(ctx, "gcm", used, ct, nil)
	require.NoError(t, err)
	assert.Equal(t, msg, pt)

	// Without an IV, each encryption gets a fresh one.
	_, iv1, err := tok.EncryptGCM(ctx, "gcm", nil, msg, nil)
	require.NoError(t, err)
	_, iv2, err := tok.EncryptGCM(ctx, "gcm", nil, msg, nil)
	require.NoError(t, err)
	assert.NotEqual(t, iv1, iv2)

	// A profile that expects the HSM to write its IV back (CloudHSM) on a
	// token that does not (SoftHSM leaves the zero IV) is refused rather
	// than encrypting under an all-zero IV. Its 16 KiB input cap applies.
	cloud := hsm.ProfileCloudHSM
	ctok := open(t, m, func(c *hsm.Config) { c.Profile = &cloud })
	_, _, err = ctok.EncryptGCM(ctx, "gcm", nil, msg, nil)
	assert.ErrorIs(t, err, hsm.ErrUnsupported)
	_, _, err = ctok.EncryptGCM(ctx, "gcm", iv, make([]byte, 16*1024+1), nil)
	assert.ErrorIs(t, err, hsm.ErrInvalidInput)
	_, _, err = ctok.EncryptGCM(ctx, "gcm", iv, make([]byte, 16*1024), nil)
	assert.NoError(t, err)

	// A caller's IV on that profile: the IV returned is the one read back
	// from the token (SoftHSM keeps the caller's, so it is that), and the
	// ciphertext decrypts under it. A token that put its own IV in place
	// of the caller's would be ErrUnsupported; SoftHSM cannot show that.
	callerIV := bytes.Repeat([]byte{5}, hsm.GCMIVSize)
	ct, used, err = ctok.EncryptGCM(ctx, "gcm", callerIV, msg, []byte("aad"))
	require.NoError(t, err)
	assert.Equal(t, callerIV, used)
	assert.NotSame(t, &callerIV[0], &used[0], "the IV returned is the token's copy")
	pt, err = tok.DecryptGCM(ctx, "gcm", used, ct, []byte("aad"))
	require.NoError(t, err)
	assert.Equal(t, msg, pt)
}

// TestAppendEncryptGCM: the ciphertext lands in dst's spare room when there
// is enough of it (SoftHSM's C_Encrypt is called directly, writing into
// it), dst's contents are kept either way, and the module's C_Encrypt and
// miekg/pkcs11's path give the same ciphertext for the same IV.
func TestAppendEncryptGCM(t *testing.T) {
	ctx := context.Background()
	tok := open(t, member(t), nil)
	_, err := tok.GenerateKey(ctx, "app", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)
	msg := bytes.Repeat([]byte("0123456789abcdef"), 100)
	iv := bytes.Repeat([]byte{9}, hsm.GCMIVSize)
	prefix := []byte("header")

	direct, restore := hsm.Direct(tok, false)
	restore()
	require.True(t, direct, "SoftHSM's function list should be readable")

	// Room enough: written in place.
	dst := make([]byte, len(prefix), len(prefix)+len(msg)+hsm.GCMTagSize)
	copy(dst, prefix)
	out, used, err := tok.AppendEncryptGCM(ctx, dst, "app", iv, msg, []byte("aad"))
	require.NoError(t, err)
	assert.Equal(t, iv, used)
	require.Len(t, out, len(prefix)+len(msg)+hsm.GCMTagSize)
	assert.Same(t, &dst[:1][0], &out[0], "the ciphertext should be written into dst")
	assert.Equal(t, prefix, out[:len(prefix)])
	pt, err := tok.DecryptGCM(ctx, "app", used, out[len(prefix):], []byte("aad"))
	require.NoError(t, err)
	assert.Equal(t, msg, pt)

	// No room: a new array, the prefix copied.
	out2, _, err := tok.AppendEncryptGCM(ctx, prefix[:len(prefix):len(prefix)], "app", iv, msg, []byte("aad"))
	require.NoError(t, err)
	assert.Equal(t, out, out2)
	assert.Equal(t, []byte("header"), prefix)

	// miekg/pkcs11's path gives the same bytes.
	_, restore = hsm.Direct(tok, true)
	ct, _, err := tok.EncryptGCM(ctx, "app", iv, msg, []byte("aad"))
	restore()
	require.NoError(t, err)
	assert.Equal(t, out[len(prefix):], ct)

	// A module that wants more room than it is given (SoftHSM, asked to
	// fit 16 bytes of tag into none): the direct call answers
	// CKR_BUFFER_TOO_SMALL, the operation is finished through
	// miekg/pkcs11, the length mismatch is the caller-class
	// ErrUnsupported, the token stays healthy and the next call works.
	first, second := hsm.EncryptIntoRoom(ctx, tok, "app", msg, len(msg))
	assert.ErrorIs(t, first, hsm.ErrUnsupported)
	assert.ErrorContains(t, first, fmt.Sprintf("gave %d bytes", len(msg)+hsm.GCMTagSize), "miekg/pkcs11 should have finished the operation")
	assert.NoError(t, second)
	assert.True(t, tok.Health().Healthy)

	// Bad input appends nothing and says why.
	_, _, err = tok.AppendEncryptGCM(ctx, dst, "app", iv, nil, nil)
	assert.ErrorIs(t, err, hsm.ErrInvalidInput)
	_, _, err = tok.AppendEncryptGCM(ctx, dst, "missing", iv, msg, nil)
	assert.ErrorIs(t, err, hsm.ErrKeyNotFound)
}

// TestDirectCallsMatchMiekg: decryption, signatures and MACs through the
// module's own C_Decrypt and C_Sign (direct.go, output buffers sized here)
// give what miekg/pkcs11's path gives, failures included, for every
// signature size; and a module that needs more room than it is given is
// finished through miekg/pkcs11 on the same operation.
func TestDirectCallsMatchMiekg(t *testing.T) {
	ctx := context.Background()
	tok := open(t, member(t), nil)
	ecs := map[hsm.KeyID]crypto.Hash{"p256": crypto.SHA256, "p384": crypto.SHA384, "p521": crypto.SHA512}
	for id, spec := range map[hsm.KeyID]hsm.KeySpec{
		"aes": hsm.AES128, "rsa": hsm.RSA2048, "mac": hsm.HMAC512,
		"p256": hsm.ECP256, "p384": hsm.ECP384, "p521": hsm.ECP521,
	} {
		_, err := tok.GenerateKey(ctx, id, spec, hsm.KeyOptions{})
		require.NoError(t, err, id)
	}
	on, restore := hsm.Direct(tok, false)
	restore()
	require.True(t, on, "SoftHSM's function list should be readable")

	msg := []byte("through the function list or through miekg/pkcs11")
	ct, iv, err := tok.EncryptGCM(ctx, "aes", nil, msg, []byte("aad"))
	require.NoError(t, err)
	type results struct {
		pt, rsa, mac []byte
		ecdsa        map[hsm.KeyID][]byte
		badTag       error
	}
	run := func() results {
		var r results
		var err error
		r.pt, err = tok.DecryptGCM(ctx, "aes", iv, ct, []byte("aad"))
		require.NoError(t, err)
		_, r.badTag = tok.DecryptGCM(ctx, "aes", iv, ct, []byte("other"))
		d := sha256.Sum256(msg)
		r.rsa, err = tok.Sign(ctx, "rsa", hsm.PKCS1v15, crypto.SHA256, d[:])
		require.NoError(t, err)
		r.mac, err = tok.MAC(ctx, "mac", crypto.SHA512, msg)
		require.NoError(t, err)
		r.ecdsa = map[hsm.KeyID][]byte{}
		for id, h := range ecs {
			hh := h.New()
			hh.Write(msg)
			r.ecdsa[id], err = tok.Sign(ctx, id, hsm.ECDSA, h, hh.Sum(nil))
			require.NoError(t, err, id)
		}
		return r
	}
	direct := run()
	_, restore = hsm.Direct(tok, true)
	viaMiekg := run()
	restore()

	assert.Equal(t, msg, direct.pt)
	assert.Equal(t, viaMiekg.pt, direct.pt)
	assert.Len(t, direct.pt, cap(direct.pt), "the plaintext should not carry the tag's room")
	assert.ErrorIs(t, direct.badTag, hsm.ErrDecrypt)
	assert.Equal(t, viaMiekg.badTag.Error(), direct.badTag.Error())
	assert.Equal(t, viaMiekg.rsa, direct.rsa, "PKCS #1 v1.5 signatures are deterministic")
	assert.Len(t, direct.rsa, 256)
	assert.Equal(t, viaMiekg.mac, direct.mac)
	assert.Len(t, direct.mac, 64)
	for id, h := range ecs {
		der, err := tok.PublicKey(ctx, id)
		require.NoError(t, err)
		pub, err := x509.ParsePKIXPublicKey(der)
		require.NoError(t, err)
		hh := h.New()
		hh.Write(msg)
		for way, sig := range map[string][]byte{"direct": direct.ecdsa[id], "miekg": viaMiekg.ecdsa[id]} {
			assert.True(t, ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), hh.Sum(nil), sig), "%s %s", id, way)
		}
	}

	// Less room than an HMAC-SHA256 (or none): SoftHSM answers
	// CKR_BUFFER_TOO_SMALL and keeps the operation, which miekg/pkcs11
	// then finishes.
	want, err := tok.MAC(ctx, "mac", crypto.SHA256, msg)
	require.NoError(t, err)
	for _, room := range []int{0, 16, 31, 32} {
		got, err := hsm.MACIntoRoom(ctx, tok, "mac", msg, room)
		require.NoError(t, err, room)
		assert.Equal(t, want, got, room)
	}
	assert.True(t, tok.Health().Healthy)
}

// TestVagueFailures: every way a ciphertext, signature or MAC can be wrong
// gives the same vague error, without a code, classified as the caller's.
func TestVagueFailures(t *testing.T) {
	ctx := context.Background()
	tok := open(t, member(t), nil)
	_, err := tok.GenerateKey(ctx, "aes", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)
	_, err = tok.GenerateKey(ctx, "aes2", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)
	_, err = tok.GenerateKey(ctx, "ec", hsm.ECP256, hsm.KeyOptions{})
	require.NoError(t, err)
	_, err = tok.GenerateKey(ctx, "mac", hsm.HMAC256, hsm.KeyOptions{})
	require.NoError(t, err)

	msg, aad := []byte("secret message"), []byte("context")
	ct, iv, err := tok.EncryptGCM(ctx, "aes", nil, msg, aad)
	require.NoError(t, err)
	flip := func(b []byte, i int) []byte { c := bytes.Clone(b); c[i] ^= 1; return c }

	decrypts := map[string]func() error{
		"wrong aad":      func() error { _, err := tok.DecryptGCM(ctx, "aes", iv, ct, []byte("other")); return err },
		"missing aad":    func() error { _, err := tok.DecryptGCM(ctx, "aes", iv, ct, nil); return err },
		"flipped body":   func() error { _, err := tok.DecryptGCM(ctx, "aes", iv, flip(ct, 0), aad); return err },
		"flipped tag":    func() error { _, err := tok.DecryptGCM(ctx, "aes", iv, flip(ct, len(ct)-1), aad); return err },
		"wrong iv":       func() error { _, err := tok.DecryptGCM(ctx, "aes", flip(iv, 0), ct, aad); return err },
		"wrong key":      func() error { _, err := tok.DecryptGCM(ctx, "aes2", iv, ct, aad); return err },
		"truncated":      func() error { _, err := tok.DecryptGCM(ctx, "aes", iv, ct[:10], aad); return err },
		"empty":          func() error { _, err := tok.DecryptGCM(ctx, "aes", iv, nil, aad); return err },
		"tag only":       func() error { _, err := tok.DecryptGCM(ctx, "aes", iv, ct[len(ct)-16:], aad); return err },
		"bad after good": func() error { _, err := tok.DecryptGCM(ctx, "aes", iv, flip(ct, 3), aad); return err },
	}
	var msgs []string
	for name, f := range decrypts {
		err := f()
		require.ErrorIs(t, err, hsm.ErrDecrypt, name)
		assert.Equal(t, hsm.ClassCaller, hsm.Classify(err), name)
		var he *hsm.Error
		require.ErrorAs(t, err, &he)
		assert.Zero(t, he.Code, "%s: decrypt failures hide the code", name)
		msgs = append(msgs, err.Error())
	}
	for _, m := range msgs {
		assert.Equal(t, msgs[0], m, "every decrypt failure reads the same")
	}
	// The session stays usable after failures.
	pt, err := tok.DecryptGCM(ctx, "aes", iv, ct, aad)
	require.NoError(t, err)
	assert.Equal(t, msg, pt)

	d := sha256.Sum256(msg)
	sig, err := tok.Sign(ctx, "ec", hsm.ECDSA, crypto.SHA256, d[:])
	require.NoError(t, err)
	other := sha256.Sum256([]byte("other"))
	for name, f := range map[string]func() error{
		"flipped sig":  func() error { return tok.Verify(ctx, "ec", hsm.ECDSA, crypto.SHA256, d[:], flip(sig, len(sig)-1)) },
		"other digest": func() error { return tok.Verify(ctx, "ec", hsm.ECDSA, crypto.SHA256, other[:], sig) },
		"not DER":      func() error { return tok.Verify(ctx, "ec", hsm.ECDSA, crypto.SHA256, d[:], []byte("garbage")) },
		"empty sig":    func() error { return tok.Verify(ctx, "ec", hsm.ECDSA, crypto.SHA256, d[:], nil) },
		"trailing data": func() error {
			return tok.Verify(ctx, "ec", hsm.ECDSA, crypto.SHA256, d[:], append(bytes.Clone(sig), 0))
		},
	} {
		err := f()
		require.ErrorIs(t, err, hsm.ErrVerify, name)
		assert.Equal(t, hsm.ClassCaller, hsm.Classify(err), name)
	}
	mac, err := tok.MAC(ctx, "mac", crypto.SHA256, msg)
	require.NoError(t, err)
	for name, bad := range map[string][]byte{"flipped": flip(mac, 0), "short": mac[:16], "empty": nil} {
		err := tok.VerifyMAC(ctx, "mac", crypto.SHA256, msg, bad)
		require.ErrorIs(t, err, hsm.ErrVerify, name)
	}
	require.ErrorIs(t, tok.VerifyMAC(ctx, "mac", crypto.SHA256, []byte("other"), mac), hsm.ErrVerify)
}

// TestBadInput: malformed, empty, oversized, unknown and mismatched input
// gives typed errors and never a panic, and leaves nothing behind.
func TestBadInput(t *testing.T) {
	ctx := context.Background()
	tok := open(t, member(t), nil)
	_, err := tok.GenerateKey(ctx, "aes", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)
	_, err = tok.GenerateKey(ctx, "ec", hsm.ECP256, hsm.KeyOptions{})
	require.NoError(t, err)
	_, err = tok.GenerateKey(ctx, "mac", hsm.HMAC256, hsm.KeyOptions{})
	require.NoError(t, err)
	kek, err := tok.GenerateKey(ctx, "kek", hsm.AES256, hsm.KeyOptions{Usage: hsm.UsageWrap})
	require.NoError(t, err)
	require.Equal(t, hsm.UsageWrap, kek.Usage)
	before, err := tok.ListKeys(ctx)
	require.NoError(t, err)

	iv := make([]byte, hsm.GCMIVSize)
	d := sha256.Sum256([]byte("x"))
	ecPub, err := tok.PublicKey(ctx, "ec")
	require.NoError(t, err)
	cases := []struct {
		name string
		want error
		call func() error
	}{
		{"empty plaintext", hsm.ErrInvalidInput, func() error { _, _, err := tok.EncryptGCM(ctx, "aes", nil, nil, nil); return err }},
		{"oversized plaintext", hsm.ErrInvalidInput, func() error {
			_, _, err := tok.EncryptGCM(ctx, "aes", nil, make([]byte, hsm.MaxDataSize+1), nil)
			return err
		}},
		{"short IV", hsm.ErrInvalidInput, func() error { _, _, err := tok.EncryptGCM(ctx, "aes", iv[:8], []byte("x"), nil); return err }},
		{"empty IV on decrypt", hsm.ErrInvalidInput, func() error { _, err := tok.DecryptGCM(ctx, "aes", nil, make([]byte, 32), nil); return err }},
		{"unknown key", hsm.ErrKeyNotFound, func() error { _, _, err := tok.EncryptGCM(ctx, "nope", nil, []byte("x"), nil); return err }},
		{"invalid key ID", hsm.ErrInvalidInput, func() error { _, _, err := tok.EncryptGCM(ctx, "bad id!", nil, []byte("x"), nil); return err }},
		{"empty key ID", hsm.ErrInvalidInput, func() error { _, err := tok.Describe(ctx, ""); return err }},
		{"long key ID", hsm.ErrInvalidInput, func() error { _, err := tok.Describe(ctx, hsm.KeyID(strings.Repeat("a", 65))); return err }},
		{"AES key signs", hsm.ErrWrongKeyType, func() error { _, err := tok.Sign(ctx, "aes", hsm.ECDSA, crypto.SHA256, d[:]); return err }},
		{"EC key encrypts", hsm.ErrWrongKeyType, func() error { _, _, err := tok.EncryptGCM(ctx, "ec", nil, []byte("x"), nil); return err }},
		{"EC key does PSS", hsm.ErrWrongKeyType, func() error { _, err := tok.Sign(ctx, "ec", hsm.PSS, crypto.SHA256, d[:]); return err }},
		{"AES key MACs", hsm.ErrWrongKeyType, func() error { _, err := tok.MAC(ctx, "aes", crypto.SHA256, []byte("x")); return err }},
		{"MAC key encrypts", hsm.ErrWrongKeyType, func() error { _, _, err := tok.EncryptGCM(ctx, "mac", nil, []byte("x"), nil); return err }},
		{"wrapping key encrypts", hsm.ErrWrongKeyType, func() error { _, _, err := tok.EncryptGCM(ctx, "kek", nil, []byte("x"), nil); return err }},
		{"EC key OAEP", hsm.ErrWrongKeyType, func() error { _, err := tok.EncryptOAEP(ctx, "ec", crypto.SHA1, []byte("x")); return err }},
		{"short digest", hsm.ErrInvalidInput, func() error { _, err := tok.Sign(ctx, "ec", hsm.ECDSA, crypto.SHA256, d[:31]); return err }},
		{"unknown scheme", hsm.ErrInvalidInput, func() error { _, err := tok.Sign(ctx, "ec", hsm.SigningScheme(99), crypto.SHA256, d[:]); return err }},
		{"empty MAC message", hsm.ErrInvalidInput, func() error { _, err := tok.MAC(ctx, "mac", crypto.SHA256, nil); return err }},
		{"MAC hash longer than the key", hsm.ErrWrongKeyType, func() error { _, err := tok.MAC(ctx, "mac", crypto.SHA512, []byte("x")); return err }},
		{"verify MAC hash longer than the key", hsm.ErrWrongKeyType, func() error {
			return tok.VerifyMAC(ctx, "mac", crypto.SHA384, []byte("x"), make([]byte, 48))
		}},
		{"zero random", hsm.ErrInvalidInput, func() error { _, err := tok.Random(ctx, 0); return err }},
		{"huge random", hsm.ErrInvalidInput, func() error { _, err := tok.Random(ctx, 1<<20); return err }},
		{"unknown spec", hsm.ErrInvalidInput, func() error { _, err := tok.GenerateKey(ctx, "x", "DES", hsm.KeyOptions{}); return err }},
		{"duplicate ID", hsm.ErrKeyExists, func() error { _, err := tok.GenerateKey(ctx, "aes", hsm.AES128, hsm.KeyOptions{}); return err }},
		{"destroy unknown", hsm.ErrKeyNotFound, func() error { return tok.DestroyKey(ctx, "nope") }},
		{"public key of AES", hsm.ErrWrongKeyType, func() error { _, err := tok.PublicKey(ctx, "aes"); return err }},
		{"wrap non-extractable", hsm.ErrWrongKeyType, func() error {
			_, err := tok.WrapKey(ctx, "kek", "aes", hsm.Wrapping{Mechanism: hsm.AESKeyWrapPad})
			return err
		}},
		{"unwrap empty blob", hsm.ErrInvalidInput, func() error {
			_, err := tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "kek", Wrapping: hsm.Wrapping{Mechanism: hsm.AESKeyWrapPad}, ID: "new", Spec: hsm.AES256})
			return err
		}},
		{"unwrap garbage", hsm.ErrDecrypt, func() error {
			_, err := tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "kek", Wrapping: hsm.Wrapping{Mechanism: hsm.AESKeyWrapPad}, Wrapped: bytes.Repeat([]byte{1}, 40), ID: "new", Spec: hsm.AES256})
			return err
		}},
		{"unwrap private without public key", hsm.ErrInvalidInput, func() error {
			_, err := tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "kek", Wrapping: hsm.Wrapping{Mechanism: hsm.AESKeyWrapPad}, Wrapped: make([]byte, 80), ID: "new", Spec: hsm.ECP256})
			return err
		}},
		{"unwrap with public key of the wrong curve", hsm.ErrInvalidInput, func() error {
			_, err := tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "kek", Wrapping: hsm.Wrapping{Mechanism: hsm.AESKeyWrapPad}, Wrapped: make([]byte, 80), ID: "new", Spec: hsm.ECP384, PublicKey: ecPub})
			return err
		}},
		{"unwrap under an EC key", hsm.ErrWrongKeyType, func() error {
			_, err := tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: "ec", Wrapping: hsm.Wrapping{Mechanism: hsm.AESKeyWrapPad}, Wrapped: make([]byte, 40), ID: "new", Spec: hsm.AES256})
			return err
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var err error
			require.NotPanics(t, func() { err = c.call() })
			require.ErrorIs(t, err, c.want)
			assert.Equal(t, hsm.ClassCaller, hsm.Classify(err))
			var he *hsm.Error
			assert.ErrorAs(t, err, &he, "every error is an *hsm.Error")
		})
	}
	after, err := tok.ListKeys(ctx)
	require.NoError(t, err)
	assert.ElementsMatch(t, before, after, "failed calls left no key behind")
}

func TestConfigValidate(t *testing.T) {
	err := hsm.Config{}.Validate()
	require.ErrorIs(t, err, hsm.ErrInvalidInput)
	for _, want := range []string{"ModulePath", "selector", "PIN", "MaxSessions", "CallTimeout"} {
		assert.Contains(t, err.Error(), want)
	}
	_, err = hsm.Open(context.Background(), hsm.Config{})
	require.ErrorIs(t, err, hsm.ErrInvalidInput)
}

func TestErrorFormat(t *testing.T) {
	err := &hsm.Error{Op: hsm.OpSign, Token: `label="a"`, Code: 0x30, Err: hsm.CKR(0x30)}
	assert.Equal(t, `hsm: sign on token label="a": CKR_DEVICE_ERROR (0x30)`, err.Error())
	assert.True(t, errors.Is(err, hsm.CKR(0x30)))
	assert.Equal(t, hsm.ClassMember, hsm.Classify(err))
	assert.Equal(t, hsm.ClassFatal, hsm.Classify(fmt.Errorf("x: %w", hsm.CKR(0xA0)))) // CKR_PIN_INCORRECT
	assert.Equal(t, hsm.ClassContext, hsm.Classify(context.Canceled))
	assert.Equal(t, hsm.ClassMember, hsm.Classify(hsm.ErrTimeout))
	assert.Equal(t, hsm.ClassNone, hsm.Classify(nil))
}

// TestHMACHashSizes: an HMAC key computes MACs with hashes no longer than
// itself (a shorter hash is allowed: kmsadapter's key check values use
// HMAC-SHA256 under every HMAC key), and a longer hash is the key's
// fault, refused before the token is asked, without a code.
func TestHMACHashSizes(t *testing.T) {
	ctx := context.Background()
	tok := open(t, member(t), nil)
	_, err := tok.GenerateKey(ctx, "mac256", hsm.HMAC256, hsm.KeyOptions{})
	require.NoError(t, err)
	msg := []byte("message")
	for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA224, crypto.SHA256} {
		mac, err := tok.MAC(ctx, "mac256", h, msg)
		require.NoError(t, err, h)
		require.NoError(t, tok.VerifyMAC(ctx, "mac256", h, msg, mac), h)
	}
	for _, h := range []crypto.Hash{crypto.SHA384, crypto.SHA512} {
		_, err := tok.MAC(ctx, "mac256", h, msg)
		require.ErrorIs(t, err, hsm.ErrWrongKeyType, h)
		err2 := tok.VerifyMAC(ctx, "mac256", h, msg, make([]byte, h.Size()))
		require.ErrorIs(t, err2, hsm.ErrWrongKeyType, h)
		for _, err := range []error{err, err2} {
			assert.Equal(t, hsm.ClassCaller, hsm.Classify(err))
			var he *hsm.Error
			require.ErrorAs(t, err, &he)
			assert.Zero(t, he.Code, "refused before the token is asked")
		}
	}
	assert.True(t, tok.Health().Healthy)
}

// TestOAEPPlaintextLimit: RSA-OAEP takes at most k - 2hLen - 2 bytes
// (214 under a 2048-bit key with SHA-1); one more is the caller's
// ErrInvalidInput, refused before the token (SoftHSM would answer
// CKR_GENERAL_ERROR), and the token stays healthy.
func TestOAEPPlaintextLimit(t *testing.T) {
	ctx := context.Background()
	tok := open(t, member(t), nil)
	_, err := tok.GenerateKey(ctx, "rsa", hsm.RSA2048, hsm.KeyOptions{Usage: hsm.UsageEncrypt})
	require.NoError(t, err)
	msg := bytes.Repeat([]byte{0xa5}, 256-2*sha1.Size-2)
	ct, err := tok.EncryptOAEP(ctx, "rsa", crypto.SHA1, msg)
	require.NoError(t, err)
	pt, err := tok.DecryptOAEP(ctx, "rsa", crypto.SHA1, ct)
	require.NoError(t, err)
	assert.Equal(t, msg, pt)
	for _, n := range []int{len(msg) + 1, 256, 300} {
		_, err := tok.EncryptOAEP(ctx, "rsa", crypto.SHA1, make([]byte, n))
		require.ErrorIs(t, err, hsm.ErrInvalidInput, n)
		assert.Equal(t, hsm.ClassCaller, hsm.Classify(err), n)
		var he *hsm.Error
		require.ErrorAs(t, err, &he)
		assert.Equal(t, hsm.OpEncrypt, he.Op)
		assert.Zero(t, he.Code, "refused before the token is asked")
	}
	assert.True(t, tok.Health().Healthy)
}

// TestDestroyKeyLeavesOthersObjects: DestroyKey destroys what this library
// made under an ID (a key pair's two halves, a transport key's public key,
// a pending original of CreateTrustedWrappingKey) and nothing else: another
// application's certificate under the same CKA_ID stays, and when it is
// all there is, DestroyKey says ErrKeyNotFound, as Describe does.
func TestDestroyKeyLeavesOthersObjects(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, nil)
	p, s := secondClient(t, m, tok)
	byID := func(id string) []*pkcs11.Attribute {
		return []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(id))}
	}
	certificate := func(id string) {
		_, err := p.CreateObject(s, append(byID(id),
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE),
			pkcs11.NewAttribute(pkcs11.CKA_CERTIFICATE_TYPE, pkcs11.CKC_X_509),
			pkcs11.NewAttribute(pkcs11.CKA_SUBJECT, []byte{0x30, 0}),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, "other-app"),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, []byte("someone else's")),
		))
		require.NoError(t, err)
	}
	isCertificate := func(o pkcs11.ObjectHandle) {
		a, err := p.GetAttributeValue(s, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
		require.NoError(t, err)
		assert.Equal(t, "other-app", string(a[0].Value))
	}

	// Only another application's object under the ID.
	certificate("shared")
	_, err := tok.Describe(ctx, "shared")
	require.ErrorIs(t, err, hsm.ErrKeyNotFound)
	err = tok.DestroyKey(ctx, "shared")
	require.ErrorIs(t, err, hsm.ErrKeyNotFound)
	assert.Equal(t, hsm.ClassCaller, hsm.Classify(err))
	objs := findObjects(t, p, s, byID("shared")...)
	require.Len(t, objs, 1, "another application's object was destroyed")
	isCertificate(objs[0])

	// A key pair of ours beside it: both halves go, the certificate stays.
	_, err = tok.GenerateKey(ctx, "mine", hsm.ECP256, hsm.KeyOptions{})
	require.NoError(t, err)
	certificate("mine")
	require.Len(t, findObjects(t, p, s, byID("mine")...), 3)
	require.NoError(t, tok.DestroyKey(ctx, "mine"))
	objs = findObjects(t, p, s, byID("mine")...)
	require.Len(t, objs, 1)
	isCertificate(objs[0])
	_, err = tok.Describe(ctx, "mine")
	require.ErrorIs(t, err, hsm.ErrKeyNotFound)
	require.ErrorIs(t, tok.DestroyKey(ctx, "mine"), hsm.ErrKeyNotFound)

	// A transport key's public key is ours too.
	_, err = tok.GenerateKey(ctx, "rsa", hsm.RSA2048, hsm.KeyOptions{Usage: hsm.UsageWrap})
	require.NoError(t, err)
	spki, err := tok.PublicKey(ctx, "rsa")
	require.NoError(t, err)
	require.NoError(t, tok.ImportTrustedPublicKey(ctx, "transport", hsm.RSA2048, spki, m.SOPIN()))
	require.NoError(t, tok.DestroyKey(ctx, "transport"))
	assert.Empty(t, findObjects(t, p, s, byID("transport")...))

	// So is the original a cut-off CreateTrustedWrappingKey leaves.
	_, err = p.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, append(byID("pending"),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, "hsmkms-pending:pending"),
	))
	require.NoError(t, err)
	require.NoError(t, tok.DestroyKey(ctx, "pending"))
	assert.Empty(t, findObjects(t, p, s, byID("pending")...))
}

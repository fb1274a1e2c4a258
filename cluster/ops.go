package cluster

import (
	"context"
	"crypto"
	"slices"
	"sync/atomic"

	"github.com/hsmkms/hsmkms/hsm"
)

// The data plane: each call goes to a healthy member that holds the key
// (see the package documentation for how one is chosen), and to another
// when that member fails. Arguments and results are those of the
// *hsm.Token method of the same name.

type pair[A, B any] struct {
	a A
	b B
}

// Describe returns what a member holding the key knows of it.
func (c *Cluster) Describe(ctx context.Context, id hsm.KeyID) (hsm.KeyInfo, error) {
	return route(c, ctx, "describe", id, true, func(ctx context.Context, t *hsm.Token) (hsm.KeyInfo, error) {
		return t.Describe(ctx, id)
	})
}

// EncryptGCM encrypts with AES-GCM; see hsm.Token.EncryptGCM. The IV
// travels with the ciphertext, so any member can decrypt.
func (c *Cluster) EncryptGCM(ctx context.Context, id hsm.KeyID, iv, plaintext, aad []byte) (ciphertext, ivUsed []byte, err error) {
	return c.AppendEncryptGCM(ctx, nil, id, iv, plaintext, aad)
}

// AppendEncryptGCM is EncryptGCM appending to dst; see
// hsm.Token.AppendEncryptGCM. Only the first attempt writes into dst's
// spare room: a retry or a hedged attempt gets an array of its own. When
// the result does not share dst's array (an error, too little room, or
// another attempt's answer won), the first attempt, abandoned or
// cancelled, may still write into dst's spare room later: do not reuse
// that array then.
func (c *Cluster) AppendEncryptGCM(ctx context.Context, dst []byte, id hsm.KeyID, iv, plaintext, aad []byte) (out, ivUsed []byte, err error) {
	var lent atomic.Bool
	// A caller's IV must never be used twice under one key, so a call
	// with one is not hedged: two members would encrypt with it.
	p, err := route(c, ctx, "encrypt", id, iv == nil, func(ctx context.Context, t *hsm.Token) (pair[[]byte, []byte], error) {
		buf := dst
		if lent.Swap(true) {
			buf = slices.Clip(dst)
		}
		ct, ivu, err := t.AppendEncryptGCM(ctx, buf, id, iv, plaintext, aad)
		return pair[[]byte, []byte]{ct, ivu}, err
	})
	return p.a, p.b, err
}

// DecryptGCM decrypts and authenticates; see hsm.Token.DecryptGCM.
func (c *Cluster) DecryptGCM(ctx context.Context, id hsm.KeyID, iv, ciphertext, aad []byte) ([]byte, error) {
	return route(c, ctx, "decrypt", id, true, func(ctx context.Context, t *hsm.Token) ([]byte, error) {
		return t.DecryptGCM(ctx, id, iv, ciphertext, aad)
	})
}

// EncryptOAEP encrypts with RSA-OAEP; see hsm.Token.EncryptOAEP.
func (c *Cluster) EncryptOAEP(ctx context.Context, id hsm.KeyID, h crypto.Hash, plaintext []byte) ([]byte, error) {
	return route(c, ctx, "encrypt-oaep", id, true, func(ctx context.Context, t *hsm.Token) ([]byte, error) {
		return t.EncryptOAEP(ctx, id, h, plaintext)
	})
}

// DecryptOAEP decrypts RSA-OAEP; see hsm.Token.DecryptOAEP.
func (c *Cluster) DecryptOAEP(ctx context.Context, id hsm.KeyID, h crypto.Hash, ciphertext []byte) ([]byte, error) {
	return route(c, ctx, "decrypt-oaep", id, true, func(ctx context.Context, t *hsm.Token) ([]byte, error) {
		return t.DecryptOAEP(ctx, id, h, ciphertext)
	})
}

// Sign signs a digest; see hsm.Token.Sign.
func (c *Cluster) Sign(ctx context.Context, id hsm.KeyID, sc hsm.SigningScheme, h crypto.Hash, digest []byte) ([]byte, error) {
	return route(c, ctx, "sign", id, true, func(ctx context.Context, t *hsm.Token) ([]byte, error) {
		return t.Sign(ctx, id, sc, h, digest)
	})
}

// Verify checks a signature; see hsm.Token.Verify.
func (c *Cluster) Verify(ctx context.Context, id hsm.KeyID, sc hsm.SigningScheme, h crypto.Hash, digest, sig []byte) error {
	_, err := route(c, ctx, "verify", id, true, func(ctx context.Context, t *hsm.Token) (struct{}, error) {
		return struct{}{}, t.Verify(ctx, id, sc, h, digest, sig)
	})
	return err
}

// MAC computes an HMAC; see hsm.Token.MAC.
func (c *Cluster) MAC(ctx context.Context, id hsm.KeyID, h crypto.Hash, msg []byte) ([]byte, error) {
	return route(c, ctx, "mac", id, true, func(ctx context.Context, t *hsm.Token) ([]byte, error) {
		return t.MAC(ctx, id, h, msg)
	})
}

// VerifyMAC checks an HMAC; see hsm.Token.VerifyMAC.
func (c *Cluster) VerifyMAC(ctx context.Context, id hsm.KeyID, h crypto.Hash, msg, mac []byte) error {
	_, err := route(c, ctx, "verify-mac", id, true, func(ctx context.Context, t *hsm.Token) (struct{}, error) {
		return struct{}{}, t.VerifyMAC(ctx, id, h, msg, mac)
	})
	return err
}

// PublicKey returns a key pair's public half as DER
// SubjectPublicKeyInfo; see hsm.Token.PublicKey.
func (c *Cluster) PublicKey(ctx context.Context, id hsm.KeyID) ([]byte, error) {
	return route(c, ctx, "public-key", id, true, func(ctx context.Context, t *hsm.Token) ([]byte, error) {
		return t.PublicKey(ctx, id)
	})
}

// Random returns n random bytes from a healthy member; see
// hsm.Token.Random.
func (c *Cluster) Random(ctx context.Context, n int) ([]byte, error) {
	return route(c, ctx, "random", "", true, func(ctx context.Context, t *hsm.Token) ([]byte, error) {
		return t.Random(ctx, n)
	})
}

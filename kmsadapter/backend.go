package kmsadapter

import (
	"context"
	"crypto"

	"github.com/hsmkms/hsmkms/cluster"
	"github.com/hsmkms/hsmkms/hsm"
)

// Backend is what the adapter needs from the HSMs. Its methods have the
// signatures of *hsm.Token's, so one token serves as a Backend, and so
// does a cluster of tokens, which exposes the same methods.
//
// AppendEncryptGCM appends the ciphertext to dst as cipher.AEAD's Seal
// does; when its result does not share dst's array, dst's spare room may
// still be written by an abandoned call, and the adapter never reuses it.
//
// Keys the adapter creates are extractable only under a trusted wrapping
// key (hsm.KeyOptions.Extractable), so that a cluster can copy them
// between members; the adapter itself never wraps a key.
type Backend interface {
	GenerateKey(ctx context.Context, id hsm.KeyID, spec hsm.KeySpec, opts hsm.KeyOptions) (hsm.KeyInfo, error)
	DestroyKey(ctx context.Context, id hsm.KeyID) error
	Describe(ctx context.Context, id hsm.KeyID) (hsm.KeyInfo, error)
	EncryptGCM(ctx context.Context, id hsm.KeyID, iv, plaintext, aad []byte) (ciphertext, ivUsed []byte, err error)
	AppendEncryptGCM(ctx context.Context, dst []byte, id hsm.KeyID, iv, plaintext, aad []byte) (out, ivUsed []byte, err error)
	DecryptGCM(ctx context.Context, id hsm.KeyID, iv, ciphertext, aad []byte) ([]byte, error)
	EncryptOAEP(ctx context.Context, id hsm.KeyID, h crypto.Hash, plaintext []byte) ([]byte, error)
	DecryptOAEP(ctx context.Context, id hsm.KeyID, h crypto.Hash, ciphertext []byte) ([]byte, error)
	Sign(ctx context.Context, id hsm.KeyID, sc hsm.SigningScheme, h crypto.Hash, digest []byte) ([]byte, error)
	Verify(ctx context.Context, id hsm.KeyID, sc hsm.SigningScheme, h crypto.Hash, digest, sig []byte) error
	MAC(ctx context.Context, id hsm.KeyID, h crypto.Hash, msg []byte) ([]byte, error)
	VerifyMAC(ctx context.Context, id hsm.KeyID, h crypto.Hash, msg, mac []byte) error
	PublicKey(ctx context.Context, id hsm.KeyID) ([]byte, error)
	Random(ctx context.Context, n int) ([]byte, error)
	UnwrapKey(ctx context.Context, req hsm.UnwrapRequest) (hsm.KeyInfo, error)
}

var (
	_ Backend = (*hsm.Token)(nil)
	_ Backend = (*cluster.Cluster)(nil)
)

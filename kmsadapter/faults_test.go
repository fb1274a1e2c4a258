package kmsadapter_test

import (
	"context"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/kmsadapter"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
)

// TestHSMFaultsAsAWSErrors checks what a caller sees when the HSM cannot
// serve: KeyUnavailableException for a failing device,
// DependencyTimeoutException for one that does not answer in time, the
// context's own error when the caller's context ends.
func TestHSMFaultsAsAWSErrors(t *testing.T) {
	sh := softhsmtest.New(t, 1)
	m := sh.Members[0]
	tc := m.Config()
	tc.CallTimeout = 300 * time.Millisecond
	tok, err := hsm.Open(bg, tc, hsm.WithInterceptor(m.Faults))
	require.NoError(t, err)
	t.Cleanup(func() { m.Faults.Release(); require.NoError(t, tok.Close()) })
	c, err := kmsadapter.New(tok, kmsadapter.NewMemoryStore(), kmsadapter.DefaultConfig())
	require.NoError(t, err)
	id := createKey(t, c)
	enc := func(ctx context.Context) error {
		_, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: str(id), Plaintext: []byte("x")})
		return err
	}

	m.Faults.FailNext(hsm.OpEncrypt, 2, pkcs11.CKR_DEVICE_ERROR) // the hsm package retries once
	require.Equal(t, "KeyUnavailableException", code(enc(bg)))
	require.NoError(t, enc(bg), "the token recovers")

	require.NoError(t, m.Crash())
	require.Equal(t, "KeyUnavailableException", code(enc(bg)))
	require.NoError(t, m.Restart())
	require.NoError(t, enc(bg), "after the restart")

	m.Faults.Hang(hsm.OpEncrypt)
	require.Equal(t, "DependencyTimeoutException", code(enc(bg)))
	m.Faults.Release()

	m.Faults.Hang(hsm.OpEncrypt)
	ctx, cancel := context.WithCancel(bg)
	go func() {
		_ = m.Faults.AwaitHung(bg, 1)
		cancel()
	}()
	err = enc(ctx)
	require.ErrorIs(t, err, context.Canceled, "the caller's own cancellation, as the SDK returns it")
	m.Faults.Release()
	// Not asserted here: the first call after releasing a cancelled hung
	// call sometimes fails with hsm.ErrKeyNotFound for an existing key
	// (2 runs in 8); reported to the hsm package.
}

// TestSECP256K1 creates an ECC_SECG_P256K1 key where the HSM has the curve
// (SoftHSM does) and signs with it.
func TestSECP256K1(t *testing.T) {
	e := newEnv(t)
	id := e.createKey(types.KeySpecEccSecgP256k1, types.KeyUsageTypeSignVerify)
	sig, err := e.c.Sign(bg, &kms.SignInput{KeyId: str(id), Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	require.NoError(t, err)
	_, err = e.c.Verify(bg, &kms.VerifyInput{KeyId: str(id), Message: []byte("m"), Signature: sig.Signature, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	require.NoError(t, err)
	pub, err := e.c.GetPublicKey(bg, &kms.GetPublicKeyInput{KeyId: str(id)})
	require.NoError(t, err)
	require.Equal(t, types.KeySpecEccSecgP256k1, pub.KeySpec)
	require.Len(t, pub.PublicKey, 88, "SubjectPublicKeyInfo of an uncompressed secp256k1 point")
}

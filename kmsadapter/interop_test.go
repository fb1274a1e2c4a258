package kmsadapter_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/stretchr/testify/require"
)

// TestSignaturesVerifyWithGoCrypto checks Sign's output against Go's own
// verifiers and GetPublicKey's DER.
func TestSignaturesVerifyWithGoCrypto(t *testing.T) {
	e := newEnv(t)
	msg := []byte("the quick brown fox")
	cases := []struct {
		spec types.KeySpec
		alg  types.SigningAlgorithmSpec
	}{
		{types.KeySpecEccNistP256, types.SigningAlgorithmSpecEcdsaSha256},
		{types.KeySpecEccNistP384, types.SigningAlgorithmSpecEcdsaSha384},
		{types.KeySpecEccNistP521, types.SigningAlgorithmSpecEcdsaSha512},
		{types.KeySpecRsa2048, types.SigningAlgorithmSpecRsassaPssSha256},
		{types.KeySpecRsa2048, types.SigningAlgorithmSpecRsassaPssSha512},
		{types.KeySpecRsa2048, types.SigningAlgorithmSpecRsassaPkcs1V15Sha256},
		{types.KeySpecRsa2048, types.SigningAlgorithmSpecRsassaPkcs1V15Sha384},
	}
	keys := map[types.KeySpec]string{}
	for _, tc := range cases {
		t.Run(string(tc.spec)+"/"+string(tc.alg), func(t *testing.T) {
			id, ok := keys[tc.spec]
			if !ok {
				id = e.createKey(tc.spec, types.KeyUsageTypeSignVerify)
				keys[tc.spec] = id
			}
			pub, err := e.c.GetPublicKey(bg, &kms.GetPublicKeyInput{KeyId: str(id)})
			require.NoError(t, err)
			require.Contains(t, pub.SigningAlgorithms, tc.alg)
			pk, err := x509.ParsePKIXPublicKey(pub.PublicKey)
			require.NoError(t, err)
			out, err := e.c.Sign(bg, &kms.SignInput{KeyId: str(id), Message: msg, SigningAlgorithm: tc.alg})
			require.NoError(t, err)
			var h crypto.Hash
			switch tc.alg {
			case types.SigningAlgorithmSpecEcdsaSha256, types.SigningAlgorithmSpecRsassaPssSha256, types.SigningAlgorithmSpecRsassaPkcs1V15Sha256:
				h = crypto.SHA256
			case types.SigningAlgorithmSpecEcdsaSha384, types.SigningAlgorithmSpecRsassaPkcs1V15Sha384:
				h = crypto.SHA384
			default:
				h = crypto.SHA512
			}
			d := h.New()
			d.Write(msg)
			digest := d.Sum(nil)
			switch k := pk.(type) {
			case *ecdsa.PublicKey:
				require.True(t, ecdsa.VerifyASN1(k, digest, out.Signature))
				digest[0] ^= 1
				require.False(t, ecdsa.VerifyASN1(k, digest, out.Signature))
			case *rsa.PublicKey:
				if tc.alg == types.SigningAlgorithmSpecRsassaPssSha256 || tc.alg == types.SigningAlgorithmSpecRsassaPssSha512 {
					// AWS KMS uses a salt as long as the digest.
					require.NoError(t, rsa.VerifyPSS(k, h, digest, out.Signature, &rsa.PSSOptions{SaltLength: h.Size()}))
				} else {
					require.NoError(t, rsa.VerifyPKCS1v15(k, h, digest, out.Signature))
				}
			default:
				t.Fatalf("public key of type %T", pk)
			}
		})
	}
}

// TestRSAEncryptInGoDecryptsThroughKMS encrypts with Go's crypto/rsa under
// GetPublicKey's key, as an AWS user would offline, and decrypts with
// Decrypt.
func TestRSAEncryptInGoDecryptsThroughKMS(t *testing.T) {
	e := newEnv(t)
	id := e.createKey(types.KeySpecRsa2048, types.KeyUsageTypeEncryptDecrypt)
	pub, err := e.c.GetPublicKey(bg, &kms.GetPublicKeyInput{KeyId: str(id)})
	require.NoError(t, err)
	require.Equal(t, []types.EncryptionAlgorithmSpec{types.EncryptionAlgorithmSpecRsaesOaepSha1, types.EncryptionAlgorithmSpecRsaesOaepSha256}, pub.EncryptionAlgorithms)
	pk, err := x509.ParsePKIXPublicKey(pub.PublicKey)
	require.NoError(t, err)
	ct, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, pk.(*rsa.PublicKey), []byte("offline secret"), nil)
	require.NoError(t, err)
	out, err := e.c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: ct, KeyId: str(id), EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1})
	require.NoError(t, err)
	require.Equal(t, "offline secret", string(out.Plaintext))
	require.Equal(t, keyARN(id), *out.KeyId)

	// SHA-256 OAEP: SoftHSM 2.6 cannot, and says so as AWS would.
	ct256, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pk.(*rsa.PublicKey), []byte("offline secret"), nil)
	require.NoError(t, err)
	_, err = e.c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: ct256, KeyId: str(id), EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha256})
	require.Equal(t, "UnsupportedOperationException", code(err))
}

// TestDataKeyPairs checks that data key pair private keys are PKCS#8, that
// they match the public key, and that the encrypted copy decrypts to them.
func TestDataKeyPairs(t *testing.T) {
	e := newEnv(t)
	id := e.createKey("", "")
	ec := map[string]string{"purpose": "pair"}
	for _, spec := range []types.DataKeyPairSpec{types.DataKeyPairSpecEccNistP256, types.DataKeyPairSpecEccNistP521, types.DataKeyPairSpecRsa2048} {
		t.Run(string(spec), func(t *testing.T) {
			out, err := e.c.GenerateDataKeyPair(bg, &kms.GenerateDataKeyPairInput{KeyId: str(id), KeyPairSpec: spec, EncryptionContext: ec})
			require.NoError(t, err)
			require.Equal(t, spec, out.KeyPairSpec)
			priv, err := x509.ParsePKCS8PrivateKey(out.PrivateKeyPlaintext)
			require.NoError(t, err)
			pub, err := x509.ParsePKIXPublicKey(out.PublicKey)
			require.NoError(t, err)
			require.True(t, priv.(interface{ Public() crypto.PublicKey }).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(pub))
			dec, err := e.c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: out.PrivateKeyCiphertextBlob, EncryptionContext: ec})
			require.NoError(t, err)
			require.Equal(t, out.PrivateKeyPlaintext, dec.Plaintext)
			// A signature made with the private key verifies with the public one.
			digest := sha512.Sum512_256([]byte("m"))
			sig, err := priv.(crypto.Signer).Sign(rand.Reader, digest[:], crypto.SHA512_256)
			require.NoError(t, err)
			switch k := pub.(type) {
			case *ecdsa.PublicKey:
				require.True(t, ecdsa.VerifyASN1(k, digest[:], sig))
			case *rsa.PublicKey:
				require.NoError(t, rsa.VerifyPKCS1v15(k, crypto.SHA512_256, digest[:], sig))
			}
		})
	}
}

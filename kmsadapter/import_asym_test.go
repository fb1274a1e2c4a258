package kmsadapter_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/stretchr/testify/require"

	"github.com/hsmkms/hsmkms/cluster"
	"github.com/hsmkms/hsmkms/hsm"
)

// memberMaterial lists, read from member i's token itself, the HSM keys
// that hold material of KMS key id.
func (e *clusterEnv) memberMaterial(t *testing.T, i int, id string) []hsm.KeyID {
	t.Helper()
	infos, err := e.sh.Members[i].Open(t).ListKeys(bg)
	require.NoError(t, err)
	var out []hsm.KeyID
	for _, k := range infos {
		if strings.HasPrefix(string(k.ID), id+"/v") {
			out = append(out, k.ID)
		}
	}
	return out
}

// TestImportAsymmetric imports RSA and EC private keys (PKCS#8, wrapped in
// Go as an AWS user wraps them) into keys of a three-member cluster: the
// public key is the original's, signatures verify with it, re-import
// takes only the same material, and material of the wrong spec leaves
// nothing on any member.
func TestImportAsymmetric(t *testing.T) {
	e := newClusterEnv(t, 3)
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

	create := func(spec types.KeySpec, usage types.KeyUsageType) string {
		out, err := e.c.CreateKey(bg, &kms.CreateKeyInput{Origin: types.OriginTypeExternal, KeySpec: spec, KeyUsage: usage})
		require.NoError(t, err)
		require.Equal(t, types.KeyStatePendingImport, out.KeyMetadata.KeyState)
		return *out.KeyMetadata.KeyId
	}
	params := func(id string, alg types.AlgorithmSpec, wks types.WrappingKeySpec) (*kms.GetParametersForImportOutput, error) {
		return e.c.GetParametersForImport(bg, &kms.GetParametersForImportInput{KeyId: str(id), WrappingAlgorithm: alg, WrappingKeySpec: wks})
	}
	importKey := func(id string, alg types.AlgorithmSpec, key any) error {
		p, err := params(id, alg, types.WrappingKeySpecRsa2048)
		require.NoError(t, err)
		p8, err := x509.MarshalPKCS8PrivateKey(key)
		require.NoError(t, err)
		_, err = e.c.ImportKeyMaterial(bg, &kms.ImportKeyMaterialInput{KeyId: str(id), ImportToken: p.ImportToken,
			EncryptedKeyMaterial: awsWrap(t, alg, p.PublicKey, p8), ExpirationModel: types.ExpirationModelTypeKeyMaterialDoesNotExpire})
		return err
	}

	for _, c := range []struct {
		spec  types.KeySpec
		usage types.KeyUsageType
		alg   types.AlgorithmSpec
		key   crypto.Signer
		sign  types.SigningAlgorithmSpec
	}{
		{types.KeySpecRsa2048, types.KeyUsageTypeSignVerify, types.AlgorithmSpecRsaAesKeyWrapSha1, rsa2048, types.SigningAlgorithmSpecRsassaPkcs1V15Sha256},
		{types.KeySpecRsa3072, types.KeyUsageTypeEncryptDecrypt, types.AlgorithmSpecRsaAesKeyWrapSha1, rsa3072, ""},
		{types.KeySpecEccNistP256, types.KeyUsageTypeSignVerify, types.AlgorithmSpecRsaesOaepSha1, p256, types.SigningAlgorithmSpecEcdsaSha256},
		{types.KeySpecEccNistP384, types.KeyUsageTypeSignVerify, types.AlgorithmSpecRsaAesKeyWrapSha1, p384, types.SigningAlgorithmSpecEcdsaSha384},
		{types.KeySpecEccNistP521, types.KeyUsageTypeSignVerify, types.AlgorithmSpecRsaAesKeyWrapSha1, p521, types.SigningAlgorithmSpecEcdsaSha512},
	} {
		t.Run(string(c.spec), func(t *testing.T) {
			id := create(c.spec, c.usage)
			require.NoError(t, importKey(id, c.alg, c.key))
			want, err := x509.MarshalPKIXPublicKey(c.key.Public())
			require.NoError(t, err)
			pk, err := e.c.GetPublicKey(bg, &kms.GetPublicKeyInput{KeyId: str(id)})
			require.NoError(t, err)
			require.Equal(t, want, pk.PublicKey, "GetPublicKey returns the original's SubjectPublicKeyInfo")
			for i := range 3 {
				require.Len(t, e.memberMaterial(t, i, id), 1, "member %d holds the material", i)
			}
			switch c.usage {
			case types.KeyUsageTypeSignVerify:
				msg := []byte("signed by imported material")
				out, err := e.c.Sign(bg, &kms.SignInput{KeyId: str(id), Message: msg, SigningAlgorithm: c.sign})
				require.NoError(t, err)
				switch k := c.key.Public().(type) {
				case *rsa.PublicKey:
					d := sha256.Sum256(msg)
					require.NoError(t, rsa.VerifyPKCS1v15(k, crypto.SHA256, d[:], out.Signature))
				case *ecdsa.PublicKey:
					var d []byte
					switch c.sign {
					case types.SigningAlgorithmSpecEcdsaSha256:
						s := sha256.Sum256(msg)
						d = s[:]
					case types.SigningAlgorithmSpecEcdsaSha384:
						s := sha512.Sum384(msg)
						d = s[:]
					default:
						s := sha512.Sum512(msg)
						d = s[:]
					}
					require.True(t, ecdsa.VerifyASN1(k, d, out.Signature))
				}
			case types.KeyUsageTypeEncryptDecrypt:
				ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, c.key.Public().(*rsa.PublicKey), []byte("secret"), nil)
				require.NoError(t, err)
				_, err = e.c.Decrypt(bg, &kms.DecryptInput{KeyId: str(id), CiphertextBlob: ct, EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha256})
				// SoftHSM 2.6 has RSA-OAEP with SHA-1 only.
				if err != nil {
					require.Equal(t, "UnsupportedOperationException", code(err), "%v", err)
				}
			}

			// Deleted material comes back only as the same material.
			_, err = e.c.DeleteImportedKeyMaterial(bg, &kms.DeleteImportedKeyMaterialInput{KeyId: str(id)})
			require.NoError(t, err)
			for i := range 3 {
				require.Empty(t, e.memberMaterial(t, i, id), "member %d", i)
			}
			var other any = p384
			if _, ok := c.key.(*rsa.PrivateKey); ok {
				other = map[types.KeySpec]any{types.KeySpecRsa2048: rsa2048, types.KeySpecRsa3072: rsa3072}[c.spec]
				other, err = rsa.GenerateKey(rand.Reader, other.(*rsa.PrivateKey).N.BitLen())
				require.NoError(t, err)
			} else if c.spec == types.KeySpecEccNistP384 {
				other, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
				require.NoError(t, err)
			}
			if c.spec == types.KeySpecEccNistP256 || c.spec == types.KeySpecEccNistP521 {
				// Another key of the right curve.
				curve := map[types.KeySpec]elliptic.Curve{types.KeySpecEccNistP256: elliptic.P256(), types.KeySpecEccNistP521: elliptic.P521()}[c.spec]
				other, err = ecdsa.GenerateKey(curve, rand.Reader)
				require.NoError(t, err)
			}
			err = importKey(id, c.alg, other)
			require.Equal(t, "IncorrectKeyMaterialException", code(err), "%v", err)
			for i := range 3 {
				require.Empty(t, e.memberMaterial(t, i, id), "member %d", i)
			}
			require.NoError(t, importKey(id, c.alg, c.key))
			pk, err = e.c.GetPublicKey(bg, &kms.GetPublicKeyInput{KeyId: str(id)})
			require.NoError(t, err)
			require.Equal(t, want, pk.PublicKey)
			d, err := e.c.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: str(id)})
			require.NoError(t, err)
			require.Equal(t, types.KeyStateEnabled, d.KeyMetadata.KeyState)
		})
	}

	t.Run("wrong spec", func(t *testing.T) {
		// PKCS#8 keys of another size, curve or type than the key's spec
		// are IncorrectKeyMaterialException and leave nothing anywhere.
		for _, c := range []struct {
			spec types.KeySpec
			key  any
		}{
			{types.KeySpecRsa2048, rsa3072},
			{types.KeySpecEccNistP256, p384},
			{types.KeySpecRsa2048, p256},
			{types.KeySpecEccNistP384, rsa2048},
		} {
			id := create(c.spec, types.KeyUsageTypeSignVerify)
			err := importKey(id, types.AlgorithmSpecRsaAesKeyWrapSha1, c.key)
			require.Equal(t, "IncorrectKeyMaterialException", code(err), "%s: %v", c.spec, err)
			for i := range 3 {
				require.Empty(t, e.memberMaterial(t, i, id), "member %d", i)
			}
			d, err := e.c.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: str(id)})
			require.NoError(t, err)
			require.Equal(t, types.KeyStatePendingImport, d.KeyMetadata.KeyState)
		}
		for _, m := range e.cl.Members() {
			require.Equal(t, cluster.Healthy, m.State, "refused material fails no member")
		}
	})

	t.Run("wrapping rules", func(t *testing.T) {
		rsaKey := create(types.KeySpecRsa4096, types.KeyUsageTypeSignVerify)
		_, err := params(rsaKey, types.AlgorithmSpecRsaesOaepSha1, types.WrappingKeySpecRsa4096)
		require.Equal(t, "ValidationException", code(err), "RSA key material with RSAES_OAEP")
		p521Key := create(types.KeySpecEccNistP521, types.KeyUsageTypeSignVerify)
		_, err = params(p521Key, types.AlgorithmSpecRsaesOaepSha1, types.WrappingKeySpecRsa2048)
		require.Equal(t, "ValidationException", code(err))
		_, err = params(p521Key, types.AlgorithmSpecRsaesOaepSha1, types.WrappingKeySpecRsa3072)
		require.NoError(t, err, "ECC_NIST_P521 fits RSAES_OAEP under a larger wrapping key")
		_, err = params(p521Key, types.AlgorithmSpecRsaAesKeyWrapSha1, types.WrappingKeySpecRsa2048)
		require.NoError(t, err)
		_, err = e.c.CreateKey(bg, &kms.CreateKeyInput{Origin: types.OriginTypeExternal, KeySpec: types.KeySpecEccSecgP256k1, KeyUsage: types.KeyUsageTypeSignVerify})
		require.Equal(t, "UnsupportedOperationException", code(err))
	})
}

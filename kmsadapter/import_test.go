package kmsadapter_test

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"hash"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/stretchr/testify/require"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/kmsadapter"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
)

// awsWrap wraps material as the AWS documentation tells users to.
func awsWrap(t *testing.T, alg types.AlgorithmSpec, pubDER, material []byte) []byte {
	t.Helper()
	pk, err := x509.ParsePKIXPublicKey(pubDER)
	require.NoError(t, err)
	pub := pk.(*rsa.PublicKey)
	switch alg {
	case types.AlgorithmSpecRsaesOaepSha1:
		out, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, pub, material, nil)
		require.NoError(t, err)
		return out
	case types.AlgorithmSpecRsaAesKeyWrapSha1:
		out, err := softhsmtest.RSAAESKeyWrap(pub, material)
		require.NoError(t, err)
		return out
	}
	t.Fatalf("algorithm %s", alg)
	return nil
}

// localDecrypt opens a kmsadapter ciphertext blob with Go's AES-GCM and the
// key material, proving the HSM holds exactly the imported material.
func localDecrypt(t *testing.T, material, blob []byte, ec map[string]string) []byte {
	t.Helper()
	block, err := aes.NewCipher(material)
	require.NoError(t, err)
	gcm, err := cipher.NewGCM(block)
	require.NoError(t, err)
	aad := append(append([]byte(nil), blob[:21]...), kmsadapter.EncodeContext(ec)...)
	pt, err := gcm.Open(nil, blob[21:33], blob[33:], aad)
	require.NoError(t, err)
	return pt
}

func getParams(t *testing.T, c *kmsadapter.Client, id string, alg types.AlgorithmSpec) *kms.GetParametersForImportOutput {
	t.Helper()
	p, err := c.GetParametersForImport(bg, &kms.GetParametersForImportInput{KeyId: str(id), WrappingAlgorithm: alg, WrappingKeySpec: types.WrappingKeySpecRsa2048})
	require.NoError(t, err)
	return p
}

func TestImportSymmetric(t *testing.T) {
	e := newEnv(t)
	out, err := e.c.CreateKey(bg, &kms.CreateKeyInput{Origin: types.OriginTypeExternal})
	require.NoError(t, err)
	id := *out.KeyMetadata.KeyId
	require.Equal(t, types.OriginTypeExternal, out.KeyMetadata.Origin)
	require.Nil(t, out.KeyMetadata.CurrentKeyMaterialId)

	material := make([]byte, 32)
	_, _ = rand.Read(material)
	p := getParams(t, e.c, id, types.AlgorithmSpecRsaesOaepSha1)
	require.True(t, p.ParametersValidTo.Equal(e.clock.Now().Add(24*time.Hour)))

	// A token of another call, and a token past its 24 hours, are refused.
	_, err = e.c.ImportKeyMaterial(bg, &kms.ImportKeyMaterialInput{KeyId: str(id), ImportToken: append([]byte{1}, make([]byte, 32)...), EncryptedKeyMaterial: awsWrap(t, types.AlgorithmSpecRsaesOaepSha1, p.PublicKey, material)})
	require.Equal(t, "InvalidImportTokenException", code(err))
	e.clock.Advance(24 * time.Hour)
	_, err = e.c.ImportKeyMaterial(bg, &kms.ImportKeyMaterialInput{KeyId: str(id), ImportToken: p.ImportToken, EncryptedKeyMaterial: awsWrap(t, types.AlgorithmSpecRsaesOaepSha1, p.PublicKey, material)})
	require.Equal(t, "ExpiredImportTokenException", code(err))
	require.NoError(t, e.c.Tick(bg))
	_, err = e.tok.Describe(bg, hsm.KeyID(id+"/import1"))
	require.ErrorIs(t, err, hsm.ErrKeyNotFound, "Tick destroys expired wrapping keys")

	p = getParams(t, e.c, id, types.AlgorithmSpecRsaesOaepSha1)
	// Garbage does not unwrap.
	_, err = e.c.ImportKeyMaterial(bg, &kms.ImportKeyMaterialInput{KeyId: str(id), ImportToken: p.ImportToken, EncryptedKeyMaterial: make([]byte, 256)})
	require.Equal(t, "InvalidCiphertextException", code(err))
	imp, err := e.c.ImportKeyMaterial(bg, &kms.ImportKeyMaterialInput{KeyId: str(id), ImportToken: p.ImportToken, EncryptedKeyMaterial: awsWrap(t, types.AlgorithmSpecRsaesOaepSha1, p.PublicKey, material)})
	require.NoError(t, err)
	require.Len(t, *imp.KeyMaterialId, 64)
	require.Len(t, materialKeys(t, e.tok, id), 1)
	_, err = e.tok.Describe(bg, hsm.KeyID(id+"/import2"))
	require.ErrorIs(t, err, hsm.ErrKeyNotFound, "the wrapping key is destroyed once used")
	d, err := e.c.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: str(id)})
	require.NoError(t, err)
	require.Equal(t, types.KeyStateEnabled, d.KeyMetadata.KeyState)
	require.Equal(t, types.ExpirationModelTypeKeyMaterialDoesNotExpire, d.KeyMetadata.ExpirationModel)

	ec := map[string]string{"app": "import"}
	ct, err := e.c.Encrypt(bg, &kms.EncryptInput{KeyId: str(id), Plaintext: []byte("imported"), EncryptionContext: ec})
	require.NoError(t, err)
	require.Equal(t, "imported", string(localDecrypt(t, material, ct.CiphertextBlob, ec)), "the HSM holds exactly the imported material")

	// Delete the material: the key waits for it again.
	_, err = e.c.DeleteImportedKeyMaterial(bg, &kms.DeleteImportedKeyMaterialInput{KeyId: str(id)})
	require.NoError(t, err)
	require.Empty(t, materialKeys(t, e.tok, id))
	_, err = e.c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: ct.CiphertextBlob, EncryptionContext: ec})
	require.Equal(t, "KMSInvalidStateException", code(err))

	// Other material is refused; the same material, wrapped the other way, is taken.
	other := make([]byte, 32)
	_, _ = rand.Read(other)
	p = getParams(t, e.c, id, types.AlgorithmSpecRsaAesKeyWrapSha1)
	_, err = e.c.ImportKeyMaterial(bg, &kms.ImportKeyMaterialInput{KeyId: str(id), ImportToken: p.ImportToken, EncryptedKeyMaterial: awsWrap(t, types.AlgorithmSpecRsaAesKeyWrapSha1, p.PublicKey, other)})
	require.Equal(t, "IncorrectKeyMaterialException", code(err))
	require.Empty(t, materialKeys(t, e.tok, id), "refused material is not left on the HSM")
	validTo := e.clock.Now().Add(10 * 24 * time.Hour)
	_, err = e.c.ImportKeyMaterial(bg, &kms.ImportKeyMaterialInput{KeyId: str(id), ImportToken: p.ImportToken, EncryptedKeyMaterial: awsWrap(t, types.AlgorithmSpecRsaAesKeyWrapSha1, p.PublicKey, material), ValidTo: &validTo})
	require.NoError(t, err)
	dec, err := e.c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: ct.CiphertextBlob, EncryptionContext: ec})
	require.NoError(t, err)
	require.Equal(t, "imported", string(dec.Plaintext))
	// Importing the same material while it is present keeps one copy.
	p = getParams(t, e.c, id, types.AlgorithmSpecRsaesOaepSha1)
	_, err = e.c.ImportKeyMaterial(bg, &kms.ImportKeyMaterialInput{KeyId: str(id), ImportToken: p.ImportToken, EncryptedKeyMaterial: awsWrap(t, types.AlgorithmSpecRsaesOaepSha1, p.PublicKey, material), ValidTo: &validTo})
	require.NoError(t, err)
	require.Len(t, materialKeys(t, e.tok, id), 1)

	// Material with an expiry date expires.
	e.clock.Advance(10*24*time.Hour - time.Second)
	require.NoError(t, e.c.Tick(bg))
	_, err = e.c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: ct.CiphertextBlob, EncryptionContext: ec})
	require.NoError(t, err)
	e.clock.Advance(time.Second)
	require.NoError(t, e.c.Tick(bg))
	d, err = e.c.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: str(id)})
	require.NoError(t, err)
	require.Equal(t, types.KeyStatePendingImport, d.KeyMetadata.KeyState)
	require.Empty(t, materialKeys(t, e.tok, id), "expired material is destroyed on the HSM")
}

// materialKeys lists the HSM keys that hold material of KMS key id.
func materialKeys(t *testing.T, tok *hsm.Token, id string) []hsm.KeyID {
	t.Helper()
	infos, err := tok.ListKeys(bg)
	require.NoError(t, err)
	var out []hsm.KeyID
	for _, i := range infos {
		if strings.HasPrefix(string(i.ID), id+"/v") {
			out = append(out, i.ID)
		}
	}
	return out
}

func TestImportHMAC(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		spec types.KeySpec
		alg  types.MacAlgorithmSpec
		size int
		hash func() hash.Hash
	}{
		{types.KeySpecHmac224, types.MacAlgorithmSpecHmacSha224, 28, sha256.New224},
		{types.KeySpecHmac256, types.MacAlgorithmSpecHmacSha256, 32, sha256.New},
		{types.KeySpecHmac384, types.MacAlgorithmSpecHmacSha384, 48, sha512.New384},
		{types.KeySpecHmac512, types.MacAlgorithmSpecHmacSha512, 64, sha512.New},
	} {
		out, err := e.c.CreateKey(bg, &kms.CreateKeyInput{Origin: types.OriginTypeExternal, KeySpec: tc.spec, KeyUsage: types.KeyUsageTypeGenerateVerifyMac})
		require.NoError(t, err)
		id := *out.KeyMetadata.KeyId
		material := make([]byte, tc.size)
		_, _ = rand.Read(material)
		p := getParams(t, e.c, id, types.AlgorithmSpecRsaAesKeyWrapSha1)
		_, err = e.c.ImportKeyMaterial(bg, &kms.ImportKeyMaterialInput{KeyId: str(id), ImportToken: p.ImportToken, EncryptedKeyMaterial: awsWrap(t, types.AlgorithmSpecRsaAesKeyWrapSha1, p.PublicKey, material)})
		require.NoError(t, err, tc.spec)
		mac, err := e.c.GenerateMac(bg, &kms.GenerateMacInput{KeyId: str(id), Message: []byte("m"), MacAlgorithm: tc.alg})
		require.NoError(t, err, tc.spec)
		h := hmac.New(tc.hash, material)
		h.Write([]byte("m"))
		require.Equal(t, h.Sum(nil), mac.Mac, tc.spec)
	}
}

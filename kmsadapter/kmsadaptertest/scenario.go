// Package kmsadaptertest holds tests that any implementation of
// kmsadapter.API must pass, for the packages that implement or serve it.
package kmsadaptertest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/stretchr/testify/require"

	"github.com/hsmkms/hsmkms/kmsadapter"
)

// Scenario makes every call of the kmsadapter.API interface through the
// interface only, as code written for *kms.Client would, and checks the
// answers: key creation and description, aliases, tags, encryption with a
// context, data keys and key pairs, signatures, MACs, rotation, policies,
// import, disabling and deletion. It runs unchanged on a *kmsadapter.Client,
// on an aws-sdk-go-v2 *kms.Client pointed at the hsmkms server, or on AWS
// KMS itself. Give it a fresh key store: it creates keys and aliases.
func Scenario(t *testing.T, api kmsadapter.API) {
	t.Helper()
	ctx := context.Background()
	must := func(_ any, err error) {
		t.Helper()
		require.NoError(t, err)
	}

	created, err := api.CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("orders"), Tags: []types.Tag{{TagKey: aws.String("team"), TagValue: aws.String("payments")}}})
	require.NoError(t, err)
	key := *created.KeyMetadata.Arn
	must(api.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("alias/orders"), TargetKeyId: aws.String(key)}))
	must(api.UpdateKeyDescription(ctx, &kms.UpdateKeyDescriptionInput{KeyId: aws.String(key), Description: aws.String("orders, v2")}))
	d, err := api.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String("alias/orders")})
	require.NoError(t, err)
	require.Equal(t, "orders, v2", *d.KeyMetadata.Description)

	ec := map[string]string{"order": "42"}
	enc, err := api.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String("alias/orders"), Plaintext: []byte("card"), EncryptionContext: ec})
	require.NoError(t, err)
	dec, err := api.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec})
	require.NoError(t, err)
	require.Equal(t, "card", string(dec.Plaintext))
	dk, err := api.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(key), KeySpec: types.DataKeySpecAes256, EncryptionContext: ec})
	require.NoError(t, err)
	dkw, err := api.GenerateDataKeyWithoutPlaintext(ctx, &kms.GenerateDataKeyWithoutPlaintextInput{KeyId: aws.String(key), NumberOfBytes: aws.Int32(24)})
	require.NoError(t, err)
	dec, err = api.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: dk.CiphertextBlob, EncryptionContext: ec, KeyId: aws.String(key)})
	require.NoError(t, err)
	require.Equal(t, dk.Plaintext, dec.Plaintext)
	must(api.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: dkw.CiphertextBlob}))
	pair, err := api.GenerateDataKeyPair(ctx, &kms.GenerateDataKeyPairInput{KeyId: aws.String(key), KeyPairSpec: types.DataKeyPairSpecEccNistP256})
	require.NoError(t, err)
	_, err = x509.ParsePKCS8PrivateKey(pair.PrivateKeyPlaintext)
	require.NoError(t, err)
	must(api.GenerateDataKeyPairWithoutPlaintext(ctx, &kms.GenerateDataKeyPairWithoutPlaintextInput{KeyId: aws.String(key), KeyPairSpec: types.DataKeyPairSpecEccNistP256}))
	rnd, err := api.GenerateRandom(ctx, &kms.GenerateRandomInput{NumberOfBytes: aws.Int32(16)})
	require.NoError(t, err)
	require.Len(t, rnd.Plaintext, 16)

	// Rotation, and ReEncrypt to the new material.
	must(api.EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: aws.String(key), RotationPeriodInDays: aws.Int32(180)}))
	st, err := api.GetKeyRotationStatus(ctx, &kms.GetKeyRotationStatusInput{KeyId: aws.String(key)})
	require.NoError(t, err)
	require.True(t, st.KeyRotationEnabled)
	must(api.RotateKeyOnDemand(ctx, &kms.RotateKeyOnDemandInput{KeyId: aws.String(key)}))
	rots, err := api.ListKeyRotations(ctx, &kms.ListKeyRotationsInput{KeyId: aws.String(key)})
	require.NoError(t, err)
	require.Len(t, rots.Rotations, 1)
	must(api.DisableKeyRotation(ctx, &kms.DisableKeyRotationInput{KeyId: aws.String(key)}))

	other, err := api.CreateKey(ctx, &kms.CreateKeyInput{})
	require.NoError(t, err)
	re, err := api.ReEncrypt(ctx, &kms.ReEncryptInput{CiphertextBlob: enc.CiphertextBlob, SourceEncryptionContext: ec, DestinationKeyId: other.KeyMetadata.KeyId})
	require.NoError(t, err)
	must(api.UpdateAlias(ctx, &kms.UpdateAliasInput{AliasName: aws.String("alias/orders"), TargetKeyId: other.KeyMetadata.KeyId}))
	dec, err = api.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: re.CiphertextBlob, KeyId: aws.String("alias/orders")})
	require.NoError(t, err)
	require.Equal(t, "card", string(dec.Plaintext))
	aliases, err := api.ListAliases(ctx, &kms.ListAliasesInput{})
	require.NoError(t, err)
	require.Len(t, aliases.Aliases, 1)
	must(api.DeleteAlias(ctx, &kms.DeleteAliasInput{AliasName: aws.String("alias/orders")}))

	// Signing and MAC keys.
	signer, err := api.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify})
	require.NoError(t, err)
	sig, err := api.Sign(ctx, &kms.SignInput{KeyId: signer.KeyMetadata.KeyId, Message: []byte("release"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	require.NoError(t, err)
	ver, err := api.Verify(ctx, &kms.VerifyInput{KeyId: signer.KeyMetadata.KeyId, Message: []byte("release"), Signature: sig.Signature, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	require.NoError(t, err)
	require.True(t, ver.SignatureValid)
	_, err = api.Verify(ctx, &kms.VerifyInput{KeyId: signer.KeyMetadata.KeyId, Message: []byte("tampered"), Signature: sig.Signature, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	var bad *types.KMSInvalidSignatureException
	require.True(t, errors.As(err, &bad))
	must(api.GetPublicKey(ctx, &kms.GetPublicKeyInput{KeyId: signer.KeyMetadata.KeyId}))
	macKey, err := api.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: types.KeySpecHmac384, KeyUsage: types.KeyUsageTypeGenerateVerifyMac})
	require.NoError(t, err)
	mac, err := api.GenerateMac(ctx, &kms.GenerateMacInput{KeyId: macKey.KeyMetadata.KeyId, Message: []byte("m"), MacAlgorithm: types.MacAlgorithmSpecHmacSha384})
	require.NoError(t, err)
	mv, err := api.VerifyMac(ctx, &kms.VerifyMacInput{KeyId: macKey.KeyMetadata.KeyId, Message: []byte("m"), Mac: mac.Mac, MacAlgorithm: types.MacAlgorithmSpecHmacSha384})
	require.NoError(t, err)
	require.True(t, mv.MacValid)

	// Tags, policies.
	must(api.TagResource(ctx, &kms.TagResourceInput{KeyId: aws.String(key), Tags: []types.Tag{{TagKey: aws.String("env"), TagValue: aws.String("prod")}}}))
	must(api.UntagResource(ctx, &kms.UntagResourceInput{KeyId: aws.String(key), TagKeys: []string{"team"}}))
	tags, err := api.ListResourceTags(ctx, &kms.ListResourceTagsInput{KeyId: aws.String(key)})
	require.NoError(t, err)
	require.Len(t, tags.Tags, 1)
	require.Equal(t, "env", *tags.Tags[0].TagKey)
	pol, err := api.GetKeyPolicy(ctx, &kms.GetKeyPolicyInput{KeyId: aws.String(key), PolicyName: aws.String("default")})
	require.NoError(t, err)
	must(api.PutKeyPolicy(ctx, &kms.PutKeyPolicyInput{KeyId: aws.String(key), PolicyName: aws.String("default"), Policy: pol.Policy}))
	names, err := api.ListKeyPolicies(ctx, &kms.ListKeyPoliciesInput{KeyId: aws.String(key)})
	require.NoError(t, err)
	require.Equal(t, []string{"default"}, names.PolicyNames)

	// Bring your own key.
	ext, err := api.CreateKey(ctx, &kms.CreateKeyInput{Origin: types.OriginTypeExternal})
	require.NoError(t, err)
	params, err := api.GetParametersForImport(ctx, &kms.GetParametersForImportInput{KeyId: ext.KeyMetadata.KeyId, WrappingAlgorithm: types.AlgorithmSpecRsaesOaepSha1, WrappingKeySpec: types.WrappingKeySpecRsa2048})
	require.NoError(t, err)
	pub, err := x509.ParsePKIXPublicKey(params.PublicKey)
	require.NoError(t, err)
	material := make([]byte, 32)
	_, _ = rand.Read(material)
	wrapped, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, pub.(*rsa.PublicKey), material, nil)
	require.NoError(t, err)
	must(api.ImportKeyMaterial(ctx, &kms.ImportKeyMaterialInput{KeyId: ext.KeyMetadata.KeyId, ImportToken: params.ImportToken, EncryptedKeyMaterial: wrapped, ExpirationModel: types.ExpirationModelTypeKeyMaterialDoesNotExpire}))
	must(api.Encrypt(ctx, &kms.EncryptInput{KeyId: ext.KeyMetadata.KeyId, Plaintext: []byte("byok")}))
	must(api.DeleteImportedKeyMaterial(ctx, &kms.DeleteImportedKeyMaterialInput{KeyId: ext.KeyMetadata.KeyId}))

	// Lifecycle.
	must(api.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(key)}))
	_, err = api.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(key), Plaintext: []byte("x")})
	var dis *types.DisabledException
	require.True(t, errors.As(err, &dis))
	must(api.EnableKey(ctx, &kms.EnableKeyInput{KeyId: aws.String(key)}))
	must(api.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(key), PendingWindowInDays: aws.Int32(7)}))
	must(api.CancelKeyDeletion(ctx, &kms.CancelKeyDeletionInput{KeyId: aws.String(key)}))
	keys, err := api.ListKeys(ctx, &kms.ListKeysInput{})
	require.NoError(t, err)
	require.Len(t, keys.Keys, 5)
}

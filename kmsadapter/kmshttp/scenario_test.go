package kmshttp_test

import (
	"crypto/sha256"
	"errors"
	"net/http"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	"github.com/stretchr/testify/require"

	"github.com/hsmkms/hsmkms/kmsadapter"
	"github.com/hsmkms/hsmkms/kmsadapter/kmshttp"
)

// scenario runs the KMS life cycle through k, an SDK client or the
// adapter itself, and checks every answer and every error type.
func scenario(t *testing.T, k kmsadapter.API) {
	ctx := bg
	created, err := k.CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("orders"), Tags: []types.Tag{{TagKey: aws.String("team"), TagValue: aws.String("pay")}}})
	require.NoError(t, err)
	md := created.KeyMetadata
	id := *md.KeyId
	require.Equal(t, "arn:aws:kms:us-east-1:111122223333:key/"+id, *md.Arn)
	require.Equal(t, types.KeyStateEnabled, md.KeyState)
	require.True(t, md.Enabled)
	require.NotNil(t, md.CreationDate)
	require.False(t, md.CreationDate.IsZero())
	require.Equal(t, []types.EncryptionAlgorithmSpec{types.EncryptionAlgorithmSpecSymmetricDefault}, md.EncryptionAlgorithms)

	alias := "alias/orders-" + id[:8]
	_, err = k.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(id)})
	require.NoError(t, err)
	_, err = k.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(id)})
	var exists *types.AlreadyExistsException
	require.ErrorAs(t, err, &exists)

	ec := map[string]string{"order": "42", "tenant": "acme"}
	enc, err := k.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(alias), Plaintext: []byte("card 4111"), EncryptionContext: ec})
	require.NoError(t, err)
	require.Equal(t, *md.Arn, *enc.KeyId)
	require.Equal(t, types.EncryptionAlgorithmSpecSymmetricDefault, enc.EncryptionAlgorithm)
	dec, err := k.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec})
	require.NoError(t, err)
	require.Equal(t, "card 4111", string(dec.Plaintext))
	require.Equal(t, *md.Arn, *dec.KeyId)

	_, err = k.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: map[string]string{"order": "43", "tenant": "acme"}})
	var badCT *types.InvalidCiphertextException
	require.ErrorAs(t, err, &badCT)
	var opErr *smithy.OperationError
	require.ErrorAs(t, err, &opErr)
	require.Equal(t, "Decrypt", opErr.Operation())
	var respErr *awshttp.ResponseError
	require.ErrorAs(t, err, &respErr)
	require.Equal(t, http.StatusBadRequest, respErr.HTTPStatusCode())
	require.NotEmpty(t, respErr.ServiceRequestID())

	dk, err := k.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(id), KeySpec: types.DataKeySpecAes256, EncryptionContext: ec})
	require.NoError(t, err)
	require.Len(t, dk.Plaintext, 32)
	dk2, err := k.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: dk.CiphertextBlob, EncryptionContext: ec, KeyId: aws.String(alias)})
	require.NoError(t, err)
	require.Equal(t, dk.Plaintext, dk2.Plaintext)

	re, err := k.ReEncrypt(ctx, &kms.ReEncryptInput{CiphertextBlob: enc.CiphertextBlob, SourceEncryptionContext: ec, DestinationKeyId: aws.String(id)})
	require.NoError(t, err)
	require.Equal(t, *md.Arn, *re.SourceKeyId)

	// Sign and verify with an ECC key.
	sk, err := k.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify})
	require.NoError(t, err)
	digest := sha256.Sum256([]byte("release v1.2.3"))
	sig, err := k.Sign(ctx, &kms.SignInput{KeyId: sk.KeyMetadata.KeyId, Message: digest[:], MessageType: types.MessageTypeDigest, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	require.NoError(t, err)
	ver, err := k.Verify(ctx, &kms.VerifyInput{KeyId: sk.KeyMetadata.KeyId, Message: digest[:], MessageType: types.MessageTypeDigest, Signature: sig.Signature, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	require.NoError(t, err)
	require.True(t, ver.SignatureValid)
	other := sha256.Sum256([]byte("release v6.6.6"))
	_, err = k.Verify(ctx, &kms.VerifyInput{KeyId: sk.KeyMetadata.KeyId, Message: other[:], MessageType: types.MessageTypeDigest, Signature: sig.Signature, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	var badSig *types.KMSInvalidSignatureException
	require.ErrorAs(t, err, &badSig)
	pub, err := k.GetPublicKey(ctx, &kms.GetPublicKeyInput{KeyId: sk.KeyMetadata.KeyId})
	require.NoError(t, err)
	require.NotEmpty(t, pub.PublicKey)
	_, err = k.Encrypt(ctx, &kms.EncryptInput{KeyId: sk.KeyMetadata.KeyId, Plaintext: []byte("x")})
	var usage *types.InvalidKeyUsageException
	require.ErrorAs(t, err, &usage)

	rnd, err := k.GenerateRandom(ctx, &kms.GenerateRandomInput{NumberOfBytes: aws.Int32(24)})
	require.NoError(t, err)
	require.Len(t, rnd.Plaintext, 24)

	tags, err := k.ListResourceTags(ctx, &kms.ListResourceTagsInput{KeyId: aws.String(id)})
	require.NoError(t, err)
	require.Equal(t, "pay", *tags.Tags[0].TagValue)
	aliases, err := k.ListAliases(ctx, &kms.ListAliasesInput{KeyId: aws.String(id)})
	require.NoError(t, err)
	require.Len(t, aliases.Aliases, 1)
	require.Equal(t, alias, *aliases.Aliases[0].AliasName)

	// Disable, enable, schedule deletion.
	_, err = k.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(id)})
	require.NoError(t, err)
	_, err = k.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(id), Plaintext: []byte("x")})
	var disabled *types.DisabledException
	require.ErrorAs(t, err, &disabled)
	_, err = k.EnableKey(ctx, &kms.EnableKeyInput{KeyId: aws.String(id)})
	require.NoError(t, err)
	del, err := k.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(id), PendingWindowInDays: aws.Int32(7)})
	require.NoError(t, err)
	require.Equal(t, types.KeyStatePendingDeletion, del.KeyState)
	require.NotNil(t, del.DeletionDate)
	require.Equal(t, int32(7), *del.PendingWindowInDays)
	_, err = k.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(id), Plaintext: []byte("x")})
	var state *types.KMSInvalidStateException
	require.ErrorAs(t, err, &state)
	d, err := k.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(id)})
	require.NoError(t, err)
	require.Equal(t, types.KeyStatePendingDeletion, d.KeyMetadata.KeyState)
	require.WithinDuration(t, *del.DeletionDate, *d.KeyMetadata.DeletionDate, 0)
	_, err = k.CancelKeyDeletion(ctx, &kms.CancelKeyDeletionInput{KeyId: aws.String(id)})
	require.NoError(t, err)

	_, err = k.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String("11111111-2222-3333-4444-555555555555")})
	var nf *types.NotFoundException
	require.ErrorAs(t, err, &nf)
	_, err = k.GetKeyPolicy(ctx, &kms.GetKeyPolicyInput{KeyId: aws.String(id), PolicyName: aws.String("nope")})
	require.ErrorAs(t, err, &nf)

	// ValidationException has no type in the KMS model: a GenericAPIError.
	_, err = k.GenerateRandom(ctx, &kms.GenerateRandomInput{NumberOfBytes: aws.Int32(100000)})
	var api smithy.APIError
	require.ErrorAs(t, err, &api)
	require.Equal(t, "ValidationException", api.ErrorCode(), "%v", err)
}

func TestScenarioThroughEveryPath(t *testing.T) {
	e := newEnv(t, envOpt{})
	t.Run("adapter", func(t *testing.T) { scenario(t, e.adapter) })
	t.Run("loopback", func(t *testing.T) { scenario(t, e.loopback(alice)) })
	t.Run("in-process", func(t *testing.T) { scenario(t, e.inProcess(alice)) })
	t.Run("trusted-in-process", func(t *testing.T) {
		scenario(t, kms.NewFromConfig(awsConfig(alice), func(o *kms.Options) {
			o.HTTPClient = e.h.TrustedTransport(alicePrincipal())
			o.BaseEndpoint = aws.String("http://hsmkms.local")
		}))
	})
}

func alicePrincipal() kmshttp.Principal {
	return kmshttp.Principal{ARN: alice.PrincipalARN, AccountID: account, AccessKeyID: alice.AccessKeyID}
}

var _ = errors.New

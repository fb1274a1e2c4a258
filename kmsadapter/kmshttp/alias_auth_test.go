package kmshttp_test

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/stretchr/testify/require"

	"github.com/hsmkms/hsmkms/kmsadapter/kmshttp"
)

// TestAliasMovedElsewhereIsNotFollowed: bob may sign with key A, not with
// key B. alias/sig names A, and bob's signature through it is authorized
// (and the alias's target cached). Another server sharing the store moves
// the alias to B. Bob's next signature through the alias runs on a key
// whose policy was checked: A, as authorized, never B.
func TestAliasMovedElsewhereIsNotFollowed(t *testing.T) {
	e := newEnv(t, envOpt{})
	a, b := e.loopback(alice), e.loopback(bob)
	polA := `{"Version":"2012-10-17","Statement":[
 {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/alice"},"Action":"kms:*","Resource":"*"},
 {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/bob"},"Action":"kms:Sign","Resource":"*"}]}`
	polB := `{"Version":"2012-10-17","Statement":[
 {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/alice"},"Action":"kms:*","Resource":"*"}]}`
	mk := func(p string) string {
		ck, err := a.CreateKey(bg, &kms.CreateKeyInput{Policy: aws.String(p), KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify})
		require.NoError(t, err)
		return *ck.KeyMetadata.KeyId
	}
	ka, kb := mk(polA), mk(polB)
	_, err := a.CreateAlias(bg, &kms.CreateAliasInput{AliasName: aws.String("alias/sig"), TargetKeyId: &ka})
	require.NoError(t, err)
	msg := []byte("hello")
	sign := func() (*kms.SignOutput, error) {
		return b.Sign(bg, &kms.SignInput{KeyId: aws.String("alias/sig"), Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	}
	_, err = sign()
	require.NoError(t, err)
	_, err = e.adapter.UpdateAlias(bg, &kms.UpdateAliasInput{AliasName: aws.String("alias/sig"), TargetKeyId: &kb})
	require.NoError(t, err)

	out, err := sign()
	require.NoError(t, err)
	require.True(t, strings.HasSuffix(*out.KeyId, ka), "signed by %s, not by the authorized key %s", *out.KeyId, ka)
	pk, err := a.GetPublicKey(bg, &kms.GetPublicKeyInput{KeyId: &ka})
	require.NoError(t, err)
	pub, err := x509.ParsePKIXPublicKey(pk.PublicKey)
	require.NoError(t, err)
	h := sha256.Sum256(msg)
	require.True(t, ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), h[:], out.Signature))
	_, err = b.Sign(bg, &kms.SignInput{KeyId: &kb, Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	require.Equal(t, "AccessDeniedException", code(err))
}

// TestAliasNeedsTheCallersOwnPermission: an alias is a resource of its
// own. A caller whose own permissions allow only kms:CreateKey cannot
// claim an alias for a key whose policy names it, though the key's policy
// allows it everything.
func TestAliasNeedsTheCallersOwnPermission(t *testing.T) {
	e := newEnv(t, envOpt{})
	mallory := bob
	mallory.Actions = []string{"kms:CreateKey"}
	sc := kmshttp.DefaultSigV4Config()
	sc.Region, sc.Credentials = region, []kmshttp.Credential{mallory}
	auth, err := kmshttp.NewSigV4(sc)
	require.NoError(t, err)
	h, err := kmshttp.New(e.adapter, auth, kmshttp.DefaultConfig())
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	m := (&env{t: t, adapter: e.adapter, auth: auth, h: h, srv: srv}).loopback(mallory)

	pol := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/bob"},"Action":"kms:*","Resource":"*"}]}`
	ck, err := m.CreateKey(bg, &kms.CreateKeyInput{Policy: aws.String(pol)})
	require.NoError(t, err)
	_, err = m.CreateAlias(bg, &kms.CreateAliasInput{AliasName: aws.String("alias/payments"), TargetKeyId: ck.KeyMetadata.KeyId})
	require.Equal(t, "AccessDeniedException", code(err))
	_, err = e.loopback(alice).DescribeKey(bg, &kms.DescribeKeyInput{KeyId: aws.String("alias/payments")})
	require.Equal(t, "NotFoundException", code(err))
}

package kmshttp_test

import (
	"fmt"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/stretchr/testify/require"

	"github.com/hsmkms/hsmkms/kmsadapter/kmshttp"
)

func fmtAll(v any) string { return fmt.Sprintf("%v %+v %#v %s", v, v, v, v) }

// A key whose policy gives the account's IAM users everything, bob only
// Encrypt and Decrypt, and only with tenant=acme in the encryption
// context, and denies everyone Decrypt with a "legal-hold" context key.
const conditionalPolicy = `{
  "Version": "2012-10-17",
  "Statement": [
    {"Sid": "alice admin", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:user/alice"}, "Action": "kms:*", "Resource": "*"},
    {"Sid": "bob tenant acme", "Effect": "Allow", "Principal": {"AWS": ["arn:aws:iam::111122223333:user/bob"]},
     "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "*",
     "Condition": {"StringEquals": {"kms:EncryptionContext:tenant": "acme", "kms:CallerAccount": "111122223333"}}},
    {"Sid": "legal hold", "Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
     "Condition": {"ForAnyValue:StringLike": {"kms:EncryptionContextKeys": "legal-*"}}}
  ]
}`

func TestPolicyPrincipalsActionsConditions(t *testing.T) {
	e := newEnv(t, envOpt{})
	a, b := e.loopback(alice), e.loopback(bob)
	ck, err := a.CreateKey(bg, &kms.CreateKeyInput{Policy: aws.String(conditionalPolicy)})
	require.NoError(t, err)
	id := ck.KeyMetadata.KeyId
	acme := map[string]string{"tenant": "acme"}

	// bob may encrypt and decrypt for tenant acme only.
	enc, err := b.Encrypt(bg, &kms.EncryptInput{KeyId: id, Plaintext: []byte("x"), EncryptionContext: acme})
	require.NoError(t, err)
	_, err = b.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: acme})
	require.NoError(t, err)
	_, err = b.Encrypt(bg, &kms.EncryptInput{KeyId: id, Plaintext: []byte("x"), EncryptionContext: map[string]string{"tenant": "evil"}})
	require.Equal(t, kmshttp.CodeAccessDenied, code(err), "%v", err)
	require.Contains(t, err.Error(), "arn:aws:iam::111122223333:user/bob is not authorized to perform: kms:Encrypt")
	_, err = b.Encrypt(bg, &kms.EncryptInput{KeyId: id, Plaintext: []byte("x")})
	require.Equal(t, kmshttp.CodeAccessDenied, code(err), "%v", err)
	// Two context keys that differ only in case: the condition keys
	// ignore case, so which value the policy saw would be chance. Refused,
	// every time.
	for range 20 {
		_, err = b.Encrypt(bg, &kms.EncryptInput{KeyId: id, Plaintext: []byte("x"), EncryptionContext: map[string]string{"tenant": "acme", "TENANT": "globex"}})
		require.Equal(t, kmshttp.CodeAccessDenied, code(err), "%v", err)
	}
	_, err = b.GenerateDataKey(bg, &kms.GenerateDataKeyInput{KeyId: id, NumberOfBytes: aws.Int32(32), EncryptionContext: acme})
	require.NoError(t, err)
	// Nothing else for bob, not even DescribeKey.
	_, err = b.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: id})
	require.Equal(t, kmshttp.CodeAccessDenied, code(err), "%v", err)
	_, err = b.DisableKey(bg, &kms.DisableKeyInput{KeyId: id})
	require.Equal(t, kmshttp.CodeAccessDenied, code(err), "%v", err)

	// An alias does not get around the policy.
	_, err = a.CreateAlias(bg, &kms.CreateAliasInput{AliasName: aws.String("alias/cond"), TargetKeyId: id})
	require.NoError(t, err)
	_, err = b.Encrypt(bg, &kms.EncryptInput{KeyId: aws.String("alias/cond"), Plaintext: []byte("x"), EncryptionContext: map[string]string{"tenant": "evil"}})
	require.Equal(t, kmshttp.CodeAccessDenied, code(err), "%v", err)
	_, err = b.DeleteAlias(bg, &kms.DeleteAliasInput{AliasName: aws.String("alias/cond")})
	require.Equal(t, kmshttp.CodeAccessDenied, code(err), "%v", err)

	// Decrypt without KeyId: the key named in the ciphertext decides.
	held := map[string]string{"tenant": "acme", "legal-case": "7"}
	enc2, err := a.Encrypt(bg, &kms.EncryptInput{KeyId: id, Plaintext: []byte("y"), EncryptionContext: held})
	require.NoError(t, err)
	// The explicit Deny wins over alice's kms:*.
	_, err = a.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: enc2.CiphertextBlob, EncryptionContext: held})
	require.Equal(t, kmshttp.CodeAccessDenied, code(err), "%v", err)
	require.Contains(t, err.Error(), "explicit deny")
	_, err = b.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: enc2.CiphertextBlob, EncryptionContext: held})
	require.Equal(t, kmshttp.CodeAccessDenied, code(err), "%v", err)

	// A key with the default policy is the account's: bob may use it.
	def, err := a.CreateKey(bg, &kms.CreateKeyInput{})
	require.NoError(t, err)
	enc3, err := b.Encrypt(bg, &kms.EncryptInput{KeyId: def.KeyMetadata.KeyId, Plaintext: []byte("z")})
	require.NoError(t, err)
	// ... but not decrypt a ciphertext of the conditional key by naming his key.
	_, err = b.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, KeyId: def.KeyMetadata.KeyId, EncryptionContext: acme})
	require.Equal(t, "IncorrectKeyException", code(err), "%v", err)
	_, err = b.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: enc3.CiphertextBlob})
	require.NoError(t, err)

	// Changing the policy through the server takes effect at once.
	_, err = a.PutKeyPolicy(bg, &kms.PutKeyPolicyInput{KeyId: def.KeyMetadata.KeyId, Policy: aws.String(
		`{"Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/alice"},"Action":"kms:*","Resource":"*"}]}`)})
	require.NoError(t, err)
	_, err = b.Encrypt(bg, &kms.EncryptInput{KeyId: def.KeyMetadata.KeyId, Plaintext: []byte("z")})
	require.Equal(t, kmshttp.CodeAccessDenied, code(err), "%v", err)

	// A policy the server could not enforce is refused.
	_, err = a.PutKeyPolicy(bg, &kms.PutKeyPolicyInput{KeyId: def.KeyMetadata.KeyId, Policy: aws.String(
		`{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"NumericLessThan":{"kms:GrantTokens":"3"}}}]}`)})
	require.Equal(t, "MalformedPolicyDocumentException", code(err), "%v", err)
	_, err = a.CreateKey(bg, &kms.CreateKeyInput{Policy: aws.String(`{"Statement":[{"Effect":"Maybe","Principal":"*","Action":"kms:*","Resource":"*"}]}`)})
	require.Equal(t, "MalformedPolicyDocumentException", code(err), "%v", err)
}

// TestPolicyLockoutSafetyCheck: a policy that would keep its author from
// changing it again is refused unless the request bypasses the check, and
// a refused PutKeyPolicy leaves the policy as it was.
func TestPolicyLockoutSafetyCheck(t *testing.T) {
	e := newEnv(t, envOpt{})
	a := e.loopback(alice)
	bobOnly := aws.String(`{"Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/bob"},"Action":"kms:*","Resource":"*"}]}`)
	aliceDenied := aws.String(`{"Statement":[
		{"Effect":"Allow","Principal":{"AWS":"111122223333"},"Action":"kms:*","Resource":"*"},
		{"Effect":"Deny","Principal":{"AWS":"arn:aws:iam::111122223333:user/alice"},"Action":"kms:PutKeyPolicy","Resource":"*"}]}`)

	_, err := a.CreateKey(bg, &kms.CreateKeyInput{Policy: bobOnly})
	require.Equal(t, "MalformedPolicyDocumentException", code(err), "%v", err)
	require.Contains(t, err.Error(), "will not allow you to update the key policy")
	ck, err := a.CreateKey(bg, &kms.CreateKeyInput{Policy: bobOnly, BypassPolicyLockoutSafetyCheck: true})
	require.NoError(t, err)
	_, err = a.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: ck.KeyMetadata.KeyId})
	require.Equal(t, kmshttp.CodeAccessDenied, code(err), "%v", err)

	def, err := a.CreateKey(bg, &kms.CreateKeyInput{})
	require.NoError(t, err)
	before, err := a.GetKeyPolicy(bg, &kms.GetKeyPolicyInput{KeyId: def.KeyMetadata.KeyId})
	require.NoError(t, err)
	for _, pol := range []*string{bobOnly, aliceDenied} {
		_, err = a.PutKeyPolicy(bg, &kms.PutKeyPolicyInput{KeyId: def.KeyMetadata.KeyId, Policy: pol})
		require.Equal(t, "MalformedPolicyDocumentException", code(err), "%v", err)
	}
	after, err := a.GetKeyPolicy(bg, &kms.GetKeyPolicyInput{KeyId: def.KeyMetadata.KeyId})
	require.NoError(t, err)
	require.Equal(t, *before.Policy, *after.Policy)
	// The account-wide default policy passes: alice's own permissions
	// include kms:PutKeyPolicy.
	_, err = a.PutKeyPolicy(bg, &kms.PutKeyPolicyInput{KeyId: def.KeyMetadata.KeyId, Policy: before.Policy})
	require.NoError(t, err)
	_, err = a.PutKeyPolicy(bg, &kms.PutKeyPolicyInput{KeyId: def.KeyMetadata.KeyId, Policy: aliceDenied, BypassPolicyLockoutSafetyCheck: true})
	require.NoError(t, err)
	_, err = a.PutKeyPolicy(bg, &kms.PutKeyPolicyInput{KeyId: def.KeyMetadata.KeyId, Policy: before.Policy})
	require.Equal(t, kmshttp.CodeAccessDenied, code(err), "%v", err)
}

// Credential.Actions stands in for IAM: it limits account-level calls and
// what an account-wide key policy grants.
func TestIdentityActions(t *testing.T) {
	limited := bob
	limited.Actions = []string{"kms:Encrypt", "kms:Describe*"}
	sc := kmshttp.DefaultSigV4Config()
	sc.Region, sc.Credentials = region, []kmshttp.Credential{alice, limited}
	a, err := kmshttp.NewSigV4(sc)
	require.NoError(t, err)
	e := newEnv(t, envOpt{})
	h, err := kmshttp.New(e.adapter, a, kmshttp.DefaultConfig())
	require.NoError(t, err)
	inproc := func(c kmshttp.Credential) *kms.Client {
		return kms.NewFromConfig(awsConfig(c), func(o *kms.Options) {
			o.HTTPClient = h.Transport()
			o.BaseEndpoint = aws.String("http://hsmkms.local")
		})
	}
	b := inproc(limited)
	_, err = b.CreateKey(bg, &kms.CreateKeyInput{})
	require.Equal(t, kmshttp.CodeAccessDenied, code(err), "%v", err)
	_, err = b.ListKeys(bg, &kms.ListKeysInput{})
	require.Equal(t, kmshttp.CodeAccessDenied, code(err), "%v", err)
	k, err := inproc(alice).CreateKey(bg, &kms.CreateKeyInput{})
	require.NoError(t, err)
	_, err = b.Encrypt(bg, &kms.EncryptInput{KeyId: k.KeyMetadata.KeyId, Plaintext: []byte("x")})
	require.NoError(t, err)
	_, err = b.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: k.KeyMetadata.KeyId})
	require.NoError(t, err)
	_, err = b.DisableKey(bg, &kms.DisableKeyInput{KeyId: k.KeyMetadata.KeyId})
	require.Equal(t, kmshttp.CodeAccessDenied, code(err), "%v", err)
}

package kmshttp

import (
	"context"
	"encoding/hex"
	"reflect"
	"strings"

	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/hsmkms/hsmkms/kmsadapter"
)

// check is one authorization a request needs: action on the key named by
// key (any KeyId form), or, with key nil, an account-level action that
// only the principal's own permissions govern.
type check struct {
	action string
	key    *string
	keys   *condSource // condition keys of the request; nil: none
	// fromBlob marks a key read from a ciphertext's header: when no such
	// key exists the check is left to the call, which rejects the
	// ciphertext, and to the check of the key that served it.
	fromBlob bool
}

type opSpec struct {
	name     string
	newIn    func() any
	call     func(ctx context.Context, api kmsadapter.API, in any) (any, error)
	required []string
	// checks lists the authorizations needed before the call.
	checks func(in any) []check
	// after lists authorizations to confirm on the output: the key that
	// actually served a Decrypt or ReEncrypt whose input did not name it.
	after func(in, out any) []check
	// mutates is true for calls that change aliases or policies, after
	// which cached key lookups are dropped.
	mutates bool
}

func op[I, O any](
	fn func(kmsadapter.API, context.Context, *I, ...func(*kms.Options)) (*O, error),
	checks func(*I) []check,
	required ...string,
) opSpec {
	name := strings.TrimSuffix(reflect.TypeFor[I]().Name(), "Input")
	return opSpec{
		name:     name,
		newIn:    func() any { return new(I) },
		call:     func(ctx context.Context, api kmsadapter.API, in any) (any, error) { return fn(api, ctx, in.(*I)) },
		required: required,
		checks:   func(in any) []check { return checks(in.(*I)) },
	}
}

func withAfter[I, O any](s opSpec, after func(*I, *O) []check) opSpec {
	s.after = func(in, out any) []check { return after(in.(*I), out.(*O)) }
	return s
}

func mutating(s opSpec) opSpec { s.mutates = true; return s }

// on is the check of action on one key; account the check of an
// account-level action.
func on(action string, key *string, keys *condSource) []check {
	return []check{{action: action, key: key, keys: keys}}
}

func account(action string) []check { return []check{{action: action}} }

// onCiphertext is the check of action on the key given (any KeyId form),
// or else on the key named in blob's header.
func onCiphertext(action string, key *string, blob []byte, keys *condSource) []check {
	if key != nil {
		return on(action, key, keys)
	}
	return []check{{action: action, key: blobKeyID(blob), keys: keys, fromBlob: true}}
}

// condSource holds what the condition keys of a request are made of,
// built into a map only for a key policy that has conditions.
type condSource struct {
	ec map[string]string
	kv [4]string // up to two "name", value pairs
}

// condKeys returns the condition keys of a request: the encryption context
// (kms:EncryptionContext:<key>, kms:EncryptionContextKeys) and any
// algorithm named, as at most two "name", value pairs.
func condKeys(ec map[string]string, kv ...string) *condSource {
	c := &condSource{ec: ec}
	if copy(c.kv[:], kv) < len(kv) {
		panic("kmshttp: more than two condition key pairs")
	}
	return c
}

// build returns the condition keys, lower case; a nil source has none.
// ok is false when the encryption context has two keys that differ only
// in case: condition keys ignore case, so one of the two values would
// stand for both, at random.
func (c *condSource) build() (m map[string][]string, ok bool) {
	m = map[string][]string{}
	if c == nil {
		return m, true
	}
	ec, kv := c.ec, c.kv[:]
	if len(ec) > 0 {
		ks := make([]string, 0, len(ec))
		for k, v := range ec {
			ck := "kms:encryptioncontext:" + strings.ToLower(k)
			if _, dup := m[ck]; dup {
				return nil, false
			}
			m[ck] = []string{v}
			ks = append(ks, k)
		}
		m["kms:encryptioncontextkeys"] = ks
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			m[kv[i]] = []string{kv[i+1]}
		}
	}
	return m, true
}

// blobKeyID returns the key ID named in the header of a kmsadapter
// ciphertext (format version 1: one version byte, then the key's 16-byte
// UUID), or nil when blob is not one. It only chooses the key policy to
// evaluate; the adapter authenticates the header, and the key that really
// served the call is confirmed after it.
func blobKeyID(blob []byte) *string {
	if len(blob) < blobHeaderLen+16 || blob[0] != 1 {
		return nil
	}
	h := hex.EncodeToString(blob[1:17])
	id := h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
	return &id
}

var opTable = func() map[string]opSpec {
	specs := []opSpec{
		op(kmsadapter.API.Encrypt, func(in *kms.EncryptInput) []check {
			return on("kms:Encrypt", in.KeyId, condKeys(in.EncryptionContext, "kms:encryptionalgorithm", string(in.EncryptionAlgorithm)))
		}, "KeyId", "Plaintext"),
		withAfter(op(kmsadapter.API.Decrypt, func(in *kms.DecryptInput) []check {
			return onCiphertext("kms:Decrypt", in.KeyId, in.CiphertextBlob, condKeys(in.EncryptionContext, "kms:encryptionalgorithm", string(in.EncryptionAlgorithm)))
		}, "CiphertextBlob"), func(in *kms.DecryptInput, out *kms.DecryptOutput) []check {
			return on("kms:Decrypt", out.KeyId, condKeys(in.EncryptionContext, "kms:encryptionalgorithm", string(in.EncryptionAlgorithm)))
		}),
		withAfter(op(kmsadapter.API.ReEncrypt, func(in *kms.ReEncryptInput) []check {
			return append(
				onCiphertext("kms:ReEncryptFrom", in.SourceKeyId, in.CiphertextBlob, condKeys(in.SourceEncryptionContext)),
				on("kms:ReEncryptTo", in.DestinationKeyId, condKeys(in.DestinationEncryptionContext))...)
		}, "CiphertextBlob", "DestinationKeyId"), func(in *kms.ReEncryptInput, out *kms.ReEncryptOutput) []check {
			return on("kms:ReEncryptFrom", out.SourceKeyId, condKeys(in.SourceEncryptionContext))
		}),
		op(kmsadapter.API.GenerateDataKey, func(in *kms.GenerateDataKeyInput) []check {
			return on("kms:GenerateDataKey", in.KeyId, condKeys(in.EncryptionContext))
		}, "KeyId"),
		op(kmsadapter.API.GenerateDataKeyWithoutPlaintext, func(in *kms.GenerateDataKeyWithoutPlaintextInput) []check {
			return on("kms:GenerateDataKeyWithoutPlaintext", in.KeyId, condKeys(in.EncryptionContext))
		}, "KeyId"),
		op(kmsadapter.API.GenerateDataKeyPair, func(in *kms.GenerateDataKeyPairInput) []check {
			return on("kms:GenerateDataKeyPair", in.KeyId, condKeys(in.EncryptionContext, "kms:datakeypairspec", string(in.KeyPairSpec)))
		}, "KeyId", "KeyPairSpec"),
		op(kmsadapter.API.GenerateDataKeyPairWithoutPlaintext, func(in *kms.GenerateDataKeyPairWithoutPlaintextInput) []check {
			return on("kms:GenerateDataKeyPairWithoutPlaintext", in.KeyId, condKeys(in.EncryptionContext, "kms:datakeypairspec", string(in.KeyPairSpec)))
		}, "KeyId", "KeyPairSpec"),
		op(kmsadapter.API.Sign, func(in *kms.SignInput) []check {
			return on("kms:Sign", in.KeyId, condKeys(nil, "kms:signingalgorithm", string(in.SigningAlgorithm), "kms:messagetype", string(in.MessageType)))
		}, "KeyId", "Message", "SigningAlgorithm"),
		op(kmsadapter.API.Verify, func(in *kms.VerifyInput) []check {
			return on("kms:Verify", in.KeyId, condKeys(nil, "kms:signingalgorithm", string(in.SigningAlgorithm), "kms:messagetype", string(in.MessageType)))
		}, "KeyId", "Message", "Signature", "SigningAlgorithm"),
		op(kmsadapter.API.GetPublicKey, func(in *kms.GetPublicKeyInput) []check {
			return on("kms:GetPublicKey", in.KeyId, nil)
		}, "KeyId"),
		op(kmsadapter.API.GenerateMac, func(in *kms.GenerateMacInput) []check {
			return on("kms:GenerateMac", in.KeyId, condKeys(nil, "kms:macalgorithm", string(in.MacAlgorithm)))
		}, "KeyId", "Message", "MacAlgorithm"),
		op(kmsadapter.API.VerifyMac, func(in *kms.VerifyMacInput) []check {
			return on("kms:VerifyMac", in.KeyId, condKeys(nil, "kms:macalgorithm", string(in.MacAlgorithm)))
		}, "KeyId", "Message", "MacAlgorithm", "Mac"),
		op(kmsadapter.API.GenerateRandom, func(*kms.GenerateRandomInput) []check { return account("kms:GenerateRandom") }),

		op(kmsadapter.API.CreateKey, func(in *kms.CreateKeyInput) []check {
			return account("kms:CreateKey")
		}),
		op(kmsadapter.API.DescribeKey, func(in *kms.DescribeKeyInput) []check { return on("kms:DescribeKey", in.KeyId, nil) }, "KeyId"),
		op(kmsadapter.API.ListKeys, func(*kms.ListKeysInput) []check { return account("kms:ListKeys") }),
		op(kmsadapter.API.UpdateKeyDescription, func(in *kms.UpdateKeyDescriptionInput) []check {
			return on("kms:UpdateKeyDescription", in.KeyId, nil)
		}, "KeyId", "Description"),
		op(kmsadapter.API.EnableKey, func(in *kms.EnableKeyInput) []check { return on("kms:EnableKey", in.KeyId, nil) }, "KeyId"),
		op(kmsadapter.API.DisableKey, func(in *kms.DisableKeyInput) []check { return on("kms:DisableKey", in.KeyId, nil) }, "KeyId"),
		op(kmsadapter.API.ScheduleKeyDeletion, func(in *kms.ScheduleKeyDeletionInput) []check {
			return on("kms:ScheduleKeyDeletion", in.KeyId, nil)
		}, "KeyId"),
		op(kmsadapter.API.CancelKeyDeletion, func(in *kms.CancelKeyDeletionInput) []check {
			return on("kms:CancelKeyDeletion", in.KeyId, nil)
		}, "KeyId"),

		// An alias is a resource of its own, governed by the caller's
		// own permissions as well as by the key's policy.
		mutating(op(kmsadapter.API.CreateAlias, func(in *kms.CreateAliasInput) []check {
			return append(account("kms:CreateAlias"), on("kms:CreateAlias", in.TargetKeyId, nil)...)
		}, "AliasName", "TargetKeyId")),
		mutating(op(kmsadapter.API.UpdateAlias, func(in *kms.UpdateAliasInput) []check {
			return append(account("kms:UpdateAlias"), append(on("kms:UpdateAlias", in.AliasName, nil), on("kms:UpdateAlias", in.TargetKeyId, nil)...)...)
		}, "AliasName", "TargetKeyId")),
		mutating(op(kmsadapter.API.DeleteAlias, func(in *kms.DeleteAliasInput) []check {
			return append(account("kms:DeleteAlias"), on("kms:DeleteAlias", in.AliasName, nil)...)
		}, "AliasName")),
		op(kmsadapter.API.ListAliases, func(*kms.ListAliasesInput) []check { return account("kms:ListAliases") }),

		op(kmsadapter.API.TagResource, func(in *kms.TagResourceInput) []check { return on("kms:TagResource", in.KeyId, nil) }, "KeyId", "Tags"),
		op(kmsadapter.API.UntagResource, func(in *kms.UntagResourceInput) []check {
			return on("kms:UntagResource", in.KeyId, nil)
		}, "KeyId", "TagKeys"),
		op(kmsadapter.API.ListResourceTags, func(in *kms.ListResourceTagsInput) []check {
			return on("kms:ListResourceTags", in.KeyId, nil)
		}, "KeyId"),

		op(kmsadapter.API.EnableKeyRotation, func(in *kms.EnableKeyRotationInput) []check {
			return on("kms:EnableKeyRotation", in.KeyId, nil)
		}, "KeyId"),
		op(kmsadapter.API.DisableKeyRotation, func(in *kms.DisableKeyRotationInput) []check {
			return on("kms:DisableKeyRotation", in.KeyId, nil)
		}, "KeyId"),
		op(kmsadapter.API.GetKeyRotationStatus, func(in *kms.GetKeyRotationStatusInput) []check {
			return on("kms:GetKeyRotationStatus", in.KeyId, nil)
		}, "KeyId"),
		op(kmsadapter.API.RotateKeyOnDemand, func(in *kms.RotateKeyOnDemandInput) []check {
			return on("kms:RotateKeyOnDemand", in.KeyId, nil)
		}, "KeyId"),
		op(kmsadapter.API.ListKeyRotations, func(in *kms.ListKeyRotationsInput) []check {
			return on("kms:ListKeyRotations", in.KeyId, nil)
		}, "KeyId"),

		op(kmsadapter.API.GetKeyPolicy, func(in *kms.GetKeyPolicyInput) []check { return on("kms:GetKeyPolicy", in.KeyId, nil) }, "KeyId"),
		mutating(op(kmsadapter.API.PutKeyPolicy, func(in *kms.PutKeyPolicyInput) []check {
			return on("kms:PutKeyPolicy", in.KeyId, nil)
		}, "KeyId", "Policy")),
		op(kmsadapter.API.ListKeyPolicies, func(in *kms.ListKeyPoliciesInput) []check {
			return on("kms:ListKeyPolicies", in.KeyId, nil)
		}, "KeyId"),

		op(kmsadapter.API.GetParametersForImport, func(in *kms.GetParametersForImportInput) []check {
			return on("kms:GetParametersForImport", in.KeyId, nil)
		}, "KeyId", "WrappingAlgorithm", "WrappingKeySpec"),
		op(kmsadapter.API.ImportKeyMaterial, func(in *kms.ImportKeyMaterialInput) []check {
			return on("kms:ImportKeyMaterial", in.KeyId, nil)
		}, "KeyId", "ImportToken", "EncryptedKeyMaterial"),
		op(kmsadapter.API.DeleteImportedKeyMaterial, func(in *kms.DeleteImportedKeyMaterialInput) []check {
			return on("kms:DeleteImportedKeyMaterial", in.KeyId, nil)
		}, "KeyId"),
	}
	m := make(map[string]opSpec, len(specs))
	for _, s := range specs {
		m[s.name] = s
	}
	return m
}()

// Operations lists the operations the handler serves, by name.
func Operations() []string {
	out := make([]string, 0, len(opTable))
	for n := range opTable {
		out = append(out, n)
	}
	return out
}

// missingRequired names the first required member of in that is absent,
// as the KMS model requires them.
func missingRequired(in any, required []string) string {
	v := reflect.ValueOf(in).Elem()
	for _, name := range required {
		f := v.FieldByName(name)
		if !f.IsValid() {
			continue
		}
		switch f.Kind() {
		case reflect.Pointer, reflect.Map:
			if f.IsNil() {
				return name
			}
		case reflect.Slice:
			if f.IsNil() {
				return name
			}
		case reflect.String:
			if f.Len() == 0 {
				return name
			}
		}
	}
	return ""
}

// blobHeaderLen is the header of kmsadapter's ciphertext format 1:
// version (1), key ID (16), key version (4), IV (12).
const blobHeaderLen = 33

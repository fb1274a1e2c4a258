package kmsadapter

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/hsmkms/hsmkms/hsm"
)

// defaultPolicy is the key policy AWS KMS gives a key created without one.
func (c *Client) defaultPolicy() string {
	return `{
  "Version" : "2012-10-17",
  "Id" : "key-default-1",
  "Statement" : [ {
    "Sid" : "Enable IAM User Permissions",
    "Effect" : "Allow",
    "Principal" : {
      "AWS" : "arn:` + c.cfg.Partition + `:iam::` + c.cfg.AccountID + `:root"
    },
    "Action" : "kms:*",
    "Resource" : "*"
  } ]
}`
}

const maxPolicySize = 32768

func validatePolicy(p string) error {
	if p == "" || len(p) > maxPolicySize {
		return malformedPolicy("the key policy must be 1 to %d characters", maxPolicySize)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(p), &doc); err != nil {
		return malformedPolicy("the key policy is not a JSON object")
	}
	if _, ok := doc["Statement"]; !ok {
		return malformedPolicy("the key policy has no Statement")
	}
	return nil
}

func validateDescription(d string) error {
	if len(d) > 8192 {
		return validation("1 validation error detected: Value at 'description' failed to satisfy constraint: Member must have length less than or equal to 8192")
	}
	return nil
}

// validateTags checks tags as TagResource and CreateKey do.
func validateTags(tags []types.Tag) ([]tagRecord, error) {
	seen := map[string]bool{}
	out := make([]tagRecord, 0, len(tags))
	for _, t := range tags {
		k, v := deref(t.TagKey), deref(t.TagValue)
		switch {
		case t.TagKey == nil || t.TagValue == nil:
			return nil, validation("1 validation error detected: tag keys and values must not be null")
		case utf8.RuneCountInString(k) < 1 || utf8.RuneCountInString(k) > 128 || utf8.RuneCountInString(v) > 256:
			return nil, validation("1 validation error detected: tag keys must be 1 to 128 characters and values 0 to 256")
		case strings.HasPrefix(strings.ToLower(k), "aws:"):
			return nil, tagErr("tag keys beginning with aws: are reserved")
		case seen[k]:
			return nil, tagErr("duplicate tag key %q", k)
		}
		seen[k] = true
		out = append(out, tagRecord{Key: k, Value: v})
	}
	return out, nil
}

const maxTags = 50

func mergeTags(have, add []tagRecord) []tagRecord {
	out := slices.Clone(have)
	for _, t := range add {
		if i := slices.IndexFunc(out, func(o tagRecord) bool { return o.Key == t.Key }); i >= 0 {
			out[i].Value = t.Value
		} else {
			out = append(out, t)
		}
	}
	slices.SortFunc(out, func(a, b tagRecord) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// CreateKey creates a KMS key: a record, then the key on the HSMs, then
// the record marked complete. A crash between the steps leaves a record
// in state Creating that New or Tick rolls back, destroying the HSM key
// if it was made; so after a restart there is either no key or a
// complete one.
func (c *Client) CreateKey(ctx context.Context, in *kms.CreateKeyInput, _ ...func(*kms.Options)) (*kms.CreateKeyOutput, error) {
	out, err := c.createKey(ctx, in)
	return out, opError("CreateKey", err)
}

func (c *Client) createKey(ctx context.Context, in *kms.CreateKeyInput) (*kms.CreateKeyOutput, error) {
	if in == nil {
		in = &kms.CreateKeyInput{}
	}
	switch {
	case in.CustomKeyStoreId != nil || in.XksKeyId != nil:
		return nil, unsupported("custom key stores are not supported; every key lives on the HSM cluster")
	case deref(in.MultiRegion):
		return nil, unsupported("multi-Region keys are not supported")
	//lint:ignore SA1019 AWS still accepts the deprecated parameter
	case in.KeySpec != "" && in.CustomerMasterKeySpec != "":
		return nil, validation("KeySpec and CustomerMasterKeySpec cannot both be specified; use KeySpec")
	}
	spec := in.KeySpec
	if spec == "" {
		//lint:ignore SA1019 AWS still accepts the deprecated parameter
		spec = types.KeySpec(in.CustomerMasterKeySpec)
	}
	if spec == "" {
		spec = types.KeySpecSymmetricDefault
	}
	si, ok := keySpecs[spec]
	if !ok {
		if slices.Contains(types.KeySpec("").Values(), spec) {
			return nil, unsupported("key spec %s is not supported by hsmkms", spec)
		}
		return nil, validation("1 validation error detected: Value '%s' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set", spec)
	}
	usage := in.KeyUsage
	if usage == "" {
		usage = si.usages[0]
		if spec != types.KeySpecSymmetricDefault && !isRSA(spec) {
			return nil, validation("KeyUsage is required for key spec %s; use %s", spec, usage)
		}
	}
	if !slices.Contains(si.usages, usage) {
		if usage == types.KeyUsageTypeKeyAgreement || usage == types.KeyUsageTypeEncapsulateDecapsulate {
			return nil, unsupported("key usage %s is not supported by hsmkms", usage)
		}
		return nil, validation("KeyUsage %s is not compatible with KeySpec %s", usage, spec)
	}
	origin := in.Origin
	switch origin {
	case "":
		origin = types.OriginTypeAwsKms
	case types.OriginTypeAwsKms:
	case types.OriginTypeExternal:
		if !importableSpec(spec) {
			return nil, unsupported("importing key material is supported for SYMMETRIC_DEFAULT, HMAC, RSA and ECC_NIST keys, not for %s", spec)
		}
	case types.OriginTypeAwsCloudhsm, types.OriginTypeExternalKeyStore:
		return nil, unsupported("origin %s is not supported; every key lives on the HSM cluster", origin)
	default:
		return nil, validation("1 validation error detected: Value '%s' at 'origin' failed to satisfy constraint: Member must satisfy enum value set", origin)
	}
	desc := deref(in.Description)
	if err := validateDescription(desc); err != nil {
		return nil, err
	}
	policy := c.defaultPolicy()
	if in.Policy != nil {
		if err := validatePolicy(*in.Policy); err != nil {
			return nil, err
		}
		policy = *in.Policy
	}
	tags, err := validateTags(in.Tags)
	if err != nil {
		return nil, err
	}
	if len(tags) > maxTags {
		return nil, limitExceeded("a key can have at most %d tags", maxTags)
	}
	tags = mergeTags(nil, tags)

	now := c.now()
	r := &keyRecord{
		ID: newKeyID(), State: stateCreating, Spec: spec, Usage: usage, Origin: origin,
		Description: desc, Created: now, Policy: policy, Tags: tags,
		Versions: []versionRecord{{N: 1, Created: now, MaterialID: randomMaterialID(), Present: origin == types.OriginTypeAwsKms}},
	}
	if origin == types.OriginTypeAwsKms {
		r.Versions[0].HSMKey = hsmKeyID(r.ID, 1)
	}
	if origin == types.OriginTypeExternal {
		r.Versions[0].MaterialID = ""
	}
	// Step 1: the record, in state Creating.
	sealed, err := c.sealKey(ctx, r)
	if err != nil {
		return nil, err
	}
	creating := sealed
	err = c.update(ctx, func(tx Tx) error {
		n := 0
		if err := tx.ForEach(bucketKeys, "", func(string, []byte) error { n++; return nil }); err != nil {
			return err
		}
		if n >= c.cfg.MaxKeys {
			return limitExceeded("the account has the maximum of %d keys", c.cfg.MaxKeys)
		}
		return tx.Put(bucketKeys, r.ID, sealed)
	})
	if err != nil {
		return nil, storeErr(err)
	}
	if err := c.hook("created-record"); err != nil {
		return nil, err
	}
	// Step 2: the key on the HSMs.
	if origin == types.OriginTypeAwsKms {
		_, err := c.backend.GenerateKey(ctx, r.Versions[0].HSMKey, si.hsm, hsm.KeyOptions{Usage: hsmUsage(usage), Extractable: true})
		if err != nil {
			c.abandonCreate(r.ID)
			return nil, backendErr(err, "creating the key")
		}
	}
	if err := c.hook("generated"); err != nil {
		return nil, err
	}
	// Step 3: complete.
	r.State = types.KeyStateEnabled
	if origin == types.OriginTypeExternal {
		r.State = types.KeyStatePendingImport
	}
	if sealed, err = c.sealKey(ctx, r); err == nil {
		err = c.update(ctx, func(tx Tx) error {
			// Only over the Creating record of step 1: a creation that
			// took longer than CreateTimeout may have been rolled back
			// (its HSM key destroyed) by New or another replica's Tick.
			cur, err := tx.Get(bucketKeys, r.ID)
			if err != nil && !errors.Is(err, ErrNoRecord) {
				return err
			}
			if !bytes.Equal(cur, creating) {
				return errRolledBack
			}
			return tx.Put(bucketKeys, r.ID, sealed)
		})
	}
	if errors.Is(err, errRolledBack) {
		// The rollback may have run before step 2 made the HSM key: it
		// is nobody's now.
		if hk := r.Versions[0].HSMKey; hk != "" {
			if derr := c.backend.DestroyKey(context.WithoutCancel(ctx), hk); derr != nil && !errors.Is(derr, hsm.ErrKeyNotFound) {
				c.log.Warn("destroying the HSM key of a rolled-back creation", "hsmKey", hk, "err", derr)
			}
		}
		return nil, dependencyTimeout("creating the key took longer than %s and was rolled back; create it again", c.cfg.CreateTimeout)
	}
	if err != nil {
		// The record stays in Creating; New or Tick rolls it back.
		return nil, storeErr(err)
	}
	return &kms.CreateKeyOutput{KeyMetadata: c.metadata(r)}, nil
}

// errRolledBack: a CreateKey's record was rolled back before it completed.
var errRolledBack = errors.New("kmsadapter: creation rolled back")

func (c *Client) hook(step string) error {
	if c.testHook != nil {
		return c.testHook(step)
	}
	return nil
}

// abandonCreate removes the record of a creation that failed. Should this
// fail too, the record stays in Creating for New or Tick to roll back.
func (c *Client) abandonCreate(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = c.update(ctx, func(tx Tx) error { return tx.Delete(bucketKeys, id) })
}

// DescribeKey returns a key's metadata. It accepts all four KeyId forms.
func (c *Client) DescribeKey(ctx context.Context, in *kms.DescribeKeyInput, _ ...func(*kms.Options)) (*kms.DescribeKeyOutput, error) {
	if in == nil {
		in = &kms.DescribeKeyInput{}
	}
	r, err := c.resolve(ctx, in.KeyId, anyIDForm)
	if err != nil {
		return nil, opError("DescribeKey", err)
	}
	return &kms.DescribeKeyOutput{KeyMetadata: c.metadata(r)}, nil
}

// page validates Limit (1 to max, as each List operation documents it;
// 100 or max by default) and Marker of a List call.
func page(limit *int32, marker *string, max int32) (int, string, error) {
	n := min(int32(100), max)
	if limit != nil {
		if *limit < 1 || *limit > max {
			return 0, "", validation("1 validation error detected: Value '%d' at 'limit' failed to satisfy constraint: Member must have value between 1 and %d", *limit, max)
		}
		n = *limit
	}
	m := deref(marker)
	if marker != nil && (m == "" || len(m) > 1024) {
		return 0, "", invalidMarker("the marker is not valid")
	}
	return int(n), m, nil
}

// ListKeys lists the keys, including those pending deletion.
func (c *Client) ListKeys(ctx context.Context, in *kms.ListKeysInput, _ ...func(*kms.Options)) (*kms.ListKeysOutput, error) {
	if in == nil {
		in = &kms.ListKeysInput{}
	}
	limit, marker, err := page(in.Limit, in.Marker, 1000)
	if err != nil {
		return nil, opError("ListKeys", err)
	}
	if marker != "" {
		if _, ok := parseUUID(marker); !ok {
			return nil, opError("ListKeys", invalidMarker("the marker is not valid"))
		}
	}
	out := &kms.ListKeysOutput{Keys: []types.KeyListEntry{}}
	var items []struct {
		id  string
		raw []byte
	}
	err = c.store.View(ctx, func(tx Tx) error {
		return tx.ForEach(bucketKeys, marker, func(k string, v []byte) error {
			items = append(items, struct {
				id  string
				raw []byte
			}{k, slices.Clone(v)})
			return nil
		})
	})
	if err != nil {
		return nil, opError("ListKeys", storeErr(err))
	}
	for _, it := range items {
		r, err := open[keyRecord](ctx, c, bucketKeys, it.id, it.raw)
		if err != nil {
			return nil, opError("ListKeys", err)
		}
		if r.State == stateCreating {
			continue
		}
		if len(out.Keys) == limit {
			out.Truncated, out.NextMarker = true, ptr(it.id)
			break
		}
		out.Keys = append(out.Keys, types.KeyListEntry{KeyId: ptr(r.ID), KeyArn: c.arnOf(r)})
	}
	return out, nil
}

// UpdateKeyDescription replaces a key's description.
func (c *Client) UpdateKeyDescription(ctx context.Context, in *kms.UpdateKeyDescriptionInput, _ ...func(*kms.Options)) (*kms.UpdateKeyDescriptionOutput, error) {
	err := func() error {
		if in == nil || in.Description == nil {
			return validation("1 validation error detected: Value null at 'description' failed to satisfy constraint: Member must not be null")
		}
		if err := validateDescription(*in.Description); err != nil {
			return err
		}
		id, err := c.keyIDOf(in.KeyId)
		if err != nil {
			return err
		}
		_, err = c.updateKey(ctx, id, func(r *keyRecord) error {
			if err := c.notPendingDeletion(r); err != nil {
				return err
			}
			r.Description = *in.Description
			return nil
		})
		return err
	}()
	if err != nil {
		return nil, opError("UpdateKeyDescription", err)
	}
	return &kms.UpdateKeyDescriptionOutput{}, nil
}

// keyIDOf parses a KeyId parameter that must be a key ID or key ARN.
func (c *Client) keyIDOf(s *string) (string, error) {
	ref, err := c.parseKeyRef(s, keyOnly)
	return ref.keyID, err
}

// EnableKey sets a key's state to Enabled.
func (c *Client) EnableKey(ctx context.Context, in *kms.EnableKeyInput, _ ...func(*kms.Options)) (*kms.EnableKeyOutput, error) {
	if in == nil {
		in = &kms.EnableKeyInput{}
	}
	if err := c.setEnabled(ctx, in.KeyId, true); err != nil {
		return nil, opError("EnableKey", err)
	}
	return &kms.EnableKeyOutput{}, nil
}

// DisableKey sets a key's state to Disabled.
func (c *Client) DisableKey(ctx context.Context, in *kms.DisableKeyInput, _ ...func(*kms.Options)) (*kms.DisableKeyOutput, error) {
	if in == nil {
		in = &kms.DisableKeyInput{}
	}
	if err := c.setEnabled(ctx, in.KeyId, false); err != nil {
		return nil, opError("DisableKey", err)
	}
	return &kms.DisableKeyOutput{}, nil
}

func (c *Client) setEnabled(ctx context.Context, keyID *string, enable bool) error {
	id, err := c.keyIDOf(keyID)
	if err != nil {
		return err
	}
	_, err = c.updateKey(ctx, id, func(r *keyRecord) error {
		switch r.State {
		case types.KeyStateEnabled, types.KeyStateDisabled:
		default:
			return invalidState("%s is %s.", c.keyARN(r.ID), r.State)
		}
		if enable {
			r.State = types.KeyStateEnabled
		} else {
			r.State = types.KeyStateDisabled
		}
		return nil
	})
	return err
}

// ScheduleKeyDeletion puts a key in PendingDeletion for 7 to 30 days
// (30 by default). When the window ends, Tick destroys its key material on
// the HSMs and removes the key.
func (c *Client) ScheduleKeyDeletion(ctx context.Context, in *kms.ScheduleKeyDeletionInput, _ ...func(*kms.Options)) (*kms.ScheduleKeyDeletionOutput, error) {
	if in == nil {
		in = &kms.ScheduleKeyDeletionInput{}
	}
	days := int32(30)
	if in.PendingWindowInDays != nil {
		days = *in.PendingWindowInDays
	}
	if days < 7 || days > 30 {
		return nil, opError("ScheduleKeyDeletion", validation("1 validation error detected: Value '%d' at 'pendingWindowInDays' failed to satisfy constraint: Member must have value between 7 and 30", days))
	}
	id, err := c.keyIDOf(in.KeyId)
	if err != nil {
		return nil, opError("ScheduleKeyDeletion", err)
	}
	r, err := c.updateKey(ctx, id, func(r *keyRecord) error {
		if err := c.notPendingDeletion(r); err != nil {
			return err
		}
		when := c.now().Add(time.Duration(days) * 24 * time.Hour)
		r.State, r.DeletionDate, r.PendingWindow = types.KeyStatePendingDeletion, &when, days
		return nil
	})
	if err != nil {
		return nil, opError("ScheduleKeyDeletion", err)
	}
	return &kms.ScheduleKeyDeletionOutput{
		KeyId: c.arnOf(r), DeletionDate: ptr(*r.DeletionDate),
		KeyState: r.State, PendingWindowInDays: ptr(days),
	}, nil
}

// CancelKeyDeletion takes a key out of PendingDeletion; it becomes
// Disabled, as at AWS (PendingImport when it has no key material).
func (c *Client) CancelKeyDeletion(ctx context.Context, in *kms.CancelKeyDeletionInput, _ ...func(*kms.Options)) (*kms.CancelKeyDeletionOutput, error) {
	if in == nil {
		in = &kms.CancelKeyDeletionInput{}
	}
	id, err := c.keyIDOf(in.KeyId)
	if err != nil {
		return nil, opError("CancelKeyDeletion", err)
	}
	r, err := c.updateKey(ctx, id, func(r *keyRecord) error {
		if r.State != types.KeyStatePendingDeletion {
			return invalidState("%s is not pending deletion.", c.keyARN(r.ID))
		}
		if r.Destroying {
			return invalidState("%s is being deleted: its waiting period has ended.", c.keyARN(r.ID))
		}
		r.State, r.DeletionDate, r.PendingWindow = types.KeyStateDisabled, nil, 0
		if !r.current().Present {
			r.State = types.KeyStatePendingImport
		}
		return nil
	})
	if err != nil {
		return nil, opError("CancelKeyDeletion", err)
	}
	return &kms.CancelKeyDeletionOutput{KeyId: c.arnOf(r)}, nil
}

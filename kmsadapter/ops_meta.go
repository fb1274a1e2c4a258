package kmsadapter

import (
	"bytes"
	"context"
	"errors"
	"slices"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// aliasTarget resolves the TargetKeyId of CreateAlias and UpdateAlias.
func (c *Client) aliasTarget(ctx context.Context, target *string) (*keyRecord, error) {
	id, err := c.keyIDOf(target)
	if err != nil {
		return nil, err
	}
	r, err := c.getKey(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := c.notPendingDeletion(r); err != nil {
		return nil, err
	}
	return r, nil
}

// countAliases counts the aliases of a key inside a transaction. It
// decodes without verifying (no HSM call runs in a transaction); reads
// of alias records verify them.
func countAliases(tx Tx, keyID string) (int, error) {
	n := 0
	err := tx.ForEach(bucketAliases, "", func(k string, v []byte) error {
		a, err := decodeFresh[aliasRecord](v)
		if err == nil && a.Target == keyID {
			n++
		}
		return nil
	})
	return n, err
}

// CreateAlias creates an alias for a key.
func (c *Client) CreateAlias(ctx context.Context, in *kms.CreateAliasInput, _ ...func(*kms.Options)) (*kms.CreateAliasOutput, error) {
	err := func() error {
		if in == nil {
			in = &kms.CreateAliasInput{}
		}
		name := deref(in.AliasName)
		if err := validateAliasName(name); err != nil {
			return err
		}
		r, err := c.aliasTarget(ctx, in.TargetKeyId)
		if err != nil {
			return err
		}
		now := c.now()
		sealed, err := c.sealAlias(ctx, &aliasRecord{Name: name, Target: r.ID, Created: now, Updated: now})
		if err != nil {
			return err
		}
		err = c.update(ctx, func(tx Tx) error {
			if _, err := tx.Get(bucketAliases, name); err == nil {
				return alreadyExists("An alias with the name %s already exists", c.aliasARN(name))
			} else if !errors.Is(err, ErrNoRecord) {
				return err
			}
			n, err := countAliases(tx, r.ID)
			if err != nil {
				return err
			}
			if n >= c.cfg.MaxAliasesPerKey {
				return limitExceeded("%s has the maximum of %d aliases", c.keyARN(r.ID), c.cfg.MaxAliasesPerKey)
			}
			return tx.Put(bucketAliases, name, sealed)
		})
		return storeErr(err)
	}()
	if err != nil {
		return nil, opError("CreateAlias", err)
	}
	return &kms.CreateAliasOutput{}, nil
}

// UpdateAlias points an existing alias at another key.
func (c *Client) UpdateAlias(ctx context.Context, in *kms.UpdateAliasInput, _ ...func(*kms.Options)) (*kms.UpdateAliasOutput, error) {
	err := func() error {
		if in == nil {
			in = &kms.UpdateAliasInput{}
		}
		name := deref(in.AliasName)
		if err := validateAliasName(name); err != nil {
			return err
		}
		r, err := c.aliasTarget(ctx, in.TargetKeyId)
		if err != nil {
			return err
		}
		var raw []byte
		err = c.store.View(ctx, func(tx Tx) error {
			var err error
			raw, err = tx.Get(bucketAliases, name)
			return err
		})
		if errors.Is(err, ErrNoRecord) {
			return notFound("Alias %s is not found.", c.aliasARN(name))
		}
		if err != nil {
			return err
		}
		a, err := open[aliasRecord](ctx, c, bucketAliases, name, raw)
		if err != nil {
			return err
		}
		// The new key must be of the same type and usage as the current one.
		// (AWS documents the rule but not its exception; ValidationException
		// is our reading.)
		if cur, err := c.getKey(ctx, a.Target); err == nil && (keyClass(cur.Spec) != keyClass(r.Spec) || cur.Usage != r.Usage) {
			return validation("alias %s names a %s key for %s; %s is a %s key for %s", name, keyClass(cur.Spec), cur.Usage, c.keyARN(r.ID), keyClass(r.Spec), r.Usage)
		}
		sealed, err := c.sealAlias(ctx, &aliasRecord{Name: name, Target: r.ID, Created: a.Created, Updated: c.now()})
		if err != nil {
			return err
		}
		err = c.update(ctx, func(tx Tx) error {
			cur, err := tx.Get(bucketAliases, name)
			if errors.Is(err, ErrNoRecord) {
				return notFound("Alias %s is not found.", c.aliasARN(name))
			}
			if err != nil {
				return err
			}
			if !bytes.Equal(cur, raw) {
				return conflict("the alias %s changed concurrently; retry", name)
			}
			if a.Target != r.ID {
				n, err := countAliases(tx, r.ID)
				if err != nil {
					return err
				}
				if n >= c.cfg.MaxAliasesPerKey {
					return limitExceeded("%s has the maximum of %d aliases", c.keyARN(r.ID), c.cfg.MaxAliasesPerKey)
				}
			}
			return tx.Put(bucketAliases, name, sealed)
		})
		return storeErr(err)
	}()
	if err != nil {
		return nil, opError("UpdateAlias", err)
	}
	return &kms.UpdateAliasOutput{}, nil
}

// DeleteAlias deletes an alias; the key is not affected.
func (c *Client) DeleteAlias(ctx context.Context, in *kms.DeleteAliasInput, _ ...func(*kms.Options)) (*kms.DeleteAliasOutput, error) {
	err := func() error {
		if in == nil || in.AliasName == nil || *in.AliasName == "" {
			return validation("1 validation error detected: Value null at 'aliasName' failed to satisfy constraint: Member must not be null")
		}
		name := *in.AliasName
		err := c.update(ctx, func(tx Tx) error {
			if _, err := tx.Get(bucketAliases, name); errors.Is(err, ErrNoRecord) {
				return notFound("Alias %s is not found.", c.aliasARN(name))
			} else if err != nil {
				return err
			}
			return tx.Delete(bucketAliases, name)
		})
		return storeErr(err)
	}()
	if err != nil {
		return nil, opError("DeleteAlias", err)
	}
	return &kms.DeleteAliasOutput{}, nil
}

// ListAliases lists aliases, all of them or those of one key.
func (c *Client) ListAliases(ctx context.Context, in *kms.ListAliasesInput, _ ...func(*kms.Options)) (*kms.ListAliasesOutput, error) {
	out, err := func() (*kms.ListAliasesOutput, error) {
		if in == nil {
			in = &kms.ListAliasesInput{}
		}
		limit, marker, err := page(in.Limit, in.Marker, 100)
		if err != nil {
			return nil, err
		}
		keyID := ""
		if in.KeyId != nil {
			if keyID, err = c.keyIDOf(in.KeyId); err != nil {
				return nil, err
			}
			if _, err := c.getKey(ctx, keyID); err != nil {
				return nil, err
			}
		}
		type item struct {
			name string
			raw  []byte
		}
		var items []item
		err = c.store.View(ctx, func(tx Tx) error {
			return tx.ForEach(bucketAliases, marker, func(k string, v []byte) error {
				items = append(items, item{k, slices.Clone(v)})
				return nil
			})
		})
		if err != nil {
			return nil, storeErr(err)
		}
		out := &kms.ListAliasesOutput{Aliases: []types.AliasListEntry{}}
		for _, it := range items {
			a, err := open[aliasRecord](ctx, c, bucketAliases, it.name, it.raw)
			if err != nil {
				return nil, err
			}
			if keyID != "" && a.Target != keyID {
				continue
			}
			if len(out.Aliases) == limit {
				out.Truncated, out.NextMarker = true, ptr(it.name)
				break
			}
			out.Aliases = append(out.Aliases, types.AliasListEntry{
				AliasName: ptr(a.Name), AliasArn: ptr(c.aliasARN(a.Name)), TargetKeyId: ptr(a.Target),
				CreationDate: ptr(a.Created), LastUpdatedDate: ptr(a.Updated),
			})
		}
		return out, nil
	}()
	return out, opError("ListAliases", err)
}

// TagResource adds or replaces tags of a key.
func (c *Client) TagResource(ctx context.Context, in *kms.TagResourceInput, _ ...func(*kms.Options)) (*kms.TagResourceOutput, error) {
	err := func() error {
		if in == nil {
			in = &kms.TagResourceInput{}
		}
		id, err := c.keyIDOf(in.KeyId)
		if err != nil {
			return err
		}
		if in.Tags == nil {
			return validation("1 validation error detected: Value null at 'tags' failed to satisfy constraint: Member must not be null")
		}
		tags, err := validateTags(in.Tags)
		if err != nil {
			return err
		}
		_, err = c.updateKey(ctx, id, func(r *keyRecord) error {
			if err := c.notPendingDeletion(r); err != nil {
				return err
			}
			merged := mergeTags(r.Tags, tags)
			if len(merged) > maxTags {
				return limitExceeded("a key can have at most %d tags", maxTags)
			}
			r.Tags = merged
			return nil
		})
		return err
	}()
	if err != nil {
		return nil, opError("TagResource", err)
	}
	return &kms.TagResourceOutput{}, nil
}

// UntagResource removes tags from a key; absent tag keys are ignored.
func (c *Client) UntagResource(ctx context.Context, in *kms.UntagResourceInput, _ ...func(*kms.Options)) (*kms.UntagResourceOutput, error) {
	err := func() error {
		if in == nil {
			in = &kms.UntagResourceInput{}
		}
		id, err := c.keyIDOf(in.KeyId)
		if err != nil {
			return err
		}
		if in.TagKeys == nil {
			return validation("1 validation error detected: Value null at 'tagKeys' failed to satisfy constraint: Member must not be null")
		}
		_, err = c.updateKey(ctx, id, func(r *keyRecord) error {
			if err := c.notPendingDeletion(r); err != nil {
				return err
			}
			r.Tags = slices.DeleteFunc(r.Tags, func(t tagRecord) bool { return slices.Contains(in.TagKeys, t.Key) })
			return nil
		})
		return err
	}()
	if err != nil {
		return nil, opError("UntagResource", err)
	}
	return &kms.UntagResourceOutput{}, nil
}

// ListResourceTags lists a key's tags, sorted by tag key.
func (c *Client) ListResourceTags(ctx context.Context, in *kms.ListResourceTagsInput, _ ...func(*kms.Options)) (*kms.ListResourceTagsOutput, error) {
	out, err := func() (*kms.ListResourceTagsOutput, error) {
		if in == nil {
			in = &kms.ListResourceTagsInput{}
		}
		limit, marker, err := page(in.Limit, in.Marker, 50)
		if err != nil {
			return nil, err
		}
		id, err := c.keyIDOf(in.KeyId)
		if err != nil {
			return nil, err
		}
		r, err := c.getKey(ctx, id)
		if err != nil {
			return nil, err
		}
		out := &kms.ListResourceTagsOutput{Tags: []types.Tag{}}
		for _, t := range r.Tags {
			if t.Key < marker {
				continue
			}
			if len(out.Tags) == limit {
				out.Truncated, out.NextMarker = true, ptr(t.Key)
				break
			}
			out.Tags = append(out.Tags, types.Tag{TagKey: ptr(t.Key), TagValue: ptr(t.Value)})
		}
		return out, nil
	}()
	return out, opError("ListResourceTags", err)
}

func policyName(p *string) (string, error) {
	if p == nil || *p == "default" {
		return "default", nil
	}
	return "", notFound("No such policy exists: %s; the only policy name is default", *p)
}

// GetKeyPolicy returns a key's policy. Policies are stored and returned,
// not enforced: enforcement needs the callers' identities, which the
// server provides.
func (c *Client) GetKeyPolicy(ctx context.Context, in *kms.GetKeyPolicyInput, _ ...func(*kms.Options)) (*kms.GetKeyPolicyOutput, error) {
	out, err := func() (*kms.GetKeyPolicyOutput, error) {
		if in == nil {
			in = &kms.GetKeyPolicyInput{}
		}
		id, err := c.keyIDOf(in.KeyId)
		if err != nil {
			return nil, err
		}
		name, err := policyName(in.PolicyName)
		if err != nil {
			return nil, err
		}
		r, err := c.getKey(ctx, id)
		if err != nil {
			return nil, err
		}
		return &kms.GetKeyPolicyOutput{Policy: ptr(r.Policy), PolicyName: ptr(name)}, nil
	}()
	return out, opError("GetKeyPolicy", err)
}

// PutKeyPolicy replaces a key's policy.
func (c *Client) PutKeyPolicy(ctx context.Context, in *kms.PutKeyPolicyInput, _ ...func(*kms.Options)) (*kms.PutKeyPolicyOutput, error) {
	err := func() error {
		if in == nil {
			in = &kms.PutKeyPolicyInput{}
		}
		id, err := c.keyIDOf(in.KeyId)
		if err != nil {
			return err
		}
		if _, err := policyName(in.PolicyName); err != nil {
			return err
		}
		if in.Policy == nil {
			return validation("1 validation error detected: Value null at 'policy' failed to satisfy constraint: Member must not be null")
		}
		if err := validatePolicy(*in.Policy); err != nil {
			return err
		}
		_, err = c.updateKey(ctx, id, func(r *keyRecord) error {
			r.Policy = *in.Policy
			return nil
		})
		return err
	}()
	if err != nil {
		return nil, opError("PutKeyPolicy", err)
	}
	return &kms.PutKeyPolicyOutput{}, nil
}

// ListKeyPolicies lists the names of a key's policies: always "default".
func (c *Client) ListKeyPolicies(ctx context.Context, in *kms.ListKeyPoliciesInput, _ ...func(*kms.Options)) (*kms.ListKeyPoliciesOutput, error) {
	out, err := func() (*kms.ListKeyPoliciesOutput, error) {
		if in == nil {
			in = &kms.ListKeyPoliciesInput{}
		}
		if _, _, err := page(in.Limit, in.Marker, 1000); err != nil {
			return nil, err
		}
		id, err := c.keyIDOf(in.KeyId)
		if err != nil {
			return nil, err
		}
		if _, err := c.getKey(ctx, id); err != nil {
			return nil, err
		}
		return &kms.ListKeyPoliciesOutput{PolicyNames: []string{"default"}}, nil
	}()
	return out, opError("ListKeyPolicies", err)
}

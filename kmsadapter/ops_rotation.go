package kmsadapter

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/hsmkms/hsmkms/hsm"
)

// rotatable checks that a key's rotation can be managed.
func (c *Client) rotatable(r *keyRecord) error {
	switch {
	case r.State == types.KeyStateDisabled:
		return disabled("%s is disabled.", c.keyARN(r.ID))
	case r.State != types.KeyStateEnabled:
		return invalidState("%s is %s.", c.keyARN(r.ID), r.State)
	case r.Spec != types.KeySpecSymmetricDefault:
		return unsupported("%s is not a symmetric encryption key; only those rotate.", c.keyARN(r.ID))
	case r.Origin != types.OriginTypeAwsKms:
		return unsupported("%s has imported key material, which hsmkms does not rotate.", c.keyARN(r.ID))
	}
	return nil
}

// EnableKeyRotation turns on automatic rotation every 90 to 2560 days
// (365 by default). Tick rotates keys whose date has come.
func (c *Client) EnableKeyRotation(ctx context.Context, in *kms.EnableKeyRotationInput, _ ...func(*kms.Options)) (*kms.EnableKeyRotationOutput, error) {
	err := func() error {
		if in == nil {
			in = &kms.EnableKeyRotationInput{}
		}
		days := int32(365)
		if in.RotationPeriodInDays != nil {
			days = *in.RotationPeriodInDays
		}
		if days < 90 || days > 2560 {
			return validation("1 validation error detected: Value '%d' at 'rotationPeriodInDays' failed to satisfy constraint: Member must have value between 90 and 2560", days)
		}
		id, err := c.keyIDOf(in.KeyId)
		if err != nil {
			return err
		}
		_, err = c.updateKey(ctx, id, func(r *keyRecord) error {
			if err := c.rotatable(r); err != nil {
				return err
			}
			next := c.now().Add(time.Duration(days) * 24 * time.Hour)
			r.Rotation.Enabled, r.Rotation.PeriodDays, r.Rotation.Next = true, days, &next
			return nil
		})
		return err
	}()
	if err != nil {
		return nil, opError("EnableKeyRotation", err)
	}
	return &kms.EnableKeyRotationOutput{}, nil
}

// DisableKeyRotation turns automatic rotation off.
func (c *Client) DisableKeyRotation(ctx context.Context, in *kms.DisableKeyRotationInput, _ ...func(*kms.Options)) (*kms.DisableKeyRotationOutput, error) {
	err := func() error {
		if in == nil {
			in = &kms.DisableKeyRotationInput{}
		}
		id, err := c.keyIDOf(in.KeyId)
		if err != nil {
			return err
		}
		_, err = c.updateKey(ctx, id, func(r *keyRecord) error {
			if err := c.rotatable(r); err != nil {
				return err
			}
			r.Rotation.Enabled, r.Rotation.Next = false, nil
			return nil
		})
		return err
	}()
	if err != nil {
		return nil, opError("DisableKeyRotation", err)
	}
	return &kms.DisableKeyRotationOutput{}, nil
}

// GetKeyRotationStatus reports whether automatic rotation is on.
func (c *Client) GetKeyRotationStatus(ctx context.Context, in *kms.GetKeyRotationStatusInput, _ ...func(*kms.Options)) (*kms.GetKeyRotationStatusOutput, error) {
	out, err := func() (*kms.GetKeyRotationStatusOutput, error) {
		if in == nil {
			in = &kms.GetKeyRotationStatusInput{}
		}
		id, err := c.keyIDOf(in.KeyId)
		if err != nil {
			return nil, err
		}
		r, err := c.getKey(ctx, id)
		if err != nil {
			return nil, err
		}
		if r.Spec != types.KeySpecSymmetricDefault {
			return nil, unsupported("%s is not a symmetric encryption key; only those rotate.", c.keyARN(r.ID))
		}
		out := &kms.GetKeyRotationStatusOutput{KeyId: c.arnOf(r), KeyRotationEnabled: r.Rotation.Enabled}
		if r.Rotation.Enabled {
			out.RotationPeriodInDays = ptr(r.Rotation.PeriodDays)
			if r.Rotation.Next != nil {
				out.NextRotationDate = ptr(*r.Rotation.Next)
			}
		}
		if r.Rotation.OnDemandStart != nil {
			out.OnDemandRotationStartDate = ptr(*r.Rotation.OnDemandStart)
		}
		return out, nil
	}()
	return out, opError("GetKeyRotationStatus", err)
}

// RotateKeyOnDemand makes a new key version now. Encrypt uses it from
// then on; older versions keep decrypting.
func (c *Client) RotateKeyOnDemand(ctx context.Context, in *kms.RotateKeyOnDemandInput, _ ...func(*kms.Options)) (*kms.RotateKeyOnDemandOutput, error) {
	out, err := func() (*kms.RotateKeyOnDemandOutput, error) {
		if in == nil {
			in = &kms.RotateKeyOnDemandInput{}
		}
		id, err := c.keyIDOf(in.KeyId)
		if err != nil {
			return nil, err
		}
		r, err := c.rotate(ctx, id, types.RotationTypeOnDemand)
		if err != nil {
			return nil, err
		}
		return &kms.RotateKeyOnDemandOutput{KeyId: c.arnOf(r)}, nil
	}()
	return out, opError("RotateKeyOnDemand", err)
}

// rotate adds a key version: the HSM key first, then the record. A crash
// in between leaves an HSM key no record names; the next rotation of the
// key finds the name taken and uses a fresh one. (On a cluster, the
// catalog's re-sync removes such leftovers.)
func (c *Client) rotate(ctx context.Context, id string, typ types.RotationType) (*keyRecord, error) {
	c.rotateMu.Lock()
	defer c.rotateMu.Unlock()
	r, err := c.getKey(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := c.rotatable(r); err != nil {
		return nil, err
	}
	if typ == types.RotationTypeOnDemand && r.OnDemandRotations >= c.cfg.MaxOnDemandRotations {
		return nil, limitExceeded("%s has reached the maximum of %d on-demand rotations", c.keyARN(r.ID), c.cfg.MaxOnDemandRotations)
	}
	n := len(r.Versions) + 1
	hk := hsmKeyID(id, n)
	opts := hsm.KeyOptions{Usage: hsm.UsageEncrypt, Extractable: true}
	_, err = c.backend.GenerateKey(ctx, hk, hsm.AES256, opts)
	if errors.Is(err, hsm.ErrKeyExists) {
		// Left by an unfinished rotation (or destroyed, and IDs are never
		// reused): take a fresh name.
		c.log.Warn("an HSM key of this name exists; using a fresh one", "hsmKey", hk)
		hk = freshHSMKeyID(string(hk))
		_, err = c.backend.GenerateKey(ctx, hk, hsm.AES256, opts)
	}
	if err != nil {
		return nil, backendErr(err, "rotating the key")
	}
	now := c.now()
	out, err := c.updateKey(ctx, id, func(r *keyRecord) error {
		if err := c.rotatable(r); err != nil {
			return err // disabled, or scheduled for deletion, meanwhile
		}
		if len(r.Versions)+1 != n {
			return conflict("the key was rotated concurrently")
		}
		r.Versions = append(r.Versions, versionRecord{N: n, Created: now, Type: typ, MaterialID: randomMaterialID(), Present: true, HSMKey: hk})
		switch typ {
		case types.RotationTypeAutomatic:
			next := now.Add(time.Duration(r.Rotation.PeriodDays) * 24 * time.Hour)
			r.Rotation.Next = &next
		case types.RotationTypeOnDemand:
			r.OnDemandRotations++
			r.Rotation.OnDemandStart = &now
		}
		return nil
	})
	if err != nil {
		if !errors.Is(err, ErrTampered) {
			_ = c.backend.DestroyKey(context.WithoutCancel(ctx), hk)
		}
		return nil, err
	}
	return out, nil
}

// ListKeyRotations lists a key's rotations, oldest first; with
// IncludeKeyMaterial ALL_KEY_MATERIAL the initial key material too.
func (c *Client) ListKeyRotations(ctx context.Context, in *kms.ListKeyRotationsInput, _ ...func(*kms.Options)) (*kms.ListKeyRotationsOutput, error) {
	out, err := func() (*kms.ListKeyRotationsOutput, error) {
		if in == nil {
			in = &kms.ListKeyRotationsInput{}
		}
		limit, marker, err := page(in.Limit, in.Marker, 1000)
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
		if r.Spec != types.KeySpecSymmetricDefault {
			return nil, unsupported("%s is not a symmetric encryption key; only those rotate.", c.keyARN(r.ID))
		}
		start := 0
		if marker != "" {
			if _, err := fmtSscan(marker, &start); err != nil || start < 0 || start > len(r.Versions) {
				return nil, invalidMarker("the marker is not valid")
			}
		}
		out := &kms.ListKeyRotationsOutput{Rotations: []types.RotationsListEntry{}}
		for i := start; i < len(r.Versions); i++ {
			v := r.Versions[i]
			if v.N == 1 && in.IncludeKeyMaterial != types.IncludeKeyMaterialAllKeyMaterial {
				continue
			}
			if len(out.Rotations) == limit {
				out.Truncated, out.NextMarker = true, ptr(itoa(i))
				break
			}
			e := types.RotationsListEntry{KeyId: c.arnOf(r), RotationDate: ptr(v.Created), RotationType: v.Type, KeyMaterialId: ptr(v.MaterialID)}
			e.KeyMaterialState = types.KeyMaterialStateNonCurrent
			if i == len(r.Versions)-1 {
				e.KeyMaterialState = types.KeyMaterialStateCurrent
			}
			out.Rotations = append(out.Rotations, e)
		}
		return out, nil
	}()
	return out, opError("ListKeyRotations", err)
}

func itoa(i int) string { return strconv.Itoa(i) }

func fmtSscan(s string, i *int) (int, error) {
	v, err := strconv.Atoi(s)
	*i = v
	return 1, err
}

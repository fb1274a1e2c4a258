package kmsadapter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/hsmkms/hsmkms/hsm"
)

// Tick does the work that falls due with time, as of the Client's clock:
//   - keys whose deletion window ended: the record is marked, from which
//     point CancelKeyDeletion is refused (KMSInvalidStateException); then
//     their key material is destroyed through the Backend (on every
//     member of a cluster), their aliases removed, a tombstone kept for
//     every destroyed HSM key, the record deleted;
//   - keys whose automatic rotation date passed get a new key version;
//   - imported key material past its ValidTo is destroyed and the key
//     goes to PendingImport;
//   - import wrapping keys past their validity are destroyed;
//   - CreateKey calls unfinished for longer than Config.CreateTimeout are
//     rolled back.
//
// Tick is idempotent: a step cut short by a crash is redone by the next
// Tick. Call it from a loop (RunMaintenance) or a scheduler.
func (c *Client) Tick(ctx context.Context) error {
	var errs []error
	if err := c.rollbackCreating(ctx); err != nil {
		errs = append(errs, err)
	}
	recs, err := c.allKeys(ctx)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	now := c.now()
	for _, r := range recs {
		var err error
		switch {
		case r.State == types.KeyStatePendingDeletion && r.DeletionDate != nil && !now.Before(*r.DeletionDate):
			if err = c.destroyKey(ctx, r); err == nil {
				continue // destroyed, or cancelled meanwhile: nothing else to do now
			}
		case r.State == types.KeyStateEnabled && r.Rotation.Enabled && r.Rotation.Next != nil && !now.Before(*r.Rotation.Next):
			_, err = c.rotate(ctx, r.ID, types.RotationTypeAutomatic)
		}
		if err == nil && r.Origin == types.OriginTypeExternal && r.ValidTo != nil && !now.Before(*r.ValidTo) && r.current().Present {
			err = c.expireMaterial(ctx, r.ID)
		}
		if err == nil && r.Import != nil && !now.Before(r.Import.ValidTo) {
			err = c.dropImport(ctx, r.ID, r.Import.Token)
		}
		if err == nil && len(r.Orphans) > 0 {
			err = c.destroyOrphans(ctx, r.ID, r.Orphans)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("key %s: %w", r.ID, err))
		}
	}
	return errors.Join(errs...)
}

// RunMaintenance calls Tick on every value from tick until ctx ends,
// logging Tick's errors. Pass a time.Ticker's channel, or a channel a test
// drives.
func (c *Client) RunMaintenance(ctx context.Context, tick <-chan time.Time) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			if err := c.Tick(ctx); err != nil {
				c.log.Error("maintenance", "err", err)
			}
		}
	}
}

func (c *Client) allKeys(ctx context.Context) ([]*keyRecord, error) {
	type item struct {
		id  string
		raw []byte
	}
	var items []item
	err := c.store.View(ctx, func(tx Tx) error {
		return tx.ForEach(bucketKeys, "", func(k string, v []byte) error {
			items = append(items, item{k, append([]byte(nil), v...)})
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	out := make([]*keyRecord, 0, len(items))
	var errs []error
	for _, it := range items {
		r, err := open[keyRecord](ctx, c, bucketKeys, it.id, it.raw)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, r)
	}
	return out, errors.Join(errs...)
}

// rollbackCreating removes keys a crash left in state Creating, and their
// HSM key if it was made, once they are older than Config.CreateTimeout.
func (c *Client) rollbackCreating(ctx context.Context) error {
	recs, err := c.allKeys(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range recs {
		if r.State != stateCreating || c.now().Sub(r.Created) < c.cfg.CreateTimeout {
			continue
		}
		if hk := r.Versions[0].HSMKey; hk == "" {
		} else if err := c.backend.DestroyKey(ctx, hk); err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
			errs = append(errs, fmt.Errorf("kmsadapter: rolling back the creation of %s: %w", r.ID, err))
			continue
		}
		err := c.update(ctx, func(tx Tx) error { return tx.Delete(bucketKeys, r.ID) })
		if err != nil {
			errs = append(errs, err)
			continue
		}
		c.log.Info("rolled back an unfinished CreateKey", "key", r.ID)
	}
	return errors.Join(errs...)
}

// destroyKey ends a key whose deletion window is over. HSM keys go first,
// each remembered by a tombstone, then aliases and the record: a crash
// half way leaves the record in PendingDeletion, and the next Tick
// finishes the job.
func (c *Client) destroyKey(ctx context.Context, r *keyRecord) error {
	// First mark the record, if it is still due (the caller's copy may
	// be old: a CancelKeyDeletion may have won meanwhile), so that no
	// cancellation can succeed once material is being destroyed.
	r, err := c.updateKey(ctx, r.ID, func(cur *keyRecord) error {
		if cur.State != types.KeyStatePendingDeletion || cur.DeletionDate == nil || c.now().Before(*cur.DeletionDate) {
			return errNotDue
		}
		cur.Destroying = true
		return nil
	})
	var gone *types.NotFoundException
	if errors.Is(err, errNotDue) || errors.As(err, &gone) {
		return nil // cancelled, or destroyed by another replica's Tick
	}
	if err != nil {
		return err
	}
	var hsmKeys []hsm.KeyID
	for _, v := range r.Versions {
		if v.HSMKey != "" {
			hsmKeys = append(hsmKeys, v.HSMKey)
		}
	}
	if r.Import != nil {
		hsmKeys = append(hsmKeys, r.Import.WrappingKey)
	}
	hsmKeys = append(hsmKeys, r.Orphans...)
	for _, k := range hsmKeys {
		if err := c.backend.DestroyKey(ctx, k); err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
			return backendErr(err, "destroying key material")
		}
	}
	now := c.now()
	tombs := make([][]byte, len(hsmKeys))
	for i, k := range hsmKeys {
		var err error
		if tombs[i], err = c.seal(ctx, bucketTombstones, string(k), &tombstone{HSMKey: k, KeyID: r.ID, Destroyed: now}); err != nil {
			return backendErr(err, "sealing metadata")
		}
	}
	return c.update(ctx, func(tx Tx) error {
		for i, k := range hsmKeys {
			if err := tx.Put(bucketTombstones, string(k), tombs[i]); err != nil {
				return err
			}
		}
		var aliases []string
		err := tx.ForEach(bucketAliases, "", func(k string, v []byte) error {
			if a, err := decodeFresh[aliasRecord](v); err == nil && a.Target == r.ID {
				aliases = append(aliases, k)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, a := range aliases {
			if err := tx.Delete(bucketAliases, a); err != nil {
				return err
			}
		}
		return tx.Delete(bucketKeys, r.ID)
	})
}

// errNotDue: a key's deletion was cancelled or moved since Tick read it.
var errNotDue = errors.New("kmsadapter: key not due for deletion")

// Destroyed reports whether the HSM key id was destroyed for good, so it
// must never be created or copied again.
func (c *Client) Destroyed(ctx context.Context, id hsm.KeyID) (bool, error) {
	var raw []byte
	err := c.store.View(ctx, func(tx Tx) error {
		var err error
		raw, err = tx.Get(bucketTombstones, string(id))
		return err
	})
	if errors.Is(err, ErrNoRecord) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if _, err := open[tombstone](ctx, c, bucketTombstones, string(id), raw); err != nil {
		return false, err
	}
	return true, nil
}

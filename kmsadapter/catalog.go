package kmsadapter

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hsmkms/hsmkms/cluster"
	"github.com/hsmkms/hsmkms/hsm"
)

// Catalog is the cluster's catalog (which HSM keys must exist, and
// tombstones of destroyed ones) kept in the adapter's Store, so that the
// KMS metadata and the cluster's view of its keys live in one place and
// one backup. Make it with NewCatalog and give it to the cluster:
//
//	store, _ := kmsadapter.OpenBoltStore(path)
//	cl, _ := cluster.New(ctx, clusterCfg, cluster.WithCatalog(kmsadapter.NewCatalog(store)))
//	kms, _ := kmsadapter.New(cl, store, cfg)
//
// The catalog exists before the Client (the cluster needs it first), so
// its records are not sealed by the HSM integrity key as the Client's
// are; they name HSM keys and hold no secret.
type Catalog struct {
	store Store
}

var _ cluster.Catalog = (*Catalog)(nil)

// NewCatalog returns the cluster catalog kept in store.
func NewCatalog(store Store) *Catalog { return &Catalog{store: store} }

const catalogSeqKey = "catalog-sequence"

// Create implements cluster.Catalog.
func (c *Catalog) Create(ctx context.Context, rec cluster.KeyRecord) (cluster.KeyRecord, error) {
	err := c.store.Update(ctx, func(tx Tx) error {
		if _, err := tx.Get(bucketCatalog, string(rec.ID)); err == nil {
			return fmt.Errorf("%w: %s is in the catalog", hsm.ErrKeyExists, rec.ID)
		} else if !errors.Is(err, ErrNoRecord) {
			return err
		}
		var seq uint64
		if b, err := tx.Get(bucketMeta, catalogSeqKey); err == nil && len(b) == 8 {
			seq = binary.BigEndian.Uint64(b)
		} else if err != nil && !errors.Is(err, ErrNoRecord) {
			return err
		}
		seq++
		if err := tx.Put(bucketMeta, catalogSeqKey, binary.BigEndian.AppendUint64(nil, seq)); err != nil {
			return err
		}
		rec.Version = seq
		b, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		return tx.Put(bucketCatalog, string(rec.ID), b)
	})
	if err != nil {
		return cluster.KeyRecord{}, err
	}
	return rec, nil
}

// MarkDestroyed implements cluster.Catalog.
func (c *Catalog) MarkDestroyed(ctx context.Context, id hsm.KeyID, at time.Time) error {
	return c.store.Update(ctx, func(tx Tx) error {
		rec, err := getCatalog(tx, id)
		if err != nil || rec.Destroyed {
			return err
		}
		rec.Destroyed, rec.DestroyedAt = true, at
		b, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		return tx.Put(bucketCatalog, string(id), b)
	})
}

// Get implements cluster.Catalog.
func (c *Catalog) Get(ctx context.Context, id hsm.KeyID) (cluster.KeyRecord, error) {
	var rec cluster.KeyRecord
	err := c.store.View(ctx, func(tx Tx) error {
		var err error
		rec, err = getCatalog(tx, id)
		return err
	})
	return rec, err
}

// List implements cluster.Catalog.
func (c *Catalog) List(ctx context.Context) ([]cluster.KeyRecord, error) {
	var out []cluster.KeyRecord
	err := c.store.View(ctx, func(tx Tx) error {
		return tx.ForEach(bucketCatalog, "", func(_ string, v []byte) error {
			var rec cluster.KeyRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			out = append(out, rec)
			return nil
		})
	})
	return out, err
}

func getCatalog(tx Tx, id hsm.KeyID) (cluster.KeyRecord, error) {
	var rec cluster.KeyRecord
	b, err := tx.Get(bucketCatalog, string(id))
	if errors.Is(err, ErrNoRecord) {
		return rec, fmt.Errorf("%w: %s is not in the catalog", hsm.ErrKeyNotFound, id)
	}
	if err != nil {
		return rec, err
	}
	return rec, json.Unmarshal(b, &rec)
}

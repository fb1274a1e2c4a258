package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
	bolt "go.etcd.io/bbolt"
)

// KeyRecord is what the catalog knows of one key.
type KeyRecord struct {
	ID    hsm.KeyID
	Spec  hsm.KeySpec
	Usage hsm.Usage
	// Version is assigned by the catalog when the record is created; it
	// grows with every record the catalog creates.
	Version uint64
	Created time.Time
	// Destroyed marks a tombstone: the key must not exist on any member,
	// and its ID is never used again.
	Destroyed   bool
	DestroyedAt time.Time
	// Check is the key's check value (hsm.Token.CheckValue), read from a
	// member that held the new key when it was recorded; nil when none
	// could be read. Before a member serves a key it holds from before
	// (after a restart, or made by another process), its copy's check
	// value must match: a creation that failed midway can leave other
	// material under an ID a later creation takes.
	Check []byte `json:",omitempty"`
}

// Catalog says which keys the cluster must hold. It is the one source of
// truth: re-sync and anti-entropy make members agree with it. The
// kmsadapter's metadata store implements it; MemoryCatalog and
// BoltCatalog serve users of the cluster alone. Implementations must be
// safe for concurrent use.
type Catalog interface {
	// Create records a new key and returns the record with its Version
	// set. It fails with an error wrapping hsm.ErrKeyExists when the ID is
	// known, whether live or destroyed.
	Create(ctx context.Context, rec KeyRecord) (KeyRecord, error)
	// MarkDestroyed turns the record into a tombstone. It fails with an
	// error wrapping hsm.ErrKeyNotFound when the ID is unknown, and does
	// nothing more for a tombstone.
	MarkDestroyed(ctx context.Context, id hsm.KeyID, at time.Time) error
	// Get returns one record, tombstones included, or an error wrapping
	// hsm.ErrKeyNotFound.
	Get(ctx context.Context, id hsm.KeyID) (KeyRecord, error)
	// List returns every record, tombstones included, ordered by ID.
	List(ctx context.Context) ([]KeyRecord, error)
}

// MemoryCatalog is a Catalog in memory. The zero value is ready to use.
type MemoryCatalog struct {
	mu   sync.RWMutex
	m    map[hsm.KeyID]KeyRecord
	next uint64
}

var _ Catalog = (*MemoryCatalog)(nil)

// Create implements Catalog.
func (c *MemoryCatalog) Create(_ context.Context, rec KeyRecord) (KeyRecord, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[hsm.KeyID]KeyRecord{}
	}
	if _, ok := c.m[rec.ID]; ok {
		return KeyRecord{}, fmt.Errorf("%w: %s is in the catalog", hsm.ErrKeyExists, rec.ID)
	}
	c.next++
	rec.Version = c.next
	c.m[rec.ID] = rec
	return rec, nil
}

// MarkDestroyed implements Catalog.
func (c *MemoryCatalog) MarkDestroyed(_ context.Context, id hsm.KeyID, at time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	rec, ok := c.m[id]
	if !ok {
		return fmt.Errorf("%w: %s is not in the catalog", hsm.ErrKeyNotFound, id)
	}
	if !rec.Destroyed {
		rec.Destroyed, rec.DestroyedAt = true, at
		c.m[id] = rec
	}
	return nil
}

// Get implements Catalog.
func (c *MemoryCatalog) Get(_ context.Context, id hsm.KeyID) (KeyRecord, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	rec, ok := c.m[id]
	if !ok {
		return KeyRecord{}, fmt.Errorf("%w: %s is not in the catalog", hsm.ErrKeyNotFound, id)
	}
	return rec, nil
}

// List implements Catalog.
func (c *MemoryCatalog) List(context.Context) ([]KeyRecord, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]KeyRecord, 0, len(c.m))
	for _, r := range c.m {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b KeyRecord) int { return strings.Compare(string(a.ID), string(b.ID)) })
	return out, nil
}

// BoltCatalog is a Catalog in a bbolt file, for a cluster used by one
// process. Records are JSON in one bucket; Version is the bucket's
// sequence.
type BoltCatalog struct {
	db *bolt.DB
}

var _ Catalog = (*BoltCatalog)(nil)

var bucketKeys = []byte("keys")

// OpenBoltCatalog opens or creates the catalog file at path. Close it
// when done. bbolt locks the file: one process at a time.
func OpenBoltCatalog(path string) (*BoltCatalog, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("cluster: opening catalog %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketKeys)
		return err
	}); err != nil {
		return nil, errors.Join(fmt.Errorf("cluster: catalog %s: %w", path, err), db.Close())
	}
	return &BoltCatalog{db: db}, nil
}

// Close closes the file.
func (c *BoltCatalog) Close() error { return c.db.Close() }

// Create implements Catalog.
func (c *BoltCatalog) Create(_ context.Context, rec KeyRecord) (KeyRecord, error) {
	err := c.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketKeys)
		if b.Get([]byte(rec.ID)) != nil {
			return fmt.Errorf("%w: %s is in the catalog", hsm.ErrKeyExists, rec.ID)
		}
		v, err := b.NextSequence()
		if err != nil {
			return err
		}
		rec.Version = v
		data, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		return b.Put([]byte(rec.ID), data)
	})
	if err != nil {
		return KeyRecord{}, err
	}
	return rec, nil
}

// MarkDestroyed implements Catalog.
func (c *BoltCatalog) MarkDestroyed(_ context.Context, id hsm.KeyID, at time.Time) error {
	return c.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketKeys)
		data := b.Get([]byte(id))
		if data == nil {
			return fmt.Errorf("%w: %s is not in the catalog", hsm.ErrKeyNotFound, id)
		}
		var rec KeyRecord
		if err := json.Unmarshal(data, &rec); err != nil {
			return err
		}
		if rec.Destroyed {
			return nil
		}
		rec.Destroyed, rec.DestroyedAt = true, at
		out, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		return b.Put([]byte(id), out)
	})
}

// Get implements Catalog.
func (c *BoltCatalog) Get(_ context.Context, id hsm.KeyID) (KeyRecord, error) {
	var rec KeyRecord
	err := c.db.View(func(tx *bolt.Tx) error {
		data := tx.Bucket(bucketKeys).Get([]byte(id))
		if data == nil {
			return fmt.Errorf("%w: %s is not in the catalog", hsm.ErrKeyNotFound, id)
		}
		return json.Unmarshal(data, &rec)
	})
	return rec, err
}

// List implements Catalog.
func (c *BoltCatalog) List(context.Context) ([]KeyRecord, error) {
	var out []KeyRecord
	err := c.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketKeys).ForEach(func(_, v []byte) error {
			var rec KeyRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			out = append(out, rec)
			return nil
		})
	})
	return out, err
}

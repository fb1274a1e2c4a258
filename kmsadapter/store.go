package kmsadapter

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
)

// Store keeps the adapter's metadata: key records, aliases, tombstones of
// destroyed keys. It is a transactional map of buckets of byte values;
// the adapter seals every value with an HSM-held HMAC key before it writes
// it, so a Store need not be trusted for integrity, only for durability.
//
// Implementations: OpenBoltStore (an embedded bbolt file, the default),
// NewMemoryStore (tests). A database shared by several replicas of a
// service implements the same interface.
type Store interface {
	// View runs fn in a read-only transaction.
	View(ctx context.Context, fn func(Tx) error) error
	// Update runs fn in a read-write transaction, committed when fn
	// returns nil and rolled back otherwise. Updates are serialized.
	Update(ctx context.Context, fn func(Tx) error) error
	// Close releases the store.
	Close() error
}

// Tx is a transaction of a Store. It must not be used after the function
// it was passed to returns.
type Tx interface {
	// Get returns a copy of the value, or ErrNoRecord.
	Get(bucket, key string) ([]byte, error)
	// Put stores a value; the store keeps its own copy.
	Put(bucket, key string, value []byte) error
	// Delete removes a key; removing an absent key is no error.
	Delete(bucket, key string) error
	// ForEach calls fn for every key of bucket in byte order of the key,
	// starting at the first key >= start. fn returning errStop ends the
	// walk without error. The value passed to fn is valid only during fn.
	ForEach(bucket, start string, fn func(key string, value []byte) error) error
}

// ErrNoRecord is returned by Tx.Get for a missing key.
var ErrNoRecord = errors.New("kmsadapter: no such record")

// errStop ends a ForEach walk early.
var errStop = errors.New("stop")

// The buckets.
const (
	bucketKeys       = "keys"       // key ID -> keyRecord
	bucketAliases    = "aliases"    // alias name -> aliasRecord
	bucketTombstones = "tombstones" // HSM key ID -> tombstone of a destroyed key
	bucketMeta       = "meta"       // store-wide records
	bucketCatalog    = "catalog"    // HSM key ID -> cluster.KeyRecord (see Catalog)
)

var buckets = []string{bucketKeys, bucketAliases, bucketTombstones, bucketMeta, bucketCatalog}

// memoryStore is a Store in memory, for tests.
type memoryStore struct {
	mu     sync.RWMutex
	data   map[string]map[string][]byte
	closed bool
}

// NewMemoryStore returns an empty Store held in memory.
func NewMemoryStore() Store {
	m := &memoryStore{data: map[string]map[string][]byte{}}
	for _, b := range buckets {
		m.data[b] = map[string][]byte{}
	}
	return m
}

var errStoreClosed = errors.New("kmsadapter: store closed")

func (m *memoryStore) View(ctx context.Context, fn func(Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return errStoreClosed
	}
	return fn(&memTx{m: m})
}

func (m *memoryStore) Update(ctx context.Context, fn func(Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errStoreClosed
	}
	tx := &memTx{m: m, write: true, undo: map[[2]string]*[]byte{}}
	if err := fn(tx); err != nil {
		for k, v := range tx.undo {
			if v == nil {
				delete(m.data[k[0]], k[1])
			} else {
				m.data[k[0]][k[1]] = *v
			}
		}
		return err
	}
	return nil
}

func (m *memoryStore) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}

type memTx struct {
	m     *memoryStore
	write bool
	undo  map[[2]string]*[]byte // first value seen of each changed key; nil: absent
}

func (t *memTx) bucket(name string) (map[string][]byte, error) {
	b, ok := t.m.data[name]
	if !ok {
		return nil, errors.New("kmsadapter: no bucket " + name)
	}
	return b, nil
}

func (t *memTx) Get(bucket, key string) ([]byte, error) {
	b, err := t.bucket(bucket)
	if err != nil {
		return nil, err
	}
	v, ok := b[key]
	if !ok {
		return nil, ErrNoRecord
	}
	return slices.Clone(v), nil
}

func (t *memTx) remember(bucket, key string, b map[string][]byte) {
	k := [2]string{bucket, key}
	if _, seen := t.undo[k]; seen {
		return
	}
	if v, ok := b[key]; ok {
		t.undo[k] = &v
	} else {
		t.undo[k] = nil
	}
}

func (t *memTx) Put(bucket, key string, value []byte) error {
	if !t.write {
		return errors.New("kmsadapter: Put in a read-only transaction")
	}
	b, err := t.bucket(bucket)
	if err != nil {
		return err
	}
	t.remember(bucket, key, b)
	b[key] = slices.Clone(value)
	return nil
}

func (t *memTx) Delete(bucket, key string) error {
	if !t.write {
		return errors.New("kmsadapter: Delete in a read-only transaction")
	}
	b, err := t.bucket(bucket)
	if err != nil {
		return err
	}
	t.remember(bucket, key, b)
	delete(b, key)
	return nil
}

func (t *memTx) ForEach(bucket, start string, fn func(string, []byte) error) error {
	b, err := t.bucket(bucket)
	if err != nil {
		return err
	}
	keys := make([]string, 0, len(b))
	for k := range b {
		if strings.Compare(k, start) >= 0 {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		if err := fn(k, b[k]); err != nil {
			if err == errStop {
				return nil
			}
			return err
		}
	}
	return nil
}

package kmsadapter

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/hsmkms/hsmkms/hsm"
)

// Client serves the AWS KMS API (see API) from a Backend of HSMs and a
// metadata Store. It is safe for concurrent use.
type Client struct {
	backend  Backend
	store    Store
	ownStore bool
	cfg      Config
	clock    Clock
	log      *slog.Logger

	cache       recordCache
	hotMu       sync.RWMutex
	hotKeys     map[string]*hotEntry // key ID -> *keyRecord
	hotAliases  map[string]*hotEntry // alias name -> *aliasRecord
	hotGen      atomic.Uint64        // bumped after every store update
	arnPrefix   string               // "arn:<partition>:kms:<region>:<account>:"
	tamperCount atomic.Int64
	closed      atomic.Bool
	rotateMu    sync.Mutex // one rotation at a time in this process

	// testHook, when set, runs between the steps of CreateKey; an error
	// stops CreateKey there as a crash would (tests only).
	testHook func(step string) error
}

// New returns a Client over backend (an *hsm.Token, or a cluster of
// tokens) and store. A nil store opens the bbolt file cfg.StorePath, which
// the Client then owns and closes.
//
// New makes sure the HSM integrity key exists (creating it for an empty
// store), verifies every record of the store, and rolls back CreateKey
// calls that a crash left unfinished. A record that fails its integrity
// check fails New with an error wrapping ErrTampered that names it.
func New(backend Backend, store Store, cfg Config, opts ...Option) (*Client, error) {
	if backend == nil {
		return nil, errors.New("kmsadapter: nil backend")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var o options
	for _, f := range opts {
		f(&o)
	}
	c := &Client{backend: backend, store: store, cfg: cfg, clock: o.clock, log: o.logger}
	c.hotKeys, c.hotAliases = map[string]*hotEntry{}, map[string]*hotEntry{}
	c.arnPrefix = "arn:" + cfg.Partition + ":kms:" + cfg.Region + ":" + cfg.AccountID + ":"
	if c.clock == nil {
		c.clock = systemClock{}
	}
	if c.log == nil {
		c.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if store == nil {
		if cfg.StorePath == "" {
			return nil, errors.New("kmsadapter: no store and no Config.StorePath")
		}
		s, err := OpenBoltStore(cfg.StorePath)
		if err != nil {
			return nil, err
		}
		c.store, c.ownStore = s, true
	}
	if _, ok := backend.(profiler); !ok && cfg.OAEPHashes == nil {
		c.log.Warn("Config.OAEPHashes is not set and the backend cannot tell which RSA-OAEP hashes its HSMs support; requests for others will reach the HSMs")
	}
	ctx := context.Background()
	if err := c.start(ctx); err != nil {
		if c.ownStore {
			_ = c.store.Close()
		}
		return nil, err
	}
	return c, nil
}

func (c *Client) start(ctx context.Context) error {
	if err := c.ensureIntegrityKey(ctx); err != nil {
		return err
	}
	if err := c.VerifyStore(ctx); err != nil {
		return err
	}
	return c.rollbackCreating(ctx)
}

// ensureIntegrityKey finds the HSM key that seals records, or creates it
// when the store holds no record yet.
func (c *Client) ensureIntegrityKey(ctx context.Context) error {
	_, err := c.backend.Describe(ctx, c.cfg.IntegrityKeyID)
	if err == nil {
		return nil
	}
	if !errors.Is(err, hsm.ErrKeyNotFound) {
		return fmt.Errorf("kmsadapter: looking up the integrity key %s: %w", c.cfg.IntegrityKeyID, err)
	}
	empty := true
	err = c.store.View(ctx, func(tx Tx) error {
		for _, b := range []string{bucketKeys, bucketAliases} {
			if err := tx.ForEach(b, "", func(string, []byte) error { empty = false; return errStop }); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("kmsadapter: reading the store: %w", err)
	}
	if !empty {
		return fmt.Errorf("kmsadapter: the store holds records but the HSMs have no integrity key %s: they cannot be verified (wrong HSMs, or the key was destroyed): %w",
			c.cfg.IntegrityKeyID, ErrTampered)
	}
	_, err = c.backend.GenerateKey(ctx, c.cfg.IntegrityKeyID, hsm.HMAC256, hsm.KeyOptions{Usage: hsm.UsageSign, Extractable: true})
	if errors.Is(err, hsm.ErrKeyExists) {
		// Made by another process meanwhile, or only one member's answer
		// inside a failed creation (a cluster's error carries every
		// member's): the key counts as there only if it works.
		if _, merr := c.backend.MAC(ctx, c.cfg.IntegrityKeyID, crypto.SHA256, []byte("hsmkms integrity key check")); merr == nil {
			err = nil
		} else {
			return fmt.Errorf("kmsadapter: creating the integrity key %s: its ID is taken on the HSMs by objects that do not work as the key: "+
				"left by an earlier New that died before it finished, or being made by another process now; "+
				"when neither is the case and no other deployment uses these HSMs, destroy them "+
				"(on a cluster, cluster.Cluster.DestroyLeftover) and try again: %w",
				c.cfg.IntegrityKeyID, err)
		}
	}
	if err != nil {
		return fmt.Errorf("kmsadapter: creating the integrity key %s: %w", c.cfg.IntegrityKeyID, err)
	}
	return nil
}

// VerifyStore checks the integrity of every record in the store. It
// returns nil, or an error wrapping ErrTampered that joins one
// *IntegrityError per failed record, or the error that stopped the check.
func (c *Client) VerifyStore(ctx context.Context) error {
	type item struct {
		bucket, key string
		raw         []byte
	}
	var items []item
	err := c.store.View(ctx, func(tx Tx) error {
		for _, b := range []string{bucketKeys, bucketAliases, bucketTombstones} {
			err := tx.ForEach(b, "", func(k string, v []byte) error {
				items = append(items, item{b, k, append([]byte(nil), v...)})
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("kmsadapter: reading the store: %w", err)
	}
	var errs []error
	for _, it := range items {
		var err error
		switch it.bucket {
		case bucketKeys:
			var r *keyRecord
			if r, err = open[keyRecord](ctx, c, it.bucket, it.key, it.raw); err == nil && r.ID != it.key {
				err = c.tampered(it.bucket, it.key, errors.New("record names another key"))
			}
		case bucketAliases:
			_, err = open[aliasRecord](ctx, c, it.bucket, it.key, it.raw)
		case bucketTombstones:
			_, err = open[tombstone](ctx, c, it.bucket, it.key, it.raw)
		}
		var te *tamperedErr
		switch {
		case errors.As(err, &te):
			errs = append(errs, te.ie)
		case err != nil:
			return fmt.Errorf("kmsadapter: verifying %s/%s: %w", it.bucket, it.key, err)
		}
	}
	return errors.Join(errs...)
}

// TamperedRecords counts the records that failed their integrity check
// since the Client was made.
func (c *Client) TamperedRecords() int64 { return c.tamperCount.Load() }

// Close closes the store if New opened it. The Backend belongs to the
// caller.
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	if c.ownStore {
		return c.store.Close()
	}
	return nil
}

func (c *Client) now() time.Time { return c.clock.Now().UTC() }

func randomMaterialID() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// hotEntry is a verified record served from memory for
// Config.MetadataCacheTTL, valid only in the store generation it was read
// in.
type hotEntry struct {
	val     any
	gen     uint64
	expires time.Time
}

// update runs a store transaction and then invalidates the hot cache.
func (c *Client) update(ctx context.Context, fn func(Tx) error) error {
	defer c.hotGen.Add(1)
	return c.store.Update(ctx, fn)
}

func (c *Client) hotGet(m map[string]*hotEntry, k string) any {
	if c.cfg.MetadataCacheTTL <= 0 {
		return nil
	}
	c.hotMu.RLock()
	e := m[k]
	c.hotMu.RUnlock()
	if e == nil || e.gen != c.hotGen.Load() || !time.Now().Before(e.expires) {
		return nil
	}
	return e.val
}

func (c *Client) hotPut(m map[string]*hotEntry, k string, gen uint64, val any) {
	if c.cfg.MetadataCacheTTL <= 0 {
		return
	}
	e := &hotEntry{val: val, gen: gen, expires: time.Now().Add(c.cfg.MetadataCacheTTL)}
	c.hotMu.Lock()
	if len(m) > 2*c.cfg.MaxKeys { // bound memory: drop everything, refill on demand
		clear(m)
	}
	m[k] = e
	c.hotMu.Unlock()
}

// getKey loads and verifies the record of a key. A key that does not
// exist, or is still being created, is NotFoundException.
func (c *Client) getKey(ctx context.Context, id string) (*keyRecord, error) {
	missing := func() error { return notFound("Key '%s' does not exist", c.keyARN(id)) }
	return loadRecord(ctx, c, c.hotKeys, bucketKeys, id, missing, func(r *keyRecord) error {
		if r.ID != id {
			return c.tampered(bucketKeys, id, errors.New("record names another key"))
		}
		if r.State == stateCreating {
			return missing()
		}
		return nil
	})
}

// loadRecord reads one sealed record, from the hot cache when it is
// there, else from the store, verified; check rejects a record that
// verified but may not be served. A missing record is missing().
func loadRecord[T any](ctx context.Context, c *Client, hot map[string]*hotEntry, bucket, name string, missing func() error, check func(*T) error) (*T, error) {
	if r, ok := c.hotGet(hot, name).(*T); ok {
		return r, nil
	}
	gen := c.hotGen.Load()
	var raw []byte
	err := c.store.View(ctx, func(tx Tx) error {
		var err error
		raw, err = tx.Get(bucket, name)
		return err
	})
	if errors.Is(err, ErrNoRecord) {
		return nil, missing()
	}
	if err != nil {
		return nil, storeErr(err)
	}
	r, err := open[T](ctx, c, bucket, name, raw)
	if err != nil {
		return nil, err
	}
	if check != nil {
		if err := check(r); err != nil {
			return nil, err
		}
	}
	c.hotPut(hot, name, gen, r)
	return r, nil
}

func storeErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var ae *apiErr
	if errors.As(err, &ae) {
		return err
	}
	return dependencyTimeout("the metadata store failed: %v", err)
}

// resolve turns a KeyId parameter into the key's record.
func (c *Client) resolve(ctx context.Context, s *string, forms idForms) (*keyRecord, error) {
	ref, err := c.parseKeyRef(s, forms)
	if err != nil {
		return nil, err
	}
	if ref.alias != "" {
		a, err := c.getAlias(ctx, ref.alias)
		if err != nil {
			return nil, err
		}
		ref.keyID = a.Target
	}
	return c.getKey(ctx, ref.keyID)
}

func (c *Client) getAlias(ctx context.Context, name string) (*aliasRecord, error) {
	return loadRecord[aliasRecord](ctx, c, c.hotAliases, bucketAliases, name,
		func() error { return notFound("Alias %s is not found.", c.aliasARN(name)) }, nil)
}

// errConflict means a record changed between its read and its write.
var errConflict = errors.New("kmsadapter: record changed concurrently")

// updateKey changes a key's record: it reads and verifies the record,
// lets fn change a fresh copy, seals it, and writes it back only if the
// stored record is still the one read (retrying otherwise). No HSM call
// runs inside a store transaction: a Backend may itself use the store
// (the cluster's Catalog). A key being created is NotFoundException.
func (c *Client) updateKey(ctx context.Context, id string, fn func(r *keyRecord) error) (*keyRecord, error) {
	for attempt := 0; ; attempt++ {
		var raw []byte
		err := c.store.View(ctx, func(tx Tx) error {
			var err error
			raw, err = tx.Get(bucketKeys, id)
			return err
		})
		if errors.Is(err, ErrNoRecord) {
			return nil, notFound("Key '%s' does not exist", c.keyARN(id))
		}
		if err != nil {
			return nil, storeErr(err)
		}
		if _, err := open[keyRecord](ctx, c, bucketKeys, id, raw); err != nil {
			return nil, err
		}
		r, err := decodeFresh[keyRecord](raw)
		if err != nil {
			return nil, c.tampered(bucketKeys, id, err)
		}
		if r.State == stateCreating {
			return nil, notFound("Key '%s' does not exist", c.keyARN(id))
		}
		if err := fn(r); err != nil {
			return nil, err
		}
		sealed, err := c.sealKey(ctx, r)
		if err != nil {
			return nil, err
		}
		err = c.update(ctx, func(tx Tx) error {
			cur, err := tx.Get(bucketKeys, id)
			if err != nil && !errors.Is(err, ErrNoRecord) {
				return err
			}
			if !bytes.Equal(cur, raw) {
				return errConflict
			}
			return tx.Put(bucketKeys, id, sealed)
		})
		if errors.Is(err, errConflict) && attempt < 10 {
			continue
		}
		if err != nil {
			return nil, storeErr(err)
		}
		return r, nil
	}
}

func (c *Client) sealKey(ctx context.Context, r *keyRecord) ([]byte, error) {
	sealed, err := c.seal(ctx, bucketKeys, r.ID, r)
	if err != nil {
		return nil, backendErr(err, "sealing metadata")
	}
	return sealed, nil
}

func (c *Client) sealAlias(ctx context.Context, a *aliasRecord) ([]byte, error) {
	sealed, err := c.seal(ctx, bucketAliases, a.Name, a)
	if err != nil {
		return nil, backendErr(err, "sealing metadata")
	}
	return sealed, nil
}

// usable checks that a key's state allows cryptographic operations.
func (c *Client) usable(r *keyRecord) error {
	switch r.State {
	case types.KeyStateEnabled:
		return nil
	case types.KeyStateDisabled:
		return disabled("%s is disabled.", c.keyARN(r.ID))
	case types.KeyStatePendingDeletion:
		return invalidState("%s is pending deletion.", c.keyARN(r.ID))
	case types.KeyStatePendingImport:
		return invalidState("%s is pending import.", c.keyARN(r.ID))
	}
	return invalidState("%s is in state %s.", c.keyARN(r.ID), r.State)
}

// notPendingDeletion is the check of management operations that AWS
// refuses on a key scheduled for deletion.
func (c *Client) notPendingDeletion(r *keyRecord) error {
	if r.State == types.KeyStatePendingDeletion {
		return invalidState("%s is pending deletion.", c.keyARN(r.ID))
	}
	return nil
}

func (c *Client) metadata(r *keyRecord) *types.KeyMetadata {
	m := &types.KeyMetadata{
		KeyId:        ptr(r.ID),
		Arn:          c.arnOf(r),
		AWSAccountId: ptr(c.cfg.AccountID),
		CreationDate: ptr(r.Created),
		Enabled:      r.State == types.KeyStateEnabled,
		Description:  ptr(r.Description),
		KeyUsage:     r.Usage,
		KeyState:     r.State,
		Origin:       r.Origin,
		KeyManager:   types.KeyManagerTypeCustomer,
		//lint:ignore SA1019 AWS still returns the deprecated field, and callers may read it
		CustomerMasterKeySpec: types.CustomerMasterKeySpec(r.Spec),
		KeySpec:               r.Spec,
		EncryptionAlgorithms:  r.encryptionAlgorithms(),
		SigningAlgorithms:     r.signingAlgorithms(),
		MacAlgorithms:         r.macAlgorithms(),
		MultiRegion:           ptr(false),
	}
	if r.DeletionDate != nil {
		m.DeletionDate = ptr(*r.DeletionDate)
		m.PendingDeletionWindowInDays = ptr(r.PendingWindow)
	}
	if r.Origin == types.OriginTypeExternal {
		m.ExpirationModel = r.ExpirationModel
		if r.ValidTo != nil {
			m.ValidTo = ptr(*r.ValidTo)
		}
	}
	if r.Spec == types.KeySpecSymmetricDefault && r.current().Present {
		m.CurrentKeyMaterialId = ptr(r.current().MaterialID)
	}
	return m
}

func ptr[T any](v T) *T { return &v }

// arnOf returns a new pointer to r's key ARN.
func (c *Client) arnOf(r *keyRecord) *string {
	if r.arn != "" {
		return ptr(r.arn)
	}
	return ptr(c.keyARN(r.ID))
}

func deref[T any](p *T) T {
	if p == nil {
		var z T
		return z
	}
	return *p
}

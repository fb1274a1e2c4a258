package kmsadapter

import (
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
)

// Config is the adapter's configuration: a plain value, copied by New and
// never written to.
type Config struct {
	// Partition, Region and AccountID go into every ARN the adapter
	// returns (arn:<partition>:kms:<region>:<account>:key/<id>) and must
	// match the ARNs it is given.
	Partition string
	Region    string
	AccountID string

	// StorePath is the bbolt file New opens when it is given no Store.
	StorePath string

	// IntegrityKeyID is the HSM HMAC key that authenticates every metadata
	// record. New creates it when the store is empty.
	IntegrityKeyID hsm.KeyID

	// MaxKeys caps the number of KMS keys (LimitExceededException beyond).
	MaxKeys int
	// MaxAliasesPerKey caps the aliases of one key.
	MaxAliasesPerKey int
	// MaxOnDemandRotations caps RotateKeyOnDemand calls per key, as AWS does (25).
	MaxOnDemandRotations int

	// ImportTokenTTL is how long GetParametersForImport's wrapping key and
	// token stay valid: 24 hours at AWS.
	ImportTokenTTL time.Duration

	// OAEPHashes lists the hashes the HSMs accept for RSA-OAEP
	// (RSAES_OAEP_SHA_1/SHA_256 encryption, import wrapping). Others are
	// refused with UnsupportedOperationException before reaching the
	// HSMs. Nil asks the Backend when it can tell (an *hsm.Token's
	// profile) and otherwise lets the HSMs answer. SoftHSM 2.6 does SHA-1
	// only. Set it for a cluster: a cluster cannot tell, and today it
	// holds an unsupported mechanism against the member that refused it.
	OAEPHashes []crypto.Hash

	// MetadataCacheTTL is how long a verified key or alias record is
	// served from memory on the cryptographic hot path. Changes made
	// through this Client are seen at once; changes made by another
	// process sharing the store, and tampering, within the TTL (AWS KMS
	// too is eventually consistent about key state). 0 reads the store on
	// every call.
	MetadataCacheTTL time.Duration

	// CreateTimeout is how old an unfinished CreateKey must be before New
	// or Tick rolls it back. A creation younger than that may still be in
	// progress in another process that shares the store.
	CreateTimeout time.Duration
}

// DefaultConfig returns a configuration for account 111122223333 in
// us-east-1 of the aws partition, with AWS's default quotas.
func DefaultConfig() Config {
	return Config{
		Partition:            "aws",
		Region:               "us-east-1",
		AccountID:            "111122223333",
		IntegrityKeyID:       "hsmkms.metadata-mac",
		MaxKeys:              100000,
		MaxAliasesPerKey:     50,
		MaxOnDemandRotations: 25,
		ImportTokenTTL:       24 * time.Hour,
		CreateTimeout:        5 * time.Minute,
		MetadataCacheTTL:     time.Second,
	}
}

var (
	partitionRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
	regionRE    = regexp.MustCompile(`^[a-z]{2}(-[a-z0-9]+)+-[0-9]+$`)
	accountRE   = regexp.MustCompile(`^[0-9]{12}$`)
)

// Validate checks the configuration.
func (c Config) Validate() error {
	var errs []error
	if !partitionRE.MatchString(c.Partition) {
		errs = append(errs, fmt.Errorf("kmsadapter: partition %q is not valid", c.Partition))
	}
	if !regionRE.MatchString(c.Region) {
		errs = append(errs, fmt.Errorf("kmsadapter: region %q is not valid", c.Region))
	}
	if !accountRE.MatchString(c.AccountID) {
		errs = append(errs, fmt.Errorf("kmsadapter: account ID %q must be 12 digits", c.AccountID))
	}
	if err := c.IntegrityKeyID.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("kmsadapter: integrity key ID: %w", err))
	}
	if c.MaxKeys < 1 || c.MaxAliasesPerKey < 1 || c.MaxOnDemandRotations < 1 {
		errs = append(errs, errors.New("kmsadapter: MaxKeys, MaxAliasesPerKey and MaxOnDemandRotations must be positive"))
	}
	if c.MetadataCacheTTL < 0 {
		errs = append(errs, errors.New("kmsadapter: MetadataCacheTTL must not be negative"))
	}
	if c.ImportTokenTTL <= 0 || c.CreateTimeout <= 0 {
		errs = append(errs, errors.New("kmsadapter: ImportTokenTTL and CreateTimeout must be positive"))
	}
	return errors.Join(errs...)
}

// Clock tells the time. Deletion windows, rotation dates, import token
// and key material expiry are all read from it, so tests can advance time.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Option sets a collaborator of a Client.
type Option func(*options)

type options struct {
	clock  Clock
	logger *slog.Logger
}

// WithClock sets the clock; the default is the system clock.
func WithClock(c Clock) Option { return func(o *options) { o.clock = c } }

// WithLogger sets the logger; the default discards.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

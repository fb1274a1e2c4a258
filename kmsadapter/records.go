package kmsadapter

import (
	"bytes"
	"context"
	"crypto"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/hsmkms/hsmkms/hsm"
)

// stateCreating marks a key whose CreateKey has not finished: its HSM key
// may or may not exist. Such a key is invisible to the API; New and Tick
// roll it back once it is older than Config.CreateTimeout.
const stateCreating types.KeyState = "Creating"

// keyRecord is the metadata of one KMS key.
type keyRecord struct {
	ID            string             `json:"id"`
	State         types.KeyState     `json:"state"`
	Spec          types.KeySpec      `json:"spec"`
	Usage         types.KeyUsageType `json:"usage"`
	Origin        types.OriginType   `json:"origin"`
	Description   string             `json:"description,omitempty"`
	Created       time.Time          `json:"created"`
	DeletionDate  *time.Time         `json:"deletionDate,omitempty"`
	PendingWindow int32              `json:"pendingWindow,omitempty"`
	// Destroying: the deletion window ended and Tick began destroying the
	// key material; the deletion can no longer be cancelled.
	Destroying bool           `json:"destroying,omitempty"`
	Policy     string         `json:"policy"`
	Tags       []tagRecord    `json:"tags,omitempty"` // sorted by key
	Rotation   rotationRecord `json:"rotation"`
	// Versions[i] is key version i+1; the last one encrypts.
	Versions          []versionRecord `json:"versions"`
	OnDemandRotations int             `json:"onDemandRotations,omitempty"`
	// Import: the pending GetParametersForImport, if any.
	Import          *importRecord             `json:"import,omitempty"`
	ImportCount     int                       `json:"importCount,omitempty"`
	ExpirationModel types.ExpirationModelType `json:"expirationModel,omitempty"`
	ValidTo         *time.Time                `json:"validTo,omitempty"`
	// Orphans: HSM keys of material removed from the record whose
	// destruction is not yet confirmed; Tick destroys them.
	Orphans []hsm.KeyID `json:"orphans,omitempty"`

	arn string // the key ARN, set before a verified record is cached
}

type tagRecord struct {
	Key   string `json:"k"`
	Value string `json:"v"`
}

type rotationRecord struct {
	Enabled       bool       `json:"enabled,omitempty"`
	PeriodDays    int32      `json:"periodDays,omitempty"`
	Next          *time.Time `json:"next,omitempty"`
	OnDemandStart *time.Time `json:"onDemandStart,omitempty"`
}

type versionRecord struct {
	N          int                `json:"n"`
	Created    time.Time          `json:"created"`
	Type       types.RotationType `json:"type,omitempty"` // "" for the first version
	MaterialID string             `json:"materialId"`
	// HSMKey is the HSM key that holds the material; "" while there is
	// none. HSM key IDs are never reused: a re-import or a retried
	// rotation gets a fresh one.
	HSMKey hsm.KeyID `json:"hsmKey,omitempty"`
	// Present: the key material exists on the HSMs. False for an imported
	// key before ImportKeyMaterial and after its material was deleted or
	// expired.
	Present bool `json:"present"`
	// Check is a key check value of imported material, so a re-import can
	// be proven to be the same material without the material leaving the
	// HSM.
	Check []byte `json:"check,omitempty"`
}

type importRecord struct {
	N           int                 `json:"n"`
	WrappingKey hsm.KeyID           `json:"wrappingKey"`
	Algorithm   types.AlgorithmSpec `json:"algorithm"`
	Token       []byte              `json:"token"`
	ValidTo     time.Time           `json:"validTo"`
}

type aliasRecord struct {
	Name    string    `json:"name"`
	Target  string    `json:"target"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
}

// tombstone records an HSM key that was destroyed and must never come back.
type tombstone struct {
	HSMKey    hsm.KeyID `json:"hsmKey"`
	KeyID     string    `json:"keyId"`
	Destroyed time.Time `json:"destroyed"`
}

func (r *keyRecord) current() *versionRecord { return &r.Versions[len(r.Versions)-1] }

func (r *keyRecord) version(n uint32) *versionRecord {
	if n == 0 || int(n) > len(r.Versions) {
		return nil
	}
	return &r.Versions[n-1]
}

// A sealed record is: 0x01, a 32-byte HMAC-SHA256, the JSON payload. The
// MAC is made by the HSM key Config.IntegrityKeyID over a domain string,
// the bucket and the key (each length-prefixed) and the payload, so a
// record cannot be edited, nor moved to another key or bucket, unnoticed.
const sealVersion = 0x01

func macInput(bucket, key string, payload []byte) []byte {
	const domain = "hsmkms metadata record v1"
	b := make([]byte, 0, len(domain)+8+len(bucket)+len(key)+len(payload))
	b = append(b, domain...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(bucket)))
	b = append(b, bucket...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(key)))
	b = append(b, key...)
	return append(b, payload...)
}

func (c *Client) seal(ctx context.Context, bucket, key string, v any) ([]byte, error) {
	payload, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	mac, err := c.backend.MAC(ctx, c.cfg.IntegrityKeyID, crypto.SHA256, macInput(bucket, key, payload))
	if err != nil {
		return nil, fmt.Errorf("sealing record %s/%s: %w", bucket, key, err)
	}
	out := make([]byte, 0, 1+len(mac)+len(payload))
	out = append(out, sealVersion)
	out = append(out, mac...)
	return append(out, payload...), nil
}

// recordCache remembers records whose seal was verified, by their exact
// sealed bytes: a read that finds the same bytes again skips the HSM.
type recordCache struct {
	m sync.Map // bucket "\x00" key -> *cachedRecord
}

type cachedRecord struct {
	raw []byte
	val any // *keyRecord or *aliasRecord; never modified once cached
}

// open verifies a sealed record and decodes it into a new value made by
// mk. A record seen before with the same bytes comes from the cache.
func open[T any](ctx context.Context, c *Client, bucket, key string, raw []byte) (*T, error) {
	ck := bucket + "\x00" + key
	if v, ok := c.cache.m.Load(ck); ok {
		cr := v.(*cachedRecord)
		if bytes.Equal(cr.raw, raw) {
			if t, ok := cr.val.(*T); ok {
				return t, nil
			}
		}
	}
	if len(raw) < 1+32 || raw[0] != sealVersion {
		return nil, c.tampered(bucket, key, nil)
	}
	payload := raw[33:]
	err := c.backend.VerifyMAC(ctx, c.cfg.IntegrityKeyID, crypto.SHA256, macInput(bucket, key, payload), raw[1:33])
	if errors.Is(err, hsm.ErrVerify) {
		return nil, c.tampered(bucket, key, nil)
	}
	if err != nil {
		return nil, backendErr(err, "verifying metadata")
	}
	t := new(T)
	if err := json.Unmarshal(payload, t); err != nil {
		return nil, c.tampered(bucket, key, err)
	}
	if kr, ok := any(t).(*keyRecord); ok {
		kr.arn = c.keyARN(kr.ID)
	}
	c.cache.m.Store(ck, &cachedRecord{raw: raw, val: t})
	return t, nil
}

// decodeFresh decodes a verified record into a new value the caller may
// modify.
func decodeFresh[T any](raw []byte) (*T, error) {
	t := new(T)
	return t, json.Unmarshal(raw[33:], t)
}

// tampered reports a record that failed its check: logged, counted, and
// answered with KMSInternalException.
func (c *Client) tampered(bucket, key string, cause error) error {
	ie := &IntegrityError{Bucket: bucket, Key: key}
	c.log.Error("metadata record failed its integrity check", "bucket", bucket, "key", key, "cause", cause)
	c.tamperCount.Add(1)
	return &tamperedErr{apiErr: apiErr{internalMsg("key metadata failed its integrity check"), 500}, ie: ie}
}

// tamperedErr is a KMSInternalException for the caller that still carries
// the IntegrityError for New and VerifyStore.
type tamperedErr struct {
	apiErr
	ie *IntegrityError
}

func (e *tamperedErr) Unwrap() []error { return []error{&e.apiErr, e.ie} }

func internalMsg(m string) *types.KMSInternalException {
	return &types.KMSInternalException{Message: &m}
}

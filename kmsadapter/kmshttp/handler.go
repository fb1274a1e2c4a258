package kmshttp

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hsmkms/hsmkms/kmsadapter"
)

// Config is the handler's configuration: a plain value that New copies.
type Config struct {
	// MaxBodyBytes caps a request body; a larger one is refused with a
	// ValidationException before it is read further.
	MaxBodyBytes int64
	// KeyCacheTTL is how long the handler reuses a key's ARN and parsed
	// policy (read through the API's DescribeKey and GetKeyPolicy) before
	// reading them again. Policy and alias changes made through this
	// handler take effect at once; made elsewhere (another server sharing
	// the store), within KeyCacheTTL. 0 reads them on every request.
	KeyCacheTTL time.Duration
}

// Defaults used by DefaultConfig.
const (
	DefaultMaxBodyBytes = 1 << 20
	DefaultKeyCacheTTL  = 2 * time.Second
	DefaultMaxSkew      = 5 * time.Minute
	DefaultReplayGrace  = 2 * time.Second
)

// DefaultConfig returns a Config with every field set.
func DefaultConfig() Config {
	return Config{MaxBodyBytes: DefaultMaxBodyBytes, KeyCacheTTL: DefaultKeyCacheTTL}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	var errs []error
	if c.MaxBodyBytes < 1024 {
		errs = append(errs, fmt.Errorf("MaxBodyBytes is %d, want at least 1024", c.MaxBodyBytes))
	}
	if c.KeyCacheTTL < 0 {
		errs = append(errs, fmt.Errorf("KeyCacheTTL is %v, want 0 or more", c.KeyCacheTTL))
	}
	if len(errs) > 0 {
		return fmt.Errorf("kmshttp: config: %w", errors.Join(errs...))
	}
	return nil
}

// Option sets a collaborator of a Handler.
type Option func(*options)

type options struct {
	clock  Clock
	logger *slog.Logger
}

// WithClock sets the clock of the key cache; the default is the system clock.
func WithClock(c Clock) Option { return func(o *options) { o.clock = c } }

// WithLogger sets the logger; the default discards. Internal faults and
// recovered panics are logged with the request ID; request bodies never are.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// Handler serves the AWS KMS JSON 1.1 protocol over an API. See the
// package documentation. It is safe for concurrent use.
type Handler struct {
	api     kmsadapter.API
	auth    Authenticator
	cfg     Config
	clock   Clock
	log     *slog.Logger
	keys    keyCache
	metrics *metrics
}

// New returns a Handler that serves api to the callers auth accepts.
func New(api kmsadapter.API, auth Authenticator, cfg Config, opts ...Option) (*Handler, error) {
	if api == nil || auth == nil {
		return nil, errors.New("kmshttp: New needs an API and an Authenticator")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var o options
	for _, f := range opts {
		f(&o)
	}
	h := &Handler{api: api, auth: auth, cfg: cfg, clock: o.clock, log: o.logger, metrics: newMetrics()}
	if h.clock == nil {
		h.clock = systemClock{}
	}
	if h.log == nil {
		h.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	h.keys = keyCache{api: api, ttl: cfg.KeyCacheTTL, clock: h.clock, log: h.log, m: map[string]*keyEntry{}}
	return h, nil
}

// Collector returns the handler's Prometheus metrics for the caller to
// register: requests by operation and result code, and their latency.
func (h *Handler) Collector() prometheus.Collector { return h.metrics }

type principalKey struct{}

const targetPrefix = "TrentService."

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	reqID := newRequestID()
	w.Header().Set("X-Amzn-Requestid", reqID)
	opName := "unknown"
	var status int
	var code string
	defer func() {
		if v := recover(); v != nil {
			h.log.Error("kmshttp: panic serving a request", "request_id", reqID, "op", opName, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			e := internalErr("internal error")
			status, code = e.Status, e.Code
			writeError(w, e)
		}
		h.metrics.observe(opName, code, time.Since(start))
	}()
	out, e := h.serve(r, &opName)
	if e != nil {
		if e.Status >= 500 {
			h.log.Error("kmshttp: request failed", "request_id", reqID, "op", opName, "code", e.Code, "message", e.Message)
		}
		status, code = e.Status, e.Code
		writeError(w, e)
		return
	}
	status, code = http.StatusOK, ""
	hd := w.Header()
	hd.Set("Content-Type", "application/x-amz-json-1.1")
	hd.Set("Content-Length", strconv.Itoa(out.Len()))
	if tw, ok := w.(*responseWriter); ok {
		tw.take(out) // the in-process transport: the response reads the buffer itself
		return
	}
	w.WriteHeader(status)
	_, _ = w.Write(out.Bytes())
	putBuf(out)
}

func (h *Handler) serve(r *http.Request, opName *string) (*bytes.Buffer, *Error) {
	if r.Method != http.MethodPost {
		return nil, newErr(http.StatusBadRequest, "UnknownOperationException", "only POST is served, not %s", r.Method)
	}
	bodyBuf, e := h.readBody(r)
	if e != nil {
		return nil, e
	}
	// The body's buffer goes back to the pool once the input is decoded:
	// nothing decoded refers to it.
	released := false
	release := func() {
		if !released {
			released = true
			putBuf(bodyBuf)
		}
	}
	defer release()
	body := bodyBuf.Bytes()
	p, _ := r.Context().Value(principalKey{}).(*Principal)
	if p == nil {
		authBody := body
		if _, ours := h.auth.(*SigV4); !ours {
			authBody = bytes.Clone(body) // another Authenticator may keep it
		}
		var err error
		if p, err = h.auth.Authenticate(r, authBody); err != nil {
			return nil, toError(err)
		}
	}
	target := r.Header.Get("X-Amz-Target")
	name, ok := strings.CutPrefix(target, targetPrefix)
	spec, known := opTable[name]
	if !ok || !known {
		if target == "" {
			return nil, newErr(http.StatusBadRequest, "UnknownOperationException", "the X-Amz-Target header is missing")
		}
		return nil, newErr(http.StatusBadRequest, "UnknownOperationException", "unknown operation %q", target)
	}
	*opName = name
	in := spec.newIn()
	err := decodeInput(body, in)
	release()
	if err != nil {
		return nil, toError(err)
	}
	if m := missingRequired(in, spec.required); m != "" {
		return nil, validationErr("1 validation error detected: Value null at '%s' failed to satisfy constraint: Member must not be null", lowerFirst(m))
	}
	policy, e := validatePolicyInput(in)
	if e != nil {
		return nil, e
	}
	ctx := r.Context()
	for _, c := range spec.checks(in) {
		if c.fromBlob && c.key == nil {
			continue // not our ciphertext format: the call rejects it, or the key that served it is checked after
		}
		if e := h.authorize(ctx, p, c); e != nil {
			if c.fromBlob && e.Code == "NotFoundException" {
				continue
			}
			return nil, e
		}
	}
	if e := h.lockoutCheck(ctx, p, in, policy); e != nil {
		return nil, e
	}
	out, err := spec.call(ctx, h.api, in)
	if err != nil {
		return nil, toError(err)
	}
	if spec.after != nil {
		pre := spec.checks(in)
		for _, c := range spec.after(in, out) {
			if c.key == nil || h.alreadyAuthorized(ctx, pre, c) {
				continue
			}
			if e := h.authorize(ctx, p, c); e != nil {
				return nil, e
			}
		}
	}
	if spec.mutates {
		h.keys.purge()
	}
	buf := getBuf()
	if err := encodeOutput(buf, out); err != nil {
		putBuf(buf)
		return nil, internalErr("the response could not be encoded")
	}
	return buf, nil
}

// alreadyAuthorized reports whether c (on the key that served the call)
// names the key a check before the call already authorized.
func (h *Handler) alreadyAuthorized(ctx context.Context, pre []check, c check) bool {
	got, err := h.keys.lookup(ctx, *c.key)
	if err != nil {
		return false
	}
	for _, p := range pre {
		if p.action != c.action || p.key == nil {
			continue
		}
		if e, err := h.keys.lookup(ctx, *p.key); err == nil && e.arn == got.arn {
			return true
		}
	}
	return false
}

// readBody reads the request body into a buffer from the pool, which the
// caller puts back.
func (h *Handler) readBody(r *http.Request) (*bytes.Buffer, *Error) {
	if r.Body == nil {
		return getBuf(), nil
	}
	if r.ContentLength > h.cfg.MaxBodyBytes {
		return nil, validationErr("the request body of %d bytes exceeds the limit of %d bytes", r.ContentLength, h.cfg.MaxBodyBytes)
	}
	buf := getBuf()
	if n := r.ContentLength; n > 0 {
		// The usual case: read exactly the announced length, into room
		// made once.
		buf.Grow(int(n) + bytes.MinRead)
		if _, err := buf.ReadFrom(io.LimitReader(r.Body, n)); err != nil || int64(buf.Len()) != n {
			putBuf(buf)
			return nil, serializationErr("the request body could not be read")
		}
		return buf, nil
	}
	if _, err := buf.ReadFrom(io.LimitReader(r.Body, h.cfg.MaxBodyBytes+1)); err != nil {
		putBuf(buf)
		return nil, serializationErr("the request body could not be read")
	}
	if int64(buf.Len()) > h.cfg.MaxBodyBytes {
		putBuf(buf)
		return nil, validationErr("the request body exceeds the limit of %d bytes", h.cfg.MaxBodyBytes)
	}
	return buf, nil
}

// validatePolicyInput refuses a key policy this server could not enforce
// faithfully, before it is stored, and returns it parsed (nil when the
// request carries none).
func validatePolicyInput(in any) (*Policy, *Error) {
	var doc *string
	switch v := in.(type) {
	case *kms.CreateKeyInput:
		doc = v.Policy
	case *kms.PutKeyPolicyInput:
		doc = v.Policy
	}
	if doc == nil {
		return nil, nil
	}
	pol, err := ParsePolicy(*doc)
	if err != nil {
		return nil, newErr(http.StatusBadRequest, "MalformedPolicyDocumentException", "%v", err)
	}
	return pol, nil
}

// lockoutCheck is AWS's policy lockout safety check: unless the caller
// sets BypassPolicyLockoutSafetyCheck, CreateKey and PutKeyPolicy refuse
// pol, the request's key policy, when it would not let the caller itself
// call PutKeyPolicy on the key afterwards, so that nobody locks a key out
// of reach by mistake. A new key's ARN is unknown until it exists, so for
// CreateKey every statement's Resource is taken to name it.
func (h *Handler) lockoutCheck(ctx context.Context, p *Principal, in any, pol *Policy) *Error {
	if pol == nil {
		return nil
	}
	req := request{principal: p, action: "kms:PutKeyPolicy"}
	switch v := in.(type) {
	case *kms.CreateKeyInput:
		if v.BypassPolicyLockoutSafetyCheck {
			return nil
		}
		req.anyResource = true
	case *kms.PutKeyPolicyInput:
		if v.BypassPolicyLockoutSafetyCheck {
			return nil
		}
		k, err := h.keys.lookup(ctx, *v.KeyId)
		if err != nil {
			return toError(err)
		}
		req.resource = k.arn
	default:
		return nil
	}
	req.keys = map[string][]string{
		"kms:calleraccount":    {p.AccountID},
		"aws:principalarn":     {p.ARN},
		"aws:principalaccount": {p.AccountID},
	}
	switch pol.evaluate(&req) {
	case allowed:
		return nil
	case allowedViaAccount:
		if p.identityAllows(req.action) {
			return nil
		}
	}
	return newErr(http.StatusBadRequest, "MalformedPolicyDocumentException",
		"The new key policy will not allow you to update the key policy in the future.")
}

// authorize decides one check for p: account-level actions by p's own
// permissions; key actions by the key's policy (an explicit Deny wins; an
// Allow to p's account defers to p's own permissions).
func (h *Handler) authorize(ctx context.Context, p *Principal, c check) *Error {
	if c.key == nil {
		if p.identityAllows(c.action) {
			return nil
		}
		return accessDenied("User: %s is not authorized to perform: %s because no identity-based policy allows the %s action", p.ARN, c.action, c.action)
	}
	k, err := h.keys.lookup(ctx, *c.key)
	if err != nil {
		return toError(err)
	}
	if k.policy == nil {
		return accessDenied("User: %s is not authorized to perform: %s on resource: %s because the key policy cannot be evaluated", p.ARN, c.action, k.arn)
	}
	req := request{principal: p, action: c.action, resource: k.arn}
	if k.policy.hasConditions() { // the default key policy has none
		var ok bool
		if req.keys, ok = c.keys.build(); !ok {
			return accessDenied("User: %s is not authorized to perform: %s on resource: %s because the encryption context has keys that differ only in case, which the key policy's conditions cannot tell apart", p.ARN, c.action, k.arn)
		}
		req.keys["kms:calleraccount"] = []string{p.AccountID}
		req.keys["aws:principalarn"] = []string{p.ARN}
		req.keys["aws:principalaccount"] = []string{p.AccountID}
	}
	switch k.policy.evaluate(&req) {
	case allowed:
		bindAlias(c, k.arn)
		return nil
	case allowedViaAccount:
		if p.identityAllows(c.action) {
			bindAlias(c, k.arn)
			return nil
		}
		return accessDenied("User: %s is not authorized to perform: %s on resource: %s because no identity-based policy allows the %s action", p.ARN, c.action, k.arn, c.action)
	case explicitDeny:
		return accessDenied("User: %s is not authorized to perform: %s on resource: %s with an explicit deny in a resource-based policy", p.ARN, c.action, k.arn)
	}
	return accessDenied("User: %s is not authorized to perform: %s on resource: %s because no resource-based policy allows the %s action", p.ARN, c.action, k.arn, c.action)
}

// bindAlias makes a request that names its key by an alias name the key
// that was authorized, by writing that key's ARN into the request: the
// call would otherwise resolve the alias again, and an alias moved in
// between (by another replica, say) would run the request on a key whose
// policy was never checked. Alias operations keep their alias names.
func bindAlias(c check, keyARN string) {
	if c.fromBlob || c.key == nil || strings.HasSuffix(c.action, "Alias") {
		return
	}
	if k := *c.key; strings.HasPrefix(k, "alias/") || strings.HasPrefix(k, "arn:") && strings.Contains(k, ":alias/") {
		*c.key = keyARN
	}
}

func lowerFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToLower(s[:1]) + s[1:]
}

func writeError(w http.ResponseWriter, e *Error) {
	buf := getBuf()
	buf.WriteString(`{"__type":`)
	writeString(buf, e.Code)
	buf.WriteString(`,"message":`)
	writeString(buf, e.Message)
	buf.WriteByte('}')
	hd := w.Header()
	hd.Set("Content-Type", "application/x-amz-json-1.1")
	hd.Set("X-Amzn-Errortype", e.Code)
	hd.Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(e.Status)
	_, _ = w.Write(buf.Bytes())
	putBuf(buf)
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	const hexd = "0123456789abcdef"
	out := make([]byte, 0, 36)
	for i, c := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			out = append(out, '-')
		}
		out = append(out, hexd[c>>4], hexd[c&15])
	}
	return string(out)
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func getBuf() *bytes.Buffer { return bufPool.Get().(*bytes.Buffer) }

func putBuf(b *bytes.Buffer) {
	if b.Cap() > 64<<10 {
		return
	}
	b.Reset()
	bufPool.Put(b)
}

// keyCache resolves a KeyId (any form) to the key's ARN and parsed
// policy through the API, and keeps the answer for ttl.
type keyCache struct {
	api   kmsadapter.API
	ttl   time.Duration
	clock Clock
	log   *slog.Logger

	mu sync.Mutex
	m  map[string]*keyEntry
}

type keyEntry struct {
	arn     string
	text    string
	policy  *Policy // nil when the stored policy cannot be parsed: every request is denied
	expires time.Time
}

const maxKeyCacheEntries = 10000

func (c *keyCache) lookup(ctx context.Context, ref string) (*keyEntry, error) {
	now := c.clock.Now()
	c.mu.Lock()
	old := c.m[ref]
	c.mu.Unlock()
	if old != nil && now.Before(old.expires) {
		return old, nil
	}
	d, err := c.api.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: &ref})
	if err != nil {
		return nil, err
	}
	id := d.KeyMetadata.KeyId
	gp, err := c.api.GetKeyPolicy(ctx, &kms.GetKeyPolicyInput{KeyId: id})
	if err != nil {
		return nil, err
	}
	e := &keyEntry{arn: deref(d.KeyMetadata.Arn), text: deref(gp.Policy), expires: now.Add(c.ttl)}
	if old != nil && old.text == e.text {
		e.policy = old.policy
	} else if e.policy, err = ParsePolicy(e.text); err != nil {
		c.log.Warn("kmshttp: a stored key policy cannot be parsed; every request on the key is denied", "key", e.arn, "error", err)
	}
	if c.ttl > 0 {
		c.mu.Lock()
		if len(c.m) >= maxKeyCacheEntries {
			clear(c.m)
		}
		c.m[ref] = e
		c.mu.Unlock()
	}
	return e, nil
}

func (c *keyCache) purge() {
	c.mu.Lock()
	clear(c.m)
	c.mu.Unlock()
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

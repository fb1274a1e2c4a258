package kmshttp

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// Secret is a secret access key. It never prints its value (String,
// GoString, %v, %+v, JSON).
type Secret struct{ s string }

// NewSecret wraps a secret access key.
func NewSecret(s string) Secret { return Secret{s} }

// Reveal returns the secret.
func (s Secret) Reveal() string { return s.s }

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s.s == "" }

func (s Secret) String() string               { return "[secret]" }
func (s Secret) GoString() string             { return "kmshttp.Secret{[secret]}" }
func (s Secret) Format(f fmt.State, _ rune)   { _, _ = f.Write([]byte("[secret]")) }
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"[secret]"`), nil }
func (s Secret) MarshalText() ([]byte, error) { return []byte("[secret]"), nil }

// Credential is one caller the server knows: an access key pair and the
// IAM principal it stands for.
type Credential struct {
	AccessKeyID     string
	SecretAccessKey Secret
	// PrincipalARN is the caller's identity as key policies name it, e.g.
	// arn:aws:iam::111122223333:user/alice. Its account field is the
	// caller's account (kms:CallerAccount).
	PrincipalARN string
	// Actions stands in for the principal's IAM policy: the actions
	// ("kms:Encrypt", "kms:*", "kms:Generate*") the principal may perform
	// where a key policy delegates to its account, and the account-level
	// operations CreateKey, ListKeys, ListAliases and GenerateRandom,
	// which have no key policy. Nil allows every action; an empty, non-nil
	// slice allows none.
	Actions []string
}

var (
	accessKeyRE    = regexp.MustCompile(`^[A-Z0-9]{16,128}$`)
	principalARNRE = regexp.MustCompile(`^arn:[a-z][a-z0-9-]*:(iam|sts)::([0-9]{12}):[A-Za-z0-9+=,.@_/-]+$`)
)

// Validate checks the credential.
func (c Credential) Validate() error {
	var errs []error
	if !accessKeyRE.MatchString(c.AccessKeyID) {
		errs = append(errs, fmt.Errorf("access key ID %q must be 16 to 128 upper-case letters and digits", c.AccessKeyID))
	}
	if len(c.SecretAccessKey.s) < 16 {
		errs = append(errs, fmt.Errorf("access key %s: the secret access key must be at least 16 characters", c.AccessKeyID))
	}
	if !principalARNRE.MatchString(c.PrincipalARN) {
		errs = append(errs, fmt.Errorf("access key %s: principal ARN %q is not an IAM ARN (arn:aws:iam::<12-digit account>:user/<name>)", c.AccessKeyID, c.PrincipalARN))
	}
	for _, a := range c.Actions {
		if !strings.HasPrefix(strings.ToLower(a), "kms:") && a != "*" {
			errs = append(errs, fmt.Errorf("access key %s: action %q does not start with kms:", c.AccessKeyID, a))
		}
	}
	return errors.Join(errs...)
}

// Principal is an authenticated caller.
type Principal struct {
	ARN         string
	AccountID   string
	AccessKeyID string
	// Actions: see Credential.Actions.
	Actions []string
}

// identityAllows reports whether the principal's own permissions
// (Credential.Actions) include action.
func (p *Principal) identityAllows(action string) bool {
	if p.Actions == nil {
		return true
	}
	for _, a := range p.Actions {
		if globMatch(strings.ToLower(a), strings.ToLower(action)) {
			return true
		}
	}
	return false
}

// accountOf returns the account field of an ARN (the fifth, between the
// fourth and fifth colons), or "" when arn has fewer than six fields.
func accountOf(arn string) string {
	start, field := 0, 0
	for i := 0; i < len(arn); i++ {
		if arn[i] != ':' {
			continue
		}
		field++
		switch field {
		case 4:
			start = i + 1
		case 5:
			return arn[start:i]
		}
	}
	return ""
}

// Authenticator says who sent a request. body is the whole request body.
// A refused request returns an *Error.
type Authenticator interface {
	Authenticate(r *http.Request, body []byte) (*Principal, error)
}

// Clock tells the time.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// SigV4Config configures SigV4 verification.
type SigV4Config struct {
	// Region is the region requests must be signed for.
	Region string
	// Credentials are the callers.
	Credentials []Credential
	// MaxSkew is how far a request's X-Amz-Date may be from the server's
	// clock, either way: 5 minutes at AWS.
	MaxSkew time.Duration
	// ReplayGrace is how long after a signature is first seen the same
	// signature is still accepted. A request seen again later is a
	// replay, and refused, for as long as its signature is valid. Clients
	// built on botocore (the AWS CLI, boto3) sign no nonce: the same call
	// made twice within one second, or retried within it, carries the same
	// signature, and the grace lets it through. aws-sdk-go-v2 signs an
	// invocation ID and attempt number, so its requests never repeat; with
	// only such clients, 0 refuses every repeat.
	ReplayGrace time.Duration
}

// DefaultSigV4Config returns a configuration with AWS's 5-minute skew and
// a 2-second replay grace; the caller sets Region and Credentials.
func DefaultSigV4Config() SigV4Config {
	return SigV4Config{MaxSkew: DefaultMaxSkew, ReplayGrace: DefaultReplayGrace}
}

// Validate checks the configuration.
func (c SigV4Config) Validate() error {
	var errs []error
	if c.Region == "" {
		errs = append(errs, errors.New("no region"))
	}
	if len(c.Credentials) == 0 {
		errs = append(errs, errors.New("no credentials"))
	}
	seen := map[string]bool{}
	for _, cr := range c.Credentials {
		if err := cr.Validate(); err != nil {
			errs = append(errs, err)
		}
		if seen[cr.AccessKeyID] {
			errs = append(errs, fmt.Errorf("access key ID %s is used twice", cr.AccessKeyID))
		}
		seen[cr.AccessKeyID] = true
	}
	if c.MaxSkew <= 0 {
		errs = append(errs, fmt.Errorf("MaxSkew is %v, want more than 0", c.MaxSkew))
	}
	if c.ReplayGrace < 0 || c.ReplayGrace > c.MaxSkew {
		errs = append(errs, fmt.Errorf("ReplayGrace is %v, want 0 to MaxSkew", c.ReplayGrace))
	}
	if len(errs) > 0 {
		return fmt.Errorf("kmshttp: sigv4 config: %w", errors.Join(errs...))
	}
	return nil
}

// SigV4 authenticates requests signed with AWS Signature Version 4 for
// the service "kms", as every AWS SDK and the AWS CLI sign them. The
// expected signature is computed by aws-sdk-go-v2's own v4 signer over
// the headers the caller says it signed and the SHA-256 of the body as
// received. A request is accepted within MaxSkew of its X-Amz-Date; a
// signature seen more than ReplayGrace before is refused (replay
// protection).
//
// Headers that aws-sdk-go-v2's signer never signs (User-Agent, Expect,
// Transfer-Encoding, X-Amzn-Trace-Id) cannot be verified, and a request
// that signs one is refused; no AWS SDK signs them. Session tokens
// (temporary credentials) and presigned URLs are not supported.
//
// SigV4 is safe for concurrent use.
type SigV4 struct {
	cfg    SigV4Config
	byKey  map[string]*credEntry
	clock  Clock
	signer *v4.Signer
	seen   replayCache
}

// credEntry is a configured credential and the Principal every request
// signed with it gets (returned as a copy).
type credEntry struct {
	Credential
	principal Principal
}

// SigV4Option sets a collaborator of SigV4.
type SigV4Option func(*SigV4)

// WithSigV4Clock sets the clock the skew window is measured on.
func WithSigV4Clock(c Clock) SigV4Option { return func(s *SigV4) { s.clock = c } }

// NewSigV4 returns a SigV4 authenticator.
func NewSigV4(cfg SigV4Config, opts ...SigV4Option) (*SigV4, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &SigV4{cfg: cfg, byKey: map[string]*credEntry{}, clock: systemClock{}}
	for _, o := range opts {
		o(s)
	}
	for i := range cfg.Credentials {
		c := cfg.Credentials[i]
		c.Actions = append([]string(nil), c.Actions...)
		if cfg.Credentials[i].Actions == nil {
			c.Actions = nil
		}
		s.byKey[c.AccessKeyID] = &credEntry{Credential: c, principal: Principal{
			ARN: c.PrincipalARN, AccountID: accountOf(c.PrincipalARN), AccessKeyID: c.AccessKeyID, Actions: c.Actions,
		}}
	}
	s.signer = v4.NewSigner(func(o *v4.SignerOptions) { o.DisableURIPathEscaping = false })
	s.seen.init(2*cfg.MaxSkew, cfg.ReplayGrace)
	return s, nil
}

const (
	amzDateFormat   = "20060102T150405Z"
	sigAlgorithm    = "AWS4-HMAC-SHA256"
	badSignatureMsg = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
)

func incomplete(format string, a ...any) *Error {
	return newErr(http.StatusBadRequest, CodeIncompleteSignature, format, a...)
}

func invalidSig(format string, a ...any) *Error {
	return newErr(http.StatusBadRequest, CodeInvalidSignature, format, a...)
}

type authHeader struct {
	accessKey, date, region, service string
	signedHeaders                    string
	signature                        string
}

func parseAuthorization(h string) (authHeader, *Error) {
	var a authHeader
	alg, rest, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || alg != sigAlgorithm {
		return a, incomplete("Authorization header must use the %s algorithm: 'Credential=..., SignedHeaders=..., Signature=...'", sigAlgorithm)
	}
	var cred string
	for part := range strings.SplitSeq(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return a, incomplete("Authorization header has a malformed element %q", part)
		}
		switch k {
		case "Credential":
			cred = v
		case "SignedHeaders":
			a.signedHeaders = v
		case "Signature":
			a.signature = v
		}
	}
	var missing []string
	if cred == "" {
		missing = append(missing, "Credential")
	}
	if a.signedHeaders == "" {
		missing = append(missing, "SignedHeaders")
	}
	if a.signature == "" {
		missing = append(missing, "Signature")
	}
	if len(missing) > 0 {
		return a, incomplete("Authorization header requires %s parameter(s).", strings.Join(missing, ", "))
	}
	scope := strings.Split(cred, "/")
	if len(scope) != 5 || scope[4] != "aws4_request" {
		return a, incomplete("Credential must have the form <access key>/<date>/<region>/<service>/aws4_request")
	}
	a.accessKey, a.date, a.region, a.service = scope[0], scope[1], scope[2], scope[3]
	return a, nil
}

// Authenticate implements Authenticator.
func (s *SigV4) Authenticate(r *http.Request, body []byte) (*Principal, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		if r.URL.Query().Get("X-Amz-Signature") != "" {
			return nil, incomplete("presigned requests are not supported; sign the Authorization header")
		}
		return nil, newErr(http.StatusBadRequest, CodeMissingAuthenticationToken, "Missing Authentication Token")
	}
	a, e := parseAuthorization(h)
	if e != nil {
		return nil, e
	}
	amzDate := r.Header.Get("X-Amz-Date")
	if amzDate == "" {
		return nil, incomplete("Authorization header requires existence of a 'X-Amz-Date' header.")
	}
	t, err := time.Parse(amzDateFormat, amzDate)
	if err != nil {
		return nil, incomplete("X-Amz-Date %q is not in the form %s", amzDate, amzDateFormat)
	}
	cred := s.byKey[a.accessKey]
	if cred == nil {
		return nil, newErr(http.StatusBadRequest, CodeUnrecognizedClient, "The security token included in the request is invalid.")
	}
	if r.Header.Get("X-Amz-Security-Token") != "" {
		return nil, newErr(http.StatusBadRequest, CodeUnrecognizedClient, "The security token included in the request is invalid: temporary credentials are not supported.")
	}
	var day [8]byte
	if a.date != string(t.AppendFormat(day[:0], "20060102")) {
		return nil, invalidSig("Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '%s' != '%s', from '%s'.", a.date, t.Format("20060102"), amzDate)
	}
	if a.service != "kms" {
		return nil, invalidSig("Credential should be scoped to correct service: 'kms'.")
	}
	if a.region != s.cfg.Region {
		return nil, invalidSig("Credential should be scoped to a valid region, not '%s'. ", a.region)
	}
	now := s.clock.Now().UTC()
	if t.Before(now.Add(-s.cfg.MaxSkew)) {
		return nil, invalidSig("Signature expired: %s is now earlier than %s (%s - %v.)",
			amzDate, now.Add(-s.cfg.MaxSkew).Format(amzDateFormat), now.Format(amzDateFormat), s.cfg.MaxSkew)
	}
	if t.After(now.Add(s.cfg.MaxSkew)) {
		return nil, invalidSig("Signature not yet current: %s is still later than %s (%s + %v.)",
			amzDate, now.Add(s.cfg.MaxSkew).Format(amzDateFormat), now.Format(amzDateFormat), s.cfg.MaxSkew)
	}
	sum := sha256.Sum256(body)
	var payloadHash [2 * sha256.Size]byte
	hex.Encode(payloadHash[:], sum[:])
	if ch := r.Header.Get("X-Amz-Content-Sha256"); ch != "" && ch != string(payloadHash[:]) && ch != "UNSIGNED-PAYLOAD" {
		return nil, invalidSig("The provided 'x-amz-content-sha256' header does not match what was computed.")
	}
	var want [sha256.Size]byte
	if e := s.expected(&want, r, a, cred, string(payloadHash[:]), t, len(body)); e != nil {
		return nil, e
	}
	var got [sha256.Size]byte
	if len(a.signature) != 2*sha256.Size {
		return nil, invalidSig(badSignatureMsg)
	}
	if _, err := hex.Decode(got[:], []byte(a.signature)); err != nil || subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
		return nil, invalidSig(badSignatureMsg)
	}
	if !s.seen.add(got[:], now) {
		return nil, invalidSig("The request signature has been used before: a signed request is not accepted again %v after it was first seen.", s.cfg.ReplayGrace)
	}
	p := cred.principal
	return &p, nil
}

// expected signs a copy of r that carries only the headers the caller
// signed, with the SDK's signer, and sets want to that signature.
func (s *SigV4) expected(want *[sha256.Size]byte, r *http.Request, a authHeader, cred *credEntry, payloadHash string, t time.Time, bodyLen int) *Error {
	host := r.Host
	if host == "" {
		host = r.URL.Host
	}
	u := &url.URL{Scheme: "http", Host: host, Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery}
	if r.TLS != nil {
		u.Scheme = "https"
	}
	if u.Path == "" {
		u.Path = "/"
	}
	vr := &http.Request{Method: r.Method, URL: u, Host: host, Header: http.Header{}}
	names := strings.Split(a.signedHeaders, ";")
	hasHost, hasDate, hasTarget := false, false, false
	for _, n := range names {
		switch n {
		case "host":
			hasHost = true
		case "x-amz-target":
			hasTarget = true
			vr.Header[http.CanonicalHeaderKey(n)] = r.Header.Values(n)
		case "content-length":
			vr.ContentLength = r.ContentLength
			if vr.ContentLength < 0 {
				vr.ContentLength = int64(bodyLen)
			}
		default:
			if n == "x-amz-date" {
				hasDate = true
			}
			vr.Header[http.CanonicalHeaderKey(n)] = r.Header.Values(n)
		}
	}
	if !hasHost || !hasDate || !hasTarget && r.Header.Get("X-Amz-Target") != "" {
		// x-amz-target names the operation: unsigned, a captured request
		// could be replayed as another operation on the same body. (A
		// request without one is no operation at all, refused as such.)
		return invalidSig("SignedHeaders must include host, x-amz-date and x-amz-target.")
	}
	creds := aws.Credentials{AccessKeyID: cred.AccessKeyID, SecretAccessKey: cred.SecretAccessKey.s}
	if err := s.signer.SignHTTP(context.Background(), creds, vr, payloadHash, "kms", s.cfg.Region, t); err != nil {
		return internalErr("signature verification failed")
	}
	auth := vr.Header.Get("Authorization")
	_, sig, _ := strings.Cut(auth, "Signature=")
	if !strings.Contains(auth, "SignedHeaders="+a.signedHeaders+",") {
		return invalidSig("%s SignedHeaders lists a header that is never signed (such as user-agent), or repeats one.", badSignatureMsg)
	}
	if len(sig) != 2*sha256.Size {
		return internalErr("signature verification failed")
	}
	if _, err := hex.Decode(want[:], []byte(sig)); err != nil {
		return internalErr("signature verification failed")
	}
	return nil
}

// replayCache remembers signatures for at least ttl: two generations of
// sharded maps, rotated every ttl, so a signature stays at least ttl and
// at most 2*ttl. Memory is proportional to the requests of 2*ttl: about
// 40 bytes each, some 100 MB at 5,000 requests per second with the
// default 5-minute skew (ttl 10 minutes).
type replayCache struct {
	ttl, grace time.Duration
	shards     [32]replayShard
}

// replayShard maps the first half of each signature (collisions are as
// unlikely as forging one) to when it was first seen, in Unix nanoseconds.
type replayShard struct {
	mu        sync.Mutex
	cur, prev map[[16]byte]int64
	rotated   time.Time
}

func (c *replayCache) init(ttl, grace time.Duration) {
	c.ttl, c.grace = ttl, grace
	for i := range c.shards {
		c.shards[i].cur = map[[16]byte]int64{}
	}
}

// add records sig and reports whether it may be served: it is new, or was
// first seen no more than the grace before now.
func (c *replayCache) add(sig []byte, now time.Time) bool {
	var k [16]byte
	copy(k[:], sig)
	sh := &c.shards[k[0]%byte(len(c.shards))]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.rotated.IsZero() {
		sh.rotated = now
	}
	if d := now.Sub(sh.rotated); d >= c.ttl {
		if d >= 2*c.ttl {
			sh.prev = nil
		} else {
			sh.prev = sh.cur
		}
		sh.cur = map[[16]byte]int64{}
		sh.rotated = now
	}
	first, ok := sh.cur[k]
	if !ok {
		first, ok = sh.prev[k]
	}
	if ok {
		return c.grace > 0 && now.UnixNano()-first <= int64(c.grace)
	}
	sh.cur[k] = now.UnixNano()
	return true
}

package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
)

// Role says when a member takes traffic.
type Role int

const (
	// Active members serve calls.
	Active Role = iota
	// Standby members receive every key but serve calls only when no
	// active member that holds the key is healthy.
	Standby
)

func (r Role) String() string {
	switch r {
	case Active:
		return "active"
	case Standby:
		return "standby"
	}
	return fmt.Sprintf("Role(%d)", int(r))
}

// MemberConfig describes one member: one PKCS#11 token.
type MemberConfig struct {
	// Name identifies the member in errors, events, metrics and logs. Unique.
	Name string
	// Token says how to open the member's token.
	Token hsm.Config
	// SOPIN is the token's security officer PIN. It is used only in
	// membership ceremonies (Bootstrap, Join), never on the data path.
	SOPIN hsm.PIN
	// Role: Active (the zero value) or Standby.
	Role Role
	// Weight scales the member's share of the load; 0 means 1.
	Weight int
	// Replicas declares a member that replicates by itself: several HSMs
	// behind one PKCS#11 module, such as an AWS CloudHSM cluster, which
	// copies every key to its HSMs before the call returns. A key on such
	// a member counts Replicas times toward the write quorum. 0 means 1.
	Replicas int
}

func (m MemberConfig) replicas() int { return max(m.Replicas, 1) }

// Config is the cluster's configuration: a plain value that New copies
// and never writes into.
type Config struct {
	Members []MemberConfig
	// WriteQuorum is how many members must hold a new key before creation
	// succeeds. 0 means the default: every member that is healthy when the
	// call starts, and at least 2 when the cluster has 2 or more members.
	// A member with Replicas counts that many times.
	WriteQuorum int
	// ProbeInterval is how often every member is probed.
	ProbeInterval time.Duration
	// ProbeTimeout bounds one probe.
	ProbeTimeout time.Duration
	// AntiEntropyInterval is how often every healthy member is compared
	// with the catalog and repaired; 0 turns the periodic pass off.
	AntiEntropyInterval time.Duration
	// DownAfter is how many consecutive member faults take a member down;
	// fewer make it degraded. A timeout takes it down at once.
	DownAfter int
	// BreakerFailures is how many consecutive member faults open a
	// member's circuit breaker; BreakerTimeout how long it stays open
	// before letting a trial call through. A successful re-sync closes it.
	BreakerFailures int
	BreakerTimeout  time.Duration
	// RetryBackoff is the first pause before retrying a member that was
	// already tried in the same call; it doubles up to MaxRetryBackoff.
	// A retry on a member not yet tried is immediate.
	RetryBackoff    time.Duration
	MaxRetryBackoff time.Duration
	// HedgeDelay, when more than 0, sends an idempotent call (everything
	// but key creation, import and destruction) to a second member if the
	// first has not answered after this long; the first answer wins.
	HedgeDelay time.Duration
	// LatencyAware weighs each member's recent latency (an exponentially
	// weighted moving average) into routing, so a slow member gets few
	// calls.
	LatencyAware bool
	// AutoJoin lets the cluster run the join ceremony (see Join) by itself
	// when a probe finds a member without a key-encryption key, e.g. after
	// the HSM was replaced, and finish the exchange of key-encryption keys
	// with a member that was away while another joined. Off by default:
	// the ceremony marks keys trusted with SO logins, which pause the
	// members' traffic while it runs.
	AutoJoin bool
}

// Defaults used by DefaultConfig.
const (
	DefaultProbeInterval       = 2 * time.Second
	DefaultProbeTimeout        = 2 * time.Second
	DefaultAntiEntropyInterval = 5 * time.Minute
	DefaultDownAfter           = 2
	DefaultBreakerFailures     = 5
	DefaultBreakerTimeout      = 5 * time.Second
	DefaultRetryBackoff        = time.Millisecond
	DefaultMaxRetryBackoff     = 50 * time.Millisecond
)

// DefaultConfig returns a Config with every tunable set; the caller adds
// the members.
func DefaultConfig() Config {
	return Config{
		ProbeInterval:       DefaultProbeInterval,
		ProbeTimeout:        DefaultProbeTimeout,
		AntiEntropyInterval: DefaultAntiEntropyInterval,
		DownAfter:           DefaultDownAfter,
		BreakerFailures:     DefaultBreakerFailures,
		BreakerTimeout:      DefaultBreakerTimeout,
		RetryBackoff:        DefaultRetryBackoff,
		MaxRetryBackoff:     DefaultMaxRetryBackoff,
		LatencyAware:        true,
	}
}

// Validate reports every problem with the configuration at once.
func (c Config) Validate() error {
	var errs []error
	if len(c.Members) == 0 {
		errs = append(errs, errors.New("no members"))
	}
	names := map[string]bool{}
	copies := 0
	for i, m := range c.Members {
		switch {
		case m.Name == "":
			errs = append(errs, fmt.Errorf("member %d has no name", i))
		case names[m.Name]:
			errs = append(errs, fmt.Errorf("member name %q is used twice", m.Name))
		}
		names[m.Name] = true
		if err := m.Token.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("member %q: %w", m.Name, err))
		}
		if m.Role != Active && m.Role != Standby {
			errs = append(errs, fmt.Errorf("member %q: unknown role %d", m.Name, int(m.Role)))
		}
		if m.Weight < 0 || m.Replicas < 0 {
			errs = append(errs, fmt.Errorf("member %q: weight %d or replicas %d is negative", m.Name, m.Weight, m.Replicas))
		}
		copies += m.replicas()
	}
	if c.WriteQuorum < 0 || c.WriteQuorum > copies {
		errs = append(errs, fmt.Errorf("WriteQuorum is %d, want 0 to %d", c.WriteQuorum, copies))
	}
	positive := []struct {
		name string
		d    time.Duration
	}{
		{"ProbeInterval", c.ProbeInterval}, {"ProbeTimeout", c.ProbeTimeout},
		{"BreakerTimeout", c.BreakerTimeout}, {"RetryBackoff", c.RetryBackoff}, {"MaxRetryBackoff", c.MaxRetryBackoff},
	}
	for _, p := range positive {
		if p.d <= 0 {
			errs = append(errs, fmt.Errorf("%s is %v, want more than 0", p.name, p.d))
		}
	}
	if c.AntiEntropyInterval < 0 || c.HedgeDelay < 0 {
		errs = append(errs, errors.New("AntiEntropyInterval and HedgeDelay must not be negative"))
	}
	if c.DownAfter < 1 || c.BreakerFailures < 1 {
		errs = append(errs, fmt.Errorf("DownAfter (%d) and BreakerFailures (%d) must be at least 1", c.DownAfter, c.BreakerFailures))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: cluster config: %w", hsm.ErrInvalidInput, errors.Join(errs...))
}

// An Option sets a collaborator of a Cluster.
type Option func(*options)

type options struct {
	logger  *slog.Logger
	clock   Clock
	events  chan<- Event
	catalog Catalog
	tokOpts map[string][]hsm.Option
}

// WithLogger sets the logger for state changes, re-syncs and ceremonies.
// Nil discards. Log lines never contain PINs or key material.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithClock sets the clock that drives probes, anti-entropy and hedging.
func WithClock(c Clock) Option { return func(o *options) { o.clock = c } }

// WithEvents sends every member state change to ch. Sends never block: an
// event that finds ch full is dropped and counted in the metrics.
func WithEvents(ch chan<- Event) Option { return func(o *options) { o.events = ch } }

// WithCatalog sets the catalog of the keys the cluster must hold. The
// default is an in-memory catalog, which forgets everything on Close; use
// OpenBoltCatalog for one that lasts.
func WithCatalog(c Catalog) Option { return func(o *options) { o.catalog = c } }

// WithTokenOptions passes options to hsm.Open for the named member, e.g.
// hsm.WithInterceptor for fault injection or tracing.
func WithTokenOptions(member string, opt ...hsm.Option) Option {
	return func(o *options) {
		if o.tokOpts == nil {
			o.tokOpts = map[string][]hsm.Option{}
		}
		o.tokOpts[member] = append(o.tokOpts[member], opt...)
	}
}

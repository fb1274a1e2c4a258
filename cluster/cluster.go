package cluster

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
)

// Cluster is N PKCS#11 tokens used as one. Its data-plane methods have the
// signatures of *hsm.Token's, so an interface a consumer declares for
// either is satisfied by both. It is safe for concurrent use.
type Cluster struct {
	cfg     Config // a copy; never the caller's
	log     *slog.Logger
	clock   Clock
	events  chan<- Event
	evq     eventQueue
	catalog Catalog
	members []*member
	byName  map[string]*member
	metrics *metrics

	// closeMu is held for reading by every public call and for writing
	// by Close, which so waits for the calls in flight.
	closeMu sync.RWMutex
	closed  bool
	stop    chan struct{}
	loops   sync.WaitGroup

	keyLocks   [64]sync.Mutex // per key ID (hashed): create, destroy and copy of one key never interleave
	seed       maphash.Seed
	ceremonyMu sync.Mutex // one membership ceremony at a time
}

// New opens every member's token, brings each up to date with the
// catalog, and starts probing. A member that cannot be opened, or has not
// joined, starts down; New fails only on a bad configuration. A new
// cluster needs Bootstrap once before it serves.
func New(ctx context.Context, cfg Config, opt ...Option) (*Cluster, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Members = slices.Clone(cfg.Members)
	var o options
	for _, f := range opt {
		f(&o)
	}
	c := &Cluster{
		cfg:     cfg,
		log:     o.logger,
		clock:   o.clock,
		events:  o.events,
		catalog: o.catalog,
		byName:  map[string]*member{},
		stop:    make(chan struct{}),
		seed:    maphash.MakeSeed(),
	}
	if c.log == nil {
		c.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.clock == nil {
		c.clock = systemClock{}
	}
	if c.catalog == nil {
		c.catalog = &MemoryCatalog{}
	}
	for i, mc := range cfg.Members {
		w := float64(mc.Weight)
		if w == 0 {
			w = 1
		}
		m := &member{
			name: mc.Name, idx: i, cfg: mc, weight: w, opts: o.tokOpts[mc.Name],
			state: Down, reason: "not opened",
			holds: map[hsm.KeyID]bool{}, suspect: map[hsm.KeyID]suspectMark{}, verified: map[hsm.KeyID]bool{},
			seen: map[hsm.KeyID]sighting{},
		}
		m.br.Store(c.newBreaker(m))
		c.members = append(c.members, m)
		c.byName[mc.Name] = m
	}
	c.metrics = newMetrics(c)
	c.startEvents()
	var wg sync.WaitGroup
	for _, m := range c.members {
		wg.Go(func() { c.recover(ctx, m, false) })
	}
	wg.Wait()
	// Members re-synced side by side at start could not copy from one
	// another; a second pass fills what the first could not.
	for _, m := range c.members {
		if st, _, _ := m.snapshot(); st == Healthy && m.missed.Load() {
			if _, err := c.repair(ctx, m); err != nil {
				c.log.Warn("cluster: second re-sync at start failed", "member", m.name, "err", err)
			}
		}
	}
	probe := c.clock.NewTicker(c.cfg.ProbeInterval)
	var antiEntropy Ticker
	if c.cfg.AntiEntropyInterval > 0 {
		antiEntropy = c.clock.NewTicker(c.cfg.AntiEntropyInterval)
	}
	c.loops.Go(func() { c.loop(probe, antiEntropy) })
	return c, nil
}

// Close stops probing, waits for calls in flight and closes every token.
// It is idempotent; calls after it return ErrClosed.
func (c *Cluster) Close() error {
	c.closeMu.Lock()
	if c.closed {
		c.closeMu.Unlock()
		return nil
	}
	c.closed = true
	close(c.stop)
	c.closeMu.Unlock()
	c.loops.Wait()
	var errs []error
	for _, m := range c.members {
		m.mu.Lock()
		tok := m.tok
		m.tok = nil
		m.mu.Unlock()
		if tok != nil {
			errs = append(errs, tok.Close())
		}
	}
	return joinErrs(errs)
}

func joinErrs(errs []error) error {
	var out []error
	for _, e := range errs {
		if e != nil {
			out = append(out, e)
		}
	}
	switch len(out) {
	case 0:
		return nil
	case 1:
		return out[0]
	}
	return &multi{out}
}

type multi struct{ errs []error }

func (m *multi) Error() string {
	s := m.errs[0].Error()
	for _, e := range m.errs[1:] {
		s += "; " + e.Error()
	}
	return s
}
func (m *multi) Unwrap() []error { return m.errs }

// enter marks a public call in flight; it fails once Close has begun.
func (c *Cluster) enter() error {
	c.closeMu.RLock()
	if c.closed {
		c.closeMu.RUnlock()
		return ErrClosed
	}
	return nil
}

func (c *Cluster) leave() { c.closeMu.RUnlock() }

// lockKey serializes creation, destruction and copying of one key ID.
func (c *Cluster) lockKey(id hsm.KeyID) func() {
	mu := &c.keyLocks[maphash.String(c.seed, string(id))%uint64(len(c.keyLocks))]
	mu.Lock()
	return mu.Unlock
}

func (c *Cluster) rand() float64 { return rand.Float64() }

// loop probes every member each ProbeInterval and runs anti-entropy each
// AntiEntropyInterval, on the cluster's clock.
// The tickers are made by the caller, before the goroutine starts, so that
// a clock advanced right after New already moves them.
func (c *Cluster) loop(probe, antiEntropy Ticker) {
	defer probe.Stop()
	var ae <-chan time.Time
	if antiEntropy != nil {
		defer antiEntropy.Stop()
		ae = antiEntropy.C()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-c.stop
		cancel()
	}()
	for {
		select {
		case <-c.stop:
			return
		case <-probe.C():
			c.probeAll(ctx)
		case <-ae:
			_, _ = c.antiEntropy(ctx)
		}
	}
}

// CheckHealth probes every member now, as the periodic probe does, and
// returns when each probe (and any re-sync it started) is done.
func (c *Cluster) CheckHealth(ctx context.Context) error {
	if err := c.enter(); err != nil {
		return err
	}
	defer c.leave()
	c.probeAll(ctx)
	return nil
}

func (c *Cluster) probeAll(ctx context.Context) {
	var wg sync.WaitGroup
	for _, m := range c.members {
		wg.Go(func() { c.probe(ctx, m) })
	}
	wg.Wait()
}

// probe checks one member: a healthy or degraded member that answers
// stays (or becomes) healthy; one that fails is marked; a down member that
// answers is re-synced before it takes traffic.
func (c *Cluster) probe(ctx context.Context, m *member) {
	st, tok, _ := m.snapshot()
	if m.isRemoved() || st == Syncing {
		return
	}
	if st == Down || tok == nil {
		c.recover(ctx, m, false)
		return
	}
	pctx, cancel := context.WithTimeout(ctx, c.cfg.ProbeTimeout)
	defer cancel()
	start := time.Now()
	err := tok.Probe(pctx)
	switch hsm.Classify(err) {
	case hsm.ClassNone:
		m.observeLatency(time.Since(start))
		m.mu.RLock()
		serial := m.serial
		m.mu.RUnlock()
		if info := tok.Info(); info.Serial != "" && serial != "" && info.Serial != serial {
			// A replaced HSM behind the same label: its keys are gone.
			c.setState(m, Down, "token replaced", nil)
			c.recover(ctx, m, false)
			return
		}
		m.fails.Store(0)
		c.casState(m, Degraded, Healthy, "probe succeeded")
	case hsm.ClassContext:
		if ctx.Err() != nil {
			return // the cluster is closing: not the member's fault
		}
		// Our own probe deadline passed: a stalled member.
		err = fmt.Errorf("%w: probe: %w", hsm.ErrTimeout, err)
		fallthrough
	default:
		c.metrics.probeFailures.WithLabelValues(m.name).Inc()
		m.fails.Add(int64(c.cfg.DownAfter)) // a failed probe takes the member down
		c.setState(m, Down, "probe failed", err)
	}
}

// recover opens a member's token if needed and re-syncs it; on success
// the member becomes healthy and its breaker is reset. A healthy member
// is left alone, and a member that has not joined is only probed, unless
// force (after a ceremony) or AutoJoin.
func (c *Cluster) recover(ctx context.Context, m *member, force bool) {
	m.recoverMu.Lock()
	defer m.recoverMu.Unlock()
	m.mu.RLock()
	tok, removed, st, notJoined := m.tok, m.removed, m.state, m.notJoined
	m.mu.RUnlock()
	if removed || (!force && st == Healthy) {
		return
	}
	if tok == nil {
		t, err := hsm.Open(ctx, m.cfg.Token, m.opts...)
		if err != nil {
			c.setState(m, Down, "cannot open token", err)
			return
		}
		m.mu.Lock()
		m.tok, tok = t, t
		m.mu.Unlock()
	} else {
		pctx, cancel := context.WithTimeout(ctx, c.cfg.ProbeTimeout)
		err := tok.Probe(pctx)
		cancel()
		if err != nil {
			c.setState(m, Down, "probe failed", err)
			return
		}
		if notJoined && !force && !c.cfg.AutoJoin {
			return // up, but useless until Bootstrap or Join
		}
	}
	// The member answers again: its breaker, still open from before, must
	// not refuse the re-sync's own calls (the copies it needs).
	m.fails.Store(0)
	m.br.Store(c.newBreaker(m))
	c.setState(m, Syncing, "re-sync", nil)
	err := c.resync(ctx, m)
	if errors.Is(err, ErrNotJoined) && c.cfg.AutoJoin && c.ceremonyMu.TryLock() {
		c.log.Info("cluster: member has not joined; running the join ceremony (AutoJoin)", "member", m.name)
		err = c.join(ctx, m)
		c.ceremonyMu.Unlock()
		if err == nil {
			err = c.resync(ctx, m)
		}
	}
	m.mu.Lock()
	m.notJoined = errors.Is(err, ErrNotJoined)
	m.mu.Unlock()
	switch {
	case errors.Is(err, ErrNotJoined):
		c.setState(m, Down, "not joined: run Bootstrap or Join", nil)
		return
	case err != nil:
		c.setState(m, Down, "re-sync failed", err)
		return
	}
	c.completeExchange(ctx, m)
	m.fails.Store(0)
	m.br.Store(c.newBreaker(m))
	c.casState(m, Syncing, Healthy, "re-synced")
}

// completeExchange finishes, for a member back from an absence, the KEK
// exchange that a Join run meanwhile could not do with it: with AutoJoin
// it runs the exchange, without it says what is missing. Members that do
// not hold each other's KEK cannot copy keys between them, and cannot
// take part in one creation without a third member as its origin. It runs
// after each recovery and, for what those could not finish, after each
// anti-entropy pass. The ceremony logs in as SO on the members involved,
// which pauses their traffic for its length, as Join does.
func (c *Cluster) completeExchange(ctx context.Context, m *member) {
	_, _, own := m.snapshot()
	var missing []string
	for _, x := range c.members {
		xs, xt, xkek := x.snapshot()
		if x == m || xt == nil || xkek == "" || x.isRemoved() || (xs != Healthy && xs != Degraded) {
			continue // a member that is away runs the exchange when it is back
		}
		if !m.has(xkek) || !x.has(own) {
			missing = append(missing, x.name)
		}
	}
	if len(missing) == 0 {
		return
	}
	if !c.cfg.AutoJoin {
		c.log.Warn("cluster: members do not hold each other's key-encryption keys (a Join ran while one was away); run Join for this member, or set AutoJoin", "member", m.name, "with", missing)
		return
	}
	if !c.ceremonyMu.TryLock() {
		c.log.Info("cluster: a ceremony is running; the key-encryption key exchange waits for the next anti-entropy pass", "member", m.name, "with", missing)
		return
	}
	defer c.ceremonyMu.Unlock()
	c.log.Info("cluster: exchanging key-encryption keys with members a Join could not reach (AutoJoin)", "member", m.name, "with", missing)
	if err := c.exchange(ctx, m); err != nil {
		c.log.Warn("cluster: key-encryption key exchange failed", "member", m.name, "err", err)
	}
}

// MemberStatus is one member as the cluster sees it.
type MemberStatus struct {
	Name     string
	Role     Role
	State    State
	Reason   string // why the member is in its state
	Keys     int    // keys it holds, the cluster's own excluded
	InFlight int64
	Served   int64 // successful calls since New
	Latency  time.Duration
	Serial   string
}

// Members reports every member's state, in configuration order.
func (c *Cluster) Members() []MemberStatus {
	out := make([]MemberStatus, 0, len(c.members))
	for _, m := range c.members {
		m.mu.RLock()
		n := 0
		for id := range m.holds {
			if !reserved(id) {
				n++
			}
		}
		out = append(out, MemberStatus{
			Name: m.name, Role: m.cfg.Role, State: m.state, Reason: m.reason, Keys: n,
			InFlight: m.inflight.Load(), Served: m.served.Load(),
			Latency: m.latencyEstimate(), Serial: m.serial,
		})
		m.mu.RUnlock()
	}
	return out
}

package cluster

import (
	"context"
	"crypto/sha256"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeClock is a Clock that moves only when Advance is called.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []*fakeWaiter
}

type fakeWaiter struct {
	c      chan time.Time
	at     time.Time
	period time.Duration // 0 for a timer
	done   bool
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_800_000_000, 0)} }

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) add(d, period time.Duration) *fakeWaiter {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := &fakeWaiter{c: make(chan time.Time, 1), at: f.now.Add(d), period: period}
	f.waiters = append(f.waiters, w)
	return w
}

func (f *fakeClock) NewTicker(d time.Duration) Ticker { return fakeTicker{f, f.add(d, d)} }
func (f *fakeClock) NewTimer(d time.Duration) Timer   { return fakeTimer{f, f.add(d, 0)} }

// Advance moves the clock and fires what is due, without blocking.
func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	for _, w := range f.waiters {
		for !w.done && !w.at.After(f.now) {
			select {
			case w.c <- f.now:
			default:
			}
			if w.period == 0 {
				w.done = true
			} else {
				w.at = w.at.Add(w.period)
			}
		}
	}
}

type fakeTicker struct {
	f *fakeClock
	w *fakeWaiter
}

func (t fakeTicker) C() <-chan time.Time { return t.w.c }
func (t fakeTicker) Stop() {
	t.f.mu.Lock()
	t.w.done = true
	t.f.mu.Unlock()
}

type fakeTimer struct {
	f *fakeClock
	w *fakeWaiter
}

func (t fakeTimer) C() <-chan time.Time { return t.w.c }
func (t fakeTimer) Stop() bool {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	was := !t.w.done
	t.w.done = true
	return was
}

// env is a cluster over real SoftHSM2 members.
type env struct {
	t      testing.TB
	c      *Cluster
	sh     *softhsmtest.Cluster
	clock  *fakeClock
	events chan Event
	cfg    Config
}

// newEnv builds and bootstraps a cluster of n SoftHSM members named m0,
// m1, ... with a fake clock. mut may change the configuration first. The
// bootstrap (RSA key generation for the ceremony) runs in a first
// cluster with generous timeouts; the cluster under test is a second one
// over the same members and catalog, as after a process restart.
func newEnv(t testing.TB, n int, mut func(*Config)) *env {
	t.Helper()
	sh := softhsmtest.New(t, n)
	ctx := context.Background()
	catalog := &MemoryCatalog{}
	cfg := DefaultConfig()
	cfg.AntiEntropyInterval = 0
	var opts []Option
	for i, m := range sh.Members {
		tc := m.Config()
		tc.CallTimeout = 30 * time.Second
		name := fmt.Sprintf("m%d", i)
		cfg.Members = append(cfg.Members, MemberConfig{Name: name, Token: tc, SOPIN: m.SOPIN()})
		opts = append(opts, WithTokenOptions(name, hsm.WithInterceptor(m.Faults)))
	}
	boot, err := New(ctx, cfg, append(opts, WithCatalog(catalog), WithClock(newFakeClock()))...)
	if err != nil {
		t.Fatal(err)
	}
	if err := boot.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range cfg.Members {
		cfg.Members[i].Token.CallTimeout = 5 * time.Second
	}
	if mut != nil {
		mut(&cfg)
	}
	e := &env{t: t, sh: sh, clock: newFakeClock(), events: make(chan Event, 1024), cfg: cfg}
	c, err := New(ctx, cfg, append(opts, WithCatalog(catalog), WithClock(e.clock), WithEvents(e.events))...)
	if err != nil {
		t.Fatal(err)
	}
	// Closed only now, so that the module stays initialized in between
	// (closing the last token of a module finalizes it).
	if err := boot.Close(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, m := range sh.Members {
			m.Faults.Release()
		}
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	e.c = c
	e.requireStates(Healthy, Healthy, Healthy, Healthy, Healthy)
	c.flushEvents()
	for len(e.events) > 0 {
		<-e.events // the start's
	}
	return e
}

// requireStates checks the members' states (extra arguments are ignored).
func (e *env) requireStates(want ...State) {
	e.t.Helper()
	for i, s := range e.c.Members() {
		if s.State != want[i] {
			e.t.Fatalf("member %s is %v (%s), want %v", s.Name, s.State, s.Reason, want[i])
		}
	}
}

func (e *env) check() {
	e.t.Helper()
	if err := e.c.CheckHealth(context.Background()); err != nil {
		e.t.Fatal(err)
	}
}

// tokenKeys lists the non-reserved keys on member i's token, read from
// the token itself.
func (e *env) tokenKeys(i int) []string {
	e.t.Helper()
	tok := e.c.members[i].token()
	if tok == nil {
		e.t.Fatalf("member %d has no open token", i)
	}
	keys, err := tok.ListKeys(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, k := range keys {
		if !reserved(k.ID) {
			out = append(out, string(k.ID))
		}
	}
	sort.Strings(out)
	return out
}

// allTokenKeys lists every key on member i's token, reserved ones included.
func (e *env) allTokenKeys(i int) []hsm.KeyInfo {
	e.t.Helper()
	keys, err := e.c.members[i].token().ListKeys(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return keys
}

func (e *env) served() []int64 {
	var out []int64
	for _, s := range e.c.Members() {
		out = append(out, s.Served)
	}
	return out
}

func digest(s string) []byte {
	d := sha256.Sum256([]byte(s))
	return d[:]
}

func runtimeGosched() { runtime.Gosched() }

// callerErrors counts calls member answered with the caller's fault.
func callerErrors(c *Cluster, member string) float64 {
	var total float64
	for _, op := range []string{"encrypt", "decrypt", "sign", "mac", "describe"} {
		total += testutil.ToFloat64(c.metrics.errs.WithLabelValues(member, op, "caller"))
	}
	return total
}

func testutilCount(c prometheus.Counter) float64 { return testutil.ToFloat64(c) }

// waitFor waits, without sleeping, until cond holds; it fails the test
// after a minute.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within a minute")
		}
		runtime.Gosched()
	}
}

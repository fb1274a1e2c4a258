package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/sony/gobreaker/v2"
)

// State is a member's health as the cluster sees it.
type State int

const (
	// Down: the member takes no traffic. It failed, could not be reached,
	// has not joined, or was removed. A probe that succeeds re-syncs it.
	Down State = iota
	// Syncing: the member answers again and is being brought up to date
	// with the catalog; it takes no traffic yet.
	Syncing
	// Degraded: the member had a recent fault but is still used, after
	// the healthy members.
	Degraded
	// Healthy: the member serves calls.
	Healthy
)

func (s State) String() string {
	switch s {
	case Down:
		return "down"
	case Syncing:
		return "syncing"
	case Degraded:
		return "degraded"
	case Healthy:
		return "healthy"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// states lists the states, for metrics.
var states = []State{Down, Syncing, Degraded, Healthy}

// Event is a member's state change.
type Event struct {
	Time     time.Time
	Member   string
	From, To State
	// Reason says why, in words; Err is the member's error, if any.
	Reason string
	Err    error
}

// reservedPrefix starts the IDs of the cluster's own keys: key-encryption
// keys and transport keys. Callers cannot use such IDs.
const reservedPrefix = "hsmkms-"

const (
	kekPrefix       = reservedPrefix + "kek-"
	transportPrefix = reservedPrefix + "transport-"
)

func reserved(id hsm.KeyID) bool { return strings.HasPrefix(string(id), reservedPrefix) }

type breaker = gobreaker.TwoStepCircuitBreaker[struct{}]

// member is one token and what the cluster knows of it.
type member struct {
	name   string
	idx    int
	cfg    MemberConfig
	weight float64
	opts   []hsm.Option

	mu      sync.RWMutex
	tok     *hsm.Token
	state   State
	reason  string
	kek     hsm.KeyID // its own, trusted, key-encryption key; "" when it has none
	serial  string    // token serial when last synced
	holds   map[hsm.KeyID]bool
	suspect map[hsm.KeyID]suspectMark // IDs whose creation here failed midway or found the ID taken
	// verified: keys in holds whose copy here this process made, or found
	// to match the catalog's check value.
	verified map[hsm.KeyID]bool
	// orphans: keys the last re-sync found that the catalog does not know
	// (left by failed creations, or being made by another process); never
	// served, reported by Coverage.
	orphans map[hsm.KeyID]bool
	// seen: when this process first saw each of orphans, and what (its
	// check value, nil if unknown), so that an object replaced under the
	// same ID starts its grace afresh.
	seen    map[hsm.KeyID]sighting
	removed bool
	// notJoined: the token holds no KEK of its own; the member waits for
	// Bootstrap or Join.
	notJoined bool

	missed atomic.Bool // the last re-sync could not copy every key

	recoverMu sync.Mutex // one recovery at a time
	syncMu    sync.Mutex // one re-sync at a time

	br       atomic.Pointer[breaker]
	fails    atomic.Int64 // consecutive member faults
	inflight atomic.Int64
	latency  atomic.Uint64 // math.Float64bits of an EWMA of ln(latency in ns); 0 unknown
	// Exploration of a member kept out for being slow: after it lost
	// exploreAfter routing choices, it takes one call (exploring), whose
	// latency replaces its average; explored marks that verdict pending.
	slowLosses   atomic.Int64
	exploreAfter atomic.Int64
	exploring    atomic.Bool
	explored     atomic.Bool
	served       atomic.Int64 // successful calls
}

func (m *member) token() *hsm.Token {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.tok
}

func (m *member) snapshot() (State, *hsm.Token, hsm.KeyID) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.state, m.tok, m.kek
}

func (m *member) isRemoved() bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.removed
}

func (m *member) has(id hsm.KeyID) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.holds[id]
}

func (m *member) setHolds(id hsm.KeyID, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ok {
		m.holds[id] = true
	} else {
		delete(m.holds, id)
		delete(m.verified, id)
	}
}

// hold records that m holds id, in a copy this process made or checked.
func (m *member) hold(id hsm.KeyID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.holds[id], m.verified[id] = true, true
	delete(m.suspect, id)
}

// forget drops all m knows of its object under id, now destroyed.
func (m *member) forget(id hsm.KeyID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.holds, id)
	delete(m.verified, id)
	delete(m.suspect, id)
	delete(m.orphans, id)
	delete(m.seen, id)
}

// suspectMark says whether the creation that marked m's object under an
// ID as a suspect found the ID taken (foreign: the object was there
// before, so it is not this process's).
type suspectMark struct {
	foreign bool
}

// leftoverGrace is how long an object under an ID the catalog does not
// list must have been seen on a member before it is destroyed as a
// leftover: another process sharing the members and the catalog may be
// creating the same ID, its copies made and its catalog write still to
// come. A creation's calls are bounded by their CallTimeout; none takes
// this long.
const leftoverGrace = 2 * time.Minute

// addSuspect marks what m holds under id, if anything, as left by a
// failed creation: it is not routed to, and is destroyed before any copy
// (see sync and clearSuspects for when). A mark stays foreign only while
// every creation that marked it found the ID taken.
func (m *member) addSuspect(id hsm.KeyID, mark suspectMark) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.suspect[id]; ok {
		mark.foreign = old.foreign && mark.foreign
	}
	m.suspect[id] = mark
	delete(m.holds, id)
	delete(m.verified, id)
}

// sighting is when this process first saw an object the catalog does not
// list, and its check value then (nil when unknown).
type sighting struct {
	first time.Time
	check []byte
}

// saw records that m holds an object under id with check value check
// (nil: unknown) at now: the first sighting, or the same object again, or
// another one, whose grace starts afresh.
func (m *member) saw(id hsm.KeyID, check []byte, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sawLocked(id, check, now)
}

func (m *member) sawLocked(id hsm.KeyID, check []byte, now time.Time) {
	prev, ok := m.seen[id]
	switch {
	case !ok || (prev.check != nil && check != nil && !bytes.Equal(prev.check, check)):
		m.seen[id] = sighting{first: now, check: check}
	case prev.check == nil && check != nil:
		m.seen[id] = sighting{first: prev.first, check: check}
	}
}

// observeLatency folds d into the member's moving average, kept in the
// log domain so that one slow call (a GC pause, a busy core) moves it
// little and a member slow by a constant factor stands out quickly. The
// exploratory call of a member kept out for being slow replaces the
// average: it is the only fresh news of that member.
func (m *member) observeLatency(d time.Duration) {
	l := math.Log(float64(max(d, time.Microsecond)))
	exploring := m.exploring.Load()
	for {
		old := m.latency.Load()
		v := l
		if old != 0 && !exploring {
			v = 0.7*math.Float64frombits(old) + 0.3*l
		}
		if m.latency.CompareAndSwap(old, math.Float64bits(v)) {
			break
		}
	}
	if exploring {
		m.explored.Store(true)
		m.exploring.Store(false)
	}
}

// endExploration ends an exploratory call that brought no latency sample.
func (m *member) endExploration() { m.exploring.Store(false) }

func (m *member) latencyEstimate() time.Duration {
	l, ok := m.logLatency()
	if !ok {
		return 0
	}
	return time.Duration(math.Exp(l))
}

// logLatency is the average ln(latency in ns), and false when unknown.
func (m *member) logLatency() (float64, bool) {
	b := m.latency.Load()
	return math.Float64frombits(b), b != 0
}

// slowFactor is the square of how many times slower than the fastest
// candidate m is, or 1 when it is within slowThreshold of it or unknown.
func (c *Cluster) slowFactor(m *member, fastest float64, known bool) float64 {
	if !c.cfg.LatencyAware || !known {
		return 1
	}
	l, ok := m.logLatency()
	if !ok {
		return 1
	}
	if f := math.Exp(l - fastest); f > slowThreshold {
		// Squared: a slow member hurts the tail more than its average
		// says, so it loses even to members with several calls in flight.
		return f * f
	}
	return 1
}

// Exploration intervals, in routing choices lost for being slow: short
// after a member was found fast (a latency spike costs it little),
// doubling each time it is found slow again, up to the maximum.
const (
	minExploreAfter = 16
	maxExploreAfter = 2048
)

// settleExploration applies the verdict of m's last exploratory call, if
// one is pending: still slow doubles the wait for the next.
func (m *member) settleExploration(slow bool) {
	if !m.explored.CompareAndSwap(true, false) {
		return
	}
	n := int64(minExploreAfter)
	if slow {
		n = min(2*max(m.exploreAfter.Load(), minExploreAfter), maxExploreAfter)
	}
	m.exploreAfter.Store(n)
}

// explore reports whether slow member m may take one call now to be
// measured again, and claims that call.
func (m *member) explore() bool {
	if m.slowLosses.Load() < max(m.exploreAfter.Load(), minExploreAfter) || m.inflight.Load() > 0 {
		return false
	}
	if !m.exploring.CompareAndSwap(false, true) {
		return false
	}
	m.slowLosses.Store(0)
	return true
}

// slowThreshold: members within this factor of the fastest count as
// equally fast, so that noise does not skew the spread.
const slowThreshold = 3

func (c *Cluster) newBreaker(m *member) *breaker {
	return gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        m.name,
		MaxRequests: 1,
		Timeout:     c.cfg.BreakerTimeout,
		ReadyToTrip: func(n gobreaker.Counts) bool {
			return n.ConsecutiveFailures >= uint32(c.cfg.BreakerFailures)
		},
		// The caller's faults and the caller's context never count against
		// a member.
		IsExcluded: func(err error) bool {
			cl := hsm.Classify(err)
			return cl == hsm.ClassCaller || cl == hsm.ClassContext
		},
	})
}

// setState moves m to state to and publishes the change. The event is
// queued after m's lock is released and sent by the event goroutine,
// which holds no lock (events.go); it never blocks.
func (c *Cluster) setState(m *member, to State, reason string, err error) {
	m.mu.Lock()
	from := m.state
	if m.removed && to != Down {
		m.mu.Unlock()
		return
	}
	m.state, m.reason = to, reason
	if err != nil {
		m.reason = reason + ": " + err.Error()
	}
	m.mu.Unlock()
	if from == to {
		return
	}
	c.publish(Event{Time: c.clock.Now(), Member: m.name, From: from, To: to, Reason: reason, Err: err})
}

// casState moves m from from to to, and reports whether it did.
func (c *Cluster) casState(m *member, from, to State, reason string) bool {
	m.mu.Lock()
	if m.state != from || m.removed {
		m.mu.Unlock()
		return false
	}
	m.state, m.reason = to, reason
	m.mu.Unlock()
	c.publish(Event{Time: c.clock.Now(), Member: m.name, From: from, To: to, Reason: reason})
	return true
}

func (c *Cluster) publish(e Event) {
	lvl := slog.LevelInfo
	if e.To == Down {
		lvl = slog.LevelWarn
	}
	c.log.Log(context.Background(), lvl, "cluster: member state", "member", e.Member, "from", e.From, "to", e.To, "reason", e.Reason, "err", e.Err)
	if c.events != nil {
		c.queueEvent(e)
	}
}

// memberOK records a successful call.
func (c *Cluster) memberOK(m *member) {
	m.served.Add(1)
	if m.fails.Load() == 0 {
		return
	}
	m.fails.Store(0)
	c.casState(m, Degraded, Healthy, "call succeeded")
}

// memberFault records a member's fault: degraded at first, down after
// DownAfter in a row, after a timeout, or when the fault is fatal.
func (c *Cluster) memberFault(m *member, err error) {
	n := m.fails.Add(1)
	st, _, _ := m.snapshot()
	if st == Down || st == Syncing {
		return
	}
	if n >= int64(c.cfg.DownAfter) || errors.Is(err, hsm.ErrTimeout) || hsm.Classify(err) == hsm.ClassFatal ||
		errors.Is(err, gobreaker.ErrOpenState) {
		c.setState(m, Down, "member fault", err)
		return
	}
	c.casState(m, Healthy, Degraded, "member fault: "+err.Error())
}

// score is the routing cost of sending one more call to m: in-flight
// calls, times its slowness (slowFactor), over weight.
func (c *Cluster) score(m *member, slow float64) float64 {
	return float64(m.inflight.Load()+1) / m.weight * slow
}

// tier orders candidates: healthy active first, then healthy standby,
// degraded active, degraded standby. -1: not routable.
func tier(m *member) int {
	if m.removed {
		return -1
	}
	t := 0
	switch m.state {
	case Healthy:
	case Degraded:
		t = 2
	default:
		return -1
	}
	if m.cfg.Role == Standby {
		t++
	}
	return t
}

// pick chooses a member for a call on key id ("" for no key), skipping
// the members in tried: the best tier that has a candidate, then the
// better of two candidates drawn by weight (power of two choices).
func (c *Cluster) pick(id hsm.KeyID, tried []bool) *member {
	var cands [8]*member
	list := cands[:0]
	best := 99
	for _, m := range c.members {
		if tried[m.idx] {
			continue
		}
		m.mu.RLock()
		t := tier(m)
		ok := t >= 0 && m.tok != nil && (id == "" || m.holds[id])
		m.mu.RUnlock()
		if !ok || t > best {
			continue
		}
		if t < best {
			best, list = t, list[:0]
		}
		list = append(list, m)
	}
	switch len(list) {
	case 0:
		return nil
	case 1:
		return list[0]
	}
	fastest, known := math.Inf(1), false
	for _, m := range list {
		if l, ok := m.logLatency(); ok && l < fastest {
			fastest, known = l, true
		}
	}
	a := c.drawWeighted(list, nil)
	b := c.drawWeighted(list, a)
	fa, fb := c.slowFactor(a, fastest, known), c.slowFactor(b, fastest, known)
	a.settleExploration(fa > 1)
	b.settleExploration(fb > 1)
	for _, m := range []*member{a, b} {
		if f := map[bool]float64{true: fa, false: fb}[m == a]; f > 1 && m.explore() {
			return m
		}
	}
	// b wins only when clearly less loaded: one call more or less in
	// flight is noise between equal members, and chasing it skews the
	// spread. A slow member gets no such benefit of the doubt.
	margin := 1.5
	if fa > 1 || fb > 1 {
		margin = 1
	}
	if c.score(b, fb)*margin < c.score(a, fa) {
		a, b, fa, fb = b, a, fb, fa
	}
	if fb > 1 {
		b.slowLosses.Add(1)
	}
	return a
}

// drawWeighted draws a member with probability proportional to weight,
// other than not.
func (c *Cluster) drawWeighted(list []*member, not *member) *member {
	total := 0.0
	for _, m := range list {
		if m != not {
			total += m.weight
		}
	}
	x := c.rand() * total
	for _, m := range list {
		if m == not {
			continue
		}
		if x -= m.weight; x < 0 {
			return m
		}
	}
	for i := len(list) - 1; i >= 0; i-- {
		if list[i] != not {
			return list[i]
		}
	}
	return list[0]
}

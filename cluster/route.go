package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
)

// attempt runs fn on member m's token, through its circuit breaker, and
// records the outcome: metrics, latency, health.
func attempt[T any](c *Cluster, ctx context.Context, m *member, op string, fn func(context.Context, *hsm.Token) (T, error)) (T, error) {
	var zero T
	tok := m.token()
	if tok == nil {
		return zero, fmt.Errorf("%w: token not open", ErrNoHealthyMember)
	}
	done, err := m.br.Load().Allow()
	if err != nil {
		err = fmt.Errorf("circuit breaker: %w", err)
		c.memberFault(m, err)
		return zero, err
	}
	m.inflight.Add(1)
	start := time.Now()
	v, err := fn(ctx, tok)
	d := time.Since(start)
	m.inflight.Add(-1)
	done(err)
	c.metrics.observe(m.name, op, d, err)
	switch hsm.Classify(err) {
	case hsm.ClassNone:
		m.observeLatency(d)
		c.memberOK(m)
	case hsm.ClassCaller:
		m.observeLatency(d)
	case hsm.ClassMember, hsm.ClassFatal:
		m.endExploration()
		c.memberFault(m, err)
	default:
		m.endExploration()
	}
	return v, err
}

// retryable reports whether err is the member's fault, so another member
// may succeed.
func retryable(err error) bool {
	cl := hsm.Classify(err)
	return cl == hsm.ClassMember || cl == hsm.ClassFatal
}

type result[T any] struct {
	m   *member
	v   T
	err error
}

// route runs a call on key id (or on any member when id is "") on the
// best member, and on the next one when a member fails, within ctx. With
// hedge, an idempotent call also goes to a second member after
// Config.HedgeDelay, and the first answer wins. The caller's faults
// return at once.
func route[T any](c *Cluster, ctx context.Context, op string, id hsm.KeyID, hedge bool, fn func(context.Context, *hsm.Token) (T, error)) (T, error) {
	var zero T
	if err := c.enter(); err != nil {
		return zero, err
	}
	defer c.leave()
	start := time.Now()
	v, err := route1(c, ctx, op, id, hedge, fn)
	c.metrics.observeCluster(op, time.Since(start), err)
	return v, err
}

func route1[T any](c *Cluster, ctx context.Context, op string, id hsm.KeyID, hedge bool, fn func(context.Context, *hsm.Token) (T, error)) (T, error) {
	var zero T
	if id != "" {
		if err := id.Validate(); err != nil {
			return zero, err
		}
		if reserved(id) {
			return zero, fmt.Errorf("%w: key IDs starting with %q belong to the cluster", hsm.ErrInvalidInput, reservedPrefix)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops a hedged call that lost
	tried := make([]bool, len(c.members))
	var attempts []*MemberError
	results := make(chan result[T], len(c.members))
	running := 0
	launch := func(m *member) {
		tried[m.idx] = true
		running++
		go func() {
			v, err := attempt(c, ctx, m, op, fn)
			results <- result[T]{m, v, err}
		}()
	}
	fail := func() (T, error) {
		if len(attempts) == 0 && id != "" && !c.keyKnown(ctx, id) {
			return zero, fmt.Errorf("%w: %s", hsm.ErrKeyNotFound, id)
		}
		return zero, &Error{Op: op, Key: string(id), Sentinel: ErrNoHealthyMember, Attempts: attempts}
	}
	backoff := c.cfg.RetryBackoff
	for round := 0; ; round++ {
		first := c.pick(id, tried)
		if first == nil {
			if round == 0 {
				return fail()
			}
			return zero, &Error{Op: op, Key: string(id), Sentinel: ErrNoHealthyMember, Attempts: attempts}
		}
		launch(first)
		var hedgeC <-chan time.Time
		if hedge && c.cfg.HedgeDelay > 0 {
			t := c.clock.NewTimer(c.cfg.HedgeDelay)
			defer t.Stop()
			hedgeC = t.C()
		}
		for running > 0 {
			select {
			case <-hedgeC:
				hedgeC = nil
				if m := c.pick(id, tried); m != nil {
					c.metrics.hedges.Inc()
					launch(m)
				}
				continue
			case r := <-results:
				running--
				switch {
				case r.err == nil:
					return r.v, nil
				case errors.Is(r.err, hsm.ErrKeyNotFound) && id != "" && c.keyKnown(ctx, id):
					// The member lost a key it should hold: not the
					// caller's fault. Stop routing it there; anti-entropy
					// brings it back.
					r.m.setHolds(id, false)
					attempts = append(attempts, &MemberError{r.m.name, r.err})
				case !retryable(r.err):
					if running > 0 && hsm.Classify(r.err) == hsm.ClassContext && ctx.Err() == nil {
						continue
					}
					return zero, r.err
				default:
					attempts = append(attempts, &MemberError{r.m.name, r.err})
				}
				if ctx.Err() != nil {
					return zero, &Error{Op: op, Key: string(id), Sentinel: ErrNoHealthyMember, Attempts: append(attempts, &MemberError{"caller", ctx.Err()})}
				}
				if running == 0 {
					if m := c.pick(id, tried); m != nil {
						c.metrics.retries.Inc()
						launch(m)
					}
				}
			case <-ctx.Done():
				return zero, &Error{Op: op, Key: string(id), Sentinel: ErrNoHealthyMember, Attempts: append(attempts, &MemberError{"caller", ctx.Err()})}
			}
		}
		// Every candidate failed. Members whose fault was transient
		// (still routable) get another round after a pause, within the
		// caller's deadline; at most three rounds.
		if round == 2 {
			return zero, &Error{Op: op, Key: string(id), Sentinel: ErrNoHealthyMember, Attempts: attempts}
		}
		clear(tried)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return zero, &Error{Op: op, Key: string(id), Sentinel: ErrNoHealthyMember, Attempts: append(attempts, &MemberError{"caller", ctx.Err()})}
		}
		backoff = min(2*backoff, c.cfg.MaxRetryBackoff)
	}
}

// keyKnown reports whether the catalog says key id should exist.
func (c *Cluster) keyKnown(ctx context.Context, id hsm.KeyID) bool {
	rec, err := c.catalog.Get(ctx, id)
	return err == nil && !rec.Destroyed
}

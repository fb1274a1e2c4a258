package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
)

// writeTargets returns the members a new key goes to: every member that
// is healthy or degraded and has its key-encryption key, in routing
// preference order, and how many copies the healthy ones stand for.
func (c *Cluster) writeTargets() (targets []*member, healthy int) {
	tried := make([]bool, len(c.members))
	for {
		m := c.pick("", tried)
		if m == nil {
			break
		}
		tried[m.idx] = true
		st, _, kek := m.snapshot()
		if kek == "" {
			continue
		}
		targets = append(targets, m)
		if st == Healthy {
			healthy += m.cfg.replicas()
		}
	}
	return targets, healthy
}

// quorum is how many copies a new key needs. Removed members are no
// longer part of the cluster.
func (c *Cluster) quorum(healthy int) int {
	if c.cfg.WriteQuorum > 0 {
		return c.cfg.WriteQuorum
	}
	var left []*member
	for _, m := range c.members {
		if !m.isRemoved() {
			left = append(left, m)
		}
	}
	return max(healthy, min(2, copies(left)))
}

// copies counts the key copies members stand for (see Replicas).
func copies(ms []*member) int {
	n := 0
	for _, m := range ms {
		n += m.cfg.replicas()
	}
	return n
}

// downErrors lists why the members outside targets cannot take a key.
func (c *Cluster) downErrors(targets []*member) []*MemberError {
	var out []*MemberError
	for _, m := range c.members {
		if slices.Contains(targets, m) {
			continue
		}
		m.mu.RLock()
		st, reason := m.state, m.reason
		m.mu.RUnlock()
		out = append(out, &MemberError{m.name, fmt.Errorf("%w: member is %v (%s)", ErrNoHealthyMember, st, reason)})
	}
	return out
}

// GenerateKey creates a key on one member and copies it, wrapped under
// that member's key-encryption key, to every other healthy member in
// parallel. It succeeds once the key is on the write quorum and recorded
// in the catalog; otherwise every copy made is destroyed and the error
// wraps ErrQuorum and each member's error.
//
// The key is created extractable, so that it can be copied, but only
// wrapped under a trusted key-encryption key (CKA_WRAP_WITH_TRUSTED) and
// never in plaintext (CKA_SENSITIVE), whatever opts.Extractable says.
func (c *Cluster) GenerateKey(ctx context.Context, id hsm.KeyID, spec hsm.KeySpec, opts hsm.KeyOptions) (hsm.KeyInfo, error) {
	if err := errors.Join(id.Validate(), spec.Validate()); err != nil {
		return hsm.KeyInfo{}, err
	}
	opts.Extractable = true
	return c.create(ctx, "generate-key", id, spec, nil, nil, opts)
}

// UnwrapKey imports a wrapped key on one member that holds
// req.WrappingKey, then copies it to the others as GenerateKey does. The
// key is made extractable under the same terms as GenerateKey's. A
// private key imported without req.PublicKey (a PKCS#8 key under
// RSAAESKeyWrap, as AWS KMS import takes it) gets its public key derived
// on that member (see hsm.UnwrapRequest), and the pair is copied.
func (c *Cluster) UnwrapKey(ctx context.Context, req hsm.UnwrapRequest) (hsm.KeyInfo, error) {
	if err := errors.Join(req.ID.Validate(), req.Spec.Validate(), req.WrappingKey.Validate()); err != nil {
		return hsm.KeyInfo{}, err
	}
	if reserved(req.WrappingKey) {
		return hsm.KeyInfo{}, fmt.Errorf("%w: %s belongs to the cluster", hsm.ErrInvalidInput, req.WrappingKey)
	}
	req.Options.Extractable = true
	wk := req.WrappingKey
	return c.create(ctx, "unwrap-key", req.ID, req.Spec, func(ctx context.Context, t *hsm.Token) (hsm.KeyInfo, error) {
		return t.UnwrapKey(ctx, req)
	}, func(m *member) bool { return m.has(wk) }, req.Options)
}

// create is GenerateKey and UnwrapKey: make the key on one member (one
// that passes canOrigin, if given), replicate, check the quorum, record.
// With makeKey nil (GenerateKey) the origin generates the key wrapped,
// without storing it, and every target unwraps it in parallel: one token
// write on the critical path instead of two in a row.
func (c *Cluster) create(ctx context.Context, op string, id hsm.KeyID, spec hsm.KeySpec,
	makeKey func(context.Context, *hsm.Token) (hsm.KeyInfo, error), canOrigin func(*member) bool, opts hsm.KeyOptions) (_ hsm.KeyInfo, err error) {
	if err := c.enter(); err != nil {
		return hsm.KeyInfo{}, err
	}
	defer c.leave()
	start := time.Now()
	defer func() { c.metrics.observeCluster(op, time.Since(start), err) }()
	if reserved(id) {
		return hsm.KeyInfo{}, fmt.Errorf("%w: key IDs starting with %q belong to the cluster", hsm.ErrInvalidInput, reservedPrefix)
	}
	defer c.lockKey(id)()
	if _, err := c.catalog.Get(ctx, id); err == nil {
		return hsm.KeyInfo{}, fmt.Errorf("%w: %s (live or destroyed; IDs are never reused)", hsm.ErrKeyExists, id)
	} else if !errors.Is(err, hsm.ErrKeyNotFound) {
		return hsm.KeyInfo{}, fmt.Errorf("cluster: catalog: %w", err)
	}
	targets, healthy := c.writeTargets()
	targets = kekEverywhereFirst(targets)
	q := c.quorum(healthy)
	c.clearSuspects(ctx, id, targets)
	if copies(targets) < q {
		return hsm.KeyInfo{}, &Error{Op: op, Key: string(id), Sentinel: ErrQuorum, Attempts: c.downErrors(targets)}
	}

	if makeKey == nil {
		holders, attempts, info, err := c.generateEverywhere(ctx, id, spec, opts, targets)
		if err != nil {
			return hsm.KeyInfo{}, err
		}
		return c.commit(ctx, op, id, spec, info, q, holders, attempts, targets)
	}

	// The origin: the first target, in routing order, that makes the key.
	var attempts []*MemberError
	var origin *member
	var info hsm.KeyInfo
	for _, m := range targets {
		if canOrigin != nil && !canOrigin(m) {
			continue
		}
		info, err = attempt(c, ctx, m, op, makeKey)
		if err == nil {
			origin = m
			break
		}
		if !retryable(err) {
			if mayHaveMade(err) {
				c.markSuspect(m, id, err) // abandoned: the call may still make the key
			}
			return hsm.KeyInfo{}, err
		}
		// The call may have created the key before failing: remember it,
		// so that a re-sync destroys whatever is there.
		c.markSuspect(m, id, err)
		attempts = append(attempts, &MemberError{m.name, err})
		if ctx.Err() != nil {
			break
		}
	}
	if origin == nil {
		if canOrigin != nil && len(attempts) == 0 {
			return hsm.KeyInfo{}, fmt.Errorf("%w: no healthy member holds the wrapping key", hsm.ErrKeyNotFound)
		}
		return hsm.KeyInfo{}, &Error{Op: op, Key: string(id), Sentinel: ErrQuorum, Attempts: append(attempts, c.downErrors(targets)...)}
	}
	var others []*member
	for _, m := range targets {
		if m != origin {
			others = append(others, m)
		}
	}
	done, errs := c.replicate(ctx, origin, id, spec, info.Usage, others)
	for _, e := range errs {
		if mayHaveMade(e) {
			// The catalog does not know id, so what is there, or may
			// appear there, is left from a failed creation: destroyed
			// before any retry, and by the member's re-sync.
			c.markSuspect(c.byName[e.Member], id, e.Err)
		}
	}
	attempts = append(attempts, errs...)
	return c.commit(ctx, op, id, spec, info, q, append([]*member{origin}, done...), attempts, targets)
}

// generateEverywhere generates key id on one target, wrapped under that
// target's key-encryption key and stored nowhere, then unwraps it on every
// target in parallel, the origin included. It returns the members that
// hold the key and the errors of the others; err is the caller's fault
// (an unsupported spec, say), returned as it is.
func (c *Cluster) generateEverywhere(ctx context.Context, id hsm.KeyID, spec hsm.KeySpec, opts hsm.KeyOptions, targets []*member) (
	holders []*member, attempts []*MemberError, info hsm.KeyInfo, err error) {
	if opts.Usage == 0 {
		opts.Usage = spec.DefaultUsage()
	}
	for _, origin := range targets {
		_, _, kek := origin.snapshot()
		type wrapped struct{ blob, pub []byte }
		w, err := attempt(c, ctx, origin, "generate-key", func(ctx context.Context, t *hsm.Token) (wrapped, error) {
			blob, pub, err := t.GenerateWrapped(ctx, kek, spec, opts)
			return wrapped{blob, pub}, err
		})
		if err != nil {
			if !retryable(err) {
				return nil, nil, hsm.KeyInfo{}, err
			}
			attempts = append(attempts, &MemberError{origin.name, err})
			if ctx.Err() != nil {
				break
			}
			continue // nothing was stored: try the next member
		}
		// The public key and the wrapped private key come from one
		// generation inside the origin: no member needs to check the pair.
		req := hsm.UnwrapRequest{
			WrappingKey: kek, Wrapping: hsm.Wrapping{Mechanism: hsm.AESKeyWrapPad}, Wrapped: w.blob,
			ID: id, Spec: spec, Options: opts, PublicKey: w.pub, SamePair: true,
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, m := range targets {
			wg.Go(func() {
				err := c.unwrapOn(ctx, m, req)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					attempts = append(attempts, &MemberError{m.name, err})
					if mayHaveMade(err) {
						// Left from a failed creation, or perhaps made before
						// the member failed or by an abandoned call: destroyed
						// before any retry, and by the member's re-sync if the
						// key is not recorded.
						c.markSuspect(m, id, err)
					}
					return
				}
				holders = append(holders, m)
			})
		}
		wg.Wait()
		return holders, attempts, hsm.KeyInfo{ID: id, Spec: spec, Usage: opts.Usage, Extractable: true}, nil
	}
	return nil, attempts, hsm.KeyInfo{}, nil
}

// mayHaveMade reports whether a creation call that failed with err may
// have left the key on its member: one was there already, the member
// failed midway, or the caller gave up while the call ran (the worker may
// still finish it). A caller's fault (a bad blob, say) leaves nothing.
func mayHaveMade(err error) bool {
	return errors.Is(err, hsm.ErrKeyExists) || hsm.Classify(err) != hsm.ClassCaller
}

// commit records a new key held by holders when they make the quorum q,
// or destroys every copy and returns the quorum error.
func (c *Cluster) commit(ctx context.Context, op string, id hsm.KeyID, spec hsm.KeySpec, info hsm.KeyInfo, q int,
	holders []*member, attempts []*MemberError, targets []*member) (hsm.KeyInfo, error) {
	var gone bool
	if len(holders) > 0 && copies(holders) >= q {
		var check []byte
		var err error
		check, gone, err = c.checkValue(ctx, id, holders)
		switch {
		case gone:
			// Every holder has lost its copy already (another process took
			// it for a leftover): recording the key would record nothing.
			attempts = append(attempts, &MemberError{"check-value", fmt.Errorf("%w: every copy of the new key is gone", hsm.ErrKeyNotFound)})
		case err != nil:
			// Without its check value, a member's other material under the
			// ID would later pass for the key.
			attempts = append(attempts, &MemberError{"check-value", err})
		default:
			rec := KeyRecord{ID: id, Spec: spec, Usage: info.Usage, Created: c.clock.Now(), Check: check}
			if _, err = c.catalog.Create(ctx, rec); err == nil {
				for _, m := range holders {
					m.hold(id)
				}
				c.metrics.keysCreated.Inc()
				return info, nil
			}
			attempts = append(attempts, &MemberError{"catalog", err})
		}
	}
	// Roll back: no copy may stay anywhere. When every copy was gone
	// already, what is under the ID now is another process's.
	if len(holders) > 0 && !gone {
		c.rollback(ctx, id, holders)
	}
	return hsm.KeyInfo{}, &Error{Op: op, Key: string(id), Sentinel: ErrQuorum, Attempts: append(attempts, c.downErrors(targets)...)}
}

// checkValueTimeout bounds the reading of a new key's check value, which
// does not stop with the caller's context: the copies exist by then.
const checkValueTimeout = 10 * time.Second

// checkValue reads the check value of new key id from the first of
// holders that gives it. It is nil with err nil when every holder's token
// cannot compute one (the key is then recorded without one, and copies
// of it are taken up unchecked); gone reports that every holder answered
// that it has no such key; any other failure of every holder is err.
func (c *Cluster) checkValue(ctx context.Context, id hsm.KeyID, holders []*member) (v []byte, gone bool, err error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), checkValueTimeout)
	defer cancel()
	missing, unsupported := 0, 0
	var errs []error
	for _, m := range holders {
		v, err := attempt(c, ctx, m, "check-value", func(ctx context.Context, t *hsm.Token) ([]byte, error) {
			return t.CheckValue(ctx, id)
		})
		switch {
		case err == nil:
			return v, false, nil
		case errors.Is(err, hsm.ErrKeyNotFound):
			missing++
		case errors.Is(err, hsm.ErrUnsupported):
			unsupported++
		}
		errs = append(errs, fmt.Errorf("%s: %w", m.name, err))
		if ctx.Err() != nil {
			break
		}
	}
	switch {
	case missing == len(holders):
		return nil, true, nil
	case unsupported == len(holders):
		return nil, false, nil
	}
	return nil, false, fmt.Errorf("cluster: no holder gave the new key's check value: %w", errors.Join(errs...))
}

// markSuspect marks m's object under id as left by a creation that
// failed with err there.
func (c *Cluster) markSuspect(m *member, id hsm.KeyID, err error) {
	foreign := errors.Is(err, hsm.ErrKeyExists)
	m.addSuspect(id, suspectMark{foreign: foreign})
	if foreign {
		m.saw(id, nil, c.clock.Now()) // the answer shows that something is there
	}
}

// leftoverReady reports, with id's key lock held, whether m's object
// under id, which the catalog does not list, may be destroyed as a
// leftover: this process first saw it leftoverGrace ago, and it is still
// the object seen then (its check value has not changed; when none could
// be read then or now, the time alone decides).
func (c *Cluster) leftoverReady(ctx context.Context, m *member, tok *hsm.Token, id hsm.KeyID) bool {
	now := c.clock.Now()
	m.mu.RLock()
	s, ok := m.seen[id]
	m.mu.RUnlock()
	if !ok || now.Sub(s.first) < leftoverGrace {
		return false
	}
	v, err := tok.CheckValue(ctx, id)
	switch {
	case errors.Is(err, hsm.ErrKeyNotFound):
		return true // gone already: destroying finds nothing
	case err != nil:
		return s.check == nil
	case s.check != nil && !bytes.Equal(v, s.check):
		m.saw(id, v, now) // another object under the ID: its grace starts now
		return false
	}
	return true
}

// clearSuspects destroys what failed creations of id may have left on
// targets, so that a retry with the same ID can succeed. A foreign
// suspect (the ID was taken when this process tried it) may be another
// process's creation in progress: it is destroyed only once listings have
// shown it for leftoverGrace, and until then the retry fails on that
// member.
func (c *Cluster) clearSuspects(ctx context.Context, id hsm.KeyID, targets []*member) {
	for _, m := range targets {
		m.mu.RLock()
		mark, suspect := m.suspect[id]
		m.mu.RUnlock()
		if !suspect {
			continue
		}
		if mark.foreign {
			tok := m.token()
			if tok == nil || !c.leftoverReady(ctx, m, tok, id) {
				continue
			}
		}
		_, err := attempt(c, ctx, m, "destroy-key", func(ctx context.Context, t *hsm.Token) (struct{}, error) {
			return struct{}{}, t.DestroyKey(ctx, id)
		})
		if err == nil || errors.Is(err, hsm.ErrKeyNotFound) {
			m.mu.Lock()
			delete(m.suspect, id)
			delete(m.holds, id)
			m.mu.Unlock()
		}
	}
}

// rollback destroys id on every member in holders. A copy that cannot be
// destroyed now is marked suspect, and the member's next re-sync destroys
// it (the catalog does not list it).
func (c *Cluster) rollback(ctx context.Context, id hsm.KeyID, holders []*member) {
	ctx = context.WithoutCancel(ctx)
	var wg sync.WaitGroup
	for _, m := range holders {
		wg.Go(func() {
			_, err := attempt(c, ctx, m, "destroy-key", func(ctx context.Context, t *hsm.Token) (struct{}, error) {
				return struct{}{}, t.DestroyKey(ctx, id)
			})
			if err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
				c.markSuspect(m, id, err)
				c.log.Warn("cluster: rollback left a copy; the member's re-sync destroys it", "member", m.name, "key", id, "err", err)
			}
			m.setHolds(id, false)
		})
	}
	wg.Wait()
	c.metrics.rollbacks.Inc()
}

// replicate copies key id from origin to each of others, in parallel:
// origin wraps it under its key-encryption key (AES key wrap with
// padding), each recipient unwraps it inside its token. It returns the
// members that now hold it and the errors of the others.
func (c *Cluster) replicate(ctx context.Context, origin *member, id hsm.KeyID, spec hsm.KeySpec, usage hsm.Usage, others []*member) ([]*member, []*MemberError) {
	if len(others) == 0 {
		return nil, nil
	}
	_, _, kek := origin.snapshot()
	blob, err := attempt(c, ctx, origin, "wrap-key", func(ctx context.Context, t *hsm.Token) ([]byte, error) {
		return t.WrapKey(ctx, kek, id, hsm.Wrapping{Mechanism: hsm.AESKeyWrapPad})
	})
	var pub []byte
	if err == nil && spec.Asymmetric() {
		pub, err = attempt(c, ctx, origin, "public-key", func(ctx context.Context, t *hsm.Token) ([]byte, error) {
			return t.PublicKey(ctx, id)
		})
	}
	if err != nil {
		var errs []*MemberError
		for _, m := range others {
			errs = append(errs, &MemberError{m.name, fmt.Errorf("wrapping on %s: %w", origin.name, err)})
		}
		return nil, errs
	}
	req := hsm.UnwrapRequest{
		WrappingKey: kek, Wrapping: hsm.Wrapping{Mechanism: hsm.AESKeyWrapPad}, Wrapped: blob,
		ID: id, Spec: spec, Options: hsm.KeyOptions{Usage: usage, Extractable: true}, PublicKey: pub,
	}
	var mu sync.Mutex
	var done []*member
	var errs []*MemberError
	var wg sync.WaitGroup
	for _, m := range others {
		wg.Go(func() {
			err := c.unwrapOn(ctx, m, req)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, &MemberError{m.name, err})
				return
			}
			done = append(done, m)
		})
	}
	wg.Wait()
	return done, errs
}

// unwrapOn unwraps req on m, which must hold the wrapping key.
func (c *Cluster) unwrapOn(ctx context.Context, m *member, req hsm.UnwrapRequest) error {
	if !m.has(req.WrappingKey) {
		return fmt.Errorf("%w: %s does not hold key-encryption key %s; run Join", ErrNotJoined, m.name, req.WrappingKey)
	}
	_, err := attempt(c, ctx, m, "unwrap-key", func(ctx context.Context, t *hsm.Token) (hsm.KeyInfo, error) {
		return t.UnwrapKey(ctx, req)
	})
	return err
}

// kekEverywhereFirst puts first, keeping routing order otherwise, the
// targets whose key-encryption key every other target holds: a key made
// on one of those can be copied everywhere. A member that joined while
// another was away lacks that one's key-encryption key, and a key made on
// either of the two could not reach the other.
func kekEverywhereFirst(targets []*member) []*member {
	everywhere := func(origin *member) bool {
		_, _, kek := origin.snapshot()
		for _, m := range targets {
			if m != origin && !m.has(kek) {
				return false
			}
		}
		return true
	}
	out := make([]*member, 0, len(targets))
	var rest []*member
	for _, m := range targets {
		if everywhere(m) {
			out = append(out, m)
		} else {
			rest = append(rest, m)
		}
	}
	return append(out, rest...)
}

// beginDestroy starts op, a destruction of the user key id: it checks id,
// enters the cluster and takes id's key lock. end, called with op's
// error, records op and undoes the rest.
func (c *Cluster) beginDestroy(id hsm.KeyID, op string) (end func(error), err error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	if err := c.enter(); err != nil {
		return nil, err
	}
	start := time.Now()
	if reserved(id) {
		err := fmt.Errorf("%w: %s belongs to the cluster", hsm.ErrInvalidInput, id)
		c.metrics.observeCluster(op, time.Since(start), err)
		c.leave()
		return nil, err
	}
	unlock := c.lockKey(id)
	return func(err error) {
		unlock()
		c.metrics.observeCluster(op, time.Since(start), err)
		c.leave()
	}, nil
}

// DestroyKey destroys a key on every member. The catalog records the
// destruction first, so a member that is down now destroys the key when it
// returns, before it serves, and the key never comes back. It fails with
// hsm.ErrKeyNotFound when the catalog does not know the key.
func (c *Cluster) DestroyKey(ctx context.Context, id hsm.KeyID) (err error) {
	end, err := c.beginDestroy(id, "destroy-key")
	if err != nil {
		return err
	}
	defer func() { end(err) }()
	rec, err := c.catalog.Get(ctx, id)
	if err != nil {
		return err
	}
	if rec.Destroyed {
		return fmt.Errorf("%w: %s was destroyed", hsm.ErrKeyNotFound, id)
	}
	if err := c.catalog.MarkDestroyed(ctx, id, c.clock.Now()); err != nil {
		return fmt.Errorf("cluster: catalog: %w", err)
	}
	var wg sync.WaitGroup
	for _, m := range c.members {
		m.setHolds(id, false)
		st, tok, _ := m.snapshot()
		if tok == nil || st == Down {
			continue // its re-sync destroys the key
		}
		wg.Go(func() {
			_, err := attempt(c, context.WithoutCancel(ctx), m, "destroy-key", func(ctx context.Context, t *hsm.Token) (struct{}, error) {
				return struct{}{}, t.DestroyKey(ctx, id)
			})
			if err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
				c.log.Warn("cluster: destroy failed on a member; its re-sync destroys the key", "member", m.name, "key", id, "err", err)
			}
		})
	}
	wg.Wait()
	c.metrics.keysDestroyed.Inc()
	return nil
}

// DestroyLeftover destroys what the members hold under id, an ID the
// catalog has no record of (live or destroyed): the copies that a
// creation of id made before it failed, or before its process died.
//
// The cluster destroys such an object on its own only when a creation
// of the same ID finds it there and this process has seen it for two
// minutes, since another process sharing the members and the catalog may
// be about to commit it; a process that starts again begins that wait
// afresh. DestroyLeftover does not wait: it is for a caller who knows
// that no creation of id is under way anywhere, and that the objects are
// not another deployment's (an operator after a first start died: see
// `hsmkms destroy-leftover`). A creation of id after DestroyLeftover
// finds the ID free on the members that it reached.
//
// Members whose token is not open, or that are down, keep what they
// hold: when they come back, their re-sync finds a copy that the
// catalog's check value does not match (if id has been created
// meanwhile) and replaces it. It returns an error wrapping
// hsm.ErrKeyExists when the catalog lists id, and one wrapping each
// member's error when members that could be reached kept their objects.
func (c *Cluster) DestroyLeftover(ctx context.Context, id hsm.KeyID) (err error) {
	end, err := c.beginDestroy(id, "destroy-leftover")
	if err != nil {
		return err
	}
	defer func() { end(err) }()
	if _, err := c.catalog.Get(ctx, id); err == nil {
		return fmt.Errorf("%w: %s is in the catalog (live or destroyed): not a leftover", hsm.ErrKeyExists, id)
	} else if !errors.Is(err, hsm.ErrKeyNotFound) {
		return fmt.Errorf("cluster: catalog: %w", err)
	}
	var (
		mu    sync.Mutex
		fails []error
		wg    sync.WaitGroup
	)
	for _, m := range c.members {
		st, tok, _ := m.snapshot()
		if tok == nil || st == Down {
			continue
		}
		wg.Go(func() {
			_, err := attempt(c, context.WithoutCancel(ctx), m, "destroy-key", func(ctx context.Context, t *hsm.Token) (struct{}, error) {
				return struct{}{}, t.DestroyKey(ctx, id)
			})
			if err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
				mu.Lock()
				fails = append(fails, &MemberError{Member: m.name, Err: err})
				mu.Unlock()
				return
			}
			if err == nil {
				c.log.Info("cluster: destroyed a leftover", "member", m.name, "key", id)
			}
			m.forget(id)
		})
	}
	wg.Wait()
	if len(fails) > 0 {
		return fmt.Errorf("cluster: destroy-leftover %s: %w", id, errors.Join(fails...))
	}
	return nil
}

// copyCheck is what verifyCopy found.
type copyCheck uint8

const (
	copySame     copyCheck = iota // the catalog's key, or taken as such: now held
	copyMismatch                  // other material: not held, left for copyKey to replace
	copyGone                      // nothing there
)

// verifyCopy decides, with rec.ID's key lock held, whether what dst holds
// under rec.ID is the catalog's key: its check value matches the
// record's. It then records that dst holds it (copySame). A copy whose
// check value differs is taken out of routing but kept (copyMismatch):
// only copyKey destroys it, once it has a source to copy the real key
// from, so that a record no copy matches (a damaged catalog, say) costs
// no key. A record without a check value, or one this member cannot
// compute or computes in another format, is taken at its word, as before
// check values were recorded. Any other failure is returned; dst is then
// not routed to for the key.
func (c *Cluster) verifyCopy(ctx context.Context, dst *member, rec KeyRecord) (copyCheck, error) {
	tok := dst.token()
	if tok == nil {
		return copyGone, fmt.Errorf("%w: token not open", ErrNoHealthyMember)
	}
	if len(rec.Check) == 0 {
		dst.hold(rec.ID)
		return copySame, nil
	}
	got, err := tok.CheckValue(ctx, rec.ID)
	switch {
	case err == nil && bytes.Equal(got, rec.Check):
		dst.hold(rec.ID)
		return copySame, nil
	case errors.Is(err, hsm.ErrUnsupported), err == nil && (len(got) == 0 || got[0] != rec.Check[0]):
		c.log.Warn("cluster: the member cannot compare the key's check value; its copy is taken unchecked", "member", dst.name, "key", rec.ID, "err", err)
		dst.hold(rec.ID)
		return copySame, nil
	case errors.Is(err, hsm.ErrKeyNotFound):
		dst.setHolds(rec.ID, false)
		return copyGone, nil
	case err != nil:
		dst.setHolds(rec.ID, false)
		return copyGone, err
	}
	// Other material under the key's ID: left by a creation that failed
	// midway. It must never serve.
	dst.setHolds(rec.ID, false)
	c.log.Warn("cluster: the member holds other material under a key's ID, left by a failed creation; it is replaced once a copy of the real key is at hand", "member", dst.name, "key", rec.ID)
	return copyMismatch, nil
}

// copyKey copies a catalog key to dst from a healthy member that holds it
// and whose key-encryption key dst holds.
func (c *Cluster) copyKey(ctx context.Context, rec KeyRecord, dst *member) error {
	defer c.lockKey(rec.ID)()
	cur, err := c.catalog.Get(ctx, rec.ID)
	if err != nil || cur.Destroyed {
		return err // destroyed meanwhile: nothing to copy
	}
	var errs []error
	for _, src := range c.members {
		st, _, kek := src.snapshot()
		if src == dst || (st != Healthy && st != Degraded) || kek == "" || !src.has(rec.ID) || !dst.has(kek) {
			continue
		}
		done, merrs := c.replicate(ctx, src, rec.ID, rec.Spec, rec.Usage, []*member{dst})
		if len(merrs) == 1 && errors.Is(merrs[0], hsm.ErrKeyExists) {
			// Copied by a creation or a re-sync that ran meanwhile, or left
			// by a failed creation in an earlier process: taken up only
			// once it proves to be the catalog's key, and replaced, now
			// that src holds the real one, if it is not.
			found, err := c.verifyCopy(ctx, dst, rec)
			switch {
			case err != nil:
				return err
			case found == copySame:
				return nil
			case found == copyMismatch:
				tok := dst.token()
				if tok == nil {
					return fmt.Errorf("%w: token not open", ErrNoHealthyMember)
				}
				if err := tok.DestroyKey(ctx, rec.ID); err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
					return err
				}
				c.metrics.leftovers.Inc()
			}
			done, merrs = c.replicate(ctx, src, rec.ID, rec.Spec, rec.Usage, []*member{dst})
		}
		if len(done) == 1 {
			dst.hold(rec.ID)
			c.metrics.keysCopied.Inc()
			return nil
		}
		for _, e := range merrs {
			errs = append(errs, e)
		}
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return fmt.Errorf("%w: no healthy member holds %s and a key-encryption key %s holds", ErrNoHealthyMember, rec.ID, dst.name)
	}
	return errors.Join(errs...)
}

package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hsmkms/hsmkms/hsm"
)

// RepairStats counts what a re-sync or an anti-entropy pass did to one
// member.
type RepairStats struct {
	Copied    int // keys copied to the member
	Destroyed int // keys destroyed on it: tombstoned in the catalog, or left by failed creations
	Failed    int // keys it should hold that could not be copied now
}

// resync makes m agree with the catalog: it lists m's keys (the only
// C_FindObjects the cluster does, off the data path), destroys what was
// destroyed meanwhile or left by failed creations, and copies what was
// created meanwhile. Every key m held from before is checked against the
// catalog's check value before m serves it again. m must not take
// traffic while it runs.
func (c *Cluster) resync(ctx context.Context, m *member) error {
	_, err := c.sync(ctx, m, true)
	return err
}

// repair is resync for an anti-entropy pass, on a member that may be
// serving: only keys this process has not yet seen on m are checked.
func (c *Cluster) repair(ctx context.Context, m *member) (RepairStats, error) {
	return c.sync(ctx, m, false)
}

func (c *Cluster) sync(ctx context.Context, m *member, fresh bool) (RepairStats, error) {
	m.syncMu.Lock()
	defer m.syncMu.Unlock()
	var st RepairStats
	tok := m.token()
	if tok == nil {
		return st, fmt.Errorf("%w: token not open", ErrNoHealthyMember)
	}
	keys, err := tok.ListKeys(ctx)
	if err != nil {
		return st, err
	}
	listed := make(map[hsm.KeyID]bool, len(keys))
	var own hsm.KeyID
	var transports []hsm.KeyID
	for _, k := range keys {
		listed[k.ID] = true
		switch {
		case strings.HasPrefix(string(k.ID), kekPrefix) && k.Trusted:
			if own == "" || k.ID < own {
				own = k.ID
			}
		case strings.HasPrefix(string(k.ID), transportPrefix):
			transports = append(transports, k.ID)
		}
	}
	// Transport keys left by an interrupted ceremony go, unless a
	// ceremony is running now.
	if len(transports) > 0 && c.ceremonyMu.TryLock() {
		for _, id := range transports {
			if err := tok.DestroyKey(ctx, id); err == nil {
				delete(listed, id)
			}
		}
		c.ceremonyMu.Unlock()
	}
	recs, err := c.catalog.List(ctx)
	if err != nil {
		return st, fmt.Errorf("cluster: catalog: %w", err)
	}
	live := make(map[hsm.KeyID]KeyRecord, len(recs))
	known := make(map[hsm.KeyID]bool, len(recs))
	for _, rec := range recs {
		known[rec.ID] = true
		if !rec.Destroyed {
			live[rec.ID] = rec
		}
	}
	// What m serves: the cluster's own keys, and the catalog's keys whose
	// copy here this process made or checked, or whose record has no check
	// value. Other catalog keys wait for their check below; suspects for
	// their destruction; keys the catalog does not know (left by failed
	// creations, or being created by another process) are never served.
	// What the keys the catalog does not know are, to tell one object
	// from another put under the same ID (see leftoverReady). They are few.
	orphanChecks := map[hsm.KeyID][]byte{}
	for id := range listed {
		if !reserved(id) && !known[id] {
			if v, err := tok.CheckValue(ctx, id); err == nil {
				orphanChecks[id] = v
			}
		}
	}
	holds := make(map[hsm.KeyID]bool, len(listed))
	orphans := map[hsm.KeyID]bool{}
	var unchecked []KeyRecord
	m.mu.Lock()
	if fresh {
		clear(m.verified)
	}
	for id := range listed {
		rec, isLive := live[id]
		_, isSuspect := m.suspect[id]
		switch {
		case reserved(id):
			holds[id] = true
		case !isLive && !known[id]:
			orphans[id] = true
		case isSuspect || !isLive:
		case m.verified[id] || len(rec.Check) == 0:
			holds[id] = true
		default:
			unchecked = append(unchecked, rec)
		}
	}
	// A key committed with m among its holders since the catalog was read
	// is held too (its copy may be too new for the listing). For the keys
	// the catalog listed, the listing is the truth.
	for id := range m.verified {
		_, isSuspect := m.suspect[id]
		switch {
		case isSuspect || listed[id]:
		case !known[id]:
			holds[id] = true
		case live[id].ID != "":
			// Committed here after the listing, before the catalog read:
			// checked below, which finds it or finds it gone.
			unchecked = append(unchecked, live[id])
		}
	}
	for id := range m.verified {
		if !holds[id] {
			delete(m.verified, id)
		}
	}
	m.orphans = orphans
	now := c.clock.Now()
	for id := range m.seen {
		if !orphans[id] {
			delete(m.seen, id)
		}
	}
	for id := range orphans {
		m.sawLocked(id, orphanChecks[id], now)
	}
	if own == "" {
		m.kek, m.holds = "", holds
		m.mu.Unlock()
		return st, fmt.Errorf("%w: %s holds no key-encryption key of its own", ErrNotJoined, m.name)
	}
	m.kek, m.serial, m.holds = own, tok.Info().Serial, holds
	suspects := make([]hsm.KeyID, 0, len(m.suspect))
	for id := range m.suspect {
		suspects = append(suspects, id)
	}
	m.mu.Unlock()

	destroy := func(id hsm.KeyID) error {
		err := tok.DestroyKey(ctx, id)
		if err == nil || errors.Is(err, hsm.ErrKeyNotFound) {
			m.setHolds(id, false)
			st.Destroyed++
			return nil
		}
		return err
	}
	// Leftovers of failed creations go first, once this process's
	// listings have shown them for leftoverGrace and if the catalog still
	// does not know them (a tombstoned one goes at once): a key the catalog lists is then
	// copied afresh from a member that holds the real one. A suspect the
	// catalog now lists as live was committed since, by this process
	// without m or by another one sharing the catalog: it is checked like
	// any other copy, never destroyed unseen.
	for _, id := range suspects {
		unlock := c.lockKey(id)
		m.mu.RLock()
		_, still := m.suspect[id]
		m.mu.RUnlock()
		if !still {
			// A creation of id ran since the list was taken: it cleared
			// the leftover, and what m holds now may be the committed key.
			unlock()
			continue
		}
		rec, err := c.catalog.Get(ctx, id)
		switch {
		case err == nil && !rec.Destroyed:
			if listed[id] {
				unchecked = append(unchecked, rec)
			}
		case err != nil && !errors.Is(err, hsm.ErrKeyNotFound):
			unlock()
			continue // the next pass decides
		case errors.Is(err, hsm.ErrKeyNotFound) && listed[id] && !c.leftoverReady(ctx, m, tok, id):
			// Perhaps another process's creation, its catalog write still
			// to come: kept, never served, until listings have shown it
			// for leftoverGrace.
			unlock()
			continue
		case listed[id]:
			if err := destroy(id); err != nil {
				unlock()
				return st, err
			}
		}
		m.mu.Lock()
		delete(m.suspect, id)
		delete(m.orphans, id)
		m.mu.Unlock()
		unlock()
	}
	var copyErrs []error
	uncheckable := map[hsm.KeyID]bool{}
	for _, rec := range unchecked {
		unlock := c.lockKey(rec.ID)
		_, err := c.verifyCopy(ctx, m, rec)
		unlock()
		if err != nil {
			st.Failed++
			uncheckable[rec.ID] = true
			copyErrs = append(copyErrs, fmt.Errorf("%s: checking the copy: %w", rec.ID, err))
		}
		if ctx.Err() != nil {
			return st, ctx.Err()
		}
	}
	for _, rec := range recs {
		if uncheckable[rec.ID] {
			continue // kept, not served, checked again by the next pass
		}
		switch {
		case rec.Destroyed && listed[rec.ID]:
			if err := destroy(rec.ID); err != nil {
				return st, err
			}
		case !rec.Destroyed && !m.has(rec.ID):
			// Missing, or held but not the catalog's key: copyKey replaces
			// such a copy once it has a source.
			if err := c.copyKey(ctx, rec, m); err != nil {
				st.Failed++
				copyErrs = append(copyErrs, fmt.Errorf("%s: %w", rec.ID, err))
			} else if m.has(rec.ID) {
				st.Copied++
			}
		}
		if ctx.Err() != nil {
			return st, ctx.Err()
		}
	}
	m.missed.Store(len(copyErrs) > 0)
	if len(copyErrs) > 0 {
		// Copies can fail for want of a source; that is no reason to keep
		// m out. A failing m is.
		if err := tok.Probe(ctx); err != nil {
			return st, err
		}
		c.log.Warn("cluster: re-sync could not copy every key; anti-entropy retries", "member", m.name, "failed", len(copyErrs), "err", errors.Join(copyErrs...))
	}
	c.metrics.resyncs.WithLabelValues(m.name).Inc()
	return st, nil
}

// AntiEntropy compares every healthy member with the catalog now and
// repairs what differs, as the periodic pass does. It returns what it did
// per member.
func (c *Cluster) AntiEntropy(ctx context.Context) (map[string]RepairStats, error) {
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.leave()
	return c.antiEntropy(ctx)
}

func (c *Cluster) antiEntropy(ctx context.Context) (map[string]RepairStats, error) {
	out := map[string]RepairStats{}
	var errs []error
	for _, m := range c.members {
		st, _, _ := m.snapshot()
		if st != Healthy && st != Degraded {
			continue
		}
		rs, err := c.repair(ctx, m)
		out[m.name] = rs
		if err != nil {
			errs = append(errs, &MemberError{m.name, err})
			if retryable(err) {
				c.memberFault(m, err)
			}
			continue
		}
		// An exchange of KEKs that a recovery could not finish (another
		// ceremony ran, or the other member was re-syncing) is retried.
		c.completeExchange(ctx, m)
	}
	return out, joinErrs(errs)
}

// KeyCoverage says which members hold one key.
type KeyCoverage struct {
	ID      hsm.KeyID
	Spec    hsm.KeySpec
	Holders []string // members that hold the key
	Missing []string // members that should and do not (down ones included)
}

// Coverage is which members hold each key the catalog lists, and which
// keys members hold that the catalog does not list (orphans).
type Coverage struct {
	Keys    []KeyCoverage
	Orphans map[string][]hsm.KeyID
}

// UnderReplicated lists the keys that some member is missing.
func (cv Coverage) UnderReplicated() []KeyCoverage {
	var out []KeyCoverage
	for _, k := range cv.Keys {
		if len(k.Missing) > 0 {
			out = append(out, k)
		}
	}
	return out
}

// Coverage reports which members hold each live key, from what the
// cluster learnt at the last re-sync or anti-entropy pass and from the
// calls since; run AntiEntropy first for a fresh view.
func (c *Cluster) Coverage(ctx context.Context) (Coverage, error) {
	recs, err := c.catalog.List(ctx)
	if err != nil {
		return Coverage{}, fmt.Errorf("cluster: catalog: %w", err)
	}
	cv := Coverage{Orphans: map[string][]hsm.KeyID{}}
	known := map[hsm.KeyID]bool{}
	for _, r := range recs {
		known[r.ID] = true
		if r.Destroyed {
			continue
		}
		k := KeyCoverage{ID: r.ID, Spec: r.Spec}
		for _, m := range c.members {
			m.mu.RLock()
			has, removed := m.holds[r.ID], m.removed
			m.mu.RUnlock()
			switch {
			case removed:
			case has:
				k.Holders = append(k.Holders, m.name)
			default:
				k.Missing = append(k.Missing, m.name)
			}
		}
		cv.Keys = append(cv.Keys, k)
	}
	for _, m := range c.members {
		m.mu.RLock()
		for id := range m.orphans {
			if !known[id] {
				cv.Orphans[m.name] = append(cv.Orphans[m.name], id)
			}
		}
		m.mu.RUnlock()
		slices.Sort(cv.Orphans[m.name])
	}
	return cv, nil
}

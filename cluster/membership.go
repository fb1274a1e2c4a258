package cluster

import (
	"context"
	"crypto"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hsmkms/hsmkms/hsm"
)

// Bootstrap makes every reachable member a full member of a new cluster:
// each gets a key-encryption key of its own, and a copy of every other
// member's, through the join ceremony (see Join). It is idempotent: a
// member that already has what it needs is left alone.
func (c *Cluster) Bootstrap(ctx context.Context) error {
	if err := c.enter(); err != nil {
		return err
	}
	defer c.leave()
	c.ceremonyMu.Lock()
	defer c.ceremonyMu.Unlock()
	var errs []error
	for _, m := range c.members {
		if err := c.ensureKEK(ctx, m); err != nil {
			errs = append(errs, &MemberError{m.name, err})
		}
	}
	for _, m := range c.members {
		if err := c.exchange(ctx, m); err != nil {
			errs = append(errs, &MemberError{m.name, err})
		}
	}
	for _, m := range c.members {
		if st, _, _ := m.snapshot(); st != Healthy {
			c.recover(ctx, m, true)
		}
	}
	return joinErrs(errs)
}

// Join makes the named member, new or replaced (wiped), a full member:
//
//  1. If its token holds no key-encryption key (KEK) of its own, its SO
//     creates one: AES-256, CKA_TRUSTED, extractable only under trusted
//     keys (hsm.Token.CreateTrustedWrappingKey).
//  2. For every other member that is up, in both directions, the KEK
//     travels HSM to HSM: the receiving HSM generates an RSA-2048
//     transport key pair; the sending HSM's SO imports its public key as
//     trusted (hsm.Token.ImportTrustedPublicKey); the sender wraps its KEK
//     under it with RSA-OAEP; the receiver unwraps it inside its token,
//     as a non-extractable copy. Both transport halves are then destroyed.
//     A member that is away gets this exchange when it comes back, with
//     Config.AutoJoin; without it, its recovery logs what is missing, and
//     Join of either member, once both are up, completes it.
//  3. The member is re-synced: it gets every key of the catalog, and
//     takes traffic.
//
// Each member keeps its own KEK trusted and holds untrusted copies of the
// others': PKCS#11 lets only an SO set CKA_TRUSTED, at creation, on
// objects the SO can see, so a KEK unwrapped by the user cannot be
// trusted, and so could receive keys but never send them. With one KEK
// per member, every member can be the origin of a copy, and a joined
// member is a full member at once.
func (c *Cluster) Join(ctx context.Context, name string) error {
	if err := c.enter(); err != nil {
		return err
	}
	defer c.leave()
	m := c.byName[name]
	if m == nil {
		return fmt.Errorf("%w: %q", ErrUnknownMember, name)
	}
	c.ceremonyMu.Lock()
	err := c.join(ctx, m)
	c.ceremonyMu.Unlock()
	if err != nil {
		return err
	}
	c.recover(ctx, m, true)
	if st, _, _ := m.snapshot(); st != Healthy {
		m.mu.RLock()
		reason := m.reason
		m.mu.RUnlock()
		return fmt.Errorf("cluster: %s joined but is %v: %s", name, st, reason)
	}
	return nil
}

// join runs steps 1 and 2 of Join. ceremonyMu must be held.
func (c *Cluster) join(ctx context.Context, m *member) error {
	if m.token() == nil {
		c.recover(ctx, m, false) // opens the token
		if m.token() == nil {
			return fmt.Errorf("%w: %s cannot be opened", ErrNoHealthyMember, m.name)
		}
	}
	if err := c.ensureKEK(ctx, m); err != nil {
		return err
	}
	return c.exchange(ctx, m)
}

// ensureKEK gives m a KEK of its own if it has none.
func (c *Cluster) ensureKEK(ctx context.Context, m *member) error {
	tok := m.token()
	if tok == nil {
		return fmt.Errorf("%w: token not open", ErrNoHealthyMember)
	}
	if err := c.refreshHoldings(ctx, m); err != nil {
		return err
	}
	if _, _, kek := m.snapshot(); kek != "" {
		return nil
	}
	if m.cfg.SOPIN.IsZero() {
		return fmt.Errorf("%w: member %s has no SO PIN for the join ceremony", hsm.ErrInvalidInput, m.name)
	}
	id := newID(kekPrefix)
	if _, err := tok.CreateTrustedWrappingKey(ctx, id, m.cfg.SOPIN, hsm.KeyOptions{Extractable: true}); err != nil {
		return fmt.Errorf("creating the key-encryption key: %w", err)
	}
	m.mu.Lock()
	m.kek, m.serial = id, tok.Info().Serial
	m.holds[id] = true
	m.mu.Unlock()
	c.log.Info("cluster: member has a new key-encryption key", "member", m.name, "kek", id)
	return nil
}

// refreshHoldings reads m's keys from its token, and finds its own KEK.
func (c *Cluster) refreshHoldings(ctx context.Context, m *member) error {
	keys, err := m.token().ListKeys(ctx)
	if err != nil {
		return err
	}
	holds := map[hsm.KeyID]bool{}
	var own hsm.KeyID
	for _, k := range keys {
		holds[k.ID] = true
		if len(k.ID) > len(kekPrefix) && string(k.ID[:len(kekPrefix)]) == kekPrefix && k.Trusted && (own == "" || k.ID < own) {
			own = k.ID
		}
	}
	m.mu.Lock()
	for id := range holds {
		// A key of the catalog's is taken up by a re-sync, which checks it
		// first; here only the ones already held stay.
		if !reserved(id) && !m.holds[id] {
			delete(holds, id)
		}
	}
	m.holds, m.kek = holds, own
	m.mu.Unlock()
	return nil
}

// exchange makes m and every other member that is up hold each other's
// KEK.
func (c *Cluster) exchange(ctx context.Context, m *member) error {
	_, _, own := m.snapshot()
	if own == "" {
		return fmt.Errorf("%w: %s", ErrNotJoined, m.name)
	}
	var errs []error
	for _, x := range c.members {
		xs, xt, xkek := x.snapshot()
		if x == m || xt == nil || x.isRemoved() || xs == Syncing {
			continue
		}
		if xkek == "" {
			continue // x joins later, and then exchanges with m
		}
		if !m.has(xkek) {
			if err := c.transfer(ctx, x, m, xkek); err != nil {
				errs = append(errs, fmt.Errorf("%s's KEK to %s: %w", x.name, m.name, err))
			}
		}
		if !x.has(own) {
			if err := c.transfer(ctx, m, x, own); err != nil {
				errs = append(errs, fmt.Errorf("%s's KEK to %s: %w", m.name, x.name, err))
			}
		}
	}
	return joinErrs(errs)
}

// transfer copies KEK kek from member from to member to, under an RSA
// transport key generated inside to and marked trusted by from's SO.
// Both halves of the transport key are destroyed whatever happens.
func (c *Cluster) transfer(ctx context.Context, from, to *member, kek hsm.KeyID) (err error) {
	if from.cfg.SOPIN.IsZero() {
		return fmt.Errorf("%w: member %s has no SO PIN for the join ceremony", hsm.ErrInvalidInput, from.name)
	}
	ft, tt := from.token(), to.token()
	if ft == nil || tt == nil {
		return fmt.Errorf("%w: token not open", ErrNoHealthyMember)
	}
	h, err := oaepHash(ft.Info().Profile, tt.Info().Profile)
	if err != nil {
		return err
	}
	tid := newID(transportPrefix)
	cleanup := context.WithoutCancel(ctx)
	if _, err := tt.GenerateKey(ctx, tid, hsm.RSA2048, hsm.KeyOptions{Usage: hsm.UsageWrap}); err != nil {
		return fmt.Errorf("generating the transport key on %s: %w", to.name, err)
	}
	defer func() {
		if e := tt.DestroyKey(cleanup, tid); e != nil {
			err = errors.Join(err, fmt.Errorf("destroying the transport key on %s: %w", to.name, e))
		}
	}()
	pub, err := tt.PublicKey(ctx, tid)
	if err != nil {
		return err
	}
	if err := ft.ImportTrustedPublicKey(ctx, tid, hsm.RSA2048, pub, from.cfg.SOPIN); err != nil {
		return fmt.Errorf("importing the transport key on %s as trusted: %w", from.name, err)
	}
	defer func() {
		if e := ft.DestroyKey(cleanup, tid); e != nil {
			err = errors.Join(err, fmt.Errorf("destroying the transport public key on %s: %w", from.name, e))
		}
	}()
	w := hsm.Wrapping{Mechanism: hsm.RSAOAEP, Hash: h}
	blob, err := ft.WrapKey(ctx, tid, kek, w)
	if err != nil {
		return fmt.Errorf("wrapping the KEK on %s: %w", from.name, err)
	}
	if _, err := tt.UnwrapKey(ctx, hsm.UnwrapRequest{
		WrappingKey: tid, Wrapping: w, Wrapped: blob,
		ID: kek, Spec: hsm.AES256, Options: hsm.KeyOptions{Usage: hsm.UsageWrap},
	}); err != nil {
		return fmt.Errorf("unwrapping the KEK on %s: %w", to.name, err)
	}
	to.setHolds(kek, true)
	c.metrics.kekTransfers.Inc()
	c.log.Info("cluster: key-encryption key transferred", "from", from.name, "to", to.name, "kek", kek)
	return nil
}

// oaepHash picks the strongest OAEP hash both tokens support.
func oaepHash(a, b hsm.Profile) (crypto.Hash, error) {
	for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA1} {
		if slices.Contains(a.OAEPHashes, h) && slices.Contains(b.OAEPHashes, h) {
			return h, nil
		}
	}
	return 0, fmt.Errorf("%w: the tokens share no RSA-OAEP hash", hsm.ErrUnsupported)
}

func newID(prefix string) hsm.KeyID {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hsm.KeyID(prefix + hex.EncodeToString(b))
}

// Remove takes a member out of the cluster for good: it stops taking
// traffic and receiving keys, its token is closed, and the other members
// destroy their copies of its KEK. Keys on its HSM are left alone.
func (c *Cluster) Remove(ctx context.Context, name string) error {
	if err := c.enter(); err != nil {
		return err
	}
	defer c.leave()
	m := c.byName[name]
	if m == nil {
		return fmt.Errorf("%w: %q", ErrUnknownMember, name)
	}
	c.setState(m, Down, "removed", nil)
	m.mu.Lock()
	m.removed = true
	tok, kek := m.tok, m.kek
	m.tok = nil
	m.mu.Unlock()
	var errs []error
	if tok != nil {
		errs = append(errs, tok.Close())
	}
	if kek == "" {
		// Not reached since this process started, so its own key is not
		// known: it is the copy of a key-encryption key that no remaining
		// member owns, when every remaining member's own key is known.
		var err error
		if kek, err = c.orphanKEK(); err != nil {
			errs = append(errs, fmt.Errorf("%s's key-encryption key: %w", name, err))
		}
	}
	if kek != "" {
		for _, x := range c.members {
			if x != m && x.has(kek) {
				if t := x.token(); t != nil {
					if err := t.DestroyKey(ctx, kek); err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
						errs = append(errs, &MemberError{x.name, err})
						continue
					}
					x.setHolds(kek, false)
				}
			}
		}
	}
	return joinErrs(errs)
}

// orphanKEK returns the one key-encryption key that the remaining members
// hold copies of and none of them owns: a removed member's.
func (c *Cluster) orphanKEK() (hsm.KeyID, error) {
	owned := map[hsm.KeyID]bool{}
	var live []*member
	for _, x := range c.members {
		x.mu.RLock()
		removed, own := x.removed, x.kek
		x.mu.RUnlock()
		if removed {
			continue
		}
		if own == "" {
			return "", fmt.Errorf("not known, nor is %s's own, so the copies of the two cannot be told apart; none destroyed", x.name)
		}
		owned[own] = true
		live = append(live, x)
	}
	found := map[hsm.KeyID]bool{}
	for _, x := range live {
		x.mu.RLock()
		for id := range x.holds {
			if strings.HasPrefix(string(id), kekPrefix) && !owned[id] {
				found[id] = true
			}
		}
		x.mu.RUnlock()
	}
	switch len(found) {
	case 0:
		return "", nil // no copy is left anywhere
	case 1:
		for id := range found {
			return id, nil
		}
	}
	return "", fmt.Errorf("not known, and %d key-encryption keys have no remaining owner; none destroyed", len(found))
}

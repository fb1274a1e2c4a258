package cluster

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/miekg/pkcs11"
)

// TestProbesAndRepairsRunTogether: health probes and anti-entropy passes
// at the same time (the race detector fails this test if they share
// member state unguarded), and every member stays healthy.
func TestProbesAndRepairsRunTogether(t *testing.T) {
	e := newEnv(t, 2, nil)
	ctx := context.Background()
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() { _, _ = e.c.AntiEntropy(ctx) })
		wg.Go(func() { _ = e.c.CheckHealth(ctx) })
	}
	wg.Wait()
	e.requireStates(Healthy, Healthy)
}

// TestCreationAfterJoinWithAMemberAway: m2 joins while m0 is down, so the
// two never exchange key-encryption keys. With every member back, each
// creation succeeds on all three: the origin is one whose
// key-encryption key both others hold.
func TestCreationAfterJoinWithAMemberAway(t *testing.T) {
	e := newEnv(t, 3, nil)
	ctx := context.Background()
	c := e.joinWhileAway()
	if err := e.sh.Members[0].Restart(); err != nil {
		t.Fatal(err)
	}
	_ = c.CheckHealth(ctx)
	for i := range 12 {
		id := hsm.KeyID(fmt.Sprintf("k%d", i))
		if _, err := c.GenerateKey(ctx, id, hsm.AES128, hsm.KeyOptions{}); err != nil {
			t.Fatalf("creation %d: %v", i, err)
		}
		for _, m := range c.members {
			if !m.has(id) {
				t.Fatalf("%s does not hold %s", m.name, id)
			}
		}
	}
}

// TestAwayMemberCompletesTheExchange: as TestCreationAfterJoinWithAMemberAway,
// with AutoJoin: when m0 comes back, the exchange the Join could not do
// with it runs, and m0 and m2 hold each other's key-encryption keys.
func TestAwayMemberCompletesTheExchange(t *testing.T) {
	e := newEnv(t, 3, func(c *Config) { c.AutoJoin = true })
	ctx := context.Background()
	c := e.joinWhileAway()
	_, _, kek0 := c.members[0].snapshot()
	_, _, kek2 := c.members[2].snapshot()
	if kek0 != "" || c.members[2].has(kek0) {
		t.Fatal("m0 was reachable during the Join")
	}
	if err := e.sh.Members[0].Restart(); err != nil {
		t.Fatal(err)
	}
	_ = c.CheckHealth(ctx)
	_, _, kek0 = c.members[0].snapshot()
	if kek0 == "" {
		t.Fatal("m0 did not come back")
	}
	if !c.members[0].has(kek2) || !c.members[2].has(kek0) {
		t.Fatalf("m0 and m2 do not hold each other's key-encryption keys")
	}
	// m2's KEK is on m0's token itself, not only in the cluster's memory.
	keys, err := c.members[0].token().ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(keys, func(k hsm.KeyInfo) bool { return k.ID == kek2 }) {
		t.Fatal("m0's token lacks m2's key-encryption key")
	}
}

// TestRemoveMemberDownSinceStart: a member down since the cluster started
// (its own key-encryption key never read) is removed, and the copies of
// its key-encryption key on the others are destroyed all the same.
func TestRemoveMemberDownSinceStart(t *testing.T) {
	e := newEnv(t, 3, nil)
	ctx := context.Background()
	_, _, kek2 := e.c.members[2].snapshot()
	c := e.restartWithDown(2)
	if err := c.Remove(ctx, "m2"); err != nil {
		t.Fatalf("Remove: %v (members: %+v)", err, c.Members())
	}
	for i := range 2 {
		keys, err := c.members[i].token().ListKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if k.ID == kek2 {
				t.Errorf("m%d still holds the removed member's key-encryption key", i)
			}
		}
	}
}

// plantLeftover makes key id directly on member i's token, as a creation
// that failed there in an earlier process would have left it, and lets
// an anti-entropy pass list it (the catalog does not know it, so it stays).
func (e *env) plantLeftover(i int, id hsm.KeyID) {
	e.t.Helper()
	ctx := context.Background()
	if _, err := e.c.members[i].token().GenerateKey(ctx, id, hsm.AES256, hsm.KeyOptions{Extractable: true}); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.c.AntiEntropy(ctx); err != nil {
		e.t.Fatal(err)
	}
	if !slices.Contains(e.tokenKeys(i), string(id)) {
		e.t.Fatalf("the anti-entropy pass destroyed the leftover %s", id)
	}
}

// sameMaterial fails the test unless members i and j of c hold the same
// key under id: a ciphertext made by i's token opens on j's.
func sameMaterial(t *testing.T, c *Cluster, id hsm.KeyID, i, j int) {
	t.Helper()
	ctx := context.Background()
	ct, iv, err := c.members[i].token().EncryptGCM(ctx, id, nil, []byte("which key?"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.members[j].token().DecryptGCM(ctx, id, iv, ct, nil); err != nil {
		t.Fatalf("m%d's copy of %s is not m%d's: %v", i, id, j, err)
	}
}

// TestLeftoverIsNotServed: m2 holds other material under an ID from a
// creation that failed in an earlier process (a key version whose
// rotation was cut off, say). A new creation under that ID succeeds on
// m0 and m1, a quorum of two, and m2's answer, ErrKeyExists, marks its copy suspect: with
// m0 and m1 down, the key is not served at all rather than served by m2.
// Once they are back, anti-entropy gives m2 the real key.
func TestLeftoverIsNotServed(t *testing.T) {
	e := newEnv(t, 3, func(c *Config) { c.WriteQuorum = 2 })
	ctx := context.Background()
	e.plantLeftover(2, "k/v2")
	if _, err := e.c.GenerateKey(ctx, "k/v2", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 1} {
		if err := e.sh.Members[i].Crash(); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := e.c.EncryptGCM(ctx, "k/v2", nil, []byte("x"), nil); err == nil {
		t.Fatal("m2 served the leftover under k/v2")
	}
	for _, i := range []int{0, 1} {
		if err := e.sh.Members[i].Restart(); err != nil {
			t.Fatal(err)
		}
	}
	e.check()
	e.requireStates(Healthy, Healthy, Healthy)
	if _, err := e.c.AntiEntropy(ctx); err != nil {
		t.Fatal(err)
	}
	sameMaterial(t, e.c, "k/v2", 2, 0)
}

// TestLeftoverReplacedAfterRestart: as TestLeftoverIsNotServed, but the
// process restarts before any anti-entropy pass, so the suspect mark is
// lost. The restarted cluster's re-sync finds that m2's copy does not
// match the catalog's check value, destroys it and copies the real key.
func TestLeftoverReplacedAfterRestart(t *testing.T) {
	e := newEnv(t, 3, func(c *Config) { c.WriteQuorum = 2 })
	ctx := context.Background()
	e.plantLeftover(2, "k/v2")
	for _, spec := range []hsm.KeySpec{hsm.AES256, hsm.HMAC256, hsm.ECP256} {
		if _, err := e.c.GenerateKey(ctx, hsm.KeyID("other-"+spec), spec, hsm.KeyOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.c.GenerateKey(ctx, "k/v2", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	rec, err := e.c.catalog.Get(ctx, "k/v2")
	if err != nil || len(rec.Check) == 0 {
		t.Fatalf("the record has no check value: %+v, %v", rec, err)
	}
	replaced := testutilCount(e.c.metrics.leftovers)
	c := e.restartWithDown(-1)
	if got := testutilCount(c.metrics.leftovers) - replaced; got != 1 {
		t.Fatalf("%v copies replaced, want 1 (m2's leftover, and no good copy); members %+v", got, c.Members())
	}
	sameMaterial(t, c, "k/v2", 2, 0)
	for _, i := range []int{0, 1, 2} {
		if !c.members[i].has("k/v2") {
			t.Errorf("m%d does not hold k/v2 after the re-sync", i)
		}
	}
}

// staleCatalog answers Get for one ID as if its record did not exist
// yet, as another process sees it a moment before this one's Create
// lands.
type staleCatalog struct {
	Catalog
	id    hsm.KeyID
	stale atomic.Bool
}

func (s *staleCatalog) Get(ctx context.Context, id hsm.KeyID) (KeyRecord, error) {
	if id == s.id && s.stale.Load() {
		return KeyRecord{}, fmt.Errorf("%w: not yet", hsm.ErrKeyNotFound)
	}
	return s.Catalog.Get(ctx, id)
}

// replica starts a second cluster over the same members, with catalog
// cat, as another service replica sharing them would; it is closed at
// the end of the test.
func (e *env) replica(cat Catalog) *Cluster {
	e.t.Helper()
	var opts []Option
	for i, m := range e.sh.Members {
		opts = append(opts, WithTokenOptions(e.cfg.Members[i].Name, hsm.WithInterceptor(m.Faults)))
	}
	c, err := New(context.Background(), e.cfg, append(opts, WithCatalog(cat), WithClock(newFakeClock()))...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestLosingReplicaKeepsTheWinnersKey: two replicas create one ID at
// once (both rotate a key to the same version, say). The first commits;
// the second finds the ID taken on every member and marks each copy
// suspect. Its next anti-entropy pass finds the ID live in the catalog
// and the copies matching its check value: it keeps them all.
func TestLosingReplicaKeepsTheWinnersKey(t *testing.T) {
	e := newEnv(t, 3, nil)
	ctx := context.Background()
	sc := &staleCatalog{Catalog: e.c.catalog, id: "k/v2"}
	loser := e.replica(sc)
	if _, err := e.c.GenerateKey(ctx, "k/v2", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	sc.stale.Store(true)
	if _, err := loser.GenerateKey(ctx, "k/v2", hsm.AES256, hsm.KeyOptions{}); err == nil {
		t.Fatal("the second creation of k/v2 succeeded")
	}
	sc.stale.Store(false)
	if _, err := loser.AntiEntropy(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if got := e.tokenKeys(i); !slices.Equal(got, []string{"k/v2"}) {
			t.Fatalf("m%d holds %v after the losing replica's pass", i, got)
		}
		if !loser.members[i].has("k/v2") {
			t.Errorf("the losing replica does not route k/v2 to m%d", i)
		}
	}
	if _, _, err := e.c.EncryptGCM(ctx, "k/v2", nil, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
}

// TestOtherReplicaDoesNotServeALeftover: a replica's anti-entropy pass
// lists m2's leftover while the catalog does not know the ID; another
// replica then creates the ID without m2 (quorum two). The first replica
// never routes the key to m2, and its next pass replaces m2's copy.
func TestOtherReplicaDoesNotServeALeftover(t *testing.T) {
	e := newEnv(t, 3, func(c *Config) { c.WriteQuorum = 2 })
	ctx := context.Background()
	other := e.replica(e.c.catalog)
	e.plantLeftover(2, "k/v2")
	if _, err := other.AntiEntropy(ctx); err != nil {
		t.Fatal(err)
	}
	if cv, err := other.Coverage(ctx); err != nil || !slices.Equal(cv.Orphans["m2"], []hsm.KeyID{"k/v2"}) {
		t.Fatalf("coverage orphans %v, %v; want m2's k/v2", cv.Orphans, err)
	}
	if _, err := e.c.GenerateKey(ctx, "k/v2", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	if other.members[2].has("k/v2") {
		t.Fatal("the other replica routes k/v2 to m2, which holds the leftover")
	}
	if _, err := other.AntiEntropy(ctx); err != nil {
		t.Fatal(err)
	}
	if !other.members[2].has("k/v2") {
		t.Fatal("m2 does not serve k/v2 after the pass")
	}
	sameMaterial(t, other, "k/v2", 2, 0)
}

// TestSyncingMemberDoesNotServeALeftover: m2, with a leftover under an
// ID, is not a write target (it is re-syncing) when the ID is created.
// It does not serve the key when it turns healthy.
func TestSyncingMemberDoesNotServeALeftover(t *testing.T) {
	e := newEnv(t, 3, func(c *Config) { c.WriteQuorum = 2 })
	ctx := context.Background()
	e.plantLeftover(2, "k/v2")
	m2 := e.c.members[2]
	e.c.setState(m2, Syncing, "test: re-sync in progress", nil)
	if _, err := e.c.GenerateKey(ctx, "k/v2", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	e.c.setState(m2, Healthy, "test: re-sync done", nil)
	if m2.has("k/v2") {
		t.Fatal("m2 routes k/v2 though it holds the leftover")
	}
}

// TestUnmatchedCheckValueDestroysNothing: a record whose check value no
// copy matches (a damaged catalog, say). After a restart no member
// serves the key, and none destroys its copy: with no copy of the real
// key at hand, nothing replaces it.
func TestUnmatchedCheckValueDestroysNothing(t *testing.T) {
	e := newEnv(t, 3, nil)
	ctx := context.Background()
	if _, err := e.c.GenerateKey(ctx, "k", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	mc := e.c.catalog.(*MemoryCatalog)
	mc.mu.Lock()
	rec := mc.m["k"]
	rec.Check = append([]byte{hsm.CheckValueV1}, "damaged!"...)
	mc.m["k"] = rec
	mc.mu.Unlock()
	c := e.restartWithDown(-1)
	for i := range 3 {
		if c.members[i].has("k") {
			t.Errorf("m%d serves k, whose copy does not match", i)
		}
		keys, err := c.members[i].token().ListKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(keys, func(k hsm.KeyInfo) bool { return k.ID == "k" }) {
			t.Errorf("m%d destroyed its copy of k", i)
		}
	}
	if testutilCount(c.metrics.leftovers) != 0 {
		t.Error("a copy was counted as replaced")
	}
}

// blockingCatalog holds, once armed, the next List after it has read
// the records (list) or before (listBefore), or the next Create before it
// writes, as a slow shared database would: entered is closed when it
// holds, release lets it go.
type blockingCatalog struct {
	Catalog
	list, listBefore, create atomic.Bool
	entered, release         chan struct{}
}

func newBlockingCatalog(c Catalog) *blockingCatalog {
	return &blockingCatalog{Catalog: c, entered: make(chan struct{}), release: make(chan struct{})}
}

func (b *blockingCatalog) List(ctx context.Context) ([]KeyRecord, error) {
	if b.listBefore.CompareAndSwap(true, false) {
		close(b.entered)
		<-b.release
	}
	recs, err := b.Catalog.List(ctx)
	if b.list.CompareAndSwap(true, false) {
		close(b.entered)
		<-b.release
	}
	return recs, err
}

func (b *blockingCatalog) Create(ctx context.Context, rec KeyRecord) (KeyRecord, error) {
	if b.create.CompareAndSwap(true, false) {
		close(b.entered)
		<-b.release
	}
	return b.Catalog.Create(ctx, rec)
}

// TestCreationDuringAPassStaysServed: a key is created while an
// anti-entropy pass has read the catalog and not yet published what the
// member holds. The member still serves the key after the pass: with the
// other member down, calls on it succeed.
func TestCreationDuringAPassStaysServed(t *testing.T) {
	e := newEnv(t, 2, nil)
	ctx := context.Background()
	bc := newBlockingCatalog(e.c.catalog)
	c := e.replica(bc)
	bc.list.Store(true)
	done := make(chan error, 1)
	go func() { _, err := c.AntiEntropy(ctx); done <- err }()
	<-bc.entered
	if _, err := c.GenerateKey(ctx, "new", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	close(bc.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := e.sh.Members[1].Crash(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.EncryptGCM(ctx, "new", nil, []byte("x"), nil); err != nil {
		t.Fatalf("m0 no longer serves a key created during its pass: %v", err)
	}
}

// passDuringReplicaCreation has replica B, sharing a's catalog, create
// id, and runs a's anti-entropy pass while B's catalog write is held; it
// fails the test unless B's creation succeeds and B's key works.
func (e *env) passDuringReplicaCreation(a *Cluster, id hsm.KeyID) {
	e.t.Helper()
	ctx := context.Background()
	bc := newBlockingCatalog(a.catalog)
	b := e.replica(bc)
	bc.create.Store(true)
	created := make(chan error, 1)
	go func() { _, err := b.GenerateKey(ctx, id, hsm.AES256, hsm.KeyOptions{}); created <- err }()
	<-bc.entered
	if _, err := a.AntiEntropy(ctx); err != nil {
		e.t.Fatal(err)
	}
	close(bc.release)
	if err := <-created; err != nil {
		e.t.Fatalf("B's creation: %v", err)
	}
	if _, _, err := b.EncryptGCM(ctx, id, nil, []byte("x"), nil); err != nil {
		e.t.Fatalf("B's committed key has no material: %v", err)
	}
}

// TestSuspectOfAnotherProcessIsKept: replica A's creation of k/v2 failed
// midway on every member, which marks them suspect. Replica B then
// creates k/v2; while B's catalog write is still to come, A's
// anti-entropy pass runs: it keeps B's copies (the catalog does not list
// the ID, but the marks are younger than leftoverGrace), and B's key
// works. An ID the catalog still does not know after leftoverGrace is
// destroyed.
func TestSuspectOfAnotherProcessIsKept(t *testing.T) {
	e := newEnv(t, 3, nil)
	ctx := context.Background()
	a := e.c
	for _, m := range a.members {
		a.markSuspect(m, "k/v2", context.DeadlineExceeded)
		a.markSuspect(m, "left", context.DeadlineExceeded)
		if _, err := m.token().GenerateKey(ctx, "left", hsm.AES256, hsm.KeyOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	e.passDuringReplicaCreation(a, "k/v2")
	e.clock.Advance(leftoverGrace)
	if _, err := a.AntiEntropy(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if got := e.tokenKeys(i); !slices.Equal(got, []string{"k/v2"}) {
			t.Errorf("m%d holds %v, want k/v2 kept and the leftover gone", i, got)
		}
		if !a.members[i].has("k/v2") {
			t.Errorf("A does not serve k/v2 on m%d", i)
		}
	}
}

// TestExchangeFinishedByAntiEntropy: as TestAwayMemberCompletesTheExchange,
// but another ceremony runs while m0 recovers, so its exchange waits; the
// next anti-entropy pass finishes it.
func TestExchangeFinishedByAntiEntropy(t *testing.T) {
	e := newEnv(t, 3, func(c *Config) { c.AutoJoin = true })
	ctx := context.Background()
	c := e.joinWhileAway()
	if err := e.sh.Members[0].Restart(); err != nil {
		t.Fatal(err)
	}
	c.ceremonyMu.Lock() // another ceremony
	_ = c.CheckHealth(ctx)
	c.ceremonyMu.Unlock()
	_, _, kek0 := c.members[0].snapshot()
	_, _, kek2 := c.members[2].snapshot()
	if kek0 == "" || c.members[0].has(kek2) {
		t.Fatal("m0 is not back, or exchanged during another ceremony")
	}
	if _, err := c.AntiEntropy(ctx); err != nil {
		t.Fatal(err)
	}
	if !c.members[0].has(kek2) || !c.members[2].has(kek0) {
		t.Fatal("m0 and m2 do not hold each other's key-encryption keys after the pass")
	}
}

// TestCommitBetweenListingAndCatalogRead: a key is created after a pass
// of m0 listed its token and before it read the catalog, and m1 then goes
// down. m0 serves the key after the pass.
func TestCommitBetweenListingAndCatalogRead(t *testing.T) {
	e := newEnv(t, 2, nil)
	ctx := context.Background()
	bc := newBlockingCatalog(e.c.catalog)
	c := e.replica(bc)
	bc.listBefore.Store(true)
	done := make(chan error, 1)
	go func() { _, err := c.repair(ctx, c.members[0]); done <- err }()
	<-bc.entered
	if _, err := c.GenerateKey(ctx, "new", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.sh.Members[1].Crash(); err != nil {
		t.Fatal(err)
	}
	c.setState(c.members[1], Down, "test: crashed", nil)
	close(bc.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.EncryptGCM(ctx, "new", nil, []byte("x"), nil); err != nil {
		t.Fatalf("m0 does not serve a key committed during its pass: %v", err)
	}
}

// TestOldMarkKeepsAnotherProcessCreation: replica A's marks on k/v3 are
// older than leftoverGrace when replica B creates k/v3 (no pass of A's
// ran meanwhile). A's pass, which runs while B's catalog write is still
// to come, sees B's copies for the first time and keeps them; B's key
// works.
func TestOldMarkKeepsAnotherProcessCreation(t *testing.T) {
	e := newEnv(t, 3, nil)
	a := e.c
	for _, m := range a.members {
		a.markSuspect(m, "k/v3", context.DeadlineExceeded)
	}
	e.clock.Advance(leftoverGrace) // no pass ran meanwhile (A's members were away, say)
	e.passDuringReplicaCreation(a, "k/v3")
}

// TestLeftoverClearedAfterGrace: m2 holds a leftover under an ID
// (default quorum: every member). A creation of the ID fails, and so does
// an immediate retry, since the leftover may be another process's
// creation in progress; once listings have shown it for leftoverGrace,
// the retry destroys it and succeeds, and all three members hold the new
// key.
func TestLeftoverClearedAfterGrace(t *testing.T) {
	e := newEnv(t, 3, nil)
	ctx := context.Background()
	e.plantLeftover(2, "integrity")
	for range 2 {
		if _, err := e.c.GenerateKey(ctx, "integrity", hsm.HMAC256, hsm.KeyOptions{}); !errors.Is(err, hsm.ErrKeyExists) {
			t.Fatalf("creation over a young leftover: %v, want ErrKeyExists", err)
		}
	}
	e.clock.Advance(leftoverGrace)
	if _, err := e.c.GenerateKey(ctx, "integrity", hsm.HMAC256, hsm.KeyOptions{}); err != nil {
		t.Fatalf("creation once the leftover is old: %v", err)
	}
	for i := range 3 {
		mac, err := e.c.members[i].token().MAC(ctx, "integrity", crypto.SHA256, []byte("m"))
		if err != nil {
			t.Fatal(err)
		}
		if err := e.c.members[0].token().VerifyMAC(ctx, "integrity", crypto.SHA256, []byte("m"), mac); err != nil {
			t.Fatalf("m%d holds other material: %v", i, err)
		}
	}
}

// TestReplacedLeftoverStartsItsGraceAfresh: replica A has seen a
// leftover under k/v3 on every member for leftoverGrace and marked it
// suspect. Replica B replaces it: B destroys it and creates k/v3, and its
// catalog write is still to come when A's pass runs. A sees another
// object under the ID (its check value differs) and keeps it; B's key
// works.
func TestReplacedLeftoverStartsItsGraceAfresh(t *testing.T) {
	e := newEnv(t, 3, nil)
	ctx := context.Background()
	a := e.c
	for i, m := range a.members {
		if _, err := m.token().GenerateKey(ctx, "k/v3", hsm.AES256, hsm.KeyOptions{Extractable: true}); err != nil {
			t.Fatal(err)
		}
		a.markSuspect(a.members[i], "k/v3", hsm.ErrKeyExists)
	}
	if _, err := a.AntiEntropy(ctx); err != nil { // A sees the leftovers
		t.Fatal(err)
	}
	e.clock.Advance(leftoverGrace)
	for _, m := range a.members { // B clears them, as its own grace allowed
		if err := m.token().DestroyKey(ctx, "k/v3"); err != nil {
			t.Fatal(err)
		}
	}
	e.passDuringReplicaCreation(a, "k/v3")
}

// TestForeignLeftoverAgesWithoutPasses: with no anti-entropy at all, a
// creation that finds its ID taken on m2 starts the leftover's grace
// itself; a retry once it has passed destroys the leftover and succeeds.
func TestForeignLeftoverAgesWithoutPasses(t *testing.T) {
	e := newEnv(t, 3, nil)
	ctx := context.Background()
	if _, err := e.c.members[2].token().GenerateKey(ctx, "id", hsm.AES256, hsm.KeyOptions{Extractable: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.GenerateKey(ctx, "id", hsm.AES256, hsm.KeyOptions{}); !errors.Is(err, hsm.ErrKeyExists) {
		t.Fatalf("creation over a leftover: %v, want ErrKeyExists", err)
	}
	e.clock.Advance(leftoverGrace)
	if _, err := e.c.GenerateKey(ctx, "id", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatalf("retry once the grace has passed: %v", err)
	}
	sameMaterial(t, e.c, "id", 2, 0)
}

// TestCreationWithoutCheckValueRollsBack: m2 holds a leftover under
// k/v2, and the new key's check value cannot be read on m0 or m1 (a
// device error). The creation is rolled back rather than recorded
// without a check value, which would let m2's leftover pass for the key
// later; a retry records it.
func TestCreationWithoutCheckValueRollsBack(t *testing.T) {
	e := newEnv(t, 3, func(c *Config) { c.WriteQuorum = 2 })
	ctx := context.Background()
	e.plantLeftover(2, "k/v2")
	for _, i := range []int{0, 1} {
		e.sh.Members[i].Faults.FailNext(hsm.OpCheckValue, 2, pkcs11.CKR_DEVICE_ERROR) // the call and hsm's retry on a fresh session
	}
	if _, err := e.c.GenerateKey(ctx, "k/v2", hsm.AES256, hsm.KeyOptions{}); !errors.Is(err, ErrQuorum) {
		t.Fatalf("creation without a check value: %v, want ErrQuorum", err)
	}
	if _, err := e.c.catalog.Get(ctx, "k/v2"); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Fatalf("the catalog records k/v2: %v", err)
	}
	for _, i := range []int{0, 1} {
		if got := e.tokenKeys(i); len(got) != 0 {
			t.Fatalf("m%d keeps %v after the rollback", i, got)
		}
	}
	if _, err := e.c.GenerateKey(ctx, "k/v2", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if rec, err := e.c.catalog.Get(ctx, "k/v2"); err != nil || len(rec.Check) == 0 {
		t.Fatalf("record %+v, %v: want a check value", rec, err)
	}
	sameMaterial(t, e.c, "k/v2", 1, 0)
}

// joinWhileAway restarts the cluster with m0 down, replaces m2's HSM by
// a fresh one and joins it: m0 and m2 never exchange key-encryption
// keys. m0 is left down.
func (e *env) joinWhileAway() *Cluster {
	e.t.Helper()
	c := e.restartWithDown(0)
	if err := e.sh.Members[2].Wipe(); err != nil {
		e.t.Fatal(err)
	}
	_ = c.CheckHealth(context.Background())
	if err := c.Join(context.Background(), "m2"); err != nil {
		e.t.Fatalf("Join: %v", err)
	}
	return c
}

// restartWithDown closes the cluster under test, crashes member down
// (none when down is negative), and starts a new cluster over the same
// members and catalog, as a process restarted while that member's HSM is
// away would. The new cluster is closed at the end of the test.
func (e *env) restartWithDown(down int) *Cluster {
	e.t.Helper()
	if err := e.c.Close(); err != nil {
		e.t.Fatal(err)
	}
	if down >= 0 {
		if err := e.sh.Members[down].Crash(); err != nil {
			e.t.Fatal(err)
		}
	}
	var opts []Option
	for i, m := range e.sh.Members {
		opts = append(opts, WithTokenOptions(e.cfg.Members[i].Name, hsm.WithInterceptor(m.Faults)))
	}
	c, err := New(context.Background(), e.cfg, append(opts, WithCatalog(e.c.catalog), WithClock(newFakeClock()))...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestDestroyLeftover: what a creation left under an ID the catalog does
// not list goes at once, on every member that holds it, so that the ID
// can be created again without leftoverGrace; a member that cannot
// destroy its object is named and keeps it; an ID the catalog lists, and
// the cluster's own IDs, are refused and lose nothing.
func TestDestroyLeftover(t *testing.T) {
	e := newEnv(t, 3, nil)
	ctx := context.Background()
	e.plantLeftover(0, "integrity")
	e.plantLeftover(2, "integrity")
	if _, err := e.c.GenerateKey(ctx, "integrity", hsm.HMAC256, hsm.KeyOptions{}); !errors.Is(err, hsm.ErrKeyExists) {
		t.Fatalf("creation over the leftovers: %v, want ErrKeyExists", err)
	}

	e.sh.Members[2].Faults.FailNext(hsm.OpDestroyKey, 5, 0x30) // CKR_DEVICE_ERROR
	err := e.c.DestroyLeftover(ctx, "integrity")
	if err == nil || !strings.Contains(err.Error(), "m2") || strings.Contains(err.Error(), "m0") {
		t.Fatalf("DestroyLeftover with m2 failing: %v, want an error naming m2 alone", err)
	}
	if slices.Contains(e.tokenKeys(0), "integrity") || !slices.Contains(e.tokenKeys(2), "integrity") {
		t.Fatalf("after a failure on m2: m0 holds %v, m2 holds %v; want the leftover on m2 only", e.tokenKeys(0), e.tokenKeys(2))
	}
	e.sh.Members[2].Faults.FailNext(hsm.OpDestroyKey, 0, 0)
	e.check()
	if err := e.c.DestroyLeftover(ctx, "integrity"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if slices.Contains(e.tokenKeys(i), "integrity") {
			t.Fatalf("m%d still holds the leftover", i)
		}
	}

	// No grace: the ID is free at once.
	if _, err := e.c.GenerateKey(ctx, "integrity", hsm.HMAC256, hsm.KeyOptions{}); err != nil {
		t.Fatalf("creation after DestroyLeftover: %v", err)
	}
	mac, err := e.c.MAC(ctx, "integrity", crypto.SHA256, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := e.c.members[i].token().VerifyMAC(ctx, "integrity", crypto.SHA256, []byte("m"), mac); err != nil {
			t.Fatalf("m%d holds other material: %v", i, err)
		}
	}

	// A listed key is no leftover, and reserved IDs belong to the cluster.
	if err := e.c.DestroyLeftover(ctx, "integrity"); !errors.Is(err, hsm.ErrKeyExists) {
		t.Fatalf("DestroyLeftover of a live key: %v, want ErrKeyExists", err)
	}
	if _, err := e.c.MAC(ctx, "integrity", crypto.SHA256, []byte("m")); err != nil {
		t.Fatalf("the live key after a refused DestroyLeftover: %v", err)
	}
	if err := e.c.DestroyLeftover(ctx, hsm.KeyID(reservedPrefix+"kek")); !errors.Is(err, hsm.ErrInvalidInput) {
		t.Fatalf("DestroyLeftover of a reserved ID: %v, want ErrInvalidInput", err)
	}
	if err := e.c.DestroyLeftover(ctx, ""); !errors.Is(err, hsm.ErrInvalidInput) {
		t.Fatalf("DestroyLeftover of an empty ID: %v, want ErrInvalidInput", err)
	}
}

package cluster

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
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
	c := e.restartWithDown(0)
	if err := e.sh.Members[2].Wipe(); err != nil {
		t.Fatal(err)
	}
	_ = c.CheckHealth(ctx)
	if err := c.Join(ctx, "m2"); err != nil {
		t.Fatalf("Join: %v", err)
	}
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

// TestRemoveMemberDownSinceStart: a member down since the cluster started
// (its own key-encryption key never read) is removed, and the copies of
// its key-encryption key on the others are destroyed all the same.
func TestRemoveMemberDownSinceStart(t *testing.T) {
	e := newEnv(t, 3, nil)
	ctx := context.Background()
	_, _, kek2 := e.c.members[2].snapshot()
	c := e.restartWithDown(2)
	if err := c.Remove(ctx, "m2"); err != nil {
		t.Fatalf("Remove: %v", err)
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
		t.Errorf("%v copies replaced, want 1 (m2's leftover, and no good copy)", got)
	}
	sameMaterial(t, c, "k/v2", 2, 0)
	for _, i := range []int{0, 1, 2} {
		if !c.members[i].has("k/v2") {
			t.Errorf("m%d does not hold k/v2 after the re-sync", i)
		}
	}
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

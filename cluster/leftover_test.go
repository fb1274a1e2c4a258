package cluster

import (
	"context"
	"fmt"
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

// restartWithDown closes the cluster under test, crashes member down,
// and starts a new cluster over the same members and catalog, as a
// process restarted while that member's HSM is away would. The new
// cluster is closed at the end of the test.
func (e *env) restartWithDown(down int) *Cluster {
	e.t.Helper()
	if err := e.c.Close(); err != nil {
		e.t.Fatal(err)
	}
	if err := e.sh.Members[down].Crash(); err != nil {
		e.t.Fatal(err)
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

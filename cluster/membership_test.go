package cluster

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
)

func TestRemoveMember(t *testing.T) {
	e := newEnv(t, 3, nil)
	ctx := context.Background()
	kek := e.c.members[2].kek
	if err := e.c.Remove(ctx, "m2"); err != nil {
		t.Fatal(err)
	}
	if st := e.c.Members()[2]; st.State != Down || st.Reason != "removed" {
		t.Fatalf("removed member: %+v", st)
	}
	for i := range 2 {
		for _, k := range e.allTokenKeys(i) {
			if k.ID == kek {
				t.Fatalf("member %d still holds the removed member's KEK", i)
			}
		}
	}
	// Quorum counts the two left; the removed member is neither written
	// to nor reported missing, and probes leave it alone.
	if _, err := e.c.GenerateKey(ctx, "after-remove", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	e.check()
	cv, err := e.c.Coverage(ctx)
	if err != nil || len(cv.UnderReplicated()) != 0 || len(cv.Keys[0].Holders) != 2 {
		t.Fatalf("coverage %+v %v", cv, err)
	}
	if st := e.c.Members()[2]; st.State != Down {
		t.Fatalf("a probe revived the removed member: %v", st.State)
	}
	// Down to one member: a cluster of one, whose keys need one copy.
	if err := e.c.Remove(ctx, "m1"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.GenerateKey(ctx, "alone", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatalf("creation with one member left: %v", err)
	}
	if err := e.c.Remove(ctx, "nobody"); !errors.Is(err, ErrUnknownMember) {
		t.Fatalf("remove unknown: %v", err)
	}
}

func TestAntiEntropyRepairsDivergence(t *testing.T) {
	e := newEnv(t, 3, func(c *Config) { c.AntiEntropyInterval = time.Hour })
	ctx := context.Background()
	for _, id := range []hsm.KeyID{"ae-1", "ae-2"} {
		if _, err := e.c.GenerateKey(ctx, id, hsm.ECP256, hsm.KeyOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Behind the cluster's back: a key vanishes from m1, and m2 gets a key
	// the catalog does not know.
	if err := e.c.members[1].token().DestroyKey(ctx, "ae-2"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.members[2].token().GenerateKey(ctx, "stray", hsm.AES128, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	// The periodic pass runs on the clock.
	copied := func() float64 { return testutilCount(e.c.metrics.keysCopied) }
	before := copied()
	e.clock.Advance(time.Hour)
	waitFor(t, func() bool { return copied() > before })
	if got := e.tokenKeys(1); !slices.Equal(got, []string{"ae-1", "ae-2"}) {
		t.Fatalf("m1 holds %v after anti-entropy", got)
	}
	stats, err := e.c.AntiEntropy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range stats {
		if s.Copied != 0 || s.Destroyed != 0 || s.Failed != 0 {
			t.Fatalf("second pass changed %s: %+v", name, s)
		}
	}
	cv, err := e.c.Coverage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cv.Orphans["m2"], []hsm.KeyID{"stray"}) {
		t.Fatalf("orphans %v, want stray on m2", cv.Orphans)
	}
}

func TestAutoJoinAfterWipe(t *testing.T) {
	e := newEnv(t, 2, func(c *Config) { c.AutoJoin = true })
	ctx := context.Background()
	if _, err := e.c.GenerateKey(ctx, "aj", hsm.HMAC256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.sh.Members[0].Wipe(); err != nil {
		t.Fatal(err)
	}
	e.check() // finds the replaced token, joins it, re-syncs it
	e.requireStates(Healthy, Healthy)
	if got := e.tokenKeys(0); !slices.Equal(got, []string{"aj"}) {
		t.Fatalf("m0 holds %v after auto-join", got)
	}
	var sawJoin bool
	e.c.flushEvents()
	for len(e.events) > 0 {
		ev := <-e.events
		if ev.Member == "m0" && ev.To == Down && strings.Contains(ev.Reason, "replaced") {
			sawJoin = true
		}
	}
	if !sawJoin {
		t.Fatal("no event said m0's token was replaced")
	}
}

func TestClosedCluster(t *testing.T) {
	e := newEnv(t, 2, nil)
	if err := e.c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	ctx := context.Background()
	if _, err := e.c.GenerateKey(ctx, "x", hsm.AES256, hsm.KeyOptions{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("generate after close: %v", err)
	}
	if _, err := e.c.Random(ctx, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("random after close: %v", err)
	}
}

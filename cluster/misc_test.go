package cluster

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestNewDoesNotTouchCallersConfig(t *testing.T) {
	e := newEnv(t, 2, nil)
	cfg := e.cfg
	names := []string{cfg.Members[0].Name, cfg.Members[1].Name}
	e.c.cfg.Members[0].Name = "changed"
	if cfg.Members[0].Name != names[0] {
		t.Fatal("the cluster shares the caller's member slice")
	}
}

func TestUnwrapKeyImportsAndReplicates(t *testing.T) {
	e := newEnv(t, 3, nil)
	ctx := context.Background()
	if _, err := e.c.GenerateKey(ctx, "import-key", hsm.RSA2048, hsm.KeyOptions{Usage: hsm.UsageWrap}); err != nil {
		t.Fatal(err)
	}
	der, err := e.c.PublicKey(ctx, "import-key")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		t.Fatal(err)
	}
	material := make([]byte, 32)
	_, _ = rand.Read(material)
	wrapped, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, pub.(*rsa.PublicKey), material, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.c.UnwrapKey(ctx, hsm.UnwrapRequest{
		WrappingKey: "import-key", Wrapping: hsm.Wrapping{Mechanism: hsm.RSAOAEP, Hash: crypto.SHA1},
		Wrapped: wrapped, ID: "imported", Spec: hsm.AES256,
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if !slices.Contains(e.tokenKeys(i), "imported") {
			t.Fatalf("member %d lacks the imported key", i)
		}
	}
	ct, iv, err := e.c.members[0].token().EncryptGCM(ctx, "imported", nil, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.members[2].token().DecryptGCM(ctx, "imported", iv, ct, nil); err != nil {
		t.Fatal(err)
	}
	// The cluster's own keys are off limits.
	if _, err := e.c.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: e.c.members[0].kek, Wrapping: hsm.Wrapping{Mechanism: hsm.AESKeyWrapPad},
		Wrapped: wrapped, ID: "x", Spec: hsm.AES256}); !errors.Is(err, hsm.ErrInvalidInput) {
		t.Fatalf("unwrap under the KEK: %v", err)
	}
	if _, _, err := e.c.EncryptGCM(ctx, e.c.members[0].kek, nil, []byte("x"), nil); !errors.Is(err, hsm.ErrInvalidInput) {
		t.Fatalf("encrypt under the KEK: %v", err)
	}
}

func TestEventsNeverBlockAndMetricsCount(t *testing.T) {
	e := newEnv(t, 2, nil)
	ctx := context.Background()
	for len(e.events) < cap(e.events) {
		e.events <- Event{} // a full channel nobody reads
	}
	if err := e.sh.Members[0].Crash(); err != nil {
		t.Fatal(err)
	}
	e.check() // would hang if a send blocked
	e.c.flushEvents()
	if got := testutil.ToFloat64(e.c.metrics.eventsDropped); got < 1 {
		t.Fatalf("dropped events %v, want at least 1", got)
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(e.c.Collector()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Random(ctx, 16); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range families {
		names = append(names, f.GetName())
	}
	for _, want := range []string{"hsmkms_cluster_member_state", "hsmkms_cluster_member_in_flight", "hsmkms_cluster_operations_total",
		"hsmkms_cluster_member_operation_duration_seconds", "hsmkms_cluster_events_dropped_total"} {
		if !slices.Contains(names, want) {
			t.Errorf("metric %s missing from %v", want, names)
		}
	}
	n, err := testutil.GatherAndCount(reg, "hsmkms_cluster_member_state")
	if err != nil || n != 8 {
		t.Fatalf("member_state series %d (%v), want 2 members x 4 states", n, err)
	}
	down := testutil.ToFloat64(e.c.metrics.clusterOps.WithLabelValues("random", "ok"))
	if down != 1 {
		t.Fatalf("random ok count %v", down)
	}
	if err := testutil.CollectAndCompare(e.c.Collector(), strings.NewReader(`
# HELP hsmkms_cluster_member_state 1 for the member's current state (down, syncing, degraded, healthy).
# TYPE hsmkms_cluster_member_state gauge
hsmkms_cluster_member_state{member="m0",state="degraded"} 0
hsmkms_cluster_member_state{member="m0",state="down"} 1
hsmkms_cluster_member_state{member="m0",state="healthy"} 0
hsmkms_cluster_member_state{member="m0",state="syncing"} 0
hsmkms_cluster_member_state{member="m1",state="degraded"} 0
hsmkms_cluster_member_state{member="m1",state="down"} 0
hsmkms_cluster_member_state{member="m1",state="healthy"} 1
hsmkms_cluster_member_state{member="m1",state="syncing"} 0
`), "hsmkms_cluster_member_state"); err != nil {
		t.Fatal(err)
	}
}

func TestBoltCatalogSurvivesAClusterRestart(t *testing.T) {
	e := newEnv(t, 2, nil)
	ctx := context.Background()
	cat, err := OpenBoltCatalog(filepath.Join(t.TempDir(), "c.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	// A second cluster over the same members, with a bbolt catalog.
	c1, err := New(ctx, e.cfg, WithCatalog(cat), WithClock(newFakeClock()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c1.GenerateKey(ctx, "durable", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	c2, err := New(ctx, e.cfg, WithCatalog(cat), WithClock(newFakeClock()))
	if err != nil {
		t.Fatal(err)
	}
	if err := c1.Close(); err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, _, err := c2.EncryptGCM(ctx, "durable", nil, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	cv, err := c2.Coverage(ctx)
	if err != nil || len(cv.Keys) != 1 || len(cv.Keys[0].Holders) != 2 {
		t.Fatalf("coverage %+v %v", cv, err)
	}
}

func TestSelfReplicatingMemberCountsForQuorum(t *testing.T) {
	// One member declared as a CloudHSM-like cluster of 2 HSMs: with the
	// other member down, a key on it alone meets a quorum of 2.
	e := newEnv(t, 2, func(c *Config) { c.Members[0].Replicas = 2; c.WriteQuorum = 2 })
	ctx := context.Background()
	if err := e.sh.Members[1].Crash(); err != nil {
		t.Fatal(err)
	}
	e.check()
	if _, err := e.c.GenerateKey(ctx, "on-cloudhsm", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.sh.Members[1].Restart(); err != nil {
		t.Fatal(err)
	}
	e.check()
	if err := e.sh.Members[0].Crash(); err != nil {
		t.Fatal(err)
	}
	e.check()
	// m1 alone stands for one copy: not enough.
	if _, err := e.c.GenerateKey(ctx, "on-softhsm", hsm.AES256, hsm.KeyOptions{}); !errors.Is(err, ErrQuorum) {
		t.Fatalf("got %v, want ErrQuorum", err)
	}
	// m1 got the first key when it came back.
	if _, _, err := e.c.EncryptGCM(ctx, "on-cloudhsm", nil, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
}

func TestStartWithAMemberBehind(t *testing.T) {
	// A key created while m1 was down, then the process restarts: the new
	// cluster brings m1 up to date before serving, with no probe needed.
	e := newEnv(t, 3, nil)
	ctx := context.Background()
	e.sh.Members[1].Faults.SetDown(true)
	e.check()
	if _, err := e.c.GenerateKey(ctx, "behind", hsm.ECP256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	e.sh.Members[1].Faults.SetDown(false)
	c2, err := New(ctx, e.cfg, WithCatalog(e.c.catalog), WithClock(newFakeClock()))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	cv, err := c2.Coverage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(cv.UnderReplicated()) != 0 {
		t.Fatalf("under-replicated at start: %+v", cv.UnderReplicated())
	}
	if !slices.Contains(e.tokenKeys(1), "behind") {
		t.Fatal("m1 lacks the key")
	}
}

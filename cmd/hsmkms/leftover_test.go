package main

import (
	"context"
	"crypto"
	"errors"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/hsmkms/hsmkms/cluster"
	"github.com/hsmkms/hsmkms/hsm"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
)

// A first start dies after two of three members made the integrity key
// and before the catalog recorded it. Every later start fails and names
// the way out. destroy-leftover, run with no server, refuses while the
// members hold another key the catalog does not list (another
// deployment's HSMs?) unless forced, then removes the objects under the
// ID and nothing else; it refuses a key the catalog lists. The next
// start makes the key on every member and serves.
func TestDestroyLeftoverAfterADeadFirstStart(t *testing.T) {
	sh := softhsmtest.New(t, 3)
	path := writeFile(t, "hsmkms.yaml", serverYAML(t, sh, ""))
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id := cfg.Adapter.IntegrityKeyID
	// Every token is opened through its member's Faults; the command line
	// cannot pass them, so the test calls destroyLeftover as
	// runDestroyLeftover does.
	opts := memberOptions(&cfg, sh)

	// The dead first start: a bootstrapped cluster, and the integrity
	// key's copies on hsm-0 and hsm-2 that no catalog lists.
	cat, err := cluster.OpenBoltCatalog(cfg.CatalogPath)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := cluster.New(ctx, cfg.Cluster, append(opts, cluster.WithCatalog(cat))...)
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cl.Close(); err != nil {
		t.Fatal(err)
	}
	if err := cat.Close(); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 2} {
		if _, err := sh.Members[i].Open(t).GenerateKey(ctx, id, hsm.HMAC256, hsm.KeyOptions{Usage: hsm.UsageSign, Extractable: true}); err != nil {
			t.Fatal(err)
		}
	}

	log := newLogger(&strings.Builder{}, 8)
	if _, err := startServer(ctx, cfg, log, opts...); err == nil || !strings.Contains(err.Error(), "hsmkms destroy-leftover --config <this configuration> --key "+string(id)) {
		t.Fatalf("start over the leftovers: %v, want the way out named", err)
	}

	for _, args := range [][]string{{"--config", path}, {"--key", string(id)}, {"--config", path, "--key", string(id), "extra"}} {
		var stderr strings.Builder
		if code := run(ctx, append([]string{"destroy-leftover"}, args...), &strings.Builder{}, &stderr); code != 2 {
			t.Fatalf("destroy-leftover %q: exit %d, want 2; %s", args, code, stderr.String())
		}
	}
	// Another key the catalog does not list: perhaps another deployment's,
	// whose integrity key this ID could be. Refused without --force.
	if _, err := sh.Members[1].Open(t).GenerateKey(ctx, "another-deployment/v1", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := destroyLeftover(ctx, cfg, id, false, log, opts...); err == nil || !strings.Contains(err.Error(), "hsm-1:another-deployment/v1") {
		t.Fatalf("destroy-leftover beside another unlisted key: %v, want a refusal naming it", err)
	}
	if _, err := sh.Members[0].Open(t).Describe(ctx, id); err != nil {
		t.Fatalf("a refused destroy-leftover destroyed hsm-0's object: %v", err)
	}
	if err := destroyLeftover(ctx, cfg, id, true, log, opts...); err != nil {
		t.Fatalf("destroy-leftover --force: %v", err)
	}
	if _, err := sh.Members[1].Open(t).Describe(ctx, "another-deployment/v1"); err != nil {
		t.Fatalf("destroy-leftover destroyed another key: %v", err)
	}

	s, err := startServer(ctx, cfg, log, opts...)
	if err != nil {
		t.Fatalf("start after destroy-leftover: %v", err)
	}
	if _, err := s.adapter.CreateKey(ctx, &kms.CreateKeyInput{}); err != nil {
		t.Fatal(err)
	}
	// A member still syncing when the key was made gets it from a pass.
	if _, err := s.cluster.AntiEntropy(ctx); err != nil {
		t.Fatal(err)
	}
	s.closeBackends()
	_ = s.listener.Close()
	mac, err := sh.Members[0].Open(t).MAC(ctx, id, crypto.SHA256, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range sh.Members[1:] {
		if err := m.Open(t).VerifyMAC(ctx, id, crypto.SHA256, []byte("m"), mac); err != nil {
			t.Fatalf("hsm-%d holds other material under %s: %v", i+1, id, err)
		}
	}

	// The key now in the catalog is no leftover: refused, and kept.
	if err := destroyLeftover(ctx, cfg, id, true, log, opts...); !errors.Is(err, hsm.ErrKeyExists) || !strings.Contains(err.Error(), "in the catalog") {
		t.Fatalf("destroy-leftover of the live key: %v, want ErrKeyExists", err)
	}
	s, err = startServer(ctx, cfg, log, opts...)
	if err != nil {
		t.Fatalf("start after a refused destroy-leftover: %v", err)
	}
	s.closeBackends()
	_ = s.listener.Close()
}

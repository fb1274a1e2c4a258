package main

import (
	"context"
	"crypto"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/hsmkms/hsmkms/cluster"
	"github.com/hsmkms/hsmkms/hsm"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
)

// A first start dies after two of three members made the integrity key
// and before the catalog recorded it. Every later start fails and names
// the way out; destroy-leftover, run with no server, removes the objects
// (and refuses a key the catalog lists), and the next start makes the
// key on every member and serves.
func TestDestroyLeftoverAfterADeadFirstStart(t *testing.T) {
	sh := softhsmtest.New(t, 3)
	dir := t.TempDir()
	var members strings.Builder
	for i, m := range sh.Members {
		fmt.Fprintf(&members, "    - name: hsm-%d\n      uri: %q\n", i, m.URI())
	}
	path := writeFile(t, "hsmkms.yaml", `
listen: 127.0.0.1:0
metadata: {path: `+filepath.Join(dir, "metadata.db")+`}
catalog: {path: `+filepath.Join(dir, "catalog.db")+`}
cluster:
  bootstrap: false
  members:
`+members.String()+`
credentials:
  - access_key_id: AKIALEFTOVERTEST0001
    secret_access_key: leftover-test-secret-0123456789
    principal_arn: arn:aws:iam::111122223333:user/app
`)
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id := cfg.Adapter.IntegrityKeyID

	// The dead first start: a bootstrapped cluster, and the integrity
	// key's copies on hsm-0 and hsm-2 that no catalog lists.
	for i, m := range sh.Members {
		cfg.Cluster.Members[i].SOPIN = m.SOPIN()
	}
	cat, err := cluster.OpenBoltCatalog(cfg.CatalogPath)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := cluster.New(ctx, cfg.Cluster, cluster.WithCatalog(cat))
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
		withToken(t, sh.Members[i], func(tok *hsm.Token) {
			if _, err := tok.GenerateKey(ctx, id, hsm.HMAC256, hsm.KeyOptions{Usage: hsm.UsageSign, Extractable: true}); err != nil {
				t.Fatal(err)
			}
		})
	}

	log := newLogger(&strings.Builder{}, 8)
	if _, err := startServer(ctx, cfg, log); err == nil || !strings.Contains(err.Error(), "hsmkms destroy-leftover --config FILE --key "+string(id)) {
		t.Fatalf("start over the leftovers: %v, want the way out named", err)
	}

	var stderr strings.Builder
	if code := run(ctx, []string{"destroy-leftover", "--config", path}, &strings.Builder{}, &stderr); code != 2 {
		t.Fatalf("without --key: exit %d, want 2; %s", code, stderr.String())
	}
	stderr.Reset()
	if code := run(ctx, []string{"destroy-leftover", "--config", path, "--key", string(id)}, &strings.Builder{}, &stderr); code != 0 {
		t.Fatalf("destroy-leftover: exit %d: %s", code, stderr.String())
	}

	s, err := startServer(ctx, cfg, log)
	if err != nil {
		t.Fatalf("start after destroy-leftover: %v", err)
	}
	if _, err := s.adapter.CreateKey(ctx, &kms.CreateKeyInput{}); err != nil {
		t.Fatal(err)
	}
	s.closeBackends()
	_ = s.listener.Close()
	var mac []byte
	for i, m := range sh.Members {
		withToken(t, m, func(tok *hsm.Token) {
			if i == 0 {
				if mac, err = tok.MAC(ctx, id, crypto.SHA256, []byte("m")); err != nil {
					t.Fatal(err)
				}
			} else if err := tok.VerifyMAC(ctx, id, crypto.SHA256, []byte("m"), mac); err != nil {
				t.Fatalf("hsm-%d holds other material under %s: %v", i, id, err)
			}
		})
	}

	// The key now in the catalog is no leftover: refused, and kept.
	stderr.Reset()
	if code := run(ctx, []string{"destroy-leftover", "--config", path, "--key", string(id)}, &strings.Builder{}, &stderr); code != 1 || !strings.Contains(stderr.String(), "in the catalog") {
		t.Fatalf("destroy-leftover of the live key: exit %d: %s", code, stderr.String())
	}
	s, err = startServer(ctx, cfg, log)
	if err != nil {
		t.Fatalf("start after a refused destroy-leftover: %v", err)
	}
	s.closeBackends()
	_ = s.listener.Close()
}

// withToken runs fn with member m's token, opened apart from any cluster.
func withToken(t *testing.T, m *softhsmtest.Member, fn func(*hsm.Token)) {
	t.Helper()
	tok, err := hsm.Open(context.Background(), m.Config())
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	fn(tok)
}

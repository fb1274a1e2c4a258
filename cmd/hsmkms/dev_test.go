package main

import (
	"context"
	"os"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
)

// TestProvisionDevNeedsNoTool: dev mode's first run initializes its
// tokens through PKCS#11, with no softhsm2-util on PATH (which took the
// PINs on its command line), and each token opens with the user PIN it
// saved. A second run reuses them.
func TestProvisionDevNeedsNoTool(t *testing.T) {
	softhsmtest.Require(t)
	t.Setenv("PATH", t.TempDir())
	t.Setenv("SOFTHSM2_CONF", os.Getenv("SOFTHSM2_CONF")) // provisionDev changes it
	ctx := context.Background()
	dir := t.TempDir()
	st, lib, fresh, err := provisionDev(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if !fresh {
		t.Fatal("the first run reused state")
	}
	var toks []*hsm.Token
	for i := range devMembers {
		cfg := hsm.DefaultConfig()
		cfg.ModulePath, cfg.TokenLabel, cfg.PIN = lib, devLabel(i), hsm.NewPIN(st.UserPIN)
		tok, err := hsm.Open(ctx, cfg)
		if err != nil {
			t.Fatalf("dev token %d: %v", i, err)
		}
		toks = append(toks, tok)
		if _, err := tok.GenerateKey(ctx, "k", hsm.AES256, hsm.KeyOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tok := range toks {
		if err := tok.Close(); err != nil {
			t.Fatal(err)
		}
	}
	again, _, fresh, err := provisionDev(ctx, dir)
	if err != nil || fresh || again != st {
		t.Fatalf("second run: fresh %v, same state %v, %v", fresh, again == st, err)
	}
}

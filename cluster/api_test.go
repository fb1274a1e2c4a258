package cluster_test

import (
	"context"
	"crypto"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/cluster"
	"github.com/hsmkms/hsmkms/hsm"
)

// Crypto is the kind of interface a consumer declares: the data plane of
// one token, which a cluster provides too.
type Crypto interface {
	GenerateKey(ctx context.Context, id hsm.KeyID, spec hsm.KeySpec, opts hsm.KeyOptions) (hsm.KeyInfo, error)
	DestroyKey(ctx context.Context, id hsm.KeyID) error
	Describe(ctx context.Context, id hsm.KeyID) (hsm.KeyInfo, error)
	EncryptGCM(ctx context.Context, id hsm.KeyID, iv, plaintext, aad []byte) (ciphertext, ivUsed []byte, err error)
	AppendEncryptGCM(ctx context.Context, dst []byte, id hsm.KeyID, iv, plaintext, aad []byte) (out, ivUsed []byte, err error)
	DecryptGCM(ctx context.Context, id hsm.KeyID, iv, ciphertext, aad []byte) ([]byte, error)
	EncryptOAEP(ctx context.Context, id hsm.KeyID, h crypto.Hash, plaintext []byte) ([]byte, error)
	DecryptOAEP(ctx context.Context, id hsm.KeyID, h crypto.Hash, ciphertext []byte) ([]byte, error)
	Sign(ctx context.Context, id hsm.KeyID, sc hsm.SigningScheme, h crypto.Hash, digest []byte) ([]byte, error)
	Verify(ctx context.Context, id hsm.KeyID, sc hsm.SigningScheme, h crypto.Hash, digest, sig []byte) error
	MAC(ctx context.Context, id hsm.KeyID, h crypto.Hash, msg []byte) ([]byte, error)
	VerifyMAC(ctx context.Context, id hsm.KeyID, h crypto.Hash, msg, mac []byte) error
	PublicKey(ctx context.Context, id hsm.KeyID) ([]byte, error)
	Random(ctx context.Context, n int) ([]byte, error)
	UnwrapKey(ctx context.Context, req hsm.UnwrapRequest) (hsm.KeyInfo, error)
}

var (
	_ Crypto = (*hsm.Token)(nil)
	_ Crypto = (*cluster.Cluster)(nil)
)

// No method of a Cluster hands out key material, wrapped or not.
func TestNoMethodExportsKeys(t *testing.T) {
	typ := reflect.TypeFor[*cluster.Cluster]()
	for i := range typ.NumMethod() {
		name := typ.Method(i).Name
		for _, bad := range []string{"Wrap", "Export", "Extract"} {
			if strings.HasPrefix(name, bad) {
				t.Errorf("Cluster has method %s", name)
			}
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if err := cluster.DefaultConfig().Validate(); !errors.Is(err, hsm.ErrInvalidInput) || !strings.Contains(err.Error(), "no members") {
		t.Fatalf("empty config: %v", err)
	}
	cfg := cluster.DefaultConfig()
	tc := hsm.DefaultConfig()
	tc.ModulePath, tc.TokenLabel, tc.PIN = "/x.so", "t", hsm.NewPIN("1234")
	cfg.Members = []cluster.MemberConfig{{Name: "a", Token: tc}, {Name: "a", Token: tc, Weight: -1}}
	cfg.WriteQuorum = 3
	cfg.ProbeInterval = 0
	err := cfg.Validate()
	for _, want := range []string{"used twice", "negative", "WriteQuorum", "ProbeInterval"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %q", err, want)
		}
	}
	cfg.Members[1].Name, cfg.Members[1].Weight, cfg.WriteQuorum, cfg.ProbeInterval = "b", 2, 2, time.Second
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(err.Error(), "1234") {
		t.Fatal("error shows a PIN")
	}
}

func TestCatalogs(t *testing.T) {
	bolt, err := cluster.OpenBoltCatalog(filepath.Join(t.TempDir(), "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer bolt.Close()
	for name, c := range map[string]cluster.Catalog{"memory": &cluster.MemoryCatalog{}, "bolt": bolt} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			now := time.Unix(1_800_000_000, 0).UTC()
			r1, err := c.Create(ctx, cluster.KeyRecord{ID: "a", Spec: hsm.AES256, Created: now})
			if err != nil {
				t.Fatal(err)
			}
			r2, err := c.Create(ctx, cluster.KeyRecord{ID: "b", Spec: hsm.ECP256, Created: now})
			if err != nil {
				t.Fatal(err)
			}
			if r1.Version == 0 || r2.Version <= r1.Version {
				t.Fatalf("versions %d, %d do not grow", r1.Version, r2.Version)
			}
			if _, err := c.Create(ctx, cluster.KeyRecord{ID: "a", Spec: hsm.AES128}); !errors.Is(err, hsm.ErrKeyExists) {
				t.Fatalf("duplicate create: %v", err)
			}
			if err := c.MarkDestroyed(ctx, "a", now); err != nil {
				t.Fatal(err)
			}
			if err := c.MarkDestroyed(ctx, "a", now.Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Create(ctx, cluster.KeyRecord{ID: "a", Spec: hsm.AES128}); !errors.Is(err, hsm.ErrKeyExists) {
				t.Fatalf("re-create of a destroyed ID: %v", err)
			}
			if err := c.MarkDestroyed(ctx, "zz", now); !errors.Is(err, hsm.ErrKeyNotFound) {
				t.Fatalf("destroy unknown: %v", err)
			}
			got, err := c.Get(ctx, "a")
			if err != nil || !got.Destroyed || !got.DestroyedAt.Equal(now) || got.Spec != hsm.AES256 {
				t.Fatalf("get a: %+v %v", got, err)
			}
			if _, err := c.Get(ctx, "zz"); !errors.Is(err, hsm.ErrKeyNotFound) {
				t.Fatalf("get unknown: %v", err)
			}
			all, err := c.List(ctx)
			if err != nil || len(all) != 2 || all[0].ID != "a" || all[1].ID != "b" || all[1].Destroyed {
				t.Fatalf("list: %+v %v", all, err)
			}
		})
	}
}

func TestBoltCatalogPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "catalog.db")
	c, err := cluster.OpenBoltCatalog(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(context.Background(), cluster.KeyRecord{ID: "k", Spec: hsm.HMAC256}); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c, err = cluster.OpenBoltCatalog(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rec, err := c.Get(context.Background(), "k")
	if err != nil || rec.Spec != hsm.HMAC256 {
		t.Fatalf("after reopen: %+v %v", rec, err)
	}
}

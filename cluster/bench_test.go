package cluster

import (
	"context"
	"crypto"
	"fmt"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
)

// The benchmarks compare a cluster of 3 SoftHSM members with one hsm
// token, on the same cores: what they measure is the cluster's overhead.
//
//	go test -run '^$' -bench . -benchtime 3s ./cluster/

// dataPlane is what the benchmarks call: both *hsm.Token and *Cluster.
type dataPlane interface {
	GenerateKey(ctx context.Context, id hsm.KeyID, spec hsm.KeySpec, opts hsm.KeyOptions) (hsm.KeyInfo, error)
	EncryptGCM(ctx context.Context, id hsm.KeyID, iv, plaintext, aad []byte) (ciphertext, ivUsed []byte, err error)
	Sign(ctx context.Context, id hsm.KeyID, sc hsm.SigningScheme, h crypto.Hash, digest []byte) ([]byte, error)
}

func benchTargets(b *testing.B) map[string]dataPlane {
	b.Helper()
	sh := softhsmtest.New(b, 1)
	tok, err := hsm.Open(context.Background(), sh.Members[0].Config(), hsm.WithInterceptor(sh.Members[0].Faults))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = tok.Close() })
	e := newEnv(b, 3, nil)
	return map[string]dataPlane{"token": tok, "cluster3": e.c}
}

// parallel8 runs body from 8 goroutines.
func parallel8(b *testing.B, body func(pb *testing.PB)) {
	b.SetParallelism((8 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.RunParallel(body)
}

func BenchmarkEncryptGCM4KiB(b *testing.B) {
	ctx := context.Background()
	targets := benchTargets(b)
	msg := make([]byte, 4096)
	for _, name := range []string{"token", "cluster3"} {
		t := targets[name]
		if _, err := t.GenerateKey(ctx, "bench-aes", hsm.AES256, hsm.KeyOptions{}); err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			parallel8(b, func(pb *testing.PB) {
				for pb.Next() {
					if _, _, err := t.EncryptGCM(ctx, "bench-aes", nil, msg, nil); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func BenchmarkSignECDSAP256(b *testing.B) {
	ctx := context.Background()
	targets := benchTargets(b)
	d := digest("bench")
	for _, name := range []string{"token", "cluster3"} {
		t := targets[name]
		if _, err := t.GenerateKey(ctx, "bench-ec", hsm.ECP256, hsm.KeyOptions{}); err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			parallel8(b, func(pb *testing.PB) {
				for pb.Next() {
					if _, err := t.Sign(ctx, "bench-ec", hsm.ECDSA, crypto.SHA256, d); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkGenerateKey compares replicated key creation (create on one
// member, wrap, unwrap on two others in parallel, catalog) with one
// token's key generation, and reports the p50.
func BenchmarkGenerateKey(b *testing.B) {
	ctx := context.Background()
	targets := benchTargets(b)
	var n atomic.Int64
	for _, spec := range []hsm.KeySpec{hsm.AES256, hsm.ECP256} {
		for _, name := range []string{"token", "cluster3"} {
			t := targets[name]
			b.Run(fmt.Sprintf("%s/%s", spec, name), func(b *testing.B) {
				lat := make([]time.Duration, 0, b.N)
				for b.Loop() {
					start := time.Now()
					if _, err := t.GenerateKey(ctx, hsm.KeyID(fmt.Sprintf("gen-%d", n.Add(1))), spec, hsm.KeyOptions{}); err != nil {
						b.Fatal(err)
					}
					lat = append(lat, time.Since(start))
				}
				slices.Sort(lat)
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			})
		}
	}
}

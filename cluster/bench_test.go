package cluster

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
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

// BenchmarkGenerateKey measures replicated key creation against its
// target: with 3 members, the cluster's p50 is at most 1.5 times one
// token's key generation p50 plus one wrap's p50. Each round, in rotating
// order, one token generates a key of the spec and wraps it under a
// trusted key-encryption key (AES key wrap with padding, what a copy
// needs); three other tokens each generate a key at the same time (what
// three tokens cost on these cores and this disk, with no cluster code
// at all); and the cluster creates a key of the spec. All keys are
// extractable under the cluster's terms, and every token is a SoftHSM2
// token with the same configuration and profile. Rounds spread machine
// load over all sides alike, and every token grows by the same number of
// objects. Reported:
//
//	token-ms    p50 of the token's GenerateKey
//	wrap-ms     p50 of the token's WrapKey of that key
//	three-ms    p50 of three tokens' GenerateKey at once, until the last returns
//	cluster-ms  p50 of the cluster's GenerateKey
//	x_token     cluster-ms / token-ms
//	x_three     cluster-ms / three-ms
//	x_target    cluster-ms / (1.5 token-ms + wrap-ms): at most 1 meets the target
//
//	go test -run '^$' -bench BenchmarkGenerateKey -benchtime 40x -count 3 ./cluster/
func BenchmarkGenerateKey(b *testing.B) {
	ctx := context.Background()
	open := func(m *softhsmtest.Member) *hsm.Token {
		tok, err := hsm.Open(ctx, m.Config(), hsm.WithInterceptor(m.Faults))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = tok.Close() })
		return tok
	}
	sh := softhsmtest.New(b, 1)
	tok := open(sh.Members[0])
	const kek = "bench-kek"
	if _, err := tok.CreateTrustedWrappingKey(ctx, kek, sh.Members[0].SOPIN(), hsm.KeyOptions{}); err != nil {
		b.Fatal(err)
	}
	var three []*hsm.Token
	for _, m := range softhsmtest.New(b, 3).Members {
		three = append(three, open(m))
	}
	c := newEnv(b, 3, nil).c
	opts := hsm.KeyOptions{Extractable: true} // what the cluster makes of every key
	var n atomic.Int64
	for _, spec := range []hsm.KeySpec{hsm.AES256, hsm.ECP256} {
		b.Run(string(spec), func(b *testing.B) {
			var tokLat, wrapLat, threeLat, clLat []time.Duration
			onToken := func() {
				id := hsm.KeyID(fmt.Sprintf("tok-%d", n.Add(1)))
				start := time.Now()
				if _, err := tok.GenerateKey(ctx, id, spec, opts); err != nil {
					b.Fatal(err)
				}
				tokLat = append(tokLat, time.Since(start))
				start = time.Now()
				if _, err := tok.WrapKey(ctx, kek, id, hsm.Wrapping{Mechanism: hsm.AESKeyWrapPad}); err != nil {
					b.Fatal(err)
				}
				wrapLat = append(wrapLat, time.Since(start))
			}
			onThree := func() {
				id := hsm.KeyID(fmt.Sprintf("three-%d", n.Add(1)))
				errs := make([]error, len(three))
				var wg sync.WaitGroup
				start := time.Now()
				for i, t := range three {
					wg.Go(func() { _, errs[i] = t.GenerateKey(ctx, id, spec, opts) })
				}
				wg.Wait()
				threeLat = append(threeLat, time.Since(start))
				if err := errors.Join(errs...); err != nil {
					b.Fatal(err)
				}
			}
			onCluster := func() {
				id := hsm.KeyID(fmt.Sprintf("cl-%d", n.Add(1)))
				start := time.Now()
				if _, err := c.GenerateKey(ctx, id, spec, opts); err != nil {
					b.Fatal(err)
				}
				clLat = append(clLat, time.Since(start))
			}
			sides := []func(){onToken, onThree, onCluster}
			round := 0
			for b.Loop() {
				for k := range sides {
					sides[(round+k)%len(sides)]()
				}
				round++
			}
			tk, wr, th, cl := p50ms(tokLat), p50ms(wrapLat), p50ms(threeLat), p50ms(clLat)
			b.ReportMetric(tk, "token-ms")
			b.ReportMetric(wr, "wrap-ms")
			b.ReportMetric(th, "three-ms")
			b.ReportMetric(cl, "cluster-ms")
			b.ReportMetric(cl/tk, "x_token")
			b.ReportMetric(cl/th, "x_three")
			b.ReportMetric(cl/(1.5*tk+wr), "x_target")
		})
	}
}

// p50ms is the median of lat in milliseconds.
func p50ms(lat []time.Duration) float64 {
	lat = slices.Clone(lat)
	slices.Sort(lat)
	return float64(lat[len(lat)/2]) / float64(time.Millisecond)
}

// BenchmarkResync: a re-sync of one member of three holding 500 keys (AES,
// HMAC and EC P-256 in turn), against an anti-entropy pass over the same
// member. Both list the token and read the catalog; the re-sync also
// checks every key's check value before the member serves it again, an
// anti-entropy pass only keys new to the process. x_pass is the re-sync's
// time over the pass's.
//
//	go test -run '^$' -bench BenchmarkResync -benchtime 5x -count 3 ./cluster/
func BenchmarkResync(b *testing.B) {
	ctx := context.Background()
	e := newEnv(b, 3, nil)
	specs := []hsm.KeySpec{hsm.AES256, hsm.HMAC256, hsm.ECP256}
	for i := range 500 {
		if _, err := e.c.GenerateKey(ctx, hsm.KeyID(fmt.Sprintf("k%d", i)), specs[i%3], hsm.KeyOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	m := e.c.members[1]
	var resync, pass time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if err := e.c.resync(ctx, m); err != nil {
			b.Fatal(err)
		}
		resync += time.Since(start)
		start = time.Now()
		if _, err := e.c.repair(ctx, m); err != nil {
			b.Fatal(err)
		}
		pass += time.Since(start)
	}
	if !m.has("k499") {
		b.Fatal("the member does not serve k499 after the re-sync")
	}
	b.ReportMetric(float64(resync.Milliseconds())/float64(b.N), "resync-ms")
	b.ReportMetric(float64(pass.Milliseconds())/float64(b.N), "pass-ms")
	b.ReportMetric(float64(resync)/float64(pass), "x_pass")
	b.ReportMetric(0, "ns/op")
}

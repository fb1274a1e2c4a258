package kmsadapter_test

import (
	"crypto"
	"crypto/sha256"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/stretchr/testify/require"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/kmsadapter"
)

// Benchmarks compare each operation through kmsadapter with the same
// HSM work done directly on its Backend (a 3-member SoftHSM2 cluster), at
// 8 goroutines (RunParallel with GOMAXPROCS*parallelism = 8):
//
//	go test -run '^$' -bench . -benchtime 3s ./kmsadapter/
//
// One cluster serves all benchmarks of a run.
var (
	benchOnce sync.Once
	benchEnv  *clusterEnv
)

func benchCluster(b *testing.B) *clusterEnv {
	benchOnce.Do(func() { benchEnv = newClusterEnv(&onceTB{B: b}, 3) })
	return benchEnv
}

// onceTB lets the shared cluster outlive the benchmark that made it: its
// cleanups run at process exit, never.
type onceTB struct{ *testing.B }

func (o *onceTB) Cleanup(func()) {}
func (o *onceTB) TempDir() string {
	return tempDirOutsideTest()
}

func parallel8(b *testing.B, fn func() error) {
	b.Helper()
	p := (8 + gomaxprocs() - 1) / gomaxprocs()
	b.SetParallelism(p)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := fn(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkOps(b *testing.B) {
	e := benchCluster(b)
	c, be := e.c, kmsadapter.Backend(e.cl)
	sym := createKey(b, c)
	symHSM := hsm.KeyID(sym + "/v1")
	out, err := c.CreateKey(bg, &kms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify})
	require.NoError(b, err)
	ec := *out.KeyMetadata.KeyId
	ecHSM := hsm.KeyID(ec + "/v1")
	pt := make([]byte, 4096)
	ectx := map[string]string{"bench": "1"}
	aad := []byte("0123456789012345678901\x00\x00\x00\x01\x00\x00\x00\x05bench\x00\x00\x00\x011")
	enc, err := c.Encrypt(bg, &kms.EncryptInput{KeyId: str(sym), Plaintext: pt, EncryptionContext: ectx})
	require.NoError(b, err)
	rawCT, rawIV, err := be.EncryptGCM(bg, symHSM, nil, pt, aad)
	require.NoError(b, err)
	msg := []byte("a message to sign")

	b.Run("Encrypt4KiB/kmsadapter", func(b *testing.B) {
		parallel8(b, func() error {
			_, err := c.Encrypt(bg, &kms.EncryptInput{KeyId: str(sym), Plaintext: pt, EncryptionContext: ectx})
			return err
		})
	})
	b.Run("Encrypt4KiB/backend", func(b *testing.B) {
		parallel8(b, func() error { _, _, err := be.EncryptGCM(bg, symHSM, nil, pt, aad); return err })
	})
	b.Run("Decrypt4KiB/kmsadapter", func(b *testing.B) {
		parallel8(b, func() error {
			_, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ectx})
			return err
		})
	})
	b.Run("Decrypt4KiB/backend", func(b *testing.B) {
		parallel8(b, func() error { _, err := be.DecryptGCM(bg, symHSM, rawIV, rawCT, aad); return err })
	})
	b.Run("GenerateDataKey/kmsadapter", func(b *testing.B) {
		parallel8(b, func() error {
			_, err := c.GenerateDataKey(bg, &kms.GenerateDataKeyInput{KeyId: str(sym), KeySpec: types.DataKeySpecAes256, EncryptionContext: ectx})
			return err
		})
	})
	b.Run("GenerateDataKey/backend", func(b *testing.B) {
		parallel8(b, func() error {
			k, err := be.Random(bg, 32)
			if err == nil {
				_, _, err = be.EncryptGCM(bg, symHSM, nil, k, aad)
			}
			return err
		})
	})
	b.Run("SignP256/kmsadapter", func(b *testing.B) {
		parallel8(b, func() error {
			_, err := c.Sign(bg, &kms.SignInput{KeyId: str(ec), Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			return err
		})
	})
	b.Run("SignP256/backend", func(b *testing.B) {
		parallel8(b, func() error {
			d := sha256.Sum256(msg)
			_, err := be.Sign(bg, ecHSM, hsm.ECDSA, crypto.SHA256, d[:])
			return err
		})
	})
}

// runN runs fn n times over 8 goroutines and returns the elapsed time.
func runN(n int, fn func() error) (time.Duration, error) {
	var wg sync.WaitGroup
	var next atomic.Int64
	errs := make(chan error, 8)
	start := time.Now()
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if err := fn(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	select {
	case err := <-errs:
		return el, err
	default:
	}
	return el, nil
}

// BenchmarkRatio interleaves short bursts (400 calls at 8 goroutines) of
// an operation through kmsadapter and of the same HSM work on the
// Backend, so that load from other processes hits both alike, and
// reports each side's throughput and their ratio (kmsadapter/backend;
// the issue asks for at least 0.9). The last three compare key counts
// instead: EncryptOn1000vs10Keys, Encrypt over 10 keys of a KMS holding
// 1,000 against a KMS holding those 10 only; EncryptKeys1000vs10, Encrypt
// cycling over all 1,000 keys against cycling over 10; and
// ClusterKeys1000vs10, that cycling on the cluster alone.
//
//	go test -run '^$' -bench Ratio -benchtime 100x ./kmsadapter/
func BenchmarkRatio(b *testing.B) {
	e := benchCluster(b)
	c, be := e.c, kmsadapter.Backend(e.cl)
	sym := createKey(b, c)
	symHSM := hsm.KeyID(sym + "/v1")
	out, err := c.CreateKey(bg, &kms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify})
	require.NoError(b, err)
	ec := *out.KeyMetadata.KeyId
	ecHSM := hsm.KeyID(ec + "/v1")
	pt := make([]byte, 4096)
	ectx := map[string]string{"bench": "1"}
	aad := append(make([]byte, 21), kmsadapter.EncodeContext(ectx)...)
	enc, err := c.Encrypt(bg, &kms.EncryptInput{KeyId: str(sym), Plaintext: pt, EncryptionContext: ectx})
	require.NoError(b, err)
	rawCT, rawIV, err := be.EncryptGCM(bg, symHSM, nil, pt, aad)
	require.NoError(b, err)
	msg := []byte("a message to sign")

	var keys []string
	makeKeys := func(b *testing.B) {
		if keys != nil {
			return
		}
		keys = make([]string, 1000)
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < len(keys); i += 8 {
					out, err := c.CreateKey(bg, &kms.CreateKeyInput{})
					if err != nil {
						b.Error(err)
						return
					}
					keys[i] = *out.KeyMetadata.KeyId
				}
			}()
		}
		wg.Wait()
		if b.Failed() {
			b.FailNow()
		}
	}
	var rr atomic.Int64
	encOn := func(c *kmsadapter.Client, set func() []string) func() error {
		return func() error {
			k := set()[int(rr.Add(1))%len(set())]
			_, err := c.Encrypt(bg, &kms.EncryptInput{KeyId: str(k), Plaintext: pt})
			return err
		}
	}
	encOver := func(set func() []string) func() error { return encOn(c, set) }
	// A second KMS, on three tokens of its own, that holds 10 keys only.
	var small *kmsadapter.Client
	var smallKeys []string
	makeSmall := func(b *testing.B) {
		if small != nil {
			return
		}
		small = newClusterEnv(&onceTB{B: b}, 3).c
		for range 10 {
			smallKeys = append(smallKeys, createKey(b, small))
		}
	}
	clusterOver := func(set func() []string) func() error {
		return func() error {
			k := set()[int(rr.Add(1))%len(set())]
			_, _, err := be.EncryptGCM(bg, hsm.KeyID(k+"/v1"), nil, pt, nil)
			return err
		}
	}

	cases := []struct {
		name     string
		adapter  func() error
		baseline func() error
	}{
		{"Encrypt4KiB",
			func() error {
				_, err := c.Encrypt(bg, &kms.EncryptInput{KeyId: str(sym), Plaintext: pt, EncryptionContext: ectx})
				return err
			},
			func() error { _, _, err := be.EncryptGCM(bg, symHSM, nil, pt, aad); return err }},
		{"Decrypt4KiB",
			func() error {
				_, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ectx})
				return err
			},
			func() error { _, err := be.DecryptGCM(bg, symHSM, rawIV, rawCT, aad); return err }},
		{"GenerateDataKey",
			func() error {
				_, err := c.GenerateDataKey(bg, &kms.GenerateDataKeyInput{KeyId: str(sym), KeySpec: types.DataKeySpecAes256, EncryptionContext: ectx})
				return err
			},
			func() error {
				k, err := be.Random(bg, 32)
				if err == nil {
					_, _, err = be.EncryptGCM(bg, symHSM, nil, k, aad)
				}
				return err
			}},
		{"SignP256",
			func() error {
				_, err := c.Sign(bg, &kms.SignInput{KeyId: str(ec), Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
				return err
			},
			func() error {
				d := sha256.Sum256(msg)
				_, err := be.Sign(bg, ecHSM, hsm.ECDSA, crypto.SHA256, d[:])
				return err
			}},
		// Not adapter against backend. Encrypt over 10 keys of a KMS
		// that holds 1,000 against over the 10 keys of one that holds 10
		// (what the number of keys costs), Encrypt cycling over all 1,000
		// keys against cycling over 10 (what a working set of 1,000 keys
		// costs), and the same cycling on the cluster alone, below the
		// adapter (what it costs the HSMs).
		{"EncryptOn1000vs10Keys", encOver(func() []string { return keys[:10] }), func() error { return encOn(small, func() []string { return smallKeys })() }},
		{"EncryptKeys1000vs10", encOver(func() []string { return keys }), encOver(func() []string { return keys[:10] })},
		{"ClusterKeys1000vs10", clusterOver(func() []string { return keys }), clusterOver(func() []string { return keys[:10] })},
	}
	const burst = 400
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			if strings.Contains(tc.name, "1000vs10") {
				makeKeys(b)
			}
			if tc.name == "EncryptOn1000vs10Keys" {
				makeSmall(b)
			}
			// Warm up both sides (handle caches on every member, metadata).
			_, err := runN(2000, tc.adapter)
			require.NoError(b, err)
			_, err = runN(2000, tc.baseline)
			require.NoError(b, err)
			var ta, tb time.Duration
			for i := range b.N {
				first, second := tc.adapter, tc.baseline
				if i%2 == 1 { // alternate which goes first
					first, second = second, first
				}
				d1, err := runN(burst, first)
				require.NoError(b, err)
				d2, err := runN(burst, second)
				require.NoError(b, err)
				if i%2 == 1 {
					d1, d2 = d2, d1
				}
				ta, tb = ta+d1, tb+d2
			}
			opsA := float64(burst*b.N) / ta.Seconds()
			opsB := float64(burst*b.N) / tb.Seconds()
			b.ReportMetric(opsA, "adapter-ops/s")
			b.ReportMetric(opsB, "baseline-ops/s")
			b.ReportMetric(opsA/opsB, "ratio")
			b.ReportMetric(0, "ns/op")
		})
	}
}

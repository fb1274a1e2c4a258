package hsm_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"
)

// The benchmarks compare the hsm package with direct miekg/pkcs11 calls on
// the same token in the same run, and report the ratio of throughputs
// (direct ns/op over hsm ns/op; 1.0 means no overhead):
//
//	go test ./hsm -run '^$' -bench VsDirect -benchtime 100x
//	go test ./hsm -run '^$' -bench ManyKeys -benchtime 2s
//
// "g1" runs one goroutine, "g8" eight. The direct side does the same work a careful direct user
// must: a random IV per encryption, one session per goroutine, the key
// handle found once.

type benchEnv struct {
	m    *softhsmtest.Member
	tok  *hsm.Token
	ctx  *pkcs11.Ctx
	pin  string
	msg  []byte
	aad  []byte
	ct   []byte
	iv   []byte
	dig  []byte
	hmsg []byte
}

func newBenchEnv(b *testing.B) *benchEnv {
	b.Helper()
	c := softhsmtest.New(b, 1)
	m := c.Members[0]
	tok := openPlain(b, m)
	ctx := context.Background()
	for id, spec := range map[hsm.KeyID]hsm.KeySpec{"aes": hsm.AES256, "ec": hsm.ECP256, "mac": hsm.HMAC256} {
		_, err := tok.GenerateKey(ctx, id, spec, hsm.KeyOptions{})
		require.NoError(b, err)
	}
	e := &benchEnv{m: m, tok: tok, msg: make([]byte, 4096), aad: []byte("aad"), hmsg: make([]byte, 32)}
	_, _ = rand.Read(e.msg)
	d := sha256.Sum256(e.msg)
	e.dig = d[:]
	var err error
	e.ct, e.iv, err = tok.EncryptGCM(ctx, "aes", nil, e.msg, e.aad)
	require.NoError(b, err)

	// The direct side: the same library instance (same path), its own
	// sessions. Login state is per application, and the token is already
	// logged in.
	e.ctx = pkcs11.New(m.LibPath)
	require.NotNil(b, e.ctx)
	if err := e.ctx.Initialize(); err != nil && err != pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		b.Fatal(err)
	}
	b.Cleanup(e.ctx.Destroy) // no Finalize: the Token owns the instance
	return e
}

// directSession opens a session and finds the key with CKA_ID id and class.
func (e *benchEnv) directSession(b *testing.B, id string, class uint) (pkcs11.SessionHandle, pkcs11.ObjectHandle) {
	slot := e.tok.Info().Slot
	s, err := e.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		b.Fatal(err)
	}
	if err := e.ctx.FindObjectsInit(s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(id)),
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
	}); err != nil {
		b.Fatal(err)
	}
	objs, _, err := e.ctx.FindObjects(s, 1)
	if err != nil || len(objs) != 1 {
		b.Fatalf("find %s: %v", id, err)
	}
	_ = e.ctx.FindObjectsFinal(s)
	return s, objs[0]
}

// op is one benchmarked operation, both ways.
type op struct {
	name   string
	id     string
	class  uint
	direct func(e *benchEnv, s pkcs11.SessionHandle, k pkcs11.ObjectHandle) error
	viaHSM func(tok *hsm.Token, e *benchEnv) error
}

var benchOps = []op{
	{
		name: "AESGCMEncrypt4KiB", id: "aes", class: pkcs11.CKO_SECRET_KEY,
		direct: func(e *benchEnv, s pkcs11.SessionHandle, k pkcs11.ObjectHandle) error {
			iv := make([]byte, 12)
			if _, err := rand.Read(iv); err != nil {
				return err
			}
			p := pkcs11.NewGCMParams(iv, e.aad, 128)
			defer p.Free()
			if err := e.ctx.EncryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, p)}, k); err != nil {
				return err
			}
			_, err := e.ctx.Encrypt(s, e.msg)
			return err
		},
		viaHSM: func(tok *hsm.Token, e *benchEnv) error {
			_, _, err := tok.EncryptGCM(context.Background(), "aes", nil, e.msg, e.aad)
			return err
		},
	},
	{
		name: "AESGCMDecrypt4KiB", id: "aes", class: pkcs11.CKO_SECRET_KEY,
		direct: func(e *benchEnv, s pkcs11.SessionHandle, k pkcs11.ObjectHandle) error {
			p := pkcs11.NewGCMParams(e.iv, e.aad, 128)
			defer p.Free()
			if err := e.ctx.DecryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, p)}, k); err != nil {
				return err
			}
			_, err := e.ctx.Decrypt(s, e.ct)
			return err
		},
		viaHSM: func(tok *hsm.Token, e *benchEnv) error {
			_, err := tok.DecryptGCM(context.Background(), "aes", e.iv, e.ct, e.aad)
			return err
		},
	},
	{
		name: "ECDSAP256Sign", id: "ec", class: pkcs11.CKO_PRIVATE_KEY,
		direct: func(e *benchEnv, s pkcs11.SessionHandle, k pkcs11.ObjectHandle) error {
			if err := e.ctx.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, k); err != nil {
				return err
			}
			_, err := e.ctx.Sign(s, e.dig)
			return err
		},
		viaHSM: func(tok *hsm.Token, e *benchEnv) error {
			_, err := tok.Sign(context.Background(), "ec", hsm.ECDSA, crypto.SHA256, e.dig)
			return err
		},
	},
	{
		name: "HMACSHA256", id: "mac", class: pkcs11.CKO_SECRET_KEY,
		direct: func(e *benchEnv, s pkcs11.SessionHandle, k pkcs11.ObjectHandle) error {
			if err := e.ctx.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}, k); err != nil {
				return err
			}
			_, err := e.ctx.Sign(s, e.hmsg)
			return err
		},
		viaHSM: func(tok *hsm.Token, e *benchEnv) error {
			_, err := tok.MAC(context.Background(), "mac", crypto.SHA256, e.hmsg)
			return err
		},
	},
}

// BenchmarkVsDirect compares each operation through hsm with direct
// miekg/pkcs11 calls. Target: ratio >= 0.95. The two sides run in
// alternating bursts (which one goes first alternates too), so that load
// from elsewhere on the machine falls on both alike; x_direct is the
// direct side's time over the hsm side's for the same number of calls.
//
//	go test ./hsm -run '^$' -bench VsDirect -benchtime 100x -count 3
//
// With one goroutine the calls run on the benchmark's own goroutine, as a
// direct user's would; with eight, each direct goroutine owns a session.
//
// The hsm side runs in both of its ways, on two Tokens of the same token:
//
//	deadline    the default Config (CallTimeout 10s): every call has a
//	            deadline, so it runs on a worker goroutine and the caller
//	            can return at the deadline whatever the module does
//	nodeadline  CallTimeout NoCallTimeout and context.Background: the
//	            same contract as the direct calls (wait for the module),
//	            so the call runs on the caller's goroutine
func BenchmarkVsDirect(b *testing.B) {
	e := newBenchEnv(b)
	cfg := e.m.Config()
	cfg.CallTimeout = hsm.NoCallTimeout
	inline, err := hsm.Open(context.Background(), cfg)
	require.NoError(b, err)
	b.Cleanup(func() { _ = inline.Close() })
	toks := []struct {
		name string
		tok  *hsm.Token
	}{{"deadline", e.tok}, {"nodeadline", inline}}
	const burst = 200
	for _, o := range benchOps {
		for _, g := range []int{1, 8} {
			for _, tk := range toks {
				b.Run(fmt.Sprintf("%s/g%d/%s", o.name, g, tk.name), func(b *testing.B) {
					sessions := make([]pkcs11.SessionHandle, g)
					var key pkcs11.ObjectHandle
					for w := range sessions {
						sessions[w], key = e.directSession(b, o.id, o.class)
					}
					defer func() {
						for _, s := range sessions {
							_ = e.ctx.CloseSession(s)
						}
					}()
					direct := func(w int) error { return o.direct(e, sessions[w], key) }
					viaHSM := func(int) error { return o.viaHSM(tk.tok, e) }
					// Warm up: the handle cache, the pool's sessions.
					for _, f := range []func(int) error{direct, viaHSM} {
						if _, err := runBurst(g, burst, f); err != nil {
							b.Fatal(err)
						}
					}
					td, th := alternate(b, g, burst, direct, viaHSM)
					calls := float64(burst * b.N)
					b.ReportMetric(float64(td.Nanoseconds())/calls, "direct-ns/op")
					b.ReportMetric(float64(th.Nanoseconds())/calls, "hsm-ns/op")
					b.ReportMetric(td.Seconds()/th.Seconds(), "x_direct")
					b.ReportMetric(0, "ns/op")
				})
			}
		}
	}
}

// alternate runs b.N rounds of a burst of calls of x and one of y on g
// goroutines, x first in even rounds and y first in odd ones, and returns
// the total time each took.
func alternate(b *testing.B, g, burst int, x, y func(int) error) (tx, ty time.Duration) {
	for i := range b.N {
		first, second := x, y
		if i%2 == 1 {
			first, second = second, first
		}
		d1, err := runBurst(g, burst, first)
		if err != nil {
			b.Fatal(err)
		}
		d2, err := runBurst(g, burst, second)
		if err != nil {
			b.Fatal(err)
		}
		if i%2 == 1 {
			d1, d2 = d2, d1
		}
		tx, ty = tx+d1, ty+d2
	}
	return tx, ty
}

// runBurst makes n calls of fn and returns the time they took: on the
// calling goroutine when g is 1, else over g goroutines (fn's argument
// is the goroutine's index).
func runBurst(g, n int, fn func(w int) error) (time.Duration, error) {
	start := time.Now()
	if g == 1 {
		for range n {
			if err := fn(0); err != nil {
				return 0, err
			}
		}
		return time.Since(start), nil
	}
	var next atomic.Int64
	errs := make([]error, g)
	var wg sync.WaitGroup
	for w := range g {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if err := fn(w); err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start), errors.Join(errs...)
}

// BenchmarkManyKeys compares AES-GCM encryption on a token that holds
// 1,000 keys against one that holds 10 (two members, same library, same
// work), in alternating bursts on one goroutine. Target: ratio >= 0.9,
// which the handle cache gives (C_FindObjects costs ~20 µs per object on
// SoftHSM: ~23 ms per lookup with 1,000 keys).
//
//	go test ./hsm -run '^$' -bench ManyKeys -benchtime 100x -count 3
//
//	hot=10/on-token=1000    10 keys used, of 1,000 on the token
//	hot=1000/on-token=1000  all 1,000 keys used in turn
//	direct/hot=1000         the same with direct miekg/pkcs11 calls, 1,000
//	                        keys in turn against 10, on the 1,000-key
//	                        token: what cycling costs SoftHSM itself (its
//	                        per-key state falls out of the CPU caches)
//
// x_10keys is the 10-key side's time over the case's for as many calls.
func BenchmarkManyKeys(b *testing.B) {
	ctx := context.Background()
	c := softhsmtest.New(b, 2)
	msg := make([]byte, 4096)
	ids := make([]hsm.KeyID, 1000)
	for i := range ids {
		ids[i] = hsm.KeyID(fmt.Sprintf("k%04d", i))
	}
	grow := func(tok *hsm.Token, n int) {
		// Create the keys in parallel: some hundreds of keys/s on SoftHSM.
		var wg sync.WaitGroup
		next := make(chan hsm.KeyID)
		for range 4 {
			wg.Go(func() {
				for id := range next {
					if _, err := tok.GenerateKey(ctx, id, hsm.AES256, hsm.KeyOptions{}); err != nil {
						b.Error(err)
					}
				}
			})
		}
		for _, id := range ids[:n] {
			next <- id
		}
		close(next)
		wg.Wait()
		if b.Failed() {
			b.FailNow()
		}
	}
	small, big := openPlain(b, c.Members[0]), openPlain(b, c.Members[1])
	grow(small, 10)
	grow(big, 1000)
	encOn := func(tok *hsm.Token, hot []hsm.KeyID) func(int) error {
		i := 0
		return func(int) error {
			i++
			_, _, err := tok.EncryptGCM(ctx, hot[i%len(hot)], nil, msg, nil)
			return err
		}
	}

	// Direct calls on the big token: one search for every AES key, then
	// their handles.
	e := &benchEnv{tok: big, msg: msg}
	e.ctx = pkcs11.New(c.Members[1].LibPath)
	require.NotNil(b, e.ctx)
	_ = e.ctx.Initialize()
	b.Cleanup(e.ctx.Destroy)
	s, err := e.ctx.OpenSession(big.Info().Slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	require.NoError(b, err)
	require.NoError(b, e.ctx.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY)}))
	handles, _, err := e.ctx.FindObjects(s, 2000)
	require.NoError(b, err)
	require.NoError(b, e.ctx.FindObjectsFinal(s))
	require.Len(b, handles, 1000)
	directOver := func(n int) func(int) error {
		i := 0
		return func(int) error {
			i++
			return benchOps[0].direct(e, s, handles[i%n])
		}
	}

	cases := []struct {
		name      string
		run, base func(int) error
	}{
		{"hot=10/on-token=1000", encOn(big, ids[:10]), encOn(small, ids[:10])},
		{"hot=1000/on-token=1000", encOn(big, ids), encOn(small, ids[:10])},
		{"direct/hot=1000", directOver(1000), directOver(10)},
	}
	const burst = 200
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			for _, f := range []func(int) error{tc.run, tc.base} { // warm up
				if _, err := runBurst(1, 2*burst, f); err != nil {
					b.Fatal(err)
				}
			}
			tr, tb := alternate(b, 1, burst, tc.run, tc.base)
			calls := float64(burst * b.N)
			b.ReportMetric(float64(tr.Nanoseconds())/calls, "case-ns/op")
			b.ReportMetric(float64(tb.Nanoseconds())/calls, "10keys-ns/op")
			b.ReportMetric(tb.Seconds()/tr.Seconds(), "x_10keys")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// skipCall is an Interceptor that answers op without calling the module.
type skipCall hsm.Op

func (k skipCall) Intercept(_ context.Context, op hsm.Op, call func() error) error {
	if op == hsm.Op(k) {
		return nil
	}
	return call()
}

// BenchmarkCallOverhead measures what the package itself costs per call:
// an Interceptor answers the HMAC call without reaching the module, so
// what remains is the pool, the bookkeeping and, on the deadline path, the
// handoff to a worker goroutine and back. The skipped part includes the
// key lookup, so no key is created. Without a C call to wait for, the
// worker's thread stays awake here; with real calls each handoff also
// wakes a thread (see BenchmarkVsDirect).
//
//	go test ./hsm -run '^$' -bench CallOverhead
func BenchmarkCallOverhead(b *testing.B) {
	m := softhsmtest.New(b, 1).Members[0]
	ctx := context.Background()
	for _, c := range []struct {
		name    string
		timeout time.Duration
	}{{"deadline", hsm.DefaultCallTimeout}, {"nodeadline", hsm.NoCallTimeout}} {
		b.Run(c.name, func(b *testing.B) {
			cfg := m.Config()
			cfg.CallTimeout = c.timeout
			tok, err := hsm.Open(ctx, cfg, hsm.WithInterceptor(skipCall(hsm.OpMAC)))
			require.NoError(b, err)
			b.Cleanup(func() { _ = tok.Close() })
			msg := make([]byte, 32)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := tok.MAC(ctx, "mac", crypto.SHA256, msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// openPlain opens a token without the fault injector, as production code
// does.
func openPlain(b *testing.B, m *softhsmtest.Member) *hsm.Token {
	tok, err := hsm.Open(context.Background(), m.Config())
	require.NoError(b, err)
	b.Cleanup(func() { _ = tok.Close() })
	return tok
}

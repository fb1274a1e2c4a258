package hsm_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestConcurrentMixedOps: 64 goroutines over a pool of 4 sessions, mixed
// operations, no errors (SoftHSM would abort the process if two goroutines
// ever shared a session).
func TestConcurrentMixedOps(t *testing.T) {
	ctx := context.Background()
	tok := open(t, member(t), func(c *hsm.Config) { c.MaxSessions = 4 })
	for id, spec := range map[hsm.KeyID]hsm.KeySpec{"aes": hsm.AES256, "ec": hsm.ECP256, "mac": hsm.HMAC256} {
		_, err := tok.GenerateKey(ctx, id, spec, hsm.KeyOptions{})
		require.NoError(t, err)
	}
	var wg sync.WaitGroup
	var failures atomic.Int64
	errs := make(chan error, 64)
	for g := range 64 {
		wg.Go(func() {
			for i := range 20 {
				if err := mixedOp(ctx, tok, g*1000+i); err != nil {
					failures.Add(1)
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	assert.Zero(t, failures.Load())
}

// mixedOp runs one operation chosen by n and checks its result.
func mixedOp(ctx context.Context, tok *hsm.Token, n int) error {
	msg := []byte(fmt.Sprintf("message %d", n))
	switch n % 4 {
	case 0, 1:
		ct, iv, err := tok.EncryptGCM(ctx, "aes", nil, msg, msg)
		if err != nil {
			return err
		}
		pt, err := tok.DecryptGCM(ctx, "aes", iv, ct, msg)
		if err != nil {
			return err
		}
		if !bytes.Equal(pt, msg) {
			return errors.New("decrypt returned another plaintext")
		}
	case 2:
		d := sha256.Sum256(msg)
		sig, err := tok.Sign(ctx, "ec", hsm.ECDSA, crypto.SHA256, d[:])
		if err != nil {
			return err
		}
		return tok.Verify(ctx, "ec", hsm.ECDSA, crypto.SHA256, d[:], sig)
	case 3:
		mac, err := tok.MAC(ctx, "mac", crypto.SHA256, msg)
		if err != nil {
			return err
		}
		return tok.VerifyMAC(ctx, "mac", crypto.SHA256, msg, mac)
	}
	return nil
}

// TestCrashRestartUnderLoad crashes the member's module (C_Finalize)
// while goroutines run, then restarts it: calls succeed again on the same
// Token without restarting the process, every failure in between is the
// member's fault, and no stale handle ever reaches another object.
func TestCrashRestartUnderLoad(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, func(c *hsm.Config) { c.MaxSessions = 4 })
	// Many keys, so that handle numbers after the restart land on other
	// objects if a stale handle were ever used.
	var ids []hsm.KeyID
	for i := range 8 {
		id := hsm.KeyID(fmt.Sprintf("k%d", i))
		ids = append(ids, id)
		_, err := tok.GenerateKey(ctx, id, hsm.AES256, hsm.KeyOptions{})
		require.NoError(t, err)
	}
	// Ciphertexts made before the crash, one per key.
	type sealed struct{ ct, iv []byte }
	before := map[hsm.KeyID]sealed{}
	for _, id := range ids {
		ct, iv, err := tok.EncryptGCM(ctx, id, nil, []byte(id), nil)
		require.NoError(t, err)
		before[id] = sealed{ct, iv}
	}
	gen0 := hsm.Generation(tok)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ok, memberFaults, wrong atomic.Int64
	for g := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := ids[(g+i)%len(ids)]
				pt, err := tok.DecryptGCM(ctx, id, before[id].iv, before[id].ct, nil)
				switch {
				case err == nil && string(pt) == string(id):
					ok.Add(1)
				case err == nil:
					wrong.Add(1)
				case hsm.Classify(err) == hsm.ClassMember:
					memberFaults.Add(1)
				default:
					wrong.Add(1) // ErrDecrypt here would mean a handle named another key
					t.Errorf("unexpected error: %v", err)
				}
			}
		})
	}
	waitFor(t, func() bool { return ok.Load() > 50 })
	require.NoError(t, m.Crash())
	waitFor(t, func() bool { return memberFaults.Load() > 0 })
	okAtCrash := ok.Load()
	require.NoError(t, m.Restart())
	waitFor(t, func() bool { return ok.Load() > okAtCrash+200 })
	close(stop)
	wg.Wait()

	assert.Zero(t, wrong.Load(), "a call reached the wrong object or failed as the caller's fault")
	assert.Greater(t, hsm.Generation(tok), gen0, "the restart started a new session generation")
	// Every key still decrypts its own ciphertext and only its own.
	for i, id := range ids {
		pt, err := tok.DecryptGCM(ctx, id, before[id].iv, before[id].ct, nil)
		require.NoError(t, err)
		assert.Equal(t, string(id), string(pt))
		other := ids[(i+1)%len(ids)]
		_, err = tok.DecryptGCM(ctx, other, before[id].iv, before[id].ct, nil)
		assert.ErrorIs(t, err, hsm.ErrDecrypt)
	}
	assertHealthy(t, tok)
}

// assertHealthy checks that tok reports itself healthy, with no error left
// from before it recovered.
func assertHealthy(t *testing.T, tok *hsm.Token) {
	t.Helper()
	h := tok.Health()
	assert.True(t, h.Healthy)
	assert.NoError(t, h.Err, "a healthy token reports no error")
}

// waitFor polls cond without sleeping as synchronisation: it yields until
// cond holds, failing after a generous bound.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 30s")
		}
		<-tick.C
	}
}

// TestHungCall: a call stuck in the module returns at the caller's
// deadline with ctx's error; the token reports itself unhealthy and its
// session is not reused; after the hang ends a probe makes it healthy.
func TestHungCall(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, func(c *hsm.Config) { c.MaxSessions = 2 })
	_, err := tok.GenerateKey(ctx, "aes", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)
	require.True(t, tok.Health().Healthy)

	m.Faults.Hang(hsm.OpEncrypt)
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err = tok.EncryptGCM(cctx, "aes", nil, []byte("x"), nil)
	elapsed := time.Since(start)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, elapsed, 5*time.Second, "the call returned at its deadline, not when the module did")
	assert.Equal(t, hsm.ClassContext, hsm.Classify(err))
	h := tok.Health()
	assert.False(t, h.Healthy)
	require.Error(t, h.Err)

	// Our own CallTimeout is the member's fault, not the context's.
	short := open(t, m, func(c *hsm.Config) { c.CallTimeout = 50 * time.Millisecond })
	_, _, err = short.EncryptGCM(ctx, "aes", nil, []byte("x"), nil)
	require.ErrorIs(t, err, hsm.ErrTimeout)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Equal(t, hsm.ClassMember, hsm.Classify(err))

	m.Faults.Release()
	require.NoError(t, tok.Probe(ctx))
	assert.True(t, tok.Health().Healthy)
	_, _, err = tok.EncryptGCM(ctx, "aes", nil, []byte("x"), nil)
	require.NoError(t, err)
}

// stackRecorder is an Interceptor that notes whether the test function
// named in fn is on the stack each PKCS#11 call is made from, i.e. whether
// the call runs on the caller's goroutine, and then passes the call on.
type stackRecorder struct {
	fn       string
	next     hsm.Interceptor
	onCaller atomic.Bool
}

func (r *stackRecorder) Intercept(ctx context.Context, op hsm.Op, call func() error) error {
	buf := make([]byte, 64<<10)
	r.onCaller.Store(bytes.Contains(buf[:runtime.Stack(buf, false)], []byte(r.fn)))
	return r.next.Intercept(ctx, op, call)
}

// TestNoCallTimeout: with CallTimeout NoCallTimeout, a call that nothing
// can end (context.Background) runs on the caller's goroutine and waits
// for the module however long it takes, without counting against the
// token; a call with a deadline or a cancellation still runs on a worker
// and returns at its deadline. Close waits for a call in flight, while
// calls made meanwhile return ErrClosed at once.
func TestNoCallTimeout(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	for _, d := range []time.Duration{0, -2 * time.Second} {
		cfg := m.Config()
		cfg.CallTimeout = d
		require.ErrorIs(t, cfg.Validate(), hsm.ErrInvalidInput, "CallTimeout %v", d)
	}
	cfg := m.Config()
	cfg.CallTimeout = hsm.NoCallTimeout
	require.NoError(t, cfg.Validate())
	rec := &stackRecorder{fn: "hsm_test.TestNoCallTimeout(", next: m.Faults}
	tok, err := hsm.Open(ctx, cfg, hsm.WithInterceptor(rec))
	require.NoError(t, err)
	t.Cleanup(func() { _ = tok.Close() })
	_, err = tok.GenerateKey(ctx, "aes", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)

	ct, iv, err := tok.EncryptGCM(ctx, "aes", nil, []byte("x"), nil)
	require.NoError(t, err)
	assert.True(t, rec.onCaller.Load(), "a call without deadline runs on the caller's goroutine")
	cctx, cancel := context.WithCancel(ctx)
	pt, err := tok.DecryptGCM(cctx, "aes", iv, ct, nil)
	cancel()
	require.NoError(t, err)
	assert.Equal(t, []byte("x"), pt)
	assert.False(t, rec.onCaller.Load(), "a cancellable call runs on a worker")

	// A hung call without a deadline waits for the module.
	m.Faults.Hang(hsm.OpRandom)
	returned := make(chan error, 1)
	go func() { _, err := tok.Random(ctx, 8); returned <- err }()
	require.NoError(t, m.Faults.AwaitHung(ctx, 1))
	assert.True(t, tok.Health().Healthy, "waiting without a deadline says nothing about the token")

	// One with a deadline returns at it, and the token reports itself
	// unhealthy.
	dctx, dcancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = tok.Random(dctx, 8)
	dcancel()
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.False(t, tok.Health().Healthy)

	closed := make(chan error, 1)
	go func() { closed <- tok.Close() }()
	var closedErr error
	waitFor(t, func() bool {
		_, _, closedErr = tok.EncryptGCM(ctx, "aes", nil, []byte("x"), nil) // succeeds until Close waits
		return closedErr != nil
	})
	require.ErrorIs(t, closedErr, hsm.ErrClosed)
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a call was in flight", err)
	case err := <-returned:
		t.Fatalf("the hung call returned (%v) before it was released", err)
	default:
	}
	m.Faults.Release()
	require.NoError(t, <-returned)
	require.NoError(t, <-closed)
}

// TestAdminCallsWithoutDeadline: two administrative calls, each needing
// every session slot, wait for slots held by hung calls; nothing bounds
// their contexts, so if each took some of the slots they would wait for
// each other for ever. Both finish once the hung calls do.
func TestAdminCallsWithoutDeadline(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, func(c *hsm.Config) {
		c.MaxSessions = 2
		c.CallTimeout = hsm.NoCallTimeout
	})
	m.Faults.Hang(hsm.OpRandom)
	hung := make(chan error, 2)
	for range 2 {
		go func() { _, err := tok.Random(ctx, 8); hung <- err }()
	}
	require.NoError(t, m.Faults.AwaitHung(ctx, 2))

	admin := make(chan error, 2)
	for _, id := range []hsm.KeyID{"kek-a", "kek-b"} {
		go func() {
			_, err := tok.CreateTrustedWrappingKey(ctx, id, m.SOPIN(), hsm.KeyOptions{})
			admin <- err
		}()
	}
	// Both admin calls are waiting (for slots or for each other) before
	// the slots come free.
	waitFor(t, func() bool {
		return goroutinesIn("hsm.(*Token).asSO(") >= 2 && goroutinesIn("hsm.(*Token).CreateTrustedWrappingKey(") >= 2
	})
	m.Faults.Release()
	for range 2 {
		require.NoError(t, <-hung)
	}
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for range 2 {
		select {
		case err := <-admin:
			require.NoError(t, err)
		case <-timeout.C:
			t.Fatal("the administrative calls deadlocked on the session slots")
		}
	}
}

// goroutinesIn counts the goroutines with fn on their stacks.
func goroutinesIn(fn string) int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte(fn)) {
			n++
		}
	}
	return n
}

// panicOnce is an Interceptor that panics on the first call of op and
// passes every other call on.
type panicOnce struct {
	op    hsm.Op
	next  hsm.Interceptor
	fired atomic.Bool
}

func (p *panicOnce) Intercept(ctx context.Context, op hsm.Op, call func() error) error {
	if op == p.op && p.fired.CompareAndSwap(false, true) {
		panic("interceptor panics")
	}
	return p.next.Intercept(ctx, op, call)
}

// TestRecoveredPanicLeavesTokenWorking: a call without a deadline runs on
// the caller's goroutine, so a panic in it (here the Interceptor's)
// reaches the caller. A caller that recovers it still has a working
// token: the objects lock is free (key creation takes it exclusively),
// and the session was not left borrowed (a new session generation waits
// for every borrowed session of the old one).
func TestRecoveredPanicLeavesTokenWorking(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	cfg := m.Config()
	cfg.CallTimeout = hsm.NoCallTimeout
	tok, err := hsm.Open(ctx, cfg, hsm.WithInterceptor(&panicOnce{op: hsm.OpEncrypt, next: m.Faults}))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, tok.Close()) })
	_, err = tok.GenerateKey(ctx, "aes", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)

	require.PanicsWithValue(t, "interceptor panics", func() { _, _, _ = tok.EncryptGCM(ctx, "aes", nil, []byte("x"), nil) })

	// Bounded calls: a leaked lock or session would make them time out.
	bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = tok.GenerateKey(bctx, "aes2", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err, "the objects lock was released")
	gen := hsm.Generation(tok)
	m.Faults.FailNext(hsm.OpEncrypt, 1, pkcs11.CKR_SESSION_HANDLE_INVALID)
	_, _, err = tok.EncryptGCM(bctx, "aes", nil, []byte("x"), nil)
	require.NoError(t, err, "a new generation's session was opened: nothing old is still borrowed")
	assert.Greater(t, hsm.Generation(tok), gen)
	assertHealthy(t, tok)
}

// TestSessionFatalCodes: a session-fatal code evicts the session, starts a
// new generation and the call is retried once on a fresh session;
// CKR_USER_NOT_LOGGED_IN logs in again.
func TestSessionFatalCodes(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, nil)
	_, err := tok.GenerateKey(ctx, "aes", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)
	_, _, err = tok.EncryptGCM(ctx, "aes", nil, []byte("x"), nil)
	require.NoError(t, err)
	require.Equal(t, 1, hsm.CachedKeys(tok))

	for _, code := range []uint{pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_DEVICE_ERROR,
		pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED} {
		gen := hsm.Generation(tok)
		m.Faults.FailNext(hsm.OpEncrypt, 1, code)
		_, _, err = tok.EncryptGCM(ctx, "aes", nil, []byte("x"), nil)
		require.NoError(t, err, "retried on a fresh session after %v", hsm.CKR(code))
		assert.Greater(t, hsm.Generation(tok), gen, "%v started a new generation", hsm.CKR(code))
	}

	// Twice in a row: the retry fails too and the member's fault surfaces,
	// with its code.
	m.Faults.FailNext(hsm.OpEncrypt, 2, pkcs11.CKR_DEVICE_ERROR)
	_, _, err = tok.EncryptGCM(ctx, "aes", nil, []byte("x"), nil)
	require.ErrorIs(t, err, hsm.CKR(pkcs11.CKR_DEVICE_ERROR))
	assert.Equal(t, hsm.ClassMember, hsm.Classify(err))
	assert.False(t, tok.Health().Healthy)

	gen := hsm.Generation(tok)
	m.Faults.FailNext(hsm.OpEncrypt, 1, pkcs11.CKR_USER_NOT_LOGGED_IN)
	_, _, err = tok.EncryptGCM(ctx, "aes", nil, []byte("x"), nil)
	require.NoError(t, err)
	assert.Equal(t, gen, hsm.Generation(tok), "a re-login needs no new generation")
	assertHealthy(t, tok)

	// A caller's fault code is returned at once and not retried.
	calls := m.Faults.Calls(hsm.OpEncrypt)
	m.Faults.FailNext(hsm.OpEncrypt, 1, pkcs11.CKR_ARGUMENTS_BAD)
	_, _, err = tok.EncryptGCM(ctx, "aes", nil, []byte("x"), nil)
	require.ErrorIs(t, err, hsm.CKR(pkcs11.CKR_ARGUMENTS_BAD))
	assert.Equal(t, calls+1, m.Faults.Calls(hsm.OpEncrypt))
	assert.True(t, tok.Health().Healthy, "a caller's fault is not held against the token")
}

// TestHandleCache: after the first use of a key no operation searches the
// token.
func TestHandleCache(t *testing.T) {
	ctx := context.Background()
	tok := open(t, member(t), nil)
	_, err := tok.GenerateKey(ctx, "aes", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)
	finds := hsm.Finds(tok)
	for range 100 {
		ct, iv, err := tok.EncryptGCM(ctx, "aes", nil, []byte("x"), nil)
		require.NoError(t, err)
		_, err = tok.DecryptGCM(ctx, "aes", iv, ct, nil)
		require.NoError(t, err)
	}
	assert.Equal(t, finds, hsm.Finds(tok), "no C_FindObjects on the hot path")

	// A key destroyed elsewhere (another process) is found missing.
	require.NoError(t, tok.DestroyKey(ctx, "aes"))
	_, _, err = tok.EncryptGCM(ctx, "aes", nil, []byte("x"), nil)
	require.ErrorIs(t, err, hsm.ErrKeyNotFound)
}

// TestListingWarmsTheCache: a listing caches every key's handles, the
// public half of a pair included, so that a Token that has just listed
// its keys (a cluster member's re-sync) searches nothing on their first
// use.
func TestListingWarmsTheCache(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, nil)
	for _, spec := range []hsm.KeySpec{hsm.AES256, hsm.HMAC256, hsm.ECP256, hsm.RSA2048} {
		_, err := tok.GenerateKey(ctx, hsm.KeyID(spec), spec, hsm.KeyOptions{})
		require.NoError(t, err)
	}
	fresh := open(t, m, nil)
	keys, err := fresh.ListKeys(ctx)
	require.NoError(t, err)
	require.Len(t, keys, 4)
	assert.Equal(t, 4, hsm.CachedKeys(fresh))
	finds := hsm.Finds(fresh)
	ct, iv, err := fresh.EncryptGCM(ctx, hsm.KeyID(hsm.AES256), nil, []byte("x"), nil)
	require.NoError(t, err)
	_, err = tok.DecryptGCM(ctx, hsm.KeyID(hsm.AES256), iv, ct, nil)
	require.NoError(t, err)
	_, err = fresh.MAC(ctx, hsm.KeyID(hsm.HMAC256), crypto.SHA256, []byte("x"))
	require.NoError(t, err)
	for _, spec := range []hsm.KeySpec{hsm.ECP256, hsm.RSA2048} {
		digest := sha256.Sum256([]byte("x"))
		scheme := hsm.ECDSA
		if spec == hsm.RSA2048 {
			scheme = hsm.PKCS1v15
		}
		_, err = fresh.Sign(ctx, hsm.KeyID(spec), scheme, crypto.SHA256, digest[:])
		require.NoError(t, err, spec)
		got, err := fresh.PublicKey(ctx, hsm.KeyID(spec))
		require.NoError(t, err, spec)
		want, err := tok.PublicKey(ctx, hsm.KeyID(spec))
		require.NoError(t, err)
		assert.Equal(t, want, got, spec)
		_, err = fresh.CheckValue(ctx, hsm.KeyID(spec))
		require.NoError(t, err, spec)
	}
	assert.Equal(t, finds, hsm.Finds(fresh), "no C_FindObjects after a listing")
}

// TestClose: Close waits for an in-flight call, is idempotent, and calls
// after it fail with ErrClosed. Two tokens on one module share it.
func TestClose(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	cfg := m.Config()
	a, err := hsm.Open(ctx, cfg, hsm.WithInterceptor(m.Faults))
	require.NoError(t, err)
	b := open(t, m, nil) // the same module path: one shared instance
	_, err = a.GenerateKey(ctx, "aes", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)

	m.Faults.Hang(hsm.OpRandom)
	started := make(chan struct{})
	returned := make(chan error, 1)
	go func() {
		close(started)
		_, err := a.Random(ctx, 16)
		returned <- err
	}()
	<-started
	require.NoError(t, m.Faults.AwaitHung(ctx, 1))
	closed := make(chan error, 1)
	go func() { closed <- a.Close() }()
	// An observation window, not synchronisation: Close must still be
	// waiting for the hung call when it ends.
	select {
	case <-closed:
		t.Fatal("Close returned while a call was in flight")
	case <-returned:
		t.Fatal("the hung call returned before it was released")
	case <-time.After(100 * time.Millisecond):
	}
	m.Faults.Release()
	require.NoError(t, <-returned)
	require.NoError(t, <-closed)
	require.NoError(t, a.Close(), "Close is idempotent")
	_, err = a.Random(ctx, 16)
	require.ErrorIs(t, err, hsm.ErrClosed)
	assert.Equal(t, hsm.ClassFatal, hsm.Classify(err))

	// b still works: closing a did not finalize the shared module.
	_, _, err = b.EncryptGCM(ctx, "aes", nil, []byte("x"), nil)
	require.NoError(t, err)
}

// TestParallelKeyCreation creates keys from 8 goroutines while others
// encrypt. SoftHSM's file store fails such creations at random
// (CKR_GENERAL_ERROR) unless its profile makes object writes exclusive.
func TestParallelKeyCreation(t *testing.T) {
	ctx := context.Background()
	tok := open(t, member(t), nil)
	_, err := tok.GenerateKey(ctx, "aes", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 12 {
				spec := []hsm.KeySpec{hsm.AES256, hsm.ECP256, hsm.HMAC256}[i%3]
				if _, err := tok.GenerateKey(ctx, hsm.KeyID(fmt.Sprintf("k%d-%d", g, i)), spec, hsm.KeyOptions{}); err != nil {
					t.Error(err)
				}
				if _, _, err := tok.EncryptGCM(ctx, "aes", nil, []byte("x"), nil); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	keys, err := tok.ListKeys(ctx)
	require.NoError(t, err)
	assert.Len(t, keys, 1+8*12)
}

// TestReplacedToken: the token is wiped and re-created with the same label
// (a replaced HSM). The same Token reconnects to it, forgets every cached
// handle, and reports the new serial; the old keys are gone.
func TestReplacedToken(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, nil)
	_, err := tok.GenerateKey(ctx, "aes", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)
	_, _, err = tok.EncryptGCM(ctx, "aes", nil, []byte("x"), nil)
	require.NoError(t, err)
	serial := tok.Info().Serial

	require.NoError(t, m.Wipe())
	// The first call after the wipe may meet the dead session; the retry
	// reconnects to the new token.
	_, _, err = tok.EncryptGCM(ctx, "aes", nil, []byte("x"), nil)
	require.ErrorIs(t, err, hsm.ErrKeyNotFound, "a stale handle must not reach an object of the new token")
	assert.NotEqual(t, serial, tok.Info().Serial)
	assert.Equal(t, m.Label, tok.Info().Label)
	_, err = tok.GenerateKey(ctx, "aes", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)
	_, _, err = tok.EncryptGCM(ctx, "aes", nil, []byte("x"), nil)
	require.NoError(t, err)
}

// TestCloseCrashedMember: a token whose module is down closes cleanly.
func TestCloseCrashedMember(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok, err := hsm.Open(ctx, m.Config(), hsm.WithInterceptor(m.Faults))
	require.NoError(t, err)
	_, err = tok.Random(ctx, 8)
	require.NoError(t, err)
	require.NoError(t, m.Crash())
	require.NoError(t, tok.Close())
	require.NoError(t, m.Restart())
}

// TestRecoveredTokenForgetsItsFault: a crashed member makes calls fail
// and the token unhealthy with the fault recorded; once the member is
// back, the next call reconnects and the token is healthy with no error
// left over.
func TestRecoveredTokenForgetsItsFault(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, nil)
	_, err := tok.Random(ctx, 8)
	require.NoError(t, err)
	require.NoError(t, m.Crash())
	_, err = tok.Random(ctx, 8)
	require.Error(t, err)
	h := tok.Health()
	require.False(t, h.Healthy)
	require.Error(t, h.Err)
	require.NoError(t, m.Restart())
	_, err = tok.Random(ctx, 8)
	require.NoError(t, err)
	assertHealthy(t, tok)
}

// TestCancelledCallNotHeldAgainstToken: cancelling a hung call returns at
// once with context.Canceled, leaves the token healthy, and Close does not
// wait for the abandoned worker.
func TestCancelledCallNotHeldAgainstToken(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok, err := hsm.Open(ctx, m.Config(), hsm.WithInterceptor(m.Faults))
	require.NoError(t, err)
	m.Faults.Hang(hsm.OpRandom)
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { _, err := tok.Random(cctx, 8); errc <- err }()
	require.NoError(t, m.Faults.AwaitHung(ctx, 1))
	cancel()
	err = <-errc
	require.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, hsm.ClassContext, hsm.Classify(err))
	assert.True(t, tok.Health().Healthy, "a cancellation is not the token's fault")
	require.NoError(t, tok.Close(), "Close returns while the abandoned worker is still stuck")
	m.Faults.Release()
}

// TestAbandonedWorkersDoNotRace: every kind of call returns at its
// deadline while its worker is still delayed in the module; the workers
// finish later and write their results, and the token serves on. Under
// -race this also exercises the rule that a caller never reads what an
// abandoned worker writes (the detector sees such a race only when the
// runtime does not happen to order the two, so it is a guard, not proof).
func TestAbandonedWorkersDoNotRace(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, nil)
	for id, spec := range map[hsm.KeyID]hsm.KeySpec{"aes": hsm.AES256, "ec": hsm.ECP256, "mac": hsm.HMAC256} {
		_, err := tok.GenerateKey(ctx, id, spec, hsm.KeyOptions{})
		require.NoError(t, err)
	}
	ct, iv, err := tok.EncryptGCM(ctx, "aes", nil, []byte("x"), nil)
	require.NoError(t, err)
	d := sha256.Sum256(nil)

	m.Faults.SetLatency(softhsmtest.AnyOp, 200*time.Millisecond)
	calls := []func(context.Context) error{
		func(c context.Context) error {
			_, _, err := tok.EncryptGCM(c, "aes", nil, []byte("x"), nil)
			return err
		},
		func(c context.Context) error { _, err := tok.DecryptGCM(c, "aes", iv, ct, nil); return err },
		func(c context.Context) error { _, err := tok.Sign(c, "ec", hsm.ECDSA, crypto.SHA256, d[:]); return err },
		func(c context.Context) error { _, err := tok.MAC(c, "mac", crypto.SHA256, []byte("x")); return err },
		func(c context.Context) error { _, err := tok.PublicKey(c, "ec"); return err },
		func(c context.Context) error { _, err := tok.Random(c, 8); return err },
		func(c context.Context) error { _, err := tok.Describe(c, "ec"); return err },
		func(c context.Context) error { _, err := tok.ListKeys(c); return err },
	}
	var wg sync.WaitGroup
	for _, call := range calls {
		wg.Go(func() {
			c, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
			defer cancel()
			if err := call(c); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("want the deadline, got %v", err)
			}
		})
	}
	wg.Wait()
	// Let the abandoned workers finish and write.
	waitFor(t, func() bool { return m.Faults.InFlight() == 0 })
	m.Faults.SetLatency(softhsmtest.AnyOp, 0)
	require.NoError(t, tok.Probe(ctx))
}

// TestLastSessionClosedLogsOut: a cancelled call's session is closed, not
// reused; when it was the application's last session, PKCS#11 logs the
// application out. The next call must log in again, not find the key
// missing.
func TestLastSessionClosedLogsOut(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, func(c *hsm.Config) { c.MaxSessions = 1 })
	_, err := tok.GenerateKey(ctx, "aes", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)
	for range 5 {
		m.Faults.Hang(hsm.OpEncrypt)
		cctx, cancel := context.WithCancel(ctx)
		errc := make(chan error, 1)
		go func() { _, _, err := tok.EncryptGCM(cctx, "aes", nil, []byte("x"), nil); errc <- err }()
		require.NoError(t, m.Faults.AwaitHung(ctx, 1))
		cancel()
		require.ErrorIs(t, <-errc, context.Canceled)
		m.Faults.Release()
		// The abandoned worker finishes and closes the only session.
		waitFor(t, func() bool { return m.Faults.InFlight() == 0 })
		_, _, err = tok.EncryptGCM(ctx, "aes", nil, []byte("x"), nil)
		require.NoError(t, err)
	}
}

// TestUnfinishedPairIsCleared: the public half of a key pair whose
// private half is gone, as a creation or deletion cut off half-way leaves
// it, does not hold its ID: the next creation under the ID removes it and
// succeeds. Anything else under the ID still refuses a creation and is
// left alone: a lone private half, a public key of another label, or a
// complete pair whose private half a logged-out session cannot see. The
// leftovers are made here with a second PKCS#11 client on the member's
// library instance.
func TestUnfinishedPairIsCleared(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, nil)

	p, s := secondClient(t, m, tok)
	find := func(id string, class ...uint) []pkcs11.ObjectHandle {
		tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(id))}
		for _, c := range class {
			tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_CLASS, c))
		}
		return findObjects(t, p, s, tmpl...)
	}
	destroy := func(id string, class uint) {
		objs := find(id, class)
		require.Len(t, objs, 1)
		require.NoError(t, p.DestroyObject(s, objs[0]))
	}

	// A lone public half: removed, and the new pair (of another spec)
	// is whole and works.
	_, err := tok.GenerateKey(ctx, "pair", hsm.ECP256, hsm.KeyOptions{})
	require.NoError(t, err)
	destroy("pair", pkcs11.CKO_PRIVATE_KEY)
	_, err = tok.GenerateKey(ctx, "pair", hsm.ECP384, hsm.KeyOptions{})
	require.NoError(t, err, "the unfinished pair's public half should have been removed")
	assert.Len(t, find("pair", pkcs11.CKO_PUBLIC_KEY), 1)
	assert.Len(t, find("pair", pkcs11.CKO_PRIVATE_KEY), 1)
	der, err := tok.PublicKey(ctx, "pair")
	require.NoError(t, err)
	pub, err := x509.ParsePKIXPublicKey(der)
	require.NoError(t, err)
	digest := sha512.Sum384([]byte("whole again"))
	sig, err := tok.Sign(ctx, "pair", hsm.ECDSA, crypto.SHA384, digest[:])
	require.NoError(t, err)
	assert.True(t, ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), digest[:], sig))

	// A lone private half: refused, and kept.
	_, err = tok.GenerateKey(ctx, "lonely", hsm.ECP256, hsm.KeyOptions{})
	require.NoError(t, err)
	destroy("lonely", pkcs11.CKO_PUBLIC_KEY)
	_, err = tok.GenerateKey(ctx, "lonely", hsm.ECP256, hsm.KeyOptions{})
	assert.ErrorIs(t, err, hsm.ErrKeyExists)
	assert.Len(t, find("lonely"), 1)

	// A public key under the ID with a label this library did not give
	// it (a transport key's ":public" one, or another application's):
	// refused, and kept.
	for _, label := range []string{"hsmkms:EC_P256:foreign:public", "someone else's"} {
		objs := find("pair", pkcs11.CKO_PUBLIC_KEY)
		require.Len(t, objs, 1)
		_, err := p.CopyObject(s, objs[0], []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_ID, []byte("foreign")),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		})
		require.NoError(t, err)
		_, err = tok.GenerateKey(ctx, "foreign", hsm.ECP256, hsm.KeyOptions{})
		assert.ErrorIs(t, err, hsm.ErrKeyExists, label)
		assert.Len(t, find("foreign"), 1, label)
		destroy("foreign", pkcs11.CKO_PUBLIC_KEY)
	}

	// While the application is logged out (or logged in as the SO), the
	// token hides private objects, and a complete pair shows only its
	// public half: refused, and kept whole.
	_, err = tok.GenerateKey(ctx, "whole", hsm.ECP256, hsm.KeyOptions{})
	require.NoError(t, err)
	require.NoError(t, p.Logout(s)) // the application's login, so the Token's too
	_, err = tok.GenerateKey(ctx, "whole", hsm.ECP256, hsm.KeyOptions{})
	assert.ErrorIs(t, err, hsm.ErrKeyExists)
	require.NoError(t, p.Login(s, pkcs11.CKU_USER, rawPIN(t, m)))
	assert.Len(t, find("whole", pkcs11.CKO_PUBLIC_KEY), 1)
	assert.Len(t, find("whole", pkcs11.CKO_PRIVATE_KEY), 1)
}

// TestCloseDoesNotWaitForQueuedCalls: a call abandoned at its deadline
// keeps the only session slot while the module hangs; a call without a
// deadline queues for that slot. Close neither waits for the hung worker
// nor for the queued call: the queued call gives up with ErrClosed.
func TestCloseDoesNotWaitForQueuedCalls(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, func(c *hsm.Config) {
		c.MaxSessions = 1
		c.CallTimeout = hsm.NoCallTimeout
	})
	m.Faults.Hang(hsm.OpRandom)
	defer m.Faults.Release()
	dctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err := tok.Random(dctx, 8)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	queued := async(func() error { _, err := tok.Random(ctx, 8); return err })
	waitFor(t, func() bool { return goroutinesIn("hsm.(*Token).acquire(") >= 1 })
	closed := async(tok.Close)
	assert.ErrorIs(t, await(t, queued, "the queued call waited on after Close began"), hsm.ErrClosed)
	assert.NoError(t, await(t, closed, "Close waited for a call queued behind a hung worker"))
}

// TestPanicInLoginClosesTheSession: a login that panics (in the
// Interceptor) on the caller's goroutine leaves no session open behind
// it. The token's only session is lost to CKR_USER_NOT_LOGGED_IN, so the
// retry opens a new one and logs in, and the login panics. A second
// PKCS#11 client on the member's library instance then finds no session
// open; and the token works after the panic.
func TestPanicInLoginClosesTheSession(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	cfg := m.Config()
	cfg.CallTimeout = hsm.NoCallTimeout
	cfg.MaxSessions = 1
	trap := &panicOnce{op: hsm.OpLogin, next: m.Faults}
	trap.fired.Store(true) // disarmed while Open logs in
	tok, err := hsm.Open(ctx, cfg, hsm.WithInterceptor(trap))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, tok.Close()) })
	_, err = tok.Random(ctx, 8)
	require.NoError(t, err)

	p := libraryClient(t, m)
	require.Equal(t, 1, openSessions(p), "the pool's one idle session")

	m.Faults.FailNext(hsm.OpRandom, 1, pkcs11.CKR_USER_NOT_LOGGED_IN)
	trap.fired.Store(false)
	require.PanicsWithValue(t, "interceptor panics", func() { _, _ = tok.Random(ctx, 8) })
	assert.Zero(t, openSessions(p), "the session whose login panicked should be closed")

	_, err = tok.Random(ctx, 8)
	require.NoError(t, err)
	assert.Equal(t, 1, openSessions(p))
}

// opCounter is an Interceptor that counts the calls of one operation and
// passes every call on.
type opCounter struct {
	op   hsm.Op
	n    atomic.Int64
	next hsm.Interceptor
}

func (c *opCounter) Intercept(ctx context.Context, op hsm.Op, call func() error) error {
	if op == c.op {
		c.n.Add(1)
	}
	return c.next.Intercept(ctx, op, call)
}

// TestSessionLoginCheckIsIntercepted: a session opened while the
// application is logged in has its login state checked through the
// Interceptor, as part of logging in, so that every call into the module
// is seen (softhsmtest's Crash waits for the calls it sees before it
// finalizes the module; a call it did not see hung in SoftHSM).
func TestSessionLoginCheckIsIntercepted(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	counter := &opCounter{op: hsm.OpLogin, next: m.Faults}
	cfg := m.Config()
	tok, err := hsm.Open(ctx, cfg, hsm.WithInterceptor(counter))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, tok.Close()) })
	_, err = tok.GenerateKey(ctx, "aes", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)
	logins := counter.n.Load()

	m.Faults.Hang(hsm.OpRandom) // keeps the idle session busy
	hung := make(chan error, 1)
	go func() { _, err := tok.Random(ctx, 16); hung <- err }()
	require.NoError(t, m.Faults.AwaitHung(ctx, 1))
	_, _, err = tok.EncryptGCM(ctx, "aes", nil, []byte("x"), nil) // on a new session
	require.NoError(t, err)
	m.Faults.Release()
	require.NoError(t, <-hung)
	assert.Equal(t, logins+1, counter.n.Load(), "the new session's login check did not go through the Interceptor")
}

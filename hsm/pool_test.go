package hsm_test

import (
	"context"
	"errors"
	"runtime"
	"strings"
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

// The session pool's races, made deterministic: a gates Interceptor holds
// chosen calls at a gate until the test opens it.

// gate holds one intercepted call, before the module is called or after.
type gate struct {
	after   bool          // hold after the call rather than before
	entered chan struct{} // closed when the call reaches the gate
	release chan struct{}
	fail    error // returned instead of calling the module (before-gates)
	done    chan struct{}
}

func (g *gate) open()            { close(g.release) }
func (g *gate) failWith(e error) { g.fail = e; close(g.release) }

// gates is an Interceptor: the n-th call of an op after arm takes the n-th
// gate armed for that op; other calls pass.
type gates struct {
	mu sync.Mutex
	q  map[hsm.Op][]*gate
}

func (gs *gates) arm(op hsm.Op, after bool) *gate {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	if gs.q == nil {
		gs.q = map[hsm.Op][]*gate{}
	}
	g := &gate{after: after, entered: make(chan struct{}), release: make(chan struct{}), done: make(chan struct{})}
	gs.q[op] = append(gs.q[op], g)
	return g
}

func (gs *gates) Intercept(_ context.Context, op hsm.Op, call func() error) error {
	gs.mu.Lock()
	var g *gate
	if q := gs.q[op]; len(q) > 0 {
		g, gs.q[op] = q[0], q[1:]
	}
	gs.mu.Unlock()
	if g == nil {
		return call()
	}
	defer close(g.done)
	if !g.after {
		close(g.entered)
		<-g.release
		if g.fail != nil {
			return g.fail
		}
		return call()
	}
	err := call()
	close(g.entered)
	<-g.release
	return err
}

func openGated(t *testing.T, m *softhsmtest.Member, gs *gates, edit func(*hsm.Config)) *hsm.Token {
	t.Helper()
	cfg := m.Config()
	if edit != nil {
		edit(&cfg)
	}
	tok, err := hsm.Open(context.Background(), cfg, hsm.WithInterceptor(gs))
	require.NoError(t, err)
	t.Cleanup(func() { _ = tok.Close() })
	_, err = tok.GenerateKey(context.Background(), "aes", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)
	return tok
}

func encryptOnce(ctx context.Context, tok *hsm.Token) error {
	_, _, err := tok.EncryptGCM(ctx, "aes", nil, []byte("x"), nil)
	return err
}

func async(f func() error) chan error {
	c := make(chan error, 1)
	go func() { c <- f() }()
	return c
}

// TestSessionBeingOpenedHoldsTheGeneration: a session still being opened
// when a session-fatal code starts a new generation belongs to the old
// one: no session of the new generation is opened until it is back (a
// restarted module reuses handle numbers), and once it is back the
// waiting call goes on at once rather than at its deadline.
func TestSessionBeingOpenedHoldsTheGeneration(t *testing.T) {
	ctx := context.Background()
	gs := &gates{}
	tok := openGated(t, member(t), gs, nil)

	gX := gs.arm(hsm.OpEncrypt, false)
	x := async(func() error { return encryptOnce(ctx, tok) }) // X holds the only idle session
	<-gX.entered
	gA := gs.arm(hsm.OpOpen, false)
	a := async(func() error { return encryptOnce(ctx, tok) }) // A is in C_OpenSession
	<-gA.entered
	gen := hsm.Generation(tok)

	// X's session dies: a new generation. X's retry must wait for A's
	// session, which is of the old generation.
	gX.failWith(hsm.CKR(pkcs11.CKR_DEVICE_ERROR))
	waitFor(t, func() bool { return hsm.Generation(tok) > gen && goroutinesIn("hsm.(*Token).getSession(") >= 2 })
	select {
	case err := <-x:
		t.Fatalf("X went on (%v) while a session of the old generation was being opened", err)
	default:
	}

	gA.open() // A's session opens (old generation), is used and given back
	for _, c := range []chan error{a, x} {
		require.NoError(t, await(t, c, "a call waited on after the old generation's last session was back"))
	}
	assertHealthy(t, tok)
}

// TestNewSessionLogsInWhenTheApplicationWasLoggedOut: while one call
// opens a session, another drops the application's last session, which
// logs the application out (C_CloseSession). The new session must log in
// though the pool believed it was logged in, or the token's private keys
// would be invisible to it ("key not found").
func TestNewSessionLogsInWhenTheApplicationWasLoggedOut(t *testing.T) {
	ctx := context.Background()
	gs := &gates{}
	tok := openGated(t, member(t), gs, nil)

	gA := gs.arm(hsm.OpEncrypt, false)
	actx, cancelA := context.WithCancel(ctx)
	defer cancelA()
	a := async(func() error { return encryptOnce(actx, tok) }) // A holds the only session
	<-gA.entered
	gB := gs.arm(hsm.OpOpen, false)
	b := async(func() error { return encryptOnce(ctx, tok) }) // B is about to open one
	<-gB.entered

	cancelA() // A's session is abandoned, so it is closed when A's worker is done
	require.ErrorIs(t, <-a, context.Canceled)
	closed := gs.arm(hsm.OpOpen, false) // A's C_CloseSession
	gA.open()
	<-closed.entered
	closed.open()
	<-closed.done // the application has no session left: logged out

	gB.open()
	require.NoError(t, <-b, "the new session should have logged in")
	require.NoError(t, encryptOnce(ctx, tok))
	assertHealthy(t, tok)
}

// TestFailedOpenKeepsTheModuleUnderItsWorker: Open's login hangs past
// Open's deadline. Open fails, but its worker is still inside the module,
// so the module is not finalized under it; when the login comes back the
// worker finishes without harm, and the member opens again.
func TestFailedOpenKeepsTheModuleUnderItsWorker(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	m.Faults.Hang(hsm.OpLogin)
	octx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err := hsm.Open(octx, m.Config(), hsm.WithInterceptor(m.Faults))
	require.ErrorIs(t, err, context.DeadlineExceeded)
	m.Faults.Release() // the login goes on into the module
	require.NoError(t, m.Faults.AwaitIdle(ctx))
	waitFor(t, func() bool { return goroutinesIn("hsm.(*Token).work(") == 0 })

	tok := open(t, m, nil)
	_, err = tok.Random(ctx, 8)
	require.NoError(t, err)
}

// TestAbandonedAdminCallKeepsItsSlots: an administrative call (SO login,
// which holds for the whole application) whose caller gave up keeps every
// session slot until its worker is done: an ordinary call must not run
// while the SO may be logged in.
func TestAbandonedAdminCallKeepsItsSlots(t *testing.T) {
	ctx := context.Background()
	gs := &gates{}
	m := member(t)
	tok := openGated(t, m, gs, func(c *hsm.Config) {
		p := hsm.ProfileSoftHSM2
		p.ExclusiveObjectWrites = false // SoftHSM's object lock would hide the fault
		c.Profile = &p
		c.MaxSessions = 2
	})
	gAdmin := gs.arm(hsm.OpMarkTrusted, false)
	actx, cancelAdmin := context.WithCancel(ctx)
	admin := async(func() error {
		_, err := tok.CreateTrustedWrappingKey(actx, "kek", m.SOPIN(), hsm.KeyOptions{})
		return err
	})
	<-gAdmin.entered
	cancelAdmin()
	require.ErrorIs(t, <-admin, context.Canceled)

	enc := async(func() error { return encryptOnce(ctx, tok) })
	waitFor(t, func() bool { return len(enc) > 0 || goroutinesIn("hsm.(*Token).acquire(") >= 1 })
	require.Zero(t, len(enc), "an ordinary call ran while the abandoned administrative call was pending")

	gAdmin.open() // the administrative work runs to its end, the user is logged in again
	require.NoError(t, <-enc)
	_, err := tok.Describe(ctx, "kek")
	assert.NoError(t, err, "the abandoned call still made its key")
}

// TestStallInCloseSessionCountsAsStuck: a call whose session must be
// closed (CKR_OPERATION_ACTIVE) stalls in C_CloseSession past its
// deadline. Its caller returns at the deadline, the token reports itself
// unhealthy, and Close does not wait for the stalled worker.
func TestStallInCloseSessionCountsAsStuck(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, nil)
	_, err := tok.GenerateKey(ctx, "aes", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)
	m.Faults.FailNext(hsm.OpEncrypt, 1, pkcs11.CKR_OPERATION_ACTIVE)
	m.Faults.Hang(hsm.OpOpen) // C_CloseSession is intercepted as OpOpen
	defer m.Faults.Release()
	dctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, _, err = tok.EncryptGCM(dctx, "aes", nil, []byte("x"), nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.False(t, tok.Health().Healthy)

	assert.NoError(t, await(t, async(tok.Close), "Close waited for a worker stalled in C_CloseSession"))
}

// TestErrorsNameTheirOperation: an error built deep inside an operation
// (here the module refusing a key for encryption) still says which
// operation and which token it comes from.
func TestErrorsNameTheirOperation(t *testing.T) {
	ctx := context.Background()
	tok := open(t, member(t), nil)
	_, err := tok.GenerateKey(ctx, "signer", hsm.AES256, hsm.KeyOptions{Usage: hsm.UsageSign})
	require.NoError(t, err)
	_, _, err = tok.EncryptGCM(ctx, "signer", nil, []byte("x"), nil)
	require.ErrorIs(t, err, hsm.ErrWrongKeyType)
	var he *hsm.Error
	require.ErrorAs(t, err, &he)
	assert.Equal(t, hsm.OpEncrypt, he.Op)
	assert.NotEmpty(t, he.Token)
	assert.NotZero(t, he.Code)
}

// TestReloginForgetsCachedHandles: the application is logged out behind
// the pool's back (another call closed its last session while a new one
// was being opened). The new session logs in again and the key cache is
// emptied: the module dropped the handles, and may number objects anew.
func TestReloginForgetsCachedHandles(t *testing.T) {
	ctx := context.Background()
	gs := &gates{}
	tok := openGated(t, member(t), gs, nil)
	require.NoError(t, encryptOnce(ctx, tok))
	require.Equal(t, 1, hsm.CachedKeys(tok))

	gA := gs.arm(hsm.OpEncrypt, false)
	actx, cancelA := context.WithCancel(ctx)
	defer cancelA()
	a := async(func() error { return encryptOnce(actx, tok) }) // A holds the only session
	<-gA.entered
	gB := gs.arm(hsm.OpOpen, false)
	b := async(func() error { _, err := tok.Random(ctx, 8); return err }) // B opens one
	<-gB.entered
	cancelA()
	require.ErrorIs(t, <-a, context.Canceled)
	closed := gs.arm(hsm.OpOpen, false) // A's C_CloseSession: logged out
	gA.open()
	<-closed.entered
	closed.open()
	<-closed.done
	gB.open()
	require.NoError(t, <-b)
	assert.Zero(t, hsm.CachedKeys(tok), "handles cached before the logout should be forgotten")
	require.NoError(t, encryptOnce(ctx, tok))
}

// onNewSession is an Interceptor that, once armed, hands the next
// C_OpenSession of a new pool session (not a reconnect's) to do instead
// of passing it on; every other call passes.
type onNewSession struct {
	next  hsm.Interceptor
	armed atomic.Bool
	do    func(call func() error) error
}

func (o *onNewSession) Intercept(ctx context.Context, op hsm.Op, call func() error) error {
	if op == hsm.OpOpen && goroutineIn("hsm.(*Token).getSession(") && !goroutineIn("hsm.(*Token).reconnect(") &&
		o.armed.CompareAndSwap(true, false) {
		return o.do(call)
	}
	return o.next.Intercept(ctx, op, call)
}

// goroutineIn reports whether the calling goroutine's stack holds fn.
func goroutineIn(fn string) bool {
	buf := make([]byte, 1<<16)
	return strings.Contains(string(buf[:runtime.Stack(buf, false)]), fn)
}

// TestRecoveredPanicInOpenSession: a panic around C_OpenSession on the
// caller's goroutine, recovered by the caller, leaves no session counted
// as out: after the next session-fatal code a new generation still gets
// its sessions.
func TestRecoveredPanicInOpenSession(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	cfg := m.Config()
	cfg.CallTimeout = hsm.NoCallTimeout
	p := &onNewSession{next: m.Faults, do: func(func() error) error { panic("open panics") }}
	tok, err := hsm.Open(ctx, cfg, hsm.WithInterceptor(p))
	require.NoError(t, err)
	t.Cleanup(func() { _ = tok.Close() })
	_, err = tok.GenerateKey(ctx, "aes", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)

	p.armed.Store(true)
	m.Faults.FailNext(hsm.OpEncrypt, 1, pkcs11.CKR_SESSION_HANDLE_INVALID) // the retry opens a session
	require.PanicsWithValue(t, "open panics", func() { _ = encryptOnce(ctx, tok) })

	bctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	require.NoError(t, encryptOnce(bctx, tok))
	m.Faults.FailNext(hsm.OpEncrypt, 1, pkcs11.CKR_SESSION_HANDLE_INVALID)
	require.NoError(t, encryptOnce(bctx, tok), "a new generation should get a session")
}

// TestSessionOpenedButRefusedIsClosed: an Interceptor that fails a
// C_OpenSession the module carried out leaves no session open.
func TestSessionOpenedButRefusedIsClosed(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	cfg := m.Config()
	cfg.MaxSessions = 1
	f := &onNewSession{next: m.Faults, do: func(call func() error) error {
		if err := call(); err != nil {
			return err
		}
		return errors.New("interceptor refuses the session") // after the module opened it
	}}
	tok, err := hsm.Open(ctx, cfg, hsm.WithInterceptor(f))
	require.NoError(t, err)
	t.Cleanup(func() { _ = tok.Close() })

	p := libraryClient(t, m)
	require.Equal(t, 1, openSessions(p))

	f.armed.Store(true)
	m.Faults.FailNext(hsm.OpRandom, 1, pkcs11.CKR_OPERATION_ACTIVE) // the session is dropped; the retry opens one
	_, err = tok.Random(ctx, 8)
	require.ErrorContains(t, err, "interceptor refuses the session")
	assert.Zero(t, openSessions(p), "the refused session should be closed")
	_, err = tok.Random(ctx, 8)
	require.NoError(t, err)
}

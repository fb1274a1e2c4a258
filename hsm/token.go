package hsm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/miekg/pkcs11"
)

// Token is one PKCS#11 token, logged in as user, ready to serve. It is safe
// for concurrent use; see the package documentation for how sessions are
// shared.
type Token struct {
	cfg  Config // a copy; never the caller's
	opts options
	log  *slog.Logger
	mod  *module
	mech map[uint]bool // mechanisms the token offers

	// closeMu is held for reading by every public call and for writing by
	// Close, so Close waits for in-flight calls to return.
	// Calls take it with TryRLock: once Close waits for it, new calls
	// return ErrClosed at once instead of queueing behind Close, which a
	// call without a deadline may keep waiting indefinitely.
	closeMu sync.RWMutex
	closed  atomic.Bool // set under closeMu; Health reads it without
	// closing is closed when Close begins: calls waiting for a session
	// slot or for old sessions give up with ErrClosed, so that Close does
	// not wait on them (a call without a deadline may otherwise wait for
	// a slot that a worker stuck in the module holds for ever).
	closing     chan struct{}
	closingOnce sync.Once

	soSem chan struct{} // one slot: administrative calls run one at a time

	sem     chan struct{} // one slot per session the pool may hold
	workers sync.WaitGroup
	stuck   atomic.Int32 // workers abandoned by their caller and still running

	reconnectMu sync.Mutex // one reconnect at a time

	// objMu makes object writes exclusive when the profile asks for it:
	// held for writing around calls that create or destroy objects, for
	// reading around all others.
	objMu sync.RWMutex

	mu            sync.Mutex // guards the fields below
	gen           uint64     // session generation; every cached handle belongs to one
	needReconnect bool
	loggedIn      bool
	slot          uint
	idle          []*session
	borrowed      int           // borrowed sessions of the current generation
	oldBorrowed   int           // borrowed sessions of older generations
	drained       chan struct{} // closed when oldBorrowed reaches 0
	healthy       bool
	healthyHint   atomic.Bool // healthy, readable without mu: the fast path of setHealth
	lastErr       error

	info  atomic.Pointer[TokenInfo] // replaced whole on (re)connect; read without locks
	keys  keyCache
	finds atomic.Int64 // C_FindObjects searches, for tests
	// Object writes (writesObjects) begun and ended, so that a listing
	// knows whether one overlapped it.
	writesStarted, writesDone atomic.Uint64
}

// TokenInfo describes the token a Token is connected to.
type TokenInfo struct {
	Label        string
	Serial       string
	Manufacturer string
	Model        string
	Slot         uint
	Profile      Profile
}

// Health is a token's own view of whether it works.
type Health struct {
	Healthy bool
	// Err is the member's fault that made the token unhealthy, if any.
	Err error
}

type session struct {
	h   pkcs11.SessionHandle
	gen uint64
}

// Open loads the module (once per process), finds the token, logs in and
// returns a Token. Close it when done.
func Open(ctx context.Context, cfg Config, opt ...Option) (*Token, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var o options
	for _, f := range opt {
		f(&o)
	}
	t := &Token{
		cfg:     cfg,
		opts:    o,
		log:     o.logger,
		sem:     make(chan struct{}, cfg.MaxSessions),
		soSem:   make(chan struct{}, 1),
		closing: make(chan struct{}),
	}
	if t.log == nil {
		t.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	t.keys.init()
	mod, err := acquireModule(cfg.ModulePath)
	if err != nil {
		return nil, &Error{Op: OpOpen, Token: cfg.selector(), Err: err}
	}
	t.mod = mod
	if err := t.connect(ctx); err != nil {
		_ = mod.release()
		return nil, err
	}
	// Log in now so that a wrong PIN fails Open, not the first call.
	if err := t.do(ctx, OpLogin, "", func(*session, *keyEntry) error { return nil }); err != nil {
		// As Close: a login worker still stuck in the module (Open's
		// deadline passed) keeps the module loaded under it.
		_ = t.Close()
		return nil, err
	}
	return t, nil
}

// connect finds the slot and reads the token's information and mechanisms.
func (t *Token) connect(ctx context.Context) error {
	var slot uint
	var info TokenInfo
	var mechs []*pkcs11.Mechanism
	err := t.intercept(ctx, OpOpen, func() error {
		if err := t.mod.initialize(); err != nil {
			return err
		}
		var err error
		if slot, info, err = t.findSlot(); err != nil {
			return err
		}
		mechs, err = t.mod.ctx.GetMechanismList(slot)
		return err
	})
	if err != nil {
		return t.wrap(OpOpen, err)
	}
	m := make(map[uint]bool, len(mechs))
	for _, mm := range mechs {
		m[mm.Mechanism] = true
	}
	t.mu.Lock()
	t.slot, t.mech, t.healthy = slot, m, true
	t.healthyHint.Store(true)
	t.info.Store(&info)
	t.mu.Unlock()
	return nil
}

// findSlot finds the one slot whose token matches the selector.
func (t *Token) findSlot() (uint, TokenInfo, error) {
	slots, err := t.mod.ctx.GetSlotList(true)
	if err != nil {
		return 0, TokenInfo{}, err
	}
	var found []uint
	var info TokenInfo
	for _, s := range slots {
		if t.cfg.Slot != nil && *t.cfg.Slot != s {
			continue
		}
		ti, err := t.mod.ctx.GetTokenInfo(s)
		if err != nil {
			continue // a slot that went away meanwhile
		}
		label := strings.TrimRight(ti.Label, " \x00")
		serial := strings.TrimRight(ti.SerialNumber, " \x00")
		if t.cfg.TokenLabel != "" && t.cfg.TokenLabel != label {
			continue
		}
		if t.cfg.TokenSerial != "" && t.cfg.TokenSerial != serial {
			continue
		}
		if ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		found = append(found, s)
		manufacturer := strings.TrimRight(ti.ManufacturerID, " \x00")
		model := strings.TrimRight(ti.Model, " \x00")
		info = TokenInfo{Label: label, Serial: serial, Manufacturer: manufacturer, Model: model, Slot: s}
		if t.cfg.Profile != nil {
			info.Profile = *t.cfg.Profile
		} else {
			info.Profile = DetectProfile(manufacturer, model)
		}
	}
	switch len(found) {
	case 0:
		return 0, TokenInfo{}, fmt.Errorf("%w: no token with %s", ErrTokenNotFound, t.cfg.selector())
	case 1:
		return found[0], info, nil
	}
	return 0, TokenInfo{}, fmt.Errorf("%w: %d tokens match %s; select by serial or slot", ErrInvalidInput, len(found), t.cfg.selector())
}

// Info returns what the token reported when it was last (re)connected.
func (t *Token) Info() TokenInfo { return *t.info.Load() }

// profile returns the token's vendor profile.
func (t *Token) profile() *Profile { return &t.info.Load().Profile }

// Health returns the token's own view of its health: unhealthy after a
// member's fault (a timeout, a lost device, a failed reconnect), healthy
// again after the next successful call or probe.
func (t *Token) Health() Health {
	t.mu.Lock()
	defer t.mu.Unlock()
	return Health{Healthy: t.healthy && !t.closed.Load(), Err: t.lastErr}
}

// Probe checks the token end to end: a session, the login state and the
// token's presence in its slot. It updates Health.
func (t *Token) Probe(ctx context.Context) error {
	return t.do(ctx, OpProbe, "", func(s *session, _ *keyEntry) error {
		si, err := t.mod.ctx.GetSessionInfo(s.h)
		if err != nil {
			return err
		}
		if !userState(si.State) {
			return CKR(pkcs11.CKR_USER_NOT_LOGGED_IN)
		}
		_, err = t.mod.ctx.GetTokenInfo(si.SlotID)
		return err
	})
}

// Close waits for in-flight calls to return, closes the sessions and
// releases the module; the last Token of a module finalizes it. Close is
// idempotent; calls made while it waits, and after it, and calls still
// waiting for a session slot, return ErrClosed.
// With NoCallTimeout, a call without a deadline that hangs in the module
// keeps Close waiting until the module answers.
func (t *Token) Close() error {
	t.closingOnce.Do(func() { close(t.closing) })
	t.closeMu.Lock()
	if t.closed.Load() {
		t.closeMu.Unlock()
		return nil
	}
	t.closed.Store(true)
	t.closeMu.Unlock()

	if t.stuck.Load() > 0 {
		// A worker is blocked inside the module. Finalizing under it could
		// crash the process, so the module stays loaded; the goroutine is
		// accepted as lost.
		t.log.Warn("hsm: closing with calls stuck in the module; module left loaded", "token", t.cfg.selector())
		return nil
	}
	t.workers.Wait()
	t.mu.Lock()
	idle, gen := t.idle, t.gen
	t.idle = nil
	t.mu.Unlock()
	var errs []error
	for _, s := range idle {
		if s.gen == gen {
			err := t.mod.ctx.CloseSession(s.h)
			if code, ok := asCKR(err); ok && sessionFatal(code) {
				err = nil // the session is gone already (a crashed or lost module)
			}
			if err != nil {
				errs = append(errs, t.wrap(OpOpen, err))
			}
		}
	}
	if err := t.mod.release(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// intercept runs call through the Interceptor, if there is one.
func (t *Token) intercept(ctx context.Context, op Op, call func() error) error {
	if t.opts.interceptor == nil {
		return call()
	}
	return t.opts.interceptor.Intercept(ctx, op, call)
}

// do runs fn with a session of its own (and, when id is set, id's handles:
// see apply) on a worker goroutine, so that the caller returns at its
// deadline even if the module never does. The worker may outlive the
// call: a caller reads what fn wrote only when do returned nil (the worker
// finished), never on an error, or it races the worker. It retries once on
// a fresh session when the session turned out dead or logged out.
//
// A call that nothing can end before the module answers (no deadline, no
// cancellation: context.Background with NoCallTimeout) runs on the
// caller's goroutine instead: it would wait for the module either way,
// and handing it to another goroutine costs a thread wake-up per call.
func (t *Token) do(ctx context.Context, op Op, id KeyID, fn opFunc) error {
	if !t.closeMu.TryRLock() { // fails only while Close holds or waits for it
		return t.wrap(op, ErrClosed)
	}
	defer t.closeMu.RUnlock()
	if t.closed.Load() {
		return t.wrap(op, ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return t.wrap(op, err)
	}
	ctx, cancel := t.bound(ctx)
	defer cancel()
	if err := t.acquire(ctx, 1); err != nil {
		return t.wrap(op, err)
	}
	if ctx.Done() == nil {
		defer func() { <-t.sem }()
		var inCall atomic.Bool
		return t.finish(op, t.work(ctx, op, id, fn, &inCall))
	}
	return t.run(ctx, op, id, fn)
}

// opFunc is what a call does with its session and, when the call names a
// key, that key's handles (nil otherwise). The key goes through do rather
// than a closure around fn so that a call allocates one closure less.
type opFunc func(s *session, e *keyEntry) error

// bound gives ctx the token's CallTimeout, unless it is NoCallTimeout.
func (t *Token) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if t.cfg.CallTimeout == NoCallTimeout {
		return ctx, func() {}
	}
	return context.WithTimeoutCause(ctx, t.cfg.CallTimeout, ErrTimeout)
}

// lockSO takes the administrative slot, waiting honours ctx.
func (t *Token) lockSO(ctx context.Context) error {
	select {
	case t.soSem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return t.ctxErr(ctx)
	case <-t.closing:
		return ErrClosed
	}
}

// acquire takes n session slots; waiting honours ctx and Close.
func (t *Token) acquire(ctx context.Context, n int) error {
	for i := 0; i < n; i++ {
		select {
		case t.sem <- struct{}{}:
		default:
			var err error
			select {
			case t.sem <- struct{}{}:
			case <-ctx.Done():
				err = t.ctxErr(ctx)
			case <-t.closing:
				err = ErrClosed
			}
			if err != nil {
				for ; i > 0; i-- {
					<-t.sem
				}
				return err
			}
		}
	}
	return nil
}

// run runs fn on a worker that owns one acquired slot and releases it.
func (t *Token) run(ctx context.Context, op Op, id KeyID, fn opFunc) error {
	return t.runThen(ctx, op, id, fn, nil)
}

// runThen is run, with after, if not nil, called by the worker once it is
// done, also when its caller has returned long before.
func (t *Token) runThen(ctx context.Context, op Op, id KeyID, fn opFunc, after func()) error {
	var inCall atomic.Bool
	done := make(chan error, 1)
	t.workers.Add(1)
	go func() {
		defer t.workers.Done()
		if after != nil {
			defer after()
		}
		defer func() { <-t.sem }()
		done <- t.work(ctx, op, id, fn, &inCall)
	}()

	select {
	case err := <-done:
		return t.finish(op, err)
	case <-ctx.Done():
		select {
		case err := <-done: // finished at the same moment: prefer the answer
			return t.finish(op, err)
		default:
		}
	}
	err := t.ctxErr(ctx)
	if inCall.Load() {
		// The worker is inside the module and may never come back; Close
		// must not wait for it.
		t.stuck.Add(1)
		go func() { <-done; t.stuck.Add(-1) }()
		if errors.Is(err, context.DeadlineExceeded) {
			// The module did not answer in time: a stalled HSM. A
			// cancellation says nothing about the token.
			t.setHealth(false, t.wrap(op, err))
			t.log.Warn("hsm: call passed its deadline; session abandoned", "token", t.cfg.selector(), "op", op)
		}
	}
	return t.wrap(op, err)
}

// ctxErr is ErrTimeout when our own CallTimeout fired, else ctx's error.
func (t *Token) ctxErr(ctx context.Context) error {
	if errors.Is(context.Cause(ctx), ErrTimeout) {
		return ErrTimeout
	}
	return ctx.Err()
}

// finish records the outcome in Health and wraps the error.
func (t *Token) finish(op Op, err error) error {
	if err == nil {
		t.setHealth(true, nil)
		return nil
	}
	werr := t.wrap(op, err)
	if Classify(werr) == ClassMember {
		t.setHealth(false, werr)
	}
	return werr
}

func (t *Token) setHealth(ok bool, err error) {
	if ok && t.healthyHint.Load() {
		return // nothing to change: healthy means no error recorded
	}
	t.mu.Lock()
	changed := t.healthy != ok
	t.healthy, t.lastErr = ok, err
	t.healthyHint.Store(ok)
	t.mu.Unlock()
	if changed {
		if ok {
			t.log.Info("hsm: token healthy", "token", t.cfg.selector())
		} else {
			t.log.Warn("hsm: token unhealthy", "token", t.cfg.selector(), "err", err)
		}
	}
}

// work is the worker's side of do.
func (t *Token) work(ctx context.Context, op Op, id KeyID, fn opFunc, inCall *atomic.Bool) error {
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		var s *session
		inCall.Store(true)
		s, err = t.getSession(ctx)
		if err != nil {
			inCall.Store(false)
			if attempt == 0 && retryable(err) && ctx.Err() == nil {
				continue
			}
			return err
		}
		err = t.attempt(ctx, op, s, id, fn)
		retry := t.putSession(ctx, s, err) // may close s: still in the module
		inCall.Store(false)
		if !retry || ctx.Err() != nil {
			return err
		}
	}
	return err
}

// attempt runs fn once on s under the objects lock. Should fn or the
// Interceptor panic, the lock is released and s, in a state nobody knows,
// is closed instead of reused before the panic goes on, so that a caller
// who recovers it (a call without a deadline runs on the caller's
// goroutine) still has a working token.
func (t *Token) attempt(ctx context.Context, op Op, s *session, id KeyID, fn opFunc) (err error) {
	returned := false
	defer func() {
		if !returned {
			t.putSession(ctx, s, errDrop)
		}
	}()
	l := t.lockObjects(op)
	defer t.unlockObjects(l)
	if writesObjects(op) {
		t.writesStarted.Add(1)
		defer t.writesDone.Add(1)
	}
	if t.opts.interceptor == nil {
		err = t.apply(s, id, fn) // without intercept's closure, which escapes
	} else {
		err = t.opts.interceptor.Intercept(ctx, op, func() error { return t.apply(s, id, fn) })
	}
	returned = true
	return err
}

// errDrop tells putSession to drop the session, whose state nobody
// knows: a call on it panicked, or logging in through it failed.
var errDrop = errors.New("hsm: session dropped")

// writesObjects reports whether op creates or destroys token objects.
func writesObjects(op Op) bool {
	switch op {
	case OpGenerateKey, OpUnwrapKey, OpDestroyKey, OpMarkTrusted, OpImportKey:
		return true
	}
	return false
}

// objLock says how a call holds objMu.
type objLock uint8

const (
	objNone objLock = iota
	objShared
	objExclusive
)

// lockObjects takes objMu as the profile and op require; unlockObjects
// undoes it.
func (t *Token) lockObjects(op Op) objLock {
	switch {
	case !t.profile().ExclusiveObjectWrites:
		return objNone
	case writesObjects(op):
		t.objMu.Lock()
		return objExclusive
	}
	t.objMu.RLock()
	return objShared
}

func (t *Token) unlockObjects(l objLock) {
	switch l {
	case objExclusive:
		t.objMu.Unlock()
	case objShared:
		t.objMu.RUnlock()
	}
}

// retryable reports whether a fresh session may succeed where this failed.
func retryable(err error) bool {
	code, ok := asCKR(err)
	return ok && (sessionFatal(code) || code == CKR(pkcs11.CKR_USER_NOT_LOGGED_IN) || code == CKR(pkcs11.CKR_OPERATION_ACTIVE))
}

// getSession returns an idle session or opens a new one. New sessions are
// opened only once every borrowed session of an older generation is back:
// the module may reuse handle numbers after a restart, and two goroutines
// must never hold the same handle, nor may an old handle reach a new
// object.
func (t *Token) getSession(ctx context.Context) (*session, error) {
	t.mu.Lock()
	if n := len(t.idle); n > 0 {
		s := t.idle[n-1]
		t.idle = t.idle[:n-1]
		t.borrowed++
		loggedIn := t.loggedIn
		t.mu.Unlock()
		if !loggedIn { // CKR_USER_NOT_LOGGED_IN was seen: log in again
			if err := t.ready(ctx, s, false); err != nil {
				return nil, err
			}
		}
		return s, nil
	}
	// Wait until no session of an older generation is out, reconnect if
	// the generation asks for it, and count the new session as borrowed
	// (from before C_OpenSession on, so that a generation started
	// meanwhile waits for it as for any other: its handle is of the old
	// module instance), all decided under one hold of t.mu.
	for {
		if t.oldBorrowed > 0 {
			ch := t.drained
			t.mu.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
				return nil, t.ctxErr(ctx) // ErrTimeout when our CallTimeout ended the wait
			case <-t.closing:
				return nil, ErrClosed
			}
			t.mu.Lock()
			continue
		}
		if t.needReconnect {
			t.mu.Unlock()
			if err := t.reconnect(ctx); err != nil {
				return nil, err
			}
			t.mu.Lock()
			continue
		}
		break
	}
	gen, slot := t.gen, t.slot
	t.borrowed++
	t.mu.Unlock()

	var h pkcs11.SessionHandle
	opened := false
	defer func() {
		if !opened { // an error, or a panic in the Interceptor
			if h != 0 {
				// The module opened it, and the Interceptor failed after:
				// closed while still counted, so that no session of a
				// newer generation can hold the same handle yet.
				_ = t.mod.ctx.CloseSession(h)
			}
			t.mu.Lock()
			t.unborrow(gen)
			t.mu.Unlock()
		}
	}()
	err := t.intercept(ctx, OpOpen, func() error {
		var err error
		h, err = t.mod.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		return err
	})
	if err != nil {
		if code, ok := asCKR(err); ok && sessionFatal(code) {
			t.invalidate(gen, "open session: "+code.Error())
		}
		return nil, err
	}
	opened = true
	s := &session{h: h, gen: gen}
	if err := t.ready(ctx, s, true); err != nil {
		return nil, err
	}
	return s, nil
}

// unborrow uncounts a borrowed session of generation gen. t.mu is held.
// It reports whether gen is the current generation.
func (t *Token) unborrow(gen uint64) bool {
	if gen == t.gen {
		t.borrowed--
		return true
	}
	t.oldBorrowed--
	if t.oldBorrowed == 0 && t.drained != nil {
		close(t.drained)
		t.drained = nil
	}
	return false
}

// ready logs the application in through the borrowed session s when it
// must: when the pool knows it is logged out, and, for a new session,
// when the module says so. The pool's flag can be stale for a new
// session: another call may have closed the application's last session
// (which logs it out) while this one was being opened. If logging in
// fails, or panics in an Interceptor, s is given back and dropped.
func (t *Token) ready(ctx context.Context, s *session, fresh bool) (err error) {
	returned := false
	defer func() {
		if !returned {
			t.putSession(ctx, s, errDrop)
		}
	}()
	err = t.logInIfNeeded(ctx, s, fresh)
	returned = true
	if err != nil {
		drop := errDrop
		if code, ok := asCKR(err); ok && sessionFatal(code) {
			drop = err // and start a new generation
		}
		t.putSession(ctx, s, drop)
	}
	return err
}

func (t *Token) logInIfNeeded(ctx context.Context, s *session, fresh bool) error {
	t.mu.Lock()
	loggedIn := t.loggedIn && t.gen == s.gen
	t.mu.Unlock()
	if loggedIn && !fresh {
		return nil
	}
	if loggedIn {
		// Through the Interceptor, as part of logging in: it sees every
		// call into the module (a crash simulation waits for them).
		var si pkcs11.SessionInfo
		err := t.intercept(ctx, OpLogin, func() error {
			var err error
			si, err = t.mod.ctx.GetSessionInfo(s.h)
			return err
		})
		if err != nil {
			return err
		}
		if userState(si.State) {
			return nil
		}
		// Logged out behind the pool's back (the application's last
		// session was closed): the module dropped its object handles,
		// and a new login may number the objects anew.
		t.keys.clear()
	}
	return t.login(ctx, s)
}

// login logs the application in as user through session s.
func (t *Token) login(ctx context.Context, s *session) error {
	err := t.intercept(ctx, OpLogin, func() error {
		return t.mod.ctx.Login(s.h, pkcs11.CKU_USER, t.cfg.PIN.reveal())
	})
	if code, ok := asCKR(err); ok {
		switch uint(code) {
		case pkcs11.CKR_USER_ALREADY_LOGGED_IN:
			err = nil
		case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE,
			pkcs11.CKR_PIN_EXPIRED, pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_USER_PIN_NOT_INITIALIZED:
			return &Error{Op: OpLogin, Token: t.cfg.selector(), Code: code, Err: ErrLogin}
		}
	}
	if err != nil {
		return err
	}
	t.mu.Lock()
	if t.gen == s.gen {
		t.loggedIn = true
	}
	t.mu.Unlock()
	return nil
}

// putSession gives a borrowed session back, or drops it when err says it
// is dead or the caller abandoned it. It reports whether the operation
// should be retried on a fresh session.
func (t *Token) putSession(ctx context.Context, s *session, err error) (retry bool) {
	code, isCKR := asCKR(err)
	keep := ctx.Err() == nil // an abandoned session is never reused
	switch {
	case err == errDrop:
		keep = false
	case isCKR && sessionFatal(code):
		t.invalidate(s.gen, code.Error())
		keep, retry = false, true
	case isCKR && code == CKR(pkcs11.CKR_USER_NOT_LOGGED_IN):
		t.mu.Lock()
		if t.gen == s.gen {
			t.loggedIn = false
		}
		t.mu.Unlock()
		// A new login may renumber private objects (SoftHSM does).
		t.keys.clear()
		keep, retry = false, true
	case isCKR && code == CKR(pkcs11.CKR_OPERATION_ACTIVE):
		keep, retry = false, true
	}

	t.mu.Lock()
	current := t.unborrow(s.gen)
	lastClosed := false
	if current {
		if keep {
			t.idle = append(t.idle, s)
		} else if t.borrowed+len(t.idle) == 0 {
			// Closing the application's last session logs it out
			// (PKCS#11 C_CloseSession): the next session logs in again,
			// and private object handles may be renumbered.
			t.loggedIn = false
			lastClosed = true
		}
	}
	t.mu.Unlock()
	if lastClosed {
		t.keys.clear()
	}
	if current && !keep {
		// Close what we will not reuse; a session of an older generation is
		// never closed, since its handle may now name someone else's.
		_ = t.intercept(context.WithoutCancel(ctx), OpOpen, func() error { return t.mod.ctx.CloseSession(s.h) })
	}
	return retry
}

// invalidate starts a new session generation after a session-fatal code
// seen on a session of generation gen: idle sessions are dropped unclosed,
// cached object handles forgotten, and the next new session reconnects.
func (t *Token) invalidate(gen uint64, reason string) {
	t.mu.Lock()
	if t.gen != gen {
		t.mu.Unlock()
		return // already done for this generation
	}
	t.gen++
	t.idle = nil
	t.oldBorrowed += t.borrowed
	t.borrowed = 0
	if t.oldBorrowed > 0 && t.drained == nil {
		t.drained = make(chan struct{})
	}
	t.needReconnect = true
	t.loggedIn = false
	t.mu.Unlock()
	t.keys.clear()
	t.log.Warn("hsm: sessions invalidated; reconnecting", "token", t.cfg.selector(), "reason", reason)
}

// reconnect re-initializes the module if it was finalized and finds the
// token's slot again (a replaced token may sit in another slot).
func (t *Token) reconnect(ctx context.Context) error {
	t.reconnectMu.Lock()
	defer t.reconnectMu.Unlock()
	t.mu.Lock()
	if !t.needReconnect {
		t.mu.Unlock()
		return nil
	}
	t.mu.Unlock()
	var slot uint
	var info TokenInfo
	err := t.intercept(ctx, OpOpen, func() error {
		if err := t.mod.initialize(); err != nil {
			return err
		}
		var err error
		slot, info, err = t.findSlot()
		return err
	})
	if err != nil {
		return err
	}
	t.mu.Lock()
	if old := t.info.Load(); info.Serial != old.Serial {
		t.log.Warn("hsm: token replaced", "token", t.cfg.selector(), "old_serial", old.Serial, "new_serial", info.Serial)
	}
	t.slot, t.needReconnect = slot, false
	t.info.Store(&info)
	t.mu.Unlock()
	return nil
}

// wrap makes err an *Error carrying op, the token and the CKR. An *Error
// passes through, with the operation and the token filled in if it lacks
// them.
func (t *Token) wrap(op Op, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		if e.Op == "" {
			e.Op = op
		}
		if e.Token == "" {
			e.Token = t.cfg.selector()
		}
		return err
	}
	e = &Error{Op: op, Token: t.cfg.selector(), Err: err}
	if code, ok := asCKR(err); ok {
		e.Code = code
		e.Err = code
	}
	return e
}

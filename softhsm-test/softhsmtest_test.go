package softhsmtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/softhsm-test/softhsmlib"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// raw loads the member's library copy directly with miekg/pkcs11. The path
// is the member's, so this is the member's own library instance.
func raw(t *testing.T, m *Member) *pkcs11.Ctx {
	t.Helper()
	ctx := pkcs11.New(m.LibPath)
	require.NotNil(t, ctx, "load %s", m.LibPath)
	t.Cleanup(ctx.Destroy)
	err := ctx.Initialize()
	if !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		require.NoError(t, err)
	}
	return ctx
}

// slot finds the one slot whose token has the label.
func slot(t *testing.T, ctx *pkcs11.Ctx, label string) (uint, pkcs11.TokenInfo) {
	t.Helper()
	slots, err := ctx.GetSlotList(true)
	require.NoError(t, err)
	var found []uint
	var info pkcs11.TokenInfo
	for _, s := range slots {
		ti, err := ctx.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if strings.TrimRight(ti.Label, " ") == label {
			found = append(found, s)
			info = ti
		}
	}
	require.Len(t, found, 1, "slots with token %q", label)
	return found[0], info
}

// session opens a read-write session on the member's token.
func session(t *testing.T, ctx *pkcs11.Ctx, m *Member) pkcs11.SessionHandle {
	t.Helper()
	s, _ := slot(t, ctx, m.Label)
	h, err := ctx.OpenSession(s, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	require.NoError(t, err)
	return h
}

func TestLibraryPathHonoursEnv(t *testing.T) {
	lib := filepath.Join(t.TempDir(), "libsofthsm2.so")
	require.NoError(t, os.WriteFile(lib, nil, 0o644))
	t.Setenv("SOFTHSM2_LIB", lib)
	p, err := LibraryPath()
	require.NoError(t, err)
	assert.Equal(t, lib, p)

	t.Setenv("SOFTHSM2_LIB", lib+".missing")
	_, err = LibraryPath()
	require.ErrorIs(t, err, ErrLibraryNotFound)
	assert.Contains(t, err.Error(), lib+".missing")

	t.Setenv("SOFTHSM2_LIB", "")
	p, err = LibraryPath()
	require.NoError(t, err, "SoftHSM2 is installed on this machine")
	assert.Contains(t, softhsmlib.Paths, p)
}

// fakeTB records Fatal and Skipf instead of stopping the test.
type fakeTB struct {
	testing.TB
	fatal, skip string
}

func (f *fakeTB) Helper()                           {}
func (f *fakeTB) Fatal(args ...any)                 { f.fatal = fmt.Sprint(args...) }
func (f *fakeTB) Skipf(format string, args ...any)  { f.skip = fmt.Sprintf(format, args...) }
func (f *fakeTB) Fatalf(format string, args ...any) { f.fatal = fmt.Sprintf(format, args...) }

func TestRequire(t *testing.T) {
	t.Setenv(SkipEnv, "")
	t.Setenv("SOFTHSM2_LIB", "")
	ft := &fakeTB{TB: t}
	p := Require(ft)
	assert.Contains(t, softhsmlib.Paths, p)
	assert.Empty(t, ft.fatal)
	assert.Empty(t, ft.skip)

	t.Setenv("SOFTHSM2_LIB", filepath.Join(t.TempDir(), "missing.so"))
	ft = &fakeTB{TB: t}
	assert.Empty(t, Require(ft))
	assert.Empty(t, ft.skip)
	for _, cmd := range []string{"sudo apt-get install -y softhsm2", "sudo dnf install softhsm", "brew install softhsm"} {
		assert.Contains(t, ft.fatal, cmd)
	}

	t.Setenv(SkipEnv, "1")
	ft = &fakeTB{TB: t}
	assert.Empty(t, Require(ft))
	assert.Empty(t, ft.fatal)
	assert.Contains(t, ft.skip, "apt-get install")
}

func TestMemberConfigAndURI(t *testing.T) {
	c := New(t, 2)
	a, b := c.Members[0], c.Members[1]
	assert.NotEqual(t, a.Label, b.Label)
	assert.NotEqual(t, a.LibPath, b.LibPath)

	cfg := a.Config()
	require.NoError(t, cfg.Validate())
	assert.Equal(t, a.LibPath, cfg.ModulePath)
	assert.Equal(t, a.Label, cfg.TokenLabel)
	assert.Equal(t, hsm.DefaultConfig().CallTimeout, cfg.CallTimeout)

	parsed, err := hsm.ParseURI(a.URI())
	require.NoError(t, err)
	assert.Equal(t, a.Label, parsed.TokenLabel)
	assert.Equal(t, a.LibPath, parsed.ModulePath)
	assert.Contains(t, a.URI(), "&pin-value="+a.userPIN)
	assert.Equal(t, "/a%20b/c%3Bd", escape("/a b/c;d"))

	// The library copies are separate files, hence separate instances.
	lib, err := LibraryPath()
	require.NoError(t, err)
	for _, m := range c.Members {
		fi1, err := os.Stat(lib)
		require.NoError(t, err)
		fi2, err := os.Stat(m.LibPath)
		require.NoError(t, err)
		assert.False(t, os.SameFile(fi1, fi2))
	}
}

func TestCrashLeavesOtherMembersWorking(t *testing.T) {
	c := New(t, 2)
	a, b := c.Members[0], c.Members[1]
	ra, rb := raw(t, a), raw(t, b)
	sa, sb := session(t, ra, a), session(t, rb, b)

	require.NoError(t, a.Crash())
	assert.True(t, a.Down())
	assert.False(t, b.Down())
	_, err := ra.GenerateRandom(sa, 16)
	assert.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED))

	rnd, err := rb.GenerateRandom(sb, 16)
	require.NoError(t, err)
	assert.Len(t, rnd, 16)
	fresh := session(t, rb, b)
	_, err = rb.GenerateRandom(fresh, 16)
	require.NoError(t, err)

	ran := false
	err = a.Faults.Intercept(t.Context(), hsm.OpRandom, func() error { ran = true; return nil })
	assert.ErrorIs(t, err, hsm.CKR(pkcs11.CKR_DEVICE_REMOVED))
	assert.False(t, ran)
	require.NoError(t, b.Faults.Intercept(t.Context(), hsm.OpRandom, func() error { ran = true; return nil }))
	assert.True(t, ran)

	require.NoError(t, a.Crash(), "crashing a down member")
}

func TestRestartInvalidatesOldSessions(t *testing.T) {
	c := New(t, 1)
	m := c.Members[0]
	r := raw(t, m)
	old := session(t, r, m)
	require.NoError(t, r.Login(old, pkcs11.CKU_USER, m.userPIN))

	require.NoError(t, m.Crash())
	require.NoError(t, m.Restart())
	assert.False(t, m.Down())

	_, err := r.GenerateRandom(old, 16)
	assert.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID))

	s := session(t, r, m)
	info, err := r.GetSessionInfo(s)
	require.NoError(t, err)
	assert.Equal(t, uint(pkcs11.CKS_RW_PUBLIC_SESSION), info.State, "login state is lost")
	require.NoError(t, r.Login(s, pkcs11.CKU_USER, m.userPIN))
	_, err = r.GenerateRandom(s, 16)
	require.NoError(t, err)
	require.NoError(t, m.Faults.Intercept(t.Context(), hsm.OpRandom, func() error { return nil }))

	require.NoError(t, m.Restart(), "restarting a member that is up")
}

func createData(t *testing.T, ctx *pkcs11.Ctx, s pkcs11.SessionHandle) {
	t.Helper()
	_, err := ctx.CreateObject(s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, "data"),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, []byte("value")),
	})
	require.NoError(t, err)
}

func countObjects(t *testing.T, ctx *pkcs11.Ctx, s pkcs11.SessionHandle) int {
	t.Helper()
	require.NoError(t, ctx.FindObjectsInit(s, nil))
	objs, _, err := ctx.FindObjects(s, 100)
	require.NoError(t, err)
	require.NoError(t, ctx.FindObjectsFinal(s))
	return len(objs)
}

func TestWipe(t *testing.T) {
	c := New(t, 2)
	a, b := c.Members[0], c.Members[1]
	ra, rb := raw(t, a), raw(t, b)
	sa, sb := session(t, ra, a), session(t, rb, b)
	require.NoError(t, ra.Login(sa, pkcs11.CKU_USER, a.userPIN))
	require.NoError(t, rb.Login(sb, pkcs11.CKU_USER, b.userPIN))
	createData(t, ra, sa)
	createData(t, rb, sb)
	require.Equal(t, 1, countObjects(t, ra, sa))
	_, before := slot(t, ra, a.Label)

	require.NoError(t, a.Wipe())
	assert.False(t, a.Down())

	_, after := slot(t, ra, a.Label)
	assert.NotEqual(t, before.SerialNumber, after.SerialNumber)
	s := session(t, ra, a)
	require.NoError(t, ra.Login(s, pkcs11.CKU_SO, a.soPIN), "same SO PIN")
	require.NoError(t, ra.Logout(s))
	require.NoError(t, ra.Login(s, pkcs11.CKU_USER, a.userPIN), "same user PIN")
	assert.Equal(t, 0, countObjects(t, ra, s))

	// b's instance still holds the deleted token among its slots; its own
	// token is untouched.
	assert.Equal(t, 1, countObjects(t, rb, sb))
	_, err := rb.GenerateRandom(session(t, rb, b), 16)
	require.NoError(t, err)
}

// Crash must not finalize while an intercepted call is inside the library:
// SoftHSM aborts the process when C_Finalize races with a call.
func TestCrashWaitsForInFlightCall(t *testing.T) {
	c := New(t, 1)
	m := c.Members[0]
	r := raw(t, m)
	s := session(t, r, m)
	orig := m.Faults
	defer func() { m.Faults = orig }()

	synctest.Test(t, func(t *testing.T) {
		m.Faults = &Faults{} // its channels belong to the bubble
		m.Faults.Hang(hsm.OpRandom)
		defer m.Faults.Release() // lets the bubble end if the test fails
		events := make(chan string, 2)
		callErr := make(chan error, 1)
		go func() {
			callErr <- m.Faults.Intercept(context.Background(), hsm.OpRandom, func() error {
				_, err := r.GenerateRandom(s, 16)
				events <- "call"
				return err
			})
		}()
		require.NoError(t, m.Faults.AwaitHung(t.Context(), 1))
		crashErr := make(chan error, 1)
		go func() {
			err := m.Crash()
			events <- "crash"
			crashErr <- err
		}()
		synctest.Wait() // Crash is now durably blocked, or has returned
		select {
		case <-crashErr:
			t.Fatal("Crash returned while a call was hung")
		default:
		}
		assert.True(t, m.Down())
		assert.Equal(t, 1, m.Faults.InFlight())
		err := m.Faults.Intercept(context.Background(), hsm.OpProbe, func() error { return nil })
		assert.ErrorIs(t, err, hsm.CKR(pkcs11.CKR_DEVICE_REMOVED), "new calls are refused while crashing")

		m.Faults.Release()
		require.NoError(t, <-callErr, "the released call ran before C_Finalize")
		require.NoError(t, <-crashErr)
		assert.Equal(t, "call", <-events)
		assert.Equal(t, "crash", <-events)
	})
	_, err := r.GetSlotList(true)
	assert.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED))
}

func TestClustersShareOneConf(t *testing.T) {
	const prev = "/nonexistent/softhsm2.conf"
	t.Setenv("SOFTHSM2_CONF", prev)
	c1, err := NewCluster(t.TempDir(), 1)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c1.Close() })
	c2, err := NewCluster(t.TempDir(), 1)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c2.Close() })

	conf := c1.ConfPath()
	assert.Equal(t, conf, os.Getenv("SOFTHSM2_CONF"))
	assert.Equal(t, conf, c2.ConfPath())
	m1, m2 := c1.Members[0], c2.Members[0]
	assert.NotEqual(t, m1.Label, m2.Label)

	// A restart re-reads SOFTHSM2_CONF, which must still find the token.
	r1 := raw(t, m1)
	require.NoError(t, m1.Crash())
	require.NoError(t, m1.Restart())
	slot(t, r1, m1.Label)

	require.NoError(t, c1.Close())
	require.NoError(t, c1.Close(), "Close is idempotent")
	assert.Equal(t, conf, os.Getenv("SOFTHSM2_CONF"))
	r2 := raw(t, m2)
	require.NoError(t, m2.Crash())
	require.NoError(t, m2.Restart())
	slot(t, r2, m2.Label)
	assert.Error(t, m1.Restart(), "restarting a member of a closed cluster")

	require.NoError(t, c2.Close())
	assert.Equal(t, prev, os.Getenv("SOFTHSM2_CONF"))
	_, err = os.Stat(filepath.Dir(conf))
	assert.ErrorIs(t, err, os.ErrNotExist)
}

func TestFaultsHangUntilRelease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var f Faults
		f.Hang(hsm.OpSign)
		ctx, cancel := context.WithCancel(t.Context())
		ran := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			done <- f.Intercept(ctx, hsm.OpSign, func() error { close(ran); return nil })
		}()
		require.NoError(t, f.AwaitHung(t.Context(), 1))
		require.NoError(t, f.Intercept(ctx, hsm.OpVerify, func() error { return nil }), "other ops pass")

		cancel() // a stalled HSM ignores the caller's context
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("hung call returned before Release")
		case <-ran:
			t.Fatal("hung call ran before Release")
		default:
		}
		assert.Equal(t, 1, f.InFlight())

		f.Release()
		require.NoError(t, <-done)
		<-ran
		assert.Equal(t, 0, f.InFlight())
		require.NoError(t, f.Intercept(ctx, hsm.OpSign, func() error { return nil }), "no hang after Release")

		f.Hang(AnyOp)
		go func() { done <- f.Intercept(ctx, hsm.OpMAC, func() error { return nil }) }()
		require.NoError(t, f.AwaitHung(t.Context(), 1))
		f.Reset()
		require.NoError(t, <-done)
	})
}

func TestFaultsAwaitHungHonoursContext(t *testing.T) {
	var f Faults
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	assert.ErrorIs(t, f.AwaitHung(ctx, 1), context.Canceled)
}

func TestFaultsLatency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var f Faults
		f.SetLatency(hsm.OpSign, 50*time.Millisecond)
		f.SetLatency(AnyOp, 10*time.Millisecond)
		elapsed := func(op hsm.Op) time.Duration {
			start := time.Now()
			require.NoError(t, f.Intercept(t.Context(), op, func() error { return nil }))
			return time.Since(start)
		}
		assert.Equal(t, 50*time.Millisecond, elapsed(hsm.OpSign))
		assert.Equal(t, 10*time.Millisecond, elapsed(hsm.OpVerify))
		f.SetLatency(AnyOp, 0)
		assert.Equal(t, time.Duration(0), elapsed(hsm.OpVerify))
	})
}

func TestFaultsFailNext(t *testing.T) {
	var f Faults
	ran := 0
	call := func() error { ran++; return nil }
	f.FailNext(hsm.OpEncrypt, 2, pkcs11.CKR_DEVICE_ERROR)
	for range 2 {
		err := f.Intercept(t.Context(), hsm.OpEncrypt, call)
		require.ErrorIs(t, err, hsm.CKR(pkcs11.CKR_DEVICE_ERROR))
	}
	assert.Equal(t, 0, ran)
	require.NoError(t, f.Intercept(t.Context(), hsm.OpEncrypt, call))
	assert.Equal(t, 1, ran)

	f.FailNext(AnyOp, 1, pkcs11.CKR_GENERAL_ERROR)
	assert.ErrorIs(t, f.Intercept(t.Context(), hsm.OpDecrypt, call), hsm.CKR(pkcs11.CKR_GENERAL_ERROR))
	require.NoError(t, f.Intercept(t.Context(), hsm.OpDecrypt, call))
	assert.Equal(t, 2, ran)

	assert.Equal(t, int64(3), f.Calls(hsm.OpEncrypt))
	assert.Equal(t, int64(2), f.Calls(hsm.OpDecrypt))
	assert.Equal(t, int64(5), f.Calls(AnyOp))
	f.Reset()
	assert.Equal(t, int64(0), f.Calls(AnyOp))
}

func TestFaultsDown(t *testing.T) {
	var f Faults
	ran := false
	call := func() error { ran = true; return nil }
	f.SetDown(true)
	assert.ErrorIs(t, f.Intercept(t.Context(), hsm.OpOpen, call), hsm.CKR(pkcs11.CKR_DEVICE_REMOVED))
	assert.False(t, ran)
	f.Reset()
	assert.ErrorIs(t, f.Intercept(t.Context(), hsm.OpOpen, call), hsm.CKR(pkcs11.CKR_DEVICE_REMOVED), "Reset keeps down mode")
	f.SetDown(false)
	require.NoError(t, f.Intercept(t.Context(), hsm.OpOpen, call))
	assert.True(t, ran)
}

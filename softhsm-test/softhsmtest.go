package softhsmtest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/softhsm-test/softhsmlib"
	"github.com/miekg/pkcs11"
)

// ErrLibraryNotFound means libsofthsm2.so is not installed where
// LibraryPath looks, or SOFTHSM2_LIB names a missing file.
var ErrLibraryNotFound = softhsmlib.ErrNotFound

// SkipEnv is the environment variable that, set to 1, makes Require skip
// the test instead of failing it when SoftHSM2 is missing.
const SkipEnv = "HSMKMS_SKIP_SOFTHSM"

// LibraryPath returns the path of libsofthsm2.so: the SOFTHSM2_LIB
// environment variable if it is set, else the first of the Debian, Ubuntu,
// Fedora and Homebrew install locations that exists. The error wraps
// ErrLibraryNotFound and says how to install SoftHSM2.
func LibraryPath() (string, error) { return softhsmlib.Path() }

// Require returns the path of libsofthsm2.so, or fails the test with the
// command that installs it. With HSMKMS_SKIP_SOFTHSM=1 in the environment
// it skips the test instead; CI never sets it.
func Require(t testing.TB) string {
	t.Helper()
	p, err := LibraryPath()
	if err == nil {
		return p
	}
	if os.Getenv(SkipEnv) == "1" {
		t.Skipf("%v (skipped because %s=1)", err, SkipEnv)
	} else {
		t.Fatal(err)
	}
	return ""
}

// tokenFiles keeps the process's SoftHSM2 instances, which share one
// token directory, from reading a token's files while another rewrites
// them: C_Initialize reads every token's token.object, and a login
// rewrites its own token's (so do softhsm2-util, an SO's work and a new
// session's first login). A half-written file read at initialization
// made SoftHSM abort the process (SlotManager::insertToken's assertion)
// or miss a token. Faults.Intercept holds it around the calls of the
// operations that can do either (OpOpen, OpLogin, OpMarkTrusted,
// OpImportKey), after any injected fault, so a hang never holds it.
// Lock order: shared, then tokenFiles.
var tokenFiles sync.Mutex

// shared is the one piece of process-wide state, forced by SoftHSM reading
// SOFTHSM2_CONF from the environment: the directory holding the
// configuration file and the token directory of every cluster in the
// process. Its mutex serializes the creation, restart and deletion of
// members; tokenFiles keeps their file reads and writes apart.
var shared struct {
	sync.Mutex
	refs     int
	dir      string // holds softhsm2.conf and tokens/
	prevConf *string
	clusters int // numbers clusters, for unique token labels
}

// acquireShared creates the shared directory and sets SOFTHSM2_CONF if no
// cluster exists, and returns the configuration path and a number for the
// new cluster. shared must be held.
func acquireShared() (conf string, cluster int, err error) {
	if shared.refs == 0 {
		dir, err := os.MkdirTemp("", "hsmkms-softhsm-")
		if err != nil {
			return "", 0, err
		}
		tokens := filepath.Join(dir, "tokens")
		conf := filepath.Join(dir, "softhsm2.conf")
		text := "directories.tokendir = " + tokens + "\n" +
			"objectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
		if err := errors.Join(os.Mkdir(tokens, 0o700), os.WriteFile(conf, []byte(text), 0o600)); err != nil {
			_ = os.RemoveAll(dir)
			return "", 0, err
		}
		shared.prevConf = nil
		if prev, ok := os.LookupEnv("SOFTHSM2_CONF"); ok {
			shared.prevConf = &prev
		}
		if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
			_ = os.RemoveAll(dir)
			return "", 0, err
		}
		shared.dir = dir
	}
	shared.refs++
	shared.clusters++
	return filepath.Join(shared.dir, "softhsm2.conf"), shared.clusters, nil
}

// releaseShared undoes acquireShared; the last release removes the
// directory and restores SOFTHSM2_CONF. shared must be held.
func releaseShared() error {
	if shared.refs--; shared.refs > 0 {
		return nil
	}
	var err error
	if shared.prevConf != nil {
		err = os.Setenv("SOFTHSM2_CONF", *shared.prevConf)
	} else {
		err = os.Unsetenv("SOFTHSM2_CONF")
	}
	return errors.Join(err, os.RemoveAll(shared.dir))
}

// A Cluster is a set of SoftHSM2 members, each its own token and library
// instance.
type Cluster struct {
	// Members are the members, Members[i].Index == i.
	Members []*Member

	conf      string
	util      string // softhsm2-util
	dirs      []string
	closeOnce sync.Once
	closeErr  error
}

// New creates a cluster of n members in a temporary directory of t and
// closes it when the test ends. It fails the test when SoftHSM2 is missing,
// or skips it as Require does.
func New(t testing.TB, n int) *Cluster {
	t.Helper()
	Require(t)
	c, err := NewCluster(t.TempDir(), n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// NewCluster creates a cluster of n members, each with a directory
// dir/member-<i> that holds its copy of libsofthsm2.so. It is for demos and
// tools; tests use New. Close removes the members' tokens and directories.
func NewCluster(dir string, n int) (_ *Cluster, err error) {
	if n < 1 {
		return nil, fmt.Errorf("softhsmtest: %d members, want at least 1", n)
	}
	lib, err := LibraryPath()
	if err != nil {
		return nil, err
	}
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		return nil, fmt.Errorf("softhsmtest: %w; %s", err, softhsmlib.InstallHint)
	}
	userPIN, soPIN := randomPIN(), randomPIN()

	shared.Lock()
	defer shared.Unlock()
	conf, num, err := acquireShared()
	if err != nil {
		return nil, fmt.Errorf("softhsmtest: creating the token directory: %w", err)
	}
	c := &Cluster{conf: conf, util: util}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.close())
		}
	}()
	for i := range n {
		mdir := filepath.Join(dir, fmt.Sprintf("member-%d", i))
		if err := os.Mkdir(mdir, 0o700); err != nil {
			return nil, fmt.Errorf("softhsmtest: %w", err)
		}
		c.dirs = append(c.dirs, mdir)
		m := &Member{
			Index:   i,
			Label:   fmt.Sprintf("c%d-member-%d", num, i),
			LibPath: filepath.Join(mdir, fmt.Sprintf("libsofthsm2-member-%d.so", i)),
			Faults:  &Faults{},
			cluster: c,
			userPIN: userPIN,
			soPIN:   soPIN,
		}
		// A copy, not a link: the dynamic loader shares one instance
		// between paths that name the same file.
		if err := copyFile(m.LibPath, lib); err != nil {
			return nil, fmt.Errorf("softhsmtest: copying %s: %w", lib, err)
		}
		if err := m.initToken(); err != nil {
			return nil, err
		}
		c.Members = append(c.Members, m)
	}
	// Initialize only now: an instance sees the tokens that exist when it
	// initializes.
	for _, m := range c.Members {
		if m.ctx = pkcs11.New(m.LibPath); m.ctx == nil {
			return nil, fmt.Errorf("softhsmtest: cannot load %s", m.LibPath)
		}
		if err := initialize(m.ctx); err != nil {
			return nil, fmt.Errorf("softhsmtest: member %d: C_Initialize: %w", m.Index, err)
		}
	}
	return c, nil
}

// ConfPath returns the path of the softhsm2.conf that SOFTHSM2_CONF points
// to while the cluster exists, for tools such as pkcs11-tool.
func (c *Cluster) ConfPath() string { return c.conf }

// Close releases calls hung by the members' Faults, crashes every member,
// unloads its library, deletes its token and removes its directory. It is
// idempotent. Tokens opened on members must be closed first.
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() {
		var errs []error
		for _, m := range c.Members {
			m.Faults.Release()
			m.mu.Lock()
			defer m.mu.Unlock()
			errs = append(errs, m.crash())
		}
		shared.Lock()
		defer shared.Unlock()
		c.closeErr = errors.Join(append(errs, c.close())...)
	})
	return c.closeErr
}

// close crashes the members, unloads their libraries and deletes their
// tokens and directories. shared must be held, and the members must not be
// in use (m.mu held, or not yet handed out).
func (c *Cluster) close() error {
	var errs []error
	for _, m := range c.Members {
		errs = append(errs, m.crash())
		if m.ctx != nil {
			m.ctx.Destroy()
			m.ctx = nil
		}
		errs = append(errs, m.deleteToken())
	}
	for _, d := range c.dirs {
		errs = append(errs, os.RemoveAll(d))
	}
	errs = append(errs, releaseShared())
	return errors.Join(errs...)
}

// A Member is one SoftHSM2 token with its own library instance.
type Member struct {
	Index   int    // position in Cluster.Members
	Label   string // the token label, unique in the process
	LibPath string // the member's own copy of libsofthsm2.so
	// Faults must intercept every call of every hsm.Token opened on the
	// member: hsm.WithInterceptor(m.Faults).
	Faults *Faults

	cluster *Cluster
	userPIN string
	soPIN   string

	mu   sync.Mutex // serializes Crash, Restart and Wipe
	ctx  *pkcs11.Ctx
	down atomic.Bool
}

// Config returns hsm.DefaultConfig with the member's library, token label
// and user PIN filled in.
func (m *Member) Config() hsm.Config {
	cfg := hsm.DefaultConfig()
	cfg.ModulePath = m.LibPath
	cfg.TokenLabel = m.Label
	cfg.PIN = hsm.NewPIN(m.userPIN)
	return cfg
}

// Open opens the member's token apart from any cluster, through its
// Faults (whose lock keeps the instances' token files apart), and closes
// it when the test ends.
func (m *Member) Open(t testing.TB) *hsm.Token {
	t.Helper()
	tok, err := hsm.Open(context.Background(), m.Config(), hsm.WithInterceptor(m.Faults))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tok.Close(); err != nil {
			t.Error(err)
		}
	})
	return tok
}

// SOPIN returns the security officer's PIN.
func (m *Member) SOPIN() hsm.PIN { return hsm.NewPIN(m.soPIN) }

// URI returns the member's RFC 7512 PKCS#11 URI, with the module path and
// the user PIN, e.g. for pkcs11-tool or hsm.ParseURI. It contains the PIN:
// do not log it.
func (m *Member) URI() string {
	return "pkcs11:token=" + escape(m.Label) +
		"?module-path=" + escape(m.LibPath) + "&pin-value=" + escape(m.userPIN)
}

// Down reports whether the member is crashed or being crashed, and not
// restarted since.
func (m *Member) Down() bool { return m.down.Load() }

// Crash stops the member as a power loss would: from now on every
// intercepted call fails with CKR_DEVICE_REMOVED; once the calls in flight
// have returned, the library instance is finalized, which invalidates
// every session and login. Crash waits for hung calls, so it does not
// return before Faults.Release. Crashing a down member does nothing more.
func (m *Member) Crash() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.crash()
}

func (m *Member) crash() error {
	m.down.Store(true)
	m.Faults.SetDown(true)
	_ = m.Faults.waitUntil(context.Background(), func() bool { return m.Faults.inFlight == 0 })
	if m.ctx == nil {
		return nil
	}
	err := m.ctx.Finalize()
	if errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED)) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("softhsmtest: member %d: C_Finalize: %w", m.Index, err)
	}
	return nil
}

// Restart initializes the member's library instance again and lets calls
// through. Sessions opened before the crash give
// CKR_SESSION_HANDLE_INVALID; the token must be logged in again, and may
// sit in another slot. Restarting a member that is up does nothing.
func (m *Member) Restart() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	shared.Lock()
	defer shared.Unlock()
	return m.restart()
}

// restart does Restart's work. m.mu and shared must be held.
func (m *Member) restart() error {
	if m.ctx == nil {
		return fmt.Errorf("softhsmtest: member %d: cluster closed", m.Index)
	}
	if err := initialize(m.ctx); err != nil {
		return fmt.Errorf("softhsmtest: member %d: C_Initialize: %w", m.Index, err)
	}
	m.Faults.SetDown(false)
	m.down.Store(false)
	return nil
}

// Wipe replaces the member's token with a new, empty one with the same
// label and PINs but a new serial number, as when an HSM is swapped, and
// brings the member up. A member that is up is crashed first.
func (m *Member) Wipe() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.crash(); err != nil {
		return err
	}
	shared.Lock()
	defer shared.Unlock()
	if err := m.deleteToken(); err != nil {
		return err
	}
	if err := m.initToken(); err != nil {
		return err
	}
	return m.restart()
}

// initToken creates the member's token. shared must be held.
func (m *Member) initToken() error {
	return m.util("--init-token", "--free", "--label", m.Label, "--so-pin", m.soPIN, "--pin", m.userPIN)
}

// deleteToken deletes the member's token directory. shared must be held.
func (m *Member) deleteToken() error {
	return m.util("--delete-token", "--token", m.Label)
}

// util runs softhsm2-util with the cluster's configuration.
func (m *Member) util(args ...string) error {
	tokenFiles.Lock()
	defer tokenFiles.Unlock()
	cmd := exec.Command(m.cluster.util, args...)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+m.cluster.conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		// The arguments hold PINs: name the action only.
		return fmt.Errorf("softhsmtest: member %d: softhsm2-util %s: %w: %s",
			m.Index, args[0], err, strings.TrimSpace(string(out)))
	}
	return nil
}

// initialize runs C_Initialize; an instance already initialized is fine.
func initialize(ctx *pkcs11.Ctx) error {
	tokenFiles.Lock()
	defer tokenFiles.Unlock()
	err := ctx.Initialize()
	if errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		return nil
	}
	return err
}

// randomPIN returns a PIN of 26 random base32 characters.
func randomPIN() string { return rand.Text() }

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	return errors.Join(err, out.Close())
}

// escape percent-encodes s for a PKCS#11 URI (RFC 7512), keeping the
// unreserved characters and '/'.
func escape(s string) string {
	var b strings.Builder
	for i := range len(s) {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '-', c == '.', c == '_', c == '~', c == '/':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

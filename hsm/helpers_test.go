package hsm_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"
)

// member returns a fresh SoftHSM2 member for one test.
func member(t *testing.T) *softhsmtest.Member {
	t.Helper()
	return softhsmtest.New(t, 1).Members[0]
}

// open opens a token on m with its fault injector, after edit changes the
// configuration, and closes it at the end of the test.
func open(t testing.TB, m *softhsmtest.Member, edit func(*hsm.Config)) *hsm.Token {
	t.Helper()
	cfg := m.Config()
	if edit != nil {
		edit(&cfg)
	}
	tok, err := hsm.Open(context.Background(), cfg, hsm.WithInterceptor(m.Faults))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, tok.Close()) })
	return tok
}

// softhsmtestNew returns the n members of a fresh SoftHSM2 cluster.
func softhsmtestNew(t *testing.T, n int) []*softhsmtest.Member {
	t.Helper()
	return softhsmtest.New(t, n).Members
}

// libraryClient is a second PKCS#11 client on m's library instance, as
// another application (or another part of this one) sharing the token
// would have. The Token owns the instance, so it is never finalized here.
func libraryClient(t *testing.T, m *softhsmtest.Member) *pkcs11.Ctx {
	t.Helper()
	p := pkcs11.New(m.LibPath)
	require.NotNil(t, p)
	t.Cleanup(p.Destroy)
	if err := p.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		require.NoError(t, err)
	}
	return p
}

// secondClient opens a session on tok's slot with a libraryClient.
func secondClient(t *testing.T, m *softhsmtest.Member, tok *hsm.Token) (*pkcs11.Ctx, pkcs11.SessionHandle) {
	t.Helper()
	p := libraryClient(t, m)
	s, err := p.OpenSession(tok.Info().Slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.CloseSession(s) })
	return p, s
}

// findObjects runs one search through a second client.
func findObjects(t *testing.T, p *pkcs11.Ctx, s pkcs11.SessionHandle, tmpl ...*pkcs11.Attribute) []pkcs11.ObjectHandle {
	t.Helper()
	require.NoError(t, p.FindObjectsInit(s, tmpl))
	objs, _, err := p.FindObjects(s, 100)
	require.NoError(t, err)
	require.NoError(t, p.FindObjectsFinal(s))
	return objs
}

// openSessions counts the sessions open in p's library instance (SoftHSM
// numbers them from 1).
func openSessions(p *pkcs11.Ctx) int {
	n := 0
	for h := range pkcs11.SessionHandle(256) {
		if _, err := p.GetSessionInfo(h); err == nil {
			n++
		}
	}
	return n
}

// await returns what c delivers, and fails the test with "stuck" when
// nothing comes within 30 s: a bound on a hang, never a synchronisation.
func await(t *testing.T, c <-chan error, stuck string) error {
	t.Helper()
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	select {
	case err := <-c:
		return err
	case <-timeout.C:
		t.Fatal(stuck)
		return nil
	}
}

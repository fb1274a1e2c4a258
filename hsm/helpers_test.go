package hsm_test

import (
	"context"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
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

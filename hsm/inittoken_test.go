package hsm_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os/exec"
	"strings"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestInitToken: a token initialized by InitToken opens with its user PIN
// and works; a second initialization under its label is refused, so its
// keys are safe; bad arguments are typed errors that carry no PIN.
func TestInitToken(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	b := make([]byte, 6)
	_, err := rand.Read(b)
	require.NoError(t, err)
	label := "init-" + hex.EncodeToString(b)
	so, user := "so-"+hex.EncodeToString(b), "user-"+hex.EncodeToString(b)
	t.Cleanup(func() {
		// SOFTHSM2_CONF names the test's token directory (softhsmtest).
		out, err := exec.Command("softhsm2-util", "--delete-token", "--token", label).CombinedOutput()
		assert.NoError(t, err, "%s", out)
	})

	require.NoError(t, hsm.InitToken(ctx, m.LibPath, label, hsm.NewPIN(so), hsm.NewPIN(user)))
	cfg := hsm.DefaultConfig()
	cfg.ModulePath, cfg.TokenLabel, cfg.PIN = m.LibPath, label, hsm.NewPIN(user)
	tok, err := hsm.Open(ctx, cfg)
	require.NoError(t, err)
	_, err = tok.GenerateKey(ctx, "k", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)
	_, _, err = tok.EncryptGCM(ctx, "k", nil, []byte("x"), nil)
	require.NoError(t, err)
	_, err = tok.CreateTrustedWrappingKey(ctx, "kek", hsm.NewPIN(so), hsm.KeyOptions{})
	require.NoError(t, err, "the SO PIN is set")

	err = hsm.InitToken(ctx, m.LibPath, label, hsm.NewPIN(so), hsm.NewPIN(user))
	require.ErrorIs(t, err, hsm.ErrKeyExists)
	_, err = tok.Describe(ctx, "k")
	require.NoError(t, err, "the refused initialization left the token's keys alone")
	require.NoError(t, tok.Close())

	for name, c := range map[string]struct {
		label    string
		so, user string
	}{
		"empty label":    {"", so, user},
		"long label":     {strings.Repeat("x", 33), so, user},
		"trailing space": {"x ", so, user},
		"empty SO PIN":   {"other", "", user},
		"empty user PIN": {"other", so, ""},
	} {
		err := hsm.InitToken(ctx, m.LibPath, c.label, hsm.NewPIN(c.so), hsm.NewPIN(c.user))
		require.ErrorIs(t, err, hsm.ErrInvalidInput, name)
		assert.NotContains(t, err.Error(), so, name)
		assert.NotContains(t, err.Error(), user, name)
	}
}

package hsm_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const secretPIN = "s3cr3t-PIN-value-4711"

// TestPINNeverPrinted formats a PIN, and a Config holding it, every way Go
// code commonly does, and checks the value never appears.
func TestPINNeverPrinted(t *testing.T) {
	pin := hsm.NewPIN(secretPIN)
	cfg := hsm.DefaultConfig()
	cfg.ModulePath, cfg.TokenLabel, cfg.PIN = "/nonexistent/lib.so", "x", pin

	var outputs []string
	for _, v := range []any{pin, &pin, cfg, &cfg} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T"} {
			outputs = append(outputs, fmt.Sprintf(verb, v))
		}
		j, err := json.Marshal(v)
		require.NoError(t, err)
		outputs = append(outputs, string(j))
	}
	outputs = append(outputs, pin.String(), pin.GoString(), fmt.Sprint(pin), fmt.Sprintln(cfg))
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	log.Info("cfg", "pin", pin, "config", cfg)
	slog.New(slog.NewTextHandler(&buf, nil)).Info("cfg", "pin", pin, "config", cfg)
	outputs = append(outputs, buf.String())

	for _, out := range outputs {
		assert.NotContains(t, out, secretPIN)
		assert.NotContains(t, out, fmt.Sprintf("%x", secretPIN))
	}
	assert.Contains(t, fmt.Sprint(pin), "REDACTED")

	// Errors: a wrong module, a wrong PIN, a bad URI after the PIN.
	_, err := hsm.Open(context.Background(), cfg)
	require.Error(t, err)
	assert.NotContains(t, err.Error(), secretPIN)
	for _, uri := range []string{
		"pkcs11:token=a?pin-value=" + secretPIN + "&bogus=1",
		"pkcs11:token=a?pin-value:" + secretPIN,
		"pkcs11:token=a?pin-value=" + secretPIN + "%zz",
	} {
		_, err = hsm.ParseURI(uri)
		require.Error(t, err)
		assert.NotContains(t, err.Error(), secretPIN)
	}
}

func TestWrongPIN(t *testing.T) {
	m := member(t)
	cfg := m.Config()
	cfg.PIN = hsm.NewPIN(secretPIN)
	_, err := hsm.Open(context.Background(), cfg)
	require.ErrorIs(t, err, hsm.ErrLogin)
	assert.Equal(t, hsm.ClassFatal, hsm.Classify(err))
	assert.NotContains(t, err.Error(), secretPIN)
	assert.NotContains(t, fmt.Sprintf("%+v %#v", err, err), secretPIN)

	// The SO path: a wrong SO PIN fails cleanly and the user stays logged in.
	tok := open(t, m, nil)
	_, err = tok.CreateTrustedWrappingKey(context.Background(), "kek", hsm.NewPIN(secretPIN), hsm.KeyOptions{})
	require.ErrorIs(t, err, hsm.ErrLogin)
	assert.NotContains(t, fmt.Sprintf("%v %+v", err, err), secretPIN)
	_, err = tok.GenerateKey(context.Background(), "after", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err, "the user is logged in again after a failed SO login")
	keys, err := tok.ListKeys(context.Background())
	require.NoError(t, err)
	assert.Len(t, keys, 1, "the failed ceremony left no key")
}

func TestParseURI(t *testing.T) {
	pinFile := filepath.Join(t.TempDir(), "pin")
	require.NoError(t, os.WriteFile(pinFile, []byte("1234\n"), 0o600))

	cfg, err := hsm.ParseURI("pkcs11:token=my%20token;serial=abc;slot-id=7?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:" + pinFile)
	require.NoError(t, err)
	assert.Equal(t, "my token", cfg.TokenLabel)
	assert.Equal(t, "abc", cfg.TokenSerial)
	require.NotNil(t, cfg.Slot)
	assert.Equal(t, uint(7), *cfg.Slot)
	assert.Equal(t, "/usr/lib/softhsm/libsofthsm2.so", cfg.ModulePath)
	assert.False(t, cfg.PIN.IsZero())
	assert.Equal(t, hsm.DefaultMaxSessions, cfg.MaxSessions)
	require.NoError(t, cfg.Validate())

	for _, bad := range []string{
		"token=a",                  // no scheme
		"pkcs11:token",             // no value
		"pkcs11:slot-id=x",         // not a number
		"pkcs11:colour=blue",       // unknown attribute
		"pkcs11:token=a?module=/x", // unknown query attribute
		"pkcs11:token=%zz",         // bad escape
		"pkcs11:token=a?pin-source=/nonexistent/pin",
	} {
		_, err := hsm.ParseURI(bad)
		assert.ErrorIs(t, err, hsm.ErrInvalidInput, bad)
	}
}

// TestOpenByURI opens a real member through its RFC 7512 URI.
func TestOpenByURI(t *testing.T) {
	m := member(t)
	cfg, err := hsm.ParseURI(m.URI())
	require.NoError(t, err)
	tok, err := hsm.Open(context.Background(), cfg)
	require.NoError(t, err)
	defer tok.Close()
	assert.Equal(t, m.Label, tok.Info().Label)
	assert.Equal(t, "softhsm2", tok.Info().Profile.Name)
	_, err = tok.Random(context.Background(), 32)
	require.NoError(t, err)
}

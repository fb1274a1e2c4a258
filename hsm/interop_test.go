package hsm_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ThalesGroup/crypto11"
	"github.com/hsmkms/hsmkms/hsm"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestInteropCrypto11 reads keys made here through crypto11, an
// independent PKCS#11 client loading its own library instance (the system
// libsofthsm2.so, a different path from the member's copy), and checks the
// attributes and a signature both ways.
func TestInteropCrypto11(t *testing.T) {
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, nil)
	_, err := tok.GenerateKey(ctx, "sealed", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)
	_, err = tok.GenerateKey(ctx, "movable", hsm.AES256, hsm.KeyOptions{Extractable: true})
	require.NoError(t, err)
	_, err = tok.GenerateKey(ctx, "signer", hsm.ECP256, hsm.KeyOptions{})
	require.NoError(t, err)

	lib, err := softhsmtest.LibraryPath()
	require.NoError(t, err)
	c11, err := crypto11.Configure(&crypto11.Config{Path: lib, TokenLabel: m.Label, Pin: rawPIN(t, m)})
	require.NoError(t, err)
	defer c11.Close()

	attrs := []crypto11.AttributeType{pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_WRAP_WITH_TRUSTED}
	for id, extractable := range map[string]bool{"sealed": false, "movable": true} {
		key, err := c11.FindKey([]byte(id), nil)
		require.NoError(t, err)
		require.NotNil(t, key, id)
		set, err := c11.GetAttributes(key, attrs)
		require.NoError(t, err)
		for _, a := range []uint{pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE, pkcs11.CKA_SENSITIVE, pkcs11.CKA_WRAP_WITH_TRUSTED} {
			assert.Equal(t, []byte{1}, set[a].Value, "%s: attribute 0x%x", id, a)
		}
		assert.Equal(t, boolByte(extractable), set[pkcs11.CKA_EXTRACTABLE].Value, "%s: CKA_EXTRACTABLE", id)
	}

	// The EC key: crypto11 signs, we verify; we sign, crypto11's public key verifies.
	signer, err := c11.FindKeyPair([]byte("signer"), nil)
	require.NoError(t, err)
	require.NotNil(t, signer)
	digest := sha256.Sum256([]byte("interop"))
	sig, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	require.NoError(t, err)
	require.NoError(t, tok.Verify(ctx, "signer", hsm.ECDSA, crypto.SHA256, digest[:], sig))
	ours, err := tok.Sign(ctx, "signer", hsm.ECDSA, crypto.SHA256, digest[:])
	require.NoError(t, err)
	assert.True(t, ecdsa.VerifyASN1(signer.Public().(*ecdsa.PublicKey), digest[:], ours))
}

// rawPIN reads the member's user PIN from its URI, for the independent
// clients that take a plain string.
func rawPIN(t *testing.T, m *softhsmtest.Member) string {
	u, err := url.Parse(m.URI())
	require.NoError(t, err)
	q, err := url.ParseQuery(u.RawQuery)
	require.NoError(t, err)
	require.NotEmpty(t, q.Get("pin-value"))
	return q.Get("pin-value")
}

func boolByte(b bool) []byte {
	if b {
		return []byte{1}
	}
	return []byte{0}
}

// TestInteropPkcs11Tool lists the objects with OpenSC's pkcs11-tool, a
// separate process, and checks what it reports of our keys. Installed by
// .ci/run and softhsm-test.sh ensure.
func TestInteropPkcs11Tool(t *testing.T) {
	tool, err := exec.LookPath("pkcs11-tool")
	require.NoError(t, err, "pkcs11-tool missing: sudo apt-get install -y opensc")
	ctx := context.Background()
	m := member(t)
	tok := open(t, m, nil)
	_, err = tok.GenerateKey(ctx, "sealed", hsm.AES256, hsm.KeyOptions{})
	require.NoError(t, err)
	_, err = tok.GenerateKey(ctx, "movable", hsm.HMAC256, hsm.KeyOptions{Extractable: true})
	require.NoError(t, err)

	pin := rawPIN(t, m)
	lib, err := softhsmtest.LibraryPath()
	require.NoError(t, err)
	cmd := exec.Command(tool, "--module", lib, "--token-label", m.Label, "--login", "--pin", "env:HSMKMS_TEST_PIN", "--list-objects")
	cmd.Env = append(os.Environ(), "HSMKMS_TEST_PIN="+pin)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, string(out))
	text := string(out)
	objects := strings.Split(text, "Secret Key Object")
	require.Len(t, objects, 3, text)
	for _, o := range objects[1:] {
		assert.NotContains(t, o, "VALUE:", "a sensitive key's value is never shown")
		switch {
		case strings.Contains(o, "hsmkms:AES_256:sealed"):
			assert.Contains(t, o, "Access:     sensitive, always sensitive, never extractable, local")
		case strings.Contains(o, "hsmkms:HMAC_256:movable"):
			assert.Contains(t, o, "Access:     sensitive, always sensitive, extractable, local")
		default:
			t.Errorf("unexpected object: %s", o)
		}
	}
}

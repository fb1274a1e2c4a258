package kmsadapter_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/stretchr/testify/require"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/kmsadapter"
)

// holdFirst holds the first call that reaches it until the test
// releases it; entered is closed when that call arrives.
type holdFirst struct {
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func newHoldFirst() *holdFirst {
	return &holdFirst{entered: make(chan struct{}), release: make(chan struct{})}
}

func (h *holdFirst) hold() {
	first := false
	h.once.Do(func() { first = true })
	if first {
		close(h.entered)
		<-h.release
	}
}

// holdFirstDestroy is a Backend whose first DestroyKey waits, before it
// destroys anything, until the test releases it.
type holdFirstDestroy struct {
	kmsadapter.Backend
	*holdFirst
}

func (h holdFirstDestroy) DestroyKey(ctx context.Context, id hsm.KeyID) error {
	h.hold()
	return h.Backend.DestroyKey(ctx, id)
}

// holdFirstGenerate is a Backend whose first GenerateKey waits, after
// making the key, until the test releases it.
type holdFirstGenerate struct {
	kmsadapter.Backend
	*holdFirst
}

func (h holdFirstGenerate) GenerateKey(ctx context.Context, id hsm.KeyID, spec hsm.KeySpec, opts hsm.KeyOptions) (hsm.KeyInfo, error) {
	info, err := h.Backend.GenerateKey(ctx, id, spec, opts)
	h.hold()
	return info, err
}

// replica is another Client over e's store and clock, as another replica
// of the service would be, with backend in front of the HSMs.
func (e *env) replica(t *testing.T, backend kmsadapter.Backend) *kmsadapter.Client {
	t.Helper()
	c, err := kmsadapter.New(backend, e.store, e.cfg, kmsadapter.WithClock(e.clock))
	require.NoError(t, err)
	return c
}

// importMaterial imports material into the external key id through c,
// under the import parameters p (RSAES_OAEP_SHA_1); a nil validTo means
// the material does not expire.
func importMaterial(t *testing.T, c *kmsadapter.Client, id string, p *kms.GetParametersForImportOutput, material []byte, validTo *time.Time) error {
	in := &kms.ImportKeyMaterialInput{KeyId: str(id), ImportToken: p.ImportToken,
		EncryptedKeyMaterial: awsWrap(t, types.AlgorithmSpecRsaesOaepSha1, p.PublicKey, material),
		ExpirationModel:      types.ExpirationModelTypeKeyMaterialDoesNotExpire}
	if validTo != nil {
		in.ExpirationModel, in.ValidTo = types.ExpirationModelTypeKeyMaterialExpires, validTo
	}
	_, err := c.ImportKeyMaterial(bg, in)
	return err
}

// createExternalKey creates a key for imported material through c.
func createExternalKey(t *testing.T, c *kmsadapter.Client) string {
	t.Helper()
	out, err := c.CreateKey(bg, &kms.CreateKeyInput{Origin: types.OriginTypeExternal})
	require.NoError(t, err)
	return *out.KeyMetadata.KeyId
}

// TestCancelWhileTickDestroys: once Tick has begun destroying a key whose
// waiting period ended, CancelKeyDeletion is refused
// (KMSInvalidStateException) instead of reporting a cancellation that the
// destruction then undoes; and a deletion cancelled before Tick reaches
// the key is left alone even though Tick's list still showed it due.
func TestCancelWhileTickDestroys(t *testing.T) {
	e := newEnv(t)
	doomed, kept := createKey(t, e.c), createKey(t, e.c)
	enc, err := e.c.Encrypt(bg, &kms.EncryptInput{KeyId: str(kept), Plaintext: []byte("hello")})
	require.NoError(t, err)
	for _, id := range []string{doomed, kept} {
		_, err = e.c.ScheduleKeyDeletion(bg, &kms.ScheduleKeyDeletionInput{KeyId: str(id), PendingWindowInDays: i32(7)})
		require.NoError(t, err)
	}
	e.clock.Advance(7*24*time.Hour + time.Minute)

	h := newHoldFirst()
	c2 := e.replica(t, holdFirstDestroy{e.backend, h})
	done := make(chan error, 1)
	go func() { done <- c2.Tick(bg) }()
	<-h.entered // Tick is destroying the first key of its list

	var first, second string // in Tick's order: the first is being destroyed
	for _, id := range []string{doomed, kept} {
		_, err := c2.CancelKeyDeletion(bg, &kms.CancelKeyDeletionInput{KeyId: str(id)})
		var inv *types.KMSInvalidStateException
		if errors.As(err, &inv) {
			first = id
		} else {
			require.NoError(t, err)
			second = id
		}
	}
	require.NotEmpty(t, first, "cancelling the key being destroyed should be refused")
	require.NotEmpty(t, second, "cancelling the other key should succeed")
	close(h.release)
	require.NoError(t, <-done)

	_, err = c2.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: str(first)})
	var nf *types.NotFoundException
	require.ErrorAs(t, err, &nf)
	d, err := c2.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: str(second)})
	require.NoError(t, err, "a cancelled deletion must keep the key")
	require.Equal(t, types.KeyStateDisabled, d.KeyMetadata.KeyState)
	if second == kept {
		_, err = c2.EnableKey(bg, &kms.EnableKeyInput{KeyId: str(kept)})
		require.NoError(t, err)
		_, err = c2.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
		require.NoError(t, err)
	}
}

// TestReimportWhileTickExpires: Tick found imported material expired, but
// before it reaches that key the material is imported again with a later
// expiry. Tick leaves it: the key stays Enabled and usable.
func TestReimportWhileTickExpires(t *testing.T) {
	e := newEnv(t)
	x := createExternalKey(t, e.c)
	// A key Tick destroys before it reaches x (Tick goes in ID order).
	n := createKey(t, e.c)
	for n > x {
		n = createKey(t, e.c)
	}
	material := make([]byte, 32)
	for i := range material {
		material[i] = byte(i)
	}
	imp := func(c *kmsadapter.Client, validTo time.Time) {
		require.NoError(t, importMaterial(t, c, x, getParams(t, c, x, types.AlgorithmSpecRsaesOaepSha1), material, &validTo))
	}
	imp(e.c, e.clock.Now().Add(7*24*time.Hour))
	_, err := e.c.ScheduleKeyDeletion(bg, &kms.ScheduleKeyDeletionInput{KeyId: str(n), PendingWindowInDays: i32(7)})
	require.NoError(t, err)
	e.clock.Advance(7*24*time.Hour + time.Minute)

	h := newHoldFirst()
	c2 := e.replica(t, holdFirstDestroy{e.backend, h})
	done := make(chan error, 1)
	go func() { done <- c2.Tick(bg) }()
	<-h.entered // Tick is destroying n; its list shows x's material expired
	imp(e.c, e.clock.Now().Add(30*24*time.Hour))
	close(h.release)
	require.NoError(t, <-done)

	d, err := e.c.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: str(x)})
	require.NoError(t, err)
	require.Equal(t, types.KeyStateEnabled, d.KeyMetadata.KeyState)
	_, err = e.c.Encrypt(bg, &kms.EncryptInput{KeyId: str(x), Plaintext: []byte("x")})
	require.NoError(t, err)
}

// TestDeleteMaterialDuringReimport: key material is deleted while the same
// material is being imported again. The import fails
// (KMSInvalidStateException: import it again) rather than leaving an
// Enabled key whose material is gone; importing again then works.
func TestDeleteMaterialDuringReimport(t *testing.T) {
	e := newEnv(t)
	x := createExternalKey(t, e.c)
	material := make([]byte, 32)
	imp := func(c *kmsadapter.Client, p *kms.GetParametersForImportOutput) error {
		return importMaterial(t, c, x, p, material, nil)
	}
	require.NoError(t, imp(e.c, getParams(t, e.c, x, types.AlgorithmSpecRsaesOaepSha1)))

	h := newHoldFirst()
	c2 := e.replica(t, holdFirstDestroy{e.backend, h})
	p := getParams(t, e.c, x, types.AlgorithmSpecRsaesOaepSha1)
	done := make(chan error, 1)
	go func() { done <- imp(c2, p) }()
	<-h.entered // the re-import is destroying its check copy of the material
	_, err := e.c.DeleteImportedKeyMaterial(bg, &kms.DeleteImportedKeyMaterialInput{KeyId: str(x)})
	require.NoError(t, err)
	close(h.release)
	var inv *types.KMSInvalidStateException
	require.ErrorAs(t, <-done, &inv)

	d, err := e.c.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: str(x)})
	require.NoError(t, err)
	require.Equal(t, types.KeyStatePendingImport, d.KeyMetadata.KeyState)
	require.NoError(t, imp(e.c, getParams(t, e.c, x, types.AlgorithmSpecRsaesOaepSha1)))
	_, err = e.c.Encrypt(bg, &kms.EncryptInput{KeyId: str(x), Plaintext: []byte("x")})
	require.NoError(t, err)
}

// TestSlowCreateRolledBack: a CreateKey whose HSM work outlasts
// CreateTimeout is rolled back by another replica's Tick (its HSM key
// destroyed, its record deleted). The CreateKey then fails
// (DependencyTimeoutException) instead of writing back an Enabled record
// whose key no longer exists.
func TestSlowCreateRolledBack(t *testing.T) {
	e := newEnv(t)
	c2 := e.replica(t, e.backend)
	e.c.SetTestHook(func(step string) error {
		if step == "generated" { // the HSMs were slow; another replica ticks
			e.clock.Advance(e.cfg.CreateTimeout + time.Second)
			require.NoError(t, c2.Tick(bg))
		}
		return nil
	})
	_, err := e.c.CreateKey(bg, &kms.CreateKeyInput{})
	var timeout *types.DependencyTimeoutException
	require.ErrorAs(t, err, &timeout)
	e.c.SetTestHook(nil)
	keys, err := e.c.ListKeys(bg, &kms.ListKeysInput{})
	require.NoError(t, err)
	require.Empty(t, keys.Keys, "no key should be left of the rolled-back creation")
}

// TestRotationOfAKeyDisabledMeanwhile: a key disabled while its rotation
// makes the new key material is not rotated (DisabledException), and its
// versions are unchanged.
func TestRotationOfAKeyDisabledMeanwhile(t *testing.T) {
	e := newEnv(t)
	id := createKey(t, e.c)
	h := newHoldFirst()
	c2 := e.replica(t, holdFirstGenerate{e.backend, h})
	done := make(chan error, 1)
	go func() {
		_, err := c2.RotateKeyOnDemand(bg, &kms.RotateKeyOnDemandInput{KeyId: str(id)})
		done <- err
	}()
	<-h.entered
	_, err := e.c.DisableKey(bg, &kms.DisableKeyInput{KeyId: str(id)})
	require.NoError(t, err)
	close(h.release)
	var dis *types.DisabledException
	require.ErrorAs(t, <-done, &dis)
	rot, err := e.c.ListKeyRotations(bg, &kms.ListKeyRotationsInput{KeyId: str(id)})
	require.NoError(t, err)
	require.Empty(t, rot.Rotations)
}

// TestMetadataSlicesAreTheCallers: a caller writing into the algorithm
// lists of one key's metadata changes nothing for any other call.
func TestMetadataSlicesAreTheCallers(t *testing.T) {
	e := newEnv(t)
	out, err := e.c.CreateKey(bg, &kms.CreateKeyInput{KeySpec: types.KeySpecRsa2048, KeyUsage: types.KeyUsageTypeSignVerify})
	require.NoError(t, err)
	algs := out.KeyMetadata.SigningAlgorithms
	require.NotEmpty(t, algs)
	want := slices.Clone(algs)
	for i := range algs {
		algs[i] = "TAMPERED"
	}
	d, err := e.c.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: out.KeyMetadata.KeyId})
	require.NoError(t, err)
	require.Equal(t, want, d.KeyMetadata.SigningAlgorithms)
}

// TestCreateRolledBackBeforeItsKeyWasMade: the rollback runs while the
// HSM key is still being made (it finds nothing to destroy). The CreateKey
// fails, and the HSM key it then made is not left behind.
func TestCreateRolledBackBeforeItsKeyWasMade(t *testing.T) {
	e := newEnv(t)
	require.NotNil(t, e.tok)
	before, err := e.tok.ListKeys(bg)
	require.NoError(t, err)
	c2 := e.replica(t, e.backend)
	e.c.SetTestHook(func(step string) error {
		if step == "created-record" { // another replica ticks before the HSM key exists
			e.clock.Advance(e.cfg.CreateTimeout + time.Second)
			require.NoError(t, c2.Tick(bg))
		}
		return nil
	})
	_, err = e.c.CreateKey(bg, &kms.CreateKeyInput{})
	var timeout *types.DependencyTimeoutException
	require.ErrorAs(t, err, &timeout)
	after, err := e.tok.ListKeys(bg)
	require.NoError(t, err)
	require.Len(t, after, len(before), "the rolled-back creation's HSM key should be gone")
}

// failFirstDestroy is a Backend whose first DestroyKey fails.
type failFirstDestroy struct {
	kmsadapter.Backend
	failed atomic.Bool
}

func (f *failFirstDestroy) DestroyKey(ctx context.Context, id hsm.KeyID) error {
	if f.failed.CompareAndSwap(false, true) {
		return &hsm.Error{Op: hsm.OpDestroyKey, Err: hsm.ErrTimeout} // the HSM stalled
	}
	return f.Backend.DestroyKey(ctx, id)
}

// TestDeletedMaterialIsDestroyedLater: DeleteImportedKeyMaterial whose
// HSM destroy fails still takes the material out of use (PendingImport),
// and the next Tick destroys the HSM key it left.
func TestDeletedMaterialIsDestroyedLater(t *testing.T) {
	e := newEnv(t)
	require.NotNil(t, e.tok)
	x := createExternalKey(t, e.c)
	p := getParams(t, e.c, x, types.AlgorithmSpecRsaesOaepSha1)
	require.NoError(t, importMaterial(t, e.c, x, p, make([]byte, 32), nil))
	withMaterial, err := e.tok.ListKeys(bg)
	require.NoError(t, err)

	c2 := e.replica(t, &failFirstDestroy{Backend: e.backend})
	_, err = c2.DeleteImportedKeyMaterial(bg, &kms.DeleteImportedKeyMaterialInput{KeyId: str(x)})
	require.Error(t, err)
	d, err := e.c.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: str(x)})
	require.NoError(t, err)
	require.Equal(t, types.KeyStatePendingImport, d.KeyMetadata.KeyState)

	require.NoError(t, e.c.Tick(bg))
	after, err := e.tok.ListKeys(bg)
	require.NoError(t, err)
	require.Len(t, after, len(withMaterial)-1, "Tick should destroy the material's HSM key")
}

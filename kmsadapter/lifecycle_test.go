package kmsadapter_test

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/stretchr/testify/require"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/kmsadapter"
)

const day = 24 * time.Hour

func blobVersion(b []byte) uint32 { return binary.BigEndian.Uint32(b[17:21]) }

func TestRotation(t *testing.T) {
	e := newEnv(t)
	id := e.createKey("", "")
	ec := map[string]string{"k": "v"}
	c1, err := e.c.Encrypt(bg, &kms.EncryptInput{KeyId: str(id), Plaintext: []byte("one"), EncryptionContext: ec})
	require.NoError(t, err)
	require.EqualValues(t, 1, blobVersion(c1.CiphertextBlob))
	d1, err := e.c.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: str(id)})
	require.NoError(t, err)

	_, err = e.c.RotateKeyOnDemand(bg, &kms.RotateKeyOnDemandInput{KeyId: str(id)})
	require.NoError(t, err)
	c2, err := e.c.Encrypt(bg, &kms.EncryptInput{KeyId: str(id), Plaintext: []byte("two"), EncryptionContext: ec})
	require.NoError(t, err)
	require.EqualValues(t, 2, blobVersion(c2.CiphertextBlob), "Encrypt uses the newest version")
	d2, err := e.c.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: str(id)})
	require.NoError(t, err)
	require.NotEqual(t, *d1.KeyMetadata.CurrentKeyMaterialId, *d2.KeyMetadata.CurrentKeyMaterialId)

	for _, c := range [][]byte{c1.CiphertextBlob, c2.CiphertextBlob} {
		_, err := e.c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: c, EncryptionContext: ec})
		require.NoError(t, err, "every version still decrypts")
	}
	// ReEncrypt moves an old ciphertext to the newest version.
	re, err := e.c.ReEncrypt(bg, &kms.ReEncryptInput{CiphertextBlob: c1.CiphertextBlob, SourceEncryptionContext: ec, DestinationKeyId: str(id), DestinationEncryptionContext: ec})
	require.NoError(t, err)
	require.EqualValues(t, 2, blobVersion(re.CiphertextBlob))
	require.NotEqual(t, *re.SourceKeyMaterialId, *re.DestinationKeyMaterialId)
	dec, err := e.c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: re.CiphertextBlob, EncryptionContext: ec})
	require.NoError(t, err)
	require.Equal(t, "one", string(dec.Plaintext))

	// Automatic rotation, driven by the clock.
	_, err = e.c.EnableKeyRotation(bg, &kms.EnableKeyRotationInput{KeyId: str(id), RotationPeriodInDays: i32(90)})
	require.NoError(t, err)
	e.clock.Advance(89 * day)
	require.NoError(t, e.c.Tick(bg))
	rots, err := e.c.ListKeyRotations(bg, &kms.ListKeyRotationsInput{KeyId: str(id)})
	require.NoError(t, err)
	require.Len(t, rots.Rotations, 1, "not yet")
	e.clock.Advance(2 * day)
	require.NoError(t, e.c.Tick(bg))
	rots, err = e.c.ListKeyRotations(bg, &kms.ListKeyRotationsInput{KeyId: str(id), IncludeKeyMaterial: types.IncludeKeyMaterialAllKeyMaterial})
	require.NoError(t, err)
	require.Len(t, rots.Rotations, 3)
	require.Equal(t, types.RotationTypeAutomatic, rots.Rotations[2].RotationType)
	require.Equal(t, types.KeyMaterialStateCurrent, rots.Rotations[2].KeyMaterialState)
	require.Equal(t, types.KeyMaterialStateNonCurrent, rots.Rotations[0].KeyMaterialState)
	st, err := e.c.GetKeyRotationStatus(bg, &kms.GetKeyRotationStatusInput{KeyId: str(id)})
	require.NoError(t, err)
	require.True(t, st.NextRotationDate.Equal(e.clock.Now().Add(90*day)))
	_, err = e.tok.Describe(bg, hsm.KeyID(id+"/v3"))
	require.NoError(t, err, "the new version is an HSM key")
	c3, err := e.c.Encrypt(bg, &kms.EncryptInput{KeyId: str(id), Plaintext: []byte("three")})
	require.NoError(t, err)
	require.EqualValues(t, 3, blobVersion(c3.CiphertextBlob))

	// Pagination of rotations.
	page1, err := e.c.ListKeyRotations(bg, &kms.ListKeyRotationsInput{KeyId: str(id), Limit: i32(1)})
	require.NoError(t, err)
	require.True(t, page1.Truncated)
	page2, err := e.c.ListKeyRotations(bg, &kms.ListKeyRotationsInput{KeyId: str(id), Limit: i32(1), Marker: page1.NextMarker})
	require.NoError(t, err)
	require.False(t, page2.Truncated)
	require.Equal(t, types.RotationTypeAutomatic, page2.Rotations[0].RotationType)
}

func TestOnDemandRotationLimit(t *testing.T) {
	e := newEnv(t)
	e.cfg.MaxOnDemandRotations = 2
	e.c = e.open()
	id := e.createKey("", "")
	for range 2 {
		_, err := e.c.RotateKeyOnDemand(bg, &kms.RotateKeyOnDemandInput{KeyId: str(id)})
		require.NoError(t, err)
	}
	_, err := e.c.RotateKeyOnDemand(bg, &kms.RotateKeyOnDemandInput{KeyId: str(id)})
	require.Equal(t, "LimitExceededException", code(err))
}

func TestKeyLimit(t *testing.T) {
	e := newEnv(t)
	e.cfg.MaxKeys = 2
	e.c = e.open()
	e.createKey("", "")
	e.createKey("", "")
	_, err := e.c.CreateKey(bg, &kms.CreateKeyInput{})
	require.Equal(t, "LimitExceededException", code(err))
}

// TestDeletionWindow schedules a deletion and lets the clock run out: the
// key material is destroyed on the HSM, the aliases and the key are gone,
// tombstones remain.
func TestDeletionWindow(t *testing.T) {
	e := newEnv(t)
	id := e.createKey("", "")
	_, err := e.c.RotateKeyOnDemand(bg, &kms.RotateKeyOnDemandInput{KeyId: str(id)})
	require.NoError(t, err)
	_, err = e.c.CreateAlias(bg, &kms.CreateAliasInput{AliasName: str("alias/doomed"), TargetKeyId: str(id)})
	require.NoError(t, err)
	ct, err := e.c.Encrypt(bg, &kms.EncryptInput{KeyId: str("alias/doomed"), Plaintext: []byte("bye")})
	require.NoError(t, err)
	out, err := e.c.ScheduleKeyDeletion(bg, &kms.ScheduleKeyDeletionInput{KeyId: str(id), PendingWindowInDays: i32(7)})
	require.NoError(t, err)
	require.Equal(t, types.KeyStatePendingDeletion, out.KeyState)

	// Drive maintenance through RunMaintenance and a channel we control.
	tick := make(chan time.Time)
	done := make(chan struct{})
	ctx, cancel := contextWithCancel()
	go func() { e.c.RunMaintenance(ctx, tick); close(done) }()
	step := func() { tick <- time.Time{}; tick <- time.Time{} } // the second send waits for the first Tick to end

	e.clock.Advance(7*day - time.Second)
	step()
	_, err = e.c.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: str(id)})
	require.NoError(t, err, "still within the window")
	_, err = e.tok.Describe(bg, hsm.KeyID(id+"/v1"))
	require.NoError(t, err)

	e.clock.Advance(time.Second)
	step()
	cancel()
	<-done

	_, err = e.c.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: str(id)})
	require.Equal(t, "NotFoundException", code(err))
	for _, v := range []string{"/v1", "/v2"} {
		_, err = e.tok.Describe(bg, hsm.KeyID(id+v))
		require.ErrorIs(t, err, hsm.ErrKeyNotFound, "key material destroyed on the HSM")
		gone, err := e.c.Destroyed(bg, hsm.KeyID(id+v))
		require.NoError(t, err)
		require.True(t, gone, "tombstone kept")
	}
	_, err = e.c.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: str("alias/doomed")})
	require.Equal(t, "NotFoundException", code(err))
	_, err = e.c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: ct.CiphertextBlob})
	require.Equal(t, "InvalidCiphertextException", code(err))
	keys, err := e.c.ListKeys(bg, &kms.ListKeysInput{})
	require.NoError(t, err)
	require.Empty(t, keys.Keys)
}

func TestListKeysPagination(t *testing.T) {
	e := newEnv(t)
	want := map[string]bool{}
	for range 5 {
		want[e.createKey("", "")] = true
	}
	got := map[string]bool{}
	var marker *string
	pages := 0
	for {
		out, err := e.c.ListKeys(bg, &kms.ListKeysInput{Limit: i32(2), Marker: marker})
		require.NoError(t, err)
		pages++
		for _, k := range out.Keys {
			require.False(t, got[*k.KeyId], "listed twice")
			got[*k.KeyId] = true
			require.Equal(t, keyARN(*k.KeyId), *k.KeyArn)
		}
		if !out.Truncated {
			break
		}
		marker = out.NextMarker
	}
	require.Equal(t, want, got)
	require.Equal(t, 3, pages)
}

// TestCreateKeyCrashSafety stops CreateKey after each step, as a crash
// would, and restarts: there is either no key or a complete one.
func TestCreateKeyCrashSafety(t *testing.T) {
	e := newEnv(t)
	crash := errors.New("crash")
	hsmKeys := func() map[hsm.KeyID]bool {
		infos, err := e.tok.ListKeys(bg)
		require.NoError(t, err)
		m := map[hsm.KeyID]bool{}
		for _, i := range infos {
			m[i.ID] = true
		}
		return m
	}
	before := hsmKeys()

	for _, step := range []string{"created-record", "generated"} {
		t.Run(step, func(t *testing.T) {
			e.c.SetTestHook(func(s string) error {
				if s == step {
					return crash
				}
				return nil
			})
			_, err := e.c.CreateKey(bg, &kms.CreateKeyInput{})
			require.Error(t, err)
			e.c.SetTestHook(nil)
			if step == "generated" {
				require.Len(t, hsmKeys(), len(before)+1, "the HSM key was made before the crash")
			}
			// Restart at once: the creation may still be running elsewhere, so
			// it is left alone, and it is invisible.
			e.c = e.open()
			keys, err := e.c.ListKeys(bg, &kms.ListKeysInput{})
			require.NoError(t, err)
			require.Empty(t, keys.Keys)
			// Restart after CreateTimeout: rolled back.
			e.clock.Advance(e.cfg.CreateTimeout)
			e.c = e.open()
			require.Equal(t, before, hsmKeys(), "no HSM key left behind")
			keys, err = e.c.ListKeys(bg, &kms.ListKeysInput{})
			require.NoError(t, err)
			require.Empty(t, keys.Keys)
		})
	}
	// A CreateKey that completed survives a restart.
	id := e.createKey("", "")
	e.clock.Advance(e.cfg.CreateTimeout)
	e.c = e.open()
	_, err := e.c.Encrypt(bg, &kms.EncryptInput{KeyId: str(id), Plaintext: []byte("x")})
	require.NoError(t, err)
}

// TestBoltStore keeps metadata in a bbolt file across restarts, and
// detects tampering with the file.
func TestBoltStore(t *testing.T) {
	tok := openToken(t)
	path := t.TempDir() + "/kms.db"
	cfg := kmsadapter.DefaultConfig()
	cfg.StorePath = path
	c, err := kmsadapter.New(tok, nil, cfg)
	require.NoError(t, err)
	a := createKey(t, c)
	b := createKey(t, c)
	_, err = c.CreateAlias(bg, &kms.CreateAliasInput{AliasName: str("alias/a"), TargetKeyId: str(a)})
	require.NoError(t, err)
	ct, err := c.Encrypt(bg, &kms.EncryptInput{KeyId: str("alias/a"), Plaintext: []byte("persist")})
	require.NoError(t, err)
	require.NoError(t, c.Close())

	c, err = kmsadapter.New(tok, nil, cfg)
	require.NoError(t, err)
	dec, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: ct.CiphertextBlob, KeyId: str("alias/a")})
	require.NoError(t, err)
	require.Equal(t, "persist", string(dec.Plaintext))
	require.NoError(t, c.Close())

	// Edit a record: still valid JSON, state changed.
	editBolt(t, path, "keys", a, func(v []byte) []byte {
		return bytesReplace(v, `"state":"Enabled"`, `"state":"Disabled"`)
	})
	_, err = kmsadapter.New(tok, nil, cfg)
	require.ErrorIs(t, err, kmsadapter.ErrTampered)
	var ie *kmsadapter.IntegrityError
	require.ErrorAs(t, err, &ie)
	require.Equal(t, "keys", ie.Bucket)
	require.Equal(t, a, ie.Key)
	require.Contains(t, err.Error(), a)
	editBolt(t, path, "keys", a, func(v []byte) []byte {
		return bytesReplace(v, `"state":"Disabled"`, `"state":"Enabled"`)
	})
	c, err = kmsadapter.New(tok, nil, cfg)
	require.NoError(t, err, "the original record verifies again")
	require.NoError(t, c.Close())

	// Move a record: b's sealed record stored under a's name.
	var bRec []byte
	editBolt(t, path, "keys", b, func(v []byte) []byte { bRec = append([]byte(nil), v...); return v })
	var aRec []byte
	editBolt(t, path, "keys", a, func(v []byte) []byte { aRec = append([]byte(nil), v...); return bRec })
	_, err = kmsadapter.New(tok, nil, cfg)
	require.ErrorAs(t, err, &ie)
	require.Equal(t, a, ie.Key)
	editBolt(t, path, "keys", a, func([]byte) []byte { return aRec })

	// Retarget an alias.
	editBolt(t, path, "aliases", "alias/a", func(v []byte) []byte { return bytesReplace(v, a, b) })
	_, err = kmsadapter.New(tok, nil, cfg)
	require.ErrorAs(t, err, &ie)
	require.Equal(t, "aliases", ie.Bucket)
}

// TestTamperWhileRunning changes a record under a running Client.
func TestTamperWhileRunning(t *testing.T) {
	e := newEnv(t)
	e.cfg.MetadataCacheTTL = 0 // read the store on every call
	e.c = e.open()
	id := e.createKey("", "")
	_, err := e.c.Encrypt(bg, &kms.EncryptInput{KeyId: str(id), Plaintext: []byte("x")})
	require.NoError(t, err)
	require.NoError(t, e.store.Update(bg, func(tx kmsadapter.Tx) error {
		v, err := tx.Get("keys", id)
		if err != nil {
			return err
		}
		return tx.Put("keys", id, bytesReplace(v, `"state":"Enabled"`, `"state":"Disabled"`))
	}))
	_, err = e.c.Encrypt(bg, &kms.EncryptInput{KeyId: str(id), Plaintext: []byte("x")})
	require.Equal(t, "KMSInternalException", code(err))
	require.EqualValues(t, 1, e.c.TamperedRecords())
	require.ErrorIs(t, e.c.VerifyStore(bg), kmsadapter.ErrTampered)
}

// TestIntegrityKeyMissing opens a non-empty store on HSMs that lack its
// integrity key.
func TestIntegrityKeyMissing(t *testing.T) {
	e := newEnv(t)
	e.createKey("", "")
	_, err := kmsadapter.New(openToken(t), e.store, e.cfg)
	require.ErrorIs(t, err, kmsadapter.ErrTampered)
	require.Contains(t, err.Error(), "integrity key")
}

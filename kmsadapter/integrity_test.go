package kmsadapter_test

import (
	"context"
	"crypto"
	"errors"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/stretchr/testify/require"

	"github.com/hsmkms/hsmkms/cluster"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/kmsadapter"
)

// dyingCreation is a cluster whose GenerateKey makes the key's copies on
// some members and then fails, as a process does that dies before the
// catalog records the key: the copies stay, and no catalog lists them.
type dyingCreation struct {
	*cluster.Cluster
	e       *clusterEnv
	members []int
}

func (d dyingCreation) GenerateKey(ctx context.Context, id hsm.KeyID, spec hsm.KeySpec, opts hsm.KeyOptions) (hsm.KeyInfo, error) {
	for _, i := range d.members {
		tok, err := hsm.Open(ctx, d.e.sh.Members[i].Config(), hsm.WithInterceptor(d.e.sh.Members[i].Faults))
		if err != nil {
			return hsm.KeyInfo{}, err
		}
		_, err = tok.GenerateKey(ctx, id, spec, opts)
		tok.Close()
		if err != nil {
			return hsm.KeyInfo{}, err
		}
	}
	return hsm.KeyInfo{}, errors.New("the process died")
}

// TestIntegrityKeyLeftover: the first New on a cluster dies after two
// members made their copies of the integrity key and before the catalog
// recorded it. The next New fails with ErrKeyExists, says what the
// objects are and how they go, and destroys nothing; once
// DestroyLeftover has removed them, New makes the key on every member
// and the store works.
func TestIntegrityKeyLeftover(t *testing.T) {
	e := newBareClusterEnv(t, 3)
	cfg := clusterConfig()
	id := cfg.IntegrityKeyID

	_, err := kmsadapter.New(dyingCreation{e.cl, e, []int{0, 1}}, e.store, cfg, kmsadapter.WithClock(e.clock))
	require.ErrorContains(t, err, "the process died")

	_, err = kmsadapter.New(e.cl, e.store, cfg, kmsadapter.WithClock(e.clock))
	require.ErrorIs(t, err, hsm.ErrKeyExists)
	require.ErrorContains(t, err, "DestroyLeftover")
	for _, i := range []int{0, 1} {
		_, err := e.sh.Members[i].Open(t).Describe(bg, id)
		require.NoError(t, err, "m%d's object was destroyed by a failed New", i)
	}

	require.NoError(t, e.cl.DestroyLeftover(bg, id))
	c, err := kmsadapter.New(e.cl, e.store, cfg, kmsadapter.WithClock(e.clock))
	require.NoError(t, err)
	key := createKey(t, c)
	enc, err := c.Encrypt(bg, &kms.EncryptInput{KeyId: &key, Plaintext: []byte("sealed")})
	require.NoError(t, err)
	_, err = e.cl.AntiEntropy(bg) // for a member still syncing when the key was made
	require.NoError(t, err)
	mac, err := e.cl.MAC(bg, id, crypto.SHA256, []byte("m"))
	require.NoError(t, err)
	for i, m := range e.sh.Members {
		err := m.Open(t).VerifyMAC(bg, id, crypto.SHA256, []byte("m"), mac)
		require.NoError(t, err, "m%d holds other material under %s", i, id)
	}

	// A later start verifies the store with that key.
	c2, err := kmsadapter.New(e.cl, e.store, cfg, kmsadapter.WithClock(e.clock))
	require.NoError(t, err)
	dec, err := c2.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	require.NoError(t, err)
	require.Equal(t, "sealed", string(dec.Plaintext))
}

package kmsadapter_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/stretchr/testify/require"

	"github.com/hsmkms/hsmkms/cluster"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/kmsadapter"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
)

type clusterEnv struct {
	sh    *softhsmtest.Cluster
	cl    *cluster.Cluster
	store kmsadapter.Store
	cat   *kmsadapter.Catalog
	c     *kmsadapter.Client
	clock *fakeClock
}

// newClusterEnv builds a bootstrapped cluster of n real SoftHSM2 members
// whose catalog lives in the adapter's store, and a Client over it.
func newClusterEnv(t testing.TB, n int) *clusterEnv {
	t.Helper()
	e := newBareClusterEnv(t, n)
	var err error
	e.c, err = kmsadapter.New(e.cl, e.store, clusterConfig(), kmsadapter.WithClock(e.clock))
	require.NoError(t, err)
	return e
}

// clusterConfig is the adapter's Config for a cluster of SoftHSM2 members.
func clusterConfig() kmsadapter.Config {
	kcfg := kmsadapter.DefaultConfig()
	kcfg.OAEPHashes = []crypto.Hash{crypto.SHA1} // SoftHSM 2.6; the cluster cannot tell
	return kcfg
}

// newBareClusterEnv is newClusterEnv without the Client.
func newBareClusterEnv(t testing.TB, n int) *clusterEnv {
	t.Helper()
	ctx := context.Background()
	e := &clusterEnv{sh: softhsmtest.New(t, n), store: kmsadapter.NewMemoryStore(), clock: newFakeClock()}
	e.cat = kmsadapter.NewCatalog(e.store)
	cfg := cluster.DefaultConfig()
	var opts []cluster.Option
	for i, m := range e.sh.Members {
		tc := m.Config()
		tc.CallTimeout = 30 * time.Second
		name := fmt.Sprintf("m%d", i)
		cfg.Members = append(cfg.Members, cluster.MemberConfig{Name: name, Token: tc, SOPIN: m.SOPIN()})
		opts = append(opts, cluster.WithTokenOptions(name, hsm.WithInterceptor(m.Faults)))
	}
	cl, err := cluster.New(ctx, cfg, append(opts, cluster.WithCatalog(e.cat))...)
	require.NoError(t, err)
	require.NoError(t, cl.Bootstrap(ctx))
	e.cl = cl
	t.Cleanup(func() {
		for _, m := range e.sh.Members {
			m.Faults.Release()
		}
		require.NoError(t, cl.Close())
	})
	return e
}

// newEnvOnCluster is newEnv on a cluster of three SoftHSM2 members.
func newEnvOnCluster(t testing.TB) *env {
	ce := newClusterEnv(t, 3)
	return &env{t: t, backend: ce.cl, store: ce.store, clock: ce.clock, c: ce.c, cfg: kmsadapter.DefaultConfig()}
}

// TestOnCluster runs the adapter on a cluster of three SoftHSM2 members:
// keys reach every member, the catalog in the adapter's store knows them,
// a member crash during a stream of calls loses no call, and a deletion
// window's end destroys the material on every member.
func TestOnCluster(t *testing.T) {
	e := newClusterEnv(t, 3)
	sym := createKey(t, e.c)
	out, err := e.c.CreateKey(bg, &kms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify})
	require.NoError(t, err)
	ec := *out.KeyMetadata.KeyId

	rec, err := e.cat.Get(bg, hsm.KeyID(sym+"/v1"))
	require.NoError(t, err, "the cluster recorded the key in the adapter's store")
	require.False(t, rec.Destroyed)

	// A stream of calls from 4 goroutines; member 0 crashes in the middle
	// and comes back.
	var calls, failures atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	progress := make(chan struct{}, 1)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var err error
				switch (g + i) % 3 {
				case 0:
					var ct *kms.EncryptOutput
					if ct, err = e.c.Encrypt(bg, &kms.EncryptInput{KeyId: str(sym), Plaintext: []byte("stream")}); err == nil {
						_, err = e.c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: ct.CiphertextBlob})
					}
				case 1:
					_, err = e.c.Sign(bg, &kms.SignInput{KeyId: str(ec), Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
				case 2:
					_, err = e.c.GenerateDataKey(bg, &kms.GenerateDataKeyInput{KeyId: str(sym), KeySpec: types.DataKeySpecAes256})
				}
				calls.Add(1)
				select {
				case progress <- struct{}{}:
				default:
				}
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	waitCalls := func(n int) {
		for range n {
			<-progress
		}
	}
	waitCalls(200)
	require.NoError(t, e.sh.Members[0].Crash())
	waitCalls(400)
	require.NotEqual(t, cluster.Healthy, e.cl.Members()[0].State, "the crash was noticed during the stream")
	require.NoError(t, e.sh.Members[0].Restart())
	waitCalls(200)
	require.NoError(t, e.cl.CheckHealth(bg)) // probe now: the restarted member is re-synced and rejoins
	require.Equal(t, cluster.Healthy, e.cl.Members()[0].State, "%+v", e.cl.Members()[0])
	close(stop)
	wg.Wait()
	require.Zero(t, failures.Load(), "of %d calls; first error: %v", calls.Load(), firstErr.Load())

	// Import: the wrapping key and the imported material live on the
	// cluster like any key.
	ext, err := e.c.CreateKey(bg, &kms.CreateKeyInput{Origin: types.OriginTypeExternal})
	require.NoError(t, err)
	extID := *ext.KeyMetadata.KeyId
	p := getParams(t, e.c, extID, types.AlgorithmSpecRsaAesKeyWrapSha1)
	material := make([]byte, 32)
	_, _ = rand.Read(material)
	_, err = e.c.ImportKeyMaterial(bg, &kms.ImportKeyMaterialInput{KeyId: str(extID), ImportToken: p.ImportToken, EncryptedKeyMaterial: awsWrap(t, types.AlgorithmSpecRsaAesKeyWrapSha1, p.PublicKey, material)})
	require.NoError(t, err)
	ct, err := e.c.Encrypt(bg, &kms.EncryptInput{KeyId: str(extID), Plaintext: []byte("byok on a cluster")})
	require.NoError(t, err)
	require.Equal(t, "byok on a cluster", string(localDecrypt(t, material, ct.CiphertextBlob, nil)))

	// Deletion destroys the material through the cluster and tombstones it.
	_, err = e.c.ScheduleKeyDeletion(bg, &kms.ScheduleKeyDeletionInput{KeyId: str(sym), PendingWindowInDays: i32(7)})
	require.NoError(t, err)
	e.clock.Advance(7 * day)
	require.NoError(t, e.c.Tick(bg))
	rec, err = e.cat.Get(bg, hsm.KeyID(sym+"/v1"))
	require.NoError(t, err)
	require.True(t, rec.Destroyed, "the catalog keeps a tombstone")
	_, err = e.cl.Describe(bg, hsm.KeyID(sym+"/v1"))
	require.Error(t, err)
	// Read each member's token directly: the material is gone everywhere,
	// the imported key is everywhere.
	for _, m := range e.sh.Members {
		infos, err := m.Open(t).ListKeys(bg)
		require.NoError(t, err)
		var symKeys, extKeys int
		for _, i := range infos {
			switch {
			case strings.HasPrefix(string(i.ID), sym+"/"):
				symKeys++
			case strings.HasPrefix(string(i.ID), extID+"/v1."):
				extKeys++
			}
		}
		require.Zero(t, symKeys, "member %d still holds the deleted key (%+v)", m.Index, e.cl.Members()[m.Index])
		require.Equal(t, 1, extKeys, "member %d holds the imported material", m.Index)
	}
}

package kmshttp_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/stretchr/testify/require"

	"github.com/hsmkms/hsmkms/cluster"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/kmsadapter"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
)

// newClusterEnv serves a kmsadapter over a 3-member cluster of real
// SoftHSM2 tokens.
func newClusterEnv(t *testing.T) (*env, *softhsmtest.Cluster, *cluster.Cluster) {
	sh := softhsmtest.New(t, 3)
	cfg := cluster.DefaultConfig()
	cfg.AntiEntropyInterval = 0
	var opts []cluster.Option
	for i, m := range sh.Members {
		tc := m.Config()
		tc.CallTimeout = 5 * time.Second
		name := fmt.Sprintf("m%d", i)
		cfg.Members = append(cfg.Members, cluster.MemberConfig{Name: name, Token: tc, SOPIN: m.SOPIN()})
		opts = append(opts, cluster.WithTokenOptions(name, hsm.WithInterceptor(m.Faults)))
	}
	c, err := cluster.New(bg, cfg, opts...)
	require.NoError(t, err)
	t.Cleanup(func() {
		for _, m := range sh.Members {
			m.Faults.Release()
		}
		require.NoError(t, c.Close())
	})
	require.NoError(t, c.Bootstrap(bg))
	a, err := kmsadapter.New(c, kmsadapter.NewMemoryStore(), kmsadapter.DefaultConfig())
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Close() })
	return newEnvOver(t, a, envOpt{}), sh, c
}

// A member crashes and comes back while SDK clients load the server:
// not one request fails.
func TestMemberCrashUnderLoad(t *testing.T) {
	e, sh, c := newClusterEnv(t)
	k := e.loopback(alice)
	var keys []string
	for range 3 {
		out, err := k.CreateKey(bg, &kms.CreateKeyInput{})
		require.NoError(t, err)
		keys = append(keys, *out.KeyMetadata.KeyId)
	}
	for _, s := range c.Members() {
		require.Equal(t, cluster.Healthy, s.State, s.Name)
	}

	var (
		done     atomic.Int64
		failures atomic.Int64
		firstErr atomic.Value
		stop     = make(chan struct{})
		wg       sync.WaitGroup
		mu       sync.Mutex
		waiters  []waiter
	)
	// reach returns a channel closed once n more requests have succeeded.
	reach := func(n int64) <-chan struct{} {
		ch := make(chan struct{})
		mu.Lock()
		waiters = append(waiters, waiter{at: done.Load() + n, ch: ch})
		mu.Unlock()
		return ch
	}
	tick := func() {
		d := done.Add(1)
		mu.Lock()
		kept := waiters[:0]
		for _, w := range waiters {
			if d >= w.at {
				close(w.ch)
			} else {
				kept = append(kept, w)
			}
		}
		waiters = kept
		mu.Unlock()
	}
	for g := range 8 {
		wg.Go(func() {
			ec := map[string]string{"worker": fmt.Sprint(g)}
			msg := bytes.Repeat([]byte{byte(g)}, 512)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := keys[i%len(keys)]
				enc, err := k.Encrypt(bg, &kms.EncryptInput{KeyId: aws.String(key), Plaintext: msg, EncryptionContext: ec})
				if err == nil {
					var dec *kms.DecryptOutput
					dec, err = k.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec})
					if err == nil && !bytes.Equal(dec.Plaintext, msg) {
						err = fmt.Errorf("decrypted %d bytes that differ", len(dec.Plaintext))
					}
				}
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				tick()
			}
		})
	}
	ctx, cancel := context.WithTimeout(bg, 2*time.Minute)
	defer cancel()
	await := func(ch <-chan struct{}, what string) {
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("load stalled %s: %d done, %d failed (%v)", what, done.Load(), failures.Load(), firstErr.Load())
		}
	}
	await(reach(100), "before the crash")
	victim := sh.Members[1]
	require.NoError(t, victim.Crash())
	await(reach(300), "while a member is down")
	require.NotEqual(t, cluster.Healthy, c.Members()[1].State, "the crashed member still looks healthy: the crash was not exercised")
	require.NoError(t, victim.Restart())
	require.NoError(t, c.CheckHealth(ctx)) // re-syncs the member and lets it take traffic
	require.Equal(t, cluster.Healthy, c.Members()[1].State, c.Members()[1].Reason)
	served := c.Members()[1].Served
	await(reach(300), "after the restart")
	close(stop)
	wg.Wait()
	require.Zero(t, failures.Load(), "first error: %v", firstErr.Load())
	require.Greater(t, c.Members()[1].Served, served, "the restarted member took no traffic")
	t.Logf("%d requests pairs, no failure, through a crash and a restart", done.Load())
}

type waiter struct {
	at int64
	ch chan struct{}
}

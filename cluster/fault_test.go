package cluster

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
)

// load runs mixed calls (encrypt, decrypt, sign, HMAC) from n goroutines
// until stop is closed, and counts calls and failures.
type load struct {
	calls, fails atomic.Int64
	mu           sync.Mutex
	errs         []error
	wg           sync.WaitGroup
	stop         chan struct{}
}

func startLoad(t *testing.T, c *Cluster, n int) *load {
	t.Helper()
	ctx := context.Background()
	for _, k := range []struct {
		id   hsm.KeyID
		spec hsm.KeySpec
	}{{"load-aes", hsm.AES256}, {"load-ec", hsm.ECP256}, {"load-hmac", hsm.HMAC256}} {
		if _, err := c.GenerateKey(ctx, k.id, k.spec, hsm.KeyOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	l := &load{stop: make(chan struct{})}
	for g := range n {
		l.wg.Go(func() {
			msg := []byte(fmt.Sprintf("message from goroutine %d", g))
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				var err error
				switch (g + i) % 4 {
				case 0:
					_, _, err = c.EncryptGCM(ctx, "load-aes", nil, msg, nil)
				case 1:
					var ct, iv, pt []byte
					if ct, iv, err = c.EncryptGCM(ctx, "load-aes", nil, msg, nil); err == nil {
						l.calls.Add(1)
						pt, err = c.DecryptGCM(ctx, "load-aes", iv, ct, nil)
						if err == nil && !bytes.Equal(pt, msg) {
							err = errors.New("decrypted text differs")
						}
					}
				case 2:
					_, err = c.Sign(ctx, "load-ec", hsm.ECDSA, crypto.SHA256, digest(string(msg)))
				case 3:
					_, err = c.MAC(ctx, "load-hmac", crypto.SHA256, msg)
				}
				l.calls.Add(1)
				if err != nil {
					l.fails.Add(1)
					l.mu.Lock()
					if len(l.errs) < 5 {
						l.errs = append(l.errs, err)
					}
					l.mu.Unlock()
				}
			}
		})
	}
	return l
}

// waitCalls blocks until the load has made n more calls.
func (l *load) waitCalls(n int64) {
	target := l.calls.Load() + n
	for l.calls.Load() < target {
		runtimeGosched()
	}
}

func (l *load) finish(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	if f := l.fails.Load(); f != 0 {
		t.Fatalf("%d of %d calls failed, e.g. %v", f, l.calls.Load(), l.errs)
	}
	t.Logf("%d calls, none failed", l.calls.Load())
}

func TestCrashUnderLoadThenResync(t *testing.T) {
	e := newEnv(t, 3, nil)
	l := startLoad(t, e.c, 16)
	l.waitCalls(2000)
	if err := e.sh.Members[1].Crash(); err != nil {
		t.Fatal(err)
	}
	l.waitCalls(3000)
	// The failed calls took it out of rotation at once: degraded after
	// one, down after two in a row, whichever the load's timing gave
	// before routing moved away from it. The next probe (here run now
	// rather than on the injected clock) takes it down either way.
	if st := e.c.Members()[1]; st.State != Degraded && st.State != Down {
		t.Fatalf("crashed member is %v, want degraded or down", st.State)
	}
	e.check()
	if st := e.c.Members()[1]; st.State != Down {
		t.Fatalf("crashed member is %v after a probe, want down", st.State)
	}
	before := e.served()
	l.waitCalls(2000)
	after := e.served()
	if after[1] != before[1] {
		t.Fatalf("crashed member served %d calls while down", after[1]-before[1])
	}
	if err := e.sh.Members[1].Restart(); err != nil {
		t.Fatal(err)
	}
	e.check() // the probe finds it back, re-syncs it, and it serves again
	e.requireStates(Healthy, Healthy, Healthy)
	before = e.served()
	l.waitCalls(3000)
	after = e.served()
	l.finish(t)
	if after[1]-before[1] < 300 {
		t.Fatalf("restarted member served %d of 3000 calls, want a fair share", after[1]-before[1])
	}
}

func TestHungMemberCallsSucceedElsewhere(t *testing.T) {
	const callTimeout = 300 * time.Millisecond
	e := newEnv(t, 3, func(c *Config) {
		for i := range c.Members {
			c.Members[i].Token.CallTimeout = callTimeout
		}
	})
	ctx := context.Background()
	// VerifyMAC, not EncryptGCM: an abandoned hsm call that returns a
	// value races with its caller (reported to the hsm package); one that
	// returns only an error does not.
	if _, err := e.c.GenerateKey(ctx, "h", hsm.HMAC256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	mac, err := e.c.MAC(ctx, "h", crypto.SHA256, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	hung := e.sh.Members[2].Faults
	hung.Hang(softhsmtest.AnyOp)
	var wg sync.WaitGroup
	var slowest atomic.Int64
	var fails atomic.Int64
	for range 8 {
		wg.Go(func() {
			for range 30 {
				start := time.Now()
				err := e.c.VerifyMAC(ctx, "h", crypto.SHA256, []byte("x"), mac)
				d := time.Since(start)
				for {
					old := slowest.Load()
					if int64(d) <= old || slowest.CompareAndSwap(old, int64(d)) {
						break
					}
				}
				if err != nil {
					fails.Add(1)
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if fails.Load() != 0 {
		t.Fatalf("%d calls failed", fails.Load())
	}
	if hung.Calls(hsm.OpVerifyMAC) == 0 {
		t.Fatal("no call reached the hung member; the test proves nothing")
	}
	// Calls that reached the hung member came back at its deadline and
	// were retried: none took much more than one call timeout.
	if d := time.Duration(slowest.Load()); d > callTimeout+time.Second {
		t.Fatalf("slowest call took %v, want about %v", d, callTimeout)
	}
	if st := e.c.Members()[2]; st.State != Down {
		t.Fatalf("hung member is %v, want down", st.State)
	}
	// The down event was published.
	var sawDown bool
	e.c.flushEvents()
	for len(e.events) > 0 {
		ev := <-e.events
		if ev.Member == "m2" && ev.To == Down {
			sawDown = true
			if !errors.Is(ev.Err, hsm.ErrTimeout) {
				t.Errorf("down event error %v, want a timeout", ev.Err)
			}
		}
	}
	if !sawDown {
		t.Fatal("no event said m2 went down")
	}
	hung.Release()
}

// TestAppendEncryptAbandonedAttempt: an encryption abandoned on a hung
// member and retried elsewhere goes on writing into the buffer it was
// given once the member answers; the caller's result must not be that
// buffer, so it stays intact.
func TestAppendEncryptAbandonedAttempt(t *testing.T) {
	const callTimeout = 300 * time.Millisecond
	e := newEnv(t, 3, func(c *Config) {
		for i := range c.Members {
			c.Members[i].Token.CallTimeout = callTimeout
		}
	})
	ctx := context.Background()
	if _, err := e.c.GenerateKey(ctx, "app", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte{'m'}, 4096)
	// Hang the member that served a call just now: routing prefers it, so
	// the next calls reach it soon. (A fixed member may be the one routing
	// avoids: it never got a call in 30 tries in about one run in ten.)
	served := func() []int64 {
		var n []int64
		for _, st := range e.c.Members() {
			n = append(n, st.Served)
		}
		return n
	}
	before := served()
	if _, _, err := e.c.EncryptGCM(ctx, "app", nil, msg, nil); err != nil {
		t.Fatal(err)
	}
	after := served()
	var hung *softhsmtest.Faults
	for i, st := range e.c.Members() {
		if st.Name != fmt.Sprintf("m%d", i) {
			t.Fatalf("member %d is %s", i, st.Name)
		}
		if after[i] > before[i] {
			hung = e.sh.Members[i].Faults
		}
	}
	if hung == nil {
		t.Fatal("no member counted the call")
	}
	hung.Hang(hsm.OpEncrypt)
	calls := hung.Calls(hsm.OpEncrypt)
	type result struct{ dst, out, iv, want []byte }
	var results []result
	for i := 0; i < 1000 && hung.Calls(hsm.OpEncrypt) == calls; i++ {
		dst := append(make([]byte, 0, 6+len(msg)+hsm.GCMTagSize), "header"...)
		out, iv, err := e.c.AppendEncryptGCM(ctx, dst, "app", nil, msg, nil)
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, result{dst, out, iv, bytes.Clone(out)})
	}
	if hung.Calls(hsm.OpEncrypt) == calls {
		t.Fatal("no call reached the hung member; the test proves nothing")
	}
	hung.Release()
	// The abandoned call now runs and writes into the first buffer.
	idle, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := hung.AwaitIdle(idle); err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if !bytes.Equal(r.out, r.want) {
			t.Fatal("a returned ciphertext changed after its call returned")
		}
		pt, err := e.c.DecryptGCM(ctx, "app", r.iv, r.out[6:], nil)
		if err != nil || !bytes.Equal(pt, msg) || string(r.out[:6]) != "header" {
			t.Fatalf("round trip: %v", err)
		}
	}
	last := results[len(results)-1]
	if &last.out[0] == &last.dst[:1][0] {
		t.Fatal("the retried call returned the buffer its abandoned attempt was given")
	}
}

func TestKeysCreatedWhileDownAreCopiedBeforeServing(t *testing.T) {
	// One member fault opens a member's breaker, so that m2's breaker is
	// still open when it returns: its re-sync must copy all the same.
	e := newEnv(t, 3, func(c *Config) { c.BreakerFailures = 1 })
	ctx := context.Background()
	if _, err := e.c.GenerateKey(ctx, "warm", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.sh.Members[2].Crash(); err != nil {
		t.Fatal(err)
	}
	// Calls until one reaches m2 and fails there (and is retried elsewhere).
	for calls := e.sh.Members[2].Faults.Calls(hsm.OpEncrypt); e.sh.Members[2].Faults.Calls(hsm.OpEncrypt) == calls; {
		if _, _, err := e.c.EncryptGCM(ctx, "warm", nil, []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	e.check()
	e.requireStates(Healthy, Healthy, Down)
	var ids []string
	for i := range 4 {
		id := fmt.Sprintf("while-down-%d", i)
		if _, err := e.c.GenerateKey(ctx, hsm.KeyID(id), hsm.AES256, hsm.KeyOptions{}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	cv, err := e.c.Coverage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(cv.UnderReplicated()) != 4 || !slices.Equal(cv.UnderReplicated()[0].Missing, []string{"m2"}) {
		t.Fatalf("coverage %+v, want 4 keys missing on m2", cv.UnderReplicated())
	}
	// Load on the new keys runs while m2 returns: m2 must never answer
	// "key not found", i.e. it never serves a key before it holds it.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var fails atomic.Int64
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, _, err := e.c.EncryptGCM(ctx, hsm.KeyID(ids[(g+i)%len(ids)]), nil, []byte("x"), nil); err != nil {
					fails.Add(1)
				}
			}
		})
	}
	if err := e.sh.Members[2].Restart(); err != nil {
		t.Fatal(err)
	}
	e.check()
	before := e.served()[2]
	for deadline := time.Now().Add(time.Minute); e.served()[2]-before < 200; {
		if time.Now().After(deadline) {
			close(stop)
			wg.Wait()
			t.Fatalf("m2 served %d calls in a minute after its return", e.served()[2]-before)
		}
		runtimeGosched()
	}
	close(stop)
	wg.Wait()
	if fails.Load() != 0 {
		t.Fatalf("%d calls failed", fails.Load())
	}
	if got, want := e.tokenKeys(2), append([]string{"warm"}, ids...); !slices.Equal(got, want) {
		t.Fatalf("m2 holds %v, want %v", got, want)
	}
	if n := callerErrors(e.c, "m2"); n != 0 {
		t.Fatalf("m2 answered %v calls with the caller's fault (key not found): it served before it held the keys", n)
	}
	cv, _ = e.c.Coverage(ctx)
	if len(cv.UnderReplicated()) != 0 {
		t.Fatalf("still under-replicated: %+v", cv.UnderReplicated())
	}
}

func TestKeysDestroyedWhileDownAreDestroyedOnReturn(t *testing.T) {
	e := newEnv(t, 3, nil)
	ctx := context.Background()
	for _, id := range []hsm.KeyID{"keep", "gone-1", "gone-2"} {
		if _, err := e.c.GenerateKey(ctx, id, hsm.AES256, hsm.KeyOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.sh.Members[0].Crash(); err != nil {
		t.Fatal(err)
	}
	e.check()
	for _, id := range []hsm.KeyID{"gone-1", "gone-2"} {
		if err := e.c.DestroyKey(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.sh.Members[0].Restart(); err != nil {
		t.Fatal(err)
	}
	e.check()
	e.requireStates(Healthy, Healthy, Healthy)
	if got := e.tokenKeys(0); !slices.Equal(got, []string{"keep"}) {
		t.Fatalf("m0 holds %v after re-sync, want only keep", got)
	}
	for range 30 {
		_, _, err := e.c.EncryptGCM(ctx, "gone-1", nil, []byte("x"), nil)
		if !errors.Is(err, hsm.ErrKeyNotFound) {
			t.Fatalf("encrypt under a destroyed key: %v, want ErrKeyNotFound", err)
		}
	}
	// A destroyed ID never comes back.
	if _, err := e.c.GenerateKey(ctx, "gone-1", hsm.AES256, hsm.KeyOptions{}); !errors.Is(err, hsm.ErrKeyExists) {
		t.Fatalf("re-creating a destroyed ID: %v, want ErrKeyExists", err)
	}
}

func TestWipedMemberJoinsAndResyncs(t *testing.T) {
	e := newEnv(t, 3, nil)
	ctx := context.Background()
	var ids []string
	for i, spec := range []hsm.KeySpec{hsm.AES256, hsm.ECP256, hsm.HMAC256} {
		id := fmt.Sprintf("w-%d", i)
		if _, err := e.c.GenerateKey(ctx, hsm.KeyID(id), spec, hsm.KeyOptions{}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	oldSerial := e.c.Members()[1].Serial
	if err := e.sh.Members[1].Wipe(); err != nil {
		t.Fatal(err)
	}
	e.check()
	st := e.c.Members()[1]
	if st.State != Down {
		t.Fatalf("wiped member is %v, want down until it joins", st.State)
	}
	if err := e.c.Join(ctx, "m1"); err != nil {
		t.Fatal(err)
	}
	e.requireStates(Healthy, Healthy, Healthy)
	if st := e.c.Members()[1]; st.Serial == oldSerial {
		t.Fatalf("serial unchanged after wipe: %s", st.Serial)
	}
	if got := e.tokenKeys(1); !slices.Equal(got, ids) {
		t.Fatalf("m1 holds %v after join, want %v", got, ids)
	}
	// The new member is a full member: a key created on it reaches the others.
	e.sh.Members[0].Faults.SetDown(true)
	e.sh.Members[2].Faults.SetDown(true)
	_, err := e.c.GenerateKey(ctx, "after-join", hsm.AES256, hsm.KeyOptions{})
	if !errors.Is(err, ErrQuorum) {
		t.Fatalf("create with two members unreachable: %v, want ErrQuorum", err)
	}
	e.sh.Members[0].Faults.SetDown(false)
	e.sh.Members[2].Faults.SetDown(false)
	e.check()
	e.requireStates(Healthy, Healthy, Healthy)
	origin := e.c.members[1]
	for _, m := range e.c.members {
		if m != origin {
			m.weight = 1e-9 // make m1 the origin
		}
	}
	if _, err := e.c.GenerateKey(ctx, "after-join", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if !slices.Contains(e.tokenKeys(i), "after-join") {
			t.Fatalf("member %d lacks the key created after the join", i)
		}
	}
	// Every key is sensitive: the cluster API has no way to read key
	// material, and the KEKs and keys only ever left wrapped.
	for i := range 3 {
		for _, k := range e.allTokenKeys(i) {
			if len(k.ID) > len(transportPrefix) && string(k.ID[:len(transportPrefix)]) == transportPrefix {
				t.Fatalf("transport key %s left on member %d", k.ID, i)
			}
		}
	}
}

// TestJoinUnderLoad replaces a member (wipe, then the join ceremony) while
// 8 goroutines keep calling: no call fails, and the new member serves
// once re-synced.
func TestJoinUnderLoad(t *testing.T) {
	e := newEnv(t, 3, nil)
	ctx := context.Background()
	l := startLoad(t, e.c, 8)
	l.waitCalls(1000)
	if err := e.sh.Members[1].Wipe(); err != nil {
		t.Fatal(err)
	}
	e.check()
	if st := e.c.Members()[1]; st.State != Down {
		t.Fatalf("wiped member is %v, want down until it joins", st.State)
	}
	l.waitCalls(1000)
	if err := e.c.Join(ctx, "m1"); err != nil {
		t.Fatal(err)
	}
	e.requireStates(Healthy, Healthy, Healthy)
	for _, id := range []string{"load-aes", "load-ec", "load-hmac"} {
		if !slices.Contains(e.tokenKeys(1), id) {
			t.Fatalf("joined member lacks %s", id)
		}
	}
	before := e.served()
	l.waitCalls(3000)
	after := e.served()
	l.finish(t)
	if after[1]-before[1] < 300 {
		t.Fatalf("joined member served %d of 3000 calls, want a fair share", after[1]-before[1])
	}
}

func TestQuorumImpossibleLeavesNoCopy(t *testing.T) {
	e := newEnv(t, 3, func(c *Config) { c.WriteQuorum = 2 })
	ctx := context.Background()
	for _, i := range []int{0, 1} {
		if err := e.sh.Members[i].Crash(); err != nil {
			t.Fatal(err)
		}
	}
	e.check()
	e.requireStates(Down, Down, Healthy)
	_, err := e.c.GenerateKey(ctx, "no-quorum", hsm.AES256, hsm.KeyOptions{})
	if !errors.Is(err, ErrQuorum) {
		t.Fatalf("got %v, want ErrQuorum", err)
	}
	var ce *Error
	if !errors.As(err, &ce) || len(ce.Attempts) != 2 {
		t.Fatalf("error %v does not name the two down members", err)
	}
	if got := e.tokenKeys(2); len(got) != 0 {
		t.Fatalf("surviving member holds %v", got)
	}
	if _, err := e.c.catalog.Get(ctx, "no-quorum"); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Fatalf("catalog has the failed key: %v", err)
	}
}

func TestQuorumMissedMidwayRollsBack(t *testing.T) {
	e := newEnv(t, 3, nil) // default quorum: all 3 healthy members
	ctx := context.Background()
	for _, m := range e.sh.Members { // whichever two are not the origin fail
		m.Faults.FailNext(hsm.OpUnwrapKey, 1, 0x31) // CKR_DEVICE_MEMORY
	}
	_, err := e.c.GenerateKey(ctx, "rolled-back", hsm.ECP256, hsm.KeyOptions{})
	if !errors.Is(err, ErrQuorum) {
		t.Fatalf("got %v, want ErrQuorum", err)
	}
	var me *MemberError
	if !errors.As(err, &me) {
		t.Fatalf("no member error in %v", err)
	}
	for i := range 3 {
		if got := e.tokenKeys(i); len(got) != 0 {
			t.Fatalf("member %d keeps %v after the rollback", i, got)
		}
	}
	// The failed members come back; the ID is free again.
	for _, m := range e.sh.Members {
		m.Faults.FailNext(hsm.OpUnwrapKey, 0, 0)
	}
	e.check()
	if _, err := e.c.GenerateKey(ctx, "rolled-back", hsm.ECP256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestAllMembersDownThenOneReturns(t *testing.T) {
	e := newEnv(t, 3, nil)
	ctx := context.Background()
	if _, err := e.c.GenerateKey(ctx, "k", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, m := range e.sh.Members {
		if err := m.Crash(); err != nil {
			t.Fatal(err)
		}
	}
	e.check()
	_, _, err := e.c.EncryptGCM(ctx, "k", nil, []byte("x"), nil)
	if !errors.Is(err, ErrNoHealthyMember) {
		t.Fatalf("got %v, want ErrNoHealthyMember", err)
	}
	if _, err := e.c.Random(ctx, 8); !errors.Is(err, ErrNoHealthyMember) {
		t.Fatalf("random: %v, want ErrNoHealthyMember", err)
	}
	if err := e.sh.Members[1].Restart(); err != nil {
		t.Fatal(err)
	}
	e.check()
	e.requireStates(Down, Healthy, Down)
	if _, _, err := e.c.EncryptGCM(ctx, "k", nil, []byte("x"), nil); err != nil {
		t.Fatalf("after one member returned: %v", err)
	}
}

func TestRandomInterleavingConverges(t *testing.T) {
	e := newEnv(t, 3, nil)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(42, 7))
	var live []hsm.KeyID
	next := 0
	for step := range 60 {
		switch r := rng.IntN(10); {
		case r < 5:
			id := hsm.KeyID(fmt.Sprintf("r-%d", next))
			next++
			_, err := e.c.GenerateKey(ctx, id, hsm.AES128, hsm.KeyOptions{})
			switch {
			case err == nil:
				live = append(live, id)
			case errors.Is(err, ErrQuorum):
			default:
				t.Fatalf("step %d: create: %v", step, err)
			}
		case r < 7 && len(live) > 0:
			i := rng.IntN(len(live))
			if err := e.c.DestroyKey(ctx, live[i]); err != nil {
				t.Fatalf("step %d: destroy: %v", step, err)
			}
			live = slices.Delete(live, i, i+1)
		case r < 8:
			if err := e.sh.Members[rng.IntN(3)].Crash(); err != nil {
				t.Fatal(err)
			}
		case r < 9:
			if err := e.sh.Members[rng.IntN(3)].Restart(); err != nil {
				t.Fatal(err)
			}
		default:
			e.check()
		}
	}
	for _, m := range e.sh.Members {
		if err := m.Restart(); err != nil {
			t.Fatal(err)
		}
	}
	e.check()
	e.check()
	e.requireStates(Healthy, Healthy, Healthy)
	if _, err := e.c.AntiEntropy(ctx); err != nil {
		t.Fatal(err)
	}
	recs, err := e.c.catalog.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, r := range recs {
		if !r.Destroyed {
			want = append(want, string(r.ID))
		}
	}
	sort.Strings(want)
	got := make([]string, len(live))
	for i, id := range live {
		got[i] = string(id)
	}
	sort.Strings(got)
	if !slices.Equal(want, got) {
		t.Fatalf("catalog lists %v, the test created %v", want, got)
	}
	for i := range 3 {
		if keys := e.tokenKeys(i); !slices.Equal(keys, want) {
			t.Fatalf("member %d holds %v, catalog says %v", i, keys, want)
		}
	}
	t.Logf("%d keys live after 60 random steps", len(want))
}

func TestStandbyServesOnlyWhenActivesAreDown(t *testing.T) {
	e := newEnv(t, 3, func(c *Config) { c.Members[2].Role = Standby })
	ctx := context.Background()
	if _, err := e.c.GenerateKey(ctx, "s", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(e.tokenKeys(2), "s") {
		t.Fatal("standby did not receive the key")
	}
	before := e.served()
	for range 200 {
		if _, _, err := e.c.EncryptGCM(ctx, "s", nil, []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if after := e.served(); after[2] != before[2] {
		t.Fatalf("standby served %d calls while actives were healthy", after[2]-before[2])
	}
	for _, i := range []int{0, 1} {
		if err := e.sh.Members[i].Crash(); err != nil {
			t.Fatal(err)
		}
	}
	e.check()
	before = e.served()
	for range 50 {
		if _, _, err := e.c.EncryptGCM(ctx, "s", nil, []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if after := e.served(); after[2]-before[2] != 50 {
		t.Fatalf("standby served %d of 50 calls with the actives down", after[2]-before[2])
	}
}

func TestProbesOnTheClockDriveState(t *testing.T) {
	e := newEnv(t, 2, nil)
	e.c.flushEvents()
	for len(e.events) > 0 {
		<-e.events
	}
	if err := e.sh.Members[0].Crash(); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(e.cfg.ProbeInterval)
	ev := <-e.events // the probe loop runs on the fake clock
	if ev.Member != "m0" || ev.To != Down {
		t.Fatalf("event %+v, want m0 down", ev)
	}
	if err := e.sh.Members[0].Restart(); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(e.cfg.ProbeInterval)
	for _, want := range []State{Syncing, Healthy} {
		ev := <-e.events
		if ev.Member != "m0" || ev.To != want {
			t.Fatalf("event %+v, want m0 %v", ev, want)
		}
	}
}

func TestCallerFaultsDoNotCountAgainstMembers(t *testing.T) {
	e := newEnv(t, 3, func(c *Config) { c.BreakerFailures = 2; c.DownAfter = 1 })
	ctx := context.Background()
	if _, err := e.c.GenerateKey(ctx, "c", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	var calls int64
	for _, m := range e.sh.Members {
		calls += m.Faults.Calls(hsm.OpDecrypt)
	}
	for range 50 {
		_, err := e.c.DecryptGCM(ctx, "c", make([]byte, 12), make([]byte, 40), nil)
		if !errors.Is(err, hsm.ErrDecrypt) {
			t.Fatalf("got %v, want ErrDecrypt", err)
		}
	}
	var after int64
	for _, m := range e.sh.Members {
		after += m.Faults.Calls(hsm.OpDecrypt)
	}
	if after-calls != 50 {
		t.Fatalf("50 bad decryptions made %d member calls, want 50 (no retries)", after-calls)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	for range 20 {
		if _, _, err := e.c.EncryptGCM(cctx, "c", nil, []byte("x"), nil); !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	}
	e.requireStates(Healthy, Healthy, Healthy)
	if _, err := e.c.Describe(ctx, "nope"); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Fatalf("describe of an unknown key: %v", err)
	}
}

func TestHedgedCallWinsOnSecondMember(t *testing.T) {
	e := newEnv(t, 2, func(c *Config) {
		c.HedgeDelay = 20 * time.Millisecond
		c.Members[1].Role = Standby // m0 is always asked first
	})
	ctx := context.Background()
	if _, err := e.c.GenerateKey(ctx, "hedge", hsm.HMAC256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	mac, err := e.c.MAC(ctx, "hedge", crypto.SHA256, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	f := e.sh.Members[0].Faults
	f.Hang(hsm.OpVerifyMAC)
	before := e.served()[1]
	done := make(chan error, 1)
	go func() {
		done <- e.c.VerifyMAC(ctx, "hedge", crypto.SHA256, []byte("x"), mac)
	}()
	if err := f.AwaitHung(ctx, 1); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("returned before the hedge: %v", err)
	default:
	}
	e.clock.Advance(20 * time.Millisecond)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	f.Release()
	if n := e.served()[1] - before; n != 1 {
		t.Fatal("the standby did not answer the hedged call")
	}
}

func TestHungProbeTakesMemberDown(t *testing.T) {
	e := newEnv(t, 2, func(c *Config) { c.ProbeTimeout = 200 * time.Millisecond })
	f := e.sh.Members[0].Faults
	f.Hang(hsm.OpProbe)
	start := time.Now()
	e.check()
	if st := e.c.Members()[0]; st.State != Down || !strings.Contains(st.Reason, "timed out") {
		t.Fatalf("m0 is %v (%s), want down after a hung probe", st.State, st.Reason)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the probe round took %v", d)
	}
	f.Release()
}

func TestRetryAfterFailedRollback(t *testing.T) {
	e := newEnv(t, 2, nil)
	ctx := context.Background()
	// Every target unwraps the new key in parallel: member 1 fails, so the
	// quorum of 2 is missed; member 0 then fails the rollback, leaving a
	// copy.
	e.sh.Members[1].Faults.FailNext(hsm.OpUnwrapKey, 1, 0x31)
	e.sh.Members[0].Faults.FailNext(hsm.OpDestroyKey, 1, 0x31)
	if _, err := e.c.GenerateKey(ctx, "retry", hsm.AES256, hsm.KeyOptions{}); !errors.Is(err, ErrQuorum) {
		t.Fatalf("got %v, want ErrQuorum", err)
	}
	var left int
	for i := range 2 {
		left += len(e.tokenKeys(i))
	}
	if left != 1 {
		t.Fatalf("%d copies left, want the one whose destruction failed", left)
	}
	for _, m := range e.sh.Members {
		m.Faults.FailNext(hsm.OpUnwrapKey, 0, 0)
		m.Faults.FailNext(hsm.OpDestroyKey, 0, 0)
	}
	e.check()
	// The retry clears the leftover first, and succeeds.
	if _, err := e.c.GenerateKey(ctx, "retry", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if got := e.tokenKeys(i); !slices.Equal(got, []string{"retry"}) {
			t.Fatalf("member %d holds %v", i, got)
		}
	}
}

func TestCircuitBreakerOpensOnMemberFaults(t *testing.T) {
	// One member, so that every retry goes back to it.
	e := newEnv(t, 1, func(c *Config) { c.DownAfter = 100; c.BreakerFailures = 2 })
	ctx := context.Background()
	if _, err := e.c.GenerateKey(ctx, "cb", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	f := e.sh.Members[0].Faults
	f.FailNext(hsm.OpEncrypt, 1000, 0x31) // CKR_DEVICE_MEMORY: the member's fault, not session-fatal
	before := f.Calls(hsm.OpEncrypt)
	for range 20 {
		if _, _, err := e.c.EncryptGCM(ctx, "cb", nil, []byte("x"), nil); !errors.Is(err, ErrNoHealthyMember) {
			t.Fatalf("got %v, want ErrNoHealthyMember", err)
		}
	}
	if n := f.Calls(hsm.OpEncrypt) - before; n != 2 {
		t.Fatalf("the failing member got %d calls, want 2 before its breaker opened", n)
	}
	if st := e.c.Members()[0]; st.State != Down {
		t.Fatalf("m0 is %v with its breaker open, want down", st.State)
	}
	f.FailNext(hsm.OpEncrypt, 0, 0)
	e.check() // re-synced, breaker reset
	e.requireStates(Healthy)
	if _, _, err := e.c.EncryptGCM(ctx, "cb", nil, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
}

// TestAbandonedCreationIsCleared: the caller gives up while one member's
// unwrap runs; that call still makes the key there afterwards. The other
// copies are rolled back, and a retry with the same ID clears the late
// copy first and succeeds.
func TestAbandonedCreationIsCleared(t *testing.T) {
	e := newEnv(t, 3, nil)
	slow := e.sh.Members[1].Faults
	slow.Hang(hsm.OpUnwrapKey)
	before := map[int]int64{}
	for _, i := range []int{0, 2} {
		before[i] = e.sh.Members[i].Faults.Calls(hsm.OpUnwrapKey)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := e.c.GenerateKey(ctx, "abandoned", hsm.AES256, hsm.KeyOptions{})
		done <- err
	}()
	if err := slow.AwaitHung(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 2} { // their unwraps are done: they hold the key
		f := e.sh.Members[i].Faults
		waitFor(t, func() bool { return f.Calls(hsm.OpUnwrapKey) == before[i]+1 && f.InFlight() == 0 })
	}
	cancel()
	if err := <-done; err == nil {
		t.Fatal("creation succeeded without member 1")
	}
	slow.Release()
	waitFor(t, func() bool { return slices.Contains(e.tokenKeys(1), "abandoned") })
	for _, i := range []int{0, 2} {
		// Rolled back; or, when the cancellation overtook that member's
		// answer (its unwrap done, the reply not yet taken), marked
		// suspect so that the next creation destroys it first.
		m := e.c.members[i]
		m.mu.RLock()
		_, suspect := m.suspect["abandoned"]
		m.mu.RUnlock()
		if got := e.tokenKeys(i); len(got) != 0 && !suspect {
			t.Fatalf("member %d keeps %v after the rollback, unmarked", i, got)
		}
	}
	if _, err := e.c.GenerateKey(context.Background(), "abandoned", hsm.AES256, hsm.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if got := e.tokenKeys(i); !slices.Equal(got, []string{"abandoned"}) {
			t.Fatalf("member %d holds %v", i, got)
		}
	}
}

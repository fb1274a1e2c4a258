package softhsmtest

import (
	"context"
	"sync"
	"time"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/miekg/pkcs11"
)

// AnyOp, given to a method of Faults, stands for every operation.
const AnyOp hsm.Op = ""

// Faults is an hsm.Interceptor that injects faults: hangs, latency, error
// codes and a down mode in which every call fails with CKR_DEVICE_REMOVED.
// A fault set for one operation applies to it before a fault set for AnyOp.
// The zero value injects nothing and is ready to use. Faults is safe for
// concurrent use.
type Faults struct {
	mu       sync.Mutex
	changed  chan struct{} // closed and replaced whenever inFlight, hung or down change
	release  chan struct{} // closed by Release to free the calls hung on it
	down     bool
	hang     map[hsm.Op]bool
	latency  map[hsm.Op]time.Duration
	fail     map[hsm.Op]failure
	calls    map[hsm.Op]int64
	total    int64
	inFlight int // calls admitted and not yet returned, hung ones included
	hung     int // calls blocked in a hang
}

type failure struct {
	n    int
	code uint
}

var _ hsm.Interceptor = (*Faults)(nil)

// init makes the zero value usable. f.mu must be held.
func (f *Faults) init() {
	if f.changed == nil {
		f.changed = make(chan struct{})
		f.release = make(chan struct{})
		f.hang = map[hsm.Op]bool{}
		f.latency = map[hsm.Op]time.Duration{}
		f.fail = map[hsm.Op]failure{}
		f.calls = map[hsm.Op]int64{}
	}
}

// notify wakes every waitUntil. f.mu must be held.
func (f *Faults) notify() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// Intercept counts the call, then, in this order: fails it with
// CKR_DEVICE_REMOVED when down; fails it with the code of a pending
// FailNext; blocks while its operation hangs; waits out its latency; and
// finally runs it. Hangs and latency ignore ctx, as a stalled HSM would.
// A call is in flight from the moment it is admitted (past the first two
// steps) until it returns.
func (f *Faults) Intercept(ctx context.Context, op hsm.Op, call func() error) error {
	f.mu.Lock()
	f.init()
	f.calls[op]++
	f.total++
	if f.down {
		f.mu.Unlock()
		return hsm.CKR(pkcs11.CKR_DEVICE_REMOVED)
	}
	for _, o := range []hsm.Op{op, AnyOp} {
		if fl, ok := f.fail[o]; ok {
			if fl.n--; fl.n > 0 {
				f.fail[o] = fl
			} else {
				delete(f.fail, o)
			}
			f.mu.Unlock()
			return hsm.CKR(fl.code)
		}
	}
	var hang chan struct{}
	if f.hang[op] || f.hang[AnyOp] {
		hang = f.release
		f.hung++
	}
	d, ok := f.latency[op]
	if !ok {
		d = f.latency[AnyOp]
	}
	f.inFlight++
	f.notify()
	f.mu.Unlock()

	defer func() {
		f.mu.Lock()
		f.inFlight--
		f.notify()
		f.mu.Unlock()
	}()
	if hang != nil {
		<-hang
		f.mu.Lock()
		f.hung--
		f.notify()
		f.mu.Unlock()
	}
	if d > 0 {
		t := time.NewTimer(d)
		<-t.C
	}
	switch op {
	case hsm.OpOpen, hsm.OpLogin, hsm.OpMarkTrusted, hsm.OpImportKey:
		tokenFiles.Lock()
		defer tokenFiles.Unlock()
	}
	return call()
}

// Hang makes calls of op (AnyOp: every call) block until Release, whatever
// their context says.
func (f *Faults) Hang(op hsm.Op) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.init()
	f.hang[op] = true
}

// Release unblocks every hung call, which then runs, and stops hanging.
func (f *Faults) Release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.init()
	clear(f.hang)
	close(f.release)
	f.release = make(chan struct{})
}

// AwaitHung blocks until at least n calls are hung, or ctx is done.
func (f *Faults) AwaitHung(ctx context.Context, n int) error {
	return f.waitUntil(ctx, func() bool { return f.hung >= n })
}

// AwaitIdle blocks until no admitted call is in flight, or ctx is done.
func (f *Faults) AwaitIdle(ctx context.Context) error {
	return f.waitUntil(ctx, func() bool { return f.inFlight == 0 })
}

// SetLatency delays every call of op (AnyOp: every call) by d before it
// runs. Zero or less removes the latency.
func (f *Faults) SetLatency(op hsm.Op, d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.init()
	if d <= 0 {
		delete(f.latency, op)
		return
	}
	f.latency[op] = d
}

// FailNext makes the next n calls of op (AnyOp: of any operation) return
// hsm.CKR(code) without running. It replaces an earlier FailNext for op;
// n of zero or less cancels it.
func (f *Faults) FailNext(op hsm.Op, n int, code uint) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.init()
	if n <= 0 {
		delete(f.fail, op)
		return
	}
	f.fail[op] = failure{n: n, code: code}
}

// SetDown turns down mode on or off. While down, every call returns
// CKR_DEVICE_REMOVED without running. Member.Crash and Member.Restart use
// it; setting it by hand simulates an unreachable HSM that was not reset.
func (f *Faults) SetDown(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.init()
	f.down = down
	f.notify()
}

// Calls returns how many calls of op (AnyOp: of every operation) Intercept
// has seen, failed ones included.
func (f *Faults) Calls(op hsm.Op) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if op == AnyOp {
		return f.total
	}
	return f.calls[op]
}

// InFlight returns how many admitted calls have not returned yet, hung
// ones included.
func (f *Faults) InFlight() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inFlight
}

// Reset releases hung calls, removes every hang, latency and pending
// failure, and zeroes the call counts. It leaves down mode alone: that
// belongs to Member.Crash and Member.Restart.
func (f *Faults) Reset() {
	f.Release()
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.latency)
	clear(f.fail)
	clear(f.calls)
	f.total = 0
}

// waitUntil blocks until cond, evaluated with f.mu held, is true, or ctx is
// done.
func (f *Faults) waitUntil(ctx context.Context, cond func() bool) error {
	for {
		f.mu.Lock()
		f.init()
		if cond() {
			f.mu.Unlock()
			return nil
		}
		ch := f.changed
		f.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

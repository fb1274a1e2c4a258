package cluster

import "time"

// Clock is the cluster's source of time for probes, anti-entropy and
// hedging. Tests inject a fake one; the default is the system clock.
// Retry backoff is a few milliseconds of real time and does not use it.
type Clock interface {
	Now() time.Time
	NewTicker(d time.Duration) Ticker
	NewTimer(d time.Duration) Timer
}

// Ticker is the part of *time.Ticker the cluster uses.
type Ticker interface {
	C() <-chan time.Time
	Stop()
}

// Timer is the part of *time.Timer the cluster uses.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

type systemClock struct{}

func (systemClock) Now() time.Time                   { return time.Now() }
func (systemClock) NewTicker(d time.Duration) Ticker { return sysTicker{time.NewTicker(d)} }
func (systemClock) NewTimer(d time.Duration) Timer   { return sysTimer{time.NewTimer(d)} }

type sysTicker struct{ t *time.Ticker }

func (t sysTicker) C() <-chan time.Time { return t.t.C }
func (t sysTicker) Stop()               { t.t.Stop() }

type sysTimer struct{ t *time.Timer }

func (t sysTimer) C() <-chan time.Time { return t.t.C }
func (t sysTimer) Stop() bool          { return t.t.Stop() }

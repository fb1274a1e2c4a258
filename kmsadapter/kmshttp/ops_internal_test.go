package kmshttp

import (
	"reflect"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/kmsadapter"
)

// Every method of kmsadapter.API is an operation of the handler.
func TestEveryAPIMethodIsServed(t *testing.T) {
	api := reflect.TypeFor[kmsadapter.API]()
	for i := range api.NumMethod() {
		if _, ok := opTable[api.Method(i).Name]; !ok {
			t.Errorf("%s is not served", api.Method(i).Name)
		}
	}
	if len(opTable) != api.NumMethod() {
		t.Errorf("%d operations for %d API methods", len(opTable), api.NumMethod())
	}
}

func TestReplayCacheWindow(t *testing.T) {
	var c replayCache
	c.init(10*time.Minute, 0)
	t0 := time.Unix(1_800_000_000, 0)
	sig := func(b byte) []byte { s := make([]byte, 32); s[0], s[31] = b, b; return s }
	if !c.add(sig(1), t0) || c.add(sig(1), t0) {
		t.Fatal("a signature was not remembered")
	}
	// Remembered for at least the window, across a rotation.
	for _, d := range []time.Duration{time.Minute, 9 * time.Minute, 10 * time.Minute, 15 * time.Minute, 19 * time.Minute} {
		if !c.add(sig(byte(10+d/time.Minute)), t0.Add(d)) {
			t.Fatalf("a fresh signature at +%v was refused", d)
		}
		if d <= 10*time.Minute && c.add(sig(1), t0.Add(d)) {
			t.Fatalf("a replay at +%v was accepted", d)
		}
	}
	// And forgotten after two windows, so memory stays bounded.
	c.add(sig(33), t0.Add(41*time.Minute)) // the same shard as sig(1)
	sh := &c.shards[1]
	_, inPrev := sh.prev[[16]byte(sig(1)[:16])]
	_, inCur := sh.cur[[16]byte(sig(1)[:16])]
	if inPrev || inCur {
		t.Fatal("a signature older than two windows is still held")
	}
}

func TestReplayGrace(t *testing.T) {
	var c replayCache
	c.init(10*time.Minute, 2*time.Second)
	t0 := time.Unix(1_800_000_000, 0)
	sig := make([]byte, 32)
	if !c.add(sig, t0) || !c.add(sig, t0.Add(time.Second)) || !c.add(sig, t0.Add(2*time.Second)) {
		t.Fatal("a repeat within the grace was refused")
	}
	if c.add(sig, t0.Add(2*time.Second+time.Nanosecond)) || c.add(sig, t0.Add(5*time.Minute)) {
		t.Fatal("a repeat after the grace was accepted")
	}
}

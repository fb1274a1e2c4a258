// Command failover shows a cluster of three SoftHSM2 members losing one
// in the middle of a stream of encryptions without a single failed call,
// then taking it back: the member is re-synced with the keys created while
// it was down before it serves again.
//
//	go run ./examples/failover
//
// It needs SoftHSM2 (apt-get install softhsm2, dnf install softhsm, brew
// install softhsm). Everything it creates lives in a temporary directory
// that it removes.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hsmkms/hsmkms/cluster"
	"github.com/hsmkms/hsmkms/hsm"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "failover:", err)
		os.Exit(1)
	}
}

func run() (err error) {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "hsmkms-failover-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	hsms, err := softhsmtest.NewCluster(dir, 3)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, hsms.Close()) }()

	cfg := cluster.DefaultConfig()
	cfg.ProbeInterval = 200 * time.Millisecond
	var opts []cluster.Option
	for i, m := range hsms.Members {
		name := fmt.Sprintf("hsm-%d", i)
		cfg.Members = append(cfg.Members, cluster.MemberConfig{Name: name, Token: m.Config(), SOPIN: m.SOPIN()})
		opts = append(opts, cluster.WithTokenOptions(name, hsm.WithInterceptor(m.Faults)))
	}
	events := make(chan cluster.Event, 64)
	opts = append(opts, cluster.WithEvents(events),
		cluster.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))))
	c, err := cluster.New(ctx, cfg, opts...)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, c.Close()) }()
	go func() {
		for e := range events {
			fmt.Printf("  event: %s %v -> %v (%s)\n", e.Member, e.From, e.To, e.Reason)
		}
	}()
	fmt.Println("bootstrapping: each HSM gets its own key-encryption key and a copy of the others', HSM to HSM")
	if err := c.Bootstrap(ctx); err != nil {
		return err
	}
	if _, err := c.GenerateKey(ctx, "orders", hsm.AES256, hsm.KeyOptions{}); err != nil {
		return err
	}
	fmt.Println("key \"orders\" created on all three HSMs")

	var calls, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			msg := []byte(fmt.Sprintf("order from client %d", g))
			for {
				select {
				case <-stop:
					return
				default:
				}
				ct, iv, err := c.EncryptGCM(ctx, "orders", nil, msg, nil)
				if err == nil {
					var pt []byte
					pt, err = c.DecryptGCM(ctx, "orders", iv, ct, nil)
					if err == nil && !bytes.Equal(pt, msg) {
						err = errors.New("round trip changed the message")
					}
				}
				calls.Add(2)
				if err != nil {
					failed.Add(1)
					fmt.Println("  FAILED:", err)
				}
			}
		})
	}
	report := func(what string) {
		fmt.Printf("%-34s calls %6d, failed %d;", what, calls.Load(), failed.Load())
		for _, m := range c.Members() {
			fmt.Printf("  %s %s served %d", m.Name, m.State, m.Served)
		}
		fmt.Println()
	}
	time.Sleep(time.Second) // a demo: let the stream run
	report("streaming over 3 HSMs:")

	fmt.Println("crashing hsm-1 mid-stream (C_Finalize: every session and login gone)")
	if err := hsms.Members[1].Crash(); err != nil {
		return err
	}
	time.Sleep(time.Second)
	report("one HSM down:")
	if _, err := c.GenerateKey(ctx, "invoices", hsm.AES256, hsm.KeyOptions{}); err != nil {
		return err
	}
	fmt.Println("key \"invoices\" created while hsm-1 is down (quorum: the two healthy HSMs)")

	fmt.Println("restarting hsm-1; the next probe re-syncs it before it takes traffic")
	if err := hsms.Members[1].Restart(); err != nil {
		return err
	}
	time.Sleep(time.Second)
	report("hsm-1 back:")
	close(stop)
	wg.Wait()
	report("done:")

	cv, err := c.Coverage(ctx)
	if err != nil {
		return err
	}
	for _, k := range cv.Keys {
		fmt.Printf("key %-9s held by %v, missing on %v\n", k.ID, k.Holders, k.Missing)
	}
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d calls failed", n)
	}
	fmt.Printf("zero failed calls out of %d\n", calls.Load())
	return nil
}

package kmshttp_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	smithyendpoints "github.com/aws/smithy-go/endpoints"

	"github.com/hsmkms/hsmkms/kmsadapter"
	"github.com/hsmkms/hsmkms/kmsadapter/kmshttp"
)

// BenchmarkEncrypt4KiB encrypts 4 KiB at 16 goroutines with the
// kmsadapter client in process, and with the unmodified aws-sdk-go-v2
// client through the handler: over HTTP on 127.0.0.1, through the
// in-process transport (signature verified), and through the trusted
// in-process transport (no signature check). Three more rows isolate the
// parts: "handler-only" sends prepared requests (no SDK) through the
// trusted transport, so it is the handler's own cost, SigV4 aside, on top
// of the adapter's; "sdk-client-only" is the SDK alone, answered by a
// canned response, the floor of every SDK path; "sdk-handler-stub" is the
// SDK through the verified in-process transport to a handler whose
// Encrypt answers at once (no HSM), so the SDK's and the whole handler's
// cost together.
//
// The paths run in interleaved rounds, 320 calls each per round, in an
// order that rotates from round to round, so that load from other
// processes falls on all of them alike. Per path it reports throughput
// (wall clock) and CPU per call (this process's CPU time, SoftHSM's
// included, per call: on a shared machine the steadier measure; when the
// HSM is CPU-bound, as SoftHSM is, throughput on dedicated cores is its
// inverse), and as metrics the throughput ratio of each SDK path to the
// adapter, all from the same rounds:
//
//	go test -run '^$' -bench 'Encrypt4KiB$' -benchtime 20x ./kmsadapter/kmshttp/
func BenchmarkEncrypt4KiB(b *testing.B) { benchEncrypt(b, 0) }

// BenchmarkEncrypt4KiBNetworkHSM is BenchmarkEncrypt4KiB with 1 ms added
// to every encryption on the token, the order of a network HSM's round
// trip (AWS CloudHSM in the same VPC): the HSM, not this process's CPU,
// then bounds throughput.
func BenchmarkEncrypt4KiBNetworkHSM(b *testing.B) { benchEncrypt(b, time.Millisecond) }

const (
	benchGoroutines = 16
	benchBurst      = 320 // calls per path per round
)

// benchPath is one way of making the call; each goroutine makes its own
// input with newCall and calls the result.
type benchPath struct {
	name    string
	metric  string // the ratio metric's name; "" for the adapter itself
	newCall func() func() error
}

func benchEncrypt(b *testing.B, latency time.Duration) {
	e := newEnv(b, envOpt{encryptLatency: latency})
	out, err := e.adapter.CreateKey(bg, &kms.CreateKeyInput{})
	if err != nil {
		b.Fatal(err)
	}
	id := out.KeyMetadata.KeyId
	plaintext := bytes.Repeat([]byte("k"), 4096)
	sdk := func(c aws.HTTPClient) *kms.Client {
		return kms.NewFromConfig(awsConfig(alice), func(o *kms.Options) {
			o.HTTPClient = c
			o.BaseEndpoint = aws.String("http://hsmkms.local")
		})
	}
	loop := e.loopback(alice, func(o *kms.Options) {
		// As many idle connections as goroutines, so that none redials.
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 2 * benchGoroutines
		o.HTTPClient = &http.Client{Transport: tr}
	})
	via := func(name, metric string, k kmsadapter.API) benchPath {
		return benchPath{name, metric, func() func() error {
			in := &kms.EncryptInput{KeyId: id, Plaintext: plaintext, EncryptionContext: map[string]string{"bench": "1"}}
			return func() error { _, err := k.Encrypt(bg, in); return err }
		}}
	}
	paths := []benchPath{
		via("adapter", "", e.adapter),
		via("sdk-loopback", "loopback-x", loop),
		via("sdk-in-process", "in-process-x", sdk(e.h.Transport())),
		via("sdk-in-process-trusted", "trusted-x", sdk(e.h.TrustedTransport(alicePrincipal()))),
	}
	if latency == 0 {
		ct, err := e.adapter.Encrypt(bg, &kms.EncryptInput{KeyId: id, Plaintext: plaintext, EncryptionContext: map[string]string{"bench": "1"}})
		if err != nil {
			b.Fatal(err)
		}
		canned := []byte(`{"CiphertextBlob":"` + base64.StdEncoding.EncodeToString(ct.CiphertextBlob) +
			`","KeyId":"` + *ct.KeyId + `","EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}`)
		stub, err := kmshttp.New(stubEncrypt{API: e.adapter, out: ct}, e.auth, kmshttp.DefaultConfig())
		if err != nil {
			b.Fatal(err)
		}
		body := []byte(`{"KeyId":"` + *id + `","Plaintext":"` + base64.StdEncoding.EncodeToString(plaintext) + `","EncryptionContext":{"bench":"1"}}`)
		trusted := e.h.TrustedTransport(alicePrincipal())
		paths = append(paths,
			benchPath{"handler-only", "handler-only-x", func() func() error {
				return func() error {
					req, err := http.NewRequest(http.MethodPost, "http://hsmkms.local/", bytes.NewReader(body))
					if err != nil {
						return err
					}
					req.Header.Set("X-Amz-Target", "TrentService.Encrypt")
					resp, err := trusted.Do(req)
					if err != nil {
						return err
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						return fmt.Errorf("status %d", resp.StatusCode)
					}
					return nil
				}
			}},
			via("sdk-client-only", "sdk-only-x", sdk(cannedResponse(canned))),
			via("sdk-handler-stub", "sdk-handler-stub-x", sdk(stub.Transport())),
		)
	}
	runRounds(b, paths)
}

// BenchmarkSDKClient is the SDK's own cost per Encrypt 4 KiB: the client
// alone, answered by a canned response, at 16 goroutines, in interleaved
// rounds. The first row is the client as the other benchmarks configure
// it; the others add options a user could set to make it cheaper:
// "credentials-cache" wraps the credentials provider in
// aws.NewCredentialsCache, as config.LoadDefaultConfig does;
// "no-retry-rate-limit" gives the standard retryer no client-side retry
// token bucket (ratelimit.None, as the SDK documents); "static-endpoint"
// sets an EndpointResolverV2 that returns the endpoint without the rules
// engine; "all-three" is the three together, a client a user might really
// run; "no-retries" (aws.NopRetryer) is for comparison only, as it gives
// up the retries a real client needs.
//
//	go test -run '^$' -bench 'SDKClient$' -benchtime 20x ./kmsadapter/kmshttp/
func BenchmarkSDKClient(b *testing.B) {
	plaintext := bytes.Repeat([]byte("k"), 4096)
	id := aws.String("0b0c0d0e-1111-4222-8333-444455556666")
	canned := cannedResponse(`{"CiphertextBlob":"` + base64.StdEncoding.EncodeToString(make([]byte, 4096+49)) +
		`","KeyId":"arn:aws:kms:us-east-1:111122223333:key/` + *id + `","EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}`)
	cached := aws.NewCredentialsCache(awsConfig(alice).Credentials)
	noLimit := func(o *kms.Options) {
		o.Retryer = retry.NewStandard(func(so *retry.StandardOptions) { so.RateLimiter = ratelimit.None })
	}
	static := func(o *kms.Options) { o.EndpointResolverV2 = staticEndpoint("http://hsmkms.local") }
	path := func(name, metric string, opts ...func(*kms.Options)) benchPath {
		c := kms.NewFromConfig(awsConfig(alice), append([]func(*kms.Options){func(o *kms.Options) {
			o.HTTPClient = canned
			o.BaseEndpoint = aws.String("http://hsmkms.local")
		}}, opts...)...)
		return benchPath{name, metric, func() func() error {
			in := &kms.EncryptInput{KeyId: id, Plaintext: plaintext, EncryptionContext: map[string]string{"bench": "1"}}
			return func() error { _, err := c.Encrypt(bg, in); return err }
		}}
	}
	withCache := func(o *kms.Options) { o.Credentials = cached }
	runRounds(b, []benchPath{
		path("as-benchmarked", ""),
		path("credentials-cache", "credentials-cache-x", withCache),
		path("no-retry-rate-limit", "no-retry-rate-limit-x", noLimit),
		path("static-endpoint", "static-endpoint-x", static),
		path("all-three", "all-three-x", withCache, noLimit, static),
		path("no-retries", "no-retries-x", func(o *kms.Options) { o.Retryer = aws.NopRetryer{} }),
	})
}

// staticEndpoint resolves every request to one URL, without the SDK's
// endpoint rules.
type staticEndpoint string

func (s staticEndpoint) ResolveEndpoint(context.Context, kms.EndpointParameters) (smithyendpoints.Endpoint, error) {
	u, err := url.Parse(string(s))
	if err != nil {
		return smithyendpoints.Endpoint{}, err
	}
	return smithyendpoints.Endpoint{URI: *u}, nil
}

// runRounds runs b.N rounds of every path and reports them; see
// BenchmarkEncrypt4KiB.
func runRounds(b *testing.B, paths []benchPath) {
	type total struct {
		wall, cpu      time.Duration
		calls          int
		bytes, objects uint64 // allocated
	}
	totals := make([]total, len(paths))
	calls := make([][]func() error, len(paths))
	for i, p := range paths {
		for range benchGoroutines {
			calls[i] = append(calls[i], p.newCall())
		}
		if _, _, err := burst(calls[i]); err != nil { // warm up: connections, caches
			b.Fatalf("%s: %v", p.name, err)
		}
	}
	b.ResetTimer()
	for round := range b.N {
		for j := range paths {
			i := (round + j) % len(paths)
			var m0, m1 runtime.MemStats
			runtime.ReadMemStats(&m0)
			wall, cpu, err := burst(calls[i])
			if err != nil {
				b.Fatalf("%s: %v", paths[i].name, err)
			}
			runtime.ReadMemStats(&m1)
			totals[i].wall += wall
			totals[i].cpu += cpu
			totals[i].calls += benchBurst
			totals[i].bytes += m1.TotalAlloc - m0.TotalAlloc
			totals[i].objects += m1.Mallocs - m0.Mallocs
		}
	}
	b.StopTimer()
	ops := func(t total) float64 { return float64(t.calls) / t.wall.Seconds() }
	cpuUS := func(t total) float64 { return float64(t.cpu.Microseconds()) / float64(t.calls) }
	base := totals[0]
	var lines []string
	for i, p := range paths {
		t := totals[i]
		lines = append(lines, fmt.Sprintf("  %-24s %7.0f ops/s %6.2fx   %6.1f cpu-us/op %6.2fx per core   %6.1f KB/op %5.0f allocs/op",
			p.name, ops(t), ops(t)/ops(base), cpuUS(t), cpuUS(base)/cpuUS(t),
			float64(t.bytes)/1024/float64(t.calls), float64(t.objects)/float64(t.calls)))
		if p.metric == "" {
			b.ReportMetric(ops(t), p.name+"-ops/s")
			b.ReportMetric(cpuUS(t), p.name+"-cpu-us/op")
		} else {
			b.ReportMetric(ops(t)/ops(base), p.metric)
		}
	}
	b.ReportMetric(0, "ns/op")
	if b.N == 1 {
		return // the framework's trial run
	}
	fmt.Printf("%s, %d rounds of %d calls per path at %d goroutines; throughput and CPU per call, their ratio to the first row's, and allocation per call:\n%s\n",
		b.Name(), b.N, benchBurst, benchGoroutines, strings.Join(lines, "\n"))
}

// burst makes benchBurst calls, spread over one goroutine per element of
// calls, and returns the wall-clock and CPU time they took.
func burst(calls []func() error) (wall, cpu time.Duration, err error) {
	var wg sync.WaitGroup
	var next atomic.Int64
	var first atomic.Pointer[error]
	start, cpu0 := time.Now(), cpuTime()
	for _, call := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= benchBurst {
				if err := call(); err != nil {
					first.CompareAndSwap(nil, &err)
					return
				}
			}
		}()
	}
	wg.Wait()
	wall, cpu = time.Since(start), cpuTime()-cpu0
	if p := first.Load(); p != nil {
		err = *p
	}
	return wall, cpu, err
}

// cpuTime is the CPU time this process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cannedResponse answers every request with body, as a server would.
type cannedResponse []byte

func (c cannedResponse) Do(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
	}
	return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/x-amz-json-1.1"}},
		Body: io.NopCloser(bytes.NewReader(c)), ContentLength: int64(len(c))}, nil
}

// stubEncrypt is an API whose Encrypt answers out at once; its other
// calls (the handler's key lookups) go to the embedded API.
type stubEncrypt struct {
	kmsadapter.API
	out *kms.EncryptOutput
}

func (s stubEncrypt) Encrypt(context.Context, *kms.EncryptInput, ...func(*kms.Options)) (*kms.EncryptOutput, error) {
	o := *s.out
	return &o, nil
}

package kmshttp_test

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/hsmkms/hsmkms/kmsadapter"
)

// BenchmarkEncrypt4KiB encrypts 4 KiB at 16 goroutines with the
// kmsadapter client in process, and with the unmodified aws-sdk-go-v2
// client through the handler: over HTTP on 127.0.0.1, through the
// in-process transport (signature verified), and through the trusted
// in-process transport (no signature check). Two rows isolate the parts:
// "handler-only" sends prepared requests (no SDK) through the trusted
// transport, so it is the handler's own cost on top of the adapter's;
// "sdk-client-only" is the SDK alone, answered by a canned response, the
// floor of every SDK path.
//
// Each path reports ops/s (wall clock) and cpu-us/op (this process's CPU
// time, SoftHSM's included, per call): on a shared machine the second is
// the steadier measure, and when the HSM is CPU-bound, as SoftHSM is,
// throughput on dedicated cores is its inverse. Ratios to the adapter, all
// from one run, are printed:
//
//	go test -run '^$' -bench Encrypt4KiB -benchtime 3s ./kmsadapter/kmshttp/
func BenchmarkEncrypt4KiB(b *testing.B) { benchEncrypt(b, 0) }

// BenchmarkEncrypt4KiBNetworkHSM is BenchmarkEncrypt4KiB with 1 ms added
// to every encryption on the token, the order of a network HSM's round
// trip (AWS CloudHSM in the same VPC): the HSM, not this process's CPU,
// then bounds throughput.
func BenchmarkEncrypt4KiBNetworkHSM(b *testing.B) { benchEncrypt(b, time.Millisecond) }

func benchEncrypt(b *testing.B, latency time.Duration) {
	e := newEnv(b, envOpt{encryptLatency: latency})
	out, err := e.adapter.CreateKey(bg, &kms.CreateKeyInput{})
	if err != nil {
		b.Fatal(err)
	}
	id := out.KeyMetadata.KeyId
	plaintext := bytes.Repeat([]byte("k"), 4096)
	const goroutines = 16
	par := (goroutines + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0)
	sdk := func(c aws.HTTPClient) *kms.Client {
		return kms.NewFromConfig(awsConfig(alice), func(o *kms.Options) {
			o.HTTPClient = c
			o.BaseEndpoint = aws.String("http://hsmkms.local")
		})
	}
	loop := e.loopback(alice, func(o *kms.Options) {
		// As many idle connections as goroutines, so that none redials.
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 2 * goroutines
		o.HTTPClient = &http.Client{Transport: tr}
	})
	canned := []byte(`{"CiphertextBlob":"` + base64.StdEncoding.EncodeToString(make([]byte, 4096+49)) +
		`","KeyId":"arn:aws:kms:us-east-1:111122223333:key/` + *id + `","EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}`)
	type path struct {
		name    string
		encrypt func(*kms.EncryptInput) error
	}
	via := func(name string, k kmsadapter.API) path {
		return path{name, func(in *kms.EncryptInput) error { _, err := k.Encrypt(bg, in); return err }}
	}
	paths := []path{
		via("adapter", e.adapter),
		via("sdk-loopback", loop),
		via("sdk-in-process", sdk(e.h.Transport())),
		via("sdk-in-process-trusted", sdk(e.h.TrustedTransport(alicePrincipal()))),
	}
	if latency == 0 {
		body := []byte(`{"KeyId":"` + *id + `","Plaintext":"` + base64.StdEncoding.EncodeToString(plaintext) + `","EncryptionContext":{"bench":"1"}}`)
		trusted := e.h.TrustedTransport(alicePrincipal())
		paths = append(paths,
			path{"handler-only", func(*kms.EncryptInput) error {
				req, err := http.NewRequest(http.MethodPost, "http://hsmkms.local/", bytes.NewReader(body))
				if err != nil {
					return err
				}
				req.Header.Set("X-Amz-Target", "TrentService.Encrypt")
				resp, err := trusted.Do(req)
				if err == nil && resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
				return err
			}},
			via("sdk-client-only", sdk(cannedResponse(canned))))
	}
	type result struct{ opsPerSec, cpuPerOp float64 }
	res := map[string]result{}
	for _, p := range paths {
		b.Run(p.name, func(b *testing.B) {
			b.SetParallelism(par)
			b.SetBytes(int64(len(plaintext)))
			start, cpu0 := time.Now(), cpuTime()
			b.RunParallel(func(pb *testing.PB) {
				in := &kms.EncryptInput{KeyId: id, Plaintext: plaintext, EncryptionContext: map[string]string{"bench": "1"}}
				for pb.Next() {
					if err := p.encrypt(in); err != nil {
						b.Error(err)
						return
					}
				}
			})
			r := result{float64(b.N) / time.Since(start).Seconds(), float64((cpuTime() - cpu0).Microseconds()) / float64(b.N)}
			b.ReportMetric(r.opsPerSec, "ops/s")
			b.ReportMetric(r.cpuPerOp, "cpu-us/op")
			res[p.name] = r
		})
	}
	base := res["adapter"]
	if base.opsPerSec == 0 {
		return
	}
	for _, p := range paths[1:] {
		r, ok := res[p.name]
		if !ok {
			continue
		}
		fmt.Printf("%s/%s: %.0f ops/s = %.2fx the adapter's %.0f; %.0f cpu-us/op: %.2fx the adapter's throughput per core\n",
			b.Name(), p.name, r.opsPerSec, r.opsPerSec/base.opsPerSec, base.opsPerSec, r.cpuPerOp, base.cpuPerOp/r.cpuPerOp)
	}
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

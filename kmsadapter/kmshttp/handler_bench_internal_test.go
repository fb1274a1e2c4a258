package kmshttp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// BenchmarkHandlerEncrypt is the handler's own cost for an Encrypt of
// 4 KiB over an API that answers at once, with the request signed (as an
// SDK would sign it) and verified, or served through the trusted
// transport.
func BenchmarkHandlerEncrypt(b *testing.B) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cred := Credential{AccessKeyID: "AKIABENCH00000000000", SecretAccessKey: NewSecret("bench-secret-0123456789"), PrincipalARN: "arn:aws:iam::111122223333:user/bench"}
	cfg := DefaultSigV4Config()
	cfg.Region, cfg.Credentials = "us-east-1", []Credential{cred}
	auth, err := NewSigV4(cfg, WithSigV4Clock(fixedClock{t0})) // a fixed clock: the same signature stays within the replay grace
	if err != nil {
		b.Fatal(err)
	}
	h, err := New(stubAPI{ct: make([]byte, 4096+49)}, auth, DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	body := []byte(`{"KeyId":"` + stubKeyID + `","Plaintext":"` + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("k"), 4096)) + `","EncryptionContext":{"bench":"1"}}`)
	signed, err := http.NewRequest(http.MethodPost, "http://hsmkms.local/", bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	signed.Header.Set("Content-Type", "application/x-amz-json-1.1")
	signed.Header.Set("X-Amz-Target", "TrentService.Encrypt")
	signed.Header.Set("Amz-Sdk-Invocation-Id", "6a3c9f0e-4a3b-4b0e-9a7e-2f7b1c0d9e8f")
	signed.Header.Set("Amz-Sdk-Request", "attempt=1; max=3")
	sum := sha256.Sum256(body)
	if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: cred.AccessKeyID, SecretAccessKey: cred.SecretAccessKey.Reveal()},
		signed, hex.EncodeToString(sum[:]), "kms", "us-east-1", t0); err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		tr   *Transport
	}{
		{"signed", h.Transport()},
		{"trusted", h.TrustedTransport(Principal{ARN: cred.PrincipalARN, AccountID: "111122223333"})},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(4096)
			cpu0 := processCPU()
			for b.Loop() {
				req := signed.Clone(context.Background())
				req.Body = io.NopCloser(bytes.NewReader(body))
				resp, err := tc.tr.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				if resp.StatusCode != http.StatusOK {
					msg, _ := io.ReadAll(resp.Body)
					b.Fatalf("status %d: %s", resp.StatusCode, msg)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
			}
			b.ReportMetric(float64((processCPU()-cpu0).Nanoseconds())/1e3/float64(b.N), "cpu-us/op")
		})
	}
}

// processCPU is the CPU time this process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

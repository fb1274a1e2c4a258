package kmshttp

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

// FuzzAuthenticate feeds arbitrary Authorization and X-Amz-Date headers to
// SigV4: it never panics, never accepts, and always answers with an AWS
// authentication error.
func FuzzAuthenticate(f *testing.F) {
	s, err := NewSigV4(SigV4Config{Region: "us-east-1", MaxSkew: DefaultMaxSkew, ReplayGrace: DefaultReplayGrace, Credentials: []Credential{{
		AccessKeyID: "AKIAFUZZ000000000000", SecretAccessKey: NewSecret("fuzz-secret-0123456789"), PrincipalARN: "arn:aws:iam::111122223333:user/fuzz",
	}}}, WithSigV4Clock(fixedClock{time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}))
	if err != nil {
		f.Fatal(err)
	}
	f.Add("AWS4-HMAC-SHA256 Credential=AKIAFUZZ000000000000/20260101/us-east-1/kms/aws4_request, SignedHeaders=host;x-amz-date, Signature=00", "20260101T000000Z", "{}")
	f.Add("AWS4-HMAC-SHA256 Credential=AKIAFUZZ000000000000/20260101/us-east-1/kms/aws4_request, SignedHeaders=content-length;host;x-amz-date;x-amz-target, Signature="+strings.Repeat("ab", 32), "20260101T000000Z", "{}")
	f.Add("AWS4-HMAC-SHA256 Credential=/////, SignedHeaders=;;;, Signature=zz", "2026", "")
	f.Add("AWS4-HMAC-SHA256", "", "")
	f.Add("Basic dXNlcjpwYXNz", "20260101T000000Z", "x")
	f.Fuzz(func(t *testing.T, auth, date, body string) {
		r, err := http.NewRequest(http.MethodPost, "http://127.0.0.1/", strings.NewReader(body))
		if err != nil {
			t.Fatal(err) // a fixed URL and a string body: cannot fail
		}
		r.Header.Set("Authorization", auth)
		r.Header.Set("X-Amz-Date", date)
		r.Header.Set("X-Amz-Target", "TrentService.ListKeys")
		p, err := s.Authenticate(r, []byte(body))
		if p != nil || err == nil {
			t.Fatalf("accepted %q", auth)
		}
		var e *Error
		if !errors.As(err, &e) || e.Status != http.StatusBadRequest || !strings.HasSuffix(e.Code, "Exception") {
			t.Fatalf("%q: %v", auth, err)
		}
	})
}

type fixedClock struct{ t time.Time }

func (c fixedClock) Now() time.Time { return c.t }

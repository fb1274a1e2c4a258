package kmshttp

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

func testSigV4(t testing.TB) (*SigV4, *credEntry) {
	t.Helper()
	s, err := NewSigV4(SigV4Config{Region: "us-east-1", MaxSkew: DefaultMaxSkew, ReplayGrace: DefaultReplayGrace, Credentials: []Credential{{
		AccessKeyID: "AKIACANON00000000000", SecretAccessKey: NewSecret("canon-secret-0123456789"), PrincipalARN: "arn:aws:iam::111122223333:user/canon",
	}}})
	if err != nil {
		t.Fatal(err)
	}
	return s, s.byKey["AKIACANON00000000000"]
}

// sameAsSigner checks fastSignature against the SDK's signer (through
// expected) on r: where the fast path answers, the signer must agree.
// It reports whether the fast path answered.
func sameAsSigner(t *testing.T, s *SigV4, cred *credEntry, r *http.Request, signedHeaders string, body []byte, at time.Time) bool {
	t.Helper()
	a := authHeader{accessKey: cred.AccessKeyID, date: at.Format("20060102"), region: "us-east-1", service: "kms", signedHeaders: signedHeaders, signature: strings.Repeat("0", 64)}
	sum := sha256.Sum256(body)
	ph := hex.EncodeToString(sum[:])
	var fast, slow [sha256.Size]byte
	if !s.fastSignature(&fast, r, &a, cred, []byte(ph), at, len(body)) {
		return false
	}
	if e := s.expected(&slow, r, a, cred, ph, at, len(body)); e != nil {
		t.Fatalf("the fast path signed what the signer refuses (%v): %s %s host %q, signed %q, headers %q", e, r.Method, r.URL, r.Host, signedHeaders, r.Header)
	}
	if fast != slow {
		t.Fatalf("the fast path and the signer differ: %s %s host %q, signed %q, headers %q, length %d", r.Method, r.URL, r.Host, signedHeaders, r.Header, r.ContentLength)
	}
	return true
}

// The fast path computes the signer's signature on every request it
// accepts, over many variations of paths, hosts, header names, values
// and lists; and it accepts what SDKs send.
func TestFastSignatureMatchesSigner(t *testing.T) {
	s, cred := testSigV4(t)
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	names := []string{"content-type", "x-amz-target", "amz-sdk-invocation-id", "amz-sdk-request", "x-amz-user-agent",
		"accept-encoding", "x-custom-1", "user-agent", "expect", "X-Amz-Target", "x_under", "content-length", "host", "x-amz-date", "authorization"}
	values := []string{"application/x-amz-json-1.1", "TrentService.Encrypt", "attempt=1; max=3", "a  b", " lead", "trail ", "tab\there",
		"", "é", "x,y", "6a3c9f0e-4a3b-4b0e-9a7e-2f7b1c0d9e8f", "  ", "a\x7f"}
	fast := 0
	const n = 20000
	for range n {
		u := &url.URL{Scheme: "http", Host: pick("hsmkms.local", "127.0.0.1:8080", "hsmkms.local:80", "hsmkms.local:443", "[::1]:80", "h:", "a:b:80", "kms.us-east-1.amazonaws.com"),
			Path: pick("/", "/", "/", "", "/x", "/a b"), RawPath: pick("", "", "/", "/x", "%2F"), RawQuery: pick("", "", "", "a=b", "X-Amz-Signature=1")}
		r := &http.Request{Method: pick("POST", "POST", "GET", ""), URL: u, Header: http.Header{}, ContentLength: int64(pick2(rng, -1, 0, 17, 100))}
		r.Host = pick(u.Host, u.Host, "", "other.example:80", "sp ace")
		if rng.IntN(4) == 0 {
			r.TLS = &tls.ConnectionState{}
		}
		for range rng.IntN(6) {
			k := pick(names...)
			for range 1 + rng.IntN(2) {
				r.Header[http.CanonicalHeaderKey(k)] = append(r.Header[http.CanonicalHeaderKey(k)], pick(values...))
			}
			if rng.IntN(8) == 0 {
				r.Header[k] = []string{pick(values...)} // not canonical: invisible to Header.Values
			}
		}
		r.Header.Set("X-Amz-Date", pick(at.Format(amzDateFormat), at.Format(amzDateFormat), "garbage"))
		list := []string{"host", "x-amz-date"}
		for range rng.IntN(6) {
			list = append(list, strings.ToLower(pick(names...)))
		}
		if rng.IntN(10) > 0 {
			sort.Strings(list)
		}
		if rng.IntN(10) > 0 {
			list = dedup(list)
		}
		if rng.IntN(20) == 0 {
			list = list[1:] // no host
		}
		signed := strings.Join(list, ";")
		if rng.IntN(30) == 0 {
			signed += ";"
		}
		body := []byte(strings.Repeat("b", int(max(r.ContentLength, 0))))
		if sameAsSigner(t, s, cred, r, signed, body, at) {
			fast++
		}
	}
	t.Logf("fast path on %d of %d variations", fast, n)
	if fast < n/20 {
		t.Fatalf("the fast path answered only %d of %d variations", fast, n)
	}

	// What aws-sdk-go-v2's KMS client sends takes the fast path, and
	// verifies.
	var sent *http.Request
	var sentBody []byte
	creds := aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		return aws.Credentials{AccessKeyID: cred.AccessKeyID, SecretAccessKey: cred.SecretAccessKey.Reveal()}, nil
	})
	client := kms.NewFromConfig(aws.Config{Region: "us-east-1", Credentials: creds},
		func(o *kms.Options) {
			o.BaseEndpoint = aws.String("http://hsmkms.local")
			o.HTTPClient = doFunc(func(r *http.Request) (*http.Response, error) {
				sent = r
				sentBody, _ = io.ReadAll(r.Body)
				return nil, errors.New("captured")
			})
		})
	_, _ = client.Encrypt(context.Background(), &kms.EncryptInput{KeyId: aws.String("alias/x"), Plaintext: []byte("hi"), EncryptionContext: map[string]string{"a": "b"}})
	if sent == nil {
		t.Fatal("the SDK sent nothing")
	}
	a, e := parseAuthorization(sent.Header.Get("Authorization"))
	if e != nil {
		t.Fatal(e)
	}
	sentAt, err := time.Parse(amzDateFormat, sent.Header.Get("X-Amz-Date"))
	if err != nil {
		t.Fatal(err)
	}
	if !sameAsSigner(t, s, cred, sent, a.signedHeaders, sentBody, sentAt) {
		t.Fatalf("an SDK request (%s, raw path %q, signed headers %q) does not take the fast path", sent.URL, sent.URL.RawPath, a.signedHeaders)
	}
	sum := sha256.Sum256(sentBody)
	var got [sha256.Size]byte
	s.fastSignature(&got, sent, &a, cred, []byte(hex.EncodeToString(sum[:])), sentAt, len(sentBody))
	if hex.EncodeToString(got[:]) != a.signature {
		t.Fatal("the fast path does not verify an SDK signature")
	}
}

// What a server receives from aws-sdk-go-v2's KMS client over HTTP takes
// the fast path too.
func TestFastSignatureOverHTTP(t *testing.T) {
	s, cred := testSigV4(t)
	fast := make(chan bool, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		a, e := parseAuthorization(r.Header.Get("Authorization"))
		at, err := time.Parse(amzDateFormat, r.Header.Get("X-Amz-Date"))
		if e != nil || err != nil {
			t.Errorf("%v %v", e, err)
		}
		fast <- sameAsSigner(t, s, cred, r, a.signedHeaders, body, at)
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer srv.Close()
	creds := aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		return aws.Credentials{AccessKeyID: cred.AccessKeyID, SecretAccessKey: cred.SecretAccessKey.Reveal()}, nil
	})
	client := kms.NewFromConfig(aws.Config{Region: "us-east-1", Credentials: creds}, func(o *kms.Options) {
		o.BaseEndpoint = aws.String(srv.URL)
		o.RetryMaxAttempts = 1
	})
	_, _ = client.Encrypt(context.Background(), &kms.EncryptInput{KeyId: aws.String("alias/x"), Plaintext: []byte("hi")})
	if !<-fast {
		t.Fatal("a request received over HTTP does not take the fast path")
	}
}

type doFunc func(*http.Request) (*http.Response, error)

func (f doFunc) Do(r *http.Request) (*http.Response, error) { return f(r) }

func pick2(rng *rand.Rand, xs ...int) int { return xs[rng.IntN(len(xs))] }

func dedup(s []string) []string {
	out := s[:0]
	for i, x := range s {
		if i == 0 || x != s[i-1] {
			out = append(out, x)
		}
	}
	return out
}

// A credential's signing key is derived once a day and is the signer's.
func TestSigningKeyCache(t *testing.T) {
	_, cred := testSigV4(t)
	k1 := cred.signingKey("20260304", "us-east-1")
	if k2 := cred.signingKey("20260304", "us-east-1"); k1 != k2 {
		t.Fatal("the key was derived again on the same day")
	}
	k3 := cred.signingKey("20260305", "us-east-1")
	if string(k3.key) == string(k1.key) {
		t.Fatal("a new day kept the old key")
	}
}

// FuzzFastSignature: wherever the fast path answers, the SDK's signer
// agrees.
func FuzzFastSignature(f *testing.F) {
	f.Add("hsmkms.local:80", "/", "", "content-type;host;x-amz-date;x-amz-target", "X-Amz-Target", "TrentService.Encrypt", int64(12), false)
	f.Add("127.0.0.1:443", "", "", "amz-sdk-request;content-length;host;x-amz-date", "Amz-Sdk-Request", "attempt=1; max=3", int64(-1), true)
	f.Add("h", "/", "a=b", "host;x-amz-date", "X", "a  b", int64(0), false)
	s, cred := testSigV4(f)
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	f.Fuzz(func(t *testing.T, host, path, query, signed, name, value string, length int64, tlsOn bool) {
		u := &url.URL{Scheme: "http", Host: host, Path: path, RawQuery: query}
		r := &http.Request{Method: "POST", URL: u, Host: host, Header: http.Header{}, ContentLength: length}
		if tlsOn {
			r.TLS = &tls.ConnectionState{}
		}
		r.Header[name] = []string{value}
		r.Header.Set("X-Amz-Date", at.Format(amzDateFormat))
		sameAsSigner(t, s, cred, r, signed, []byte("body"), at)
	})
}

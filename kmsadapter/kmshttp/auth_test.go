package kmshttp_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/stretchr/testify/require"

	"github.com/hsmkms/hsmkms/kmsadapter/kmshttp"
)

// rawRequest builds a KMS request for target with body, signed as c at t
// unless c is nil.
func rawRequest(t testing.TB, url, target, body string, c *kmshttp.Credential, at time.Time) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+"/", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	if target != "" {
		req.Header.Set("X-Amz-Target", "TrentService."+target)
	}
	if c != nil {
		sum := sha256.Sum256([]byte(body))
		creds := aws.Credentials{AccessKeyID: c.AccessKeyID, SecretAccessKey: c.SecretAccessKey.Reveal()}
		require.NoError(t, v4.NewSigner().SignHTTP(bg, creds, req, hex.EncodeToString(sum[:]), "kms", region, at))
	}
	return req
}

// awsError reads an AWS JSON error response.
func awsError(t testing.TB, resp *http.Response) (status int, typ, msg string) {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var e struct {
		Type    string `json:"__type"`
		Message string `json:"message"`
	}
	require.NoError(t, json.Unmarshal(b, &e), "body %q", b)
	require.Equal(t, "application/x-amz-json-1.1", resp.Header.Get("Content-Type"))
	require.NotEmpty(t, resp.Header.Get("X-Amzn-Requestid"))
	return resp.StatusCode, e.Type, e.Message
}

func TestAuthErrors(t *testing.T) {
	e := newEnv(t, envOpt{})
	url := e.srv.URL
	now := time.Now()

	t.Run("wrong secret", func(t *testing.T) {
		bad := alice
		bad.SecretAccessKey = kmshttp.NewSecret("not-alices-secret-at-all-000")
		_, err := e.loopback(bad).ListKeys(bg, &kms.ListKeysInput{})
		require.Equal(t, kmshttp.CodeInvalidSignature, code(err), "%v", err)
		_, err = e.inProcess(bad).ListKeys(bg, &kms.ListKeysInput{})
		require.Equal(t, kmshttp.CodeInvalidSignature, code(err), "%v", err)
	})
	t.Run("unknown access key", func(t *testing.T) {
		stranger := alice
		stranger.AccessKeyID = "AKIASTRANGER00000000"
		_, err := e.loopback(stranger).ListKeys(bg, &kms.ListKeysInput{})
		require.Equal(t, kmshttp.CodeUnrecognizedClient, code(err), "%v", err)
	})
	t.Run("expired", func(t *testing.T) {
		resp := do(t, rawRequest(t, url, "ListKeys", "{}", &alice, now.Add(-6*time.Minute)))
		status, typ, msg := awsError(t, resp)
		require.Equal(t, http.StatusBadRequest, status)
		require.Equal(t, kmshttp.CodeInvalidSignature, typ)
		require.Contains(t, msg, "Signature expired")
	})
	t.Run("from the future", func(t *testing.T) {
		resp := do(t, rawRequest(t, url, "ListKeys", "{}", &alice, now.Add(6*time.Minute)))
		_, typ, msg := awsError(t, resp)
		require.Equal(t, kmshttp.CodeInvalidSignature, typ)
		require.Contains(t, msg, "not yet current")
	})
	t.Run("within the skew", func(t *testing.T) {
		resp := do(t, rawRequest(t, url, "ListKeys", "{}", &alice, now.Add(-4*time.Minute)))
		require.Equal(t, http.StatusOK, resp.StatusCode)
	})
	t.Run("unsigned", func(t *testing.T) {
		resp := do(t, rawRequest(t, url, "ListKeys", "{}", nil, now))
		_, typ, _ := awsError(t, resp)
		require.Equal(t, kmshttp.CodeMissingAuthenticationToken, typ)
	})
	t.Run("no date", func(t *testing.T) {
		req := rawRequest(t, url, "ListKeys", "{}", &alice, now)
		req.Header.Del("X-Amz-Date")
		_, typ, _ := awsError(t, do(t, req))
		require.Equal(t, kmshttp.CodeIncompleteSignature, typ)
	})
	t.Run("no signature", func(t *testing.T) {
		req := rawRequest(t, url, "ListKeys", "{}", &alice, now)
		a := req.Header.Get("Authorization")
		req.Header.Set("Authorization", a[:strings.Index(a, ", Signature=")])
		_, typ, msg := awsError(t, do(t, req))
		require.Equal(t, kmshttp.CodeIncompleteSignature, typ)
		require.Contains(t, msg, "Signature")
	})
	t.Run("body changed after signing", func(t *testing.T) {
		req := rawRequest(t, url, "GenerateRandom", `{"NumberOfBytes":16}`, &alice, now)
		req.Body = io.NopCloser(strings.NewReader(`{"NumberOfBytes":17}`))
		_, typ, _ := awsError(t, do(t, req))
		require.Equal(t, kmshttp.CodeInvalidSignature, typ)
	})
	t.Run("signed header changed", func(t *testing.T) {
		req := rawRequest(t, url, "ListKeys", "{}", &alice, now)
		req.Header.Set("X-Amz-Target", "TrentService.ListAliases")
		_, typ, _ := awsError(t, do(t, req))
		require.Equal(t, kmshttp.CodeInvalidSignature, typ)
	})
	t.Run("wrong region", func(t *testing.T) {
		k := kms.NewFromConfig(awsConfig(alice), func(o *kms.Options) {
			o.BaseEndpoint = aws.String(url)
			o.Region = "eu-west-1"
		})
		_, err := k.ListKeys(bg, &kms.ListKeysInput{})
		require.Equal(t, kmshttp.CodeInvalidSignature, code(err), "%v", err)
	})
}

// A signed request is served again only within the replay grace after it
// was first seen (botocore's identical calls within one second share a
// signature); later, it is a replay.
func TestAuthReplay(t *testing.T) {
	t0 := time.Now().Truncate(time.Second)
	clock := &fakeClock{t: t0}
	e := newEnv(t, envOpt{clock: clock})
	body := `{"NumberOfBytes":16}`
	req := rawRequest(t, e.srv.URL, "GenerateRandom", body, &alice, t0)
	send := func() *http.Response {
		r, err := http.NewRequest(http.MethodPost, e.srv.URL+"/", bytes.NewReader([]byte(body)))
		require.NoError(t, err)
		r.Header = req.Header.Clone()
		return do(t, r)
	}
	require.Equal(t, http.StatusOK, send().StatusCode)
	clock.Set(t0.Add(kmshttp.DefaultReplayGrace))
	require.Equal(t, http.StatusOK, send().StatusCode, "a repeat within the grace")
	clock.Set(t0.Add(kmshttp.DefaultReplayGrace + time.Millisecond))
	status, typ, msg := awsError(t, send())
	require.Equal(t, http.StatusBadRequest, status)
	require.Equal(t, kmshttp.CodeInvalidSignature, typ)
	require.Contains(t, msg, "used before")
	clock.Set(t0.Add(4 * time.Minute))
	_, typ, _ = awsError(t, send())
	require.Equal(t, kmshttp.CodeInvalidSignature, typ, "a replay minutes later")
}

// The skew window follows the injected clock, not the system's.
func TestAuthSkewFollowsClock(t *testing.T) {
	clock := &fakeClock{t: time.Now()}
	e := newEnv(t, envOpt{clock: clock})
	k := e.loopback(alice, noRetry)
	_, err := k.ListKeys(bg, &kms.ListKeysInput{})
	require.NoError(t, err)
	clock.Set(time.Now().Add(10 * time.Minute))
	_, err = k.ListKeys(bg, &kms.ListKeysInput{})
	require.Equal(t, kmshttp.CodeInvalidSignature, code(err), "%v", err)
	require.Contains(t, err.Error(), "Signature expired")
	clock.Set(time.Now().Add(-10 * time.Minute))
	_, err = k.ListKeys(bg, &kms.ListKeysInput{})
	require.Contains(t, err.Error(), "not yet current")
}

func TestSecretNeverPrints(t *testing.T) {
	s := kmshttp.NewSecret("hunter2hunter2hunter2")
	for _, out := range []string{s.String(), s.GoString(), fmtAll(s), fmtAll(alice)} {
		require.NotContains(t, out, "hunter2")
		require.NotContains(t, out, "alice-secret")
	}
	b, err := json.Marshal(alice)
	require.NoError(t, err)
	require.NotContains(t, string(b), "alice-secret")
}

// TestAuthTargetMustBeSigned: a request whose signature does not cover
// X-Amz-Target is refused, so that a captured request cannot be replayed
// as another operation on the same body (DescribeKey's body, sent as
// DisableKey).
func TestAuthTargetMustBeSigned(t *testing.T) {
	e := newEnv(t, envOpt{})
	req := rawRequest(t, e.srv.URL, "", "{}", &alice, time.Now()) // signed without a target
	req.Header.Set("X-Amz-Target", "TrentService.ListKeys")       // added after signing
	status, typ, msg := awsError(t, do(t, req))
	require.Equal(t, http.StatusBadRequest, status)
	require.Equal(t, "InvalidSignatureException", typ, msg)
	require.Contains(t, msg, "x-amz-target")
}

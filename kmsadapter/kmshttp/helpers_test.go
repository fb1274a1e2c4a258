package kmshttp_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"
	"github.com/stretchr/testify/require"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/kmsadapter"
	"github.com/hsmkms/hsmkms/kmsadapter/kmshttp"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
)

const (
	region  = "us-east-1"
	account = "111122223333"
)

// Two callers: alice and bob, both of account 111122223333.
var (
	alice = kmshttp.Credential{
		AccessKeyID:     "AKIAALICE0000000TEST",
		SecretAccessKey: kmshttp.NewSecret("alice-secret-0123456789abcdef"),
		PrincipalARN:    "arn:aws:iam::111122223333:user/alice",
	}
	bob = kmshttp.Credential{
		AccessKeyID:     "AKIABOB00000000TEST0",
		SecretAccessKey: kmshttp.NewSecret("bob-secret-0123456789abcdefgh"),
		PrincipalARN:    "arn:aws:iam::111122223333:user/bob",
	}
)

// fakeClock is a Clock that moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// env is a kmsadapter.Client on real SoftHSM2, behind a Handler served
// both over loopback and in process.
type env struct {
	t       testing.TB
	adapter *kmsadapter.Client
	auth    *kmshttp.SigV4
	h       *kmshttp.Handler
	srv     *httptest.Server
	clock   *fakeClock // the server's clock, for SigV4; nil: the system clock
}

func openToken(t testing.TB, encryptLatency time.Duration) *hsm.Token {
	t.Helper()
	cl := softhsmtest.New(t, 1)
	m := cl.Members[0]
	if encryptLatency > 0 {
		m.Faults.SetLatency(hsm.OpEncrypt, encryptLatency)
	}
	tok, err := hsm.Open(context.Background(), m.Config(), hsm.WithInterceptor(m.Faults))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, tok.Close()) })
	return tok
}

type envOpt struct {
	backend kmsadapter.Backend
	// encryptLatency delays every encryption on the token, as a network
	// HSM would.
	encryptLatency time.Duration
	clock          *fakeClock
	cfg            *kmshttp.Config
}

func newEnv(t testing.TB, o envOpt) *env {
	t.Helper()
	if o.backend == nil {
		o.backend = openToken(t, o.encryptLatency)
	}
	a, err := kmsadapter.New(o.backend, kmsadapter.NewMemoryStore(), kmsadapter.DefaultConfig())
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Close() })
	return newEnvOver(t, a, o)
}

func newEnvOver(t testing.TB, a *kmsadapter.Client, o envOpt) *env {
	t.Helper()
	var sopts []kmshttp.SigV4Option
	if o.clock != nil {
		sopts = append(sopts, kmshttp.WithSigV4Clock(o.clock))
	}
	sc := kmshttp.DefaultSigV4Config()
	sc.Region, sc.Credentials = region, []kmshttp.Credential{alice, bob}
	auth, err := kmshttp.NewSigV4(sc, sopts...)
	require.NoError(t, err)
	cfg := kmshttp.DefaultConfig()
	if o.cfg != nil {
		cfg = *o.cfg
	}
	h, err := kmshttp.New(a, auth, cfg)
	require.NoError(t, err)
	srv := httptest.NewServer(h) // listens on 127.0.0.1
	t.Cleanup(srv.Close)
	return &env{t: t, adapter: a, auth: auth, h: h, srv: srv, clock: o.clock}
}

func awsConfig(c kmshttp.Credential) aws.Config {
	return aws.Config{
		Region: region,
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: c.AccessKeyID, SecretAccessKey: c.SecretAccessKey.Reveal(), Source: "test"}, nil
		}),
	}
}

// loopback returns an unmodified SDK client that reaches the handler over
// HTTP on 127.0.0.1, signing as c.
func (e *env) loopback(c kmshttp.Credential, mut ...func(*kms.Options)) *kms.Client {
	return kms.NewFromConfig(awsConfig(c), append([]func(*kms.Options){func(o *kms.Options) {
		o.BaseEndpoint = aws.String(e.srv.URL)
		o.HTTPClient = e.srv.Client()
	}}, mut...)...)
}

// inProcess returns an SDK client whose requests go through the handler
// without a socket, signed as c and verified.
func (e *env) inProcess(c kmshttp.Credential) *kms.Client {
	return kms.NewFromConfig(awsConfig(c), func(o *kms.Options) {
		o.HTTPClient = e.h.Transport()
		o.BaseEndpoint = aws.String("http://hsmkms.local")
	})
}

// code returns the AWS error code of err, or "" for nil.
func code(err error) string {
	if err == nil {
		return ""
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return "non-API error: " + err.Error()
}

// noRetry makes an SDK client give up after one attempt, so that an
// error the SDK would retry is seen as it is.
func noRetry(o *kms.Options) { o.RetryMaxAttempts = 1 }

var bg = context.Background()

func do(t testing.TB, req *http.Request) *http.Response {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}

// exampleDir is a directory for examples, which have no testing.T; it is
// removed when the examples are done by TestMain's cleanup.
func exampleDir() string {
	d, err := os.MkdirTemp("", "kmshttp-example-")
	if err != nil {
		panic(err)
	}
	exampleDirs = append(exampleDirs, d)
	return d
}

var exampleDirs []string

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range exampleDirs {
		_ = os.RemoveAll(d)
	}
	os.Exit(code)
}

package kmsadapter_test

import (
	"context"
	"errors"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/kmsadapter"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
)

// fakeClock is a Clock that moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// env is a Client on one real SoftHSM2 token.
type env struct {
	t       testing.TB
	tok     *hsm.Token         // nil on a cluster
	backend kmsadapter.Backend // tok, or a cluster
	store   kmsadapter.Store
	clock   *fakeClock
	c       *kmsadapter.Client
	cfg     kmsadapter.Config
}

func openToken(t testing.TB) *hsm.Token {
	t.Helper()
	return softhsmtest.New(t, 1).Members[0].Open(t)
}

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{t: t, tok: openToken(t), store: kmsadapter.NewMemoryStore(), clock: newFakeClock(), cfg: kmsadapter.DefaultConfig()}
	e.backend = e.tok
	e.c = e.open()
	return e
}

// open makes a new Client on the env's token and store, as a restarted
// process would.
func (e *env) open() *kmsadapter.Client {
	e.t.Helper()
	c, err := kmsadapter.New(e.backend, e.store, e.cfg, kmsadapter.WithClock(e.clock))
	require.NoError(e.t, err)
	return c
}

func (e *env) createKey(spec types.KeySpec, usage types.KeyUsageType) string {
	e.t.Helper()
	out, err := e.c.CreateKey(context.Background(), &kms.CreateKeyInput{KeySpec: spec, KeyUsage: usage})
	require.NoError(e.t, err)
	return *out.KeyMetadata.KeyId
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

var bg = context.Background()

func str(s string) *string { return aws.String(s) }
func i32(i int32) *int32   { return aws.Int32(i) }

func createKey(t testing.TB, c *kmsadapter.Client) string {
	t.Helper()
	out, err := c.CreateKey(bg, &kms.CreateKeyInput{})
	require.NoError(t, err)
	return *out.KeyMetadata.KeyId
}

func contextWithCancel() (context.Context, context.CancelFunc) { return context.WithCancel(bg) }

func bytesReplace(v []byte, old, new string) []byte {
	return []byte(strings.Replace(string(v), old, new, 1))
}

// editBolt changes one value of a closed bbolt store file.
func editBolt(t testing.TB, path, bucket, key string, fn func([]byte) []byte) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	require.NoError(t, err)
	defer func() { require.NoError(t, db.Close()) }()
	require.NoError(t, db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(bucket))
		v := b.Get([]byte(key))
		require.NotNil(t, v, "%s/%s", bucket, key)
		return b.Put([]byte(key), fn(append([]byte(nil), v...)))
	}))
}

func gomaxprocs() int { return runtime.GOMAXPROCS(0) }

func tempDirOutsideTest() string {
	d, err := os.MkdirTemp("", "kmsadapter-bench-")
	if err != nil {
		panic(err)
	}
	return d
}

package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"github.com/hsmkms/hsmkms/cluster"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/kmsadapter"
	"github.com/hsmkms/hsmkms/kmsadapter/kmshttp"
	"github.com/hsmkms/hsmkms/softhsm-test/softhsmlib"
)

const (
	devMembers   = 3
	devListen    = "127.0.0.1:4599"
	devAccount   = "111122223333"
	devRegion    = "us-east-1"
	devPrincipal = "arn:aws:iam::111122223333:user/hsmkms-dev"
)

// devState is what dev mode keeps between runs in DIR/dev.json (mode
// 0600): the tokens' PINs and the caller's credentials.
type devState struct {
	UserPIN         string `json:"user_pin"`
	SOPIN           string `json:"so_pin"`
	AccessKeyID     string `json:"access_key_id"`
	SecretAccessKey string `json:"secret_access_key"`
}

func defaultStateDir() string {
	if d := os.Getenv("HSMKMS_DEV_STATE"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ".hsmkms-dev"
	}
	return filepath.Join(home, ".hsmkms", "dev")
}

func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("state", defaultStateDir(), "the state directory: SoftHSM2 tokens, metadata, credentials (created on first run)")
	listen := fs.String("listen", devListen, "the loopback address to serve on")
	verbose := fs.Bool("v", false, "log debug messages")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("dev takes no arguments, not %q", fs.Args())}
	}
	host, _, err := net.SplitHostPort(*listen)
	if err != nil || !isLoopback(host) {
		return usageError{fmt.Errorf("--listen %q: dev mode serves on a loopback address only, such as %s", *listen, devListen)}
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	log := newLogger(stderr, level)

	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return fmt.Errorf("creating the state directory: %w", err)
	}
	unlock, err := lockDir(*dir)
	if err != nil {
		return err
	}
	defer unlock()
	st, lib, fresh, err := provisionDev(ctx, *dir)
	if err != nil {
		return err
	}
	cfg := devConfig(*dir, *listen, lib, st)
	s, err := startServer(ctx, cfg, log)
	if err != nil {
		return err
	}
	printDev(stdout, s.url(), *dir, fresh, st)
	return s.serve(ctx)
}

func devConfig(dir, listen, lib string, st devState) serverConfig {
	cfg := serverConfig{
		Listen:          listen,
		Adapter:         kmsadapter.DefaultConfig(),
		CatalogPath:     filepath.Join(dir, "catalog.db"),
		Cluster:         cluster.DefaultConfig(),
		Bootstrap:       true,
		HTTP:            kmshttp.DefaultConfig(),
		ReadTimeout:     10e9,
		WriteTimeout:    30e9,
		IdleTimeout:     120e9,
		ShutdownTimeout: 30e9,
	}
	cfg.Adapter.Region, cfg.Adapter.AccountID = devRegion, devAccount
	cfg.Adapter.StorePath = filepath.Join(dir, "metadata.db")
	for i := range devMembers {
		tc := hsm.DefaultConfig()
		tc.ModulePath, tc.TokenLabel, tc.PIN = lib, devLabel(i), hsm.NewPIN(st.UserPIN)
		cfg.Cluster.Members = append(cfg.Cluster.Members, cluster.MemberConfig{Name: fmt.Sprintf("softhsm-%d", i), Token: tc, SOPIN: hsm.NewPIN(st.SOPIN)})
	}
	cfg.SigV4 = kmshttp.DefaultSigV4Config()
	cfg.SigV4.Region = devRegion
	cfg.SigV4.Credentials = []kmshttp.Credential{{
		AccessKeyID: st.AccessKeyID, SecretAccessKey: kmshttp.NewSecret(st.SecretAccessKey), PrincipalARN: devPrincipal,
	}}
	return cfg
}

// lockDir takes an exclusive lock on dir/lock, so that two dev servers
// never share one state directory.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("another hsmkms dev is using %s (%w); stop it, or give this one --state", dir, err)
	}
	return func() { _ = f.Close() }, nil
}

func devLabel(i int) string { return fmt.Sprintf("hsmkms-dev-%d", i) }

// provisionDev makes sure dir holds a SoftHSM2 configuration with the dev
// tokens and the state file, creating them on first run, and points
// SOFTHSM2_CONF at that configuration for this process. The tokens are
// initialized through PKCS#11 (hsm.InitToken), so that their PINs never
// appear on a command line.
func provisionDev(ctx context.Context, dir string) (st devState, lib string, fresh bool, err error) {
	if lib, err = softhsmlib.Path(); err != nil {
		return st, "", false, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return st, "", false, fmt.Errorf("creating the state directory: %w", err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	tokens := filepath.Join(dir, "tokens")
	statePath := filepath.Join(dir, "dev.json")
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		return st, "", false, err
	}
	raw, err := os.ReadFile(statePath)
	switch {
	case err == nil:
		if err := json.Unmarshal(raw, &st); err != nil || st.UserPIN == "" || st.AccessKeyID == "" {
			return st, "", false, fmt.Errorf("%s is damaged; remove %s to start over", statePath, dir)
		}
		if _, err := os.Stat(conf); err != nil {
			return st, "", false, fmt.Errorf("%s has a state file but no %s; remove %s to start over", dir, conf, dir)
		}
		return st, lib, false, nil
	case !errors.Is(err, os.ErrNotExist):
		return st, "", false, err
	}
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return st, "", false, err
	}
	confText := "directories.tokendir = " + tokens + "\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
	if err := os.WriteFile(conf, []byte(confText), 0o600); err != nil {
		return st, "", false, err
	}
	st = devState{UserPIN: randomString(16, digitsLetters), SOPIN: randomString(16, digitsLetters),
		AccessKeyID: "AKIA" + randomString(16, upperDigits), SecretAccessKey: randomString(40, digitsLetters)}
	for i := range devMembers {
		if err := hsm.InitToken(ctx, lib, devLabel(i), hsm.NewPIN(st.SOPIN), hsm.NewPIN(st.UserPIN)); err != nil {
			return st, "", false, err
		}
	}
	b, _ := json.MarshalIndent(st, "", "  ")
	if err := os.WriteFile(statePath, b, 0o600); err != nil {
		return st, "", false, err
	}
	return st, lib, true, nil
}

const (
	digitsLetters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	upperDigits   = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
)

func randomString(n int, alphabet string) string {
	b := make([]byte, n)
	for i := range b {
		k, err := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
		if err != nil {
			panic(err)
		}
		b[i] = alphabet[k.Int64()]
	}
	return string(b)
}

func printDev(w io.Writer, url, dir string, fresh bool, st devState) {
	what := "reusing"
	if fresh {
		what = "provisioned"
	}
	fmt.Fprintf(w, `hsmkms dev: %d SoftHSM2 members, %s under %s
hsmkms dev: serving the AWS KMS API on %s (account %s, region %s)

Point the AWS CLI and SDKs at it:

export AWS_ENDPOINT_URL_KMS=%s
export AWS_ACCESS_KEY_ID=%s
export AWS_SECRET_ACCESS_KEY=%s
export AWS_REGION=%s
export AWS_DEFAULT_REGION=%s

  aws kms list-keys                          # AWS CLI v2.13+ and v1.29+ read AWS_ENDPOINT_URL_KMS
  aws --endpoint-url %s kms list-keys   # older ones (Debian 12's 2.9) need --endpoint-url

Caller: %s. Health: %s/healthz. Metrics: %s/metrics.
This is a development server: its HSMs are software, its credentials are on disk. Ctrl-C stops it.
`, devMembers, what, dir, url, devAccount, devRegion,
		url, st.AccessKeyID, st.SecretAccessKey, devRegion, devRegion, url, devPrincipal, url, url)
}

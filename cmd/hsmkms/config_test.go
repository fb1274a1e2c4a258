package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/cluster"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigValid(t *testing.T) {
	module := writeFile(t, "libfake.so", "")
	pin := writeFile(t, "pin", "1234\n")
	secret := writeFile(t, "secret", "a-secret-of-forty-characters-0123456789\n")
	t.Setenv("TEST_SO_PIN", "5678")
	cfg, err := parseConfig([]byte(`
listen: 127.0.0.1:4599
region: eu-west-1
account_id: "444455556666"
metadata: {path: /var/lib/hsmkms/metadata.db}
catalog: {path: /var/lib/hsmkms/catalog.db}
cluster:
  members:
    - name: a
      uri: "pkcs11:token=a?module-path=` + module + `&pin-source=` + pin + `"
      so_pin_env: TEST_SO_PIN
    - name: b
      module_path: ` + module + `
      token_label: b
      pin_file: ` + pin + `
      so_pin_env: TEST_SO_PIN
      role: standby
      weight: 2
      call_timeout: 3s
credentials:
  - access_key_id: AKIAEXAMPLE000000001
    secret_access_key_file: ` + secret + `
    principal_arn: arn:aws:iam::444455556666:user/app
    actions: ["kms:Encrypt", "kms:Decrypt"]
limits:
  max_body_bytes: 65536
  write_timeout: 5s
  key_cache_ttl: 0s
  replay_grace: 0s
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Adapter.Region != "eu-west-1" || cfg.SigV4.Region != "eu-west-1" || cfg.Adapter.AccountID != "444455556666" {
		t.Fatalf("region/account: %+v", cfg.Adapter)
	}
	if len(cfg.Cluster.Members) != 2 || cfg.Cluster.Members[1].Role != cluster.Standby || cfg.Cluster.Members[1].Weight != 2 ||
		cfg.Cluster.Members[1].Token.CallTimeout != 3*time.Second || cfg.Cluster.Members[0].Token.TokenLabel != "a" {
		t.Fatalf("members: %+v", cfg.Cluster.Members)
	}
	if cfg.SigV4.Credentials[0].SecretAccessKey.Reveal() != "a-secret-of-forty-characters-0123456789" {
		t.Fatal("the secret was not read from its file")
	}
	if cfg.SigV4.ReplayGrace != 0 || cfg.SigV4.MaxSkew != 5*time.Minute {
		t.Fatalf("sigv4: %+v", cfg.SigV4)
	}
	if cfg.HTTP.MaxBodyBytes != 65536 || cfg.HTTP.KeyCacheTTL != 0 || cfg.WriteTimeout != 5*time.Second || cfg.ReadTimeout != 10*time.Second {
		t.Fatalf("limits: %+v %v %v", cfg.HTTP, cfg.WriteTimeout, cfg.ReadTimeout)
	}
}

// Every invalid field is reported, by name, at once.
func TestConfigErrorsNameEveryField(t *testing.T) {
	_, err := parseConfig([]byte(`
listen: 0.0.0.0:443
tls: {cert_file: /nonexistent/cert.pem}
region: mars
account_id: "12"
cluster:
  members:
    - name: a
      uri: "http://not-pkcs11"
    - token_label: b
      module_path: /nonexistent/lib.so
      role: leader
      weight: -1
credentials:
  - access_key_id: lower-case
    secret_access_key: short
    principal_arn: alice
  - access_key_id: AKIAEXAMPLE000000002
    principal_arn: arn:aws:iam::111122223333:user/bob
`))
	if err == nil {
		t.Fatal("an invalid configuration was accepted")
	}
	msg := err.Error()
	for _, want := range []string{
		"tls: cert_file and key_file go together",
		"tls.cert_file:",
		"metadata.path: missing",
		"catalog.path: missing",
		`region "mars" is not valid`,
		"account ID \"12\" must be 12 digits",
		"cluster.members[0] (a).uri:",
		"cluster.members[0] (a).so_pin: missing",
		"cluster.members[1].name: missing",
		"cluster.members[1].module_path: stat /nonexistent/lib.so",
		"cluster.members[1].pin: missing",
		`cluster.members[1].role: "leader" is neither active nor standby`,
		"cluster.members[1].weight: -1 is negative",
		`credentials[0]: access key ID "lower-case"`,
		"secret access key must be at least 16 characters",
		`principal ARN "alice" is not an IAM ARN`,
		"credentials[1].secret_access_key: give exactly one",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("the error lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "short") && strings.Contains(msg, "secret_access_key: short") {
		t.Error("the error prints a secret")
	}
}

func TestConfigTLSRequiredOffLoopback(t *testing.T) {
	_, err := parseConfig([]byte("listen: 0.0.0.0:443\n"))
	if err == nil || !strings.Contains(err.Error(), "tls: cert_file and key_file are required to listen on 0.0.0.0:443") {
		t.Fatalf("plaintext on a public address was not refused: %v", err)
	}
	_, err = parseConfig([]byte("listen: 0.0.0.0:443\ntls: {plaintext: true}\n"))
	if err == nil || strings.Contains(err.Error(), "tls:") {
		t.Fatalf("tls.plaintext was not honoured: %v", err)
	}
}

func TestConfigUnknownField(t *testing.T) {
	_, err := parseConfig([]byte("listen: 127.0.0.1:1\nlisten_adress: x\n"))
	if err == nil || !strings.Contains(err.Error(), "listen_adress") {
		t.Fatalf("a misspelt field was not reported: %v", err)
	}
	_, err = parseConfig([]byte("limits: {read_timeout: soon}\n"))
	if err == nil || !strings.Contains(err.Error(), `"soon" is not a duration`) {
		t.Fatalf("a bad duration was not reported: %v", err)
	}
}

func TestUsage(t *testing.T) {
	var out, errb strings.Builder
	if code := run(context.Background(), nil, &out, &errb); code != 2 || !strings.Contains(errb.String(), "hsmkms serve --config FILE") {
		t.Fatalf("no arguments: %d %q", code, errb.String())
	}
	errb.Reset()
	if code := run(context.Background(), []string{"serve"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "--config") {
		t.Fatalf("serve without --config: %d %q", code, errb.String())
	}
	errb.Reset()
	if code := run(context.Background(), []string{"serve", "--config", "/nonexistent.yaml"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "no such file") {
		t.Fatalf("serve with a missing file: %d %q", code, errb.String())
	}
	errb.Reset()
	if code := run(context.Background(), []string{"dev", "--listen", "0.0.0.0:4599"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "loopback") {
		t.Fatalf("dev on a public address: %d %q", code, errb.String())
	}
}

// Shutdown lets a request in flight finish before serve returns.
func TestGracefulShutdownDrains(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	s := &server{
		cfg:      serverConfig{ShutdownTimeout: time.Minute},
		log:      newLogger(&strings.Builder{}, 0),
		listener: ln,
		http: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			close(entered)
			<-release
			_, _ = w.Write([]byte("finished"))
		})},
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.serve(ctx) }()
	got := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		defer resp.Body.Close()
		b := make([]byte, 64)
		n, _ := resp.Body.Read(b)
		got <- string(b[:n])
	}()
	<-entered
	cancel() // SIGTERM
	// Once the listener refuses connections, shutdown has begun.
	for {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			break
		}
		_ = c.Close()
		runtime.Gosched()
	}
	select {
	case err := <-served:
		t.Fatalf("serve returned with a request in flight: %v", err)
	case r := <-got:
		t.Fatalf("the request ended before it was released: %q", r)
	default:
	}
	close(release)
	if r := <-got; r != "finished" {
		t.Fatalf("the request in flight got %q", r)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + ln.Addr().String() + "/"); err == nil {
		t.Fatal("the server still accepts after shutdown")
	}
}

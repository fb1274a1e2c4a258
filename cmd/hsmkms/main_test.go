package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

// TestMain lets the tests run hsmkms as a process: the test binary runs
// main when HSMKMS_TEST_MAIN is set.
func TestMain(m *testing.M) {
	if os.Getenv("HSMKMS_TEST_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// proc is an hsmkms process started by a test.
type proc struct {
	cmd    *exec.Cmd
	env    map[string]string // the variables it printed
	stderr *lockedWriter
	done   chan error
}

// startHsmkms runs hsmkms with args and waits until it prints its
// environment variables (dev) or its URL (serve).
func startHsmkms(t *testing.T, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "HSMKMS_TEST_MAIN=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, env: map[string]string{}, stderr: &lockedWriter{w: &strings.Builder{}}, done: make(chan error, 1)}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		signalled := false
		for sc.Scan() {
			line := sc.Text()
			if kv, ok := strings.CutPrefix(line, "export "); ok {
				k, v, _ := strings.Cut(kv, "=")
				p.env[k] = v
				if k == "AWS_DEFAULT_REGION" && !signalled {
					signalled = true
					close(ready)
				}
			}
		}
		if !signalled {
			close(ready)
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	go func() { <-ready; p.done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() }) // after stop, a no-op
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	select {
	case <-ready:
	case <-ctx.Done():
		t.Fatalf("hsmkms did not start: %s", p.stderr)
	}
	if p.env["AWS_ENDPOINT_URL_KMS"] == "" {
		t.Fatalf("hsmkms printed no AWS_ENDPOINT_URL_KMS; stderr: %s", p.stderr)
	}
	return p
}

// stop sends SIGTERM and requires a clean exit.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("hsmkms exited with %v; stderr: %s", err, p.stderr)
		}
	case <-ctx.Done():
		t.Fatal("hsmkms did not stop on SIGTERM")
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

// awsCLI runs the AWS CLI against p.
type awsCLI struct {
	t   *testing.T
	p   *proc
	bin string
	env []string
	url string
	dir string
}

func newAWSCLI(t *testing.T, p *proc) *awsCLI {
	bin, err := exec.LookPath("aws")
	if err != nil {
		t.Fatalf("the AWS CLI is not on PATH; install it: sudo apt-get install -y awscli (CI: .ci/run does)")
	}
	home := t.TempDir()
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + home,
		"AWS_ACCESS_KEY_ID=" + p.env["AWS_ACCESS_KEY_ID"],
		"AWS_SECRET_ACCESS_KEY=" + p.env["AWS_SECRET_ACCESS_KEY"],
		"AWS_REGION=" + p.env["AWS_REGION"],
		"AWS_DEFAULT_REGION=" + p.env["AWS_DEFAULT_REGION"],
		"AWS_CONFIG_FILE=" + filepath.Join(home, "config"),
		"AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(home, "credentials"),
		"AWS_PAGER=", "AWS_EC2_METADATA_DISABLED=true", "AWS_MAX_ATTEMPTS=1",
	}
	if v := os.Getenv("PYENV_ROOT"); v != "" {
		env = append(env, "PYENV_ROOT="+v)
	}
	return &awsCLI{t: t, p: p, bin: bin, env: env, url: p.env["AWS_ENDPOINT_URL_KMS"], dir: t.TempDir()}
}

// run runs `aws --endpoint-url URL --output json kms ARGS...` and returns
// its stdout, stderr and exit code.
func (a *awsCLI) run(args ...string) (stdout string, stderr string, code int) {
	a.t.Helper()
	cmd := exec.Command(a.bin, append([]string{"--endpoint-url", a.url, "--output", "json", "kms"}, args...)...)
	cmd.Env = a.env
	cmd.Dir = a.dir
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		a.t.Fatalf("aws %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// ok runs a command that must succeed and decodes its JSON output.
func (a *awsCLI) ok(args ...string) map[string]any {
	a.t.Helper()
	out, errs, code := a.run(args...)
	if code != 0 {
		a.t.Fatalf("aws kms %s: exit %d: %s\nhsmkms stderr:\n%s", strings.Join(args, " "), code, errs, a.p.stderr)
	}
	var m map[string]any
	if strings.TrimSpace(out) == "" {
		return m
	}
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		a.t.Fatalf("aws kms %s: output is not JSON: %q", strings.Join(args, " "), out)
	}
	return m
}

// fails runs a command that must fail with the AWS error code want.
func (a *awsCLI) fails(want string, args ...string) {
	a.t.Helper()
	_, errs, code := a.run(args...)
	if code == 0 {
		a.t.Fatalf("aws kms %s succeeded, want %s", strings.Join(args, " "), want)
	}
	if !strings.Contains(errs, "("+want+")") {
		a.t.Fatalf("aws kms %s: exit %d, want error %s; stderr: %s\nhsmkms stderr:\n%s", strings.Join(args, " "), code, want, errs, a.p.stderr)
	}
}

func (a *awsCLI) file(name string, content []byte) string {
	a.t.Helper()
	p := filepath.Join(a.dir, name)
	if err := os.WriteFile(p, content, 0o600); err != nil {
		a.t.Fatal(err)
	}
	return "fileb://" + p
}

func b64(t *testing.T, v any) []byte {
	t.Helper()
	s, ok := v.(string)
	if !ok {
		t.Fatalf("%v is not a base64 string", v)
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDevModeWithAWSCLI starts `hsmkms dev` and drives it with the AWS CLI.
func TestDevModeWithAWSCLI(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	p := startHsmkms(t, "dev", "--state", state, "--listen", "127.0.0.1:0")
	url := p.env["AWS_ENDPOINT_URL_KMS"]
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("dev mode serves on %s, want 127.0.0.1", url)
	}
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} {
		if p.env[k] == "" {
			t.Fatalf("dev mode did not print %s", k)
		}
	}
	checkHealth(t, url, 3)
	cli := newAWSCLI(t, p)

	// A second dev server on the same state fails at once.
	second := exec.Command(os.Args[0], "dev", "--state", state, "--listen", "127.0.0.1:0")
	second.Env = append(os.Environ(), "HSMKMS_TEST_MAIN=1")
	out, err := second.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "another hsmkms dev is using") {
		t.Fatalf("a second dev server on the same state: %v: %s", err, out)
	}

	key := cli.ok("create-key", "--description", "cli test")["KeyMetadata"].(map[string]any)
	id := key["KeyId"].(string)
	if key["KeyState"] != "Enabled" || key["Arn"] != "arn:aws:kms:us-east-1:111122223333:key/"+id {
		t.Fatalf("create-key: %v", key)
	}
	cli.ok("create-alias", "--alias-name", "alias/cli-test", "--target-key-id", id)
	cli.fails("AlreadyExistsException", "create-alias", "--alias-name", "alias/cli-test", "--target-key-id", id)

	plain := []byte("attack at dawn\x00\xff")
	enc := cli.ok("encrypt", "--key-id", "alias/cli-test", "--plaintext", cli.file("plain", plain), "--encryption-context", "purpose=test,team=cli")
	ct := cli.file("ct", b64(t, enc["CiphertextBlob"]))
	dec := cli.ok("decrypt", "--ciphertext-blob", ct, "--encryption-context", "purpose=test,team=cli")
	if got := b64(t, dec["Plaintext"]); string(got) != string(plain) {
		t.Fatalf("decrypt: %q, want %q", got, plain)
	}
	if dec["KeyId"] != key["Arn"] {
		t.Fatalf("decrypt KeyId %v, want %v", dec["KeyId"], key["Arn"])
	}
	cli.fails("InvalidCiphertextException", "decrypt", "--ciphertext-blob", ct, "--encryption-context", "purpose=test,team=other")

	dk := cli.ok("generate-data-key", "--key-id", "alias/cli-test", "--key-spec", "AES_256")
	dkPlain := b64(t, dk["Plaintext"])
	if len(dkPlain) != 32 {
		t.Fatalf("data key of %d bytes", len(dkPlain))
	}
	dk2 := cli.ok("decrypt", "--ciphertext-blob", cli.file("dk", b64(t, dk["CiphertextBlob"])))
	if string(b64(t, dk2["Plaintext"])) != string(dkPlain) {
		t.Fatal("the data key does not decrypt to its plaintext")
	}

	sk := cli.ok("create-key", "--key-spec", "ECC_NIST_P256", "--key-usage", "SIGN_VERIFY")["KeyMetadata"].(map[string]any)["KeyId"].(string)
	msg := cli.file("msg", []byte("release v1.0.0"))
	sig := cli.ok("sign", "--key-id", sk, "--message", msg, "--message-type", "RAW", "--signing-algorithm", "ECDSA_SHA_256")
	sigFile := cli.file("sig", b64(t, sig["Signature"]))
	ver := cli.ok("verify", "--key-id", sk, "--message", msg, "--message-type", "RAW", "--signing-algorithm", "ECDSA_SHA_256", "--signature", sigFile)
	if ver["SignatureValid"] != true {
		t.Fatalf("verify: %v", ver)
	}
	cli.fails("KMSInvalidSignatureException", "verify", "--key-id", sk, "--message", cli.file("msg2", []byte("release v6.6.6")),
		"--message-type", "RAW", "--signing-algorithm", "ECDSA_SHA_256", "--signature", sigFile)

	cli.ok("disable-key", "--key-id", id)
	cli.fails("DisabledException", "encrypt", "--key-id", id, "--plaintext", cli.file("plain", plain))
	del := cli.ok("schedule-key-deletion", "--key-id", id, "--pending-window-in-days", "7")
	if del["KeyState"] != "PendingDeletion" {
		t.Fatalf("schedule-key-deletion: %v", del)
	}
	desc := cli.ok("describe-key", "--key-id", "alias/cli-test")["KeyMetadata"].(map[string]any)
	if desc["KeyState"] != "PendingDeletion" || desc["DeletionDate"] == nil {
		t.Fatalf("describe-key: %v", desc)
	}
	cli.fails("NotFoundException", "describe-key", "--key-id", "alias/nope")

	// A wrong secret is refused.
	bad := *cli
	bad.env = append(append([]string(nil), cli.env...), "AWS_SECRET_ACCESS_KEY=wrong-wrong-wrong-wrong-wrong")
	bad.fails("InvalidSignatureException", "list-keys")

	checkMetrics(t, url)
	unmodifiedSDKProgram(t, p.env)
	p.stop(t)

	// The second run reuses the state: same credentials, same keys.
	p2 := startHsmkms(t, "dev", "--state", state, "--listen", "127.0.0.1:0")
	if p2.env["AWS_ACCESS_KEY_ID"] != p.env["AWS_ACCESS_KEY_ID"] || p2.env["AWS_SECRET_ACCESS_KEY"] != p.env["AWS_SECRET_ACCESS_KEY"] {
		t.Fatal("the second run made new credentials")
	}
	cli2 := newAWSCLI(t, p2)
	keys := cli2.ok("list-keys")["Keys"].([]any)
	if len(keys) != 3 {
		t.Fatalf("after a restart: %d keys, want 3", len(keys))
	}
	ver = cli2.ok("verify", "--key-id", sk, "--message", msg, "--message-type", "RAW", "--signing-algorithm", "ECDSA_SHA_256", "--signature", sigFile)
	if ver["SignatureValid"] != true {
		t.Fatalf("verify after a restart: %v", ver)
	}
	p2.stop(t)
}

func checkHealth(t *testing.T, url string, members int) {
	t.Helper()
	resp, err := http.Get(url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h struct {
		Status  string
		Members []struct{ Name, State string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || h.Status != "ok" || len(h.Members) != members {
		t.Fatalf("healthz: %d %+v", resp.StatusCode, h)
	}
	for _, m := range h.Members {
		if m.State != "healthy" {
			t.Fatalf("healthz: member %s is %s", m.Name, m.State)
		}
	}
}

func checkMetrics(t *testing.T, url string) {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`hsmkms_http_requests_total{code="",op="Encrypt"} 1`,
		`hsmkms_http_requests_total{code="DisabledException",op="Encrypt"} 1`,
		`hsmkms_cluster_member_state{member="softhsm-0",state="healthy"} 1`,
	} {
		if !strings.Contains(string(b), want) {
			t.Fatalf("/metrics lacks %s", want)
		}
	}
}

// unmodifiedSDKProgram is what a Go service that uses AWS KMS does today,
// unchanged: the default configuration, read from the environment that
// dev mode printed.
func unmodifiedSDKProgram(t *testing.T, env map[string]string) {
	for _, k := range []string{"AWS_ENDPOINT_URL_KMS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} {
		t.Setenv(k, env[k])
	}
	home := t.TempDir()
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(home, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(home, "credentials"))
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")

	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	client := kms.NewFromConfig(cfg)
	// Before any call: the endpoint is the dev server's, so no request leaves 127.0.0.1.
	if ep := client.Options().BaseEndpoint; ep == nil || *ep != env["AWS_ENDPOINT_URL_KMS"] {
		t.Fatalf("the SDK did not take AWS_ENDPOINT_URL_KMS: BaseEndpoint %v", ep)
	}
	key, err := client.CreateKey(ctx, &kms.CreateKeyInput{Description: strp("from the default config")})
	if err != nil {
		t.Fatalf("an unmodified SDK program: %v", err)
	}
	enc, err := client.Encrypt(ctx, &kms.EncryptInput{KeyId: key.KeyMetadata.KeyId, Plaintext: []byte("unchanged code")})
	if err != nil {
		t.Fatal(err)
	}
	dec, err := client.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	if err != nil || string(dec.Plaintext) != "unchanged code" {
		t.Fatalf("decrypt: %v", err)
	}
	if _, err := client.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: key.KeyMetadata.KeyId}); err != nil {
		t.Fatal(err)
	}
}

func strp(s string) *string { return &s }

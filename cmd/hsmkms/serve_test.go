package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/hsmkms/hsmkms/cluster"
	"github.com/hsmkms/hsmkms/hsm"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
)

// selfSigned writes a certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hsmkms test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = writeFile(t, "cert.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	keyFile = writeFile(t, "key.pem", string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})))
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// serverYAML is a server configuration over sh's members, with its files
// in a temporary directory, the credentials of AKIASERVETEST0000001 and
// extra (a top-level YAML line, or "").
func serverYAML(t *testing.T, sh *softhsmtest.Cluster, extra string) string {
	dir := t.TempDir()
	var members strings.Builder
	for i, m := range sh.Members {
		fmt.Fprintf(&members, "    - name: hsm-%d\n      uri: %q\n", i, m.URI())
	}
	return `
listen: 127.0.0.1:0
` + extra + `
metadata: {path: ` + filepath.Join(dir, "metadata.db") + `}
catalog: {path: ` + filepath.Join(dir, "catalog.db") + `}
cluster:
  bootstrap: false
  members:
` + members.String() + `
credentials:
  - access_key_id: AKIASERVETEST0000001
    secret_access_key: serve-test-secret-0123456789
    principal_arn: arn:aws:iam::111122223333:user/app
`
}

// memberOptions gives cfg's members the SO PINs of sh's tokens, which
// the YAML cannot hold, and returns the options that open each member's
// token through its Faults, whose lock keeps the members' SoftHSM2
// instances from reading token files half written (see softhsmtest).
func memberOptions(cfg *serverConfig, sh *softhsmtest.Cluster) []cluster.Option {
	var opts []cluster.Option
	for i, m := range sh.Members {
		cfg.Cluster.Members[i].SOPIN = m.SOPIN()
		opts = append(opts, cluster.WithTokenOptions(cfg.Cluster.Members[i].Name, hsm.WithInterceptor(m.Faults)))
	}
	return opts
}

// `serve --config` over TLS: a YAML file naming two SoftHSM2 tokens by
// PKCS#11 URI, and the SDK over HTTPS.
func TestServeWithTLS(t *testing.T) {
	sh := softhsmtest.New(t, 2)
	certFile, keyFile, pool := selfSigned(t)
	cfg, err := parseConfig([]byte(serverYAML(t, sh, "tls: {cert_file: "+certFile+", key_file: "+keyFile+"}")))
	if err != nil {
		t.Fatal(err)
	}
	opts := memberOptions(&cfg, sh)
	cfg.Bootstrap = true
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := startServer(ctx, cfg, newLogger(&strings.Builder{}, 8), opts...)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.serve(ctx) }()
	url := s.url()
	if !strings.HasPrefix(url, "https://127.0.0.1:") {
		t.Fatalf("serving on %s", url)
	}
	httpc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	k := kms.NewFromConfig(aws.Config{Region: "us-east-1", Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		return aws.Credentials{AccessKeyID: "AKIASERVETEST0000001", SecretAccessKey: "serve-test-secret-0123456789"}, nil
	})}, func(o *kms.Options) { o.BaseEndpoint = aws.String(url); o.HTTPClient = httpc })
	key, err := k.CreateKey(ctx, &kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	enc, err := k.Encrypt(ctx, &kms.EncryptInput{KeyId: key.KeyMetadata.KeyId, Plaintext: []byte("over tls")})
	if err != nil {
		t.Fatal(err)
	}
	dec, err := k.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	if err != nil || string(dec.Plaintext) != "over tls" {
		t.Fatalf("decrypt: %v %q", err, dec.Plaintext)
	}
	// Plain HTTP is not served on the TLS port.
	if resp, err := http.Get("http://" + strings.TrimPrefix(url, "https://") + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("plain HTTP was served on the TLS port")
		}
	}
	resp, err := httpc.Get(url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		Status  string
		Members []struct{ Name, State string }
	}
	err = json.NewDecoder(resp.Body).Decode(&h)
	resp.Body.Close()
	if err != nil || h.Status != "ok" || len(h.Members) != 2 || h.Members[1].Name != "hsm-1" {
		t.Fatalf("healthz: %v %+v", err, h)
	}
	// A member down: /healthz says degraded, and requests still succeed.
	if err := sh.Members[0].Crash(); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Encrypt(ctx, &kms.EncryptInput{KeyId: key.KeyMetadata.KeyId, Plaintext: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if err := s.cluster.CheckHealth(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err = httpc.Get(url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	err = json.NewDecoder(resp.Body).Decode(&h)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || h.Status != "degraded" || h.Members[0].State != "down" {
		t.Fatalf("healthz with a member down: %v %d %+v", err, resp.StatusCode, h)
	}
	if err := sh.Members[0].Restart(); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}

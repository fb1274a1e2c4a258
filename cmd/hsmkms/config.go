package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/hsmkms/hsmkms/cluster"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/kmsadapter"
	"github.com/hsmkms/hsmkms/kmsadapter/kmshttp"
)

// fileConfig is the YAML configuration of `hsmkms serve`. Secrets (PINs,
// secret access keys) are given as a file (_file) or an environment
// variable (_env); a literal value is accepted for development only.
type fileConfig struct {
	Listen    string     `yaml:"listen"`
	TLS       tlsConfig  `yaml:"tls"`
	Partition string     `yaml:"partition"`
	Region    string     `yaml:"region"`
	AccountID string     `yaml:"account_id"`
	Metadata  pathConfig `yaml:"metadata"`
	Catalog   pathConfig `yaml:"catalog"`
	Cluster   struct {
		Bootstrap   *bool          `yaml:"bootstrap"`
		WriteQuorum int            `yaml:"write_quorum"`
		Members     []memberConfig `yaml:"members"`
	} `yaml:"cluster"`
	Credentials []credentialConfig `yaml:"credentials"`
	Limits      struct {
		MaxBodyBytes    int64     `yaml:"max_body_bytes"`
		ReadTimeout     duration  `yaml:"read_timeout"`
		WriteTimeout    duration  `yaml:"write_timeout"`
		IdleTimeout     duration  `yaml:"idle_timeout"`
		ShutdownTimeout duration  `yaml:"shutdown_timeout"`
		MaxSkew         duration  `yaml:"max_skew"`
		ReplayGrace     *duration `yaml:"replay_grace"`
		KeyCacheTTL     *duration `yaml:"key_cache_ttl"`
	} `yaml:"limits"`
}

type tlsConfig struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// Plaintext allows serving without TLS on an address that is not
	// loopback (behind a TLS-terminating proxy).
	Plaintext bool `yaml:"plaintext"`
}

type pathConfig struct {
	Path string `yaml:"path"`
}

type memberConfig struct {
	Name string `yaml:"name"`
	// Either a PKCS#11 URI...
	URI string `yaml:"uri"`
	// ... or the fields.
	ModulePath   string `yaml:"module_path"`
	TokenLabel   string `yaml:"token_label"`
	TokenSerial  string `yaml:"token_serial"`
	Slot         *uint  `yaml:"slot"`
	secretFields `yaml:",inline"`
	SOPINFile    string   `yaml:"so_pin_file"`
	SOPINEnv     string   `yaml:"so_pin_env"`
	SOPIN        string   `yaml:"so_pin"`
	Role         string   `yaml:"role"`
	Weight       int      `yaml:"weight"`
	MaxSessions  int      `yaml:"max_sessions"`
	CallTimeout  duration `yaml:"call_timeout"`
}

type secretFields struct {
	PINFile string `yaml:"pin_file"`
	PINEnv  string `yaml:"pin_env"`
	PIN     string `yaml:"pin"`
}

type credentialConfig struct {
	AccessKeyID         string   `yaml:"access_key_id"`
	SecretAccessKeyFile string   `yaml:"secret_access_key_file"`
	SecretAccessKeyEnv  string   `yaml:"secret_access_key_env"`
	SecretAccessKey     string   `yaml:"secret_access_key"`
	PrincipalARN        string   `yaml:"principal_arn"`
	Actions             []string `yaml:"actions"`
}

type duration struct{ time.Duration }

func (d *duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a duration such as 30s or 2m", n.Line)
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: %q is not a duration such as 30s or 2m", n.Line, s)
	}
	d.Duration = v
	return nil
}

// serverConfig is everything a server needs, resolved and validated.
type serverConfig struct {
	Listen          string
	CertFile        string
	KeyFile         string
	Adapter         kmsadapter.Config
	CatalogPath     string
	Cluster         cluster.Config
	Bootstrap       bool
	SigV4           kmshttp.SigV4Config
	HTTP            kmshttp.Config
	ReadTimeout     time.Duration
	WriteTimeout    time.Duration
	IdleTimeout     time.Duration
	ShutdownTimeout time.Duration
}

// loadConfig reads and checks a YAML configuration file. The error lists
// every problem, each with the field it is about.
func loadConfig(path string) (serverConfig, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return serverConfig{}, fmt.Errorf("reading the configuration: %w", err)
	}
	return parseConfig(raw)
}

func parseConfig(raw []byte) (serverConfig, error) {
	var fc fileConfig
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&fc); err != nil {
		return serverConfig{}, fmt.Errorf("configuration: %w", err)
	}
	return fc.resolve()
}

func (fc *fileConfig) resolve() (serverConfig, error) {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, strings.ReplaceAll(fmt.Sprintf(format, a...), "\n", "; ")))
	}
	sc := serverConfig{
		Listen:          fc.Listen,
		CertFile:        fc.TLS.CertFile,
		KeyFile:         fc.TLS.KeyFile,
		Adapter:         kmsadapter.DefaultConfig(),
		Cluster:         cluster.DefaultConfig(),
		HTTP:            kmshttp.DefaultConfig(),
		ReadTimeout:     10 * time.Second,
		WriteTimeout:    30 * time.Second,
		IdleTimeout:     2 * time.Minute,
		ShutdownTimeout: 30 * time.Second,
		Bootstrap:       true,
	}
	// Listening and TLS.
	if fc.Listen == "" {
		bad("listen", "missing: the address to serve on, such as 127.0.0.1:4599 or :443")
	} else if host, _, err := net.SplitHostPort(fc.Listen); err != nil {
		bad("listen", "%q is not host:port", fc.Listen)
	} else if fc.TLS.CertFile == "" && fc.TLS.KeyFile == "" && !fc.TLS.Plaintext && !isLoopback(host) {
		bad("tls", "cert_file and key_file are required to listen on %s, which is not loopback (or set tls.plaintext: true behind a TLS proxy)", fc.Listen)
	}
	if (fc.TLS.CertFile == "") != (fc.TLS.KeyFile == "") {
		bad("tls", "cert_file and key_file go together")
	}
	for field, p := range map[string]string{"tls.cert_file": fc.TLS.CertFile, "tls.key_file": fc.TLS.KeyFile} {
		if p != "" {
			if _, err := os.Stat(p); err != nil {
				bad(field, "%v", err)
			}
		}
	}
	// Identity of the KMS.
	if fc.Partition != "" {
		sc.Adapter.Partition = fc.Partition
	}
	if fc.Region != "" {
		sc.Adapter.Region = fc.Region
	}
	if fc.AccountID != "" {
		sc.Adapter.AccountID = fc.AccountID
	}
	sc.Adapter.StorePath = fc.Metadata.Path
	if fc.Metadata.Path == "" {
		bad("metadata.path", "missing: the file of the key metadata store (created when absent)")
	}
	sc.CatalogPath = fc.Catalog.Path
	if fc.Catalog.Path == "" {
		bad("catalog.path", "missing: the file of the cluster's key catalog (created when absent)")
	}
	if err := sc.Adapter.Validate(); err != nil {
		bad("partition/region/account_id", "%v", err)
	}
	// Members.
	if fc.Cluster.Bootstrap != nil {
		sc.Bootstrap = *fc.Cluster.Bootstrap
	}
	sc.Cluster.WriteQuorum = fc.Cluster.WriteQuorum
	if len(fc.Cluster.Members) == 0 {
		bad("cluster.members", "missing: at least one PKCS#11 token")
	}
	for i, m := range fc.Cluster.Members {
		field := fmt.Sprintf("cluster.members[%d]", i)
		if m.Name != "" {
			field += " (" + m.Name + ")"
		}
		mc, merrs := m.resolve(sc.Bootstrap)
		for _, e := range merrs {
			errs = append(errs, fmt.Errorf("%s.%w", field, e))
		}
		sc.Cluster.Members = append(sc.Cluster.Members, mc)
	}
	if len(errs) == 0 {
		if err := sc.Cluster.Validate(); err != nil {
			bad("cluster", "%v", err)
		}
	}
	// Callers.
	sc.SigV4 = kmshttp.DefaultSigV4Config()
	sc.SigV4.Region = sc.Adapter.Region
	if fc.Limits.MaxSkew.Duration > 0 {
		sc.SigV4.MaxSkew = fc.Limits.MaxSkew.Duration
	}
	if fc.Limits.ReplayGrace != nil {
		sc.SigV4.ReplayGrace = fc.Limits.ReplayGrace.Duration
	}
	if len(fc.Credentials) == 0 {
		bad("credentials", "missing: at least one access key for the callers")
	}
	for i, c := range fc.Credentials {
		field := fmt.Sprintf("credentials[%d]", i)
		secret, err := secretFrom(c.SecretAccessKeyFile, c.SecretAccessKeyEnv, c.SecretAccessKey)
		if err != nil {
			bad(field+".secret_access_key", "%v", err)
			continue
		}
		cr := kmshttp.Credential{AccessKeyID: c.AccessKeyID, SecretAccessKey: kmshttp.NewSecret(secret), PrincipalARN: c.PrincipalARN, Actions: c.Actions}
		if err := cr.Validate(); err != nil {
			bad(field, "%v", err)
		}
		sc.SigV4.Credentials = append(sc.SigV4.Credentials, cr)
	}
	if len(errs) == 0 {
		if err := sc.SigV4.Validate(); err != nil {
			bad("credentials", "%v", err)
		}
	}
	// Limits.
	if fc.Limits.MaxBodyBytes != 0 {
		sc.HTTP.MaxBodyBytes = fc.Limits.MaxBodyBytes
	}
	if fc.Limits.KeyCacheTTL != nil {
		sc.HTTP.KeyCacheTTL = fc.Limits.KeyCacheTTL.Duration
	}
	if err := sc.HTTP.Validate(); err != nil {
		bad("limits", "%v", err)
	}
	for _, d := range []struct {
		field string
		v     time.Duration
		dst   *time.Duration
	}{
		{"limits.read_timeout", fc.Limits.ReadTimeout.Duration, &sc.ReadTimeout},
		{"limits.write_timeout", fc.Limits.WriteTimeout.Duration, &sc.WriteTimeout},
		{"limits.idle_timeout", fc.Limits.IdleTimeout.Duration, &sc.IdleTimeout},
		{"limits.shutdown_timeout", fc.Limits.ShutdownTimeout.Duration, &sc.ShutdownTimeout},
	} {
		if d.v > 0 {
			*d.dst = d.v
		}
	}
	if len(errs) > 0 {
		return serverConfig{}, fmt.Errorf("configuration:\n  %w", joinLines(errs))
	}
	return sc, nil
}

func (m memberConfig) resolve(needSO bool) (cluster.MemberConfig, []error) {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, strings.ReplaceAll(fmt.Sprintf(format, a...), "\n", "; ")))
	}
	mc := cluster.MemberConfig{Name: m.Name, Weight: m.Weight}
	if m.Name == "" {
		bad("name", "missing")
	}
	fields := m.ModulePath != "" || m.TokenLabel != "" || m.TokenSerial != "" || m.Slot != nil
	switch {
	case m.URI != "" && fields:
		bad("uri", "give either uri or module_path/token_label/token_serial/slot, not both")
	case m.URI != "":
		cfg, err := hsm.ParseURI(m.URI)
		if err != nil {
			bad("uri", "%v", err)
		}
		mc.Token = cfg
	default:
		mc.Token = hsm.DefaultConfig()
		mc.Token.ModulePath, mc.Token.TokenLabel, mc.Token.TokenSerial, mc.Token.Slot = m.ModulePath, m.TokenLabel, m.TokenSerial, m.Slot
		if m.ModulePath == "" {
			bad("module_path", "missing: the PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so (or give uri)")
		} else if _, err := os.Stat(m.ModulePath); err != nil {
			bad("module_path", "%v", err)
		}
		if m.TokenLabel == "" && m.TokenSerial == "" && m.Slot == nil {
			bad("token_label", "missing: one of token_label, token_serial or slot selects the token")
		}
	}
	if m.PINFile != "" || m.PINEnv != "" || m.PIN != "" {
		pin, err := secretFrom(m.PINFile, m.PINEnv, m.PIN)
		if err != nil {
			bad("pin", "%v", err)
		} else {
			mc.Token.PIN = hsm.NewPIN(pin)
		}
	}
	if mc.Token.PIN.IsZero() {
		bad("pin", "missing: pin_file, pin_env or pin (or pin-source/pin-value in the uri)")
	}
	if m.MaxSessions != 0 {
		mc.Token.MaxSessions = m.MaxSessions
	}
	if m.CallTimeout.Duration != 0 {
		mc.Token.CallTimeout = m.CallTimeout.Duration
	}
	if m.SOPINFile != "" || m.SOPINEnv != "" || m.SOPIN != "" {
		so, err := secretFrom(m.SOPINFile, m.SOPINEnv, m.SOPIN)
		if err != nil {
			bad("so_pin", "%v", err)
		} else {
			mc.SOPIN = hsm.NewPIN(so)
		}
	} else if needSO {
		bad("so_pin", "missing: so_pin_file or so_pin_env, needed by cluster.bootstrap (set bootstrap: false once the cluster is set up)")
	}
	switch m.Role {
	case "", "active":
		mc.Role = cluster.Active
	case "standby":
		mc.Role = cluster.Standby
	default:
		bad("role", "%q is neither active nor standby", m.Role)
	}
	if m.Weight < 0 {
		bad("weight", "%d is negative", m.Weight)
	}
	return mc, errs
}

// secretFrom reads a secret from exactly one of a file (its first line),
// an environment variable, or a literal.
func secretFrom(file, env, literal string) (string, error) {
	n := 0
	for _, s := range []string{file, env, literal} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return "", errors.New("give exactly one of the _file, _env or literal forms")
	}
	switch {
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", err
		}
		line, _, _ := strings.Cut(string(b), "\n")
		if line = strings.TrimRight(line, "\r"); line == "" {
			return "", fmt.Errorf("%s is empty", file)
		}
		return line, nil
	case env != "":
		v := os.Getenv(env)
		if v == "" {
			return "", fmt.Errorf("environment variable %s is not set", env)
		}
		return v, nil
	}
	return literal, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

type lines []error

func (l lines) Error() string {
	var b strings.Builder
	for i, e := range l {
		if i > 0 {
			b.WriteString("\n  ")
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

func (l lines) Unwrap() []error { return l }

func joinLines(errs []error) error { return lines(errs) }

package hsm

import (
	"context"
	"log/slog"
)

// Op names an operation of a Token. Errors carry it, and an Interceptor
// sees it.
type Op string

// The operations.
const (
	OpOpen            Op = "open"
	OpLogin           Op = "login"
	OpProbe           Op = "probe"
	OpGenerateKey     Op = "generate-key"
	OpFindKey         Op = "find-key"
	OpListKeys        Op = "list-keys"
	OpDestroyKey      Op = "destroy-key"
	OpEncrypt         Op = "encrypt"
	OpDecrypt         Op = "decrypt"
	OpSign            Op = "sign"
	OpVerify          Op = "verify"
	OpMAC             Op = "mac"
	OpVerifyMAC       Op = "verify-mac"
	OpPublicKey       Op = "public-key"
	OpCheckValue      Op = "check-value"
	OpRandom          Op = "random"
	OpWrapKey         Op = "wrap-key"
	OpUnwrapKey       Op = "unwrap-key"
	OpImportKey       Op = "import-public-key"
	OpMarkTrusted     Op = "mark-trusted"
	OpGenerateWrapped Op = "generate-wrapped"
	OpInitToken       Op = "init-token" // InitToken, which has no Token
)

// An Interceptor wraps every unit of PKCS#11 work a Token does: opening a
// session and logging in, each operation, each probe. It may delay the
// call, block it, fail it with a CKR of its choice (the token then reacts
// exactly as if the module had returned that code), or run it and observe
// the result. softhsmtest uses it to inject faults; it also suits tracing.
//
// Intercept must call call at most once, and return its error when it
// does. It runs on the goroutine that would make the PKCS#11 call, so a
// blocked Intercept behaves as a stalled HSM: the caller returns at its
// deadline and the session is never reused (a call without any deadline,
// see NoCallTimeout, waits for it).
type Interceptor interface {
	Intercept(ctx context.Context, op Op, call func() error) error
}

// An Option sets a collaborator of a Token.
type Option func(*options)

type options struct {
	interceptor Interceptor
	logger      *slog.Logger
}

// WithInterceptor routes every PKCS#11 call of the token through i.
func WithInterceptor(i Interceptor) Option { return func(o *options) { o.interceptor = i } }

// WithLogger sets the logger for state changes (reconnects, evictions,
// health). Nil discards. Log lines never contain PINs or key material.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

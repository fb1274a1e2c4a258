package hsm

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"
)

// CKR is a PKCS#11 return value (CK_RV). It is an error, so a CKR can be
// found in any error chain with errors.As or compared with errors.Is:
//
//	errors.Is(err, hsm.CKR(pkcs11.CKR_SESSION_HANDLE_INVALID))
type CKR uint

// Error returns the symbolic name and value, e.g. "CKR_DEVICE_ERROR (0x30)".
func (c CKR) Error() string {
	// pkcs11.Error.Error() reads "pkcs11: 0x30: CKR_DEVICE_ERROR".
	s := pkcs11.Error(c).Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && strings.HasPrefix(s[i+2:], "CKR_") {
		return fmt.Sprintf("%s (0x%X)", s[i+2:], uint(c))
	}
	return fmt.Sprintf("CKR 0x%X", uint(c))
}

// Sentinel errors. Branch on them with errors.Is.
var (
	// ErrClosed is returned by every call on a closed Token.
	ErrClosed = errors.New("hsm: token closed")
	// ErrKeyNotFound means no key with the given ID exists on the token.
	ErrKeyNotFound = errors.New("hsm: key not found")
	// ErrKeyExists means a key with the given ID already exists on the token.
	ErrKeyExists = errors.New("hsm: key already exists")
	// ErrWrongKeyType means the key exists but cannot do the operation
	// (an AES key asked to sign, an RSA key asked for GCM, ...).
	ErrWrongKeyType = errors.New("hsm: key cannot perform this operation")
	// ErrInvalidInput means an argument is empty, too long or malformed.
	ErrInvalidInput = errors.New("hsm: invalid input")
	// ErrDecrypt is the deliberately vague error of every failed decryption
	// and unwrap of caller data: it never says whether the tag, the padding
	// or the key was wrong.
	ErrDecrypt = errors.New("hsm: decryption failed")
	// ErrVerify is the deliberately vague error of every failed signature or
	// MAC verification.
	ErrVerify = errors.New("hsm: verification failed")
	// ErrUnsupported means the token does not offer the mechanism or key
	// type the request needs. It is the request's problem, not the
	// token's: Classify says ClassCaller, so a cluster never marks a member
	// down for it.
	ErrUnsupported = errors.New("hsm: not supported by this token")
	// ErrTokenNotFound means no slot holds a token matching the selector.
	ErrTokenNotFound = errors.New("hsm: token not found")
	// ErrLogin means the token refused the PIN (incorrect, locked or
	// expired). The PIN itself never appears in any error.
	ErrLogin = errors.New("hsm: login failed")
	// ErrTimeout means a PKCS#11 call did not return within the token's
	// CallTimeout. The session it held is never reused and the token
	// reports itself unhealthy. It wraps context.DeadlineExceeded.
	ErrTimeout = fmt.Errorf("hsm: call timed out: %w", context.DeadlineExceeded)
)

// Error is the one error type of this package. It keeps the operation, the
// token and the PKCS#11 return value, and wraps the cause.
type Error struct {
	Op    Op     // the operation, e.g. OpEncrypt
	Token string // the token's label, for logs
	Code  CKR    // the PKCS#11 return value; 0 when none applies or it is hidden (decrypt, verify)
	Err   error  // the cause: a sentinel, a CKR, or ctx's error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("hsm: ")
	b.WriteString(string(e.Op))
	if e.Token != "" {
		b.WriteString(" on token ")
		b.WriteString(e.Token)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(strings.TrimPrefix(e.Err.Error(), "hsm: "))
	}
	if e.Code != 0 && !errors.Is(e.Err, e.Code) {
		b.WriteString(" (")
		b.WriteString(e.Code.Error())
		b.WriteString(")")
	}
	return b.String()
}

// Unwrap returns the cause and, when it is not already the cause, the CKR.
func (e *Error) Unwrap() []error {
	if e.Code != 0 && !errors.Is(e.Err, e.Code) {
		return []error{e.Err, e.Code}
	}
	return []error{e.Err}
}

// Class says whose fault an error is, which decides what a caller such as
// the cluster does next.
type Class int

const (
	// ClassNone is the class of a nil error.
	ClassNone Class = iota
	// ClassCaller: bad ciphertext, bad signature, bad argument, unknown
	// key, or a request this token cannot serve (ErrUnsupported: a
	// mechanism or key type it lacks). Never the token's fault, so never
	// held against its health.
	ClassCaller
	// ClassMember: the token failed (device error, lost session, timeout).
	// Retry on another member.
	ClassMember
	// ClassFatal: the token cannot serve anything until an operator acts
	// (wrong or locked PIN, write-protected token, token closed).
	ClassFatal
	// ClassContext: the caller's context was cancelled or passed its
	// deadline. Never held against the token.
	ClassContext
)

func (c Class) String() string {
	switch c {
	case ClassNone:
		return "none"
	case ClassCaller:
		return "caller"
	case ClassMember:
		return "member"
	case ClassFatal:
		return "fatal"
	case ClassContext:
		return "context"
	}
	return fmt.Sprintf("Class(%d)", int(c))
}

// Classify says whose fault err is.
func Classify(err error) Class {
	switch {
	case err == nil:
		return ClassNone
	case errors.Is(err, ErrTimeout):
		return ClassMember
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return ClassContext
	case errors.Is(err, ErrDecrypt), errors.Is(err, ErrVerify), errors.Is(err, ErrInvalidInput),
		errors.Is(err, ErrKeyNotFound), errors.Is(err, ErrKeyExists), errors.Is(err, ErrWrongKeyType),
		errors.Is(err, ErrUnsupported):
		return ClassCaller
	case errors.Is(err, ErrClosed), errors.Is(err, ErrLogin):
		return ClassFatal
	case errors.Is(err, ErrTokenNotFound):
		return ClassMember
	}
	var code CKR
	if errors.As(err, &code) {
		return classifyCKR(code)
	}
	return ClassMember
}

func classifyCKR(code CKR) Class {
	switch uint(code) {
	case pkcs11.CKR_OK:
		return ClassNone
	case pkcs11.CKR_ARGUMENTS_BAD, pkcs11.CKR_DATA_INVALID, pkcs11.CKR_DATA_LEN_RANGE,
		pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE,
		pkcs11.CKR_SIGNATURE_INVALID, pkcs11.CKR_SIGNATURE_LEN_RANGE,
		pkcs11.CKR_KEY_TYPE_INCONSISTENT, pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED,
		pkcs11.CKR_KEY_SIZE_RANGE, pkcs11.CKR_KEY_NOT_WRAPPABLE, pkcs11.CKR_KEY_UNEXTRACTABLE,
		pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_ATTRIBUTE_VALUE_INVALID,
		pkcs11.CKR_ATTRIBUTE_TYPE_INVALID, pkcs11.CKR_ATTRIBUTE_READ_ONLY,
		pkcs11.CKR_TEMPLATE_INCOMPLETE, pkcs11.CKR_TEMPLATE_INCONSISTENT,
		pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_FUNCTION_NOT_SUPPORTED,
		pkcs11.CKR_WRAPPED_KEY_INVALID, pkcs11.CKR_WRAPPED_KEY_LEN_RANGE,
		pkcs11.CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT, pkcs11.CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
		pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID,
		pkcs11.CKR_WRAPPING_KEY_HANDLE_INVALID, pkcs11.CKR_UNWRAPPING_KEY_HANDLE_INVALID:
		return ClassCaller
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE,
		pkcs11.CKR_PIN_EXPIRED, pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_USER_PIN_NOT_INITIALIZED,
		pkcs11.CKR_TOKEN_WRITE_PROTECTED, pkcs11.CKR_USER_TYPE_INVALID:
		return ClassFatal
	}
	return ClassMember
}

// sessionFatal reports whether a code means the session, and possibly
// every session of the module, is gone: the session must never be reused
// and every cached object handle is suspect.
func sessionFatal(code CKR) bool {
	switch uint(code) {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED,
		pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT,
		pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, pkcs11.CKR_SLOT_ID_INVALID,
		pkcs11.CKR_TOKEN_NOT_RECOGNIZED:
		return true
	}
	return false
}

// asCKR extracts a PKCS#11 return value from an error returned by
// miekg/pkcs11 or by an Interceptor. ok is false for other errors.
func asCKR(err error) (CKR, bool) {
	if err == nil { // the common case, without errors.As's allocation
		return 0, false
	}
	var pe pkcs11.Error
	if errors.As(err, &pe) {
		return CKR(pe), true
	}
	var c CKR
	if errors.As(err, &c) {
		return c, true
	}
	return 0, false
}

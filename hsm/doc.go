// Package hsm is one PKCS#11 token, done the way a cluster needs it: a
// bounded session pool that never shares a session between goroutines and
// never reuses a dead one, a key handle cache so that no operation on the
// hot path searches the token, a deadline on every call by default, and
// errors that keep the PKCS#11 return value and say whose fault they are.
//
// It is the only package of hsmkms that imports github.com/miekg/pkcs11,
// and it calls a module directly in one place: the single-part C_Encrypt,
// C_Decrypt and C_Sign of AES-GCM, signatures and MACs are taken from the
// module's function list and called with an output buffer sized here, where
// miekg/pkcs11 would ask the module for the length, allocate in C, call
// again and copy (direct.go). AppendEncryptGCM writes a ciphertext straight
// into the caller's memory that way. A module that needs more room than
// the mechanism says is finished through miekg/pkcs11.
//
// # Opening a token
//
// Open takes a Config (module path, token selector, PIN) or, through
// ParseURI, an RFC 7512 PKCS#11 URI:
//
//	cfg, err := hsm.ParseURI("pkcs11:token=member-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/run/secrets/pin")
//	tok, err := hsm.Open(ctx, cfg)
//	defer tok.Close()
//
// A module path is loaded and initialized once per process and reference
// counted; the last Token of a module finalizes it. InitToken initializes
// a new token (SoftHSM2's free slot, say) and sets its PINs through
// PKCS#11, so that no PIN goes on a command line.
//
// # Keys
//
// Keys are named by a KeyID, stored as CKA_ID, and created with a KeySpec
// (AES, HMAC, RSA, EC). Every key is a token object, private and
// sensitive. A key created with KeyOptions.Extractable can leave the token
// only wrapped, and only under a wrapping key the security officer marked
// trusted (CKA_WRAP_WITH_TRUSTED); CreateTrustedWrappingKey is that
// administrative path. Key material never enters this process in
// plaintext: UnwrapKey imports inside the token. One transient object
// breaks the extractable rule: a secret key imported with RSA-OAEP, whose
// blob does not show the material's length, is measured on a token that
// does not report it (SoftHSM) by wrapping a session copy, extractable for
// that instant, under a session key made for the purpose; both are
// destroyed before UnwrapKey returns.
//
// DestroyKey removes only the objects this library made for a KeyID (by
// their labels); another application's objects with the same CKA_ID stay.
//
// A key is resolved once with C_FindObjects, then its object handles are
// cached. The cache belongs to a session generation: when the module is
// restarted or the device lost, every cached handle is forgotten, because
// modules reuse handle numbers and a stale handle could silently name
// another object.
//
// # Concurrency
//
// A Token is safe for concurrent use. Each call borrows a session from a
// pool of at most Config.MaxSessions and runs its PKCS#11 calls on a
// worker goroutine (or, without any deadline, on the caller's: see
// below) that holds that session alone: SoftHSM aborts the process when
// two threads share a session, and other HSMs answer CKR_OPERATION_ACTIVE. Callers beyond the pool size wait, honouring their
// context.
//
// By default every call has a deadline: the caller's, or
// Config.CallTimeout when that comes first. A call that passes it returns
// at the deadline with ctx's error (ErrTimeout for our own timeout), its
// session is never reused and the token reports itself unhealthy
// (Health). The worker stuck in the module is accepted as lost; if the
// module answers after all, the worker finishes the call, so
// AppendEncryptGCM may still write into the spare room of the dst it was
// given. Cancelling a context never counts against the token.
//
// Config.CallTimeout set to NoCallTimeout drops our own bound: a call is
// then bounded by the caller's context alone. A call whose context can
// neither expire nor be cancelled (context.Background) has nothing to
// return at, so it runs on the caller's goroutine, as a direct PKCS#11
// call would, and waits for the module however long it takes; waiting
// says nothing about the token's health. This saves the handoff to a
// worker and back, thread wake-ups that cost 10–25 µs per call on small
// VMs (see BENCHMARKS.md); it suits a process that does its own
// supervision. Calls with a deadline or a cancellation, and the
// administrative calls, still run on a worker. A panic in a call on the
// caller's goroutine (from an Interceptor, say) reaches the caller; the
// call's session is then closed, not reused.
//
// When a call returns a session-fatal code (CKR_SESSION_HANDLE_INVALID,
// CKR_SESSION_CLOSED, CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED,
// CKR_TOKEN_NOT_PRESENT, CKR_CRYPTOKI_NOT_INITIALIZED, ...), the token
// starts a new session generation: idle sessions are dropped, cached
// handles forgotten, and the next session re-initializes the module if it
// was finalized, finds the token's slot again, and logs in. No session of
// the new generation is opened while a session of an older one is still
// borrowed, so an old handle can never reach a new session or object.
// CKR_USER_NOT_LOGGED_IN logs in again. The failed call is retried once.
//
// Close waits for in-flight calls and is idempotent; calls made while it
// waits, and calls still waiting for a session, return ErrClosed at once.
// A call without any bound (above) that hangs in the module keeps Close
// waiting with it.
//
// # Errors
//
// Every error is an *Error carrying the Op, the token and the CKR when
// there is one; errors.Is works with the sentinels (ErrKeyNotFound,
// ErrDecrypt, ErrVerify, ErrTimeout, ...) and with a CKR value. Classify
// says whose fault an error is: the caller's (bad input, bad ciphertext,
// bad signature, unknown key, a mechanism this token lacks), the member's
// (retry elsewhere), fatal (wrong or locked PIN, closed token) or the
// context's. Decryption and
// verification failures are deliberately vague: ErrDecrypt and ErrVerify,
// without a code.
//
// PINs live in a PIN value that never prints itself: String, GoString,
// every fmt verb, JSON, text and slog show "[REDACTED]". No error or log
// line contains a PIN or key material.
//
// # Vendors
//
// Differences between vendors are data in a Profile, detected from the
// token's manufacturer and model or set in Config: AWS CloudHSM writes its
// own AES-GCM IV back and caps GCM input at 16 KiB; SoftHSM 2.6 does
// RSA-OAEP with SHA-1 only and reports a bad GCM tag as CKR_GENERAL_ERROR.
// Whatever IV a token used is returned with the ciphertext, so any member
// can decrypt.
package hsm

package hsm

import (
	"context"

	"github.com/miekg/pkcs11"
)

// Test hooks into the token's internals.

// Finds returns how many C_FindObjects searches the token has run.
func Finds(t *Token) int64 { return t.finds.Load() }

// Generation returns the token's session generation.
func Generation(t *Token) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.gen
}

// CachedKeys returns how many keys have cached handles.
func CachedKeys(t *Token) int { return t.keys.len() }

// Direct reports whether the token calls the module's C_Encrypt, C_Decrypt
// and C_Sign itself (see direct.go), and with off set to true turns that
// off for every token on the module, returning a function that restores
// it.
func Direct(t *Token, off bool) (on bool, restore func()) {
	saved := t.mod.direct
	if off {
		t.mod.direct = directCalls{}
	}
	on = saved.encrypt.fn != nil && saved.decrypt.fn != nil && saved.sign.fn != nil
	return on, func() { t.mod.direct = saved }
}

// MACIntoRoom computes an HMAC-SHA256 under key id, finishing the
// signature through signOut with room bytes of output: it shows what a
// module asking for more room than given leads to.
func MACIntoRoom(ctx context.Context, t *Token, id KeyID, msg []byte, room int) (mac []byte, err error) {
	err = t.withKey(ctx, OpMAC, id, func(s *session, e *keyEntry) error {
		if err := t.mod.ctx.SignInit(s.h, mech(pkcs11.CKM_SHA256_HMAC, nil), e.priv); err != nil {
			return err
		}
		var err error
		mac, err = t.signOut(s, msg, room)
		return err
	})
	return mac, err
}

// EncryptIntoRoom starts an AES-GCM encryption under key id and finishes
// it through encryptInto with an output buffer of room bytes, then
// encrypts again normally on whatever session the pool gives: it shows
// what a module asking for more room than given leads to, and that the
// session is left usable.
func EncryptIntoRoom(ctx context.Context, t *Token, id KeyID, plaintext []byte, room int) (first, second error) {
	iv := make([]byte, GCMIVSize)
	first = t.withKey(ctx, OpEncrypt, id, func(s *session, e *keyEntry) error {
		params := pkcs11.NewGCMParams(iv, nil, GCMTagSize*8)
		defer params.Free()
		if err := t.mod.ctx.EncryptInit(s.h, mech(pkcs11.CKM_AES_GCM, params), e.priv); err != nil {
			return err
		}
		return t.encryptInto(s, plaintext, make([]byte, room))
	})
	_, _, second = t.EncryptGCM(ctx, id, nil, plaintext, nil)
	return first, second
}

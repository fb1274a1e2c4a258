package hsm

import (
	"context"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

// The administrative path. PKCS#11 lets only the security officer (SO) set
// CKA_TRUSTED, and login state belongs to the whole application: while the
// SO is logged in, no session of this process can use the user's keys. So
// these calls take every session slot of the token first (waiting for
// in-flight calls, honouring ctx), log the user out, do the SO's part, and
// log the user back in before anything else runs. Cached private object
// handles are dropped afterwards, since a new login may renumber them.
//
// An SO cannot see or change the user's private objects, so a trusted
// wrapping key is made in two steps: the SO generates it as a public
// (CKA_PRIVATE false) but sensitive, non-extractable-in-clear object with
// CKA_TRUSTED set, then the user copies it into a private object and
// destroys the public original. If any step fails, the original is
// destroyed: no half-created key is left behind.

// CreateTrustedWrappingKey creates an AES-256 key that can wrap and unwrap
// other keys and that the SO marks trusted, so that keys created
// extractable (wrap-with-trusted) can leave the token under it. With
// opts.Extractable the wrapping key itself may leave, wrapped under a
// trusted RSA public key (see ImportTrustedPublicKey): how a cluster hands
// its key-encryption key to a joining member.
func (t *Token) CreateTrustedWrappingKey(ctx context.Context, id KeyID, soPIN PIN, opts KeyOptions) (KeyInfo, error) {
	if err := id.Validate(); err != nil {
		return KeyInfo{}, t.wrap(OpMarkTrusted, err)
	}
	if soPIN.IsZero() {
		return KeyInfo{}, t.wrap(OpMarkTrusted, fmt.Errorf("%w: empty SO PIN", ErrInvalidInput))
	}
	opts.Usage = UsageWrap
	info := KeyInfo{ID: id, Spec: AES256, Usage: UsageWrap, Extractable: opts.Extractable, Trusted: true}
	err := t.asSO(ctx, soPIN, func(s *session, soLogin func() error, userLogin func() error) error {
		if err := t.ensureAbsent(s, id); err != nil {
			return err
		}
		if err := soLogin(); err != nil {
			return err
		}
		_, tmpl := templates(id, AES256, opts)
		tmpl = setAttr(tmpl, pkcs11.CKA_PRIVATE, false)
		tmpl = setAttr(tmpl, pkcs11.CKA_LABEL, "hsmkms-pending:"+string(id))
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_TRUSTED, true))
		orig, err := t.mod.ctx.GenerateKey(s.h, mech(pkcs11.CKM_AES_KEY_GEN, nil), tmpl)
		if err != nil {
			return err
		}
		err = userLogin()
		if err == nil {
			_, err = t.mod.ctx.CopyObject(s.h, orig, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, keyLabel(id, AES256)),
			})
		}
		// The public original goes in every case; as user or as SO it is
		// visible, being a public object.
		return errors.Join(err, t.mod.ctx.DestroyObject(s.h, orig))
	})
	if err != nil {
		return KeyInfo{}, err
	}
	return info, nil
}

// ImportTrustedPublicKey stores an RSA public key (DER SubjectPublicKeyInfo)
// that the SO marks trusted and that can wrap keys: a joining member's
// transport key, under which the donor wraps the cluster's key-encryption
// key. Only an operator who checked where the public key came from should
// call this: it is the ceremony's trust decision.
func (t *Token) ImportTrustedPublicKey(ctx context.Context, id KeyID, spec KeySpec, spki []byte, soPIN PIN) error {
	err := errors.Join(id.Validate(), spec.Validate())
	if err == nil && specs[spec].keyType != pkcs11.CKK_RSA {
		err = fmt.Errorf("%w: transport keys are RSA", ErrInvalidInput)
	}
	var keyAttrs []*pkcs11.Attribute
	if err == nil {
		keyAttrs, err = publicKeyAttrs(spki, spec)
	}
	if err == nil && soPIN.IsZero() {
		err = fmt.Errorf("%w: empty SO PIN", ErrInvalidInput)
	}
	if err != nil {
		return t.wrap(OpMarkTrusted, err)
	}
	return t.asSO(ctx, soPIN, func(s *session, soLogin func() error, userLogin func() error) error {
		if err := t.ensureAbsent(s, id); err != nil {
			return err
		}
		if err := soLogin(); err != nil {
			return err
		}
		tmpl := append([]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_TRUSTED, true),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
			pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(id)),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, keyLabel(id, spec)+":public"),
		}, keyAttrs...)
		_, err := t.mod.ctx.CreateObject(s.h, tmpl)
		return errors.Join(err, userLogin())
	})
}

// asSO runs fn with exclusive use of the token. fn logs the SO in with
// soLogin and the user back in with userLogin; asSO makes sure the user is
// logged in again whatever fn did.
func (t *Token) asSO(ctx context.Context, soPIN PIN, fn func(s *session, soLogin, userLogin func() error) error) error {
	if !t.closeMu.TryRLock() { // Close is under way
		return t.wrap(OpMarkTrusted, ErrClosed)
	}
	defer t.closeMu.RUnlock()
	if t.closed.Load() {
		return t.wrap(OpMarkTrusted, ErrClosed)
	}
	ctx, cancel := t.bound(ctx)
	defer cancel()
	// One administrative call at a time: two taking the pool's slots one
	// by one could each hold some and wait for the other's, for ever when
	// nothing bounds their contexts.
	if err := t.lockSO(ctx); err != nil {
		return t.wrap(OpMarkTrusted, err)
	}
	n := cap(t.sem)
	if err := t.acquire(ctx, n); err != nil {
		<-t.soSem
		return t.wrap(OpMarkTrusted, err)
	}
	// The worker gives every slot and the administrative slot back when it
	// is done, not when the caller returns: a call abandoned at its
	// deadline may still be logged in as the SO, and no other call may
	// run until it has logged the user back in.
	release := func() {
		for i := 1; i < n; i++ { // the worker's own slot is released by run
			<-t.sem
		}
		<-t.soSem
	}
	err := t.runThen(ctx, OpMarkTrusted, "", func(s *session, _ *keyEntry) error {
		state := "user"
		soLogin := func() error {
			if err := t.mod.ctx.Logout(s.h); err != nil {
				return err
			}
			state = "none"
			err := t.mod.ctx.Login(s.h, pkcs11.CKU_SO, soPIN.reveal())
			if code, ok := asCKR(err); ok && classifyCKR(code) == ClassFatal {
				return &Error{Op: OpMarkTrusted, Token: t.cfg.selector(), Code: code, Err: ErrLogin}
			}
			if err == nil {
				state = "so"
			}
			return err
		}
		userLogin := func() error {
			if state == "so" {
				if err := t.mod.ctx.Logout(s.h); err != nil {
					return err
				}
				state = "none"
			}
			if state == "none" {
				if err := t.mod.ctx.Login(s.h, pkcs11.CKU_USER, t.cfg.PIN.reveal()); err != nil {
					return err
				}
				state = "user"
			}
			return nil
		}
		err := fn(s, soLogin, userLogin)
		err = errors.Join(err, userLogin())
		// Cleared while every slot is still held, so that no call can use
		// a handle of an object this call destroyed (a module may give
		// its number to another object).
		t.keys.clear()
		return err
	}, release)
	return err
}

// setAttr replaces the value of attribute typ in a template.
func setAttr(tmpl []*pkcs11.Attribute, typ uint, v any) []*pkcs11.Attribute {
	for i, a := range tmpl {
		if a.Type == typ {
			tmpl[i] = pkcs11.NewAttribute(typ, v)
			return tmpl
		}
	}
	return append(tmpl, pkcs11.NewAttribute(typ, v))
}

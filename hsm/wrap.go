package hsm

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"slices"

	"github.com/miekg/pkcs11"
)

// WrapMechanism is how a key is wrapped.
type WrapMechanism int

// The wrapping mechanisms.
const (
	// AESKeyWrapPad is AES key wrap with padding (RFC 5649,
	// CKM_AES_KEY_WRAP_PAD) under an AES wrapping key: how a cluster copies
	// keys between members.
	AESKeyWrapPad WrapMechanism = iota + 1
	// RSAOAEP wraps a secret key with RSA-OAEP under an RSA public key (and
	// unwraps with its private key, a secret key or a PKCS#8 private key
	// small enough for one OAEP block): how key material is imported, and
	// how a cluster's wrapping key reaches a joining member.
	RSAOAEP
	// RSAAESKeyWrap is CKM_RSA_AES_KEY_WRAP as AWS KMS import uses it: an
	// ephemeral AES key wrapped with RSA-OAEP, followed by the key wrapped
	// under it with AES key wrap with padding. Unwrap only. Tokens without
	// the mechanism get the same result from two unwraps inside the token;
	// the ephemeral key is a session object, destroyed at once.
	RSAAESKeyWrap
)

// Wrapping names a mechanism and, for the RSA ones, the OAEP hash.
type Wrapping struct {
	Mechanism WrapMechanism
	Hash      crypto.Hash // OAEP and MGF1 hash for RSAOAEP and RSAAESKeyWrap
}

// WrapKey returns key id wrapped under wrappingKey. The key must be
// extractable; a key created wrap-with-trusted (every extractable key this
// package makes) leaves only under a wrapping key an SO marked trusted.
func (t *Token) WrapKey(ctx context.Context, wrappingKey, id KeyID, w Wrapping) ([]byte, error) {
	if err := errors.Join(wrappingKey.Validate(), id.Validate()); err != nil {
		return nil, t.wrap(OpWrapKey, err)
	}
	var out []byte
	err := t.do(ctx, OpWrapKey, "", func(s *session, _ *keyEntry) error {
		return t.refreshing([]KeyID{wrappingKey, id}, func() error { return t.wrapKey(s, wrappingKey, id, w, &out) })
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// wrapKey is WrapKey's work on session s.
func (t *Token) wrapKey(s *session, wrappingKey, id KeyID, w Wrapping, out *[]byte) error {
	wk, err := t.key(s, wrappingKey)
	if err != nil {
		return err
	}
	k, err := t.key(s, id)
	if err != nil {
		return err
	}
	if k.priv == 0 {
		return fmt.Errorf("%w: %s is a public key; there is nothing to wrap", ErrInvalidInput, id)
	}
	var m []*pkcs11.Mechanism
	var wh pkcs11.ObjectHandle
	switch w.Mechanism {
	case AESKeyWrapPad:
		if specs[wk.info.Spec].keyType != pkcs11.CKK_AES {
			return fmt.Errorf("%w: wrapping key %s is not AES", ErrWrongKeyType, wrappingKey)
		}
		m, wh = mech(pkcs11.CKM_AES_KEY_WRAP_PAD, nil), wk.priv
	case RSAOAEP:
		if specs[wk.info.Spec].keyType != pkcs11.CKK_RSA || !wk.hasPb {
			return fmt.Errorf("%w: wrapping key %s is not an RSA public key", ErrWrongKeyType, wrappingKey)
		}
		if k.info.Spec.Asymmetric() {
			return fmt.Errorf("%w: RSA-OAEP wraps secret keys only", ErrInvalidInput)
		}
		params, err := t.oaepParams(w.Hash)
		if err != nil {
			return err
		}
		m, wh = mech(pkcs11.CKM_RSA_PKCS_OAEP, params), wk.pub
	default:
		return fmt.Errorf("%w: wrap mechanism %d", ErrInvalidInput, w.Mechanism)
	}
	wrapped, err := t.mod.ctx.WrapKey(s.h, m, wh, k.priv)
	if c, ok := asCKR(err); ok && (c == CKR(pkcs11.CKR_KEY_NOT_WRAPPABLE) || c == CKR(pkcs11.CKR_KEY_UNEXTRACTABLE)) {
		return &Error{Code: c, Err: fmt.Errorf("%w: %s cannot be wrapped under %s (not extractable, or the wrapping key is not trusted)", ErrWrongKeyType, id, wrappingKey)}
	}
	if err != nil {
		return keyErr(err)
	}
	*out = wrapped
	return nil
}

// staleHandle reports whether err says that a cached object handle no
// longer names its object: the key was destroyed, and perhaps made again
// under its ID, behind the cache's back (by another Token on the token, or
// another application).
func staleHandle(err error) bool {
	code, ok := asCKR(err)
	if !ok {
		return false
	}
	switch uint(code) {
	case pkcs11.CKR_KEY_HANDLE_INVALID, pkcs11.CKR_OBJECT_HANDLE_INVALID,
		pkcs11.CKR_WRAPPING_KEY_HANDLE_INVALID, pkcs11.CKR_UNWRAPPING_KEY_HANDLE_INVALID:
		return true
	}
	return false
}

// refreshing runs fn, which resolves the keys ids itself (with t.key), and
// when fn fails on a stale handle, drops ids from the cache and runs fn
// once more, so that they are looked up again: what apply does for the
// one key of a keyed call, for calls that use more than one key. A key
// that is really gone is then ErrKeyNotFound. fn must leave nothing behind
// when it fails.
func (t *Token) refreshing(ids []KeyID, fn func() error) error {
	err := fn()
	if staleHandle(err) {
		for _, id := range ids {
			t.keys.drop(id)
		}
		err = fn()
	}
	return err
}

// UnwrapRequest describes a key to create on the token from a wrapped blob.
type UnwrapRequest struct {
	WrappingKey KeyID // AES key (AESKeyWrapPad) or RSA key pair (RSAOAEP, RSAAESKeyWrap)
	Wrapping    Wrapping
	Wrapped     []byte
	ID          KeyID
	Spec        KeySpec
	Options     KeyOptions
	// PublicKey is the DER SubjectPublicKeyInfo of an asymmetric key; the
	// token gets a public key object from it, checked against the private
	// key before the pair is kept. It is required with AESKeyWrapPad.
	// Without it (RSAOAEP, RSAAESKeyWrap: a PKCS#8 private key, as AWS KMS
	// import takes it) the public key is derived inside the token: an RSA
	// key's from the private key object's modulus and public exponent; an
	// EC key's recovered from an ECDSA signature the token makes, so the
	// key must be allowed to sign (Options.Usage UsageSign), and keys on
	// curves Go lacks (secp256k1) are ErrUnsupported. Material of another
	// key type, size or curve than Spec is ErrInvalidInput.
	PublicKey []byte
	// SamePair says that PublicKey and Wrapped come from one key pair
	// inside an HSM, as GenerateWrapped returns them, so the check that
	// they belong together (a signature, or an encryption, with the new
	// pair) is skipped. Leave it false for a public key from anywhere
	// else: a wrong one would make a pair whose signatures never verify.
	SamePair bool
}

// UnwrapKey creates key req.ID from a wrapped blob, inside the token: the
// key material is never in this process. A blob that does not unwrap is
// ErrDecrypt. On any failure nothing is left on the token.
func (t *Token) UnwrapKey(ctx context.Context, req UnwrapRequest) (KeyInfo, error) {
	err := errors.Join(req.WrappingKey.Validate(), req.ID.Validate(), req.Spec.Validate())
	if err == nil && (len(req.Wrapped) == 0 || len(req.Wrapped) > MaxDataSize) {
		err = fmt.Errorf("%w: wrapped key of %d bytes", ErrInvalidInput, len(req.Wrapped))
	}
	var pubAttrs []*pkcs11.Attribute
	derive := false // the public key is derived from the unwrapped private key
	if err == nil && req.Spec.Asymmetric() {
		switch {
		case len(req.PublicKey) > 0:
			pubAttrs, err = publicKeyAttrs(req.PublicKey, req.Spec)
		case req.Wrapping.Mechanism == AESKeyWrapPad:
			err = fmt.Errorf("%w: a private key unwrapped with AESKeyWrapPad needs its PublicKey", ErrInvalidInput)
		default:
			derive = true
		}
	}
	if err != nil {
		return KeyInfo{}, t.wrap(OpUnwrapKey, err)
	}
	opts := req.Options
	if opts.Usage == 0 {
		opts.Usage = req.Spec.DefaultUsage()
	}
	info := KeyInfo{ID: req.ID, Spec: req.Spec, Usage: opts.Usage, Extractable: opts.Extractable}
	err = t.do(ctx, OpUnwrapKey, "", func(s *session, _ *keyEntry) error {
		return t.refreshing([]KeyID{req.WrappingKey}, func() error { return t.unwrapKey(s, req, opts, info, pubAttrs, derive) })
	})
	if err != nil {
		return KeyInfo{}, err
	}
	return info, nil
}

// unwrapKey is UnwrapKey's work on session s.
func (t *Token) unwrapKey(s *session, req UnwrapRequest, opts KeyOptions, info KeyInfo, pubAttrs []*pkcs11.Attribute, derive bool) error {
	if err := t.ensureAbsent(s, req.ID); err != nil {
		return err
	}
	wk, err := t.key(s, req.WrappingKey)
	if err != nil {
		return err
	}
	pubT, privT := templates(req.ID, req.Spec, opts)
	privT = unwrapTemplate(privT)
	pubT = append(unwrapTemplate(pubT), pubAttrs...)
	var check func(priv, pub pkcs11.ObjectHandle) error
	if req.Spec.Asymmetric() && !req.SamePair && !derive {
		// A session copy of the pair that may sign and verify, for a
		// key that may not: from the same blob and public key.
		probe := func() (priv, pub pkcs11.ObjectHandle, err error) {
			pubT, privT := templates(req.ID, req.Spec, KeyOptions{Usage: UsageSign})
			priv, err = t.unwrap(s, wk, req, setAttr(unwrapTemplate(privT), pkcs11.CKA_TOKEN, false))
			if err != nil {
				return 0, 0, err
			}
			pub, err = t.mod.ctx.CreateObject(s.h, setAttr(append(unwrapTemplate(pubT), pubAttrs...), pkcs11.CKA_TOKEN, false))
			if err != nil {
				_ = t.mod.ctx.DestroyObject(s.h, priv)
				return 0, 0, err
			}
			return priv, pub, nil
		}
		check = func(priv, pub pkcs11.ObjectHandle) error {
			return t.checkPair(s, &keyEntry{info: info, priv: priv, pub: pub, hasPb: true}, probe)
		}
	}
	priv, pub, err := t.staged(s, func(onToken bool) (priv, pub pkcs11.ObjectHandle, err error) {
		priv, err = t.unwrap(s, wk, req, setAttr(privT, pkcs11.CKA_TOKEN, onToken))
		if err != nil || !req.Spec.Asymmetric() {
			return priv, 0, err
		}
		pt := pubT
		if derive {
			attrs, err := t.derivePublic(s, priv, req.Spec)
			if err != nil {
				_ = t.mod.ctx.DestroyObject(s.h, priv)
				return 0, 0, err
			}
			pt = append(slices.Clip(pubT), attrs...)
		}
		if pub, err = t.mod.ctx.CreateObject(s.h, setAttr(pt, pkcs11.CKA_TOKEN, onToken)); err != nil {
			_ = t.mod.ctx.DestroyObject(s.h, priv)
			return 0, 0, err
		}
		return priv, pub, nil
	}, check)
	if err != nil {
		return err
	}
	t.keys.put(&keyEntry{gen: s.gen, info: info, priv: priv, pub: pub, hasPb: pub != 0})
	return nil
}

// unwrapTemplate drops the attributes an unwrap or a public key import
// must not carry (the module derives them from the key material).
func unwrapTemplate(tmpl []*pkcs11.Attribute) []*pkcs11.Attribute {
	out := tmpl[:0:0]
	for _, a := range tmpl {
		switch a.Type {
		case pkcs11.CKA_VALUE_LEN, pkcs11.CKA_MODULUS_BITS, pkcs11.CKA_PUBLIC_EXPONENT, pkcs11.CKA_EC_PARAMS:
			continue
		}
		out = append(out, a)
	}
	return out
}

// unwrap runs the unwrap mechanism of req under wk.
func (t *Token) unwrap(s *session, wk *keyEntry, req UnwrapRequest, tmpl []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	wkType := specs[wk.info.Spec].keyType
	switch req.Wrapping.Mechanism {
	case AESKeyWrapPad:
		if wkType != pkcs11.CKK_AES {
			return 0, fmt.Errorf("%w: unwrapping key %s is not AES", ErrWrongKeyType, req.WrappingKey)
		}
		if err := checkKWPLen(req.Spec, req.Wrapped); err != nil {
			return 0, err
		}
		h, err := t.mod.ctx.UnwrapKey(s.h, mech(pkcs11.CKM_AES_KEY_WRAP_PAD, nil), wk.priv, req.Wrapped, tmpl)
		return h, t.unwrapErr(materialErr(req.Spec, err))
	case RSAOAEP, RSAAESKeyWrap:
		if wkType != pkcs11.CKK_RSA {
			return 0, fmt.Errorf("%w: unwrapping key %s is not RSA", ErrWrongKeyType, req.WrappingKey)
		}
		params, err := t.oaepParams(req.Wrapping.Hash)
		if err != nil {
			return 0, err
		}
		if req.Wrapping.Mechanism == RSAOAEP {
			m := mech(pkcs11.CKM_RSA_PKCS_OAEP, params)
			h, err := t.mod.ctx.UnwrapKey(s.h, m, wk.priv, req.Wrapped, tmpl)
			if err != nil {
				return 0, t.unwrapErr(materialErr(req.Spec, err))
			}
			if !req.Spec.Asymmetric() {
				if err := t.checkSecretLen(s, wk, req, m, h); err != nil {
					_ = t.mod.ctx.DestroyObject(s.h, h)
					return 0, err
				}
			}
			return h, nil
		}
		n := (specs[wk.info.Spec].bits + 7) / 8
		if len(req.Wrapped) <= n {
			return 0, ErrDecrypt
		}
		eph, err := t.mod.ctx.UnwrapKey(s.h, mech(pkcs11.CKM_RSA_PKCS_OAEP, params), wk.priv, req.Wrapped[:n], []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
		})
		if err != nil {
			return 0, t.unwrapErr(err)
		}
		defer func() { _ = t.mod.ctx.DestroyObject(s.h, eph) }()
		if err := checkKWPLen(req.Spec, req.Wrapped[n:]); err != nil {
			return 0, err
		}
		h, err := t.mod.ctx.UnwrapKey(s.h, mech(pkcs11.CKM_AES_KEY_WRAP_PAD, nil), eph, req.Wrapped[n:], tmpl)
		return h, t.unwrapErr(materialErr(req.Spec, err))
	}
	return 0, fmt.Errorf("%w: wrap mechanism %d", ErrInvalidInput, req.Wrapping.Mechanism)
}

// checkKWPLen checks, for a secret key, that an AES key wrap with padding
// blob (RFC 5649: 8 bytes of integrity data and the key padded to 8 bytes)
// holds a key of the spec's length. Some modules cannot report an
// unwrapped key's length (SoftHSM reads CKA_VALUE_LEN as 0), so this is
// where 128-bit material meant to be a 256-bit key is caught.
func checkKWPLen(spec KeySpec, blob []byte) error {
	si := specs[spec]
	if si.class != pkcs11.CKO_SECRET_KEY {
		return nil
	}
	if want := kwpLen(si.bits / 8); len(blob) != want {
		return fmt.Errorf("%w: a wrapped %s key is %d bytes, got %d", ErrInvalidInput, spec, want, len(blob))
	}
	return nil
}

// kwpLen is the length of n bytes wrapped with AES key wrap with padding.
func kwpLen(n int) int { return 8 + (n+7)/8*8 }

// checkSecretLen checks that secret key h, just unwrapped from req.Wrapped
// with RSA-OAEP mechanism m, holds material of req.Spec's length, which an
// OAEP blob does not show. A token that reports the length (CKA_VALUE_LEN)
// is taken at its word. SoftHSM reads it as 0 after an unwrap and refuses
// it in the unwrap template (CKR_ATTRIBUTE_READ_ONLY), so the material is
// measured inside the token instead: unwrapped once more, as a session
// object that may leave only wrapped, it is wrapped under a session key
// made for the purpose, and the length of that wrapping is checked as
// checkKWPLen checks a caller's: to the 8 bytes AES key wrap pads to. Both
// session objects are destroyed before this returns, so the wrapped copy
// is under a key that no longer exists. Material of another length is
// ErrInvalidInput; the caller destroys h.
func (t *Token) checkSecretLen(s *session, wk *keyEntry, req UnwrapRequest, m []*pkcs11.Mechanism, h pkcs11.ObjectHandle) error {
	si := specs[req.Spec]
	a, err := t.attrs(s, h, pkcs11.CKA_VALUE_LEN)
	if err != nil {
		return err
	}
	if n := int(bytesToUint(a[pkcs11.CKA_VALUE_LEN])); n != 0 {
		if n != si.bits/8 {
			return fmt.Errorf("%w: the unwrapped material is %d bytes; a %s key is %d", ErrInvalidInput, n, req.Spec, si.bits/8)
		}
		return nil
	}
	kek, err := t.mod.ctx.GenerateKey(s.h, mech(pkcs11.CKM_AES_KEY_GEN, nil), []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
	})
	if err != nil {
		return err
	}
	defer func() { _ = t.mod.ctx.DestroyObject(s.h, kek) }()
	probe, err := t.mod.ctx.UnwrapKey(s.h, m, wk.priv, req.Wrapped, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, si.keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, false),
	})
	if err != nil {
		return t.unwrapErr(err)
	}
	defer func() { _ = t.mod.ctx.DestroyObject(s.h, probe) }()
	wrapped, err := t.mod.ctx.WrapKey(s.h, mech(pkcs11.CKM_AES_KEY_WRAP_PAD, nil), kek, probe)
	if err != nil {
		return err
	}
	if len(wrapped) != kwpLen(si.bits/8) {
		return fmt.Errorf("%w: the unwrapped material is %d to %d bytes; a %s key is %d", ErrInvalidInput, len(wrapped)-15, len(wrapped)-8, req.Spec, si.bits/8)
	}
	return nil
}

// materialErr makes CKR_FUNCTION_FAILED from the unwrap of a private key
// ErrInvalidInput: the blob unwrapped, but what it holds is not a PKCS#8
// private key of the template's key type (SoftHSM's answer to EC material
// unwrapped as an RSA key).
func materialErr(spec KeySpec, err error) error {
	if c, ok := asCKR(err); ok && spec.Asymmetric() && c == CKR(pkcs11.CKR_FUNCTION_FAILED) {
		return &Error{Code: c, Err: fmt.Errorf("%w: the unwrapped material is not a %s private key", ErrInvalidInput, spec)}
	}
	return err
}

// unwrapErr makes a blob that does not unwrap the vague ErrDecrypt: the
// standard codes for it, and those the token's profile lists as its
// decrypt failures (SoftHSM answers a blob that fails its integrity check
// with CKR_GENERAL_ERROR, which on other tokens is a device failure, the
// member's). A template problem is ours, not the caller's, and stays
// visible; so does an error already typed here.
func (t *Token) unwrapErr(err error) error {
	code, ok := asCKR(err)
	var e *Error
	if !ok || errors.As(err, &e) {
		return err
	}
	switch uint(code) {
	case pkcs11.CKR_WRAPPED_KEY_INVALID, pkcs11.CKR_WRAPPED_KEY_LEN_RANGE, pkcs11.CKR_ENCRYPTED_DATA_INVALID,
		pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE, pkcs11.CKR_DATA_INVALID, pkcs11.CKR_DATA_LEN_RANGE,
		pkcs11.CKR_ARGUMENTS_BAD:
		return ErrDecrypt
	}
	if slices.Contains(t.profile().DecryptFailureCodes, code) {
		return ErrDecrypt
	}
	return keyErr(err)
}

// checkPair proves that an unwrapped private key and the public key made
// from the caller's SubjectPublicKeyInfo belong together. An RSA private
// key carries its modulus and public exponent, which must be the public
// key's. An EC private key carries its curve, which must be the public
// key's, but not its point, so the pair is proved with a signature: by
// the key itself when it may sign, else by a session copy of the pair that
// may sign and verify, which probe makes from the same blob and public key
// and which is destroyed at once. An RSA key that may sign or encrypt is
// also tried at that, which shows that its private half works.
func (t *Token) checkPair(s *session, e *keyEntry, probe func() (priv, pub pkcs11.ObjectHandle, err error)) error {
	si := specs[e.info.Spec]
	mismatch := fmt.Errorf("%w: public key does not match the unwrapped private key", ErrInvalidInput)
	signer, verifier := e.priv, e.pub
	if e.info.Usage&UsageSign == 0 {
		signer, verifier = 0, 0
	}
	switch si.keyType {
	case pkcs11.CKK_RSA:
		priv, err := t.attrs(s, e.priv, pkcs11.CKA_MODULUS, pkcs11.CKA_PUBLIC_EXPONENT)
		if err != nil {
			return err
		}
		pub, err := t.attrs(s, e.pub, pkcs11.CKA_MODULUS, pkcs11.CKA_PUBLIC_EXPONENT)
		if err != nil {
			return err
		}
		n := new(big.Int).SetBytes(priv[pkcs11.CKA_MODULUS])
		if n.Sign() == 0 || n.Cmp(new(big.Int).SetBytes(pub[pkcs11.CKA_MODULUS])) != 0 {
			return mismatch
		}
		if exp, ok := priv[pkcs11.CKA_PUBLIC_EXPONENT]; ok && new(big.Int).SetBytes(exp).Cmp(new(big.Int).SetBytes(pub[pkcs11.CKA_PUBLIC_EXPONENT])) != 0 {
			return mismatch
		}
	case pkcs11.CKK_EC:
		a, err := t.attrs(s, e.priv, pkcs11.CKA_EC_PARAMS)
		if err != nil {
			return err
		}
		var oid asn1.ObjectIdentifier
		if rest, err := asn1.Unmarshal(a[pkcs11.CKA_EC_PARAMS], &oid); err != nil || len(rest) != 0 || !oid.Equal(si.curve) {
			return mismatch
		}
		if signer == 0 && probe != nil {
			priv, pub, err := probe()
			if err != nil {
				return err
			}
			defer func() {
				_ = t.mod.ctx.DestroyObject(s.h, priv)
				_ = t.mod.ctx.DestroyObject(s.h, pub)
			}()
			signer, verifier = priv, pub
		}
	}
	switch {
	case signer != 0:
		digest := sha256.Sum256([]byte("hsmkms pair check"))
		sc := PKCS1v15
		if si.keyType == pkcs11.CKK_EC {
			sc = ECDSA
		}
		m, data, err := signMechanism(sc, crypto.SHA256, digest[:], si.keyType)
		if err != nil {
			return err
		}
		if err := t.mod.ctx.SignInit(s.h, m, signer); err != nil {
			return err
		}
		sig, err := t.mod.ctx.Sign(s.h, data)
		if err != nil {
			return err
		}
		if err := t.mod.ctx.VerifyInit(s.h, m, verifier); err != nil {
			return err
		}
		if verifyErr(t.mod.ctx.Verify(s.h, data, sig)) != nil {
			return mismatch
		}
	case e.info.Usage&UsageEncrypt != 0 && si.keyType == pkcs11.CKK_RSA:
		params, err := t.oaepParams(crypto.SHA1)
		if err != nil {
			return err
		}
		probe := make([]byte, 32)
		if _, err := rand.Read(probe); err != nil {
			return err
		}
		if err := t.mod.ctx.EncryptInit(s.h, mech(pkcs11.CKM_RSA_PKCS_OAEP, params), e.pub); err != nil {
			return err
		}
		ct, err := t.mod.ctx.Encrypt(s.h, probe)
		if err != nil {
			return err
		}
		if err := t.mod.ctx.DecryptInit(s.h, mech(pkcs11.CKM_RSA_PKCS_OAEP, params), e.priv); err != nil {
			return err
		}
		pt, err := t.mod.ctx.Decrypt(s.h, ct)
		if err != nil || string(pt) != string(probe) {
			return mismatch
		}
	}
	return nil
}

// GenerateWrapped generates a key of spec inside the token as a session
// object, wraps it under wrappingKey with AES key wrap with padding,
// destroys it, and returns the wrapped key and, for a key pair, its public
// key (DER SubjectPublicKeyInfo). The key is a token object nowhere until
// UnwrapKey puts it on tokens, so a cluster creates a key on N tokens with
// one generation and N unwraps in parallel, rather than a token write
// followed by the copies. The key material never leaves an HSM unwrapped.
// The wrapping key must be trusted: the session key is, like every
// extractable key here, wrap-with-trusted.
func (t *Token) GenerateWrapped(ctx context.Context, wrappingKey KeyID, spec KeySpec, opts KeyOptions) (wrapped, publicKey []byte, err error) {
	if err := errors.Join(wrappingKey.Validate(), spec.Validate()); err != nil {
		return nil, nil, t.wrap(OpGenerateWrapped, err)
	}
	if opts.Usage == 0 {
		opts.Usage = spec.DefaultUsage()
	}
	opts.Extractable = true
	var outW, outPub []byte // written by the worker; read only once do returned nil
	err = t.do(ctx, OpGenerateWrapped, "", func(s *session, _ *keyEntry) error {
		return t.refreshing([]KeyID{wrappingKey}, func() error { return t.generateWrapped(s, wrappingKey, spec, opts, &outW, &outPub) })
	})
	if err != nil {
		return nil, nil, err
	}
	return outW, outPub, nil
}

// generateWrapped is GenerateWrapped's work on session s.
func (t *Token) generateWrapped(s *session, wrappingKey KeyID, spec KeySpec, opts KeyOptions, outW, outPub *[]byte) error {
	wk, err := t.key(s, wrappingKey)
	if err != nil {
		return err
	}
	if specs[wk.info.Spec].keyType != pkcs11.CKK_AES || wk.priv == 0 {
		return fmt.Errorf("%w: wrapping key %s is not AES", ErrWrongKeyType, wrappingKey)
	}
	pubT, privT := templates("session", spec, opts)
	priv, pub, err := t.generate(s, spec, setAttr(pubT, pkcs11.CKA_TOKEN, false), setAttr(privT, pkcs11.CKA_TOKEN, false))
	if err != nil {
		return err
	}
	defer func() {
		_ = t.mod.ctx.DestroyObject(s.h, priv)
		if pub != 0 {
			_ = t.mod.ctx.DestroyObject(s.h, pub)
		}
	}()
	var pubDER []byte
	if pub != 0 {
		if pubDER, err = t.spki(s, pub, spec); err != nil {
			return err
		}
	}
	wrapped, err := t.mod.ctx.WrapKey(s.h, mech(pkcs11.CKM_AES_KEY_WRAP_PAD, nil), wk.priv, priv)
	if c, ok := asCKR(err); ok && (c == CKR(pkcs11.CKR_KEY_NOT_WRAPPABLE) || c == CKR(pkcs11.CKR_KEY_UNEXTRACTABLE)) {
		return &Error{Code: c, Err: fmt.Errorf("%w: %s is not a trusted wrapping key", ErrWrongKeyType, wrappingKey)}
	}
	if err != nil {
		return err
	}
	*outW, *outPub = wrapped, pubDER
	return nil
}

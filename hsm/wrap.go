package hsm

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
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
		out, err = t.mod.ctx.WrapKey(s.h, m, wh, k.priv)
		if c, ok := asCKR(err); ok && (c == CKR(pkcs11.CKR_KEY_NOT_WRAPPABLE) || c == CKR(pkcs11.CKR_KEY_UNEXTRACTABLE)) {
			return &Error{Code: c, Err: fmt.Errorf("%w: %s cannot be wrapped under %s (not extractable, or the wrapping key is not trusted)", ErrWrongKeyType, id, wrappingKey)}
		}
		return keyErr(err)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
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
			check = func(priv, pub pkcs11.ObjectHandle) error {
				return t.checkPair(s, &keyEntry{info: info, priv: priv, pub: pub, hasPb: true})
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
	})
	if err != nil {
		return KeyInfo{}, err
	}
	return info, nil
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
		return h, unwrapErr(materialErr(req.Spec, err))
	case RSAOAEP, RSAAESKeyWrap:
		if wkType != pkcs11.CKK_RSA {
			return 0, fmt.Errorf("%w: unwrapping key %s is not RSA", ErrWrongKeyType, req.WrappingKey)
		}
		params, err := t.oaepParams(req.Wrapping.Hash)
		if err != nil {
			return 0, err
		}
		if req.Wrapping.Mechanism == RSAOAEP {
			h, err := t.mod.ctx.UnwrapKey(s.h, mech(pkcs11.CKM_RSA_PKCS_OAEP, params), wk.priv, req.Wrapped, tmpl)
			return h, unwrapErr(materialErr(req.Spec, err))
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
			return 0, unwrapErr(err)
		}
		defer func() { _ = t.mod.ctx.DestroyObject(s.h, eph) }()
		if err := checkKWPLen(req.Spec, req.Wrapped[n:]); err != nil {
			return 0, err
		}
		h, err := t.mod.ctx.UnwrapKey(s.h, mech(pkcs11.CKM_AES_KEY_WRAP_PAD, nil), eph, req.Wrapped[n:], tmpl)
		return h, unwrapErr(materialErr(req.Spec, err))
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
	if want := 8 + (si.bits/8+7)/8*8; len(blob) != want {
		return fmt.Errorf("%w: a wrapped %s key is %d bytes, got %d", ErrInvalidInput, spec, want, len(blob))
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

// unwrapErr makes a blob that does not unwrap the vague ErrDecrypt. A
// template problem is ours, not the caller's, and stays visible.
func unwrapErr(err error) error {
	code, ok := asCKR(err)
	if !ok {
		return err
	}
	switch uint(code) {
	case pkcs11.CKR_WRAPPED_KEY_INVALID, pkcs11.CKR_WRAPPED_KEY_LEN_RANGE, pkcs11.CKR_ENCRYPTED_DATA_INVALID,
		pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE, pkcs11.CKR_DATA_INVALID, pkcs11.CKR_DATA_LEN_RANGE,
		pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_ARGUMENTS_BAD:
		return ErrDecrypt
	}
	return keyErr(err)
}

// checkPair proves that an unwrapped private key and the public key made
// from the caller's SubjectPublicKeyInfo belong together.
func (t *Token) checkPair(s *session, e *keyEntry) error {
	si := specs[e.info.Spec]
	mismatch := fmt.Errorf("%w: public key does not match the unwrapped private key", ErrInvalidInput)
	switch {
	case e.info.Usage&UsageSign != 0:
		digest := sha256.Sum256([]byte("hsmkms pair check"))
		sc := PKCS1v15
		if si.keyType == pkcs11.CKK_EC {
			sc = ECDSA
		}
		m, data, err := signMechanism(sc, crypto.SHA256, digest[:], si.keyType)
		if err != nil {
			return err
		}
		if err := t.mod.ctx.SignInit(s.h, m, e.priv); err != nil {
			return err
		}
		sig, err := t.mod.ctx.Sign(s.h, data)
		if err != nil {
			return err
		}
		if err := t.mod.ctx.VerifyInit(s.h, m, e.pub); err != nil {
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
	si := specs[spec]
	var outW, outPub []byte // written by the worker; read only once do returned nil
	err = t.do(ctx, OpGenerateWrapped, "", func(s *session, _ *keyEntry) error {
		wk, err := t.key(s, wrappingKey)
		if err != nil {
			return err
		}
		if specs[wk.info.Spec].keyType != pkcs11.CKK_AES || wk.priv == 0 {
			return fmt.Errorf("%w: wrapping key %s is not AES", ErrWrongKeyType, wrappingKey)
		}
		pubT, privT := templates("session", spec, opts)
		privT = setAttr(privT, pkcs11.CKA_TOKEN, false)
		var priv, pub pkcs11.ObjectHandle
		switch si.keyType {
		case pkcs11.CKK_AES:
			priv, err = t.mod.ctx.GenerateKey(s.h, mech(pkcs11.CKM_AES_KEY_GEN, nil), privT)
		case pkcs11.CKK_GENERIC_SECRET:
			priv, err = t.mod.ctx.GenerateKey(s.h, mech(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil), privT)
		case pkcs11.CKK_RSA:
			pub, priv, err = t.mod.ctx.GenerateKeyPair(s.h, mech(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil), setAttr(pubT, pkcs11.CKA_TOKEN, false), privT)
		case pkcs11.CKK_EC:
			pub, priv, err = t.mod.ctx.GenerateKeyPair(s.h, mech(pkcs11.CKM_EC_KEY_PAIR_GEN, nil), setAttr(pubT, pkcs11.CKA_TOKEN, false), privT)
		}
		if c, ok := asCKR(err); ok && (c == CKR(pkcs11.CKR_CURVE_NOT_SUPPORTED) || c == CKR(pkcs11.CKR_DOMAIN_PARAMS_INVALID) || c == CKR(pkcs11.CKR_MECHANISM_INVALID)) {
			return &Error{Code: c, Err: fmt.Errorf("%w: key spec %s", ErrUnsupported, spec)}
		}
		if err != nil {
			return err
		}
		defer func() {
			_ = t.mod.ctx.DestroyObject(s.h, priv)
			if pub != 0 {
				_ = t.mod.ctx.DestroyObject(s.h, pub)
			}
		}()
		if pub != 0 {
			if outPub, err = t.spki(s, pub, spec); err != nil {
				return err
			}
		}
		outW, err = t.mod.ctx.WrapKey(s.h, mech(pkcs11.CKM_AES_KEY_WRAP_PAD, nil), wk.priv, priv)
		if c, ok := asCKR(err); ok && (c == CKR(pkcs11.CKR_KEY_NOT_WRAPPABLE) || c == CKR(pkcs11.CKR_KEY_UNEXTRACTABLE)) {
			return &Error{Code: c, Err: fmt.Errorf("%w: %s is not a trusted wrapping key", ErrWrongKeyType, wrappingKey)}
		}
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return outW, outPub, nil
}

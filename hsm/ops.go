package hsm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"slices"

	"github.com/miekg/pkcs11"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// GCMIVSize is the only AES-GCM IV size this package accepts: 96 bits.
const GCMIVSize = 12

// GCMTagSize is the AES-GCM tag size: 128 bits, appended to the ciphertext.
const GCMTagSize = 16

// MaxDataSize bounds plaintexts, messages and ciphertexts handed to the
// token in one call.
const MaxDataSize = 1 << 20

// EncryptGCM encrypts plaintext with AES-GCM under key id, authenticating
// aad. With a nil iv the IV comes from the token when its profile says it
// writes its own (CloudHSM), else from crypto/rand. On such a token the IV
// is always read back from the token, and a caller's IV that the token
// replaced with its own is ErrUnsupported (the ciphertext is not
// returned). It returns the ciphertext with the 16-byte tag appended, and
// the IV that was used, which the caller stores beside it.
func (t *Token) EncryptGCM(ctx context.Context, id KeyID, iv, plaintext, aad []byte) (ciphertext, ivUsed []byte, err error) {
	return t.AppendEncryptGCM(ctx, nil, id, iv, plaintext, aad)
}

// AppendEncryptGCM is EncryptGCM that appends the ciphertext (tag
// included) to dst and returns the extended slice, as cipher.AEAD's Seal
// does: with room enough in dst, the token writes the ciphertext there and
// nothing is allocated or copied for it. Use only the returned slice. When
// it does not share dst's array (an error, or too little room), a call
// abandoned at its deadline (see Concurrency in the package
// documentation) may still write into dst's spare capacity later: do not
// reuse that array then.
func (t *Token) AppendEncryptGCM(ctx context.Context, dst []byte, id KeyID, iv, plaintext, aad []byte) (out, ivUsed []byte, err error) {
	profile := t.profile()
	switch {
	case len(plaintext) == 0:
		err = fmt.Errorf("%w: empty plaintext", ErrInvalidInput)
	case len(plaintext) > MaxDataSize, profile.GCMMaxInput > 0 && len(plaintext) > profile.GCMMaxInput:
		err = fmt.Errorf("%w: plaintext of %d bytes is too long for this token", ErrInvalidInput, len(plaintext))
	case iv != nil && len(iv) != GCMIVSize:
		err = fmt.Errorf("%w: IV must be %d bytes, got %d", ErrInvalidInput, GCMIVSize, len(iv))
	}
	if err != nil {
		return nil, nil, t.wrap(OpEncrypt, err)
	}
	// A token that writes its own IV (CloudHSM) may ignore the caller's,
	// so the IV is read back from the parameters whoever chose it.
	fromHSM, callerIV := profile.GCMIVFromHSM, iv != nil
	if iv == nil {
		iv = make([]byte, GCMIVSize)
		if !fromHSM {
			if _, err := rand.Read(iv); err != nil {
				return nil, nil, t.wrap(OpEncrypt, err)
			}
		}
	}
	// The worker writes into buf and outIV, which the caller reads only
	// once do returned nil; an abandoned worker may write into buf later,
	// so buf is never a result variable that returning would clear.
	n := len(plaintext) + GCMTagSize
	buf := slices.Grow(dst, n)[:len(dst)+n]
	var outIV []byte
	err = t.withKey(ctx, OpEncrypt, id, func(s *session, e *keyEntry) error {
		if specs[e.info.Spec].keyType != pkcs11.CKK_AES {
			return fmt.Errorf("%w: %s is %s, not AES", ErrWrongKeyType, id, e.info.Spec)
		}
		params := pkcs11.NewGCMParams(iv, aad, GCMTagSize*8)
		defer params.Free()
		if err := t.mod.ctx.EncryptInit(s.h, mech(pkcs11.CKM_AES_GCM, params), e.priv); err != nil {
			return keyErr(err)
		}
		if err := t.encryptInto(s, plaintext, buf[len(dst):]); err != nil {
			return err
		}
		used := iv
		if fromHSM {
			used = params.IV()
			switch {
			case callerIV && !bytes.Equal(used, iv):
				return fmt.Errorf("%w: the token chooses its own GCM IV (profile %s); pass a nil IV", ErrUnsupported, profile.Name)
			case len(used) != GCMIVSize || !callerIV && bytes.Equal(used, make([]byte, GCMIVSize)):
				return fmt.Errorf("%w: profile %s expects the token to write its GCM IV back, and it did not", ErrUnsupported, profile.Name)
			}
		}
		outIV = used
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return buf, outIV, nil
}

// encryptInto finishes the encryption initialized on s, writing exactly
// len(out) bytes of ciphertext into out.
func (t *Token) encryptInto(s *session, plaintext, out []byte) error {
	got, done, err := t.mod.direct.encrypt.into(s.h, plaintext, out)
	if err != nil {
		return err
	}
	if !done {
		ct, err := t.mod.ctx.Encrypt(s.h, plaintext)
		if err != nil {
			return err
		}
		got = len(ct)
		copy(out, ct)
	}
	if got != len(out) {
		return fmt.Errorf("%w: AES-GCM gave %d bytes of ciphertext for %d of plaintext", ErrUnsupported, got, len(plaintext))
	}
	return nil
}

// signOut finishes the signature initialized on s over data, which is n
// bytes long when the module answers as the mechanism says.
func (t *Token) signOut(s *session, data []byte, n int) ([]byte, error) {
	out := make([]byte, n)
	got, done, err := t.mod.direct.sign.into(s.h, data, out)
	if err != nil {
		return nil, err
	}
	if !done {
		return t.mod.ctx.Sign(s.h, data)
	}
	return out[:got], nil
}

// DecryptGCM decrypts and authenticates an AES-GCM ciphertext (tag
// appended). Any authentication failure is ErrDecrypt and nothing more.
func (t *Token) DecryptGCM(ctx context.Context, id KeyID, iv, ciphertext, aad []byte) ([]byte, error) {
	switch {
	case len(iv) != GCMIVSize:
		return nil, t.wrap(OpDecrypt, fmt.Errorf("%w: IV must be %d bytes, got %d", ErrInvalidInput, GCMIVSize, len(iv)))
	case len(ciphertext) <= GCMTagSize:
		return nil, t.wrap(OpDecrypt, ErrDecrypt)
	case len(ciphertext) > MaxDataSize+GCMTagSize:
		return nil, t.wrap(OpDecrypt, fmt.Errorf("%w: ciphertext of %d bytes is too long", ErrInvalidInput, len(ciphertext)))
	}
	var plaintext []byte
	err := t.withKey(ctx, OpDecrypt, id, func(s *session, e *keyEntry) error {
		if specs[e.info.Spec].keyType != pkcs11.CKK_AES {
			return fmt.Errorf("%w: %s is %s, not AES", ErrWrongKeyType, id, e.info.Spec)
		}
		params := pkcs11.NewGCMParams(iv, aad, GCMTagSize*8)
		defer params.Free()
		if err := t.mod.ctx.DecryptInit(s.h, mech(pkcs11.CKM_AES_GCM, params), e.priv); err != nil {
			return keyErr(err)
		}
		// GCM's plaintext is the ciphertext less its tag; modules ask
		// for up to the ciphertext's length.
		out := make([]byte, len(ciphertext))
		n, done, err := t.mod.direct.decrypt.into(s.h, ciphertext, out)
		if !done && err == nil {
			out, err = t.mod.ctx.Decrypt(s.h, ciphertext)
			n = len(out)
		}
		if err != nil {
			return t.decryptErr(err)
		}
		plaintext = out[:n:n]
		return nil
	})
	if err != nil {
		return nil, err
	}
	return plaintext, nil
}

// decryptErr turns an authentication failure into the vague ErrDecrypt,
// its code hidden; a member's fault passes through.
func (t *Token) decryptErr(err error) error {
	code, ok := asCKR(err)
	if !ok {
		return err
	}
	if classifyCKR(code) == ClassCaller || slices.Contains(t.profile().DecryptFailureCodes, code) {
		return ErrDecrypt
	}
	return err
}

// keyErr maps the codes a C_*Init returns for a key that cannot do the
// operation to ErrWrongKeyType, keeping the code.
func keyErr(err error) error {
	code, ok := asCKR(err)
	if ok && (code == CKR(pkcs11.CKR_KEY_TYPE_INCONSISTENT) || code == CKR(pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED)) {
		return &Error{Code: code, Err: ErrWrongKeyType}
	}
	return err
}

// hashMech maps a hash to its PKCS#11 digest mechanism, MGF1 and HMAC.
var hashMech = map[crypto.Hash]struct{ digest, mgf, hmac uint }{
	crypto.SHA1:   {pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1, pkcs11.CKM_SHA_1_HMAC},
	crypto.SHA224: {pkcs11.CKM_SHA224, pkcs11.CKG_MGF1_SHA224, pkcs11.CKM_SHA224_HMAC},
	crypto.SHA256: {pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, pkcs11.CKM_SHA256_HMAC},
	crypto.SHA384: {pkcs11.CKM_SHA384, pkcs11.CKG_MGF1_SHA384, pkcs11.CKM_SHA384_HMAC},
	crypto.SHA512: {pkcs11.CKM_SHA512, pkcs11.CKG_MGF1_SHA512, pkcs11.CKM_SHA512_HMAC},
}

func (t *Token) oaepParams(h crypto.Hash) (*pkcs11.OAEPParams, error) {
	hm, ok := hashMech[h]
	if !ok || !t.profile().SupportsOAEP(h) {
		return nil, fmt.Errorf("%w: RSA-OAEP with %v", ErrUnsupported, h)
	}
	return pkcs11.NewOAEPParams(hm.digest, hm.mgf, pkcs11.CKZ_DATA_SPECIFIED, nil), nil
}

// EncryptOAEP encrypts with RSA-OAEP under the public half of key id,
// using hash h for both OAEP and MGF1.
func (t *Token) EncryptOAEP(ctx context.Context, id KeyID, h crypto.Hash, plaintext []byte) ([]byte, error) {
	params, err := t.oaepParams(h)
	if err == nil && (len(plaintext) == 0 || len(plaintext) > MaxDataSize) {
		err = fmt.Errorf("%w: plaintext of %d bytes", ErrInvalidInput, len(plaintext))
	}
	if err != nil {
		return nil, t.wrap(OpEncrypt, err)
	}
	var out []byte
	err = t.withKey(ctx, OpEncrypt, id, func(s *session, e *keyEntry) error {
		si := specs[e.info.Spec]
		if si.keyType != pkcs11.CKK_RSA || !e.hasPb {
			return fmt.Errorf("%w: %s is not an RSA key pair", ErrWrongKeyType, id)
		}
		// RFC 8017 7.1.1: at most k - 2hLen - 2 bytes. Checked here: some
		// modules (SoftHSM) answer a longer one with CKR_GENERAL_ERROR,
		// which would count against the member.
		if max := (si.bits+7)/8 - 2*h.Size() - 2; len(plaintext) > max {
			return fmt.Errorf("%w: plaintext of %d bytes; RSA-OAEP with %v under %s takes at most %d", ErrInvalidInput, len(plaintext), h, e.info.Spec, max)
		}
		if err := t.mod.ctx.EncryptInit(s.h, mech(pkcs11.CKM_RSA_PKCS_OAEP, params), e.pub); err != nil {
			return keyErr(err)
		}
		var err error
		out, err = t.mod.ctx.Encrypt(s.h, plaintext)
		if c, ok := asCKR(err); ok && (c == CKR(pkcs11.CKR_DATA_LEN_RANGE) || c == CKR(pkcs11.CKR_DATA_INVALID)) {
			return &Error{Code: c, Err: fmt.Errorf("%w: plaintext too long for the key", ErrInvalidInput)}
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DecryptOAEP decrypts an RSA-OAEP ciphertext with the private half of key
// id. Any failure of the ciphertext is ErrDecrypt.
func (t *Token) DecryptOAEP(ctx context.Context, id KeyID, h crypto.Hash, ciphertext []byte) ([]byte, error) {
	params, err := t.oaepParams(h)
	if err == nil && (len(ciphertext) == 0 || len(ciphertext) > MaxDataSize) {
		err = ErrDecrypt
	}
	if err != nil {
		return nil, t.wrap(OpDecrypt, err)
	}
	var out []byte
	err = t.withKey(ctx, OpDecrypt, id, func(s *session, e *keyEntry) error {
		if specs[e.info.Spec].keyType != pkcs11.CKK_RSA || e.priv == 0 {
			return fmt.Errorf("%w: %s is not an RSA private key", ErrWrongKeyType, id)
		}
		if err := t.mod.ctx.DecryptInit(s.h, mech(pkcs11.CKM_RSA_PKCS_OAEP, params), e.priv); err != nil {
			return keyErr(err)
		}
		var err error
		out, err = t.mod.ctx.Decrypt(s.h, ciphertext)
		if err != nil {
			return t.decryptErr(err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// SigningScheme is how a digest is signed.
type SigningScheme int

// The signing schemes.
const (
	// PKCS1v15 is RSASSA-PKCS1-v1_5.
	PKCS1v15 SigningScheme = iota + 1
	// PSS is RSASSA-PSS with MGF1 of the same hash and a salt as long as the
	// digest, as AWS KMS uses it.
	PSS
	// ECDSA signatures are DER-encoded (ASN.1 SEQUENCE of r and s), as AWS
	// KMS returns them and crypto/ecdsa verifies them.
	ECDSA
)

func (sc SigningScheme) String() string {
	switch sc {
	case PKCS1v15:
		return "PKCS1v15"
	case PSS:
		return "PSS"
	case ECDSA:
		return "ECDSA"
	}
	return fmt.Sprintf("SigningScheme(%d)", int(sc))
}

// digestInfoPrefix is the DER prefix of a PKCS#1 v1.5 DigestInfo.
var digestInfoPrefix = map[crypto.Hash][]byte{
	crypto.SHA224: {0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04, 0x05, 0x00, 0x04, 0x1c},
	crypto.SHA256: {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20},
	crypto.SHA384: {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30},
	crypto.SHA512: {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40},
}

// signMechanism builds the mechanism and the data to sign for a digest.
func signMechanism(sc SigningScheme, h crypto.Hash, digest []byte, keyType uint) ([]*pkcs11.Mechanism, []byte, error) {
	if sc != PKCS1v15 && sc != PSS && sc != ECDSA {
		return nil, nil, fmt.Errorf("%w: signing scheme %v", ErrInvalidInput, sc)
	}
	hm, ok := hashMech[h]
	if !ok || h == crypto.SHA1 {
		return nil, nil, fmt.Errorf("%w: hash %v", ErrInvalidInput, h)
	}
	if len(digest) != h.Size() {
		return nil, nil, fmt.Errorf("%w: digest is %d bytes, %v needs %d", ErrInvalidInput, len(digest), h, h.Size())
	}
	want := uint(pkcs11.CKK_RSA)
	if sc == ECDSA {
		want = pkcs11.CKK_EC
	}
	if keyType != want {
		return nil, nil, fmt.Errorf("%w: %v needs another key type", ErrWrongKeyType, sc)
	}
	switch sc {
	case PKCS1v15:
		return mech(pkcs11.CKM_RSA_PKCS, nil), append(slices.Clip(digestInfoPrefix[h]), digest...), nil
	case PSS:
		return mech(pkcs11.CKM_RSA_PKCS_PSS, pkcs11.NewPSSParams(hm.digest, hm.mgf, uint(h.Size()))), digest, nil
	case ECDSA:
		return mech(pkcs11.CKM_ECDSA, nil), digest, nil
	}
	return nil, nil, fmt.Errorf("%w: signing scheme %v", ErrInvalidInput, sc)
}

// Sign signs a digest (the caller hashes the message with h) with the
// private key id.
func (t *Token) Sign(ctx context.Context, id KeyID, sc SigningScheme, h crypto.Hash, digest []byte) ([]byte, error) {
	var sig []byte
	err := t.withKey(ctx, OpSign, id, func(s *session, e *keyEntry) error {
		si := specs[e.info.Spec]
		m, data, err := signMechanism(sc, h, digest, si.keyType)
		if err != nil {
			return err
		}
		if e.priv == 0 {
			return fmt.Errorf("%w: %s is a public key only", ErrWrongKeyType, id)
		}
		if err := t.mod.ctx.SignInit(s.h, m, e.priv); err != nil {
			return keyErr(err)
		}
		raw, err := t.signOut(s, data, si.sigSize())
		if err != nil {
			return err
		}
		if sc == ECDSA {
			raw, err = ecdsaRawToDER(raw)
			if err != nil {
				return err
			}
		}
		sig = raw
		return nil
	})
	if err != nil {
		return nil, err
	}
	return sig, nil
}

// Verify checks a signature over a digest with the public key id. Any
// mismatch, malformed signature included, is ErrVerify.
func (t *Token) Verify(ctx context.Context, id KeyID, sc SigningScheme, h crypto.Hash, digest, sig []byte) error {
	return t.withKey(ctx, OpVerify, id, func(s *session, e *keyEntry) error {
		si := specs[e.info.Spec]
		m, data, err := signMechanism(sc, h, digest, si.keyType)
		if err != nil {
			return err
		}
		if !e.hasPb {
			return fmt.Errorf("%w: %s has no public key on this token", ErrWrongKeyType, id)
		}
		if sc == ECDSA {
			if sig, err = ecdsaDERToRaw(sig, (si.bits+7)/8); err != nil {
				return ErrVerify
			}
		}
		if len(sig) == 0 || len(sig) > 1024 {
			return ErrVerify
		}
		if err := t.mod.ctx.VerifyInit(s.h, m, e.pub); err != nil {
			return keyErr(err)
		}
		return verifyErr(t.mod.ctx.Verify(s.h, data, sig))
	})
}

// verifyErr turns a rejected signature or MAC into the vague ErrVerify.
func verifyErr(err error) error {
	if code, ok := asCKR(err); ok && classifyCKR(code) == ClassCaller {
		return ErrVerify
	}
	return err
}

// ecdsaRawToDER encodes PKCS#11's r||s as an ASN.1 ECDSA-Sig-Value, in
// one allocation: it runs on every signature, and Go work between two
// module calls costs more than its CPU time when callers outnumber cores
// (see BENCHMARKS.md).
func ecdsaRawToDER(raw []byte) ([]byte, error) {
	// Halves of up to 124 bytes keep every length in one byte (the
	// SEQUENCE's after 0x81); P-521's 66 is the largest in use.
	if len(raw) == 0 || len(raw)%2 != 0 || len(raw) > 2*124 {
		return nil, fmt.Errorf("token returned a malformed ECDSA signature of %d bytes", len(raw))
	}
	r, s := derUnsigned(raw[:len(raw)/2]), derUnsigned(raw[len(raw)/2:])
	if len(r.v) == 0 || len(s.v) == 0 {
		return nil, errors.New("token returned an ECDSA signature with a zero component")
	}
	body := r.size() + s.size()
	var out []byte
	if body < 0x80 {
		out = append(make([]byte, 0, 2+body), 0x30, byte(body))
	} else { // at most 2*(2+125)
		out = append(make([]byte, 0, 3+body), 0x30, 0x81, byte(body))
	}
	return s.append(r.append(out)), nil
}

// derInt is a positive big-endian integer ready for DER: v without its
// leading zeros, pad when a zero byte must go in front (high bit set).
type derInt struct {
	v   []byte
	pad bool
}

func derUnsigned(v []byte) derInt {
	for len(v) > 0 && v[0] == 0 {
		v = v[1:]
	}
	return derInt{v: v, pad: len(v) > 0 && v[0]&0x80 != 0}
}

func (d derInt) contentLen() int {
	if d.pad {
		return len(d.v) + 1
	}
	return len(d.v)
}

func (d derInt) size() int { return 2 + d.contentLen() }

func (d derInt) append(out []byte) []byte {
	out = append(out, 0x02, byte(d.contentLen()))
	if d.pad {
		out = append(out, 0)
	}
	return append(out, d.v...)
}

// ecdsaDERToRaw decodes an ASN.1 ECDSA-Sig-Value into r||s, each n bytes.
func ecdsaDERToRaw(der []byte, n int) ([]byte, error) {
	var inner cryptobyte.String
	r, s := new(big.Int), new(big.Int)
	in := cryptobyte.String(der)
	if !in.ReadASN1(&inner, cbasn1.SEQUENCE) || !in.Empty() ||
		!inner.ReadASN1Integer(r) || !inner.ReadASN1Integer(s) || !inner.Empty() {
		return nil, ErrVerify
	}
	if r.Sign() <= 0 || s.Sign() <= 0 || r.BitLen() > n*8 || s.BitLen() > n*8 {
		return nil, ErrVerify
	}
	out := make([]byte, 2*n)
	r.FillBytes(out[:n])
	s.FillBytes(out[n:])
	return out, nil
}

// MAC computes HMAC with hash h over msg under the HMAC key id.
func (t *Token) MAC(ctx context.Context, id KeyID, h crypto.Hash, msg []byte) ([]byte, error) {
	var mac []byte
	err := t.withKey(ctx, OpMAC, id, func(s *session, e *keyEntry) error {
		m, err := hmacMechanism(h, msg, e)
		if err != nil {
			return err
		}
		if err := t.mod.ctx.SignInit(s.h, m, e.priv); err != nil {
			return keyErr(err)
		}
		mac, err = t.signOut(s, msg, h.Size())
		return err
	})
	if err != nil {
		return nil, err
	}
	return mac, nil
}

// VerifyMAC checks an HMAC; a mismatch is ErrVerify.
func (t *Token) VerifyMAC(ctx context.Context, id KeyID, h crypto.Hash, msg, mac []byte) error {
	return t.withKey(ctx, OpVerifyMAC, id, func(s *session, e *keyEntry) error {
		m, err := hmacMechanism(h, msg, e)
		if err != nil {
			return err
		}
		if len(mac) != h.Size() {
			return ErrVerify
		}
		if err := t.mod.ctx.VerifyInit(s.h, m, e.priv); err != nil {
			return keyErr(err)
		}
		return verifyErr(t.mod.ctx.Verify(s.h, msg, mac))
	})
}

// hmacMechanism checks an HMAC request and returns its mechanism. A hash
// longer than the key is refused here, as the key's fault
// (ErrWrongKeyType): RFC 2104 advises against keys shorter than the hash,
// and tokens refuse them (SoftHSM with a bare CKR_KEY_SIZE_RANGE). A
// shorter hash is allowed: kmsadapter computes key check values with
// HMAC-SHA256 under HMAC keys of every size.
func hmacMechanism(h crypto.Hash, msg []byte, e *keyEntry) ([]*pkcs11.Mechanism, error) {
	hm, ok := hashMech[h]
	si := specs[e.info.Spec]
	switch {
	case !ok:
		return nil, fmt.Errorf("%w: hash %v", ErrInvalidInput, h)
	case si.keyType != pkcs11.CKK_GENERIC_SECRET:
		return nil, fmt.Errorf("%w: %s is %s, not an HMAC key", ErrWrongKeyType, e.info.ID, e.info.Spec)
	case h.Size()*8 > si.bits:
		return nil, fmt.Errorf("%w: %s is %s, too short for HMAC with %v", ErrWrongKeyType, e.info.ID, e.info.Spec, h)
	case len(msg) == 0 || len(msg) > MaxDataSize:
		return nil, fmt.Errorf("%w: message of %d bytes", ErrInvalidInput, len(msg))
	}
	return mech(hm.hmac, nil), nil
}

// Random returns n random bytes from the token's generator, 1 <= n <= 65536.
func (t *Token) Random(ctx context.Context, n int) ([]byte, error) {
	if n < 1 || n > 65536 {
		return nil, t.wrap(OpRandom, fmt.Errorf("%w: %d random bytes; want 1 to 65536", ErrInvalidInput, n))
	}
	var out []byte
	err := t.do(ctx, OpRandom, "", func(s *session, _ *keyEntry) error {
		var err error
		out, err = t.mod.ctx.GenerateRandom(s.h, n)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// oidECPublicKey is id-ecPublicKey.
var oidECPublicKey = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}

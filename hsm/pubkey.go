package hsm

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"math/big"

	"github.com/miekg/pkcs11"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// PublicKey returns the public half of an RSA or EC key pair as DER
// SubjectPublicKeyInfo, as AWS KMS GetPublicKey returns it. secp256k1 keys,
// which crypto/x509 cannot parse, are encoded the same standard way.
func (t *Token) PublicKey(ctx context.Context, id KeyID) ([]byte, error) {
	var der []byte
	err := t.withKey(ctx, OpPublicKey, id, func(s *session, e *keyEntry) error {
		var err error
		der, err = t.publicDER(s, e)
		return err
	})
	if err != nil {
		return nil, err
	}
	return der, nil
}

// publicDER is PublicKey's work on a resolved key, cached in e.
func (t *Token) publicDER(s *session, e *keyEntry) ([]byte, error) {
	if p := e.spki.Load(); p != nil {
		return *p, nil
	}
	obj := e.pub
	if !e.hasPb {
		obj = e.priv // RSA private keys carry the modulus and exponent
		if specs[e.info.Spec].keyType == pkcs11.CKK_EC {
			return nil, fmt.Errorf("%w: %s has no public key object", ErrKeyNotFound, e.info.ID)
		}
	}
	der, err := t.spki(s, obj, e.info.Spec)
	if err != nil {
		return nil, err
	}
	e.spki.Store(&der)
	return der, nil
}

// CheckValue returns a short value that tells one key's material from
// another's without revealing it, the same on every token that holds the
// same key. Its first byte is the format, CheckValueV1, then:
//   - for a key pair, the SHA-256 of its public key as DER
//     SubjectPublicKeyInfo;
//   - for an AES key, the first eight bytes of the SHA-256 of its AES-ECB
//     encryption of the fixed block "hsmkms check v1\x00" (not the
//     PKCS#11 check value, the encryption of a zero block, which is the
//     AES-GCM hash key);
//   - for an HMAC key, the first eight bytes of its HMAC of the fixed
//     message "hsmkms check value" (SHA-224 for HMAC_224 keys, SHA-256 for
//     the others).
//
// The secret keys' values are computed by the token on every call:
// tokens do not agree on keeping CKA_CHECK_VALUE (SoftHSM keeps none for
// an unwrapped key). A key whose usage or token refuses the operation is
// ErrUnsupported. The value tells keys apart by accident, not against an
// adversary: it finds a key left under the wrong ID, it does not
// authenticate one.
func (t *Token) CheckValue(ctx context.Context, id KeyID) ([]byte, error) {
	var out []byte
	err := t.withKey(ctx, OpCheckValue, id, func(s *session, e *keyEntry) error {
		var err error
		out, err = t.checkValue(s, e)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// CheckValueV1 is the format byte that starts CheckValue's values.
const CheckValueV1 = 1

// checkMessage is what an HMAC key's check value is the MAC of;
// checkBlock is what an AES key's encrypts.
const (
	checkMessage = "hsmkms check value"
	checkBlock   = "hsmkms check v1\x00"
)

func (t *Token) checkValue(s *session, e *keyEntry) ([]byte, error) {
	spec := e.info.Spec
	if spec.Asymmetric() {
		der, err := t.publicDER(s, e)
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(der)
		return append([]byte{CheckValueV1}, sum[:]...), nil
	}
	refused := func(err error) error {
		code, ok := asCKR(err)
		if ok {
			switch uint(code) {
			case pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED, pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_FUNCTION_NOT_SUPPORTED,
				pkcs11.CKR_KEY_TYPE_INCONSISTENT, pkcs11.CKR_MECHANISM_PARAM_INVALID:
				return &Error{Code: code, Err: fmt.Errorf("%w: no check value for %s on this token", ErrUnsupported, e.info.ID)}
			}
		}
		return err
	}
	if specs[spec].keyType == pkcs11.CKK_AES {
		if err := t.mod.ctx.EncryptInit(s.h, mech(pkcs11.CKM_AES_ECB, nil), e.priv); err != nil {
			return nil, refused(err)
		}
		block, err := t.mod.ctx.Encrypt(s.h, []byte(checkBlock))
		if err != nil {
			return nil, refused(err)
		}
		sum := sha256.Sum256(block)
		return append([]byte{CheckValueV1}, sum[:8]...), nil
	}
	h := crypto.SHA256
	if spec == HMAC224 {
		h = crypto.SHA224
	}
	if err := t.mod.ctx.SignInit(s.h, mech(hashMech[h].hmac, nil), e.priv); err != nil {
		return nil, refused(err)
	}
	mac, err := t.mod.ctx.Sign(s.h, []byte(checkMessage))
	if err != nil {
		return nil, refused(err)
	}
	return append([]byte{CheckValueV1}, mac[:8]...), nil
}

// spki reads the public key of object obj, of spec, as DER
// SubjectPublicKeyInfo.
func (t *Token) spki(s *session, obj pkcs11.ObjectHandle, spec KeySpec) ([]byte, error) {
	si := specs[spec]
	switch si.keyType {
	case pkcs11.CKK_RSA:
		a, err := t.attrs(s, obj, pkcs11.CKA_MODULUS, pkcs11.CKA_PUBLIC_EXPONENT)
		if err != nil {
			return nil, err
		}
		return rsaSPKI(a[pkcs11.CKA_MODULUS], a[pkcs11.CKA_PUBLIC_EXPONENT])
	case pkcs11.CKK_EC:
		a, err := t.attrs(s, obj, pkcs11.CKA_EC_POINT)
		if err != nil {
			return nil, err
		}
		return ecSPKI(si.curve, ecPoint(a[pkcs11.CKA_EC_POINT], spec))
	}
	return nil, fmt.Errorf("%w: %s is not a key pair", ErrWrongKeyType, spec)
}

func rsaSPKI(modulus, exponent []byte) ([]byte, error) {
	e := new(big.Int).SetBytes(exponent)
	if len(modulus) == 0 || !e.IsInt64() || e.Int64() > 1<<31-1 {
		return nil, fmt.Errorf("token returned a malformed RSA public key")
	}
	return x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: new(big.Int).SetBytes(modulus), E: int(e.Int64())})
}

// ecPoint is the uncompressed point in a CKA_EC_POINT value: DER OCTET
// STRING around it, as PKCS#11 says, or bare, as some modules return it.
// Either must be exactly as long as spec's points, so that a bare point
// whose first bytes happen to read as a short OCTET STRING is not cut.
// nil when it is neither.
func ecPoint(v []byte, spec KeySpec) []byte {
	want := 0
	switch spec {
	case ECP256, ECSecp256k1:
		want = 1 + 2*32
	case ECP384:
		want = 1 + 2*48
	case ECP521:
		want = 1 + 2*66
	}
	var point []byte
	if rest, err := asn1.Unmarshal(v, &point); err == nil && len(rest) == 0 && len(point) == want {
		return point
	}
	if len(v) == want {
		return v
	}
	return nil
}

func ecSPKI(curve asn1.ObjectIdentifier, point []byte) ([]byte, error) {
	if len(point) == 0 || point[0] != 4 {
		return nil, fmt.Errorf("token returned a malformed EC point")
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oidECPublicKey)
			b.AddASN1ObjectIdentifier(curve)
		})
		b.AddASN1BitString(point)
	})
	return b.Bytes()
}

// publicKeyAttrs parses a DER SubjectPublicKeyInfo for spec into the
// attributes of a PKCS#11 public key object.
func publicKeyAttrs(spki []byte, spec KeySpec) ([]*pkcs11.Attribute, error) {
	si := specs[spec]
	bad := fmt.Errorf("%w: public key is not a %s SubjectPublicKeyInfo", ErrInvalidInput, spec)
	in := cryptobyte.String(spki)
	var body, alg cryptobyte.String
	var algOID asn1.ObjectIdentifier
	var bits asn1.BitString
	if !in.ReadASN1(&body, cbasn1.SEQUENCE) || !in.Empty() ||
		!body.ReadASN1(&alg, cbasn1.SEQUENCE) || !alg.ReadASN1ObjectIdentifier(&algOID) ||
		!body.ReadASN1BitString(&bits) || !body.Empty() || bits.BitLength%8 != 0 {
		return nil, bad
	}
	switch si.keyType {
	case pkcs11.CKK_RSA:
		pk, err := x509.ParsePKIXPublicKey(spki)
		rk, ok := pk.(*rsa.PublicKey)
		if err != nil || !ok || rk.N.BitLen() != si.bits {
			return nil, bad
		}
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS, rk.N.Bytes()),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, big.NewInt(int64(rk.E)).Bytes()),
		}, nil
	case pkcs11.CKK_EC:
		var curve asn1.ObjectIdentifier
		if !algOID.Equal(oidECPublicKey) || !alg.ReadASN1ObjectIdentifier(&curve) || !alg.Empty() || !curve.Equal(si.curve) {
			return nil, bad
		}
		n := (si.bits + 7) / 8
		if len(bits.Bytes) != 1+2*n || bits.Bytes[0] != 4 {
			return nil, bad
		}
		params, _ := asn1.Marshal(si.curve)
		point, _ := asn1.Marshal(bits.Bytes)
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
			pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, point),
		}, nil
	}
	return nil, bad
}

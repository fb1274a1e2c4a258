package hsm

import (
	"context"
	"crypto/rsa"
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
		if p := e.spki.Load(); p != nil {
			der = *p
			return nil
		}
		obj := e.pub
		if !e.hasPb {
			obj = e.priv // RSA private keys carry the modulus and exponent
			if specs[e.info.Spec].keyType == pkcs11.CKK_EC {
				return fmt.Errorf("%w: %s has no public key object", ErrKeyNotFound, id)
			}
		}
		var err error
		if der, err = t.spki(s, obj, e.info.Spec); err != nil {
			return err
		}
		e.spki.Store(&der)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return der, nil
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
		var point []byte
		if _, err := asn1.Unmarshal(a[pkcs11.CKA_EC_POINT], &point); err != nil {
			point = a[pkcs11.CKA_EC_POINT] // some modules return the raw point
		}
		return ecSPKI(si.curve, point)
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

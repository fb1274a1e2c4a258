package hsm

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/asn1"
	"fmt"
	"math/big"

	"github.com/miekg/pkcs11"
)

// derivePublic checks that an unwrapped private key is of spec and returns
// the attributes of its public key object, derived inside the token
// without reading secret material: an RSA private key carries its modulus
// and public exponent; an EC public point is recovered from an ECDSA
// signature the token makes over a fixed digest, and the one of the two
// candidates that verifies a second signature is kept. A key of another
// spec is ErrInvalidInput; the caller destroys it.
func (t *Token) derivePublic(s *session, priv pkcs11.ObjectHandle, spec KeySpec) ([]*pkcs11.Attribute, error) {
	si := specs[spec]
	a, err := t.attrs(s, priv, pkcs11.CKA_KEY_TYPE)
	if err != nil {
		return nil, err
	}
	if kt, ok := a[pkcs11.CKA_KEY_TYPE]; ok && bytesToUint(kt) != si.keyType {
		return nil, fmt.Errorf("%w: the unwrapped key is not a %s key", ErrInvalidInput, spec)
	}
	switch si.keyType {
	case pkcs11.CKK_RSA:
		a, err := t.attrs(s, priv, pkcs11.CKA_MODULUS, pkcs11.CKA_PUBLIC_EXPONENT)
		if err != nil {
			return nil, err
		}
		n, e := new(big.Int).SetBytes(a[pkcs11.CKA_MODULUS]), new(big.Int).SetBytes(a[pkcs11.CKA_PUBLIC_EXPONENT])
		if n.BitLen() != si.bits {
			return nil, fmt.Errorf("%w: the unwrapped key has a %d-bit modulus, not a %s key", ErrInvalidInput, n.BitLen(), spec)
		}
		if e.Sign() <= 0 || !e.IsInt64() || e.Int64() > 1<<31-1 {
			return nil, fmt.Errorf("%w: the unwrapped RSA key has no usable public exponent", ErrInvalidInput)
		}
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS, n.Bytes()),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, e.Bytes()),
		}, nil
	case pkcs11.CKK_EC:
		a, err := t.attrs(s, priv, pkcs11.CKA_EC_PARAMS)
		if err != nil {
			return nil, err
		}
		var oid asn1.ObjectIdentifier
		if rest, err := asn1.Unmarshal(a[pkcs11.CKA_EC_PARAMS], &oid); err != nil || len(rest) != 0 || !oid.Equal(si.curve) {
			return nil, fmt.Errorf("%w: the unwrapped key is not on the curve of %s", ErrInvalidInput, spec)
		}
		curve := goCurve(spec)
		if curve == nil {
			return nil, fmt.Errorf("%w: deriving the public key of a %s key", ErrUnsupported, spec)
		}
		d1, d2 := deriveDigests(spec)
		sig1, err := t.ecdsaSign(s, priv, d1)
		if err != nil {
			return nil, err
		}
		sig2, err := t.ecdsaSign(s, priv, d2)
		if err != nil {
			return nil, err
		}
		pub, err := recoverECPublic(curve, d1, sig1, d2, sig2)
		if err != nil {
			return nil, err
		}
		size := (curve.Params().BitSize + 7) / 8
		raw := make([]byte, 1+2*size)
		raw[0] = 4
		pub.X.FillBytes(raw[1 : 1+size])
		pub.Y.FillBytes(raw[1+size:])
		point, _ := asn1.Marshal(raw)
		params, _ := asn1.Marshal(si.curve)
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
			pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, point),
		}, nil
	}
	return nil, fmt.Errorf("%w: %s is not a key pair", ErrInvalidInput, spec)
}

// goCurve returns the crypto/elliptic curve of an EC spec, or nil when Go
// has none (secp256k1).
func goCurve(spec KeySpec) elliptic.Curve {
	switch spec {
	case ECP256:
		return elliptic.P256()
	case ECP384:
		return elliptic.P384()
	case ECP521:
		return elliptic.P521()
	}
	return nil
}

// deriveDigests returns two fixed digests no longer than the curve order,
// so that ECDSA uses them whole.
func deriveDigests(spec KeySpec) (d1, d2 []byte) {
	const l1, l2 = "hsmkms public key derivation 1", "hsmkms public key derivation 2"
	switch spec {
	case ECP384:
		a, b := sha512.Sum384([]byte(l1)), sha512.Sum384([]byte(l2))
		return a[:], b[:]
	case ECP521:
		a, b := sha512.Sum512([]byte(l1)), sha512.Sum512([]byte(l2))
		return a[:], b[:]
	}
	a, b := sha256.Sum256([]byte(l1)), sha256.Sum256([]byte(l2))
	return a[:], b[:]
}

// ecdsaSign signs digest with CKM_ECDSA: r and s, each of the order's size.
func (t *Token) ecdsaSign(s *session, priv pkcs11.ObjectHandle, digest []byte) ([]byte, error) {
	if err := t.mod.ctx.SignInit(s.h, mech(pkcs11.CKM_ECDSA, nil), priv); err != nil {
		if c, ok := asCKR(err); ok && c == CKR(pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED) {
			return nil, &Error{Code: c, Err: fmt.Errorf("%w: an EC key's public key is derived with a signature; the key must be allowed to sign", ErrInvalidInput)}
		}
		return nil, err
	}
	return t.mod.ctx.Sign(s.h, digest)
}

// recoverECPublic recovers the public key from the ECDSA signature sig1 of
// d1 (Q = r⁻¹(sR − eG) for R = (r, ±y)) and keeps the candidate that
// verifies sig2 of d2. R's x coordinate is taken to be r: r+n would need
// x ≥ n, which happens with probability about 2⁻¹²⁸ on these curves and is
// then reported as ErrInvalidInput rather than handled.
func recoverECPublic(curve elliptic.Curve, d1, sig1, d2, sig2 []byte) (*ecdsa.PublicKey, error) {
	p := curve.Params()
	size := (p.BitSize + 7) / 8
	fail := fmt.Errorf("%w: no public key verifies the unwrapped EC key's signatures", ErrInvalidInput)
	if len(sig1) != 2*size || len(sig2) != 2*size {
		return nil, fail
	}
	r, s := new(big.Int).SetBytes(sig1[:size]), new(big.Int).SetBytes(sig1[size:])
	r2, s2 := new(big.Int).SetBytes(sig2[:size]), new(big.Int).SetBytes(sig2[size:])
	if r.Sign() == 0 || s.Sign() == 0 || r.Cmp(p.N) >= 0 || s.Cmp(p.N) >= 0 {
		return nil, fail
	}
	rInv := new(big.Int).ModInverse(r, p.N)
	e := hashToInt(d1, p.N)
	u1 := new(big.Int).Neg(e)
	u1.Mul(u1, rInv).Mod(u1, p.N)
	u2 := new(big.Int).Mul(s, rInv)
	u2.Mod(u2, p.N)
	compressed := make([]byte, 1+size)
	r.FillBytes(compressed[1:])
	for _, parity := range []byte{2, 3} {
		compressed[0] = parity
		rx, ry := elliptic.UnmarshalCompressed(curve, compressed)
		if rx == nil {
			continue
		}
		x1, y1 := curve.ScalarBaseMult(u1.Bytes())
		x2, y2 := curve.ScalarMult(rx, ry, u2.Bytes())
		qx, qy := curve.Add(x1, y1, x2, y2)
		if qx.Sign() == 0 && qy.Sign() == 0 || !curve.IsOnCurve(qx, qy) {
			continue
		}
		pub := &ecdsa.PublicKey{Curve: curve, X: qx, Y: qy}
		if ecdsa.Verify(pub, d2, r2, s2) {
			return pub, nil
		}
	}
	return nil, fail
}

// hashToInt is ECDSA's conversion of a digest to an integer: its leftmost
// bits, as many as the order has.
func hashToInt(digest []byte, n *big.Int) *big.Int {
	bits := n.BitLen()
	if len(digest)*8 > bits {
		digest = digest[:(bits+7)/8]
	}
	e := new(big.Int).SetBytes(digest)
	if excess := len(digest)*8 - bits; excess > 0 {
		e.Rsh(e, uint(excess))
	}
	return e
}

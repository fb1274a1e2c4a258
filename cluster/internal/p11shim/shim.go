// Package p11shim holds the one PKCS#11 call the cluster needs that the
// hsm package does not offer yet: wrapping a key under an RSA public key
// that exists on the token only as a public key object, as
// hsm.Token.ImportTrustedPublicKey leaves it. hsm.Token.WrapKey resolves its
// wrapping key through the key cache, which knows only keys that have a
// secret or private half, and so answers ErrKeyNotFound for a transport
// key imported from another HSM.
//
// This is a stopgap, used only during a membership ceremony, and only when
// hsm.Token.WrapKey answered ErrKeyNotFound. It breaks the rule that only
// the hsm package imports github.com/miekg/pkcs11; it goes away as soon as
// the hsm package resolves public-only keys for RSAOAEP wrapping.
//
// It opens the member's module by path, which shares the library instance
// the hsm.Token already initialized and logged in (login state belongs to
// the application), opens one session of its own, wraps, and closes that
// session. It never initializes, logs in, or finalizes.
package p11shim

import (
	"crypto"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

// ErrNotFound means the public or the secret key was not on the token.
var ErrNotFound = errors.New("p11shim: key not found")

// WrapUnderPublicKey wraps the secret key whose CKA_ID is keyID with
// RSA-OAEP (hash h for OAEP and MGF1) under the public key object whose
// CKA_ID is pubID, on the token in slot of the module at modulePath.
func WrapUnderPublicKey(modulePath string, slot uint, pubID, keyID string, h crypto.Hash) (_ []byte, err error) {
	var digest, mgf uint
	switch h {
	case crypto.SHA1:
		digest, mgf = pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1
	case crypto.SHA256:
		digest, mgf = pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256
	default:
		return nil, fmt.Errorf("p11shim: unsupported OAEP hash %v", h)
	}
	p := pkcs11.New(modulePath)
	if p == nil {
		return nil, fmt.Errorf("p11shim: cannot load %s", modulePath)
	}
	defer p.Destroy() // drops this handle's reference only; never finalizes
	s, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, p.CloseSession(s)) }()

	pub, err := findOne(p, s, pkcs11.CKO_PUBLIC_KEY, pubID)
	if err != nil {
		return nil, err
	}
	key, err := findOne(p, s, pkcs11.CKO_SECRET_KEY, keyID)
	if err != nil {
		return nil, err
	}
	params := pkcs11.NewOAEPParams(digest, mgf, pkcs11.CKZ_DATA_SPECIFIED, nil)
	return p.WrapKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, params)}, pub, key)
}

func findOne(p *pkcs11.Ctx, s pkcs11.SessionHandle, class uint, id string) (pkcs11.ObjectHandle, error) {
	if err := p.FindObjectsInit(s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
		pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(id)),
	}); err != nil {
		return 0, err
	}
	objs, _, err := p.FindObjects(s, 2)
	err = errors.Join(err, p.FindObjectsFinal(s))
	if err != nil {
		return 0, err
	}
	if len(objs) != 1 {
		return 0, fmt.Errorf("%w: %d objects of class %d with ID %q", ErrNotFound, len(objs), class, id)
	}
	return objs[0], nil
}

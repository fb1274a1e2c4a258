package kmsadapter

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/hsmkms/hsmkms/hsm"
)

// wrappingFor maps an import wrapping algorithm onto the HSM's unwrap
// mechanism.
func wrappingFor(a types.AlgorithmSpec) (hsm.Wrapping, error) {
	switch a {
	case types.AlgorithmSpecRsaesOaepSha1:
		return hsm.Wrapping{Mechanism: hsm.RSAOAEP, Hash: crypto.SHA1}, nil
	case types.AlgorithmSpecRsaesOaepSha256:
		return hsm.Wrapping{Mechanism: hsm.RSAOAEP, Hash: crypto.SHA256}, nil
	case types.AlgorithmSpecRsaAesKeyWrapSha1:
		return hsm.Wrapping{Mechanism: hsm.RSAAESKeyWrap, Hash: crypto.SHA1}, nil
	case types.AlgorithmSpecRsaAesKeyWrapSha256:
		return hsm.Wrapping{Mechanism: hsm.RSAAESKeyWrap, Hash: crypto.SHA256}, nil
	case "":
		return hsm.Wrapping{}, validation("1 validation error detected: Value null at 'wrappingAlgorithm' failed to satisfy constraint: Member must not be null")
	case types.AlgorithmSpecRsaesPkcs1V15, types.AlgorithmSpecSm2pke:
		return hsm.Wrapping{}, unsupported("the wrapping algorithm %s is not supported", a)
	}
	return hsm.Wrapping{}, validation("1 validation error detected: Value '%s' at 'wrappingAlgorithm' failed to satisfy constraint: Member must satisfy enum value set", a)
}

// profiler is implemented by backends that know their vendor profile
// (*hsm.Token); it lets an unsupported OAEP hash fail at
// GetParametersForImport rather than at ImportKeyMaterial.
type profiler interface{ Info() hsm.TokenInfo }

// supportsOAEP reports whether the HSMs do RSA-OAEP with h, as far as
// the configuration or the Backend can tell.
func (c *Client) supportsOAEP(h crypto.Hash) bool {
	if c.cfg.OAEPHashes != nil {
		return slices.Contains(c.cfg.OAEPHashes, h)
	}
	if p, ok := c.backend.(profiler); ok {
		return p.Info().Profile.SupportsOAEP(h)
	}
	return true
}

// importableSpec reports whether key material of spec can be imported:
// symmetric and HMAC keys as raw bytes, RSA and NIST-curve EC keys as a
// PKCS#8 private key whose public key the HSM derives. (secp256k1 is left
// out: the HSM derives an EC public key with Go's help, and Go has no
// secp256k1.)
func importableSpec(spec types.KeySpec) bool {
	switch {
	case spec == types.KeySpecSymmetricDefault, isHMAC(spec), isRSA(spec):
		return true
	case spec == types.KeySpecEccNistP256, spec == types.KeySpecEccNistP384, spec == types.KeySpecEccNistP521:
		return true
	}
	return false
}

// wrappingAllowed applies AWS KMS's rules on wrapping algorithms by the
// key material's type: an RSA private key needs an RSA_AES_KEY_WRAP
// algorithm (it does not fit one RSA-OAEP block), and ECC_NIST_P521
// material does not fit RSAES_OAEP under an RSA_2048 wrapping key; every
// other combination is allowed.
func wrappingAllowed(spec types.KeySpec, alg types.AlgorithmSpec, wks types.WrappingKeySpec) error {
	oaep := alg == types.AlgorithmSpecRsaesOaepSha1 || alg == types.AlgorithmSpecRsaesOaepSha256
	switch {
	case oaep && isRSA(spec):
		return validation("%s key material (an RSA private key) must be wrapped with RSA_AES_KEY_WRAP_SHA_1 or RSA_AES_KEY_WRAP_SHA_256, not %s", spec, alg)
	case oaep && spec == types.KeySpecEccNistP521 && wks == types.WrappingKeySpecRsa2048:
		return validation("ECC_NIST_P521 key material cannot be wrapped with %s under an RSA_2048 wrapping key; use a larger wrapping key or an RSA_AES_KEY_WRAP algorithm", alg)
	}
	return nil
}

func (c *Client) importable(r *keyRecord) error {
	if r.Origin != types.OriginTypeExternal {
		return unsupported("%s was not created for imported key material (Origin EXTERNAL).", c.keyARN(r.ID))
	}
	return c.notPendingDeletion(r)
}

// GetParametersForImport returns an RSA public key generated inside the
// HSMs and an import token, valid for Config.ImportTokenTTL (24 hours).
// A new call replaces the previous parameters of the key.
func (c *Client) GetParametersForImport(ctx context.Context, in *kms.GetParametersForImportInput, _ ...func(*kms.Options)) (*kms.GetParametersForImportOutput, error) {
	out, err := func() (*kms.GetParametersForImportOutput, error) {
		if in == nil {
			in = &kms.GetParametersForImportInput{}
		}
		w, err := wrappingFor(in.WrappingAlgorithm)
		if err != nil {
			return nil, err
		}
		var spec hsm.KeySpec
		switch in.WrappingKeySpec {
		case types.WrappingKeySpecRsa2048:
			spec = hsm.RSA2048
		case types.WrappingKeySpecRsa3072:
			spec = hsm.RSA3072
		case types.WrappingKeySpecRsa4096:
			spec = hsm.RSA4096
		case types.WrappingKeySpecSm2:
			return nil, unsupported("the wrapping key spec SM2 is not supported")
		default:
			return nil, validation("1 validation error detected: Value '%s' at 'wrappingKeySpec' failed to satisfy constraint: Member must satisfy enum value set: [RSA_2048, RSA_3072, RSA_4096]", in.WrappingKeySpec)
		}
		if !c.supportsOAEP(w.Hash) {
			return nil, unsupported("the HSMs do not support RSA-OAEP with %v, which %s needs", w.Hash, in.WrappingAlgorithm)
		}
		id, err := c.keyIDOf(in.KeyId)
		if err != nil {
			return nil, err
		}
		// Reserve a wrapping key name in the record before making the key.
		var n int
		_, err = c.updateKey(ctx, id, func(r *keyRecord) error {
			if err := c.importable(r); err != nil {
				return err
			}
			if err := wrappingAllowed(r.Spec, in.WrappingAlgorithm, in.WrappingKeySpec); err != nil {
				return err
			}
			r.ImportCount++
			n = r.ImportCount
			return nil
		})
		if err != nil {
			return nil, err
		}
		wk := hsmImportKeyID(id, n)
		if _, err := c.backend.GenerateKey(ctx, wk, spec, hsm.KeyOptions{Usage: hsm.UsageWrap, Extractable: true}); err != nil {
			return nil, backendErr(err, "creating the wrapping key")
		}
		pub, err := c.backend.PublicKey(ctx, wk)
		if err != nil {
			_ = c.backend.DestroyKey(context.WithoutCancel(ctx), wk)
			return nil, backendErr(err, "reading the wrapping key")
		}
		token := make([]byte, 33)
		token[0] = 1
		_, _ = rand.Read(token[1:])
		validTo := c.now().Add(c.cfg.ImportTokenTTL)
		var old *importRecord
		r, err := c.updateKey(ctx, id, func(r *keyRecord) error {
			if err := c.importable(r); err != nil {
				return err
			}
			old = r.Import
			r.Import = &importRecord{N: n, WrappingKey: wk, Algorithm: in.WrappingAlgorithm, Token: token, ValidTo: validTo}
			return nil
		})
		if err != nil {
			_ = c.backend.DestroyKey(context.WithoutCancel(ctx), wk)
			return nil, err
		}
		if old != nil {
			if err := c.backend.DestroyKey(ctx, old.WrappingKey); err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
				c.log.Warn("destroying a replaced import wrapping key", "hsmKey", old.WrappingKey, "err", err)
			}
		}
		return &kms.GetParametersForImportOutput{KeyId: c.arnOf(r), ImportToken: token, PublicKey: pub, ParametersValidTo: ptr(validTo)}, nil
	}()
	return out, opError("GetParametersForImport", err)
}

// keyCheck computes a check value of an HSM key, so that two imports can
// be compared without the material leaving the HSM: AES-GCM of 32 zero
// bytes under a fixed IV (a fixed message under a fixed IV reveals
// nothing), an HMAC of a fixed message (SHA-256; SHA-224 under an
// HMAC_224 key), or a key pair's public key (DER
// SubjectPublicKeyInfo, which determines the private key); then SHA-256
// of that.
func (c *Client) keyCheck(ctx context.Context, r *keyRecord, id hsm.KeyID) ([]byte, error) {
	const label = "hsmkms key check value"
	var out []byte
	var err error
	switch {
	case keySpecs[r.Spec].hsm.Asymmetric():
		out, err = c.backend.PublicKey(ctx, id)
	case r.Spec == types.KeySpecSymmetricDefault:
		out, _, err = c.backend.EncryptGCM(ctx, id, make([]byte, hsm.GCMIVSize), make([]byte, 32), []byte(label))
	case keySpecs[r.Spec].hsm == hsm.HMAC224:
		// A hash may not be longer than its HMAC key.
		out, err = c.backend.MAC(ctx, id, crypto.SHA224, []byte(label))
	default:
		out, err = c.backend.MAC(ctx, id, crypto.SHA256, []byte(label))
	}
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(out)
	return sum[:], nil
}

// ImportKeyMaterial unwraps key material inside the HSMs under the
// wrapping key of GetParametersForImport, and enables the key. The
// material of an RSA or ECC key is a DER PKCS#8 private key of the key's
// spec (IncorrectKeyMaterialException otherwise); its public key is
// derived inside the HSM. Material imported before (deleted or expired
// since) must be imported again identically: IncorrectKeyMaterialException
// otherwise.
func (c *Client) ImportKeyMaterial(ctx context.Context, in *kms.ImportKeyMaterialInput, _ ...func(*kms.Options)) (*kms.ImportKeyMaterialOutput, error) {
	out, err := func() (*kms.ImportKeyMaterialOutput, error) {
		if in == nil {
			in = &kms.ImportKeyMaterialInput{}
		}
		if len(in.ImportToken) == 0 || len(in.EncryptedKeyMaterial) == 0 {
			return nil, validation("1 validation error detected: ImportToken and EncryptedKeyMaterial must not be null")
		}
		if in.ImportType == types.ImportTypeNewKeyMaterial || in.KeyMaterialId != nil {
			return nil, unsupported("importing new key material for rotation is not supported; import the key's only material")
		}
		model := in.ExpirationModel
		if model == "" {
			model = types.ExpirationModelTypeKeyMaterialDoesNotExpire
			if in.ValidTo != nil {
				model = types.ExpirationModelTypeKeyMaterialExpires
			}
		}
		now := c.now()
		switch model {
		case types.ExpirationModelTypeKeyMaterialExpires:
			if in.ValidTo == nil {
				return nil, validation("ValidTo is required when ExpirationModel is KEY_MATERIAL_EXPIRES")
			}
			if !in.ValidTo.After(now) || in.ValidTo.After(now.Add(365*24*time.Hour)) {
				return nil, validation("ValidTo must be in the future and at most 365 days from now")
			}
		case types.ExpirationModelTypeKeyMaterialDoesNotExpire:
			if in.ValidTo != nil {
				return nil, validation("ValidTo must be omitted when ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE")
			}
		default:
			return nil, validation("1 validation error detected: Value '%s' at 'expirationModel' failed to satisfy constraint: Member must satisfy enum value set", model)
		}
		id, err := c.keyIDOf(in.KeyId)
		if err != nil {
			return nil, err
		}
		r, err := c.getKey(ctx, id)
		if err != nil {
			return nil, err
		}
		if err := c.importable(r); err != nil {
			return nil, err
		}
		imp := r.Import
		if imp == nil || !bytes.Equal(imp.Token, in.ImportToken) {
			return nil, invalidImportToken("the import token is not valid for %s", c.keyARN(r.ID))
		}
		if !now.Before(imp.ValidTo) {
			return nil, expiredImportToken("the import token expired at %s", imp.ValidTo.Format(time.RFC3339))
		}
		w, _ := wrappingFor(imp.Algorithm)
		// A fresh HSM key every time: IDs are never reused.
		target := freshHSMKeyID(string(hsmKeyID(id, 1)))
		present := r.current().Present
		spec := keySpecs[r.Spec].hsm
		_, err = c.backend.UnwrapKey(ctx, hsm.UnwrapRequest{
			WrappingKey: imp.WrappingKey, Wrapping: w, Wrapped: in.EncryptedKeyMaterial,
			ID: target, Spec: spec, Options: hsm.KeyOptions{Usage: hsmUsage(r.Usage), Extractable: true},
		})
		if err != nil {
			if errors.Is(err, hsm.ErrDecrypt) {
				return nil, &apiErr{&types.InvalidCiphertextException{Message: msg("the wrapped key material could not be unwrapped with the import wrapping key")}, 400}
			}
			if spec.Asymmetric() && errors.Is(err, hsm.ErrInvalidInput) {
				// The material unwrapped but is no PKCS#8 private key of
				// the key's spec (another type, size or curve).
				return nil, incorrectKeyMaterial("the key material is not a %s private key in PKCS#8 form", r.Spec)
			}
			return nil, backendErr(err, "importing key material")
		}
		check, err := c.keyCheck(ctx, r, target)
		if err == nil && r.current().Check != nil && !bytes.Equal(check, r.current().Check) {
			err = incorrectKeyMaterial("the key material is not the material imported into %s before", c.keyARN(r.ID))
		}
		if present || err != nil {
			// The check copy of material already present, or refused material.
			_ = c.backend.DestroyKey(context.WithoutCancel(ctx), target)
		}
		if err != nil {
			return nil, backendErr(err, "checking key material")
		}
		var validTo *time.Time
		if model == types.ExpirationModelTypeKeyMaterialExpires {
			validTo = ptr(in.ValidTo.UTC())
		}
		redundant := false // target is not needed after all
		r, err = c.updateKey(ctx, id, func(r *keyRecord) error {
			if err := c.importable(r); err != nil {
				return err
			}
			if r.Import == nil || !bytes.Equal(r.Import.Token, in.ImportToken) {
				return invalidImportToken("the import token is not valid for %s", c.keyARN(r.ID))
			}
			v := r.current()
			redundant = false
			switch {
			case present && !v.Present:
				// Deleted since this import began, which destroyed its
				// check copy: there is no HSM key to install.
				return invalidState("the key material of %s was deleted during the import; import it again", c.keyARN(r.ID))
			case !present && v.Present:
				// Another import finished meanwhile: keep its HSM key.
				if !bytes.Equal(v.Check, check) {
					return incorrectKeyMaterial("the key material is not the material imported into %s before", c.keyARN(r.ID))
				}
				redundant = true
			case !present:
				v.HSMKey = target
			}
			v.Present, v.Check = true, check
			v.MaterialID = hex.EncodeToString(check)
			r.Import = nil
			r.ExpirationModel, r.ValidTo = model, validTo
			if r.State == types.KeyStatePendingImport {
				r.State = types.KeyStateEnabled
			}
			return nil
		})
		if err != nil || redundant {
			if !present {
				_ = c.backend.DestroyKey(context.WithoutCancel(ctx), target)
			}
		}
		if err != nil {
			return nil, err
		}
		if err := c.backend.DestroyKey(ctx, imp.WrappingKey); err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
			c.log.Warn("destroying a used import wrapping key", "hsmKey", imp.WrappingKey, "err", err)
		}
		return &kms.ImportKeyMaterialOutput{KeyId: c.arnOf(r), KeyMaterialId: ptr(r.current().MaterialID)}, nil
	}()
	return out, opError("ImportKeyMaterial", err)
}

// DeleteImportedKeyMaterial destroys a key's imported material on the
// HSMs; the key goes to PendingImport until the same material is imported
// again.
func (c *Client) DeleteImportedKeyMaterial(ctx context.Context, in *kms.DeleteImportedKeyMaterialInput, _ ...func(*kms.Options)) (*kms.DeleteImportedKeyMaterialOutput, error) {
	out, err := func() (*kms.DeleteImportedKeyMaterialOutput, error) {
		if in == nil {
			in = &kms.DeleteImportedKeyMaterialInput{}
		}
		id, err := c.keyIDOf(in.KeyId)
		if err != nil {
			return nil, err
		}
		r, err := c.getKey(ctx, id)
		if err != nil {
			return nil, err
		}
		if err := c.importable(r); err != nil {
			return nil, err
		}
		if in.KeyMaterialId != nil && *in.KeyMaterialId != r.current().MaterialID {
			return nil, notFound("key material %s does not exist", *in.KeyMaterialId)
		}
		matID := r.current().MaterialID
		if err := c.deleteMaterial(ctx, id); err != nil {
			return nil, err
		}
		return &kms.DeleteImportedKeyMaterialOutput{KeyId: ptr(c.keyARN(id)), KeyMaterialId: ptr(matID)}, nil
	}()
	return out, opError("DeleteImportedKeyMaterial", err)
}

// deleteMaterial destroys imported material: the HSM key, then the record
// (a crash in between leaves a record that names missing material, which
// decrypts nothing and is corrected by the next delete or expiry).
func (c *Client) deleteMaterial(ctx context.Context, id string) error {
	return c.removeMaterial(ctx, id, false)
}

// removeMaterial marks the key's material absent in its record, then
// destroys the HSM key that held it: in that order, so that a call cut off
// between the two leaves an unused HSM key behind rather than a record
// naming a destroyed one. With expiredOnly it does nothing unless the
// stored record's ValidTo has passed (a re-import may have moved it).
func (c *Client) removeMaterial(ctx context.Context, id string, expiredOnly bool) error {
	var hk hsm.KeyID
	_, err := c.updateKey(ctx, id, func(r *keyRecord) error {
		hk = ""
		v := r.current()
		if expiredOnly && (!v.Present || r.ValidTo == nil || c.now().Before(*r.ValidTo)) {
			return errNotDue
		}
		hk = v.HSMKey
		v.Present, v.HSMKey = false, ""
		r.ValidTo = nil
		if hk != "" {
			r.Orphans = append(r.Orphans, hk) // until its destruction is confirmed
		}
		if r.State == types.KeyStateEnabled || r.State == types.KeyStateDisabled {
			r.State = types.KeyStatePendingImport
		}
		return nil
	})
	if errors.Is(err, errNotDue) {
		return nil
	}
	if err != nil {
		return err
	}
	if hk != "" {
		if err := c.destroyOrphans(ctx, id, []hsm.KeyID{hk}); err != nil {
			return err
		}
	}
	return nil
}

// destroyOrphans destroys the HSM keys hks, listed in the record's
// Orphans, and takes those destroyed off the list. What fails stays
// listed, and the next Tick tries again.
func (c *Client) destroyOrphans(ctx context.Context, id string, hks []hsm.KeyID) error {
	var done []hsm.KeyID
	var errs []error
	for _, hk := range hks {
		if err := c.backend.DestroyKey(ctx, hk); err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
			errs = append(errs, backendErr(err, "deleting key material"))
			continue
		}
		done = append(done, hk)
	}
	if len(done) > 0 {
		_, err := c.updateKey(ctx, id, func(r *keyRecord) error {
			r.Orphans = slices.DeleteFunc(r.Orphans, func(k hsm.KeyID) bool { return slices.Contains(done, k) })
			return nil
		})
		var gone *types.NotFoundException
		if err != nil && !errors.As(err, &gone) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// expireMaterial is deleteMaterial when ValidTo has passed.
func (c *Client) expireMaterial(ctx context.Context, id string) error {
	c.log.Info("imported key material expired", "key", id)
	return c.removeMaterial(ctx, id, true)
}

// dropImport destroys an expired import wrapping key and forgets its token.
func (c *Client) dropImport(ctx context.Context, id string, token []byte) error {
	r, err := c.getKey(ctx, id)
	if err != nil || r.Import == nil || !bytes.Equal(r.Import.Token, token) {
		return err
	}
	if err := c.backend.DestroyKey(ctx, r.Import.WrappingKey); err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
		return backendErr(err, "destroying the import wrapping key")
	}
	_, err = c.updateKey(ctx, id, func(r *keyRecord) error {
		if r.Import != nil && bytes.Equal(r.Import.Token, token) {
			r.Import = nil
		}
		return nil
	})
	return err
}

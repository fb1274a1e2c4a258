package kmsadapter

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/binary"
	"slices"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/hsmkms/hsmkms/hsm"
)

const (
	maxPlaintext = 4096
	maxContext   = 8192
)

func validateContext(ec map[string]string) error {
	total := 0
	for k, v := range ec {
		if k == "" {
			return validation("encryption context keys must not be empty")
		}
		total += len(k) + len(v)
	}
	if total > maxContext {
		return validation("the encryption context is longer than %d bytes", maxContext)
	}
	return nil
}

func dryRun(p *bool) error {
	if deref(p) {
		m := "The request would have succeeded, but the DryRun option is set."
		return &apiErr{&types.DryRunOperationException{Message: &m}, 412}
	}
	return nil
}

// encryptable checks that r can encrypt with alg and returns the
// algorithm AWS would use.
func (c *Client) encryptable(r *keyRecord, alg types.EncryptionAlgorithmSpec) (types.EncryptionAlgorithmSpec, error) {
	if err := c.usable(r); err != nil {
		return "", err
	}
	if r.Usage != types.KeyUsageTypeEncryptDecrypt {
		return "", invalidKeyUsage("%s key usage is %s which is not valid for this operation.", c.keyARN(r.ID), r.Usage)
	}
	if alg == "" {
		alg = types.EncryptionAlgorithmSpecSymmetricDefault
	}
	if !slices.Contains(r.encryptionAlgorithms(), alg) {
		return "", invalidKeyUsage("%s does not support the encryption algorithm %s.", c.keyARN(r.ID), alg)
	}
	return alg, nil
}

// encrypt encrypts pt under r with alg (already checked by encryptable).
func (c *Client) encrypt(ctx context.Context, r *keyRecord, alg types.EncryptionAlgorithmSpec, pt []byte, ec map[string]string) ([]byte, *versionRecord, error) {
	if alg != types.EncryptionAlgorithmSpecSymmetricDefault {
		if len(ec) > 0 {
			return nil, nil, validation("encryption context is not supported with asymmetric keys")
		}
		h, _ := oaepHash(alg)
		if !c.supportsOAEP(h) {
			return nil, nil, unsupported("the HSMs do not support %s", alg)
		}
		if max := rsaBits(r.Spec)/8 - 2*h.Size() - 2; len(pt) > max {
			return nil, nil, validation("plaintext of %d bytes is too long for %s with %s: at most %d", len(pt), r.Spec, alg, max)
		}
		ct, err := c.backend.EncryptOAEP(ctx, r.current().HSMKey, h, pt)
		if err != nil {
			return nil, nil, backendErr(err, "RSA encryption")
		}
		return ct, r.current(), nil
	}
	v := r.current()
	uuid, _ := parseUUID(r.ID)
	// The blob is allocated once, header first, and the HSM writes the
	// ciphertext straight into it (AppendEncryptGCM); the IV, known only
	// afterwards when the HSM picks it, fills the room left for it. The
	// authenticated part of the header is also the start of the
	// additional data.
	blob := make([]byte, blobHeaderLen, blobOverhead+len(pt))
	blob[0] = blobVersion1
	copy(blob[1:17], uuid[:])
	binary.BigEndian.PutUint32(blob[17:21], uint32(v.N))
	out, iv, err := c.backend.AppendEncryptGCM(ctx, blob, v.HSMKey, nil, pt, blobAAD(blob[:blobAuthLen], ec))
	if err != nil {
		return nil, nil, backendErr(err, "encryption")
	}
	if len(iv) != hsm.GCMIVSize || len(out) != len(blob)+len(pt)+hsm.GCMTagSize {
		return nil, nil, internal("the HSM returned an IV of %d bytes and %d bytes of ciphertext", len(iv), len(out)-len(blob))
	}
	copy(out[blobAuthLen:blobHeaderLen], iv)
	return out, v, nil
}

// decrypt decrypts a ciphertext. keyID is the caller's KeyId (optional
// for symmetric ciphertexts, required for RSA ones).
func (c *Client) decrypt(ctx context.Context, blob []byte, keyID *string, alg types.EncryptionAlgorithmSpec, ec map[string]string) ([]byte, *keyRecord, *versionRecord, types.EncryptionAlgorithmSpec, error) {
	if len(blob) == 0 || len(blob) > maxCiphertext {
		return nil, nil, nil, "", validation("1 validation error detected: Value at 'ciphertextBlob' failed to satisfy constraint: Member must have length between 1 and %d", maxCiphertext)
	}
	if err := validateContext(ec); err != nil {
		return nil, nil, nil, "", err
	}
	var want *keyRecord
	if keyID != nil {
		r, err := c.resolve(ctx, keyID, anyIDForm)
		if err != nil {
			return nil, nil, nil, "", err
		}
		want = r
	}
	if alg == "" {
		alg = types.EncryptionAlgorithmSpecSymmetricDefault
	}
	if want != nil && want.Spec != types.KeySpecSymmetricDefault {
		// An RSA ciphertext: no header, the caller names key and algorithm.
		if _, err := c.encryptable(want, alg); err != nil {
			return nil, nil, nil, "", err
		}
		if alg == types.EncryptionAlgorithmSpecSymmetricDefault {
			return nil, nil, nil, "", invalidKeyUsage("%s needs an RSAES_OAEP encryption algorithm.", c.keyARN(want.ID))
		}
		if len(ec) > 0 {
			return nil, nil, nil, "", validation("encryption context is not supported with asymmetric keys")
		}
		h, _ := oaepHash(alg)
		if !c.supportsOAEP(h) {
			return nil, nil, nil, "", unsupported("the HSMs do not support %s", alg)
		}
		pt, err := c.backend.DecryptOAEP(ctx, want.current().HSMKey, h, blob)
		if err != nil {
			return nil, nil, nil, "", backendErr(err, "RSA decryption")
		}
		return pt, want, want.current(), alg, nil
	}
	if alg != types.EncryptionAlgorithmSpecSymmetricDefault && want == nil {
		return nil, nil, nil, "", validation("KeyId is required to decrypt with the asymmetric algorithm %s", alg)
	}
	if alg != types.EncryptionAlgorithmSpecSymmetricDefault {
		return nil, nil, nil, "", invalidKeyUsage("the encryption algorithm %s is not valid for a symmetric ciphertext", alg)
	}
	h, ct, err := parseBlob(blob)
	if err != nil {
		return nil, nil, nil, "", invalidCiphertext("the ciphertext is invalid")
	}
	id := formatUUID(h.keyID)
	r, err := c.getKey(ctx, id)
	if err != nil {
		if isAPI[*types.NotFoundException](err) {
			return nil, nil, nil, "", invalidCiphertext("the ciphertext refers to a key that does not exist")
		}
		return nil, nil, nil, "", err
	}
	if want != nil && want.ID != r.ID {
		return nil, nil, nil, "", incorrectKey("The key ID in the request does not identify a KMS key that can perform this operation.")
	}
	if r.Spec != types.KeySpecSymmetricDefault {
		return nil, nil, nil, "", invalidCiphertext("the ciphertext is invalid")
	}
	if err := c.usable(r); err != nil {
		return nil, nil, nil, "", err
	}
	v := r.version(h.version)
	if v == nil || !v.Present {
		return nil, nil, nil, "", invalidCiphertext("the ciphertext refers to a key version that does not exist")
	}
	pt, err := c.backend.DecryptGCM(ctx, v.HSMKey, h.iv[:], ct, blobAAD(blob[:blobAuthLen], ec))
	if err != nil {
		return nil, nil, nil, "", backendErr(err, "decryption")
	}
	return pt, r, v, alg, nil
}

func isAPI[T error](err error) bool {
	ae, ok := err.(*apiErr)
	if !ok {
		return false
	}
	_, ok = ae.err.(T)
	return ok
}

func checkPlaintext(pt []byte) error {
	if len(pt) < 1 || len(pt) > maxPlaintext {
		return validation("1 validation error detected: Value at 'plaintext' failed to satisfy constraint: Member must have length between 1 and %d", maxPlaintext)
	}
	return nil
}

// Encrypt encrypts up to 4096 bytes under a symmetric key (the blob format
// is in the package documentation) or an RSA key (RSAES_OAEP_SHA_1,
// RSAES_OAEP_SHA_256 where the HSMs offer it).
func (c *Client) Encrypt(ctx context.Context, in *kms.EncryptInput, _ ...func(*kms.Options)) (*kms.EncryptOutput, error) {
	out, err := func() (*kms.EncryptOutput, error) {
		if in == nil {
			in = &kms.EncryptInput{}
		}
		if err := checkPlaintext(in.Plaintext); err != nil {
			return nil, err
		}
		if err := validateContext(in.EncryptionContext); err != nil {
			return nil, err
		}
		r, err := c.resolve(ctx, in.KeyId, anyIDForm)
		if err != nil {
			return nil, err
		}
		alg, err := c.encryptable(r, in.EncryptionAlgorithm)
		if err != nil {
			return nil, err
		}
		if err := dryRun(in.DryRun); err != nil {
			return nil, err
		}
		blob, _, err := c.encrypt(ctx, r, alg, in.Plaintext, in.EncryptionContext)
		if err != nil {
			return nil, err
		}
		return &kms.EncryptOutput{CiphertextBlob: blob, KeyId: c.arnOf(r), EncryptionAlgorithm: alg}, nil
	}()
	return out, opError("Encrypt", err)
}

// Decrypt decrypts a ciphertext from Encrypt, GenerateDataKey* or
// ReEncrypt. For symmetric ciphertexts KeyId is optional; when given it
// must name the key the ciphertext was made with (IncorrectKeyException
// otherwise).
func (c *Client) Decrypt(ctx context.Context, in *kms.DecryptInput, _ ...func(*kms.Options)) (*kms.DecryptOutput, error) {
	out, err := func() (*kms.DecryptOutput, error) {
		if in == nil {
			in = &kms.DecryptInput{}
		}
		if in.Recipient != nil {
			return nil, unsupported("Recipient (Nitro Enclaves attestation) is not supported")
		}
		pt, r, v, alg, err := c.decrypt(ctx, in.CiphertextBlob, in.KeyId, in.EncryptionAlgorithm, in.EncryptionContext)
		if err != nil {
			return nil, err
		}
		if err := dryRun(in.DryRun); err != nil {
			return nil, err
		}
		out := &kms.DecryptOutput{Plaintext: pt, KeyId: c.arnOf(r), EncryptionAlgorithm: alg}
		if r.Spec == types.KeySpecSymmetricDefault {
			out.KeyMaterialId = ptr(v.MaterialID)
		}
		return out, nil
	}()
	return out, opError("Decrypt", err)
}

// ReEncrypt decrypts a ciphertext and encrypts the plaintext under the
// destination key (or the newest version of the same key) in one call;
// the plaintext never reaches the caller.
func (c *Client) ReEncrypt(ctx context.Context, in *kms.ReEncryptInput, _ ...func(*kms.Options)) (*kms.ReEncryptOutput, error) {
	out, err := func() (*kms.ReEncryptOutput, error) {
		if in == nil {
			in = &kms.ReEncryptInput{}
		}
		if err := validateContext(in.DestinationEncryptionContext); err != nil {
			return nil, err
		}
		dst, err := c.resolve(ctx, in.DestinationKeyId, anyIDForm)
		if err != nil {
			return nil, err
		}
		dalg, err := c.encryptable(dst, in.DestinationEncryptionAlgorithm)
		if err != nil {
			return nil, err
		}
		pt, src, sv, salg, err := c.decrypt(ctx, in.CiphertextBlob, in.SourceKeyId, in.SourceEncryptionAlgorithm, in.SourceEncryptionContext)
		if err != nil {
			return nil, err
		}
		defer clear(pt)
		if err := dryRun(in.DryRun); err != nil {
			return nil, err
		}
		blob, dv, err := c.encrypt(ctx, dst, dalg, pt, in.DestinationEncryptionContext)
		if err != nil {
			return nil, err
		}
		out := &kms.ReEncryptOutput{
			CiphertextBlob: blob, KeyId: ptr(c.keyARN(dst.ID)), SourceKeyId: ptr(c.keyARN(src.ID)),
			SourceEncryptionAlgorithm: salg, DestinationEncryptionAlgorithm: dalg,
		}
		if src.Spec == types.KeySpecSymmetricDefault {
			out.SourceKeyMaterialId = ptr(sv.MaterialID)
		}
		if dst.Spec == types.KeySpecSymmetricDefault {
			out.DestinationKeyMaterialId = ptr(dv.MaterialID)
		}
		return out, nil
	}()
	return out, opError("ReEncrypt", err)
}

// dataKeyLength checks KeySpec and NumberOfBytes of GenerateDataKey*.
func dataKeyLength(spec types.DataKeySpec, n *int32) (int, error) {
	switch {
	case spec != "" && n != nil:
		return 0, validation("KeySpec and NumberOfBytes cannot both be specified")
	case spec == types.DataKeySpecAes128:
		return 16, nil
	case spec == types.DataKeySpecAes256:
		return 32, nil
	case spec != "":
		return 0, validation("1 validation error detected: Value '%s' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [AES_256, AES_128]", spec)
	case n == nil:
		return 0, validation("Please specify either number of bytes or key spec.")
	case *n < 1 || *n > 1024:
		return 0, validation("1 validation error detected: Value '%d' at 'numberOfBytes' failed to satisfy constraint: Member must have value between 1 and 1024", *n)
	}
	return int(*n), nil
}

// symmetricKey resolves a key that must be a symmetric encryption key.
func (c *Client) symmetricKey(ctx context.Context, keyID *string) (*keyRecord, error) {
	r, err := c.resolve(ctx, keyID, anyIDForm)
	if err != nil {
		return nil, err
	}
	if err := c.usable(r); err != nil {
		return nil, err
	}
	if r.Spec != types.KeySpecSymmetricDefault {
		return nil, invalidKeyUsage("%s is not a symmetric encryption key.", c.keyARN(r.ID))
	}
	return r, nil
}

func (c *Client) generateDataKey(ctx context.Context, keyID *string, spec types.DataKeySpec, n *int32, ec map[string]string, dry *bool) ([]byte, []byte, *keyRecord, *versionRecord, error) {
	size, err := dataKeyLength(spec, n)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	if err := validateContext(ec); err != nil {
		return nil, nil, nil, nil, err
	}
	r, err := c.symmetricKey(ctx, keyID)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	if err := dryRun(dry); err != nil {
		return nil, nil, nil, nil, err
	}
	pt, err := c.backend.Random(ctx, size)
	if err != nil {
		return nil, nil, nil, nil, backendErr(err, "generating the data key")
	}
	blob, v, err := c.encrypt(ctx, r, types.EncryptionAlgorithmSpecSymmetricDefault, pt, ec)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	return pt, blob, r, v, nil
}

// GenerateDataKey returns a data key from the HSMs' random generator, in
// plaintext and encrypted under a symmetric key.
func (c *Client) GenerateDataKey(ctx context.Context, in *kms.GenerateDataKeyInput, _ ...func(*kms.Options)) (*kms.GenerateDataKeyOutput, error) {
	out, err := func() (*kms.GenerateDataKeyOutput, error) {
		if in == nil {
			in = &kms.GenerateDataKeyInput{}
		}
		if in.Recipient != nil {
			return nil, unsupported("Recipient (Nitro Enclaves attestation) is not supported")
		}
		pt, blob, r, v, err := c.generateDataKey(ctx, in.KeyId, in.KeySpec, in.NumberOfBytes, in.EncryptionContext, in.DryRun)
		if err != nil {
			return nil, err
		}
		return &kms.GenerateDataKeyOutput{Plaintext: pt, CiphertextBlob: blob, KeyId: c.arnOf(r), KeyMaterialId: ptr(v.MaterialID)}, nil
	}()
	return out, opError("GenerateDataKey", err)
}

// GenerateDataKeyWithoutPlaintext is GenerateDataKey without the plaintext.
func (c *Client) GenerateDataKeyWithoutPlaintext(ctx context.Context, in *kms.GenerateDataKeyWithoutPlaintextInput, _ ...func(*kms.Options)) (*kms.GenerateDataKeyWithoutPlaintextOutput, error) {
	out, err := func() (*kms.GenerateDataKeyWithoutPlaintextOutput, error) {
		if in == nil {
			in = &kms.GenerateDataKeyWithoutPlaintextInput{}
		}
		pt, blob, r, v, err := c.generateDataKey(ctx, in.KeyId, in.KeySpec, in.NumberOfBytes, in.EncryptionContext, in.DryRun)
		if err != nil {
			return nil, err
		}
		clear(pt)
		return &kms.GenerateDataKeyWithoutPlaintextOutput{CiphertextBlob: blob, KeyId: c.arnOf(r), KeyMaterialId: ptr(v.MaterialID)}, nil
	}()
	return out, opError("GenerateDataKeyWithoutPlaintext", err)
}

// newKeyPair makes a data key pair: PKCS#8 private key, SPKI public key.
func newKeyPair(spec types.DataKeyPairSpec) (priv, pub []byte, err error) {
	var key crypto.Signer
	switch spec {
	case types.DataKeyPairSpecRsa2048, types.DataKeyPairSpecRsa3072, types.DataKeyPairSpecRsa4096:
		bits := map[types.DataKeyPairSpec]int{types.DataKeyPairSpecRsa2048: 2048, types.DataKeyPairSpecRsa3072: 3072, types.DataKeyPairSpecRsa4096: 4096}[spec]
		key, err = rsa.GenerateKey(rand.Reader, bits)
	case types.DataKeyPairSpecEccNistP256:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case types.DataKeyPairSpecEccNistP384:
		key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case types.DataKeyPairSpecEccNistP521:
		key, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	case "":
		return nil, nil, validation("1 validation error detected: Value null at 'keyPairSpec' failed to satisfy constraint: Member must not be null")
	default:
		if slices.Contains(types.DataKeyPairSpec("").Values(), spec) {
			return nil, nil, unsupported("data key pair spec %s is not supported by hsmkms", spec)
		}
		return nil, nil, validation("1 validation error detected: Value '%s' at 'keyPairSpec' failed to satisfy constraint: Member must satisfy enum value set", spec)
	}
	if err != nil {
		return nil, nil, internal("generating the key pair failed")
	}
	if priv, err = x509.MarshalPKCS8PrivateKey(key); err != nil {
		return nil, nil, internal("encoding the key pair failed")
	}
	if pub, err = x509.MarshalPKIXPublicKey(key.Public()); err != nil {
		return nil, nil, internal("encoding the key pair failed")
	}
	return priv, pub, nil
}

func (c *Client) generateDataKeyPair(ctx context.Context, keyID *string, spec types.DataKeyPairSpec, ec map[string]string, dry *bool) (priv, blob, pub []byte, r *keyRecord, v *versionRecord, err error) {
	if err := validateContext(ec); err != nil {
		return nil, nil, nil, nil, nil, err
	}
	if r, err = c.symmetricKey(ctx, keyID); err != nil {
		return nil, nil, nil, nil, nil, err
	}
	if err := dryRun(dry); err != nil {
		return nil, nil, nil, nil, nil, err
	}
	if priv, pub, err = newKeyPair(spec); err != nil {
		return nil, nil, nil, nil, nil, err
	}
	if blob, v, err = c.encrypt(ctx, r, types.EncryptionAlgorithmSpecSymmetricDefault, priv, ec); err != nil {
		return nil, nil, nil, nil, nil, err
	}
	return priv, blob, pub, r, v, nil
}

// GenerateDataKeyPair returns a new key pair: the private key in PKCS#8
// DER, in plaintext and encrypted under a symmetric key, and the public
// key in SubjectPublicKeyInfo DER.
func (c *Client) GenerateDataKeyPair(ctx context.Context, in *kms.GenerateDataKeyPairInput, _ ...func(*kms.Options)) (*kms.GenerateDataKeyPairOutput, error) {
	out, err := func() (*kms.GenerateDataKeyPairOutput, error) {
		if in == nil {
			in = &kms.GenerateDataKeyPairInput{}
		}
		if in.Recipient != nil {
			return nil, unsupported("Recipient (Nitro Enclaves attestation) is not supported")
		}
		priv, blob, pub, r, v, err := c.generateDataKeyPair(ctx, in.KeyId, in.KeyPairSpec, in.EncryptionContext, in.DryRun)
		if err != nil {
			return nil, err
		}
		return &kms.GenerateDataKeyPairOutput{
			PrivateKeyPlaintext: priv, PrivateKeyCiphertextBlob: blob, PublicKey: pub,
			KeyId: c.arnOf(r), KeyPairSpec: in.KeyPairSpec, KeyMaterialId: ptr(v.MaterialID),
		}, nil
	}()
	return out, opError("GenerateDataKeyPair", err)
}

// GenerateDataKeyPairWithoutPlaintext is GenerateDataKeyPair without the
// plaintext private key.
func (c *Client) GenerateDataKeyPairWithoutPlaintext(ctx context.Context, in *kms.GenerateDataKeyPairWithoutPlaintextInput, _ ...func(*kms.Options)) (*kms.GenerateDataKeyPairWithoutPlaintextOutput, error) {
	out, err := func() (*kms.GenerateDataKeyPairWithoutPlaintextOutput, error) {
		if in == nil {
			in = &kms.GenerateDataKeyPairWithoutPlaintextInput{}
		}
		priv, blob, pub, r, v, err := c.generateDataKeyPair(ctx, in.KeyId, in.KeyPairSpec, in.EncryptionContext, in.DryRun)
		if err != nil {
			return nil, err
		}
		clear(priv)
		return &kms.GenerateDataKeyPairWithoutPlaintextOutput{
			PrivateKeyCiphertextBlob: blob, PublicKey: pub,
			KeyId: c.arnOf(r), KeyPairSpec: in.KeyPairSpec, KeyMaterialId: ptr(v.MaterialID),
		}, nil
	}()
	return out, opError("GenerateDataKeyPairWithoutPlaintext", err)
}

package kmsadapter

import (
	"context"
	"slices"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/hsmkms/hsmkms/hsm"
)

// signInput checks a Sign or Verify request and returns the key, the
// scheme, the hash and the digest to sign.
func (c *Client) signInput(ctx context.Context, keyID *string, msg []byte, mt types.MessageType, alg types.SigningAlgorithmSpec) (*keyRecord, hsm.SigningScheme, []byte, error) {
	if len(msg) < 1 || len(msg) > maxPlaintext {
		return nil, 0, nil, validation("1 validation error detected: Value at 'message' failed to satisfy constraint: Member must have length between 1 and %d", maxPlaintext)
	}
	if alg == "" {
		return nil, 0, nil, validation("1 validation error detected: Value null at 'signingAlgorithm' failed to satisfy constraint: Member must not be null")
	}
	sc, h, known := signingAlgorithm(alg)
	if !known && !slices.Contains(types.SigningAlgorithmSpec("").Values(), alg) {
		return nil, 0, nil, validation("1 validation error detected: Value '%s' at 'signingAlgorithm' failed to satisfy constraint: Member must satisfy enum value set", alg)
	}
	switch mt {
	case "", types.MessageTypeRaw, types.MessageTypeDigest:
	case types.MessageTypeExternalMu:
		return nil, 0, nil, validation("MessageType EXTERNAL_MU is for ML-DSA keys only")
	default:
		return nil, 0, nil, validation("1 validation error detected: Value '%s' at 'messageType' failed to satisfy constraint: Member must satisfy enum value set: [RAW, DIGEST, EXTERNAL_MU]", mt)
	}
	r, err := c.resolve(ctx, keyID, anyIDForm)
	if err != nil {
		return nil, 0, nil, err
	}
	if err := c.usable(r); err != nil {
		return nil, 0, nil, err
	}
	if r.Usage != types.KeyUsageTypeSignVerify {
		return nil, 0, nil, invalidKeyUsage("%s key usage is %s which is not valid for signing.", c.keyARN(r.ID), r.Usage)
	}
	if !known || !slices.Contains(r.signingAlgorithms(), alg) {
		return nil, 0, nil, invalidKeyUsage("%s does not support the signing algorithm %s.", c.keyARN(r.ID), alg)
	}
	digest := msg
	if mt == types.MessageTypeDigest {
		if len(msg) != h.Size() {
			return nil, 0, nil, validation("Digest is invalid length for algorithm %s.", alg)
		}
	} else {
		hh := h.New()
		hh.Write(msg)
		digest = hh.Sum(nil)
	}
	return r, sc, digest, nil
}

// Sign signs a message, or its digest (MessageType DIGEST), with an
// asymmetric key. ECDSA signatures are DER-encoded, as at AWS.
func (c *Client) Sign(ctx context.Context, in *kms.SignInput, _ ...func(*kms.Options)) (*kms.SignOutput, error) {
	out, err := func() (*kms.SignOutput, error) {
		if in == nil {
			in = &kms.SignInput{}
		}
		r, sc, digest, err := c.signInput(ctx, in.KeyId, in.Message, in.MessageType, in.SigningAlgorithm)
		if err != nil {
			return nil, err
		}
		if err := dryRun(in.DryRun); err != nil {
			return nil, err
		}
		_, h, _ := signingAlgorithm(in.SigningAlgorithm)
		sig, err := c.backend.Sign(ctx, r.current().HSMKey, sc, h, digest)
		if err != nil {
			return nil, backendErr(err, "signing")
		}
		return &kms.SignOutput{KeyId: c.arnOf(r), Signature: sig, SigningAlgorithm: in.SigningAlgorithm}, nil
	}()
	return out, opError("Sign", err)
}

// Verify checks a signature. A signature that does not verify is
// KMSInvalidSignatureException, never SignatureValid false.
func (c *Client) Verify(ctx context.Context, in *kms.VerifyInput, _ ...func(*kms.Options)) (*kms.VerifyOutput, error) {
	out, err := func() (*kms.VerifyOutput, error) {
		if in == nil {
			in = &kms.VerifyInput{}
		}
		if len(in.Signature) < 1 || len(in.Signature) > 6144 {
			return nil, validation("1 validation error detected: Value at 'signature' failed to satisfy constraint: Member must have length between 1 and 6144")
		}
		r, sc, digest, err := c.signInput(ctx, in.KeyId, in.Message, in.MessageType, in.SigningAlgorithm)
		if err != nil {
			return nil, err
		}
		if err := dryRun(in.DryRun); err != nil {
			return nil, err
		}
		_, h, _ := signingAlgorithm(in.SigningAlgorithm)
		if err := c.backend.Verify(ctx, r.current().HSMKey, sc, h, digest, in.Signature); err != nil {
			return nil, backendErr(err, "verifying")
		}
		return &kms.VerifyOutput{KeyId: c.arnOf(r), SignatureValid: true, SigningAlgorithm: in.SigningAlgorithm}, nil
	}()
	return out, opError("Verify", err)
}

// GetPublicKey returns the public key of an asymmetric key as DER
// SubjectPublicKeyInfo.
func (c *Client) GetPublicKey(ctx context.Context, in *kms.GetPublicKeyInput, _ ...func(*kms.Options)) (*kms.GetPublicKeyOutput, error) {
	out, err := func() (*kms.GetPublicKeyOutput, error) {
		if in == nil {
			in = &kms.GetPublicKeyInput{}
		}
		r, err := c.resolve(ctx, in.KeyId, anyIDForm)
		if err != nil {
			return nil, err
		}
		if err := c.usable(r); err != nil {
			return nil, err
		}
		if !isRSA(r.Spec) && len(keySpecs[r.Spec].sign) == 0 {
			return nil, unsupported("%s is not an asymmetric key; it has no public key.", c.keyARN(r.ID))
		}
		der, err := c.backend.PublicKey(ctx, r.current().HSMKey)
		if err != nil {
			return nil, backendErr(err, "reading the public key")
		}
		return &kms.GetPublicKeyOutput{
			KeyId: c.arnOf(r), PublicKey: der, KeySpec: r.Spec,
			//lint:ignore SA1019 AWS still returns the deprecated field, and callers may read it
			CustomerMasterKeySpec: types.CustomerMasterKeySpec(r.Spec),
			KeyUsage:              r.Usage, EncryptionAlgorithms: r.encryptionAlgorithms(), SigningAlgorithms: r.signingAlgorithms(),
		}, nil
	}()
	return out, opError("GetPublicKey", err)
}

func (c *Client) macInput(ctx context.Context, keyID *string, msg []byte, alg types.MacAlgorithmSpec) (*keyRecord, error) {
	if len(msg) < 1 || len(msg) > maxPlaintext {
		return nil, validation("1 validation error detected: Value at 'message' failed to satisfy constraint: Member must have length between 1 and %d", maxPlaintext)
	}
	if macHash(alg) == 0 {
		return nil, validation("1 validation error detected: Value '%s' at 'macAlgorithm' failed to satisfy constraint: Member must satisfy enum value set: [HMAC_SHA_224, HMAC_SHA_256, HMAC_SHA_384, HMAC_SHA_512]", alg)
	}
	r, err := c.resolve(ctx, keyID, anyIDForm)
	if err != nil {
		return nil, err
	}
	if err := c.usable(r); err != nil {
		return nil, err
	}
	if r.Usage != types.KeyUsageTypeGenerateVerifyMac {
		return nil, invalidKeyUsage("%s key usage is %s which is not valid for MAC operations.", c.keyARN(r.ID), r.Usage)
	}
	if keySpecs[r.Spec].mac != alg {
		return nil, invalidKeyUsage("%s does not support the MAC algorithm %s.", c.keyARN(r.ID), alg)
	}
	return r, nil
}

// GenerateMac computes an HMAC with an HMAC key.
func (c *Client) GenerateMac(ctx context.Context, in *kms.GenerateMacInput, _ ...func(*kms.Options)) (*kms.GenerateMacOutput, error) {
	out, err := func() (*kms.GenerateMacOutput, error) {
		if in == nil {
			in = &kms.GenerateMacInput{}
		}
		r, err := c.macInput(ctx, in.KeyId, in.Message, in.MacAlgorithm)
		if err != nil {
			return nil, err
		}
		if err := dryRun(in.DryRun); err != nil {
			return nil, err
		}
		mac, err := c.backend.MAC(ctx, r.current().HSMKey, macHash(in.MacAlgorithm), in.Message)
		if err != nil {
			return nil, backendErr(err, "computing the MAC")
		}
		return &kms.GenerateMacOutput{KeyId: c.arnOf(r), Mac: mac, MacAlgorithm: in.MacAlgorithm}, nil
	}()
	return out, opError("GenerateMac", err)
}

// VerifyMac checks an HMAC. A MAC that does not verify is
// KMSInvalidMacException, never MacValid false.
func (c *Client) VerifyMac(ctx context.Context, in *kms.VerifyMacInput, _ ...func(*kms.Options)) (*kms.VerifyMacOutput, error) {
	out, err := func() (*kms.VerifyMacOutput, error) {
		if in == nil {
			in = &kms.VerifyMacInput{}
		}
		if len(in.Mac) < 1 || len(in.Mac) > 6144 {
			return nil, validation("1 validation error detected: Value at 'mac' failed to satisfy constraint: Member must have length between 1 and 6144")
		}
		r, err := c.macInput(ctx, in.KeyId, in.Message, in.MacAlgorithm)
		if err != nil {
			return nil, err
		}
		if err := dryRun(in.DryRun); err != nil {
			return nil, err
		}
		err = c.backend.VerifyMAC(ctx, r.current().HSMKey, macHash(in.MacAlgorithm), in.Message, in.Mac)
		if err != nil {
			if isVerifyErr(err) {
				return nil, invalidMac()
			}
			return nil, backendErr(err, "verifying the MAC")
		}
		return &kms.VerifyMacOutput{KeyId: c.arnOf(r), MacValid: true, MacAlgorithm: in.MacAlgorithm}, nil
	}()
	return out, opError("VerifyMac", err)
}

// GenerateRandom returns 1 to 1024 random bytes from the HSMs.
func (c *Client) GenerateRandom(ctx context.Context, in *kms.GenerateRandomInput, _ ...func(*kms.Options)) (*kms.GenerateRandomOutput, error) {
	out, err := func() (*kms.GenerateRandomOutput, error) {
		if in == nil {
			in = &kms.GenerateRandomInput{}
		}
		switch {
		case in.CustomKeyStoreId != nil:
			return nil, unsupported("custom key stores are not supported")
		case in.Recipient != nil:
			return nil, unsupported("Recipient (Nitro Enclaves attestation) is not supported")
		case in.NumberOfBytes == nil:
			return nil, validation("1 validation error detected: Value null at 'numberOfBytes' failed to satisfy constraint: Member must not be null")
		case *in.NumberOfBytes < 1 || *in.NumberOfBytes > 1024:
			return nil, validation("1 validation error detected: Value '%d' at 'numberOfBytes' failed to satisfy constraint: Member must have value between 1 and 1024", *in.NumberOfBytes)
		}
		b, err := c.backend.Random(ctx, int(*in.NumberOfBytes))
		if err != nil {
			return nil, backendErr(err, "generating random bytes")
		}
		return &kms.GenerateRandomOutput{Plaintext: b}, nil
	}()
	return out, opError("GenerateRandom", err)
}

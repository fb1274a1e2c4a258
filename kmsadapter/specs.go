package kmsadapter

import (
	"crypto"
	"slices"

	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/hsmkms/hsmkms/hsm"
)

// keySpecInfo is what a KMS key spec means on the HSMs.
type keySpecInfo struct {
	hsm    hsm.KeySpec
	usages []types.KeyUsageType // the first is the default when the caller gives none
	sign   []types.SigningAlgorithmSpec
	mac    types.MacAlgorithmSpec
}

var keySpecs = map[types.KeySpec]keySpecInfo{
	types.KeySpecSymmetricDefault: {hsm: hsm.AES256, usages: []types.KeyUsageType{types.KeyUsageTypeEncryptDecrypt}},
	types.KeySpecRsa2048:          {hsm: hsm.RSA2048, usages: []types.KeyUsageType{types.KeyUsageTypeEncryptDecrypt, types.KeyUsageTypeSignVerify}, sign: rsaSigning},
	types.KeySpecRsa3072:          {hsm: hsm.RSA3072, usages: []types.KeyUsageType{types.KeyUsageTypeEncryptDecrypt, types.KeyUsageTypeSignVerify}, sign: rsaSigning},
	types.KeySpecRsa4096:          {hsm: hsm.RSA4096, usages: []types.KeyUsageType{types.KeyUsageTypeEncryptDecrypt, types.KeyUsageTypeSignVerify}, sign: rsaSigning},
	types.KeySpecEccNistP256:      {hsm: hsm.ECP256, usages: []types.KeyUsageType{types.KeyUsageTypeSignVerify}, sign: []types.SigningAlgorithmSpec{types.SigningAlgorithmSpecEcdsaSha256}},
	types.KeySpecEccNistP384:      {hsm: hsm.ECP384, usages: []types.KeyUsageType{types.KeyUsageTypeSignVerify}, sign: []types.SigningAlgorithmSpec{types.SigningAlgorithmSpecEcdsaSha384}},
	types.KeySpecEccNistP521:      {hsm: hsm.ECP521, usages: []types.KeyUsageType{types.KeyUsageTypeSignVerify}, sign: []types.SigningAlgorithmSpec{types.SigningAlgorithmSpecEcdsaSha512}},
	types.KeySpecEccSecgP256k1:    {hsm: hsm.ECSecp256k1, usages: []types.KeyUsageType{types.KeyUsageTypeSignVerify}, sign: []types.SigningAlgorithmSpec{types.SigningAlgorithmSpecEcdsaSha256}},
	types.KeySpecHmac224:          {hsm: hsm.HMAC224, usages: []types.KeyUsageType{types.KeyUsageTypeGenerateVerifyMac}, mac: types.MacAlgorithmSpecHmacSha224},
	types.KeySpecHmac256:          {hsm: hsm.HMAC256, usages: []types.KeyUsageType{types.KeyUsageTypeGenerateVerifyMac}, mac: types.MacAlgorithmSpecHmacSha256},
	types.KeySpecHmac384:          {hsm: hsm.HMAC384, usages: []types.KeyUsageType{types.KeyUsageTypeGenerateVerifyMac}, mac: types.MacAlgorithmSpecHmacSha384},
	types.KeySpecHmac512:          {hsm: hsm.HMAC512, usages: []types.KeyUsageType{types.KeyUsageTypeGenerateVerifyMac}, mac: types.MacAlgorithmSpecHmacSha512},
}

var rsaSigning = []types.SigningAlgorithmSpec{
	types.SigningAlgorithmSpecRsassaPssSha256, types.SigningAlgorithmSpecRsassaPssSha384, types.SigningAlgorithmSpecRsassaPssSha512,
	types.SigningAlgorithmSpecRsassaPkcs1V15Sha256, types.SigningAlgorithmSpecRsassaPkcs1V15Sha384, types.SigningAlgorithmSpecRsassaPkcs1V15Sha512,
}

func isRSA(s types.KeySpec) bool {
	return s == types.KeySpecRsa2048 || s == types.KeySpecRsa3072 || s == types.KeySpecRsa4096
}

func isHMAC(s types.KeySpec) bool { return keySpecs[s].mac != "" }

// keyClass is the type of key UpdateAlias keeps: symmetric, asymmetric
// or HMAC.
func keyClass(s types.KeySpec) string {
	switch {
	case s == types.KeySpecSymmetricDefault:
		return "symmetric"
	case isHMAC(s):
		return "HMAC"
	}
	return "asymmetric"
}

func hsmUsage(u types.KeyUsageType) hsm.Usage {
	if u == types.KeyUsageTypeEncryptDecrypt {
		return hsm.UsageEncrypt
	}
	return hsm.UsageSign
}

func (r *keyRecord) encryptionAlgorithms() []types.EncryptionAlgorithmSpec {
	switch {
	case r.Usage != types.KeyUsageTypeEncryptDecrypt:
		return nil
	case r.Spec == types.KeySpecSymmetricDefault:
		return []types.EncryptionAlgorithmSpec{types.EncryptionAlgorithmSpecSymmetricDefault}
	}
	return []types.EncryptionAlgorithmSpec{types.EncryptionAlgorithmSpecRsaesOaepSha1, types.EncryptionAlgorithmSpecRsaesOaepSha256}
}

func (r *keyRecord) signingAlgorithms() []types.SigningAlgorithmSpec {
	if r.Usage != types.KeyUsageTypeSignVerify {
		return nil
	}
	return slices.Clone(keySpecs[r.Spec].sign) // the caller may write into it
}

func (r *keyRecord) macAlgorithms() []types.MacAlgorithmSpec {
	if m := keySpecs[r.Spec].mac; m != "" {
		return []types.MacAlgorithmSpec{m}
	}
	return nil
}

// signingAlgorithm maps a KMS signing algorithm to the HSM's scheme and hash.
func signingAlgorithm(a types.SigningAlgorithmSpec) (hsm.SigningScheme, crypto.Hash, bool) {
	switch a {
	case types.SigningAlgorithmSpecRsassaPssSha256:
		return hsm.PSS, crypto.SHA256, true
	case types.SigningAlgorithmSpecRsassaPssSha384:
		return hsm.PSS, crypto.SHA384, true
	case types.SigningAlgorithmSpecRsassaPssSha512:
		return hsm.PSS, crypto.SHA512, true
	case types.SigningAlgorithmSpecRsassaPkcs1V15Sha256:
		return hsm.PKCS1v15, crypto.SHA256, true
	case types.SigningAlgorithmSpecRsassaPkcs1V15Sha384:
		return hsm.PKCS1v15, crypto.SHA384, true
	case types.SigningAlgorithmSpecRsassaPkcs1V15Sha512:
		return hsm.PKCS1v15, crypto.SHA512, true
	case types.SigningAlgorithmSpecEcdsaSha256:
		return hsm.ECDSA, crypto.SHA256, true
	case types.SigningAlgorithmSpecEcdsaSha384:
		return hsm.ECDSA, crypto.SHA384, true
	case types.SigningAlgorithmSpecEcdsaSha512:
		return hsm.ECDSA, crypto.SHA512, true
	}
	return 0, 0, false
}

func macHash(a types.MacAlgorithmSpec) crypto.Hash {
	switch a {
	case types.MacAlgorithmSpecHmacSha224:
		return crypto.SHA224
	case types.MacAlgorithmSpecHmacSha256:
		return crypto.SHA256
	case types.MacAlgorithmSpecHmacSha384:
		return crypto.SHA384
	case types.MacAlgorithmSpecHmacSha512:
		return crypto.SHA512
	}
	return 0
}

// oaepHash maps an RSA encryption algorithm to its OAEP hash.
func oaepHash(a types.EncryptionAlgorithmSpec) (crypto.Hash, bool) {
	switch a {
	case types.EncryptionAlgorithmSpecRsaesOaepSha1:
		return crypto.SHA1, true
	case types.EncryptionAlgorithmSpecRsaesOaepSha256:
		return crypto.SHA256, true
	}
	return 0, false
}

// rsaBits is the modulus size of an RSA key spec.
func rsaBits(s types.KeySpec) int {
	switch s {
	case types.KeySpecRsa2048:
		return 2048
	case types.KeySpecRsa3072:
		return 3072
	case types.KeySpecRsa4096:
		return 4096
	}
	return 0
}

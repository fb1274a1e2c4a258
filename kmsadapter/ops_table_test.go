package kmsadapter_test

import (
	"crypto/sha256"
	"fmt"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/stretchr/testify/require"

	"github.com/hsmkms/hsmkms/cluster"
)

func keyARN(id string) string { return "arn:aws:kms:us-east-1:111122223333:key/" + id }

const missingKey = "0f0e0d0c-0b0a-4908-8706-050403020100"

// TestOperationTable runs every operation's success and error paths, each
// with the exception the AWS KMS API reference gives for the condition.
// Rows run in order; rows that change state use keys of their own.
func TestOperationTable(t *testing.T) {
	t.Run("token", func(t *testing.T) { operationTable(t, newEnv(t)) })
	t.Run("cluster of 3", func(t *testing.T) { operationTable(t, newEnvOnCluster(t)) })
}

func operationTable(t *testing.T, e *env) {
	c := e.c
	const (
		SignV  = types.KeyUsageTypeSignVerify
		EncDec = types.KeyUsageTypeEncryptDecrypt
		MacU   = types.KeyUsageTypeGenerateVerifyMac
	)
	sym := e.createKey("", "")
	sym2 := e.createKey("", "")
	symDis := e.createKey("", "")
	symDel := e.createKey("", "")
	symMut := e.createKey("", "")
	rsaEnc := e.createKey(types.KeySpecRsa2048, EncDec)
	rsaSign := e.createKey(types.KeySpecRsa2048, SignV)
	ec := e.createKey(types.KeySpecEccNistP256, SignV)
	hmac := e.createKey(types.KeySpecHmac256, MacU)
	extOut, err := c.CreateKey(bg, &kms.CreateKeyInput{Origin: types.OriginTypeExternal})
	require.NoError(t, err)
	ext := *extOut.KeyMetadata.KeyId

	_, err = c.CreateAlias(bg, &kms.CreateAliasInput{AliasName: str("alias/sym"), TargetKeyId: str(sym)})
	require.NoError(t, err)
	ctxAB := map[string]string{"a": "b"}
	ct, err := c.Encrypt(bg, &kms.EncryptInput{KeyId: str(sym), Plaintext: []byte("secret"), EncryptionContext: ctxAB})
	require.NoError(t, err)
	blob := ct.CiphertextBlob
	ctDis, err := c.Encrypt(bg, &kms.EncryptInput{KeyId: str(symDis), Plaintext: []byte("secret")})
	require.NoError(t, err)
	_, err = c.DisableKey(bg, &kms.DisableKeyInput{KeyId: str(symDis)})
	require.NoError(t, err)
	_, err = c.ScheduleKeyDeletion(bg, &kms.ScheduleKeyDeletionInput{KeyId: str(symDel), PendingWindowInDays: i32(7)})
	require.NoError(t, err)
	rsaCT, err := c.Encrypt(bg, &kms.EncryptInput{KeyId: str(rsaEnc), Plaintext: []byte("rsa secret"), EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1})
	require.NoError(t, err)
	msg := []byte("message to sign")
	sig, err := c.Sign(bg, &kms.SignInput{KeyId: str(ec), Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	require.NoError(t, err)
	mac, err := c.GenerateMac(bg, &kms.GenerateMacInput{KeyId: str(hmac), Message: msg, MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
	require.NoError(t, err)
	digest := sha256.Sum256(msg)
	badSig := append([]byte(nil), sig.Signature...)
	badSig[len(badSig)-3] ^= 1
	badMac := append([]byte(nil), mac.Mac...)
	badMac[0] ^= 1

	const (
		ok           = ""
		Validation   = "ValidationException"
		NotFound     = "NotFoundException"
		Disabled     = "DisabledException"
		InvalidState = "KMSInvalidStateException"
		BadCT        = "InvalidCiphertextException"
		IncorrectKey = "IncorrectKeyException"
		Usage        = "InvalidKeyUsageException"
		BadSig       = "KMSInvalidSignatureException"
		BadMac       = "KMSInvalidMacException"
		Exists       = "AlreadyExistsException"
		AliasName    = "InvalidAliasNameException"
		BadArn       = "InvalidArnException"
		Limit        = "LimitExceededException"
		Unsupported  = "UnsupportedOperationException"
		Policy       = "MalformedPolicyDocumentException"
		Tag          = "TagException"
		Marker       = "InvalidMarkerException"
		DryRun       = "DryRunOperationException"
		ImportToken  = "InvalidImportTokenException"
	)
	enc := func(keyID string, pt []byte) func() error {
		return func() error {
			_, err := c.Encrypt(bg, &kms.EncryptInput{KeyId: str(keyID), Plaintext: pt})
			return err
		}
	}
	fortyNineTags := make([]types.Tag, 51)
	for i := range fortyNineTags {
		fortyNineTags[i] = types.Tag{TagKey: str(fmt.Sprintf("k%02d", i)), TagValue: str("v")}
	}

	rows := []struct {
		name string
		want string
		call func() error
	}{
		// Encrypt
		{"Encrypt/key ID", ok, enc(sym, []byte("x"))},
		{"Encrypt/key ARN", ok, enc(keyARN(sym), []byte("x"))},
		{"Encrypt/alias name", ok, enc("alias/sym", []byte("x"))},
		{"Encrypt/alias ARN", ok, enc("arn:aws:kms:us-east-1:111122223333:alias/sym", []byte("x"))},
		{"Encrypt/4096 bytes", ok, enc(sym, make([]byte, 4096))},
		{"Encrypt/4097 bytes", Validation, enc(sym, make([]byte, 4097))},
		{"Encrypt/empty plaintext", Validation, enc(sym, nil)},
		{"Encrypt/no KeyId", Validation, func() error { _, err := c.Encrypt(bg, &kms.EncryptInput{Plaintext: []byte("x")}); return err }},
		{"Encrypt/unknown key", NotFound, enc(missingKey, []byte("x"))},
		{"Encrypt/unknown alias", NotFound, enc("alias/nope", []byte("x"))},
		{"Encrypt/not a key ID", NotFound, enc("not-a-key", []byte("x"))},
		{"Encrypt/malformed ARN", BadArn, enc("arn:aws:kms", []byte("x"))},
		{"Encrypt/ARN of another account", NotFound, enc("arn:aws:kms:us-east-1:999999999999:key/"+sym, []byte("x"))},
		{"Encrypt/ARN of another region", NotFound, enc("arn:aws:kms:eu-west-1:111122223333:key/"+sym, []byte("x"))},
		{"Encrypt/disabled", Disabled, enc(symDis, []byte("x"))},
		{"Encrypt/pending deletion", InvalidState, enc(symDel, []byte("x"))},
		{"Encrypt/pending import", InvalidState, enc(ext, []byte("x"))},
		{"Encrypt/signing key", Usage, enc(ec, []byte("x"))},
		{"Encrypt/HMAC key", Usage, enc(hmac, []byte("x"))},
		{"Encrypt/RSA key, default algorithm", Usage, enc(rsaEnc, []byte("x"))},
		{"Encrypt/symmetric key, RSA algorithm", Usage, func() error {
			_, err := c.Encrypt(bg, &kms.EncryptInput{KeyId: str(sym), Plaintext: []byte("x"), EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1})
			return err
		}},
		{"Encrypt/RSAES_OAEP_SHA_1", ok, func() error {
			_, err := c.Encrypt(bg, &kms.EncryptInput{KeyId: str(rsaEnc), Plaintext: make([]byte, 214), EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1})
			return err
		}},
		{"Encrypt/RSAES_OAEP_SHA_1 plaintext too long", Validation, func() error {
			_, err := c.Encrypt(bg, &kms.EncryptInput{KeyId: str(rsaEnc), Plaintext: make([]byte, 215), EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1})
			return err
		}},
		{"Encrypt/RSAES_OAEP_SHA_256 on SoftHSM", Unsupported, func() error {
			_, err := c.Encrypt(bg, &kms.EncryptInput{KeyId: str(rsaEnc), Plaintext: []byte("x"), EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha256})
			return err
		}},
		{"Encrypt/RSA with encryption context", Validation, func() error {
			_, err := c.Encrypt(bg, &kms.EncryptInput{KeyId: str(rsaEnc), Plaintext: []byte("x"), EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1, EncryptionContext: ctxAB})
			return err
		}},
		{"Encrypt/empty context key", Validation, func() error {
			_, err := c.Encrypt(bg, &kms.EncryptInput{KeyId: str(sym), Plaintext: []byte("x"), EncryptionContext: map[string]string{"": "v"}})
			return err
		}},
		{"Encrypt/DryRun", DryRun, func() error {
			_, err := c.Encrypt(bg, &kms.EncryptInput{KeyId: str(sym), Plaintext: []byte("x"), DryRun: ptrBool(true)})
			return err
		}},

		// Decrypt
		{"Decrypt/without KeyId", ok, func() error {
			out, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: blob, EncryptionContext: ctxAB})
			if err == nil && (string(out.Plaintext) != "secret" || *out.KeyId != keyARN(sym)) {
				return fmt.Errorf("got %q from %s", out.Plaintext, *out.KeyId)
			}
			return err
		}},
		{"Decrypt/with alias", ok, func() error {
			_, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: blob, EncryptionContext: ctxAB, KeyId: str("alias/sym")})
			return err
		}},
		{"Decrypt/context in another order is the same context", ok, func() error {
			_, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: blob, EncryptionContext: map[string]string{"a": "b"}})
			return err
		}},
		{"Decrypt/other KeyId", IncorrectKey, func() error {
			_, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: blob, EncryptionContext: ctxAB, KeyId: str(sym2)})
			return err
		}},
		{"Decrypt/unknown KeyId", NotFound, func() error {
			_, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: blob, EncryptionContext: ctxAB, KeyId: str(missingKey)})
			return err
		}},
		{"Decrypt/wrong context", BadCT, func() error {
			_, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: blob, EncryptionContext: map[string]string{"a": "c"}})
			return err
		}},
		{"Decrypt/missing context", BadCT, func() error {
			_, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: blob})
			return err
		}},
		{"Decrypt/extra context pair", BadCT, func() error {
			_, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: blob, EncryptionContext: map[string]string{"a": "b", "c": "d"}})
			return err
		}},
		{"Decrypt/truncated", BadCT, func() error {
			_, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: blob[:len(blob)-1], EncryptionContext: ctxAB})
			return err
		}},
		{"Decrypt/garbage", BadCT, func() error {
			_, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: []byte("garbage garbage garbage garbage garbage garbage garbage")})
			return err
		}},
		{"Decrypt/empty", Validation, func() error { _, err := c.Decrypt(bg, &kms.DecryptInput{}); return err }},
		{"Decrypt/too long", Validation, func() error {
			_, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: make([]byte, 6145)})
			return err
		}},
		{"Decrypt/disabled key", Disabled, func() error {
			_, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: ctDis.CiphertextBlob})
			return err
		}},
		{"Decrypt/RSA algorithm on symmetric ciphertext", Usage, func() error {
			_, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: blob, KeyId: str(sym), EncryptionContext: ctxAB, EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1})
			return err
		}},
		{"Decrypt/RSA", ok, func() error {
			out, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: rsaCT.CiphertextBlob, KeyId: str(rsaEnc), EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1})
			if err == nil && string(out.Plaintext) != "rsa secret" {
				return fmt.Errorf("got %q", out.Plaintext)
			}
			return err
		}},
		{"Decrypt/RSA without algorithm", Usage, func() error {
			_, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: rsaCT.CiphertextBlob, KeyId: str(rsaEnc)})
			return err
		}},
		{"Decrypt/RSA without KeyId", Validation, func() error {
			_, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: rsaCT.CiphertextBlob, EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1})
			return err
		}},
		{"Decrypt/RSA corrupted", BadCT, func() error {
			b := append([]byte(nil), rsaCT.CiphertextBlob...)
			b[10] ^= 1
			_, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: b, KeyId: str(rsaEnc), EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1})
			return err
		}},

		// ReEncrypt
		{"ReEncrypt/to another key", ok, func() error {
			out, err := c.ReEncrypt(bg, &kms.ReEncryptInput{CiphertextBlob: blob, SourceEncryptionContext: ctxAB, DestinationKeyId: str(sym2)})
			if err != nil {
				return err
			}
			if *out.SourceKeyId != keyARN(sym) || *out.KeyId != keyARN(sym2) {
				return fmt.Errorf("source %s, destination %s", *out.SourceKeyId, *out.KeyId)
			}
			dec, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: out.CiphertextBlob})
			if err == nil && string(dec.Plaintext) != "secret" {
				return fmt.Errorf("got %q", dec.Plaintext)
			}
			return err
		}},
		{"ReEncrypt/to an RSA key", ok, func() error {
			_, err := c.ReEncrypt(bg, &kms.ReEncryptInput{CiphertextBlob: blob, SourceEncryptionContext: ctxAB, DestinationKeyId: str(rsaEnc), DestinationEncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1})
			return err
		}},
		{"ReEncrypt/no destination", Validation, func() error {
			_, err := c.ReEncrypt(bg, &kms.ReEncryptInput{CiphertextBlob: blob, SourceEncryptionContext: ctxAB})
			return err
		}},
		{"ReEncrypt/destination signing key", Usage, func() error {
			_, err := c.ReEncrypt(bg, &kms.ReEncryptInput{CiphertextBlob: blob, SourceEncryptionContext: ctxAB, DestinationKeyId: str(ec)})
			return err
		}},
		{"ReEncrypt/destination disabled", Disabled, func() error {
			_, err := c.ReEncrypt(bg, &kms.ReEncryptInput{CiphertextBlob: blob, SourceEncryptionContext: ctxAB, DestinationKeyId: str(symDis)})
			return err
		}},
		{"ReEncrypt/wrong source context", BadCT, func() error {
			_, err := c.ReEncrypt(bg, &kms.ReEncryptInput{CiphertextBlob: blob, DestinationKeyId: str(sym2)})
			return err
		}},
		{"ReEncrypt/wrong SourceKeyId", IncorrectKey, func() error {
			_, err := c.ReEncrypt(bg, &kms.ReEncryptInput{CiphertextBlob: blob, SourceEncryptionContext: ctxAB, SourceKeyId: str(sym2), DestinationKeyId: str(sym2)})
			return err
		}},

		// GenerateDataKey and friends
		{"GenerateDataKey/AES_256", ok, func() error {
			out, err := c.GenerateDataKey(bg, &kms.GenerateDataKeyInput{KeyId: str(sym), KeySpec: types.DataKeySpecAes256})
			if err == nil && len(out.Plaintext) != 32 {
				return fmt.Errorf("%d bytes", len(out.Plaintext))
			}
			return err
		}},
		{"GenerateDataKey/NumberOfBytes 1024", ok, func() error {
			out, err := c.GenerateDataKey(bg, &kms.GenerateDataKeyInput{KeyId: str(sym), NumberOfBytes: i32(1024)})
			if err == nil && len(out.Plaintext) != 1024 {
				return fmt.Errorf("%d bytes", len(out.Plaintext))
			}
			return err
		}},
		{"GenerateDataKey/NumberOfBytes 0", Validation, func() error {
			_, err := c.GenerateDataKey(bg, &kms.GenerateDataKeyInput{KeyId: str(sym), NumberOfBytes: i32(0)})
			return err
		}},
		{"GenerateDataKey/NumberOfBytes 1025", Validation, func() error {
			_, err := c.GenerateDataKey(bg, &kms.GenerateDataKeyInput{KeyId: str(sym), NumberOfBytes: i32(1025)})
			return err
		}},
		{"GenerateDataKey/neither spec nor length", Validation, func() error {
			_, err := c.GenerateDataKey(bg, &kms.GenerateDataKeyInput{KeyId: str(sym)})
			return err
		}},
		{"GenerateDataKey/both spec and length", Validation, func() error {
			_, err := c.GenerateDataKey(bg, &kms.GenerateDataKeyInput{KeyId: str(sym), KeySpec: types.DataKeySpecAes128, NumberOfBytes: i32(16)})
			return err
		}},
		{"GenerateDataKey/RSA key", Usage, func() error {
			_, err := c.GenerateDataKey(bg, &kms.GenerateDataKeyInput{KeyId: str(rsaEnc), KeySpec: types.DataKeySpecAes256})
			return err
		}},
		{"GenerateDataKey/disabled", Disabled, func() error {
			_, err := c.GenerateDataKey(bg, &kms.GenerateDataKeyInput{KeyId: str(symDis), KeySpec: types.DataKeySpecAes256})
			return err
		}},
		{"GenerateDataKeyWithoutPlaintext/AES_128", ok, func() error {
			out, err := c.GenerateDataKeyWithoutPlaintext(bg, &kms.GenerateDataKeyWithoutPlaintextInput{KeyId: str(sym), KeySpec: types.DataKeySpecAes128})
			if err != nil {
				return err
			}
			dec, err := c.Decrypt(bg, &kms.DecryptInput{CiphertextBlob: out.CiphertextBlob})
			if err == nil && len(dec.Plaintext) != 16 {
				return fmt.Errorf("%d bytes", len(dec.Plaintext))
			}
			return err
		}},
		{"GenerateDataKeyWithoutPlaintext/HMAC key", Usage, func() error {
			_, err := c.GenerateDataKeyWithoutPlaintext(bg, &kms.GenerateDataKeyWithoutPlaintextInput{KeyId: str(hmac), KeySpec: types.DataKeySpecAes128})
			return err
		}},
		{"GenerateDataKeyPair/ECC_NIST_P256", ok, func() error {
			_, err := c.GenerateDataKeyPair(bg, &kms.GenerateDataKeyPairInput{KeyId: str(sym), KeyPairSpec: types.DataKeyPairSpecEccNistP256})
			return err
		}},
		{"GenerateDataKeyPair/no spec", Validation, func() error {
			_, err := c.GenerateDataKeyPair(bg, &kms.GenerateDataKeyPairInput{KeyId: str(sym)})
			return err
		}},
		{"GenerateDataKeyPair/ECC_SECG_P256K1", Unsupported, func() error {
			_, err := c.GenerateDataKeyPair(bg, &kms.GenerateDataKeyPairInput{KeyId: str(sym), KeyPairSpec: types.DataKeyPairSpecEccSecgP256k1})
			return err
		}},
		{"GenerateDataKeyPair/signing key", Usage, func() error {
			_, err := c.GenerateDataKeyPair(bg, &kms.GenerateDataKeyPairInput{KeyId: str(ec), KeyPairSpec: types.DataKeyPairSpecEccNistP256})
			return err
		}},
		{"GenerateDataKeyPairWithoutPlaintext/ECC_NIST_P384", ok, func() error {
			out, err := c.GenerateDataKeyPairWithoutPlaintext(bg, &kms.GenerateDataKeyPairWithoutPlaintextInput{KeyId: str(sym), KeyPairSpec: types.DataKeyPairSpecEccNistP384})
			if err == nil && len(out.PublicKey) == 0 {
				return fmt.Errorf("no public key")
			}
			return err
		}},
		{"GenerateDataKeyPairWithoutPlaintext/pending deletion", InvalidState, func() error {
			_, err := c.GenerateDataKeyPairWithoutPlaintext(bg, &kms.GenerateDataKeyPairWithoutPlaintextInput{KeyId: str(symDel), KeyPairSpec: types.DataKeyPairSpecEccNistP384})
			return err
		}},

		// Sign and Verify
		{"Sign/ECDSA RAW", ok, func() error {
			_, err := c.Sign(bg, &kms.SignInput{KeyId: str(ec), Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			return err
		}},
		{"Sign/ECDSA DIGEST", ok, func() error {
			_, err := c.Sign(bg, &kms.SignInput{KeyId: str(ec), Message: digest[:], MessageType: types.MessageTypeDigest, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			return err
		}},
		{"Sign/DIGEST of the wrong length", Validation, func() error {
			_, err := c.Sign(bg, &kms.SignInput{KeyId: str(ec), Message: msg, MessageType: types.MessageTypeDigest, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			return err
		}},
		{"Sign/RSASSA_PSS_SHA_256", ok, func() error {
			_, err := c.Sign(bg, &kms.SignInput{KeyId: str(rsaSign), Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecRsassaPssSha256})
			return err
		}},
		{"Sign/RSASSA_PKCS1_V1_5_SHA_512", ok, func() error {
			_, err := c.Sign(bg, &kms.SignInput{KeyId: str(rsaSign), Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecRsassaPkcs1V15Sha512})
			return err
		}},
		{"Sign/algorithm of another curve", Usage, func() error {
			_, err := c.Sign(bg, &kms.SignInput{KeyId: str(ec), Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha384})
			return err
		}},
		{"Sign/RSA algorithm on an EC key", Usage, func() error {
			_, err := c.Sign(bg, &kms.SignInput{KeyId: str(ec), Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecRsassaPssSha256})
			return err
		}},
		{"Sign/no algorithm", Validation, func() error {
			_, err := c.Sign(bg, &kms.SignInput{KeyId: str(ec), Message: msg})
			return err
		}},
		{"Sign/empty message", Validation, func() error {
			_, err := c.Sign(bg, &kms.SignInput{KeyId: str(ec), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			return err
		}},
		{"Sign/4097-byte message", Validation, func() error {
			_, err := c.Sign(bg, &kms.SignInput{KeyId: str(ec), Message: make([]byte, 4097), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			return err
		}},
		{"Sign/encryption key", Usage, func() error {
			_, err := c.Sign(bg, &kms.SignInput{KeyId: str(rsaEnc), Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecRsassaPssSha256})
			return err
		}},
		{"Sign/EXTERNAL_MU", Validation, func() error {
			_, err := c.Sign(bg, &kms.SignInput{KeyId: str(ec), Message: msg, MessageType: types.MessageTypeExternalMu, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			return err
		}},
		{"Verify/valid", ok, func() error {
			out, err := c.Verify(bg, &kms.VerifyInput{KeyId: str(ec), Message: msg, Signature: sig.Signature, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			if err == nil && !out.SignatureValid {
				return fmt.Errorf("SignatureValid false")
			}
			return err
		}},
		{"Verify/DIGEST of the message", ok, func() error {
			_, err := c.Verify(bg, &kms.VerifyInput{KeyId: str(ec), Message: digest[:], MessageType: types.MessageTypeDigest, Signature: sig.Signature, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			return err
		}},
		{"Verify/altered signature", BadSig, func() error {
			_, err := c.Verify(bg, &kms.VerifyInput{KeyId: str(ec), Message: msg, Signature: badSig, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			return err
		}},
		{"Verify/other message", BadSig, func() error {
			_, err := c.Verify(bg, &kms.VerifyInput{KeyId: str(ec), Message: []byte("other"), Signature: sig.Signature, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			return err
		}},
		{"Verify/garbage signature", BadSig, func() error {
			_, err := c.Verify(bg, &kms.VerifyInput{KeyId: str(ec), Message: msg, Signature: []byte("garbage"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			return err
		}},
		{"Verify/empty signature", Validation, func() error {
			_, err := c.Verify(bg, &kms.VerifyInput{KeyId: str(ec), Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
			return err
		}},

		// GetPublicKey
		{"GetPublicKey/EC", ok, func() error { _, err := c.GetPublicKey(bg, &kms.GetPublicKeyInput{KeyId: str(ec)}); return err }},
		{"GetPublicKey/RSA", ok, func() error { _, err := c.GetPublicKey(bg, &kms.GetPublicKeyInput{KeyId: str(rsaEnc)}); return err }},
		{"GetPublicKey/symmetric", Unsupported, func() error { _, err := c.GetPublicKey(bg, &kms.GetPublicKeyInput{KeyId: str(sym)}); return err }},
		{"GetPublicKey/HMAC", Unsupported, func() error { _, err := c.GetPublicKey(bg, &kms.GetPublicKeyInput{KeyId: str(hmac)}); return err }},
		{"GetPublicKey/unknown", NotFound, func() error { _, err := c.GetPublicKey(bg, &kms.GetPublicKeyInput{KeyId: str(missingKey)}); return err }},

		// GenerateMac and VerifyMac
		{"GenerateMac/ok", ok, func() error {
			out, err := c.GenerateMac(bg, &kms.GenerateMacInput{KeyId: str(hmac), Message: msg, MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
			if err == nil && len(out.Mac) != 32 {
				return fmt.Errorf("%d bytes", len(out.Mac))
			}
			return err
		}},
		{"GenerateMac/algorithm of another size", Usage, func() error {
			_, err := c.GenerateMac(bg, &kms.GenerateMacInput{KeyId: str(hmac), Message: msg, MacAlgorithm: types.MacAlgorithmSpecHmacSha512})
			return err
		}},
		{"GenerateMac/unknown algorithm", Validation, func() error {
			_, err := c.GenerateMac(bg, &kms.GenerateMacInput{KeyId: str(hmac), Message: msg, MacAlgorithm: "HMAC_MD5"})
			return err
		}},
		{"GenerateMac/symmetric key", Usage, func() error {
			_, err := c.GenerateMac(bg, &kms.GenerateMacInput{KeyId: str(sym), Message: msg, MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
			return err
		}},
		{"GenerateMac/empty message", Validation, func() error {
			_, err := c.GenerateMac(bg, &kms.GenerateMacInput{KeyId: str(hmac), MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
			return err
		}},
		{"VerifyMac/valid", ok, func() error {
			out, err := c.VerifyMac(bg, &kms.VerifyMacInput{KeyId: str(hmac), Message: msg, Mac: mac.Mac, MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
			if err == nil && !out.MacValid {
				return fmt.Errorf("MacValid false")
			}
			return err
		}},
		{"VerifyMac/altered MAC", BadMac, func() error {
			_, err := c.VerifyMac(bg, &kms.VerifyMacInput{KeyId: str(hmac), Message: msg, Mac: badMac, MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
			return err
		}},
		{"VerifyMac/short MAC", BadMac, func() error {
			_, err := c.VerifyMac(bg, &kms.VerifyMacInput{KeyId: str(hmac), Message: msg, Mac: mac.Mac[:16], MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
			return err
		}},
		{"VerifyMac/no MAC", Validation, func() error {
			_, err := c.VerifyMac(bg, &kms.VerifyMacInput{KeyId: str(hmac), Message: msg, MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
			return err
		}},

		// GenerateRandom
		{"GenerateRandom/1", ok, func() error {
			_, err := c.GenerateRandom(bg, &kms.GenerateRandomInput{NumberOfBytes: i32(1)})
			return err
		}},
		{"GenerateRandom/1024", ok, func() error {
			out, err := c.GenerateRandom(bg, &kms.GenerateRandomInput{NumberOfBytes: i32(1024)})
			if err == nil && len(out.Plaintext) != 1024 {
				return fmt.Errorf("%d bytes", len(out.Plaintext))
			}
			return err
		}},
		{"GenerateRandom/0", Validation, func() error {
			_, err := c.GenerateRandom(bg, &kms.GenerateRandomInput{NumberOfBytes: i32(0)})
			return err
		}},
		{"GenerateRandom/1025", Validation, func() error {
			_, err := c.GenerateRandom(bg, &kms.GenerateRandomInput{NumberOfBytes: i32(1025)})
			return err
		}},
		{"GenerateRandom/no length", Validation, func() error { _, err := c.GenerateRandom(bg, &kms.GenerateRandomInput{}); return err }},
		{"GenerateRandom/custom key store", Unsupported, func() error {
			_, err := c.GenerateRandom(bg, &kms.GenerateRandomInput{NumberOfBytes: i32(8), CustomKeyStoreId: str("cks-1")})
			return err
		}},

		// CreateKey
		{"CreateKey/HMAC_512", ok, func() error {
			out, err := c.CreateKey(bg, &kms.CreateKeyInput{KeySpec: types.KeySpecHmac512, KeyUsage: MacU, Description: str("d"), Tags: []types.Tag{{TagKey: str("team"), TagValue: str("x")}}})
			if err == nil && (out.KeyMetadata.KeyState != types.KeyStateEnabled || *out.KeyMetadata.Arn != keyARN(*out.KeyMetadata.KeyId) || len(out.KeyMetadata.MacAlgorithms) != 1) {
				return fmt.Errorf("metadata %+v", out.KeyMetadata)
			}
			return err
		}},
		{"CreateKey/ECC without KeyUsage", Validation, func() error {
			_, err := c.CreateKey(bg, &kms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256})
			return err
		}},
		{"CreateKey/ECC for encryption", Validation, func() error {
			_, err := c.CreateKey(bg, &kms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: EncDec})
			return err
		}},
		{"CreateKey/HMAC for signing", Validation, func() error {
			_, err := c.CreateKey(bg, &kms.CreateKeyInput{KeySpec: types.KeySpecHmac256, KeyUsage: SignV})
			return err
		}},
		{"CreateKey/SM2", Unsupported, func() error {
			_, err := c.CreateKey(bg, &kms.CreateKeyInput{KeySpec: types.KeySpecSm2, KeyUsage: SignV})
			return err
		}},
		{"CreateKey/unknown spec", Validation, func() error { _, err := c.CreateKey(bg, &kms.CreateKeyInput{KeySpec: "AES_999"}); return err }},
		{"CreateKey/KeySpec and CustomerMasterKeySpec", Validation, func() error {
			//lint:ignore SA1019 the deprecated parameter is what is tested
			_, err := c.CreateKey(bg, &kms.CreateKeyInput{KeySpec: types.KeySpecSymmetricDefault, CustomerMasterKeySpec: types.CustomerMasterKeySpecSymmetricDefault})
			return err
		}},
		{"CreateKey/multi-Region", Unsupported, func() error { _, err := c.CreateKey(bg, &kms.CreateKeyInput{MultiRegion: ptrBool(true)}); return err }},
		{"CreateKey/custom key store", Unsupported, func() error {
			_, err := c.CreateKey(bg, &kms.CreateKeyInput{CustomKeyStoreId: str("cks-1")})
			return err
		}},
		{"CreateKey/origin AWS_CLOUDHSM", Unsupported, func() error {
			_, err := c.CreateKey(bg, &kms.CreateKeyInput{Origin: types.OriginTypeAwsCloudhsm})
			return err
		}},
		{"CreateKey/external secp256k1", Unsupported, func() error {
			_, err := c.CreateKey(bg, &kms.CreateKeyInput{Origin: types.OriginTypeExternal, KeySpec: types.KeySpecEccSecgP256k1, KeyUsage: SignV})
			return err
		}},
		{"CreateKey/malformed policy", Policy, func() error { _, err := c.CreateKey(bg, &kms.CreateKeyInput{Policy: str("{not json")}); return err }},
		{"CreateKey/aws: tag", Tag, func() error {
			_, err := c.CreateKey(bg, &kms.CreateKeyInput{Tags: []types.Tag{{TagKey: str("aws:x"), TagValue: str("v")}}})
			return err
		}},
		{"CreateKey/51 tags", Limit, func() error { _, err := c.CreateKey(bg, &kms.CreateKeyInput{Tags: fortyNineTags}); return err }},
		{"CreateKey/description too long", Validation, func() error {
			_, err := c.CreateKey(bg, &kms.CreateKeyInput{Description: str(strings.Repeat("d", 8193))})
			return err
		}},

		// DescribeKey, ListKeys, UpdateKeyDescription
		{"DescribeKey/alias ARN", ok, func() error {
			out, err := c.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: str("arn:aws:kms:us-east-1:111122223333:alias/sym")})
			if err == nil && *out.KeyMetadata.KeyId != sym {
				return fmt.Errorf("got %s", *out.KeyMetadata.KeyId)
			}
			return err
		}},
		{"DescribeKey/pending deletion", ok, func() error {
			out, err := c.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: str(symDel)})
			if err == nil && (out.KeyMetadata.KeyState != types.KeyStatePendingDeletion || out.KeyMetadata.DeletionDate == nil) {
				return fmt.Errorf("metadata %+v", out.KeyMetadata)
			}
			return err
		}},
		{"DescribeKey/unknown", NotFound, func() error { _, err := c.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: str(missingKey)}); return err }},
		{"DescribeKey/no KeyId", Validation, func() error { _, err := c.DescribeKey(bg, &kms.DescribeKeyInput{}); return err }},
		{"ListKeys/Limit 0", Validation, func() error { _, err := c.ListKeys(bg, &kms.ListKeysInput{Limit: i32(0)}); return err }},
		{"ListKeys/Limit 1001", Validation, func() error { _, err := c.ListKeys(bg, &kms.ListKeysInput{Limit: i32(1001)}); return err }},
		{"ListKeys/bad marker", Marker, func() error { _, err := c.ListKeys(bg, &kms.ListKeysInput{Marker: str("zzz")}); return err }},
		{"UpdateKeyDescription/ok", ok, func() error {
			_, err := c.UpdateKeyDescription(bg, &kms.UpdateKeyDescriptionInput{KeyId: str(symMut), Description: str("new")})
			return err
		}},
		{"UpdateKeyDescription/no description", Validation, func() error {
			_, err := c.UpdateKeyDescription(bg, &kms.UpdateKeyDescriptionInput{KeyId: str(symMut)})
			return err
		}},
		{"UpdateKeyDescription/alias not accepted", NotFound, func() error {
			_, err := c.UpdateKeyDescription(bg, &kms.UpdateKeyDescriptionInput{KeyId: str("alias/sym"), Description: str("new")})
			return err
		}},
		{"UpdateKeyDescription/pending deletion", InvalidState, func() error {
			_, err := c.UpdateKeyDescription(bg, &kms.UpdateKeyDescriptionInput{KeyId: str(symDel), Description: str("new")})
			return err
		}},

		// EnableKey, DisableKey
		{"DisableKey/ok", ok, func() error { _, err := c.DisableKey(bg, &kms.DisableKeyInput{KeyId: str(symMut)}); return err }},
		{"DisableKey/twice is fine", ok, func() error { _, err := c.DisableKey(bg, &kms.DisableKeyInput{KeyId: str(symMut)}); return err }},
		{"EnableKey/ok", ok, func() error { _, err := c.EnableKey(bg, &kms.EnableKeyInput{KeyId: str(symMut)}); return err }},
		{"EnableKey/pending deletion", InvalidState, func() error { _, err := c.EnableKey(bg, &kms.EnableKeyInput{KeyId: str(symDel)}); return err }},
		{"EnableKey/pending import", InvalidState, func() error { _, err := c.EnableKey(bg, &kms.EnableKeyInput{KeyId: str(ext)}); return err }},
		{"DisableKey/pending deletion", InvalidState, func() error { _, err := c.DisableKey(bg, &kms.DisableKeyInput{KeyId: str(symDel)}); return err }},
		{"DisableKey/alias ARN not accepted", BadArn, func() error {
			_, err := c.DisableKey(bg, &kms.DisableKeyInput{KeyId: str("arn:aws:kms:us-east-1:111122223333:alias/sym")})
			return err
		}},

		// ScheduleKeyDeletion, CancelKeyDeletion
		{"ScheduleKeyDeletion/6 days", Validation, func() error {
			_, err := c.ScheduleKeyDeletion(bg, &kms.ScheduleKeyDeletionInput{KeyId: str(symMut), PendingWindowInDays: i32(6)})
			return err
		}},
		{"ScheduleKeyDeletion/31 days", Validation, func() error {
			_, err := c.ScheduleKeyDeletion(bg, &kms.ScheduleKeyDeletionInput{KeyId: str(symMut), PendingWindowInDays: i32(31)})
			return err
		}},
		{"ScheduleKeyDeletion/already pending", InvalidState, func() error {
			_, err := c.ScheduleKeyDeletion(bg, &kms.ScheduleKeyDeletionInput{KeyId: str(symDel)})
			return err
		}},
		{"CancelKeyDeletion/not pending", InvalidState, func() error {
			_, err := c.CancelKeyDeletion(bg, &kms.CancelKeyDeletionInput{KeyId: str(symMut)})
			return err
		}},
		{"ScheduleKeyDeletion/default 30 days", ok, func() error {
			out, err := c.ScheduleKeyDeletion(bg, &kms.ScheduleKeyDeletionInput{KeyId: str(symMut)})
			if err == nil && (*out.PendingWindowInDays != 30 || !out.DeletionDate.Equal(e.clock.Now().Add(30*24*3600e9))) {
				return fmt.Errorf("window %d, date %v", *out.PendingWindowInDays, out.DeletionDate)
			}
			return err
		}},
		{"CancelKeyDeletion/ok, key is Disabled", ok, func() error {
			if _, err := c.CancelKeyDeletion(bg, &kms.CancelKeyDeletionInput{KeyId: str(symMut)}); err != nil {
				return err
			}
			d, err := c.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: str(symMut)})
			if err == nil && d.KeyMetadata.KeyState != types.KeyStateDisabled {
				return fmt.Errorf("state %s", d.KeyMetadata.KeyState)
			}
			return err
		}},
		{"EnableKey/after cancelled deletion", ok, func() error { _, err := c.EnableKey(bg, &kms.EnableKeyInput{KeyId: str(symMut)}); return err }},

		// Aliases
		{"CreateAlias/ok", ok, func() error {
			_, err := c.CreateAlias(bg, &kms.CreateAliasInput{AliasName: str("alias/app/one"), TargetKeyId: str(symMut)})
			return err
		}},
		{"CreateAlias/exists", Exists, func() error {
			_, err := c.CreateAlias(bg, &kms.CreateAliasInput{AliasName: str("alias/app/one"), TargetKeyId: str(sym)})
			return err
		}},
		{"CreateAlias/reserved name", AliasName, func() error {
			_, err := c.CreateAlias(bg, &kms.CreateAliasInput{AliasName: str("alias/aws/s3"), TargetKeyId: str(sym)})
			return err
		}},
		{"CreateAlias/no alias/ prefix", AliasName, func() error {
			_, err := c.CreateAlias(bg, &kms.CreateAliasInput{AliasName: str("app"), TargetKeyId: str(sym)})
			return err
		}},
		{"CreateAlias/target pending deletion", InvalidState, func() error {
			_, err := c.CreateAlias(bg, &kms.CreateAliasInput{AliasName: str("alias/del"), TargetKeyId: str(symDel)})
			return err
		}},
		{"CreateAlias/unknown target", NotFound, func() error {
			_, err := c.CreateAlias(bg, &kms.CreateAliasInput{AliasName: str("alias/x"), TargetKeyId: str(missingKey)})
			return err
		}},
		{"UpdateAlias/ok", ok, func() error {
			if _, err := c.UpdateAlias(bg, &kms.UpdateAliasInput{AliasName: str("alias/app/one"), TargetKeyId: str(sym2)}); err != nil {
				return err
			}
			d, err := c.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: str("alias/app/one")})
			if err == nil && *d.KeyMetadata.KeyId != sym2 {
				return fmt.Errorf("alias names %s", *d.KeyMetadata.KeyId)
			}
			return err
		}},
		{"UpdateAlias/to a key of another type", Validation, func() error {
			_, err := c.UpdateAlias(bg, &kms.UpdateAliasInput{AliasName: str("alias/app/one"), TargetKeyId: str(rsaEnc)})
			return err
		}},
		{"UpdateAlias/unknown alias", NotFound, func() error {
			_, err := c.UpdateAlias(bg, &kms.UpdateAliasInput{AliasName: str("alias/none"), TargetKeyId: str(sym)})
			return err
		}},
		{"UpdateAlias/target pending deletion", InvalidState, func() error {
			_, err := c.UpdateAlias(bg, &kms.UpdateAliasInput{AliasName: str("alias/app/one"), TargetKeyId: str(symDel)})
			return err
		}},
		{"ListAliases/of a key", ok, func() error {
			out, err := c.ListAliases(bg, &kms.ListAliasesInput{KeyId: str(sym2)})
			if err == nil && (len(out.Aliases) != 1 || *out.Aliases[0].AliasName != "alias/app/one" || *out.Aliases[0].TargetKeyId != sym2) {
				return fmt.Errorf("aliases %+v", out.Aliases)
			}
			return err
		}},
		{"ListAliases/of an unknown key", NotFound, func() error { _, err := c.ListAliases(bg, &kms.ListAliasesInput{KeyId: str(missingKey)}); return err }},
		{"ListAliases/Limit 100", ok, func() error { _, err := c.ListAliases(bg, &kms.ListAliasesInput{Limit: i32(100)}); return err }},
		{"ListAliases/Limit 101", Validation, func() error { _, err := c.ListAliases(bg, &kms.ListAliasesInput{Limit: i32(101)}); return err }},
		{"DeleteAlias/ok", ok, func() error {
			_, err := c.DeleteAlias(bg, &kms.DeleteAliasInput{AliasName: str("alias/app/one")})
			return err
		}},
		{"DeleteAlias/unknown", NotFound, func() error {
			_, err := c.DeleteAlias(bg, &kms.DeleteAliasInput{AliasName: str("alias/app/one")})
			return err
		}},

		// Tags
		{"TagResource/ok", ok, func() error {
			_, err := c.TagResource(bg, &kms.TagResourceInput{KeyId: str(symMut), Tags: []types.Tag{{TagKey: str("b"), TagValue: str("2")}, {TagKey: str("a"), TagValue: str("1")}}})
			return err
		}},
		{"TagResource/aws: prefix", Tag, func() error {
			_, err := c.TagResource(bg, &kms.TagResourceInput{KeyId: str(symMut), Tags: []types.Tag{{TagKey: str("aws:cost"), TagValue: str("1")}}})
			return err
		}},
		{"TagResource/too many", Limit, func() error {
			_, err := c.TagResource(bg, &kms.TagResourceInput{KeyId: str(symMut), Tags: fortyNineTags})
			return err
		}},
		{"TagResource/pending deletion", InvalidState, func() error {
			_, err := c.TagResource(bg, &kms.TagResourceInput{KeyId: str(symDel), Tags: []types.Tag{{TagKey: str("a"), TagValue: str("1")}}})
			return err
		}},
		{"UntagResource/ok", ok, func() error {
			_, err := c.UntagResource(bg, &kms.UntagResourceInput{KeyId: str(symMut), TagKeys: []string{"b"}})
			return err
		}},
		{"UntagResource/pending deletion", InvalidState, func() error {
			_, err := c.UntagResource(bg, &kms.UntagResourceInput{KeyId: str(symDel), TagKeys: []string{"a"}})
			return err
		}},
		{"ListResourceTags/ok", ok, func() error {
			out, err := c.ListResourceTags(bg, &kms.ListResourceTagsInput{KeyId: str(symMut)})
			if err == nil && (len(out.Tags) != 1 || *out.Tags[0].TagKey != "a" || *out.Tags[0].TagValue != "1") {
				return fmt.Errorf("tags %+v", out.Tags)
			}
			return err
		}},
		{"ListResourceTags/Limit 51", Validation, func() error {
			_, err := c.ListResourceTags(bg, &kms.ListResourceTagsInput{KeyId: str(symMut), Limit: i32(51)})
			return err
		}},

		// Rotation
		{"EnableKeyRotation/ok", ok, func() error {
			_, err := c.EnableKeyRotation(bg, &kms.EnableKeyRotationInput{KeyId: str(symMut), RotationPeriodInDays: i32(90)})
			return err
		}},
		{"GetKeyRotationStatus/ok", ok, func() error {
			out, err := c.GetKeyRotationStatus(bg, &kms.GetKeyRotationStatusInput{KeyId: str(symMut)})
			if err == nil && (!out.KeyRotationEnabled || *out.RotationPeriodInDays != 90 || out.NextRotationDate == nil) {
				return fmt.Errorf("status %+v", out)
			}
			return err
		}},
		{"EnableKeyRotation/89 days", Validation, func() error {
			_, err := c.EnableKeyRotation(bg, &kms.EnableKeyRotationInput{KeyId: str(symMut), RotationPeriodInDays: i32(89)})
			return err
		}},
		{"EnableKeyRotation/2561 days", Validation, func() error {
			_, err := c.EnableKeyRotation(bg, &kms.EnableKeyRotationInput{KeyId: str(symMut), RotationPeriodInDays: i32(2561)})
			return err
		}},
		{"EnableKeyRotation/RSA key", Unsupported, func() error {
			_, err := c.EnableKeyRotation(bg, &kms.EnableKeyRotationInput{KeyId: str(rsaEnc)})
			return err
		}},
		{"EnableKeyRotation/disabled", Disabled, func() error {
			_, err := c.EnableKeyRotation(bg, &kms.EnableKeyRotationInput{KeyId: str(symDis)})
			return err
		}},
		{"EnableKeyRotation/pending deletion", InvalidState, func() error {
			_, err := c.EnableKeyRotation(bg, &kms.EnableKeyRotationInput{KeyId: str(symDel)})
			return err
		}},
		{"DisableKeyRotation/ok", ok, func() error {
			_, err := c.DisableKeyRotation(bg, &kms.DisableKeyRotationInput{KeyId: str(symMut)})
			return err
		}},
		{"GetKeyRotationStatus/HMAC key", Unsupported, func() error {
			_, err := c.GetKeyRotationStatus(bg, &kms.GetKeyRotationStatusInput{KeyId: str(hmac)})
			return err
		}},
		{"RotateKeyOnDemand/ok", ok, func() error {
			_, err := c.RotateKeyOnDemand(bg, &kms.RotateKeyOnDemandInput{KeyId: str(symMut)})
			return err
		}},
		{"RotateKeyOnDemand/RSA key", Unsupported, func() error {
			_, err := c.RotateKeyOnDemand(bg, &kms.RotateKeyOnDemandInput{KeyId: str(rsaEnc)})
			return err
		}},
		{"RotateKeyOnDemand/disabled", Disabled, func() error {
			_, err := c.RotateKeyOnDemand(bg, &kms.RotateKeyOnDemandInput{KeyId: str(symDis)})
			return err
		}},
		{"ListKeyRotations/ok", ok, func() error {
			out, err := c.ListKeyRotations(bg, &kms.ListKeyRotationsInput{KeyId: str(symMut)})
			if err == nil && (len(out.Rotations) != 1 || out.Rotations[0].RotationType != types.RotationTypeOnDemand) {
				return fmt.Errorf("rotations %+v", out.Rotations)
			}
			return err
		}},
		{"ListKeyRotations/HMAC key", Unsupported, func() error {
			_, err := c.ListKeyRotations(bg, &kms.ListKeyRotationsInput{KeyId: str(hmac)})
			return err
		}},

		// Key policies
		{"GetKeyPolicy/default", ok, func() error {
			out, err := c.GetKeyPolicy(bg, &kms.GetKeyPolicyInput{KeyId: str(sym)})
			if err == nil && (!strings.Contains(*out.Policy, `"Id" : "key-default-1"`) || !strings.Contains(*out.Policy, "arn:aws:iam::111122223333:root") || *out.PolicyName != "default") {
				return fmt.Errorf("policy %s", *out.Policy)
			}
			return err
		}},
		{"GetKeyPolicy/other name", NotFound, func() error {
			_, err := c.GetKeyPolicy(bg, &kms.GetKeyPolicyInput{KeyId: str(sym), PolicyName: str("other")})
			return err
		}},
		{"PutKeyPolicy/ok", ok, func() error {
			p := `{"Version":"2012-10-17","Statement":[]}`
			if _, err := c.PutKeyPolicy(bg, &kms.PutKeyPolicyInput{KeyId: str(symMut), Policy: str(p)}); err != nil {
				return err
			}
			out, err := c.GetKeyPolicy(bg, &kms.GetKeyPolicyInput{KeyId: str(symMut), PolicyName: str("default")})
			if err == nil && *out.Policy != p {
				return fmt.Errorf("policy %s", *out.Policy)
			}
			return err
		}},
		{"PutKeyPolicy/malformed", Policy, func() error {
			_, err := c.PutKeyPolicy(bg, &kms.PutKeyPolicyInput{KeyId: str(symMut), Policy: str("[]")})
			return err
		}},
		{"PutKeyPolicy/no policy", Validation, func() error { _, err := c.PutKeyPolicy(bg, &kms.PutKeyPolicyInput{KeyId: str(symMut)}); return err }},
		{"ListKeyPolicies/ok", ok, func() error {
			out, err := c.ListKeyPolicies(bg, &kms.ListKeyPoliciesInput{KeyId: str(sym)})
			if err == nil && (len(out.PolicyNames) != 1 || out.PolicyNames[0] != "default") {
				return fmt.Errorf("names %v", out.PolicyNames)
			}
			return err
		}},
		{"ListKeyPolicies/unknown key", NotFound, func() error {
			_, err := c.ListKeyPolicies(bg, &kms.ListKeyPoliciesInput{KeyId: str(missingKey)})
			return err
		}},

		// Import
		{"GetParametersForImport/not an external key", Unsupported, func() error {
			_, err := c.GetParametersForImport(bg, &kms.GetParametersForImportInput{KeyId: str(sym), WrappingAlgorithm: types.AlgorithmSpecRsaesOaepSha1, WrappingKeySpec: types.WrappingKeySpecRsa2048})
			return err
		}},
		{"GetParametersForImport/no algorithm", Validation, func() error {
			_, err := c.GetParametersForImport(bg, &kms.GetParametersForImportInput{KeyId: str(ext), WrappingKeySpec: types.WrappingKeySpecRsa2048})
			return err
		}},
		{"GetParametersForImport/no key spec", Validation, func() error {
			_, err := c.GetParametersForImport(bg, &kms.GetParametersForImportInput{KeyId: str(ext), WrappingAlgorithm: types.AlgorithmSpecRsaesOaepSha1})
			return err
		}},
		{"GetParametersForImport/RSAES_PKCS1_V1_5", Unsupported, func() error {
			_, err := c.GetParametersForImport(bg, &kms.GetParametersForImportInput{KeyId: str(ext), WrappingAlgorithm: types.AlgorithmSpecRsaesPkcs1V15, WrappingKeySpec: types.WrappingKeySpecRsa2048})
			return err
		}},
		{"GetParametersForImport/RSAES_OAEP_SHA_256 on SoftHSM", Unsupported, func() error {
			_, err := c.GetParametersForImport(bg, &kms.GetParametersForImportInput{KeyId: str(ext), WrappingAlgorithm: types.AlgorithmSpecRsaesOaepSha256, WrappingKeySpec: types.WrappingKeySpecRsa2048})
			return err
		}},
		{"ImportKeyMaterial/no parameters requested", ImportToken, func() error {
			_, err := c.ImportKeyMaterial(bg, &kms.ImportKeyMaterialInput{KeyId: str(ext), ImportToken: []byte("token"), EncryptedKeyMaterial: []byte("x")})
			return err
		}},
		{"ImportKeyMaterial/not an external key", Unsupported, func() error {
			_, err := c.ImportKeyMaterial(bg, &kms.ImportKeyMaterialInput{KeyId: str(sym), ImportToken: []byte("token"), EncryptedKeyMaterial: []byte("x")})
			return err
		}},
		{"ImportKeyMaterial/no token", Validation, func() error {
			_, err := c.ImportKeyMaterial(bg, &kms.ImportKeyMaterialInput{KeyId: str(ext), EncryptedKeyMaterial: []byte("x")})
			return err
		}},
		{"DeleteImportedKeyMaterial/not an external key", Unsupported, func() error {
			_, err := c.DeleteImportedKeyMaterial(bg, &kms.DeleteImportedKeyMaterialInput{KeyId: str(sym)})
			return err
		}},
	}
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			err := row.call()
			require.Equal(t, row.want, code(err), "error: %v", err)
			if cl, ok := e.backend.(*cluster.Cluster); ok {
				for _, m := range cl.Members() {
					require.Equal(t, cluster.Healthy, m.State, "a caller's error is not held against member %s (%s)", m.Name, m.Reason)
				}
			}
		})
	}
}

func ptrBool(b bool) *bool { return &b }

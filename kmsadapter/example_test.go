package kmsadapter_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/kmsadapter"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
)

// exampleClient returns a Client on a throwaway SoftHSM2 token, and a
// function that removes it. In production the backend is a
// *cluster.Cluster and the store a bbolt file (Config.StorePath).
func exampleClient() (*kmsadapter.Client, func()) {
	dir, err := os.MkdirTemp("", "kmsadapter-example-")
	if err != nil {
		log.Fatal(err)
	}
	sh, err := softhsmtest.NewCluster(dir, 1)
	if err != nil {
		log.Fatal(err)
	}
	m := sh.Members[0]
	tok, err := hsm.Open(context.Background(), m.Config(), hsm.WithInterceptor(m.Faults))
	if err != nil {
		log.Fatal(err)
	}
	c, err := kmsadapter.New(tok, kmsadapter.NewMemoryStore(), kmsadapter.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	return c, func() {
		_ = c.Close()
		_ = tok.Close()
		_ = sh.Close()
		_ = os.RemoveAll(dir)
	}
}

// Code written against kmsadapter.API runs on AWS KMS and on the HSMs.
func Example() {
	c, done := exampleClient()
	defer done()
	ctx := context.Background()

	var api kmsadapter.API = c // or kms.NewFromConfig(awsCfg)
	key, err := api.CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("orders")})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := api.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("alias/orders"), TargetKeyId: key.KeyMetadata.KeyId}); err != nil {
		log.Fatal(err)
	}
	ec := map[string]string{"order": "42"}
	enc, err := api.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String("alias/orders"), Plaintext: []byte("4111 1111 1111 1111"), EncryptionContext: ec})
	if err != nil {
		log.Fatal(err)
	}
	dec, err := api.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(dec.Plaintext))
	fmt.Println(*dec.KeyId == *key.KeyMetadata.Arn)

	// The wrong context fails as at AWS.
	_, err = api.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: map[string]string{"order": "43"}})
	var bad *types.InvalidCiphertextException
	fmt.Println(errors.As(err, &bad))
	// Output:
	// 4111 1111 1111 1111
	// true
	// true
}

// Errors are the SDK's exception types, found with errors.As.
func ExampleClient_DescribeKey_errors() {
	c, done := exampleClient()
	defer done()
	_, err := c.DescribeKey(context.Background(), &kms.DescribeKeyInput{KeyId: aws.String("alias/missing")})
	var nf *types.NotFoundException
	if errors.As(err, &nf) {
		fmt.Println("not found:", nf.ErrorMessage())
	}
	// Output:
	// not found: Alias arn:aws:kms:us-east-1:111122223333:alias/missing is not found.
}

// Signatures made in the HSM verify with Go's crypto against GetPublicKey.
func ExampleClient_Sign() {
	c, done := exampleClient()
	defer done()
	ctx := context.Background()
	key, err := c.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify})
	if err != nil {
		log.Fatal(err)
	}
	msg := []byte("release v1.0.0")
	sig, err := c.Sign(ctx, &kms.SignInput{KeyId: key.KeyMetadata.KeyId, Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	if err != nil {
		log.Fatal(err)
	}
	pub, err := c.GetPublicKey(ctx, &kms.GetPublicKeyInput{KeyId: key.KeyMetadata.KeyId})
	if err != nil {
		log.Fatal(err)
	}
	pk, err := x509.ParsePKIXPublicKey(pub.PublicKey)
	if err != nil {
		log.Fatal(err)
	}
	digest := sha256.Sum256(msg)
	fmt.Println(ecdsa.VerifyASN1(pk.(*ecdsa.PublicKey), digest[:], sig.Signature))
	// Output: true
}

// GenerateDataKey is the start of envelope encryption: encrypt locally
// with the plaintext key, keep only the encrypted copy.
func ExampleClient_GenerateDataKey() {
	c, done := exampleClient()
	defer done()
	ctx := context.Background()
	key, err := c.CreateKey(ctx, &kms.CreateKeyInput{})
	if err != nil {
		log.Fatal(err)
	}
	dk, err := c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: key.KeyMetadata.KeyId, KeySpec: types.DataKeySpecAes256})
	if err != nil {
		log.Fatal(err)
	}
	again, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: dk.CiphertextBlob})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(dk.Plaintext), string(again.Plaintext) == string(dk.Plaintext))
	// Output: 32 true
}

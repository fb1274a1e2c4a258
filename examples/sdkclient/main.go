// Command sdkclient is an ordinary aws-sdk-go-v2 program, written for AWS
// KMS, with nothing in it about hsmkms: it takes its endpoint and
// credentials from the environment. Pointed at `hsmkms dev` or
// `hsmkms serve` with AWS_ENDPOINT_URL_KMS, it runs on HSMs.
//
//	eval "$(go run ./cmd/hsmkms dev ... | grep ^export)"   # in the shell that runs it
//	go run ./examples/sdkclient
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"log"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

func main() {
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		log.Fatal(err)
	}
	client := kms.NewFromConfig(cfg)

	key, err := client.CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("sdkclient demo")})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("created", aws.ToString(key.KeyMetadata.Arn))

	ectx := map[string]string{"purpose": "demo"}
	enc, err := client.Encrypt(ctx, &kms.EncryptInput{KeyId: key.KeyMetadata.KeyId, Plaintext: []byte("unchanged code"), EncryptionContext: ectx})
	if err != nil {
		log.Fatal(err)
	}
	dec, err := client.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ectx})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("Encrypt then Decrypt: %q\n", dec.Plaintext)

	dk, err := client.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: key.KeyMetadata.KeyId, KeySpec: types.DataKeySpecAes256})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("GenerateDataKey: %d-byte key, %d-byte wrapped copy\n", len(dk.Plaintext), len(dk.CiphertextBlob))

	signer, err := client.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify})
	if err != nil {
		log.Fatal(err)
	}
	msg := []byte("release v1.0.0")
	sig, err := client.Sign(ctx, &kms.SignInput{KeyId: signer.KeyMetadata.KeyId, Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	if err != nil {
		log.Fatal(err)
	}
	pub, err := client.GetPublicKey(ctx, &kms.GetPublicKeyInput{KeyId: signer.KeyMetadata.KeyId})
	if err != nil {
		log.Fatal(err)
	}
	pk, err := x509.ParsePKIXPublicKey(pub.PublicKey)
	if err != nil {
		log.Fatal(err)
	}
	digest := sha256.Sum256(msg)
	fmt.Println("ECDSA signature verifies with crypto/ecdsa:", ecdsa.VerifyASN1(pk.(*ecdsa.PublicKey), digest[:], sig.Signature))
}

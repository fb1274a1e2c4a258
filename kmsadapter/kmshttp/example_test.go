package kmshttp_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/kmsadapter"
	"github.com/hsmkms/hsmkms/kmsadapter/kmshttp"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
)

// An unmodified *kms.Client served in process: only its construction
// changes.
func ExampleHandler_Transport() {
	ctx := context.Background()
	sh, err := softhsmtest.NewCluster(exampleDir(), 1)
	if err != nil {
		log.Fatal(err)
	}
	defer sh.Close()
	tok, err := hsm.Open(ctx, sh.Members[0].Config(), hsm.WithInterceptor(sh.Members[0].Faults))
	if err != nil {
		log.Fatal(err)
	}
	defer tok.Close()
	adapter, err := kmsadapter.New(tok, kmsadapter.NewMemoryStore(), kmsadapter.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	defer adapter.Close()

	cred := kmshttp.Credential{
		AccessKeyID:     "AKIAEXAMPLE000000001",
		SecretAccessKey: kmshttp.NewSecret("example-secret-0123456789"),
		PrincipalARN:    "arn:aws:iam::111122223333:user/app",
	}
	sc := kmshttp.DefaultSigV4Config()
	sc.Region, sc.Credentials = "us-east-1", []kmshttp.Credential{cred}
	auth, err := kmshttp.NewSigV4(sc)
	if err != nil {
		log.Fatal(err)
	}
	h, err := kmshttp.New(adapter, auth, kmshttp.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}

	cfg := aws.Config{Region: "us-east-1", Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		return aws.Credentials{AccessKeyID: cred.AccessKeyID, SecretAccessKey: cred.SecretAccessKey.Reveal()}, nil
	})}
	client := kms.NewFromConfig(cfg, func(o *kms.Options) {
		o.HTTPClient = h.Transport()
		o.BaseEndpoint = aws.String("http://hsmkms.local")
	})

	key, err := client.CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("orders")})
	if err != nil {
		log.Fatal(err)
	}
	enc, err := client.Encrypt(ctx, &kms.EncryptInput{KeyId: key.KeyMetadata.KeyId, Plaintext: []byte("hello"),
		EncryptionContext: map[string]string{"order": "42"}})
	if err != nil {
		log.Fatal(err)
	}
	dec, err := client.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: map[string]string{"order": "42"}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(dec.Plaintext))

	_, err = client.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	var bad *types.InvalidCiphertextException
	fmt.Println(errors.As(err, &bad))
	// Output:
	// hello
	// true
}

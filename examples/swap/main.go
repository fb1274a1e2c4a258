// Command swap runs one function, written against kmsadapter.API, on an
// HSM cluster and then, unchanged, on AWS KMS.
//
// The cluster is three throwaway SoftHSM2 members (softhsm-test), with the
// KMS metadata and the cluster catalog in one bbolt file. The AWS part
// runs only when AWS credentials are in the environment
// (AWS_ACCESS_KEY_ID, AWS_PROFILE or AWS_WEB_IDENTITY_TOKEN_FILE); it
// uses the key named by HSMKMS_SWAP_AWS_KEY_ID, or creates one and
// schedules its deletion (7 days) at the end.
//
//	go run ./examples/swap
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/hsmkms/hsmkms/cluster"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/kmsadapter"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
)

// protect is application code: it knows kmsadapter.API (the subset of
// *kms.Client it calls), nothing of HSMs or AWS.
func protect(ctx context.Context, api kmsadapter.API, keyID string) error {
	ec := map[string]string{"tenant": "acme", "purpose": "swap-demo"}
	enc, err := api.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(keyID), Plaintext: []byte("card 4111 1111 1111 1111"), EncryptionContext: ec})
	if err != nil {
		return fmt.Errorf("encrypt: %w", err)
	}
	dec, err := api.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec})
	if err != nil {
		return fmt.Errorf("decrypt: %w", err)
	}
	fmt.Printf("  Encrypt/Decrypt with %s: %q\n", *dec.KeyId, dec.Plaintext)

	dk, err := api.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(keyID), KeySpec: types.DataKeySpecAes256})
	if err != nil {
		return fmt.Errorf("generate data key: %w", err)
	}
	fmt.Printf("  GenerateDataKey: %d-byte key, %d-byte encrypted copy\n", len(dk.Plaintext), len(dk.CiphertextBlob))

	// Failures read the same way on both.
	_, err = api.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: map[string]string{"tenant": "evil"}})
	var badCT *types.InvalidCiphertextException
	fmt.Printf("  wrong encryption context -> InvalidCiphertextException: %v\n", errors.As(err, &badCT))
	_, err = api.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String("alias/hsmkms-swap-does-not-exist")})
	var nf *types.NotFoundException
	fmt.Printf("  unknown alias -> NotFoundException: %v\n", errors.As(err, &nf))
	return nil
}

func main() {
	ctx := context.Background()
	if err := onHSMs(ctx); err != nil {
		log.Fatal(err)
	}
	if err := onAWS(ctx); err != nil {
		log.Fatal(err)
	}
}

func onHSMs(ctx context.Context) (err error) {
	dir, err := os.MkdirTemp("", "hsmkms-swap-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	members, err := softhsmtest.NewCluster(dir, 3)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, members.Close()) }()

	// One bbolt file holds the KMS metadata and the cluster's catalog.
	store, err := kmsadapter.OpenBoltStore(filepath.Join(dir, "kms.db"))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, store.Close()) }()
	ccfg := cluster.DefaultConfig()
	var opts []cluster.Option
	for i, m := range members.Members {
		name := fmt.Sprintf("hsm-%d", i)
		ccfg.Members = append(ccfg.Members, cluster.MemberConfig{Name: name, Token: m.Config(), SOPIN: m.SOPIN()})
		opts = append(opts, cluster.WithTokenOptions(name, hsm.WithInterceptor(m.Faults)))
	}
	cl, err := cluster.New(ctx, ccfg, append(opts, cluster.WithCatalog(kmsadapter.NewCatalog(store)))...)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, cl.Close()) }()
	if err := cl.Bootstrap(ctx); err != nil {
		return err
	}
	client, err := kmsadapter.New(cl, store, kmsadapter.DefaultConfig())
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, client.Close()) }()

	key, err := client.CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("swap demo")})
	if err != nil {
		return err
	}
	fmt.Println("on the HSM cluster (3 SoftHSM2 members):")
	return protect(ctx, client, *key.KeyMetadata.KeyId)
}

func onAWS(ctx context.Context) error {
	if os.Getenv("AWS_ACCESS_KEY_ID") == "" && os.Getenv("AWS_PROFILE") == "" && os.Getenv("AWS_WEB_IDENTITY_TOKEN_FILE") == "" {
		fmt.Println("on AWS KMS: skipped (no AWS credentials in the environment)")
		return nil
	}
	awsCfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return err
	}
	client := kms.NewFromConfig(awsCfg)
	keyID := os.Getenv("HSMKMS_SWAP_AWS_KEY_ID")
	if keyID == "" {
		key, err := client.CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("hsmkms swap example; scheduled for deletion")})
		if err != nil {
			return err
		}
		keyID = *key.KeyMetadata.KeyId
		defer func() {
			_, err := client.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(keyID), PendingWindowInDays: aws.Int32(7)})
			if err != nil {
				log.Printf("scheduling deletion of %s: %v", keyID, err)
			}
		}()
	}
	fmt.Printf("on AWS KMS (%s):\n", awsCfg.Region)
	return protect(ctx, client, keyID)
}

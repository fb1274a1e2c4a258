// Command quickstart creates a throwaway SoftHSM2 token, opens it with the
// hsm package and shows what one token does: keys that never leave the
// HSM, AES-GCM, ECDSA signatures that Go verifies, vague failures, and a
// crashed module that comes back without restarting the process.
//
//	go run ./examples/quickstart
package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/hsmkms/hsmkms/hsm"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
)

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() (err error) {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "hsmkms-quickstart-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	c, err := softhsmtest.NewCluster(dir, 1)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, c.Close()) }()
	m := c.Members[0]

	tok, err := hsm.Open(ctx, m.Config(), hsm.WithInterceptor(m.Faults))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, tok.Close()) }()
	info := tok.Info()
	fmt.Printf("token %q (%s %s), profile %s\n", info.Label, info.Manufacturer, info.Model, info.Profile.Name)

	// A data key and a signing key, created inside the HSM.
	if _, err := tok.GenerateKey(ctx, "orders", hsm.AES256, hsm.KeyOptions{}); err != nil {
		return err
	}
	if _, err := tok.GenerateKey(ctx, "release-signing", hsm.ECP256, hsm.KeyOptions{}); err != nil {
		return err
	}

	ct, iv, err := tok.EncryptGCM(ctx, "orders", nil, []byte("order #1: 3 widgets"), []byte("tenant=acme"))
	if err != nil {
		return err
	}
	pt, err := tok.DecryptGCM(ctx, "orders", iv, ct, []byte("tenant=acme"))
	if err != nil {
		return err
	}
	fmt.Printf("AES-GCM round trip: %q\n", pt)
	_, err = tok.DecryptGCM(ctx, "orders", iv, ct, []byte("tenant=evil"))
	fmt.Printf("wrong context: %v (caller's fault: %v)\n", err, hsm.Classify(err) == hsm.ClassCaller)

	digest := sha256.Sum256([]byte("release v1.0.0"))
	sig, err := tok.Sign(ctx, "release-signing", hsm.ECDSA, crypto.SHA256, digest[:])
	if err != nil {
		return err
	}
	der, err := tok.PublicKey(ctx, "release-signing")
	if err != nil {
		return err
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return err
	}
	fmt.Printf("ECDSA signature verifies with crypto/ecdsa: %v\n", ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), digest[:], sig))

	// Crash the module (C_Finalize), as a lost HSM would look.
	if err := m.Crash(); err != nil {
		return err
	}
	_, _, err = tok.EncryptGCM(ctx, "orders", nil, []byte("x"), nil)
	fmt.Printf("while crashed: %v (member's fault: %v, healthy: %v)\n", err, hsm.Classify(err) == hsm.ClassMember, tok.Health().Healthy)
	if err := m.Restart(); err != nil {
		return err
	}
	pt, err = tok.DecryptGCM(ctx, "orders", iv, ct, []byte("tenant=acme"))
	if err != nil {
		return err
	}
	fmt.Printf("after restart, same Token, no process restart: %q (healthy: %v)\n", pt, tok.Health().Healthy)
	return nil
}

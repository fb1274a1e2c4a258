package cluster

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"testing"

	"github.com/hsmkms/hsmkms/hsm"
)

func TestReplicatedKeyWorksOnEveryMember(t *testing.T) {
	e := newEnv(t, 3, nil)
	ctx := context.Background()
	for _, spec := range []hsm.KeySpec{hsm.AES256, hsm.ECP256, hsm.HMAC256} {
		id := hsm.KeyID("k-" + string(spec))
		info, err := e.c.GenerateKey(ctx, id, spec, hsm.KeyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if info.ID != id || info.Spec != spec {
			t.Fatalf("info %+v", info)
		}
	}
	for i := range 3 {
		got := e.tokenKeys(i)
		if len(got) != 3 {
			t.Fatalf("member %d holds %v, want 3 keys", i, got)
		}
	}
	// Each member, used alone, serves each key: encrypt on one, decrypt on another.
	var cts [][]byte
	var ivs [][]byte
	for i := range 3 {
		ct, iv, err := e.c.members[i].token().EncryptGCM(ctx, "k-AES_256", nil, []byte("hello"), []byte("aad"))
		if err != nil {
			t.Fatal(err)
		}
		cts, ivs = append(cts, ct), append(ivs, iv)
	}
	for i := range 3 {
		j := (i + 1) % 3
		pt, err := e.c.members[j].token().DecryptGCM(ctx, "k-AES_256", ivs[i], cts[i], []byte("aad"))
		if err != nil || !bytes.Equal(pt, []byte("hello")) {
			t.Fatalf("member %d cannot decrypt member %d's ciphertext: %v", j, i, err)
		}
	}
	pub0, err := e.c.members[0].token().PublicKey(ctx, "k-EC_P256")
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 3; i++ {
		pub, err := e.c.members[i].token().PublicKey(ctx, "k-EC_P256")
		if err != nil || !bytes.Equal(pub, pub0) {
			t.Fatalf("member %d public key differs: %v", i, err)
		}
		sig, err := e.c.members[i].token().Sign(ctx, "k-EC_P256", hsm.ECDSA, crypto.SHA256, digest("m"))
		if err != nil {
			t.Fatal(err)
		}
		if err := e.c.Verify(ctx, "k-EC_P256", hsm.ECDSA, crypto.SHA256, digest("m"), sig); err != nil {
			t.Fatal(err)
		}
	}
	// Every member holds its own trusted KEK and the others' untrusted copies; no transport key is left.
	for i := range 3 {
		var own, copies int
		for _, k := range e.allTokenKeys(i) {
			switch {
			case len(k.ID) > len(transportPrefix) && string(k.ID[:len(transportPrefix)]) == transportPrefix:
				t.Fatalf("member %d still holds transport key %s", i, k.ID)
			case len(k.ID) > len(kekPrefix) && string(k.ID[:len(kekPrefix)]) == kekPrefix:
				if k.Trusted {
					own++
				} else {
					copies++
					if k.Extractable {
						t.Fatalf("member %d: KEK copy %s is extractable", i, k.ID)
					}
				}
			}
		}
		if own != 1 || copies != 2 {
			t.Fatalf("member %d: %d own KEKs and %d copies, want 1 and 2", i, own, copies)
		}
	}
}

// TestCreationOnTokensThatCreateDirectly: members whose profile makes
// token objects directly (no session object copied to the token, as on
// a network HSM) create, replicate and serve keys alike, and a replica
// whose public key does not match its private key is refused and leaves
// nothing behind.
func TestCreationOnTokensThatCreateDirectly(t *testing.T) {
	e := newEnv(t, 2, func(c *Config) {
		for i := range c.Members {
			p := hsm.ProfileSoftHSM2
			p.ExclusiveObjectWrites = false // the flag that stages creation in session objects
			c.Members[i].Token.Profile = &p
		}
	})
	ctx := context.Background()
	for _, spec := range []hsm.KeySpec{hsm.AES256, hsm.ECP256} {
		if _, err := e.c.GenerateKey(ctx, hsm.KeyID("d-"+string(spec)), spec, hsm.KeyOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2 {
		if got := e.tokenKeys(i); len(got) != 2 {
			t.Fatalf("member %d holds %v, want 2 keys", i, got)
		}
	}
	ct, iv, err := e.c.members[0].token().EncryptGCM(ctx, "d-AES_256", nil, []byte("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := e.c.members[1].token().DecryptGCM(ctx, "d-AES_256", iv, ct, nil); err != nil || string(pt) != "hello" {
		t.Fatalf("member 1 cannot decrypt member 0's ciphertext: %v", err)
	}
	sig, err := e.c.members[1].token().Sign(ctx, "d-EC_P256", hsm.ECDSA, crypto.SHA256, digest("m"))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.c.members[0].token().Verify(ctx, "d-EC_P256", hsm.ECDSA, crypto.SHA256, digest("m"), sig); err != nil {
		t.Fatal(err)
	}

	tok := e.c.members[0].token()
	_, _, kek := e.c.members[0].snapshot()
	blob, _, err := tok.GenerateWrapped(ctx, kek, hsm.ECP256, hsm.KeyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, otherPub, err := tok.GenerateWrapped(ctx, kek, hsm.ECP256, hsm.KeyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = tok.UnwrapKey(ctx, hsm.UnwrapRequest{WrappingKey: kek, Wrapping: hsm.Wrapping{Mechanism: hsm.AESKeyWrapPad},
		Wrapped: blob, ID: "mismatch", Spec: hsm.ECP256, PublicKey: otherPub})
	if !errors.Is(err, hsm.ErrInvalidInput) {
		t.Fatalf("got %v, want ErrInvalidInput", err)
	}
	if got := e.tokenKeys(0); len(got) != 2 {
		t.Fatalf("member 0 holds %v after the refused pair", got)
	}
}

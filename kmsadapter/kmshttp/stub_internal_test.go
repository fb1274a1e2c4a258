package kmshttp

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/hsmkms/hsmkms/kmsadapter"
)

const stubKeyID = "0b0c0d0e-1111-4222-8333-444455556666"

// stubAPI answers Encrypt with a fixed 4 KiB ciphertext and the key
// lookups with the default key policy, at once: the handler's cost alone.
type stubAPI struct {
	kmsadapter.API
	ct []byte
}

func (s stubAPI) Encrypt(context.Context, *kms.EncryptInput, ...func(*kms.Options)) (*kms.EncryptOutput, error) {
	return &kms.EncryptOutput{CiphertextBlob: s.ct, KeyId: aws.String(stubARN), EncryptionAlgorithm: "SYMMETRIC_DEFAULT"}, nil
}

const stubARN = "arn:aws:kms:us-east-1:111122223333:key/" + stubKeyID

func (stubAPI) DescribeKey(context.Context, *kms.DescribeKeyInput, ...func(*kms.Options)) (*kms.DescribeKeyOutput, error) {
	return &kms.DescribeKeyOutput{KeyMetadata: &types.KeyMetadata{KeyId: aws.String(stubKeyID), Arn: aws.String(stubARN)}}, nil
}

func (stubAPI) GetKeyPolicy(context.Context, *kms.GetKeyPolicyInput, ...func(*kms.Options)) (*kms.GetKeyPolicyOutput, error) {
	return &kms.GetKeyPolicyOutput{Policy: aws.String(`{"Version":"2012-10-17","Id":"key-default-1","Statement":[{"Sid":"Enable IAM User Permissions","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"}]}`)}, nil
}

// The trusted transport hands the handler's response buffer to the
// response body, which gives it back on Close: the body reads the whole
// answer, fails after Close, and closes twice without harm.
func TestTransportPooledBody(t *testing.T) {
	h, err := New(stubAPI{ct: []byte("ciphertext")}, fixedAuth{}, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	tr := h.TrustedTransport(Principal{ARN: "arn:aws:iam::111122223333:user/t", AccountID: "111122223333"})
	for range 3 {
		req, err := http.NewRequest(http.MethodPost, "http://hsmkms.local/", bytes.NewReader([]byte(`{"KeyId":"`+stubKeyID+`","Plaintext":"aGk="}`)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Amz-Target", "TrentService.Encrypt")
		resp, err := tr.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		want := `{"CiphertextBlob":"` + base64.StdEncoding.EncodeToString([]byte("ciphertext")) + `","EncryptionAlgorithm":"SYMMETRIC_DEFAULT","KeyId":"` + stubARN + `"}`
		if resp.StatusCode != http.StatusOK || string(b) != want || resp.ContentLength != int64(len(want)) {
			t.Fatalf("status %d, length %d, body %s", resp.StatusCode, resp.ContentLength, b)
		}
		if err := resp.Body.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := resp.Body.Read(make([]byte, 1)); !errors.Is(err, errBodyClosed) {
			t.Fatalf("a read after Close: %v", err)
		}
		if err := resp.Body.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// fixedAuth refuses every request: the trusted transport never asks it.
type fixedAuth struct{}

func (fixedAuth) Authenticate(*http.Request, []byte) (*Principal, error) {
	return nil, newErr(http.StatusBadRequest, CodeUnrecognizedClient, "no")
}

var _ kmsadapter.API = stubAPI{}

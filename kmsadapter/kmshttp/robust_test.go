package kmshttp_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/stretchr/testify/require"

	"github.com/hsmkms/hsmkms/kmsadapter/kmshttp"
)

func TestRobustness(t *testing.T) {
	e := newEnv(t, envOpt{})
	k, err := e.loopback(alice).CreateKey(bg, &kms.CreateKeyInput{})
	require.NoError(t, err)
	id := *k.KeyMetadata.KeyId
	cases := []struct {
		name, target, body, code string
	}{
		{"malformed JSON", "Encrypt", `{"KeyId": "` + id + `", "Plaintext": `, "SerializationException"},
		{"not an object", "Encrypt", `["KeyId"]`, "SerializationException"},
		{"two values", "ListKeys", `{} {}`, "SerializationException"},
		{"string for a number", "GenerateRandom", `{"NumberOfBytes": "16"}`, "SerializationException"},
		{"fraction for an integer", "GenerateRandom", `{"NumberOfBytes": 1.5}`, "SerializationException"},
		{"huge integer", "GenerateRandom", `{"NumberOfBytes": 99999999999999999999}`, "SerializationException"},
		{"number for a string", "Encrypt", `{"KeyId": 7, "Plaintext": "aGk="}`, "SerializationException"},
		{"object for a map value", "Encrypt", `{"KeyId": "` + id + `", "Plaintext": "aGk=", "EncryptionContext": {"a": {}}}`, "SerializationException"},
		{"array of wrong things", "TagResource", `{"KeyId": "` + id + `", "Tags": [1, 2]}`, "SerializationException"},
		{"truncated base64", "Encrypt", `{"KeyId": "` + id + `", "Plaintext": "aGVsbG8gd29ybG"}`, "SerializationException"},
		{"not base64", "Decrypt", `{"CiphertextBlob": "!!!!"}`, "SerializationException"},
		{"missing required", "Encrypt", `{"KeyId": "` + id + `"}`, "ValidationException"},
		{"null required", "Encrypt", `{"KeyId": null, "Plaintext": "aGk="}`, "ValidationException"},
		{"empty body", "Encrypt", ``, "ValidationException"},
		{"garbage ciphertext", "Decrypt", `{"CiphertextBlob": "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSYnKCkqKywtLi8wMTIzNA=="}`, "InvalidCiphertextException"},
		{"short ciphertext", "Decrypt", `{"CiphertextBlob": "AQID"}`, "InvalidCiphertextException"},
		{"bad enum", "Sign", `{"KeyId": "` + id + `", "Message": "aGk=", "SigningAlgorithm": "NOPE"}`, ""},
		{"unknown target", "DestroyEverything", `{}`, "UnknownOperationException"},
		{"no target", "", `{}`, "UnknownOperationException"},
		{"custom key stores are not served", "CreateCustomKeyStore", `{}`, "UnknownOperationException"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp := do(t, rawRequest(t, e.srv.URL, c.target, c.body, &alice, time.Now()))
			status, typ, msg := awsError(t, resp)
			require.Equal(t, http.StatusBadRequest, status, "%s: %s", typ, msg)
			if c.code != "" {
				require.Equal(t, c.code, typ, msg)
			}
			require.NotEmpty(t, msg)
		})
	}
	t.Run("huge body", func(t *testing.T) {
		body := `{"KeyId": "` + id + `", "Plaintext": "` + strings.Repeat("A", 2<<20) + `"}`
		resp := do(t, rawRequest(t, e.srv.URL, "Encrypt", body, &alice, time.Now()))
		status, typ, msg := awsError(t, resp)
		require.Equal(t, http.StatusBadRequest, status)
		require.Equal(t, "ValidationException", typ)
		require.Contains(t, msg, "exceeds")
	})
	t.Run("huge chunked body", func(t *testing.T) {
		req := rawRequest(t, e.srv.URL, "Encrypt", "{}", &alice, time.Now())
		req.Body = io.NopCloser(io.MultiReader(strings.NewReader(`{"Plaintext":"`), neverEnding{}))
		req.ContentLength = -1
		status, typ, _ := awsError(t, do(t, req))
		require.Equal(t, http.StatusBadRequest, status)
		require.Equal(t, "ValidationException", typ)
	})
	t.Run("GET", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodGet, e.srv.URL+"/", nil)
		require.NoError(t, err)
		status, typ, _ := awsError(t, do(t, req))
		require.Equal(t, http.StatusBadRequest, status)
		require.Equal(t, "UnknownOperationException", typ)
	})
}

type neverEnding struct{}

func (neverEnding) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'A'
	}
	return len(p), nil
}

// FuzzHandler sends arbitrary targets and bodies through the handler (as
// an authenticated caller, so that decoding is reached): every answer is
// a well-formed AWS response, and none is a 500 or a panic.
func FuzzHandler(f *testing.F) {
	e := newEnv(f, envOpt{})
	k := kms.NewFromConfig(awsConfig(alice), func(o *kms.Options) {
		o.HTTPClient = e.h.TrustedTransport(alicePrincipal())
		o.BaseEndpoint = aws.String("http://hsmkms.local")
	})
	ck, err := k.CreateKey(bg, &kms.CreateKeyInput{})
	if err != nil {
		f.Fatal(err)
	}
	if _, err := k.CreateAlias(bg, &kms.CreateAliasInput{AliasName: aws.String("alias/fuzz"), TargetKeyId: ck.KeyMetadata.KeyId}); err != nil {
		f.Fatal(err)
	}
	enc, err := k.Encrypt(bg, &kms.EncryptInput{KeyId: aws.String("alias/fuzz"), Plaintext: []byte("seed"), EncryptionContext: map[string]string{"a": "b"}})
	if err != nil {
		f.Fatal(err)
	}
	blob, _ := json.Marshal(enc.CiphertextBlob)
	f.Add("Decrypt", []byte(`{"CiphertextBlob":`+string(blob)+`,"EncryptionContext":{"a":"b"}}`))
	f.Add("Encrypt", []byte(`{"KeyId":"alias/fuzz","Plaintext":"aGk=","EncryptionContext":{"k":"v"}}`))
	f.Add("GenerateDataKey", []byte(`{"KeyId":"alias/fuzz","KeySpec":"AES_256"}`))
	f.Add("ReEncrypt", []byte(`{"CiphertextBlob":`+string(blob)+`,"DestinationKeyId":"alias/fuzz"}`))
	tr := e.h.TrustedTransport(alicePrincipal())
	f.Fuzz(func(t *testing.T, target string, body []byte) {
		req, err := http.NewRequest(http.MethodPost, "http://hsmkms.local/", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err) // a fixed URL and a byte body: cannot fail
		}
		req.Header.Set("X-Amz-Target", "TrentService."+target)
		// Key-changing operations would make runs depend on one another.
		switch target {
		case "DisableKey", "ScheduleKeyDeletion", "PutKeyPolicy", "DeleteAlias", "UpdateAlias", "DeleteImportedKeyMaterial":
			return // not fuzzed: no seed names them
		}
		resp, err := tr.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode >= 500 {
			t.Fatalf("%s %q: status %d: %s", target, body, resp.StatusCode, b)
		}
		if resp.Header.Get("X-Amzn-Requestid") == "" {
			t.Fatal("no request ID")
		}
		var doc map[string]any
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatalf("%s %q: the response is not a JSON object: %q", target, body, b)
		}
		if resp.StatusCode != 200 {
			if typ, _ := doc["__type"].(string); typ == "" {
				t.Fatalf("error without __type: %q", b)
			}
		}
	})
}

var _ = kmshttp.DefaultConfig

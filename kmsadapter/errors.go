package kmsadapter

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/hsmkms/hsmkms/hsm"
)

// ErrTampered means a metadata record failed its integrity check: it was
// changed, or moved, outside this package. Returned by New and VerifyStore;
// API calls that meet such a record fail with KMSInternalException.
var ErrTampered = errors.New("kmsadapter: metadata record failed its integrity check")

// IntegrityError names a record that failed its integrity check. It wraps
// ErrTampered.
type IntegrityError struct {
	Bucket string
	Key    string
}

func (e *IntegrityError) Error() string {
	return fmt.Sprintf("kmsadapter: record %s/%s failed its integrity check (changed outside hsmkms)", e.Bucket, e.Key)
}

func (e *IntegrityError) Unwrap() error { return ErrTampered }

// apiErr is an AWS-facing error before it gets its operation: the SDK
// exception (a *types.XxxException or a *smithy.GenericAPIError for
// ValidationException) and the HTTP status AWS answers it with.
type apiErr struct {
	err    smithy.APIError
	status int
}

func (e *apiErr) Error() string { return e.err.Error() }

func notFound(format string, a ...any) error {
	return &apiErr{&types.NotFoundException{Message: msg(format, a...)}, 400}
}
func disabled(format string, a ...any) error {
	return &apiErr{&types.DisabledException{Message: msg(format, a...)}, 400}
}
func invalidState(format string, a ...any) error {
	return &apiErr{&types.KMSInvalidStateException{Message: msg(format, a...)}, 400}
}
func invalidCiphertext(format string, a ...any) error {
	return &apiErr{&types.InvalidCiphertextException{Message: msg(format, a...)}, 400}
}
func incorrectKey(format string, a ...any) error {
	return &apiErr{&types.IncorrectKeyException{Message: msg(format, a...)}, 400}
}
func invalidKeyUsage(format string, a ...any) error {
	return &apiErr{&types.InvalidKeyUsageException{Message: msg(format, a...)}, 400}
}
func invalidSignature() error {
	return &apiErr{&types.KMSInvalidSignatureException{Message: msg("signature verification failed")}, 400}
}
func invalidMac() error {
	return &apiErr{&types.KMSInvalidMacException{Message: msg("MAC verification failed")}, 400}
}
func alreadyExists(format string, a ...any) error {
	return &apiErr{&types.AlreadyExistsException{Message: msg(format, a...)}, 400}
}
func invalidAliasName(format string, a ...any) error {
	return &apiErr{&types.InvalidAliasNameException{Message: msg(format, a...)}, 400}
}
func invalidArn(format string, a ...any) error {
	return &apiErr{&types.InvalidArnException{Message: msg(format, a...)}, 400}
}
func limitExceeded(format string, a ...any) error {
	return &apiErr{&types.LimitExceededException{Message: msg(format, a...)}, 400}
}
func unsupported(format string, a ...any) error {
	return &apiErr{&types.UnsupportedOperationException{Message: msg(format, a...)}, 400}
}
func keyUnavailable(format string, a ...any) error {
	return &apiErr{&types.KeyUnavailableException{Message: msg(format, a...)}, 500}
}
func dependencyTimeout(format string, a ...any) error {
	return &apiErr{&types.DependencyTimeoutException{Message: msg(format, a...)}, 503}
}
func internal(format string, a ...any) error {
	return &apiErr{&types.KMSInternalException{Message: msg(format, a...)}, 500}
}
func conflict(format string, a ...any) error {
	return &apiErr{&types.ConflictException{Message: msg(format, a...)}, 400}
}
func malformedPolicy(format string, a ...any) error {
	return &apiErr{&types.MalformedPolicyDocumentException{Message: msg(format, a...)}, 400}
}
func tagErr(format string, a ...any) error {
	return &apiErr{&types.TagException{Message: msg(format, a...)}, 400}
}
func invalidImportToken(format string, a ...any) error {
	return &apiErr{&types.InvalidImportTokenException{Message: msg(format, a...)}, 400}
}
func expiredImportToken(format string, a ...any) error {
	return &apiErr{&types.ExpiredImportTokenException{Message: msg(format, a...)}, 400}
}
func incorrectKeyMaterial(format string, a ...any) error {
	return &apiErr{&types.IncorrectKeyMaterialException{Message: msg(format, a...)}, 400}
}
func invalidMarker(format string, a ...any) error {
	return &apiErr{&types.InvalidMarkerException{Message: msg(format, a...)}, 400}
}

// validation is AWS's ValidationException. The KMS model has no type for
// it, so the SDK returns it as a *smithy.GenericAPIError with that code;
// so do we.
func validation(format string, a ...any) error {
	return &apiErr{&smithy.GenericAPIError{Code: "ValidationException", Message: fmt.Sprintf(format, a...), Fault: smithy.FaultClient}, 400}
}

func msg(format string, a ...any) *string {
	s := fmt.Sprintf(format, a...)
	return &s
}

// backendErr maps an error from the Backend onto the AWS exception a KMS
// caller expects. what names the failing step for the message; it never
// carries key material.
func backendErr(err error, what string) error {
	var ae *apiErr
	switch {
	case errors.As(err, &ae):
		return err
	case errors.Is(err, hsm.ErrDecrypt):
		return invalidCiphertext("the ciphertext is invalid or does not match the key and encryption context")
	case errors.Is(err, hsm.ErrVerify):
		return invalidSignature()
	case errors.Is(err, hsm.ErrUnsupported):
		return unsupported("%s: the HSM does not support this algorithm", what)
	case errors.Is(err, hsm.ErrKeyNotFound):
		return keyUnavailable("%s: key material is not available on the HSMs", what)
	case errors.Is(err, hsm.ErrWrongKeyType):
		return invalidKeyUsage("%s: the key cannot perform this operation", what)
	case errors.Is(err, hsm.ErrInvalidInput):
		return validation("%s: %s", what, err.Error())
	case errors.Is(err, hsm.ErrTimeout):
		return dependencyTimeout("%s: the HSMs did not answer in time", what)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err // the caller's context: returned as the SDK returns it
	}
	switch hsm.Classify(err) {
	case hsm.ClassContext:
		return err
	case hsm.ClassMember, hsm.ClassFatal:
		return keyUnavailable("%s: the HSMs cannot serve the request", what)
	}
	return internal("%s failed", what)
}

func isVerifyErr(err error) bool { return errors.Is(err, hsm.ErrVerify) }

// opError wraps err the way aws-sdk-go-v2 wraps a service error: a
// *smithy.OperationError around an *awshttp.ResponseError around the
// exception, so errors.As finds *types.XxxException, smithy.APIError,
// *awshttp.ResponseError (status code, request ID) and
// *smithy.OperationError. Errors of the caller's context are wrapped in
// the OperationError only, as the SDK does.
func opError(op string, err error) error {
	if err == nil {
		return nil
	}
	var ae *apiErr
	if !errors.As(err, &ae) {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return &smithy.OperationError{ServiceID: "KMS", OperationName: op, Err: err}
		}
		ae = internal("internal error").(*apiErr)
	}
	reqID := requestID()
	resp := &http.Response{StatusCode: ae.status, Status: http.StatusText(ae.status), Header: http.Header{"X-Amzn-Requestid": {reqID}}}
	return &smithy.OperationError{
		ServiceID:     "KMS",
		OperationName: op,
		Err: &awshttp.ResponseError{
			ResponseError: &smithyhttp.ResponseError{Response: &smithyhttp.Response{Response: resp}, Err: ae.err},
			RequestID:     reqID,
		},
	}
}

func requestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return formatUUID(b)
}

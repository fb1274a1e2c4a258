package kmshttp

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
)

// Error is an AWS error as the handler writes it: the body
// {"__type": Code, "message": Message} with HTTP status Status. The
// authenticator returns these for requests it refuses.
type Error struct {
	Code    string
	Message string
	Status  int
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// ErrorCode, ErrorMessage and ErrorFault make *Error a smithy.APIError.
func (e *Error) ErrorCode() string    { return e.Code }
func (e *Error) ErrorMessage() string { return e.Message }
func (e *Error) ErrorFault() smithy.ErrorFault {
	if e.Status >= 500 {
		return smithy.FaultServer
	}
	return smithy.FaultClient
}

var _ smithy.APIError = (*Error)(nil)

func newErr(status int, code, format string, a ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, a...), Status: status}
}

func serializationErr(format string, a ...any) *Error {
	return newErr(http.StatusBadRequest, "SerializationException", format, a...)
}

func validationErr(format string, a ...any) *Error {
	return newErr(http.StatusBadRequest, "ValidationException", format, a...)
}

func accessDenied(format string, a ...any) *Error {
	return newErr(http.StatusBadRequest, "AccessDeniedException", format, a...)
}

func internalErr(format string, a ...any) *Error {
	return newErr(http.StatusInternalServerError, "KMSInternalException", format, a...)
}

// Codes of the authentication errors, as AWS returns them.
const (
	CodeMissingAuthenticationToken = "MissingAuthenticationTokenException"
	CodeIncompleteSignature        = "IncompleteSignatureException"
	CodeInvalidSignature           = "InvalidSignatureException"
	CodeUnrecognizedClient         = "UnrecognizedClientException"
	CodeAccessDenied               = "AccessDeniedException"
)

// toError turns what an API method returned into the error the wire
// carries: the smithy error code and message, and the HTTP status from the
// *awshttp.ResponseError the SDK (and kmsadapter) wraps it in. An error
// with no AWS code is an internal fault, whose detail is not sent.
func toError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		if errors.Is(err, context.DeadlineExceeded) {
			return newErr(http.StatusServiceUnavailable, "DependencyTimeoutException", "the request timed out")
		}
		if errors.Is(err, context.Canceled) {
			return newErr(http.StatusServiceUnavailable, "DependencyTimeoutException", "the request was canceled")
		}
		return internalErr("internal error")
	}
	status := http.StatusBadRequest
	if ae.ErrorFault() == smithy.FaultServer {
		status = http.StatusInternalServerError
	}
	var re *awshttp.ResponseError
	if errors.As(err, &re) && re.HTTPStatusCode() >= 400 {
		status = re.HTTPStatusCode()
	}
	return &Error{Code: ae.ErrorCode(), Message: ae.ErrorMessage(), Status: status}
}

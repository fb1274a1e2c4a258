package kmsadapter_test

import (
	"context"
	"errors"
	"testing"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	"github.com/stretchr/testify/require"
)

// TestErrorShape checks that errors are wrapped as aws-sdk-go-v2 wraps
// them, so that every errors.As a KMS caller writes keeps working.
func TestErrorShape(t *testing.T) {
	e := newEnv(t)
	_, err := e.c.DescribeKey(bg, &kms.DescribeKeyInput{KeyId: str(missingKey)})
	require.Error(t, err)

	var nf *types.NotFoundException
	require.ErrorAs(t, err, &nf)
	require.Contains(t, nf.ErrorMessage(), missingKey)

	var oe *smithy.OperationError
	require.ErrorAs(t, err, &oe)
	require.Equal(t, "KMS", oe.Service())
	require.Equal(t, "DescribeKey", oe.Operation())

	var re *awshttp.ResponseError
	require.ErrorAs(t, err, &re)
	require.Equal(t, 400, re.HTTPStatusCode())
	require.Len(t, re.ServiceRequestID(), 36)

	var ae smithy.APIError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, "NotFoundException", ae.ErrorCode())
	require.Equal(t, smithy.FaultClient, ae.ErrorFault())

	require.Contains(t, err.Error(), "operation error KMS: DescribeKey")

	// ValidationException is a GenericAPIError, as the SDK returns it.
	_, err = e.c.GenerateRandom(bg, &kms.GenerateRandomInput{NumberOfBytes: i32(0)})
	var ge *smithy.GenericAPIError
	require.ErrorAs(t, err, &ge)
	require.Equal(t, "ValidationException", ge.Code)

	// A cancelled context is the context's error, inside an OperationError.
	ctx, cancel := context.WithCancel(bg)
	cancel()
	_, err = e.c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: str(missingKey)})
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorAs(t, err, &oe)
	require.False(t, errors.As(err, &ae), "a cancelled call is not an API error")
}

// Package kmshttp serves the AWS KMS wire protocol over a kmsadapter.API,
// so that unmodified AWS SDKs, in any language, and the AWS CLI use an HSM
// cluster by pointing their KMS endpoint at it (AWS_ENDPOINT_URL_KMS, or
// --endpoint-url).
//
//	sc := kmshttp.DefaultSigV4Config()
//	sc.Region, sc.Credentials = "us-east-1", creds
//	auth, _ := kmshttp.NewSigV4(sc)
//	h, _ := kmshttp.New(adapter, auth, kmshttp.DefaultConfig())
//	http.ListenAndServeTLS(":443", cert, key, h)
//
// # Protocol
//
// AWS JSON 1.1: POST / with X-Amz-Target: TrentService.<Operation>. Every
// operation of kmsadapter.API is served (Operations lists them); others
// (custom key stores, grants, multi-Region keys) are
// UnknownOperationException. Members are named as in the KMS model, blobs
// are standard base64, timestamps epoch seconds. Bodies are decoded into
// the SDK's own input types and answers encoded from its output types, so
// the shapes are those the SDKs expect. Every response carries an
// x-amzn-RequestId header.
//
// # Authentication
//
// An Authenticator says who sent a request. SigV4 verifies AWS Signature
// Version 4 for the service "kms" against configured credentials, each an
// access key pair standing for an IAM principal ARN. The expected
// signature is computed by aws-sdk-go-v2's own v4 signer over the headers
// the caller signed and the SHA-256 of the body as received. Signatures
// are compared in constant time. A request is
// accepted within MaxSkew (5 minutes, as AWS) of its X-Amz-Date, and a
// signature already seen is refused once SigV4Config.ReplayGrace (2
// seconds) has passed since it was first seen: clients built on botocore
// sign no nonce, so their identical calls within one second share a
// signature.
//
// # Authorization
//
// Each operation needs an action (kms:Encrypt, ...) on a key, or, for
// CreateKey, ListKeys, ListAliases and GenerateRandom, on the account;
// CreateAlias, UpdateAlias and DeleteAlias need both, the alias being a
// resource of its own. A request that names its key by an alias runs on
// the key that was authorized, even if the alias has moved since. A
// key's policy, read through the API (DescribeKey, GetKeyPolicy) and kept
// for Config.KeyCacheTTL, decides with IAM's rules: Effect, Principal and
// NotPrincipal (an ARN, an account ID or its root ARN, or "*"), Action and
// NotAction with wildcards, Resource and NotResource, and Condition with
// the String*, Arn*, Bool and Null operators, the ForAnyValue: and
// ForAllValues: qualifiers and the IfExists suffix, over the keys
// kms:EncryptionContext:<key>, kms:EncryptionContextKeys,
// kms:CallerAccount, kms:EncryptionAlgorithm, kms:SigningAlgorithm,
// kms:MacAlgorithm, kms:MessageType, kms:DataKeyPairSpec,
// aws:PrincipalArn and aws:PrincipalAccount. An explicit Deny wins;
// without an Allow the request is denied. A statement that allows the
// caller's account (as the default key policy does) defers to the
// caller's own permissions, Credential.Actions, which stand in for IAM
// policies; so do account-level operations. Refusals are
// AccessDeniedException. Policies that use anything else are refused by
// CreateKey and PutKeyPolicy with MalformedPolicyDocumentException, so a
// stored policy always means what it says. Decrypt and ReEncrypt without
// a KeyId are authorized on the key named in the ciphertext, and the key
// that actually served the call is checked again before the answer leaves.
// CreateKey and PutKeyPolicy make AWS's policy lockout safety check: a
// policy that would not let the caller call PutKeyPolicy on the key
// afterwards is refused with MalformedPolicyDocumentException unless the
// request sets BypassPolicyLockoutSafetyCheck. Grants are not implemented.
//
// # In process
//
// Handler.Transport returns an aws.HTTPClient that serves the SDK's
// requests through the handler without a socket, so code that holds a
// concrete *kms.Client changes only how it is built:
//
//	client := kms.NewFromConfig(cfg, func(o *kms.Options) {
//		o.HTTPClient = h.Transport()
//		o.BaseEndpoint = aws.String("http://hsmkms.local")
//	})
//
// Handler.TrustedTransport skips the signature check and serves every
// request as a given principal; key policies still apply.
//
// # Concurrency
//
// A Handler, a SigV4 and a Transport are safe for concurrent use. The
// handler holds no lock while it calls the API; its key cache and the
// replay cache of SigV4 (32 shards) are locked briefly per request.
// Request bodies and responses use pooled buffers; a response from
// Transport returns its buffer to the pool when its body is closed, and
// cannot be read after.
//
// # Errors
//
// Errors are written as {"__type": "<Code>", "message": "..."}, with an
// X-Amzn-ErrorType header, and the status the API's error carries (its
// *awshttp.ResponseError): 400 for the caller's errors, 500 (503 for
// DependencyTimeoutException) for faults, so every SDK maps them back to
// its exception types; with aws-sdk-go-v2, errors.As finds
// *types.NotFoundException and the rest. The handler's own errors:
// SerializationException (malformed JSON, wrong member types, bad base64,
// bad timestamps), ValidationException (a required member missing, a body
// over MaxBodyBytes), UnknownOperationException, AccessDeniedException,
// MissingAuthenticationTokenException (no Authorization header),
// IncompleteSignatureException (a malformed one, no X-Amz-Date),
// UnrecognizedClientException (unknown access key) and
// InvalidSignatureException (wrong signature, wrong scope, expired or
// not yet valid, replayed). A panic in the API is recovered and answered
// with KMSInternalException; internal faults are logged with the request
// ID and never described to the caller.
package kmshttp

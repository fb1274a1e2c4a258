package kmsadapter

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"

	"github.com/hsmkms/hsmkms/hsm"
)

// A key's ID is a random (version 4) UUID, as AWS KMS key IDs are.
func newKeyID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return formatUUID(b)
}

func formatUUID(b [16]byte) string {
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

// parseUUID parses the canonical lower-case form only, so that one key has
// one spelling.
func parseUUID(s string) ([16]byte, bool) {
	var b [16]byte
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return b, false
	}
	j := 0
	for i := 0; i < 36; i += 2 {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			i--
			continue
		}
		hi, ok1 := lowerHex(s[i])
		lo, ok2 := lowerHex(s[i+1])
		if !ok1 || !ok2 {
			return b, false
		}
		b[j] = hi<<4 | lo
		j++
	}
	return b, true
}

func lowerHex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// hsmKeyID names the HSM key that holds version n of a KMS key.
func hsmKeyID(keyID string, n int) hsm.KeyID { return hsm.KeyID(fmt.Sprintf("%s/v%d", keyID, n)) }

// freshHSMKeyID is base with a random suffix, for HSM keys whose plain
// name may already have been used (IDs are never reused).
func freshHSMKeyID(base string) hsm.KeyID {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hsm.KeyID(base + "." + hex.EncodeToString(b[:]))
}

// hsmImportKeyID names the RSA wrapping key of an import.
func hsmImportKeyID(keyID string, n int) hsm.KeyID {
	return hsm.KeyID(fmt.Sprintf("%s/import%d", keyID, n))
}

func (c *Client) keyARN(id string) string { return c.arnPrefix + "key/" + id }

func (c *Client) aliasARN(name string) string { return c.arnPrefix + name }

var aliasRE = regexp.MustCompile(`^alias/[a-zA-Z0-9/_-]+$`)

// validateAliasName checks an alias name for CreateAlias and UpdateAlias.
func validateAliasName(name string) error {
	switch {
	case len(name) < 1 || len(name) > 256:
		return validation("1 validation error detected: Value at 'aliasName' failed to satisfy constraint: Member must have length between 1 and 256")
	case !aliasRE.MatchString(name):
		return invalidAliasName("alias name %q must begin with alias/ and contain only letters, digits, /, _ and -", name)
	case strings.HasPrefix(name, "alias/aws/"):
		return invalidAliasName("alias names beginning with alias/aws/ are reserved for AWS managed keys")
	}
	return nil
}

// keyRef is a parsed KeyId parameter.
type keyRef struct {
	keyID string // set for key ID and key ARN forms
	alias string // "alias/..." for alias name and alias ARN forms
}

// idForms says which KeyId forms an operation accepts.
type idForms int

const (
	keyOnly   idForms = iota // key ID or key ARN (management operations)
	anyIDForm                // also alias name and alias ARN (cryptographic operations, DescribeKey)
)

// parseKeyRef parses one of the four KeyId forms. Forms the operation
// does not accept, ARNs of another partition, region or account, and
// strings that are no key identifier give NotFoundException; a string
// that starts as an ARN and is malformed gives InvalidArnException.
func (c *Client) parseKeyRef(s *string, forms idForms) (keyRef, error) {
	if s == nil || *s == "" {
		return keyRef{}, validation("1 validation error detected: Value null at 'keyId' failed to satisfy constraint: Member must not be null")
	}
	v := *s
	if len(v) > 2048 {
		return keyRef{}, validation("1 validation error detected: Value at 'keyId' failed to satisfy constraint: Member must have length less than or equal to 2048")
	}
	if rest, ok := strings.CutPrefix(v, "arn:"); ok {
		parts := strings.SplitN(rest, ":", 5)
		if len(parts) != 5 || parts[1] != "kms" || parts[0] == "" || parts[2] == "" || parts[3] == "" {
			return keyRef{}, invalidArn("%q is not a valid KMS ARN", v)
		}
		if parts[0] != c.cfg.Partition || parts[2] != c.cfg.Region || parts[3] != c.cfg.AccountID {
			return keyRef{}, notFound("key '%s' does not exist", v)
		}
		res := parts[4]
		switch {
		case strings.HasPrefix(res, "key/"):
			id := strings.TrimPrefix(res, "key/")
			if _, ok := parseUUID(id); !ok {
				return keyRef{}, notFound("key '%s' does not exist", v)
			}
			return keyRef{keyID: id}, nil
		case strings.HasPrefix(res, "alias/"):
			if forms != anyIDForm {
				return keyRef{}, invalidArn("an alias ARN is not accepted here; use the key ID or key ARN")
			}
			return keyRef{alias: res}, nil
		}
		return keyRef{}, invalidArn("%q is not a KMS key or alias ARN", v)
	}
	if strings.HasPrefix(v, "alias/") {
		if forms != anyIDForm {
			return keyRef{}, notFound("Invalid keyId '%s': an alias is not accepted here", v)
		}
		return keyRef{alias: v}, nil
	}
	if _, ok := parseUUID(v); !ok {
		return keyRef{}, notFound("Invalid keyId '%s'", v)
	}
	return keyRef{keyID: v}, nil
}

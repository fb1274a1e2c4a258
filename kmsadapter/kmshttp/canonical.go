package kmshttp

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The SigV4 signature of the requests every AWS SDK and the AWS CLI send to
// KMS (POST /, no query, a few headers with plain values), computed
// without the SDK's signer, which for every request copies the headers
// into a new request, canonicalizes them through maps and sorting, and
// formats strings, for a third of the handler's own CPU time. Any other
// request (an escaped or non-root path, a query, header names out of
// order, in upper case or ignored by the signer, values with spaces to
// collapse or bytes outside printable ASCII, a host that is not a plain
// name or address) is left to the signer: fastSignature reports false.
// For the requests it accepts it computes what the signer computes; a
// test checks this against the signer on many variations.

// signingKey is a credential's derived SigV4 key for one day, region
// "SigV4Config.Region" and service "kms".
type signingKey struct {
	date string // YYYYMMDD
	key  []byte
	// macs holds HMAC-SHA256 hashes keyed with key: reset, one skips
	// hashing the key's pads again.
	macs sync.Pool
}

// credEntry is a configured credential, with what every request of its
// caller reuses.
type credEntry struct {
	Credential
	principal Principal // returned as a copy
	key       atomic.Pointer[signingKey]
}

// signingKey returns the derived key of date (YYYYMMDD), computing it
// only when the day changes.
func (c *credEntry) signingKey(date, region string) *signingKey {
	if k := c.key.Load(); k != nil && k.date == date {
		return k
	}
	mac := func(key []byte, data string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(data))
		return h.Sum(nil)
	}
	k := &signingKey{date: date, key: mac(mac(mac(mac([]byte("AWS4"+c.SecretAccessKey.s), date), region), "kms"), "aws4_request")}
	k.macs.New = func() any { return hmac.New(sha256.New, k.key) }
	c.key.Store(k)
	return k
}

// sign sets sig to the HMAC-SHA256 of msg under the key.
func (k *signingKey) sign(sig *[sha256.Size]byte, msg []byte) {
	h := k.macs.Get().(hash.Hash)
	h.Reset()
	h.Write(msg)
	h.Sum(sig[:0])
	k.macs.Put(h)
}

// fastSignature computes the expected signature of r into sig, or
// reports false when r is not a request it canonicalizes (see above).
// payloadHash is the hex SHA-256 of the body, t the request's time (from
// X-Amz-Date, UTC), bodyLen the body's length.
func (s *SigV4) fastSignature(sig *[sha256.Size]byte, r *http.Request, a *authHeader, cred *credEntry, payloadHash []byte, t time.Time, bodyLen int) bool {
	if u := r.URL; u.RawQuery != "" || (u.Path != "/" && u.Path != "") || (u.RawPath != "" && u.RawPath != "/") {
		return false
	}
	host := r.Host
	if host == "" {
		host = r.URL.Host
	}
	if !plainHost(host) {
		return false
	}
	if i := indexByte(host, ':'); i >= 0 {
		// The signer drops the scheme's default port.
		port := host[i+1:]
		if (r.TLS == nil && port == "80") || (r.TLS != nil && port == "443") {
			host = host[:i]
		}
	}

	var date [len(amzDateFormat)]byte
	amzDate := t.AppendFormat(date[:0], amzDateFormat) // as the signer sets X-Amz-Date
	var arr [1024]byte
	buf := append(arr[:0], r.Method...)
	buf = append(buf, "\n/\n\n"...)
	hasHost, hasDate := false, false
	prev := ""
	for rest := a.signedHeaders; rest != ""; {
		name := rest
		if i := indexByte(rest, ';'); i >= 0 {
			name, rest = rest[:i], rest[i+1:]
			if rest == "" {
				return false // a trailing ";"
			}
		} else {
			rest = ""
		}
		if !plainHeaderName(name) || name <= prev || ignoredBySigner(name) {
			return false
		}
		prev = name
		buf = append(buf, name...)
		buf = append(buf, ':')
		switch name {
		case "host":
			hasHost = true
			buf = append(buf, host...)
		case "content-length":
			n := r.ContentLength
			if n < 0 {
				n = int64(bodyLen)
			}
			if n <= 0 {
				return false // the signer would not sign it
			}
			buf = strconv.AppendInt(buf, n, 10)
		case "x-amz-date":
			hasDate = true
			buf = append(buf, amzDate...)
		default:
			var kb [64]byte
			key := canonicalKey(kb[:0], name)
			if key == nil {
				return false
			}
			for j, v := range r.Header[string(key)] {
				if !plainValue(v) {
					return false
				}
				if j > 0 {
					buf = append(buf, ',')
				}
				buf = append(buf, v...)
			}
		}
		buf = append(buf, '\n')
	}
	if !hasHost || !hasDate {
		return false // refused by the slow path with its message
	}
	buf = append(buf, '\n')
	buf = append(buf, a.signedHeaders...)
	buf = append(buf, '\n')
	buf = append(buf, payloadHash...)
	canonical := sha256.Sum256(buf)

	buf = append(buf[:0], sigAlgorithm+"\n"...)
	buf = append(buf, amzDate...)
	buf = append(buf, '\n')
	buf = append(buf, a.date...)
	buf = append(buf, '/')
	buf = append(buf, s.cfg.Region...)
	buf = append(buf, "/kms/aws4_request\n"...)
	buf = hex.AppendEncode(buf, canonical[:])
	cred.signingKey(a.date, s.cfg.Region).sign(sig, buf)
	return true
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

// plainHost reports whether host is a name, an IPv4 address, or either
// with a port: no brackets, spaces or other bytes the signer rewrites.
func plainHost(host string) bool {
	if host == "" {
		return false
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == ':' || c == '_') {
			return false
		}
	}
	return true
}

// plainHeaderName reports whether name is lower-case letters, digits and
// hyphens: a header name as SDKs list it, which http.CanonicalHeaderKey
// maps one to one.
func plainHeaderName(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// ignoredBySigner reports whether the SDK's signer never signs name
// (lower case), so that a request listing it is refused.
func ignoredBySigner(name string) bool {
	switch name {
	case "authorization", "user-agent", "x-amzn-trace-id", "expect", "transfer-encoding":
		return true
	}
	return false
}

// canonicalKey appends the http.CanonicalHeaderKey of a plain header name
// (see plainHeaderName) to b.
func canonicalKey(b []byte, name string) []byte {
	upper := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		if upper && 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		upper = c == '-'
		b = append(b, c)
	}
	return b
}

// plainValue reports whether v is printable ASCII with no space at
// either end and no two spaces in a row: a value the signer's trimming
// leaves as it is.
func plainValue(v string) bool {
	if v == "" {
		return true
	}
	if v[0] == ' ' || v[len(v)-1] == ' ' {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < 0x20 || c > 0x7e || (c == ' ' && v[i+1] == ' ') {
			return false
		}
	}
	return true
}

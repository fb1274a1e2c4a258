package kmsadapter

import (
	"encoding/binary"
	"errors"
	"slices"
	"strings"

	"github.com/hsmkms/hsmkms/hsm"
)

// The ciphertext blob of a symmetric key, format version 1:
//
//	offset  size  field
//	0       1     format version, 0x01
//	1       16    key ID (the UUID's 16 bytes)
//	17      4     key version, big-endian uint32, 1 for the first
//	21      12    AES-GCM IV the HSM used
//	33      n+16  AES-GCM ciphertext of the n-byte plaintext, tag appended
//
// The 33 header bytes are authenticated: the AES-GCM additional data is
// the header followed by the encoded encryption context.
const (
	blobVersion1  = 0x01
	blobHeaderLen = 1 + 16 + 4 + hsm.GCMIVSize
	blobOverhead  = blobHeaderLen + hsm.GCMTagSize
	// blobAuthLen is the part of the header that goes into the
	// additional data; the IV is bound by GCM itself.
	blobAuthLen = 1 + 16 + 4
	// maxCiphertext is AWS's limit on CiphertextBlob.
	maxCiphertext = 6144
)

type blobHeader struct {
	keyID   [16]byte
	version uint32
	iv      [hsm.GCMIVSize]byte
}

var errBlob = errors.New("malformed ciphertext blob")

// parseBlob splits a blob into its header and the GCM ciphertext. It
// checks the form only; authenticity is the HSM's to check.
func parseBlob(b []byte) (blobHeader, []byte, error) {
	var h blobHeader
	if len(b) < blobOverhead+1 || len(b) > maxCiphertext || b[0] != blobVersion1 {
		return h, nil, errBlob
	}
	copy(h.keyID[:], b[1:17])
	h.version = binary.BigEndian.Uint32(b[17:21])
	copy(h.iv[:], b[21:blobHeaderLen])
	if h.version == 0 {
		return h, nil, errBlob
	}
	return h, b[blobHeaderLen:], nil
}

// encodeContext encodes an encryption context without ambiguity: the
// number of pairs, then each pair in byte order of its key, every string
// preceded by its length, all lengths big-endian uint32. Two different
// contexts never encode alike, and the order of a Go map plays no part.
func encodeContext(ec map[string]string) []byte {
	return appendContext(make([]byte, 0, contextLen(ec)), ec)
}

func contextLen(ec map[string]string) int {
	n := 4
	for k, v := range ec {
		n += 8 + len(k) + len(v)
	}
	return n
}

// appendContext appends the encoding of ec to b.
func appendContext(b []byte, ec map[string]string) []byte {
	var buf [8]string
	keys := buf[:0]
	for k := range ec {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, strings.Compare)
	b = binary.BigEndian.AppendUint32(b, uint32(len(ec)))
	for _, k := range keys {
		b = binary.BigEndian.AppendUint32(b, uint32(len(k)))
		b = append(b, k...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(ec[k])))
		b = append(b, ec[k]...)
	}
	return b
}

// blobAAD is the additional data of a blob: the authenticated header
// (format version, key ID, key version), then the context.
func blobAAD(header []byte, ec map[string]string) []byte {
	b := make([]byte, 0, len(header)+contextLen(ec))
	return appendContext(append(b, header...), ec)
}

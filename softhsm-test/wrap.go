package softhsmtest

import (
	"crypto/aes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"encoding/binary"
)

// KeyWrapPad wraps plaintext under kek with AES key wrap with padding
// (RFC 5649, PKCS#11's CKM_AES_KEY_WRAP_PAD), as a client outside the HSM
// does, so that tests can hand tokens blobs made without them.
func KeyWrapPad(kek, plaintext []byte) ([]byte, error) {
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	var a [8]byte
	binary.BigEndian.PutUint32(a[:4], 0xA65959A6)
	binary.BigEndian.PutUint32(a[4:], uint32(len(plaintext)))
	padded := make([]byte, (len(plaintext)+7)/8*8)
	copy(padded, plaintext)
	n := len(padded) / 8
	if n == 1 {
		out := make([]byte, 16)
		block.Encrypt(out, append(a[:], padded...))
		return out, nil
	}
	var b [16]byte
	for j := range 6 {
		for i := range n {
			copy(b[:8], a[:])
			copy(b[8:], padded[i*8:(i+1)*8])
			block.Encrypt(b[:], b[:])
			binary.BigEndian.PutUint64(a[:], binary.BigEndian.Uint64(b[:8])^uint64(n*j+i+1))
			copy(padded[i*8:], b[8:])
		}
	}
	return append(a[:], padded...), nil
}

// RSAAESKeyWrap wraps material as AWS KMS's RSA_AES_KEY_WRAP_SHA_1 and
// PKCS#11's CKM_RSA_AES_KEY_WRAP with OAEP SHA-1 take it: a fresh 256-bit
// AES key under RSA-OAEP with SHA-1, then material under that key with
// KeyWrapPad.
func RSAAESKeyWrap(pub *rsa.PublicKey, material []byte) ([]byte, error) {
	eph := make([]byte, 32)
	if _, err := rand.Read(eph); err != nil {
		return nil, err
	}
	head, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, pub, eph, nil)
	if err != nil {
		return nil, err
	}
	tail, err := KeyWrapPad(eph, material)
	if err != nil {
		return nil, err
	}
	return append(head, tail...), nil
}

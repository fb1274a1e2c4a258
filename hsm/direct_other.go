//go:build !unix

package hsm

import (
	"errors"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// directEncrypt: where dlopen is not available, encryption goes through
// miekg/pkcs11 only (see direct.go).
type directEncrypt struct{ fn unsafe.Pointer }

func resolveEncrypt(string) directEncrypt { return directEncrypt{} }

func (directEncrypt) encrypt(pkcs11.SessionHandle, []byte, []byte) (int, error) {
	return 0, errors.New("hsm: direct C_Encrypt is not available on this platform")
}

//go:build unix

package hsm

/*
#cgo linux LDFLAGS: -ldl
#include <dlfcn.h>
#include <stddef.h>
#include <stdlib.h>

typedef unsigned long hsm_ulong; // CK_ULONG on the Unix ABIs PKCS#11 uses

// The start of CK_FUNCTION_LIST: a CK_VERSION, then the functions in the
// order of the specification. Only the entries read here are named.
struct hsm_function_list {
	unsigned char major, minor;
	void *fn[31]; // [3] C_GetFunctionList ... [30] C_Encrypt
};

typedef hsm_ulong (*hsm_get_function_list)(struct hsm_function_list **);
typedef hsm_ulong (*hsm_encrypt)(hsm_ulong, unsigned char *, hsm_ulong, unsigned char *, hsm_ulong *);

// hsm_resolve_encrypt returns C_Encrypt of the module already loaded from
// path, read from its function list, or NULL. The list's own entry for
// C_GetFunctionList must be the exported function, which shows that the
// list is laid out as the specification says. The reference taken here
// is dropped again: the caller holds the module loaded for as long as it
// uses the result.
static void *hsm_resolve_encrypt(const char *path) {
	void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	if (h == NULL) {
		return NULL;
	}
	void *enc = NULL;
	hsm_get_function_list get = (hsm_get_function_list)dlsym(h, "C_GetFunctionList");
	struct hsm_function_list *fl = NULL;
	if (get != NULL && get(&fl) == 0 && fl != NULL && (fl->major == 2 || fl->major == 3) && fl->fn[3] == (void *)get) {
		enc = fl->fn[30];
	}
	dlclose(h);
	return enc;
}

static hsm_ulong hsm_call_encrypt(void *fn, hsm_ulong session, unsigned char *in, hsm_ulong inlen, unsigned char *out, hsm_ulong *outlen) {
	return ((hsm_encrypt)fn)(session, in, inlen, out, outlen);
}
*/
import "C"

import (
	"unsafe"

	"github.com/miekg/pkcs11"
)

// directEncrypt is the module's C_Encrypt, called with a caller-sized
// output buffer so that a ciphertext is written straight into memory of
// the caller's choosing. miekg/pkcs11's Encrypt asks the module for the
// length first, then copies the answer out of C memory into a slice of its
// own; this saves one call into the module and one copy of the data. nil
// when the module's function list could not be read (the miekg/pkcs11
// path serves then).
type directEncrypt struct{ fn unsafe.Pointer }

func resolveEncrypt(path string) directEncrypt {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	return directEncrypt{fn: C.hsm_resolve_encrypt(cpath)}
}

// encrypt runs C_Encrypt of the operation initialized on session h over
// in, writing into out, and returns how many bytes it wrote. out must be
// non-empty; a module that needs more room answers CKR_BUFFER_TOO_SMALL
// and keeps the operation active, as PKCS#11 says.
func (d directEncrypt) encrypt(h pkcs11.SessionHandle, in, out []byte) (int, error) {
	n := C.hsm_ulong(len(out))
	var inp *C.uchar
	if len(in) > 0 {
		inp = (*C.uchar)(unsafe.Pointer(&in[0]))
	}
	rv := C.hsm_call_encrypt(d.fn, C.hsm_ulong(h), inp, C.hsm_ulong(len(in)), (*C.uchar)(unsafe.Pointer(&out[0])), &n)
	if rv != 0 {
		return 0, pkcs11.Error(rv)
	}
	return int(n), nil
}

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
	void *fn[44]; // [3] C_GetFunctionList, [30] C_Encrypt, [34] C_Decrypt, [43] C_Sign
};

typedef hsm_ulong (*hsm_get_function_list)(struct hsm_function_list **);

// C_Encrypt, C_Decrypt and C_Sign share one signature: session, input,
// its length, output, and the output's length (in: room, out: written).
typedef hsm_ulong (*hsm_single_part)(hsm_ulong, unsigned char *, hsm_ulong, unsigned char *, hsm_ulong *);

// hsm_resolve reads C_Encrypt, C_Decrypt and C_Sign of the module already
// loaded from path out of its function list into fns, and returns 1; or
// returns 0 and leaves fns alone. The list's own entry for
// C_GetFunctionList must be the exported function, which shows that the
// list is laid out as the specification says. The reference taken here
// is dropped again: the caller holds the module loaded for as long as it
// uses the result.
static int hsm_resolve(const char *path, void *fns[3]) {
	void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	if (h == NULL) {
		return 0;
	}
	int ok = 0;
	hsm_get_function_list get = (hsm_get_function_list)dlsym(h, "C_GetFunctionList");
	struct hsm_function_list *fl = NULL;
	if (get != NULL && get(&fl) == 0 && fl != NULL && (fl->major == 2 || fl->major == 3) && fl->fn[3] == (void *)get) {
		fns[0] = fl->fn[30];
		fns[1] = fl->fn[34];
		fns[2] = fl->fn[43];
		ok = 1;
	}
	dlclose(h);
	return ok;
}

static hsm_ulong hsm_call(void *fn, hsm_ulong session, unsigned char *in, hsm_ulong inlen, unsigned char *out, hsm_ulong *outlen) {
	return ((hsm_single_part)fn)(session, in, inlen, out, outlen);
}
*/
import "C"

import (
	"unsafe"

	"github.com/miekg/pkcs11"
)

// directCall is one of the module's single-part functions (C_Encrypt,
// C_Decrypt, C_Sign), called with an output buffer this package sizes. For
// each of them miekg/pkcs11 asks the module for the length first, has C
// allocate that much, calls again, copies the answer into a slice of its
// own and frees the C memory: three crossings into C and two calls into
// the module where this makes one and one, and an encryption can land in
// memory of the caller's choosing. fn is nil when the module's function
// list could not be read; miekg/pkcs11 serves then.
type directCall struct{ fn unsafe.Pointer }

// directCalls are a module's resolved single-part functions.
type directCalls struct{ encrypt, decrypt, sign directCall }

func resolveDirect(path string) directCalls {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var fns [3]unsafe.Pointer
	if C.hsm_resolve(cpath, &fns[0]) == 0 {
		return directCalls{}
	}
	return directCalls{encrypt: directCall{fns[0]}, decrypt: directCall{fns[1]}, sign: directCall{fns[2]}}
}

// stub stands in for an empty input: a module may refuse a NULL pointer
// even with a zero length, and &in[0] does not exist then.
var stub [1]byte

// into finishes the single-part operation initialized on session h over
// in, writing into out, and returns how many bytes it wrote. done is
// false, with no error, when d is not resolved, out is empty, or the
// module needs more room than out has; the operation is then still active
// (PKCS#11 keeps it on CKR_BUFFER_TOO_SMALL), and miekg/pkcs11 finishes
// it.
func (d directCall) into(h pkcs11.SessionHandle, in, out []byte) (n int, done bool, err error) {
	if d.fn == nil || len(out) == 0 {
		return 0, false, nil
	}
	inp := &stub[0]
	if len(in) > 0 {
		inp = &in[0]
	}
	room := C.hsm_ulong(len(out))
	rv := C.hsm_call(d.fn, C.hsm_ulong(h), (*C.uchar)(unsafe.Pointer(inp)), C.hsm_ulong(len(in)), (*C.uchar)(unsafe.Pointer(&out[0])), &room)
	switch {
	case rv == pkcs11.CKR_OK:
		if room > C.hsm_ulong(len(out)) {
			// A module that claims to have written more than out holds
			// is broken; if it did write that much, the memory past out
			// is damaged already, and all this can do is not read it.
			return 0, true, pkcs11.Error(pkcs11.CKR_GENERAL_ERROR)
		}
		return int(room), true, nil
	case rv == pkcs11.CKR_BUFFER_TOO_SMALL:
		return 0, false, nil
	default:
		return 0, true, pkcs11.Error(rv)
	}
}

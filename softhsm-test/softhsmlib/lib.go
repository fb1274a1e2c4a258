// Package softhsmlib finds the SoftHSM2 PKCS#11 library, for tests (through
// softhsmtest) and for programs such as `hsmkms dev` that must not link the
// testing package.
package softhsmlib

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// ErrNotFound means libsofthsm2.so is not installed where it was looked for.
var ErrNotFound = errors.New("libsofthsm2.so not found")

// InstallHint says how to install SoftHSM2 on each supported system.
const InstallHint = "install SoftHSM2 with `sudo apt-get install -y softhsm2` (Debian/Ubuntu), " +
	"`sudo dnf install softhsm` (Fedora) or `brew install softhsm` (macOS), " +
	"or run softhsm-test/softhsm-test.sh ensure, or set SOFTHSM2_LIB to the library's path"

// Paths are where the SoftHSM2 packages install the library, in the order
// Path tries them.
var Paths = []string{
	// Debian, Ubuntu
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	// Fedora
	"/usr/lib64/pkcs11/libsofthsm2.so",
	"/usr/lib64/softhsm/libsofthsm2.so",
	// macOS Homebrew (Apple silicon, Intel)
	"/opt/homebrew/lib/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
	"/usr/local/opt/softhsm/lib/softhsm/libsofthsm2.so",
}

// Path returns the path of libsofthsm2.so: the SOFTHSM2_LIB environment
// variable if it is set, else the first of Paths that exists. The error
// wraps ErrNotFound and says how to install SoftHSM2.
func Path() (string, error) {
	if p := os.Getenv("SOFTHSM2_LIB"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%w: SOFTHSM2_LIB=%s: %w; %s", ErrNotFound, p, err, InstallHint)
		}
		return p, nil
	}
	for _, p := range Paths {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w in %s; %s", ErrNotFound, strings.Join(Paths, ", "), InstallHint)
}

package hsm

import (
	"crypto"

	"github.com/miekg/pkcs11"
	"slices"
	"strings"
)

// Profile is a vendor's quirks, as data. The code consults a profile; it
// never branches on a vendor's name.
type Profile struct {
	// Name identifies the profile in logs.
	Name string
	// GCMIVFromHSM: the token ignores a caller's GCM IV and writes the one
	// it generated back into the mechanism parameters (AWS CloudHSM).
	// When false the library generates a random 96-bit IV.
	GCMIVFromHSM bool
	// GCMMaxInput caps AES-GCM input in bytes; 0 means no cap.
	GCMMaxInput int
	// MaxLabelLen caps CKA_LABEL in bytes; 0 means no cap. Labels are
	// "hsmkms:<spec>:<id>", at most 84 bytes.
	MaxLabelLen int
	// OAEPHashes lists the hashes the token accepts for RSA-OAEP (both
	// the OAEP hash and MGF1).
	OAEPHashes []crypto.Hash
	// DecryptFailureCodes are codes the token returns for a ciphertext that
	// fails authentication besides the standard CKR_ENCRYPTED_DATA_INVALID
	// family (SoftHSM answers a bad GCM tag with CKR_GENERAL_ERROR). They
	// become ErrDecrypt, the caller's fault.
	DecryptFailureCodes []CKR
	// ExclusiveObjectWrites: the token's object store is not safe when an
	// object is created or destroyed while other threads use the token
	// (SoftHSM 2.6's file store: a concurrent reader can see a half-written
	// object, and the write fails with CKR_GENERAL_ERROR). Calls that create
	// or destroy objects then run alone; all others run concurrently.
	ExclusiveObjectWrites bool
}

// SupportsOAEP reports whether the token does RSA-OAEP with hash h.
func (p Profile) SupportsOAEP(h crypto.Hash) bool { return slices.Contains(p.OAEPHashes, h) }

// Known profiles.
var (
	// ProfileGeneric assumes a token that follows PKCS#11 v2.40.
	ProfileGeneric = Profile{
		Name:       "generic",
		OAEPHashes: []crypto.Hash{crypto.SHA1, crypto.SHA256, crypto.SHA384, crypto.SHA512},
	}
	// ProfileSoftHSM2 is SoftHSM 2.6: RSA-OAEP with SHA-1 only.
	ProfileSoftHSM2 = Profile{
		Name:                "softhsm2",
		OAEPHashes:          []crypto.Hash{crypto.SHA1},
		DecryptFailureCodes: []CKR{CKR(pkcs11.CKR_GENERAL_ERROR)},
		// softhsm/SoftHSMv2#573: concurrent C_GenerateKey(Pair) and
		// C_CreateObject fail at random; measured here too.
		ExclusiveObjectWrites: true,
	}
	// ProfileCloudHSM is AWS CloudHSM (client SDK 5): the HSM generates the
	// GCM IV, GCM input is capped at 16 KiB, labels at 127 characters. It
	// has no read-only sessions; this package opens read-write sessions
	// only, on every token.
	ProfileCloudHSM = Profile{
		Name:         "cloudhsm",
		GCMIVFromHSM: true,
		GCMMaxInput:  16 * 1024,
		MaxLabelLen:  127,
		OAEPHashes:   []crypto.Hash{crypto.SHA1, crypto.SHA256, crypto.SHA384, crypto.SHA512},
	}
)

// DetectProfile picks a profile from a token's manufacturer and model
// strings, as C_GetTokenInfo reports them.
func DetectProfile(manufacturer, model string) Profile {
	m := strings.ToLower(manufacturer + " " + model)
	switch {
	case strings.Contains(m, "softhsm"):
		return ProfileSoftHSM2
	case strings.Contains(m, "cloudhsm"), strings.Contains(m, "marvell"), strings.Contains(m, "cavium"):
		return ProfileCloudHSM
	}
	return ProfileGeneric
}

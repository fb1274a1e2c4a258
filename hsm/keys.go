package hsm

import (
	"context"
	"encoding/asn1"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/miekg/pkcs11"
)

// KeyID names a key on a token: its CKA_ID. It is 1 to 64 characters from
// [A-Za-z0-9._:/-], so it fits in a label on every vendor and in logs.
type KeyID string

// Validate checks the form of a KeyID.
func (id KeyID) Validate() error {
	if len(id) == 0 || len(id) > 64 {
		return fmt.Errorf("%w: key ID must be 1 to 64 characters, got %d", ErrInvalidInput, len(id))
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._:/-", r)) {
			return fmt.Errorf("%w: key ID contains %q; allowed are letters, digits and ._:/-", ErrInvalidInput, r)
		}
	}
	return nil
}

// labelPrefix marks the objects this library created. The label is
// "hsmkms:<spec>:<id>": it records the spec, which some modules cannot
// report for unwrapped keys (SoftHSM reads CKA_VALUE_LEN as 0 after an
// unwrap).
const labelPrefix = "hsmkms:"

func keyLabel(id KeyID, spec KeySpec) string { return labelPrefix + string(spec) + ":" + string(id) }

// specFromLabel returns the spec recorded in a label, or "".
func specFromLabel(label string) KeySpec {
	rest, ok := strings.CutPrefix(label, labelPrefix)
	if !ok {
		return ""
	}
	spec, _, ok := strings.Cut(rest, ":")
	if !ok || KeySpec(spec).Validate() != nil {
		return ""
	}
	return KeySpec(spec)
}

// KeySpec is a key type and size.
type KeySpec string

// The key specs.
const (
	AES128      KeySpec = "AES_128"
	AES256      KeySpec = "AES_256"
	HMAC224     KeySpec = "HMAC_224"
	HMAC256     KeySpec = "HMAC_256"
	HMAC384     KeySpec = "HMAC_384"
	HMAC512     KeySpec = "HMAC_512"
	RSA2048     KeySpec = "RSA_2048"
	RSA3072     KeySpec = "RSA_3072"
	RSA4096     KeySpec = "RSA_4096"
	ECP256      KeySpec = "EC_P256"
	ECP384      KeySpec = "EC_P384"
	ECP521      KeySpec = "EC_P521"
	ECSecp256k1 KeySpec = "EC_SECP256K1"
)

// KeySpecs lists every spec, in a stable order.
var KeySpecs = []KeySpec{AES128, AES256, HMAC224, HMAC256, HMAC384, HMAC512, RSA2048, RSA3072, RSA4096, ECP256, ECP384, ECP521, ECSecp256k1}

// Curve OIDs, DER-encoded as CKA_EC_PARAMS wants them.
var (
	oidP256      = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidP384      = asn1.ObjectIdentifier{1, 3, 132, 0, 34}
	oidP521      = asn1.ObjectIdentifier{1, 3, 132, 0, 35}
	oidSecp256k1 = asn1.ObjectIdentifier{1, 3, 132, 0, 10}
)

type specInfo struct {
	class   uint // CKO_SECRET_KEY or CKO_PRIVATE_KEY
	keyType uint
	bits    int // key size: AES/HMAC value bits, RSA modulus bits, EC field bits
	curve   asn1.ObjectIdentifier
}

// sigSize is the length of the spec's signatures: the modulus for RSA,
// r||s for ECDSA; 0 for other keys.
func (si specInfo) sigSize() int {
	switch si.keyType {
	case pkcs11.CKK_RSA:
		return (si.bits + 7) / 8
	case pkcs11.CKK_EC:
		return 2 * ((si.bits + 7) / 8)
	}
	return 0
}

var specs = map[KeySpec]specInfo{
	AES128:      {pkcs11.CKO_SECRET_KEY, pkcs11.CKK_AES, 128, nil},
	AES256:      {pkcs11.CKO_SECRET_KEY, pkcs11.CKK_AES, 256, nil},
	HMAC224:     {pkcs11.CKO_SECRET_KEY, pkcs11.CKK_GENERIC_SECRET, 224, nil},
	HMAC256:     {pkcs11.CKO_SECRET_KEY, pkcs11.CKK_GENERIC_SECRET, 256, nil},
	HMAC384:     {pkcs11.CKO_SECRET_KEY, pkcs11.CKK_GENERIC_SECRET, 384, nil},
	HMAC512:     {pkcs11.CKO_SECRET_KEY, pkcs11.CKK_GENERIC_SECRET, 512, nil},
	RSA2048:     {pkcs11.CKO_PRIVATE_KEY, pkcs11.CKK_RSA, 2048, nil},
	RSA3072:     {pkcs11.CKO_PRIVATE_KEY, pkcs11.CKK_RSA, 3072, nil},
	RSA4096:     {pkcs11.CKO_PRIVATE_KEY, pkcs11.CKK_RSA, 4096, nil},
	ECP256:      {pkcs11.CKO_PRIVATE_KEY, pkcs11.CKK_EC, 256, oidP256},
	ECP384:      {pkcs11.CKO_PRIVATE_KEY, pkcs11.CKK_EC, 384, oidP384},
	ECP521:      {pkcs11.CKO_PRIVATE_KEY, pkcs11.CKK_EC, 521, oidP521},
	ECSecp256k1: {pkcs11.CKO_PRIVATE_KEY, pkcs11.CKK_EC, 256, oidSecp256k1},
}

// Asymmetric reports whether the spec is a key pair.
func (s KeySpec) Asymmetric() bool { return specs[s].class == pkcs11.CKO_PRIVATE_KEY }

// Validate checks that s is a known spec.
func (s KeySpec) Validate() error {
	if _, ok := specs[s]; !ok {
		return fmt.Errorf("%w: unknown key spec %q", ErrInvalidInput, string(s))
	}
	return nil
}

// Usage is what a key may do, as a bit set.
type Usage uint

// Usages. A key gets only the PKCS#11 usage attributes its usage asks for.
const (
	// UsageEncrypt: AES-GCM, RSA-OAEP.
	UsageEncrypt Usage = 1 << iota
	// UsageSign: signatures, and HMAC for HMAC keys.
	UsageSign
	// UsageWrap: wrap and unwrap other keys (AES key wrap, RSA-OAEP unwrap).
	UsageWrap
)

// DefaultUsage is the usage a key of spec gets when KeyOptions.Usage is
// zero: encryption for AES keys, signing (or MAC) for the others.
func (s KeySpec) DefaultUsage() Usage {
	if specs[s].keyType == pkcs11.CKK_AES {
		return UsageEncrypt
	}
	return UsageSign
}

// KeyOptions are the choices made when a key is created.
type KeyOptions struct {
	// Usage; zero means the spec's natural one (AES: encrypt; others: sign).
	Usage Usage
	// Extractable lets the key leave the token wrapped, and only under a
	// wrapping key an SO marked trusted (CKA_WRAP_WITH_TRUSTED), which is
	// how a cluster replicates keys. Never in plaintext: keys are always
	// CKA_SENSITIVE.
	Extractable bool
}

// KeyInfo describes a key on the token.
type KeyInfo struct {
	ID          KeyID
	Spec        KeySpec
	Usage       Usage
	Extractable bool
	Trusted     bool // CKA_TRUSTED: an SO marked it as a wrapping key for wrap-with-trusted keys
}

// keyEntry is a resolved key: its object handles in one session generation.
type keyEntry struct {
	gen   uint64
	info  KeyInfo
	priv  pkcs11.ObjectHandle // the secret or private key; 0 for a public key alone
	pub   pkcs11.ObjectHandle // the public key, 0 if none
	hasPb bool
	spki  atomic.Pointer[[]byte] // cached public key, DER; set once read
}

// keyCache maps key IDs to resolved handles, so no operation on the hot
// path calls C_FindObjects. Entries belong to one session generation.
type keyCache struct {
	mu sync.RWMutex
	m  map[KeyID]*keyEntry
}

func (c *keyCache) init() { c.m = map[KeyID]*keyEntry{} }

func (c *keyCache) get(id KeyID, gen uint64) *keyEntry {
	c.mu.RLock()
	e := c.m[id]
	c.mu.RUnlock()
	if e == nil || e.gen != gen {
		return nil
	}
	return e
}

func (c *keyCache) put(e *keyEntry) {
	c.mu.Lock()
	c.m[e.info.ID] = e
	c.mu.Unlock()
}

// putIfAbsent caches e unless id has an entry of e's generation already.
func (c *keyCache) putIfAbsent(e *keyEntry) {
	c.mu.Lock()
	if old := c.m[e.info.ID]; old == nil || old.gen != e.gen {
		c.m[e.info.ID] = e
	}
	c.mu.Unlock()
}

func (c *keyCache) drop(id KeyID) {
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}

func (c *keyCache) clear() {
	c.mu.Lock()
	clear(c.m)
	c.mu.Unlock()
}

// cachedHandles counts cached entries; tests use it.
func (c *keyCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}

// key resolves id on session s: from the cache, or by C_FindObjects once.
func (t *Token) key(s *session, id KeyID) (*keyEntry, error) {
	if e := t.keys.get(id, s.gen); e != nil {
		return e, nil
	}
	return t.lookUp(s, id)
}

// lookUp is key's search, a function of its own so that the cached path
// keeps a small stack frame (a large one makes new goroutines grow their
// stacks on every first call).
func (t *Token) lookUp(s *session, id KeyID) (*keyEntry, error) {
	objs, err := t.find(s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(id)),
	})
	if err != nil {
		return nil, err
	}
	e := &keyEntry{gen: s.gen, info: KeyInfo{ID: id}}
	found := false
	for _, o := range objs {
		attrs, err := t.mod.ctx.GetAttributeValue(s.h, o, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil),
		})
		if err != nil {
			return nil, err
		}
		switch bytesToUint(attrs[0].Value) {
		case pkcs11.CKO_SECRET_KEY, pkcs11.CKO_PRIVATE_KEY:
			e.priv, found = o, true
		case pkcs11.CKO_PUBLIC_KEY:
			e.pub, e.hasPb = o, true
		}
	}
	obj := e.priv
	switch {
	case !found && e.hasPb:
		obj = e.pub // a public key alone, e.g. a trusted transport key
	case !found:
		return nil, ErrKeyNotFound
	}
	if e.info, err = t.describe(s, id, obj, e.pub, e.hasPb); err != nil {
		return nil, err
	}
	t.mu.Lock()
	current := t.gen == s.gen
	t.mu.Unlock()
	if current {
		t.keys.put(e)
	}
	return e, nil
}

// describe reads a key's spec, usage and flags from its attributes.
func (t *Token) describe(s *session, id KeyID, priv, pub pkcs11.ObjectHandle, hasPub bool) (KeyInfo, error) {
	a, err := t.attrs(s, priv, pkcs11.CKA_LABEL, pkcs11.CKA_CLASS, pkcs11.CKA_KEY_TYPE, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_TRUSTED,
		pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_SIGN, pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP)
	if err != nil {
		return KeyInfo{}, err
	}
	info := KeyInfo{ID: id, Extractable: isTrue(a[pkcs11.CKA_EXTRACTABLE]), Trusted: isTrue(a[pkcs11.CKA_TRUSTED])}
	if isTrue(a[pkcs11.CKA_ENCRYPT]) || isTrue(a[pkcs11.CKA_DECRYPT]) {
		info.Usage |= UsageEncrypt
	}
	if isTrue(a[pkcs11.CKA_SIGN]) {
		info.Usage |= UsageSign
	}
	if isTrue(a[pkcs11.CKA_WRAP]) || isTrue(a[pkcs11.CKA_UNWRAP]) {
		info.Usage |= UsageWrap
	}
	class, keyType := bytesToUint(a[pkcs11.CKA_CLASS]), bytesToUint(a[pkcs11.CKA_KEY_TYPE])
	if class == pkcs11.CKO_PUBLIC_KEY {
		class = pkcs11.CKO_PRIVATE_KEY // specs name a pair by its private half
	}
	if spec := specFromLabel(string(a[pkcs11.CKA_LABEL])); spec != "" {
		if si := specs[spec]; si.class == class && si.keyType == keyType {
			info.Spec = spec
			return info, nil
		}
	}
	switch keyType {
	case pkcs11.CKK_AES, pkcs11.CKK_GENERIC_SECRET:
		v, err := t.attrs(s, priv, pkcs11.CKA_VALUE_LEN)
		if err != nil {
			return KeyInfo{}, err
		}
		bits := int(bytesToUint(v[pkcs11.CKA_VALUE_LEN])) * 8
		info.Spec = specFor(class, keyType, bits, nil)
	case pkcs11.CKK_RSA:
		v, err := t.attrs(s, priv, pkcs11.CKA_MODULUS)
		if err != nil {
			return KeyInfo{}, err
		}
		info.Spec = specFor(class, keyType, len(v[pkcs11.CKA_MODULUS])*8, nil)
	case pkcs11.CKK_EC:
		v, err := t.attrs(s, priv, pkcs11.CKA_EC_PARAMS)
		if err != nil {
			return KeyInfo{}, err
		}
		var oid asn1.ObjectIdentifier
		if _, err := asn1.Unmarshal(v[pkcs11.CKA_EC_PARAMS], &oid); err == nil {
			info.Spec = specFor(class, keyType, 0, oid)
		}
	}
	if info.Spec == "" {
		return KeyInfo{}, fmt.Errorf("%w: key %s has a type this library does not use", ErrWrongKeyType, id)
	}
	return info, nil
}

func specFor(class, keyType uint, bits int, curve asn1.ObjectIdentifier) KeySpec {
	for _, s := range KeySpecs {
		si := specs[s]
		if si.class != class || si.keyType != keyType {
			continue
		}
		if curve != nil {
			if si.curve.Equal(curve) {
				return s
			}
			continue
		}
		if si.bits == bits {
			return s
		}
	}
	return ""
}

// attrs reads attributes of an object into a map by type. An attribute the
// object does not have is absent from the map.
func (t *Token) attrs(s *session, o pkcs11.ObjectHandle, types ...uint) (map[uint][]byte, error) {
	m := make(map[uint][]byte, len(types))
	for _, typ := range types {
		// One at a time: a missing attribute fails the whole template on
		// many modules (CKR_ATTRIBUTE_TYPE_INVALID).
		a, err := t.mod.ctx.GetAttributeValue(s.h, o, []*pkcs11.Attribute{pkcs11.NewAttribute(typ, nil)})
		if err != nil {
			if c, ok := asCKR(err); ok && (c == CKR(pkcs11.CKR_ATTRIBUTE_TYPE_INVALID) || c == CKR(pkcs11.CKR_ATTRIBUTE_SENSITIVE)) {
				continue
			}
			return nil, err
		}
		m[typ] = a[0].Value
	}
	return m, nil
}

// find runs one C_FindObjects search to the end.
func (t *Token) find(s *session, template []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	t.finds.Add(1)
	if err := t.mod.ctx.FindObjectsInit(s.h, template); err != nil {
		return nil, err
	}
	var all []pkcs11.ObjectHandle
	for {
		objs, _, err := t.mod.ctx.FindObjects(s.h, 256)
		if err != nil {
			_ = t.mod.ctx.FindObjectsFinal(s.h)
			return nil, err
		}
		all = append(all, objs...)
		if len(objs) == 0 {
			break
		}
	}
	return all, t.mod.ctx.FindObjectsFinal(s.h)
}

func isTrue(b []byte) bool { return len(b) > 0 && b[0] != 0 }

// bytesToUint reads a CK_ULONG attribute in host byte order.
func bytesToUint(b []byte) uint {
	var v uint
	for i := len(b) - 1; i >= 0; i-- { // little endian hosts (amd64, arm64)
		v = v<<8 | uint(b[i])
	}
	return v
}

// withKey resolves id and runs fn with its handles (see apply).
func (t *Token) withKey(ctx context.Context, op Op, id KeyID, fn opFunc) error {
	if err := id.Validate(); err != nil {
		return t.wrap(op, err)
	}
	return t.do(ctx, op, id, fn)
}

// apply runs fn on s: with id's handles when id is set, else with nil. A
// handle that turned out invalid (the key was destroyed behind our back)
// is dropped from the cache and resolved once more.
func (t *Token) apply(s *session, id KeyID, fn opFunc) error {
	if id == "" {
		return fn(s, nil)
	}
	for attempt := 0; ; attempt++ {
		e, err := t.key(s, id)
		if err != nil {
			return err
		}
		err = fn(s, e)
		if attempt == 0 && staleHandle(err) {
			t.keys.drop(id)
			continue
		}
		return err
	}
}

// GenerateKey creates a key with the given ID and spec on the token. It
// fails with ErrKeyExists when the ID is taken; the public half of a pair
// whose creation or deletion was cut off does not take it (it is removed).
func (t *Token) GenerateKey(ctx context.Context, id KeyID, spec KeySpec, opts KeyOptions) (KeyInfo, error) {
	if err := errors.Join(id.Validate(), spec.Validate()); err != nil {
		return KeyInfo{}, t.wrap(OpGenerateKey, err)
	}
	if opts.Usage == 0 {
		opts.Usage = spec.DefaultUsage()
	}
	if max := t.profile().MaxLabelLen; max > 0 && len(keyLabel(id, spec)) > max {
		return KeyInfo{}, t.wrap(OpGenerateKey, fmt.Errorf("%w: key ID %s makes a label longer than the token's %d bytes", ErrInvalidInput, id, max))
	}
	var info KeyInfo
	err := t.do(ctx, OpGenerateKey, "", func(s *session, _ *keyEntry) error {
		if err := t.ensureAbsent(s, id); err != nil {
			return err
		}
		pubT, privT := templates(id, spec, opts)
		priv, pub, err := t.staged(s, func(onToken bool) (priv, pub pkcs11.ObjectHandle, err error) {
			return t.generate(s, spec, setAttr(pubT, pkcs11.CKA_TOKEN, onToken), setAttr(privT, pkcs11.CKA_TOKEN, onToken))
		}, nil)
		if err != nil {
			return err
		}
		info = KeyInfo{ID: id, Spec: spec, Usage: opts.Usage, Extractable: opts.Extractable}
		t.keys.put(&keyEntry{gen: s.gen, info: info, priv: priv, pub: pub, hasPb: pub != 0})
		return nil
	})
	if err != nil {
		return KeyInfo{}, err
	}
	return info, nil
}

// generate makes a key of spec on s from the templates; pub is 0 for a
// secret key. A spec the token does not offer is ErrUnsupported.
func (t *Token) generate(s *session, spec KeySpec, pubT, privT []*pkcs11.Attribute) (priv, pub pkcs11.ObjectHandle, err error) {
	switch specs[spec].keyType {
	case pkcs11.CKK_AES:
		priv, err = t.mod.ctx.GenerateKey(s.h, mech(pkcs11.CKM_AES_KEY_GEN, nil), privT)
	case pkcs11.CKK_GENERIC_SECRET:
		priv, err = t.mod.ctx.GenerateKey(s.h, mech(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil), privT)
	case pkcs11.CKK_RSA:
		pub, priv, err = t.mod.ctx.GenerateKeyPair(s.h, mech(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil), pubT, privT)
	case pkcs11.CKK_EC:
		pub, priv, err = t.mod.ctx.GenerateKeyPair(s.h, mech(pkcs11.CKM_EC_KEY_PAIR_GEN, nil), pubT, privT)
	}
	if c, ok := asCKR(err); ok && (c == CKR(pkcs11.CKR_CURVE_NOT_SUPPORTED) || c == CKR(pkcs11.CKR_DOMAIN_PARAMS_INVALID) || c == CKR(pkcs11.CKR_MECHANISM_INVALID)) {
		return 0, 0, &Error{Code: c, Err: fmt.Errorf("%w: key spec %s", ErrUnsupported, spec)}
	}
	return priv, pub, err
}

// stagesInSession reports whether the token's new keys are made as session
// objects and then copied to the token, one C_CopyObject per object,
// rather than made on the token directly. SoftHSM 2.6's file store
// rewrites a new token object's file for every attribute it fills in with
// a default: 35 truncate-and-write cycles for an AES key, 61 for an EC key
// pair (strace). A copy brings every attribute in one transaction, 3
// cycles per object: GenerateKey went from ~11 to ~3.5 ms for AES-256 and
// from ~23 to ~8 ms for EC P-256 (cluster's BenchmarkGenerateKey). On a
// network HSM the copy would only add round trips, and AWS CloudHSM has no
// C_CopyObject. The quirk comes with the file store that needs
// ExclusiveObjectWrites, so that flag marks it until profiles carry one of
// its own.
func (t *Token) stagesInSession() bool { return t.profile().ExclusiveObjectWrites }

// copyRefused reports whether code says the token will not copy a session
// object to the token, rather than that the copy failed.
func copyRefused(code CKR) bool {
	switch uint(code) {
	case pkcs11.CKR_FUNCTION_NOT_SUPPORTED, pkcs11.CKR_ACTION_PROHIBITED,
		pkcs11.CKR_ATTRIBUTE_READ_ONLY, pkcs11.CKR_TEMPLATE_INCONSISTENT:
		return true
	}
	return false
}

// staged creates a key with create and returns its token object handles:
// pub is 0 for a secret key. When the token stages keys in session objects
// (see stagesInSession), create makes session objects (onToken false),
// check, if not nil, examines them, and one C_CopyObject per object puts
// them on the token; a token that refuses the copy gets create(true)
// instead. Whatever fails, no object made here is left behind.
func (t *Token) staged(s *session, create func(onToken bool) (priv, pub pkcs11.ObjectHandle, err error),
	check func(priv, pub pkcs11.ObjectHandle) error) (priv, pub pkcs11.ObjectHandle, err error) {
	destroy := func(hs ...pkcs11.ObjectHandle) {
		for _, h := range hs {
			if h != 0 {
				_ = t.mod.ctx.DestroyObject(s.h, h)
			}
		}
	}
	direct := func() (pkcs11.ObjectHandle, pkcs11.ObjectHandle, error) {
		priv, pub, err := create(true)
		if err == nil && check != nil {
			if err = check(priv, pub); err != nil {
				destroy(priv, pub)
			}
		}
		if err != nil {
			return 0, 0, err
		}
		return priv, pub, nil
	}
	if !t.stagesInSession() {
		return direct()
	}
	sPriv, sPub, err := create(false)
	if err != nil {
		return 0, 0, err
	}
	defer destroy(sPriv, sPub) // session objects: only the copies stay
	if check != nil {
		if err := check(sPriv, sPub); err != nil {
			return 0, 0, err
		}
	}
	// The public half first: if the private copy then fails and the
	// public copy cannot be destroyed (the session died), what is left on
	// the token holds no secret, and the next creation under the ID
	// removes it (see ensureAbsent).
	onToken := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)}
	if sPub != 0 {
		pub, err = t.mod.ctx.CopyObject(s.h, sPub, onToken)
	}
	if err == nil {
		if priv, err = t.mod.ctx.CopyObject(s.h, sPriv, onToken); err != nil {
			destroy(pub)
		}
	}
	if c, ok := asCKR(err); ok && copyRefused(c) {
		return direct()
	}
	if err != nil {
		return 0, 0, err
	}
	return priv, pub, nil
}

// ensureAbsent fails with ErrKeyExists when an object with CKA_ID id
// exists. The one exception is what an interrupted creation or deletion
// leaves behind: the public half of a key pair this library made, without
// its private half. Pairs are copied to the token public half first and
// destroyed private half first, so a call cut off in between (a session
// or module that died) leaves at most that, and nothing can use it; it is
// destroyed here, so that the retry is not refused. A complete key, a
// lone private or secret key, or any object of another label (a trusted
// transport key, or one this library did not make) is never touched.
func (t *Token) ensureAbsent(s *session, id KeyID) error {
	objs, err := t.find(s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(id)),
	})
	if err != nil || len(objs) == 0 {
		return err
	}
	exists := fmt.Errorf("%w: %s", ErrKeyExists, id)
	for _, o := range objs {
		a, err := t.attrs(s, o, pkcs11.CKA_CLASS, pkcs11.CKA_LABEL, pkcs11.CKA_TRUSTED)
		if err != nil {
			return err
		}
		label := string(a[pkcs11.CKA_LABEL])
		spec := specFromLabel(label)
		if bytesToUint(a[pkcs11.CKA_CLASS]) != pkcs11.CKO_PUBLIC_KEY || isTrue(a[pkcs11.CKA_TRUSTED]) ||
			!spec.Asymmetric() || label != keyLabel(id, spec) {
			return exists
		}
	}
	// Private objects are visible to the user only: while the application
	// is logged out, or logged in as the SO (another Token's
	// administrative call), a complete pair shows only its public half.
	// The private half counts as gone only if a search for it, made
	// between two looks at the session that both find the user logged
	// in, finds nothing.
	if !t.userLoggedIn(s) {
		return exists
	}
	privs, err := t.find(s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(id)),
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
	})
	if err != nil {
		return err
	}
	if len(privs) > 0 || !t.userLoggedIn(s) {
		return exists
	}
	for _, o := range objs {
		if err := t.mod.ctx.DestroyObject(s.h, o); err != nil {
			return err
		}
	}
	t.keys.drop(id)
	t.log.Warn("hsm: removed the public half of an unfinished key pair", "token", t.cfg.selector(), "key", id)
	return nil
}

// userLoggedIn reports whether session s is in a user state: logged in as
// the normal user, who sees private objects.
func (t *Token) userLoggedIn(s *session) bool {
	si, err := t.mod.ctx.GetSessionInfo(s.h)
	return err == nil && userState(si.State)
}

// userState reports whether a session state is one of the normal user's.
func userState(state uint) bool {
	return state == pkcs11.CKS_RW_USER_FUNCTIONS || state == pkcs11.CKS_RO_USER_FUNCTIONS
}

// templates returns the public and private (or secret) key templates.
// Every key is token, private and sensitive; extractable only together
// with wrap-with-trusted.
func templates(id KeyID, spec KeySpec, opts KeyOptions) (pub, priv []*pkcs11.Attribute) {
	si := specs[spec]
	label := keyLabel(id, spec)
	enc, sign, wrap := opts.Usage&UsageEncrypt != 0, opts.Usage&UsageSign != 0, opts.Usage&UsageWrap != 0
	priv = []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, si.class),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, si.keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, opts.Extractable),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, true),
		pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(id)),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, enc),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, sign),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, wrap),
	}
	if si.class == pkcs11.CKO_SECRET_KEY {
		priv = append(priv,
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, si.bits/8),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, enc),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, sign),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, wrap),
		)
		return nil, priv
	}
	pub = []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, si.keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(id)),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, enc),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, sign),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, wrap),
	}
	switch si.keyType {
	case pkcs11.CKK_RSA:
		pub = append(pub,
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, si.bits),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}))
	case pkcs11.CKK_EC:
		params, _ := asn1.Marshal(si.curve)
		pub = append(pub, pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params))
	}
	return pub, priv
}

func mech(m uint, param any) []*pkcs11.Mechanism {
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(m, param)}
}

// DestroyKey destroys the objects this library made for the key's ID:
// the key, the public half of a pair, a transport key's public key, and
// the original a cut-off CreateTrustedWrappingKey may leave. Any other
// object with the same CKA_ID (another application's certificate, say) is
// left alone. It returns ErrKeyNotFound when there is none of ours.
func (t *Token) DestroyKey(ctx context.Context, id KeyID) error {
	if err := id.Validate(); err != nil {
		return t.wrap(OpDestroyKey, err)
	}
	return t.do(ctx, OpDestroyKey, "", func(s *session, _ *keyEntry) error {
		objs, err := t.find(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(id)),
		})
		if err != nil {
			return err
		}
		// The private or secret half first: a deletion cut off half-way
		// leaves at most a public half, which holds no secret and which
		// the next creation under id removes (see ensureAbsent).
		var privs, pubs []pkcs11.ObjectHandle
		for _, o := range objs {
			a, err := t.attrs(s, o, pkcs11.CKA_CLASS, pkcs11.CKA_LABEL)
			if err != nil {
				return err
			}
			switch {
			case !ownLabel(id, string(a[pkcs11.CKA_LABEL])):
			case bytesToUint(a[pkcs11.CKA_CLASS]) == pkcs11.CKO_PUBLIC_KEY:
				pubs = append(pubs, o)
			default:
				privs = append(privs, o)
			}
		}
		if len(privs)+len(pubs) == 0 {
			return ErrKeyNotFound
		}
		t.keys.drop(id)
		for _, o := range append(privs, pubs...) {
			if err := t.mod.ctx.DestroyObject(s.h, o); err != nil {
				return err
			}
		}
		return nil
	})
}

// ownLabel reports whether label is one this library gives an object of
// key id: keyLabel's for the spec it records, that with ":public" (a
// transport key, see ImportTrustedPublicKey), or the pending original's of
// CreateTrustedWrappingKey.
func ownLabel(id KeyID, label string) bool {
	if label == "hsmkms-pending:"+string(id) {
		return true
	}
	spec := specFromLabel(label)
	return spec != "" && (label == keyLabel(id, spec) || label == keyLabel(id, spec)+":public")
}

// ListKeys lists the keys this library created on the token (those whose
// label carries its prefix), in no particular order.
func (t *Token) ListKeys(ctx context.Context) ([]KeyInfo, error) {
	var out []KeyInfo
	err := t.do(ctx, OpListKeys, "", func(s *session, _ *keyEntry) error {
		out = out[:0]
		// Object writes that overlap the listing may have left it stale:
		// it is then not cached (see warm).
		started := t.writesStarted.Load()
		quiet := t.writesDone.Load() == started
		pubs, err := t.publicKeys(s)
		if err != nil {
			return err
		}
		var found []*keyEntry
		count := map[KeyID]int{}
		for _, class := range []uint{pkcs11.CKO_SECRET_KEY, pkcs11.CKO_PRIVATE_KEY} {
			objs, err := t.find(s, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
			})
			if err != nil {
				return err
			}
			for _, o := range objs {
				a, err := t.attrs(s, o, pkcs11.CKA_LABEL, pkcs11.CKA_ID)
				if err != nil {
					return err
				}
				id := KeyID(a[pkcs11.CKA_ID])
				count[id]++
				if !strings.HasPrefix(string(a[pkcs11.CKA_LABEL]), labelPrefix) {
					continue
				}
				info, err := t.describe(s, id, o, 0, false)
				if err != nil {
					return err
				}
				out = append(out, info)
				e := &keyEntry{gen: s.gen, info: info, priv: o}
				e.pub, e.hasPb = pubs[id]
				found = append(found, e)
			}
		}
		if quiet && t.writesStarted.Load() == started {
			t.warm(s, found, count, pubs)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// publicKeys maps the IDs of the token's public keys to their handles;
// an ID two public keys share maps to 0.
func (t *Token) publicKeys(s *session) (map[KeyID]pkcs11.ObjectHandle, error) {
	objs, err := t.find(s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
	})
	if err != nil {
		return nil, err
	}
	pubs := make(map[KeyID]pkcs11.ObjectHandle, len(objs))
	for _, o := range objs {
		a, err := t.attrs(s, o, pkcs11.CKA_ID)
		if err != nil {
			return nil, err
		}
		id := KeyID(a[pkcs11.CKA_ID])
		if _, dup := pubs[id]; dup {
			pubs[id] = 0
		} else {
			pubs[id] = o
		}
	}
	return pubs, nil
}

// warm caches the handles a listing found, as lookUp would have found
// them, so that the first call on each key after a listing (a cluster
// member's re-sync) searches nothing. ListKeys calls it only when no
// object write of this Token overlapped the listing. An ID that names
// more than one secret or private key, or more than one public key, is
// left to lookUp; so is one already cached.
func (t *Token) warm(s *session, found []*keyEntry, count map[KeyID]int, pubs map[KeyID]pkcs11.ObjectHandle) {
	t.mu.Lock()
	current := t.gen == s.gen
	t.mu.Unlock()
	if !current {
		return
	}
	for _, e := range found {
		id := e.info.ID
		if h, ok := pubs[id]; count[id] != 1 || (ok && h == 0) {
			continue
		}
		t.keys.putIfAbsent(e)
	}
}

// Describe returns what the token knows of one key.
func (t *Token) Describe(ctx context.Context, id KeyID) (KeyInfo, error) {
	var info KeyInfo
	err := t.withKey(ctx, OpFindKey, id, func(s *session, e *keyEntry) error {
		info = e.info
		return nil
	})
	if err != nil {
		return KeyInfo{}, err
	}
	return info, nil
}

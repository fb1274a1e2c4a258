// Package kmsadapter serves the AWS KMS API from a cluster of HSMs, as a
// drop-in for aws-sdk-go-v2's *kms.Client.
//
// # The swap
//
// Code that holds the KMS client behind an interface, as AWS advises for
// testing, keeps working unchanged:
//
//	func protect(ctx context.Context, api kmsadapter.API) error { ... } // application code
//
//	err := protect(ctx, kms.NewFromConfig(awsCfg))   // on AWS KMS
//
//	store, _ := kmsadapter.OpenBoltStore("/var/lib/hsmkms/kms.db")
//	cl, _ := cluster.New(ctx, clusterCfg, cluster.WithCatalog(kmsadapter.NewCatalog(store)))
//	client, _ := kmsadapter.New(cl, store, kmsadapter.DefaultConfig())
//	err = protect(ctx, client)                        // on your HSMs, unchanged
//
// API lists the methods; *kms.Client and *Client both satisfy it, which
// the package asserts at compile time. Inputs, outputs and semantics are
// those of the AWS KMS API reference: the four KeyId forms (key ID, key
// ARN, alias name, alias ARN) where AWS accepts them, full key ARNs in
// every KeyId output (partition, region and account from Config), the key
// specs SYMMETRIC_DEFAULT, RSA_2048/3072/4096, ECC_NIST_P256/P384/P521,
// ECC_SECG_P256K1 (where the HSMs have the curve) and HMAC_224/256/384/512
// with their usages and algorithms, the key states Enabled, Disabled,
// PendingDeletion and PendingImport and what each allows, AWS's limits,
// rotation, and import of key material.
//
// # Backend
//
// The HSMs are reached through Backend, whose methods are those of
// *hsm.Token: one token is a Backend, and a cluster of tokens, which
// offers the same methods, is one too. Every version of every KMS key is
// one HSM key named "<key ID>/v<version>", created extractable only under
// a trusted wrapping key, so the cluster can copy it between members and
// plaintext key material never leaves an HSM. Data keys come from the
// HSMs' random generator. Data key pairs are made in this process (AWS
// returns their private key in plaintext anyway) and their private key is
// encrypted under the HSM key.
//
// # Importing key material
//
// Keys created with Origin EXTERNAL take imported material:
// SYMMETRIC_DEFAULT and HMAC keys as raw bytes, RSA_2048/3072/4096 and
// ECC_NIST_P256/P384/P521 keys as a DER PKCS#8 private key (AWS derives
// the public key; so does the adapter). ECC_SECG_P256K1 keys cannot be
// imported. GetParametersForImport makes an RSA wrapping key pair inside
// the HSMs and applies AWS's rules: RSA private keys need
// RSA_AES_KEY_WRAP_SHA_1 or _SHA_256; RSAES_OAEP_SHA_1 or _SHA_256 wraps
// every other type of material, except ECC_NIST_P521 under an RSA_2048
// wrapping key (ValidationException). ImportKeyMaterial unwraps the
// material inside an HSM, never in this process, and a cluster copies it
// to its other members. For a key pair the HSM checks the material against
// the key spec (material of another type, size or curve is
// IncorrectKeyMaterialException and is left on no HSM) and derives the
// public key without reading secret material: an RSA key's from its
// modulus and exponent, an EC key's recovered from two ECDSA signatures
// the HSM makes. GetPublicKey then returns the SubjectPublicKeyInfo of
// the original key. Material that was deleted (DeleteImportedKeyMaterial)
// or expired comes back only as the same material, compared by a check
// value (a symmetric key's encryption of a fixed block, an HMAC key's MAC,
// a key pair's public key); other material is
// IncorrectKeyMaterialException. An expiration (ValidTo) is accepted for
// every key type, as AWS's API reference describes it.
//
// # Ciphertext format
//
// Encrypt, GenerateDataKey*, GenerateDataKeyPair* (the private key) and
// ReEncrypt under a symmetric key return this blob, format version 1:
//
//	offset  size  field
//	0       1     format version: 0x01
//	1       16    key ID: the 16 bytes of the key's UUID
//	17      4     key version: big-endian uint32, 1 for the key's first material
//	21      12    AES-GCM IV, the one the HSM used
//	33      n+16  AES-256-GCM ciphertext of the n-byte plaintext, 16-byte tag appended
//
// The blob names its key and version, so Decrypt needs no KeyId; given
// one, it must name the same key (IncorrectKeyException otherwise). The
// additional authenticated data of AES-GCM is the first 21 bytes of the
// header (version, key ID, key version) followed by the encryption
// context encoded as: the number of pairs, then every pair in byte order
// of its key, each key and value preceded by its length, all numbers
// big-endian uint32. The encoding is injective, so two different contexts
// never authenticate alike, and the header cannot be changed without the
// tag failing. The IV is bound by GCM itself. A blob that is malformed,
// names an unknown key or version, or fails authentication is
// InvalidCiphertextException, and nothing more specific.
//
// RSA ciphertexts (RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256) are the raw
// RSA-OAEP output, as at AWS: Decrypt needs KeyId and EncryptionAlgorithm.
// SoftHSM 2.6 offers RSA-OAEP with SHA-1 only; RSAES_OAEP_SHA_256 then
// fails with UnsupportedOperationException. Config.OAEPHashes says which
// hashes the HSMs take, so that other requests are refused before they
// reach them; an *hsm.Token backend tells by itself.
//
// # Metadata
//
// Key records, aliases and tombstones of destroyed keys live in a Store:
// OpenBoltStore (an embedded bbolt file, Config.StorePath, the default)
// or NewMemoryStore (tests); a database shared by service replicas can
// implement the interface. Each record is sealed with HMAC-SHA256 made by
// an HSM key (Config.IntegrityKeyID) over the record's bucket, name and
// content: a record edited or moved outside this package is detected. New
// verifies every record and fails with an error wrapping ErrTampered that
// names each bad one (see IntegrityError); an API call that meets one
// fails with KMSInternalException and the record is logged. Rolling a
// record back to an older sealed version of itself is not detected.
//
// No HSM call runs inside a store transaction: records are sealed
// before the transaction, which writes them only if the record read is
// still the one stored (and retries otherwise). That keeps transactions
// short and lets the Backend use the same store: with a cluster, Catalog
// keeps the cluster's catalog (which HSM keys must exist, tombstones of
// destroyed ones) in the adapter's Store, so one file or database holds
// both. Catalog records are not sealed: the catalog exists before the
// Client, and they hold only key names.
//
// CreateKey writes a record in state Creating, creates the HSM key, then
// marks the record complete. New and Tick roll back records left in
// Creating for longer than Config.CreateTimeout, destroying the HSM key if
// it was made; after a crash there is either no key or a complete one.
// The integrity key is made by the first New on an empty store. On a
// cluster, a New that dies between the members' copies and the catalog's
// record leaves objects under the key's ID that no catalog lists, and
// later News fail with an error wrapping hsm.ErrKeyExists until they are
// destroyed (cluster.Cluster.DestroyLeftover; `hsmkms destroy-leftover`).
// New does not destroy them by itself: from its store alone it cannot
// tell them from another process's creation in progress, or from the key
// of a deployment whose store it was not given.
//
// # Time
//
// Deletion windows, automatic rotation, import token and imported
// material expiry follow the Clock given with WithClock. Tick does the
// work that fell due: when a deletion window ends, the key's material is
// destroyed through the Backend (on every member of a cluster), a
// tombstone is kept for each destroyed HSM key, and the key is removed.
// RunMaintenance calls Tick on every tick of a channel.
//
// # Key policies
//
// Key policies are stored and returned, the default one as AWS writes it.
// A Client does not enforce them: enforcing needs the caller's identity,
// which the wire-protocol server (package kmshttp, cmd/hsmkms) has from
// SigV4 and checks against the key's policy before it calls the Client.
//
// # Concurrency
//
// A Client is safe for concurrent use. Cryptographic calls make one HSM
// call: key and alias records whose seal was verified are served from
// memory for Config.MetadataCacheTTL (1 s by default; changes made
// through the Client are seen at once, changes by another process
// sharing the store and tampering within the TTL), and a record read
// again is verified again only if its bytes changed. Rotations of one
// process are serialized.
//
// Every version of every key is its own HSM key, and HSM key IDs are
// never reused (a cluster refuses to), so re-imported material and a
// rotation retried after a crash get fresh names, recorded with the
// version.
//
// # Errors
//
// Every error an API method returns is what aws-sdk-go-v2 returns for
// the same condition: a *smithy.OperationError (ServiceID "KMS", the
// operation's name) wrapping an *awshttp.ResponseError (HTTP status and a
// request ID) wrapping the SDK's exception type, e.g.
// *types.NotFoundException, so errors.As code written for AWS keeps
// working. ValidationException, which the KMS model does not define, is a
// *smithy.GenericAPIError with that code, as the SDK returns it. HSM
// errors map by their class: decryption failure to
// InvalidCiphertextException, a bad signature or MAC to
// KMSInvalidSignatureException or KMSInvalidMacException, a missing
// mechanism to UnsupportedOperationException, an HSM that cannot serve to
// KeyUnavailableException, a timeout to DependencyTimeoutException.
// Cancellation of the caller's context returns the context's error inside
// the OperationError, as the SDK does.
package kmsadapter

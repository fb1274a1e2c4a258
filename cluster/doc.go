// Package cluster uses N PKCS#11 tokens, possibly from different vendors,
// as one: it routes each call to a healthy member that holds the key,
// retries a member's fault on another member, copies every new key to
// every member wrapped under a key-encryption key that never leaves the
// HSMs in plaintext, and brings a member that was down, or replaced, up to
// date before it serves again.
//
// A *Cluster has the data-plane methods of *hsm.Token with the same
// signatures (GenerateKey, DestroyKey, Describe, EncryptGCM, DecryptGCM,
// EncryptOAEP, DecryptOAEP, Sign, Verify, MAC, VerifyMAC, PublicKey,
// Random, UnwrapKey), so an interface a consumer declares is satisfied by
// both.
//
//	cfg := cluster.DefaultConfig()
//	cfg.Members = []cluster.MemberConfig{
//		{Name: "hsm-a", Token: tokenA, SOPIN: soA},
//		{Name: "hsm-b", Token: tokenB, SOPIN: soB},
//		{Name: "hsm-c", Token: tokenC, SOPIN: soC, Role: cluster.Standby},
//	}
//	catalog, err := cluster.OpenBoltCatalog("/var/lib/hsmkms/catalog.db")
//	c, err := cluster.New(ctx, cfg, cluster.WithCatalog(catalog), cluster.WithLogger(log))
//	defer c.Close()
//	err = c.Bootstrap(ctx) // once, for a new cluster
//	_, err = c.GenerateKey(ctx, "orders", hsm.AES256, hsm.KeyOptions{})
//	ct, iv, err := c.EncryptGCM(ctx, "orders", nil, plaintext, aad)
//
// examples/failover runs a three-member SoftHSM2 cluster, crashes a member
// in the middle of a stream of calls, and shows that none fails.
//
// # Health
//
// Each member is Healthy, Degraded, Syncing or Down. A probe
// (hsm.Token.Probe) runs on every member each Config.ProbeInterval, on the
// clock given with WithClock; the outcome of every real call counts too.
// A member's fault (hsm.ClassMember, hsm.ClassFatal) makes a member
// Degraded, and Down after Config.DownAfter in a row, at once on a timeout
// or a failed probe; a success makes a Degraded member Healthy again. The
// caller's faults (bad ciphertext, unknown key: hsm.ClassCaller) and the
// caller's context (hsm.ClassContext) never count against a member. Each
// member also has a circuit breaker (sony/gobreaker) that excludes the
// same errors. A Down member whose probe succeeds becomes Syncing, is
// re-synced, and only then Healthy: it takes no traffic in between.
//
// Every state change is sent as an Event to the channel given with
// WithEvents, in order, by one goroutine of the cluster's that holds no
// lock (a change made under a lock is only queued), and never blocks: an
// event that finds the channel full is dropped and counted. Collector returns
// the Prometheus metrics for the caller to register.
//
// # Routing
//
// A call on key K goes to a member that holds K (the cluster keeps, in
// memory, which member holds which key, learnt at re-sync and kept up to
// date by its own writes; it never searches a token on the data path) in
// the best tier that has one: healthy active members, then healthy
// standby members, then degraded ones. Within a tier, two candidates are
// drawn with probability proportional to Weight and the less loaded wins
// (power of two choices): fewer calls in flight, weighed by latency when
// Config.LatencyAware, so that a member much slower than the others gets
// only an occasional call that measures it again. A member's fault is
// retried at once on another member; when every candidate failed, the
// call backs off and tries again, at most three rounds, within the
// caller's deadline. The caller's fault returns at once. With
// Config.HedgeDelay, an idempotent call that has not returned after the
// delay also goes to a second member, and the first answer wins.
//
// # Replication and key-encryption keys
//
// Every member holds a key-encryption key (KEK) of its own, an AES-256 key
// its SO marked trusted (CKA_TRUSTED), and an untrusted copy of every
// other member's KEK. A key is generated on one member, extractable only
// under a trusted key (CKA_WRAP_WITH_TRUSTED) and never in plaintext
// (CKA_SENSITIVE), wrapped there under that member's KEK (AES key wrap
// with padding) without being stored, and unwrapped inside every member,
// that one included, in parallel; key pairs carry their public key with
// them, from the same generation. So a key's material exists outside an
// HSM only wrapped, and only in this process's memory during the copy.
// KeyOptions.Extractable is ignored: every key the cluster makes is
// extractable in that sense, and in no other.
//
// Why one KEK per member rather than one for the whole cluster: PKCS#11
// lets only the SO set CKA_TRUSTED, and only when the object is created;
// the SO cannot use the user's private objects, and a key the user
// unwraps cannot be made trusted afterwards (SoftHSM 2.6.1 answers
// CKR_ATTRIBUTE_READ_ONLY). A single KEK copied to a joining member would
// arrive untrusted there, and that member could receive keys but never be
// the origin of a copy. With a KEK per member, trust is needed only where
// a key is wrapped, which is always the member's own KEK.
//
// A key is created only when it reaches the write quorum: by default
// every member healthy when the call starts, and at least two when the
// cluster has two or more members, removed ones not counted
// (Config.WriteQuorum changes it; a member
// with Replicas, such as an AWS CloudHSM cluster behind one module, counts
// several times). Missing the quorum destroys every copy made and returns
// an error wrapping ErrQuorum and each member's error. A copy that cannot
// be destroyed at that moment (its member just failed), or that a call
// its caller gave up on may still make, is remembered (a suspect), and
// destroyed before the ID is tried again, and by the member's re-sync
// once this process has seen the same object (the same check value) for
// two minutes and the catalog still does not list the ID: until then it
// may be another process's creation, its catalog write still to come. A
// member that answered that the ID was taken is a suspect too, destroyed
// before a retry only after those two minutes. The cluster never routes
// a suspect's key to its member.
//
// # Catalog, re-sync and anti-entropy
//
// A Catalog says which keys must exist and which were destroyed
// (tombstones; a destroyed ID is never reused). MemoryCatalog and
// BoltCatalog implement it; the kmsadapter's metadata store implements it
// too, so there is one source of truth. DestroyKey writes the tombstone
// first, then destroys the key on every reachable member. Re-sync, which
// runs before a returning or replaced member serves, lists the member's
// keys (the only listing the cluster does; creating a key searches each
// member for its ID once), destroys the tombstoned ones and the suspects
// (above), and copies the missing ones from a healthy member. Other keys
// the catalog does not list are left alone, and reported by Coverage: a
// creation cut off in an earlier process leaves such keys, and they are
// destroyed when this process tries their ID again, as suspects.
// AntiEntropy does the same for healthy members, each
// Config.AntiEntropyInterval.
//
// A creation that failed in an earlier process (a crash between a
// member's copy and the catalog write) can leave other material under an
// ID that a later creation takes; with a write quorum below the member
// count, that creation succeeds without the member that holds the
// leftover. So each record keeps the new key's check value
// (hsm.Token.CheckValue, read from a member that holds it; KeyRecord.Check;
// a creation none of whose holders gives it is rolled back, unless their
// tokens cannot compute one),
// and a member serves a key it held from before (after a restart, or
// copied by another process sharing the catalog) only once its copy's
// check value matches: re-sync checks every key, anti-entropy the ones
// this process has not seen there yet. A copy that does not match is not
// served, and is destroyed only when a copy of the real key is at hand to
// replace it (metric leftovers_replaced_total), so that a record no copy
// matches costs no key. Keys a member holds that the catalog does not
// list (left by failed creations, or being created by another process)
// are never served; Coverage reports them. DestroyLeftover destroys them
// under one ID at once, for an operator who knows that no creation of
// that ID is under way (after a first start of hsmkms died while it
// created its integrity key, say). A suspect that the catalog
// lists as live (committed since, by another process sharing the catalog,
// say) is checked, not destroyed. Records made before check values, and
// tokens that cannot compute one, are taken at their word. Coverage
// reports which members hold each key, and keys members hold that the
// catalog does not list.
//
// # Membership
//
// Bootstrap gives every member of a new cluster its KEK and the others'.
// Join does it for a new or replaced member; see its documentation for
// the ceremony: the KEK travels HSM to HSM under an RSA transport key
// generated in the receiving HSM, which the sending HSM's SO imports as
// trusted. The SO PIN of each member (MemberConfig.SOPIN) is used for
// that and nothing else. A member whose token has no KEK (a wiped HSM)
// stays Down until Join, or joins by itself with Config.AutoJoin. Remove
// takes a member out for good.
//
// # Concurrency
//
// A Cluster is safe for concurrent use. Calls run on the caller's
// goroutine; replication, rollback and hedging start goroutines that end
// before the call returns (a hedged call that lost is cancelled). One
// goroutine probes on the clock. Creation, destruction and copying of one
// key ID are serialized; different keys proceed in parallel. Close waits
// for calls in flight and for the probe loop, and closes every token.
//
// # Errors
//
// The caller's faults come back as the hsm package returned them
// (errors.Is works with hsm.ErrKeyNotFound, hsm.ErrDecrypt, ...), from the
// first member that answered. When no member could serve, the error is an
// *Error that wraps ErrNoHealthyMember or ErrQuorum and, as *MemberError,
// each member's error, so errors.Is and errors.As see them all. Calls on a
// closed Cluster return ErrClosed; a member without a KEK reports
// ErrNotJoined.
package cluster

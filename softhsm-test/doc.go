// Package softhsmtest runs real SoftHSM2 tokens as the members of a test
// cluster, and injects the faults that SoftHSM cannot produce by itself.
//
// A [Cluster] has n members. Each [Member] is its own SoftHSM2 token with
// its own copy of libsofthsm2.so, so each is an independent library instance
// that can be crashed (C_Finalize), restarted (C_Initialize) or wiped
// (replaced by an empty token with the same label and PINs) while the
// others keep working:
//
//	c := softhsmtest.New(t, 3)
//	m := c.Members[0]
//	tok, err := hsm.Open(ctx, m.Config(), hsm.WithInterceptor(m.Faults))
//	...
//	m.Crash()   // tok's calls now fail with CKR_DEVICE_REMOVED
//	m.Restart() // tok's old sessions give CKR_SESSION_HANDLE_INVALID; it reconnects
//
// Every hsm.Token opened on a member must route its calls through the
// member's [Faults] with hsm.WithInterceptor(m.Faults). Crash relies on it:
// SoftHSM aborts the whole process when C_Finalize runs while another
// thread is inside a call, so Crash first refuses new calls, then waits for
// the intercepted calls in flight to return, and only then finalizes.
//
// # SoftHSM2 configuration
//
// SoftHSM reads its configuration file from the SOFTHSM2_CONF environment
// variable, which is process-wide, each time a library instance runs
// C_Initialize. The package therefore keeps one token directory and one
// softhsm2.conf per process, in a temporary directory created when the
// first cluster is made, and points SOFTHSM2_CONF at it for as long as any
// cluster exists. All members of all clusters keep their tokens there, and
// each member's library instance selects its own token by label; labels are
// unique within the process ("c<cluster>-member-<index>"). When the last
// cluster closes, the directory is removed and SOFTHSM2_CONF is restored to
// its previous value. Because SOFTHSM2_CONF never changes while a cluster is
// alive, several clusters may coexist and run in parallel tests; but no
// other code in the process may use SOFTHSM2_CONF for its own SoftHSM
// tokens meanwhile.
//
// Token directories are created and deleted with softhsm2-util, which must
// be on PATH.
//
// # Locating SoftHSM2
//
// [LibraryPath] honours the SOFTHSM2_LIB environment variable, then looks in
// the Debian, Ubuntu, Fedora and macOS Homebrew install locations. A missing
// SoftHSM2 fails the test ([Require]) with the command that installs it,
// unless HSMKMS_SKIP_SOFTHSM=1 is set, in which case the test is skipped.
// CI never sets it. softhsm-test.sh ensure installs SoftHSM2.
//
// # Concurrency
//
// [Faults] is safe for concurrent use; its Intercept runs on the caller's
// goroutine, and blocking there (Hang, SetLatency) behaves like a stalled
// HSM: it ignores the caller's context, so that what is tested is the
// caller's own deadline handling. A Member's Crash, Restart and Wipe are
// serialized with one another and may be called from any goroutine while
// tokens are in use; Crash does not return while an intercepted call is
// still running, so a call hung with [Faults.Hang] holds Crash until
// [Faults.Release]. [Cluster.Close] releases hung calls first.
//
// # Errors
//
// [LibraryPath] returns an error wrapping [ErrLibraryNotFound] that names
// the install command. Constructors and lifecycle methods return errors
// that wrap the underlying cause: a PKCS#11 return value as
// [github.com/miekg/pkcs11.Error], the output of a failed softhsm2-util, or
// a file system error. Faults fails calls with [hsm.CKR] values, exactly as
// the hsm package expects from a module: CKR_DEVICE_REMOVED while a member
// is down, and the code given to [Faults.FailNext].
package softhsmtest

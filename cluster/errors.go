package cluster

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Branch on them with errors.Is; the hsm package's
// sentinels (hsm.ErrKeyNotFound, hsm.ErrDecrypt, ...) come through
// unchanged for the caller's own faults.
var (
	// ErrNoHealthyMember means no member that can serve the call is
	// healthy. The error also wraps every attempt's error, if any.
	ErrNoHealthyMember = errors.New("cluster: no healthy member")
	// ErrQuorum means a key could not be placed on the write quorum; the
	// copies that were made have been destroyed. The error wraps each
	// member's error.
	ErrQuorum = errors.New("cluster: write quorum not met")
	// ErrClosed is returned by every call on a closed Cluster.
	ErrClosed = errors.New("cluster: closed")
	// ErrNotJoined means a member holds no key-encryption key of its own
	// (new or wiped): it takes no traffic until Join or Bootstrap.
	ErrNotJoined = errors.New("cluster: member has not joined")
	// ErrUnknownMember means no member has the given name.
	ErrUnknownMember = errors.New("cluster: unknown member")
)

// MemberError is one member's part in a failed call.
type MemberError struct {
	Member string
	Err    error
}

func (e *MemberError) Error() string { return "member " + e.Member + ": " + e.Err.Error() }
func (e *MemberError) Unwrap() error { return e.Err }

// Error is a cluster call that failed after trying members. It wraps its
// sentinel (ErrNoHealthyMember, ErrQuorum) and each member's error, so
// errors.Is and errors.As see all of them.
type Error struct {
	Op       string
	Key      string // the key ID, if any
	Sentinel error
	Attempts []*MemberError
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(strings.TrimSuffix(e.Sentinel.Error(), "."))
	fmt.Fprintf(&b, " (%s", e.Op)
	if e.Key != "" {
		b.WriteString(" key " + e.Key)
	}
	b.WriteString(")")
	for i, a := range e.Attempts {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(a.Error())
	}
	return b.String()
}

// Unwrap returns the sentinel and each member's error.
func (e *Error) Unwrap() []error {
	out := []error{e.Sentinel}
	for _, a := range e.Attempts {
		out = append(out, a)
	}
	return out
}

package hsm

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"
)

// InitToken initializes a new token on the module at modulePath, in the
// first slot whose token is not initialized (SoftHSM2 always keeps one
// such slot), with label, SO PIN soPIN and user PIN userPIN, ready for
// Open. It is what `softhsm2-util --init-token --free` does, without
// putting the PINs on a command line where other users of the machine can
// read them. An initialized token with the same label is refused with
// ErrKeyExists rather than reinitialized (that would destroy its keys);
// no free slot is ErrTokenNotFound.
//
// The module is loaded and initialized as Open does (shared with the
// Tokens of the process), and finalized again if nothing else uses it.
// The PKCS#11 calls are not bounded by ctx, which is checked before them.
func InitToken(ctx context.Context, modulePath, label string, soPIN, userPIN PIN) (err error) {
	fail := func(err error) error {
		var e *Error
		if errors.As(err, &e) {
			return err
		}
		e = &Error{Op: OpInitToken, Token: fmt.Sprintf("label=%q", label), Err: err}
		if code, ok := asCKR(err); ok {
			e.Code = code
		}
		return e
	}
	switch {
	case label == "" || len(label) > 32 || strings.TrimRight(label, " ") != label:
		return fail(fmt.Errorf("%w: a token label is 1 to 32 bytes, without trailing spaces", ErrInvalidInput))
	case soPIN.IsZero() || userPIN.IsZero():
		return fail(fmt.Errorf("%w: empty PIN", ErrInvalidInput))
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	m, err := acquireModule(modulePath)
	if err != nil {
		return fail(err)
	}
	defer func() {
		if rerr := m.release(); rerr != nil && err == nil {
			err = fail(rerr)
		}
	}()
	if err := m.initialize(); err != nil {
		return fail(err)
	}
	// tokens lists the slots with a token, and for each its label and
	// whether it is initialized.
	type slotToken struct {
		slot        uint
		label       string
		initialized bool
	}
	tokens := func() ([]slotToken, error) {
		slots, err := m.ctx.GetSlotList(true)
		if err != nil {
			return nil, err
		}
		var out []slotToken
		for _, s := range slots {
			ti, err := m.ctx.GetTokenInfo(s)
			if err != nil {
				continue // a slot that went away meanwhile
			}
			out = append(out, slotToken{s, strings.TrimRight(ti.Label, " \x00"), ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED != 0})
		}
		return out, nil
	}
	all, err := tokens()
	if err != nil {
		return fail(err)
	}
	free := -1
	for i, st := range all {
		if st.initialized && st.label == label {
			return fail(fmt.Errorf("%w: a token labelled %q is initialized already", ErrKeyExists, label))
		}
		if !st.initialized && free < 0 {
			free = i
		}
	}
	if free < 0 {
		return fail(fmt.Errorf("%w: no slot with an uninitialized token", ErrTokenNotFound))
	}
	if err := m.ctx.InitToken(all[free].slot, soPIN.reveal(), label); err != nil {
		return fail(err)
	}
	// SoftHSM2 moves a token it initializes to a slot of its own: find it
	// again by its label.
	if all, err = tokens(); err != nil {
		return fail(err)
	}
	slot, found := uint(0), false
	for _, st := range all {
		if st.initialized && st.label == label {
			slot, found = st.slot, true
		}
	}
	if !found {
		return fail(fmt.Errorf("%w: the token initialized as %q is not listed", ErrTokenNotFound, label))
	}
	s, err := m.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return fail(err)
	}
	defer func() { _ = m.ctx.CloseSession(s) }()
	if err := m.ctx.Login(s, pkcs11.CKU_SO, soPIN.reveal()); err != nil {
		return fail(err)
	}
	err = m.ctx.InitPIN(s, userPIN.reveal())
	if lerr := m.ctx.Logout(s); err == nil && lerr != nil {
		err = lerr
	}
	if err != nil {
		return fail(err)
	}
	return nil
}

package hsm

import (
	"fmt"
	"log/slog"
)

// redacted is what every formatted PIN shows instead of its value.
const redacted = "[REDACTED]"

// PIN holds a token PIN (user or security officer). Its value never
// appears in String, GoString, any fmt verb, JSON, text marshalling or
// slog output; only the PKCS#11 login call reads it.
//
// The zero PIN is empty. Construct one with NewPIN.
type PIN struct {
	value *string // a pointer so that copies of a PIN share one value and reflection-based printers see only an address
}

// NewPIN wraps a PIN value.
func NewPIN(value string) PIN { return PIN{value: &value} }

// IsZero reports whether the PIN is empty.
func (p PIN) IsZero() bool { return p.value == nil || *p.value == "" }

// reveal returns the value for C_Login. It is unexported on purpose.
func (p PIN) reveal() string {
	if p.value == nil {
		return ""
	}
	return *p.value
}

// String implements fmt.Stringer without revealing the value.
func (p PIN) String() string { return redacted }

// GoString implements fmt.GoStringer without revealing the value.
func (p PIN) GoString() string { return "hsm.PIN(" + redacted + ")" }

// Format implements fmt.Formatter: every verb, %x and %q included, prints
// the redacted form.
func (p PIN) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		_, _ = f.Write([]byte(p.GoString()))
		return
	}
	_, _ = f.Write([]byte(redacted))
}

// LogValue implements slog.LogValuer.
func (p PIN) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalJSON implements json.Marshaler without revealing the value.
func (p PIN) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText implements encoding.TextMarshaler without revealing the value.
func (p PIN) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// UnmarshalText implements encoding.TextUnmarshaler, so a PIN can be read
// from configuration files.
func (p *PIN) UnmarshalText(text []byte) error {
	v := string(text)
	p.value = &v
	return nil
}

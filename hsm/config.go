package hsm

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Config says which token to open and how. It is a plain value: Open never
// writes into the caller's copy.
type Config struct {
	// ModulePath is the PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so.
	ModulePath string
	// The token selector: at least one of TokenLabel, TokenSerial or Slot.
	// When several are set, the token must match all of them.
	TokenLabel  string
	TokenSerial string
	Slot        *uint
	// PIN is the user (CKU_USER) PIN.
	PIN PIN
	// MaxSessions bounds the session pool. Callers beyond it wait, honouring
	// their context.
	MaxSessions int
	// CallTimeout bounds every PKCS#11 call when the caller's context has
	// no earlier deadline. A call that passes it returns ErrTimeout; its
	// session is never reused and the token reports itself unhealthy.
	//
	// NoCallTimeout sets no bound of our own. A call whose context can
	// then neither expire nor be cancelled (context.Background) runs on
	// the caller's goroutine, as a direct PKCS#11 call would, and waits
	// for the module however long it takes; see the package documentation.
	// Zero is invalid, so that a forgotten setting is caught.
	CallTimeout time.Duration
	// Profile describes vendor quirks. Nil means detect from the token's
	// manufacturer and model.
	Profile *Profile
}

// Defaults used by DefaultConfig.
const (
	DefaultMaxSessions = 16
	DefaultCallTimeout = 10 * time.Second
)

// NoCallTimeout, as Config.CallTimeout, bounds calls by the caller's
// context alone.
const NoCallTimeout time.Duration = -1

// DefaultConfig returns a Config with the pool size and timeout set; the
// caller fills in the module, the selector and the PIN.
func DefaultConfig() Config {
	return Config{MaxSessions: DefaultMaxSessions, CallTimeout: DefaultCallTimeout}
}

// Validate reports every problem with the configuration at once.
func (c Config) Validate() error {
	var errs []error
	if c.ModulePath == "" {
		errs = append(errs, errors.New("ModulePath is empty"))
	}
	if c.TokenLabel == "" && c.TokenSerial == "" && c.Slot == nil {
		errs = append(errs, errors.New("no token selector: set TokenLabel, TokenSerial or Slot"))
	}
	if c.PIN.IsZero() {
		errs = append(errs, errors.New("PIN is empty"))
	}
	if c.MaxSessions < 1 {
		errs = append(errs, fmt.Errorf("MaxSessions is %d, want at least 1", c.MaxSessions))
	}
	if c.CallTimeout == 0 || (c.CallTimeout < 0 && c.CallTimeout != NoCallTimeout) {
		errs = append(errs, fmt.Errorf("CallTimeout is %v, want more than 0 or NoCallTimeout", c.CallTimeout))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: config: %w", ErrInvalidInput, errors.Join(errs...))
}

// selector describes the token a Config selects, for error messages.
func (c Config) selector() string {
	var parts []string
	if c.TokenLabel != "" {
		parts = append(parts, "label="+strconv.Quote(c.TokenLabel))
	}
	if c.TokenSerial != "" {
		parts = append(parts, "serial="+strconv.Quote(c.TokenSerial))
	}
	if c.Slot != nil {
		parts = append(parts, "slot="+strconv.FormatUint(uint64(*c.Slot), 10))
	}
	return strings.Join(parts, ",")
}

// ParseURI reads an RFC 7512 PKCS#11 URI into a Config that starts from
// DefaultConfig. It understands the path attributes token, serial and
// slot-id, and the query attributes module-path, pin-value and pin-source
// (a file path or a file: URI whose first line is the PIN). Unknown
// attributes are rejected so that a typo cannot select the wrong token.
// Errors never contain the PIN.
//
//	pkcs11:token=member-1;serial=1a2b?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/run/secrets/pin
func ParseURI(uri string) (Config, error) {
	cfg := DefaultConfig()
	rest, ok := strings.CutPrefix(uri, "pkcs11:")
	if !ok {
		return Config{}, fmt.Errorf("%w: pkcs11 URI: does not start with pkcs11:", ErrInvalidInput)
	}
	path, query, _ := strings.Cut(rest, "?")
	err := eachAttr(path, ";", func(k, val string) error {
		switch k {
		case "token":
			cfg.TokenLabel = val
		case "serial":
			cfg.TokenSerial = val
		case "slot-id":
			n, err := strconv.ParseUint(val, 10, 64)
			if err != nil {
				return fmt.Errorf("slot-id %q is not a number", val)
			}
			slot := uint(n)
			cfg.Slot = &slot
		case "manufacturer", "model", "library-manufacturer", "library-description",
			"library-version", "slot-description", "slot-manufacturer":
			// Informational attributes that do not select among our tokens.
		default:
			return fmt.Errorf("unsupported path attribute %q", k)
		}
		return nil
	})
	if err == nil {
		err = eachAttr(query, "&", func(k, val string) error {
			switch k {
			case "module-path":
				cfg.ModulePath = val
			case "pin-value":
				cfg.PIN = NewPIN(val)
			case "pin-source":
				b, err := os.ReadFile(strings.TrimPrefix(val, "file:"))
				if err != nil {
					return fmt.Errorf("pin-source: %w", err)
				}
				line, _, _ := strings.Cut(string(b), "\n")
				cfg.PIN = NewPIN(strings.TrimSuffix(line, "\r"))
			default:
				return fmt.Errorf("unsupported query attribute %q", k)
			}
			return nil
		})
	}
	if err != nil {
		return Config{}, fmt.Errorf("%w: pkcs11 URI: %w", ErrInvalidInput, err)
	}
	return cfg, nil
}

// eachAttr calls fn with each percent-decoded name=value pair of a URI
// part whose attributes are separated by sep. Errors never contain values
// of pin attributes.
func eachAttr(part, sep string, fn func(name, value string) error) error {
	if part == "" {
		return nil
	}
	for attr := range strings.SplitSeq(part, sep) {
		k, v, ok := strings.Cut(attr, "=")
		if !ok {
			// Not echoed: a mistyped "pin-value:1234" must not print the PIN.
			return fmt.Errorf("an attribute has no '='")
		}
		val, err := url.PathUnescape(v)
		if err != nil {
			return fmt.Errorf("attribute %s is not percent-encoded correctly", k)
		}
		if err := fn(k, val); err != nil {
			return err
		}
	}
	return nil
}

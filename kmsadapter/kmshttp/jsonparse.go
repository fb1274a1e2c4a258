package kmshttp

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
)

// parseJSON parses one JSON document into the values encoding/json's
// Decoder produces with UseNumber: map[string]any, []any, string, bool,
// json.Number and nil, except that a string value without escapes or
// non-ASCII bytes is a rawString, a slice of b. It exists for speed:
// request bodies are mostly one long base64 string, which is then decoded
// straight from the body instead of being scanned byte by byte twice and
// copied. Nesting deeper than maxDepth is refused.
func parseJSON(b []byte) (any, error) {
	p := jsonParser{b: b}
	p.skipSpace()
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	p.skipSpace()
	if p.i != len(p.b) {
		return nil, p.errorf("data after the JSON value")
	}
	return v, nil
}

const maxDepth = 64

// rawString is a JSON string value without escapes, as it appears in the
// parsed document (whose bytes it shares).
type rawString []byte

type jsonParser struct {
	b []byte
	i int
}

func (p *jsonParser) errorf(format string, a ...any) error {
	return fmt.Errorf("offset %d: %s", p.i, fmt.Sprintf(format, a...))
}

func (p *jsonParser) skipSpace() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *jsonParser) value(depth int) (any, error) {
	if depth > maxDepth {
		return nil, p.errorf("nested more than %d deep", maxDepth)
	}
	if p.i >= len(p.b) {
		return nil, p.errorf("unexpected end of input")
	}
	switch c := p.b[p.i]; {
	case c == '{':
		return p.object(depth)
	case c == '[':
		return p.array(depth)
	case c == '"':
		return p.strValue()
	case c == 't':
		return true, p.literal("true")
	case c == 'f':
		return false, p.literal("false")
	case c == 'n':
		return nil, p.literal("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	}
	return nil, p.errorf("unexpected character %q", p.b[p.i])
}

func (p *jsonParser) literal(s string) error {
	if !bytes.HasPrefix(p.b[p.i:], []byte(s)) {
		return p.errorf("invalid literal")
	}
	p.i += len(s)
	return nil
}

func (p *jsonParser) object(depth int) (any, error) {
	p.i++ // {
	m := map[string]any{}
	p.skipSpace()
	if p.i < len(p.b) && p.b[p.i] == '}' {
		p.i++
		return m, nil
	}
	for {
		p.skipSpace()
		if p.i >= len(p.b) || p.b[p.i] != '"' {
			return nil, p.errorf("expected a member name")
		}
		k, err := p.str()
		if err != nil {
			return nil, err
		}
		p.skipSpace()
		if p.i >= len(p.b) || p.b[p.i] != ':' {
			return nil, p.errorf("expected ':'")
		}
		p.i++
		p.skipSpace()
		v, err := p.value(depth + 1)
		if err != nil {
			return nil, err
		}
		m[k] = v
		p.skipSpace()
		if p.i >= len(p.b) {
			return nil, p.errorf("unexpected end of input in an object")
		}
		switch p.b[p.i] {
		case ',':
			p.i++
		case '}':
			p.i++
			return m, nil
		default:
			return nil, p.errorf("expected ',' or '}'")
		}
	}
}

func (p *jsonParser) array(depth int) (any, error) {
	p.i++ // [
	a := []any{}
	p.skipSpace()
	if p.i < len(p.b) && p.b[p.i] == ']' {
		p.i++
		return a, nil
	}
	for {
		p.skipSpace()
		v, err := p.value(depth + 1)
		if err != nil {
			return nil, err
		}
		a = append(a, v)
		p.skipSpace()
		if p.i >= len(p.b) {
			return nil, p.errorf("unexpected end of input in an array")
		}
		switch p.b[p.i] {
		case ',':
			p.i++
		case ']':
			p.i++
			return a, nil
		default:
			return nil, p.errorf("expected ',' or ']'")
		}
	}
}

var errBadString = errors.New("invalid string")

// strValue parses a string value: a rawString when it is simple, else a
// string.
func (p *jsonParser) strValue() (any, error) {
	rest := p.b[p.i+1:]
	if j := bytes.IndexByte(rest, '"'); j >= 0 && simpleString(rest[:j]) {
		p.i += j + 2
		return rawString(rest[:j:j]), nil
	}
	return p.str()
}

// simpleString reports whether raw, the bytes of a JSON string between
// its quotes, has no escape, control character or non-ASCII byte. It
// looks at eight bytes at a time: a request's base64 blob is most of its
// body.
func simpleString(raw []byte) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	for len(raw) >= 8 {
		x := binary.LittleEndian.Uint64(raw)
		bs := x ^ (ones * '\\') // a zero byte where raw has a backslash
		// A high bit set: a byte of 0x80 or more, one under 0x20 (x - 0x20
		// borrows into it), or a backslash (bs - 1 borrows).
		if (x|(x-ones*0x20)&^x|(bs-ones)&^bs)&highs != 0 {
			return false
		}
		raw = raw[8:]
	}
	for _, c := range raw {
		if c < 0x20 || c >= 0x80 || c == '\\' {
			return false
		}
	}
	return true
}

// str parses a string literal. One without escapes or control characters
// is copied as is; any other goes through encoding/json.
func (p *jsonParser) str() (string, error) {
	start := p.i
	p.i++ // "
	rest := p.b[p.i:]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return "", p.errorf("unterminated string")
	}
	raw := rest[:j]
	if simpleString(raw) {
		p.i += j + 1
		return string(raw), nil
	}
	// Find the real end of the string: a quote not escaped.
	k := p.i
	for {
		if k >= len(p.b) {
			return "", p.errorf("unterminated string")
		}
		c := p.b[k]
		if c == '\\' {
			k += 2
			continue
		}
		if c == '"' {
			break
		}
		k++
	}
	var s string
	if err := json.Unmarshal(p.b[start:k+1], &s); err != nil {
		p.i = start
		return "", p.errorf("%v", errBadString)
	}
	p.i = k + 1
	return s, nil
}

// number checks the JSON number grammar and returns it as a json.Number.
func (p *jsonParser) number() (any, error) {
	start := p.i
	b := p.b
	i := p.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
			n++
		}
		return n
	}
	if i < len(b) && b[i] == '0' {
		i++
	} else if digits() == 0 {
		p.i = i
		return nil, p.errorf("invalid number")
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			p.i = i
			return nil, p.errorf("invalid number")
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			p.i = i
			return nil, p.errorf("invalid number")
		}
	}
	p.i = i
	return json.Number(b[start:i]), nil
}

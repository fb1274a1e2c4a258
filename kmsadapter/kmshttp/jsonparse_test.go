package kmshttp

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

func stdParse(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.InputOffset() != int64(len(bytes.TrimRight(b, " \t\r\n"))) {
		return nil, json.Unmarshal(b, &v) // data after the value
	}
	return v, nil
}

// FuzzParseJSON checks parseJSON against encoding/json: the same value
// for every document encoding/json accepts, an error for every one it
// refuses (deep nesting aside).
func FuzzParseJSON(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"a":"b"}`, `{"a":[1,2.5,-3e7,true,false,null]}`, `"\u00e9\n"`, `{"a":"é"}`, `[{"a":{"b":[]}}]`,
		`{"a" : "b" , "c" : 1 }`, `01`, `1.`, `-`, `"abc`, `{"a":1,}`, `[1 2]`, "\"\x01\"", `"\\"`, `"a\"b"`, `{"a":"\ud800"}`,
		`{"Plaintext":"aGVsbG8="} x`, `nul`, `1e`, `[`, ` {} `,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := parseJSON(b)
		want, werr := stdParse(b)
		if werr != nil {
			if err == nil && !bytes.Contains(b, bytes.Repeat([]byte("["), maxDepth)) {
				t.Fatalf("%q: parseJSON accepted what encoding/json refuses (%v): %#v", b, werr, got)
			}
			return
		}
		if err != nil {
			if depth(want) > maxDepth {
				return
			}
			t.Fatalf("%q: parseJSON refused (%v) what encoding/json accepts", b, err)
		}
		if !reflect.DeepEqual(normalize(got), want) {
			t.Fatalf("%q: parseJSON %#v, encoding/json %#v", b, got, want)
		}
	})
}

func depth(v any) int {
	switch x := v.(type) {
	case []any:
		d := 0
		for _, e := range x {
			d = max(d, depth(e))
		}
		return d + 1
	case map[string]any:
		d := 0
		for _, e := range x {
			d = max(d, depth(e))
		}
		return d + 1
	}
	return 0
}

// normalize turns rawStrings into strings, as encoding/json gives them.
func normalize(v any) any {
	switch x := v.(type) {
	case rawString:
		return string(x)
	case []any:
		for i := range x {
			x[i] = normalize(x[i])
		}
	case map[string]any:
		for k := range x {
			x[k] = normalize(x[k])
		}
	}
	return v
}

// simpleString agrees with a byte-by-byte check on every length and
// position of a byte that makes a string not simple.
func TestSimpleString(t *testing.T) {
	ref := func(raw []byte) bool {
		for _, c := range raw {
			if c < 0x20 || c >= 0x80 || c == '\\' {
				return false
			}
		}
		return true
	}
	for n := 0; n <= 40; n++ {
		for pos := -1; pos < n; pos++ {
			for c := 0; c < 256; c++ {
				b := bytes.Repeat([]byte("aZ+/9="), 7)[:n]
				if pos >= 0 {
					b[pos] = byte(c)
				}
				if got, want := simpleString(b), ref(b); got != want {
					t.Fatalf("%q: simpleString %v, want %v", b, got, want)
				}
				if pos < 0 {
					break
				}
			}
		}
	}
}

// FuzzSimpleString checks simpleString against a byte-by-byte check.
func FuzzSimpleString(f *testing.F) {
	f.Add([]byte("aGVsbG8gd29ybGQ="))
	f.Add([]byte("abcdefg\\hij\x1f\x7f\x80"))
	f.Fuzz(func(t *testing.T, b []byte) {
		want := true
		for _, c := range b {
			if c < 0x20 || c >= 0x80 || c == '\\' {
				want = false
			}
		}
		if simpleString(b) != want {
			t.Fatalf("%q: simpleString %v", b, !want)
		}
	})
}

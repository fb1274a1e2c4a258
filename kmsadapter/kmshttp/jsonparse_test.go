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

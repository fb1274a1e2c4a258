package kmshttp

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"time"
)

// The AWS JSON 1.1 encoding of the KMS shapes, done by reflection over the
// SDK's own input and output types: members by their Go field names (which
// are the model's member names), blobs as standard base64, timestamps as
// epoch seconds, absent members omitted. encoding/json alone does not fit:
// it writes time.Time as RFC 3339, matches member names without regard to
// case, and would serialize the outputs' ResultMetadata.

var timeType = reflect.TypeFor[time.Time]()

// decodeInput decodes body, a JSON object, into in (a pointer to a struct).
// An empty body is an empty object. The error is a SerializationException.
func decodeInput(body []byte, in any) error {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil
	}
	doc, err := parseJSON(body)
	if err != nil {
		return serializationErr("the request body is not valid JSON: %v", err)
	}
	if _, ok := doc.(map[string]any); !ok {
		return serializationErr("the request body must be a JSON object")
	}
	return assign(reflect.ValueOf(in).Elem(), doc, "")
}

func assign(v reflect.Value, x any, path string) error {
	if x == nil {
		return nil // JSON null: the member is absent
	}
	name := func() string {
		if path == "" {
			return "the request"
		}
		return "member " + path
	}
	wrong := func(want string) error {
		return serializationErr("%s must be %s, not %s", name(), want, jsonKind(x))
	}
	switch v.Kind() {
	case reflect.Pointer:
		e := reflect.New(v.Type().Elem())
		if err := assign(e.Elem(), x, path); err != nil {
			return err
		}
		v.Set(e)
	case reflect.String:
		s, ok := stringOf(x)
		if !ok {
			return wrong("a string")
		}
		v.SetString(s)
	case reflect.Bool:
		b, ok := x.(bool)
		if !ok {
			return wrong("a boolean")
		}
		v.SetBool(b)
	case reflect.Int32, reflect.Int64, reflect.Int:
		n, ok := x.(json.Number)
		if !ok {
			return wrong("a number")
		}
		i, err := strconv.ParseInt(n.String(), 10, v.Type().Bits())
		if err != nil {
			return serializationErr("%s must be an integer that fits %d bits", name(), v.Type().Bits())
		}
		v.SetInt(i)
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			var src []byte
			switch s := x.(type) {
			case rawString:
				src = s // decoded straight from the request body
			case string:
				src = []byte(s)
			default:
				return wrong("a base64 string")
			}
			b := make([]byte, base64.StdEncoding.DecodedLen(len(src)))
			n, err := base64.StdEncoding.Decode(b, src)
			if err != nil {
				return serializationErr("%s is not valid base64", name())
			}
			v.SetBytes(b[:n])
			return nil
		}
		a, ok := x.([]any)
		if !ok {
			return wrong("an array")
		}
		s := reflect.MakeSlice(v.Type(), len(a), len(a))
		for i, e := range a {
			if err := assign(s.Index(i), e, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		v.Set(s)
	case reflect.Map:
		if v.Type().Key().Kind() != reflect.String {
			return serializationErr("%s cannot be decoded", name())
		}
		m, ok := x.(map[string]any)
		if !ok {
			return wrong("an object")
		}
		out := reflect.MakeMapWithSize(v.Type(), len(m))
		for k, e := range m {
			ev := reflect.New(v.Type().Elem()).Elem()
			if err := assign(ev, e, path+"."+k); err != nil {
				return err
			}
			out.SetMapIndex(reflect.ValueOf(k).Convert(v.Type().Key()), ev)
		}
		v.Set(out)
	case reflect.Struct:
		if v.Type() == timeType {
			n, ok := x.(json.Number)
			if !ok {
				return wrong("a timestamp in epoch seconds")
			}
			f, err := n.Float64()
			if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || math.Abs(f) > 1e11 {
				return serializationErr("%s is not a valid timestamp", name())
			}
			sec, frac := math.Modf(f)
			v.Set(reflect.ValueOf(time.Unix(int64(sec), int64(frac*1e9)).UTC()))
			return nil
		}
		m, ok := x.(map[string]any)
		if !ok {
			return wrong("an object")
		}
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() || f.Name == "ResultMetadata" {
				continue
			}
			e, ok := m[f.Name]
			if !ok {
				continue
			}
			p := f.Name
			if path != "" {
				p = path + "." + f.Name
			}
			if err := assign(v.Field(i), e, p); err != nil {
				return err
			}
		}
	default:
		return serializationErr("%s cannot be decoded", name())
	}
	return nil
}

// stringOf returns the value of a JSON string, whichever form the parser
// gave it.
func stringOf(x any) (string, bool) {
	switch s := x.(type) {
	case string:
		return s, true
	case rawString:
		return string(s), true
	}
	return "", false
}

func jsonKind(x any) string {
	switch x.(type) {
	case string, rawString:
		return "a string"
	case bool:
		return "a boolean"
	case json.Number:
		return "a number"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return "null"
}

var errUnencodable = errors.New("kmshttp: output member cannot be encoded")

// encodeOutput appends the JSON encoding of out (a pointer to a struct).
func encodeOutput(buf *bytes.Buffer, out any) error {
	v := reflect.ValueOf(out)
	if v.Kind() == reflect.Pointer && v.IsNil() {
		buf.WriteString("{}")
		return nil
	}
	return encode(buf, v)
}

func encode(buf *bytes.Buffer, v reflect.Value) error {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			buf.WriteString("null")
			return nil
		}
		return encode(buf, v.Elem())
	case reflect.String:
		writeString(buf, v.String())
	case reflect.Bool:
		buf.WriteString(strconv.FormatBool(v.Bool()))
	case reflect.Int, reflect.Int32, reflect.Int64:
		buf.WriteString(strconv.FormatInt(v.Int(), 10))
	case reflect.Float32, reflect.Float64:
		buf.WriteString(strconv.FormatFloat(v.Float(), 'g', -1, 64))
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			b := v.Bytes()
			buf.WriteByte('"')
			buf.Grow(base64.StdEncoding.EncodedLen(len(b)) + 1)
			buf.Write(base64.StdEncoding.AppendEncode(buf.AvailableBuffer(), b)) // encodes in place: no copy allocated
			buf.WriteByte('"')
			return nil
		}
		buf.WriteByte('[')
		for i := range v.Len() {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := encode(buf, v.Index(i)); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	case reflect.Map:
		buf.WriteByte('{')
		iter := v.MapRange()
		first := true
		for iter.Next() {
			if !first {
				buf.WriteByte(',')
			}
			first = false
			writeString(buf, iter.Key().String())
			buf.WriteByte(':')
			if err := encode(buf, iter.Value()); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	case reflect.Struct:
		if v.Type() == timeType {
			t := v.Interface().(time.Time)
			buf.WriteString(strconv.FormatFloat(float64(t.UnixMilli())/1e3, 'f', -1, 64))
			return nil
		}
		buf.WriteByte('{')
		first := true
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() || f.Name == "ResultMetadata" {
				continue
			}
			fv := v.Field(i)
			if absent(fv) {
				continue
			}
			if !first {
				buf.WriteByte(',')
			}
			first = false
			writeString(buf, f.Name)
			buf.WriteByte(':')
			if err := encode(buf, fv); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	default:
		return fmt.Errorf("%w: %s", errUnencodable, v.Type())
	}
	return nil
}

// absent reports whether a member is left out of the output: nil
// pointers, slices, maps and interfaces, and empty enum values.
func absent(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Map, reflect.Interface:
		return v.IsNil()
	case reflect.String:
		return v.Len() == 0
	}
	return false
}

func writeString(buf *bytes.Buffer, s string) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			b, _ := json.Marshal(s)
			buf.Write(b)
			return
		}
	}
	buf.WriteByte('"')
	buf.WriteString(s)
	buf.WriteByte('"')
}

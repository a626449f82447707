package ovo

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// Codec encodes and decodes object primitives for one project: the
// primitive keys are SerialNamespace + "." + name/namespace/version/data/
// changes (oslo's OBJ_SERIAL_NAMESPACE) and the "namespace" value is
// ProjectNamespace (OBJ_PROJECT_NAMESPACE). A Codec is a plain value, safe
// for concurrent use.
type Codec struct {
	// SerialNamespace is the key prefix: "nova_object" or
	// "versioned_object".
	SerialNamespace string
	// ProjectNamespace is the namespace objects must have: "nova" or
	// "cinder". Decoding an object of another namespace fails, as oslo's
	// obj_from_primitive does. Empty accepts any namespace.
	ProjectNamespace string
}

// NovaCodec returns the codec of nova objects ("nova_object.*", namespace
// "nova").
func NovaCodec() Codec { return Codec{SerialNamespace: "nova_object", ProjectNamespace: "nova"} }

// CinderCodec returns the codec of cinder objects ("versioned_object.*",
// namespace "cinder").
func CinderCodec() Codec {
	return Codec{SerialNamespace: "versioned_object", ProjectNamespace: "cinder"}
}

// Key returns the primitive key of a part: "name", "namespace", "version",
// "data" or "changes".
func (c Codec) Key(part string) string { return c.SerialNamespace + "." + part }

// IsPrimitive reports whether v is a decoded JSON object carrying this
// codec's name key, the test oslo's deserialize_entity applies.
func (c Codec) IsPrimitive(v any) bool {
	m, ok := v.(map[string]any)
	if !ok {
		return false
	}
	_, ok = m[c.Key("name")]
	return ok
}

// UnsupportedObjectError is returned for an object of another project
// namespace (oslo's UnsupportedObjectError).
type UnsupportedObjectError struct {
	Namespace, Name string
}

// Error implements error.
func (e *UnsupportedObjectError) Error() string {
	return fmt.Sprintf("ovo: unsupported object type %s.%s", e.Namespace, e.Name)
}

// Encode returns the primitive of o, as oslo's obj_to_primitive() builds
// it: name, namespace, version, data with every set field (nested objects
// as primitives), and changes = [Object.WhatChanged] restricted to set
// fields, present only when non-empty. The result holds only JSON values
// (maps, slices, strings, json.Number, bools, nil).
func (c Codec) Encode(o *Object) (map[string]any, error) {
	return c.encode(o, 0)
}

const maxDepth = 1000

func (c Codec) encode(o *Object, depth int) (map[string]any, error) {
	if depth > maxDepth {
		return nil, errors.New("ovo: objects nested too deeply")
	}
	if o == nil {
		return nil, errors.New("ovo: encode of a nil object")
	}
	if o.Name == "" || o.Version == "" {
		return nil, fmt.Errorf("ovo: object %q without name or version", o.Name)
	}
	data := make(map[string]any, len(o.Fields))
	for k, v := range o.Fields {
		p, err := c.encodeValue(v, depth+1)
		if err != nil {
			return nil, fmt.Errorf("%s.%s: %w", o.Name, k, err)
		}
		data[k] = p
	}
	ns := o.Namespace
	if ns == "" {
		ns = c.ProjectNamespace
	}
	prim := map[string]any{
		c.Key("name"):      o.Name,
		c.Key("namespace"): ns,
		c.Key("version"):   o.Version,
		c.Key("data"):      data,
	}
	var changes []any
	for _, n := range o.WhatChanged() {
		if _, ok := o.Fields[n]; ok {
			changes = append(changes, n)
		}
	}
	if len(changes) > 0 {
		prim[c.Key("changes")] = changes
	}
	return prim, nil
}

func (c Codec) encodeValue(v any, depth int) (any, error) {
	if depth > maxDepth {
		return nil, errors.New("ovo: value nested too deeply")
	}
	switch t := v.(type) {
	case *Object:
		if t == nil {
			return nil, nil
		}
		return c.encode(t, depth)
	case []*Object:
		out := make([]any, len(t))
		for i, x := range t {
			p, err := c.encodeValue(x, depth+1)
			if err != nil {
				return nil, err
			}
			out[i] = p
		}
		return out, nil
	case []any:
		out := make([]any, len(t))
		for i, x := range t {
			p, err := c.encodeValue(x, depth+1)
			if err != nil {
				return nil, err
			}
			out[i] = p
		}
		return out, nil
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, x := range t {
			p, err := c.encodeValue(x, depth+1)
			if err != nil {
				return nil, err
			}
			out[k] = p
		}
		return out, nil
	case nil, bool, string, json.Number, json.RawMessage:
		return t, nil
	}
	p, err := ToPrimitive(v)
	if err != nil {
		return nil, err
	}
	if _, ok := p.(*Object); ok {
		return c.encodeValue(p, depth+1)
	}
	switch p.(type) {
	case []any, map[string]any:
		return c.encodeValue(p, depth+1)
	}
	return p, nil
}

// Marshal returns the JSON of o's primitive.
func (c Codec) Marshal(o *Object) ([]byte, error) {
	p, err := c.Encode(o)
	if err != nil {
		return nil, err
	}
	return json.Marshal(p)
}

// EncodeEntity is oslo's serialize_entity: it walks lists and string-keyed
// maps (and []*Object) and replaces every *Object by its primitive; other
// values go through [ToPrimitive] (so time.Time, ints and floats get their
// wire form). json.RawMessage is passed through as is.
func (c Codec) EncodeEntity(v any) (any, error) {
	return c.encodeValue(v, 0)
}

// Decode builds an object from a decoded primitive (as oslo's
// obj_from_primitive does): v is a map[string]any holding the codec's keys.
// Nested primitives anywhere in data (object fields, lists of objects,
// ObjectList "objects") become *Object. Numbers may be json.Number or
// float64 (from a decoder without UseNumber); they are kept as json.Number.
// "changes" is taken as given.
func (c Codec) Decode(v any) (*Object, error) {
	return c.decodeObject(v, 0)
}

func (c Codec) decodeObject(v any, depth int) (*Object, error) {
	if depth > maxDepth {
		return nil, errors.New("ovo: objects nested too deeply")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("ovo: object primitive is a %T, not a JSON object", v)
	}
	str := func(part string) (string, error) {
		x, ok := m[c.Key(part)]
		if !ok {
			return "", fmt.Errorf("ovo: primitive without %q", c.Key(part))
		}
		s, ok := x.(string)
		if !ok {
			return "", fmt.Errorf("ovo: %q is a %T, not a string", c.Key(part), x)
		}
		return s, nil
	}
	name, err := str("name")
	if err != nil {
		return nil, err
	}
	if name == "" {
		return nil, fmt.Errorf("ovo: empty %q", c.Key("name"))
	}
	ns, err := str("namespace")
	if err != nil {
		return nil, err
	}
	if c.ProjectNamespace != "" && ns != c.ProjectNamespace {
		return nil, &UnsupportedObjectError{Namespace: ns, Name: name}
	}
	ver, err := str("version")
	if err != nil {
		return nil, err
	}
	if _, err := parseVersion(ver); err != nil {
		return nil, fmt.Errorf("ovo: %s: %w", name, err)
	}
	rawData, ok := m[c.Key("data")]
	if !ok {
		return nil, fmt.Errorf("ovo: %s primitive without %q", name, c.Key("data"))
	}
	data, ok := rawData.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("ovo: %s %q is a %T, not a JSON object", name, c.Key("data"), rawData)
	}
	o := &Object{Name: name, Namespace: ns, Version: ver, Fields: make(map[string]any, len(data))}
	for k, x := range data {
		val, err := c.decodeValue(x, depth+1)
		if err != nil {
			return nil, fmt.Errorf("%s.%s: %w", name, k, err)
		}
		o.Fields[k] = val
	}
	if rawChanges, ok := m[c.Key("changes")]; ok && rawChanges != nil {
		l, ok := rawChanges.([]any)
		if !ok {
			return nil, fmt.Errorf("ovo: %s %q is a %T, not a list", name, c.Key("changes"), rawChanges)
		}
		for _, x := range l {
			s, ok := x.(string)
			if !ok {
				return nil, fmt.Errorf("ovo: %s %q holds a %T", name, c.Key("changes"), x)
			}
			o.MarkChanged(s)
		}
	}
	return o, nil
}

func (c Codec) decodeValue(v any, depth int) (any, error) {
	if depth > maxDepth {
		return nil, errors.New("ovo: value nested too deeply")
	}
	switch t := v.(type) {
	case map[string]any:
		if c.IsPrimitive(t) {
			return c.decodeObject(t, depth)
		}
		out := make(map[string]any, len(t))
		for k, x := range t {
			val, err := c.decodeValue(x, depth+1)
			if err != nil {
				return nil, err
			}
			out[k] = val
		}
		return out, nil
	case []any:
		out := make([]any, len(t))
		for i, x := range t {
			val, err := c.decodeValue(x, depth+1)
			if err != nil {
				return nil, err
			}
			out[i] = val
		}
		return out, nil
	case nil, bool, string, json.Number, *Object:
		return t, nil
	case float64:
		if math.IsNaN(t) || math.IsInf(t, 0) {
			return nil, fmt.Errorf("ovo: float %v is not JSON", t)
		}
		if t == math.Trunc(t) && math.Abs(t) < 1e15 {
			return json.Number(strconv.FormatInt(int64(t), 10)), nil
		}
		return json.Number(FormatFloat(t)), nil
	case json.RawMessage:
		x, err := decodeJSONValue(t)
		if err != nil {
			return nil, err
		}
		return c.decodeValue(x, depth+1)
	}
	p, err := ToPrimitive(v)
	if err != nil {
		return nil, err
	}
	return c.decodeValue(p, depth+1)
}

// Unmarshal decodes the JSON of an object primitive.
func (c Codec) Unmarshal(data []byte) (*Object, error) {
	v, err := decodeJSONValue(data)
	if err != nil {
		return nil, err
	}
	return c.Decode(v)
}

// DecodeEntity is oslo's deserialize_entity: it walks decoded JSON (lists
// and maps) and turns every primitive of this codec into an *Object,
// leaving other values as they are (numbers as json.Number when given as
// float64 are converted too). It is what a receiver applies to RPC
// arguments and to call results.
func (c Codec) DecodeEntity(v any) (any, error) {
	return c.decodeValue(v, 0)
}

// UnmarshalEntity decodes JSON (numbers kept exact) and applies
// [Codec.DecodeEntity].
func (c Codec) UnmarshalEntity(data []byte) (any, error) {
	v, err := decodeJSONValue(data)
	if err != nil {
		return nil, err
	}
	return c.decodeValue(v, 0)
}

// decodeJSONValue decodes one JSON value with json.Number for numbers and
// rejects trailing data.
func decodeJSONValue(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("ovo: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("ovo: trailing data after JSON value")
	}
	return v, nil
}

// parseVersion parses "X.Y" or "X.Y.Z" (oslo's convert_version_to_tuple
// accepts any number of integer parts).
func parseVersion(v string) ([]int, error) {
	if v == "" {
		return nil, errors.New("empty version")
	}
	parts := strings.Split(v, ".")
	out := make([]int, len(parts))
	for i, p := range parts {
		if p == "" || len(p) > 9 || strings.TrimLeft(p, "0123456789") != "" {
			return nil, fmt.Errorf("invalid version %q", v)
		}
		out[i], _ = strconv.Atoi(p)
	}
	return out, nil
}

package ovo

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"time"
)

// Object is one versioned object in primitive form, the Go counterpart of
// an oslo VersionedObject as it travels on the bus.
//
// Fields holds only the fields that are set (oslo's obj_attr_is_set); a
// field set to None is present with a nil value. Values are kept in their
// wire (primitive) form so that an object received and sent back is
// unchanged: nil, bool, string, json.Number, []any, map[string]any, and
// *Object for nested objects (lists of objects are []any holding *Object).
// Use [Object.Set] and the typed setters rather than writing Fields
// directly, so that changes are tracked and values are converted.
//
// Changes holds the names of the fields changed on this object itself, in
// the order they were first changed (oslo keeps a set; order carries no
// meaning). Nested objects track their own changes; [Object.WhatChanged]
// combines both as oslo's obj_what_changed does.
type Object struct {
	// Name is the registry name of the class, e.g. "Instance".
	Name string
	// Namespace is the project namespace, "nova" or "cinder". Empty means
	// the namespace of the Codec that encodes the object.
	Namespace string
	// Version is the object version, e.g. "2.7".
	Version string
	// Fields maps set field names to primitive values.
	Fields map[string]any
	// Changes lists the fields changed on this object itself.
	Changes []string
}

// New returns an empty object of the given class and version, with no
// field set and no changes.
func New(name, version string) *Object {
	return &Object{Name: name, Version: version, Fields: map[string]any{}}
}

// NewList returns an ObjectList object (e.g. "BlockDeviceMappingList")
// whose "objects" field holds items. As in oslo's ObjectListBase
// constructor given objects, "objects" is marked changed.
func NewList(name, version string, items ...*Object) *Object {
	o := New(name, version)
	o.SetObjects("objects", items)
	return o
}

// MarshalJSON refuses to marshal an Object on its own: the primitive keys
// depend on the namespace prefix, so objects must be encoded through a
// Codec (see [Codec.Encode] and [Codec.EncodeEntity]).
func (o *Object) MarshalJSON() ([]byte, error) {
	return nil, errors.New("ovo: an *Object must be encoded with a Codec (Codec.Encode / EncodeEntity)")
}

// Has reports whether the field is set (oslo's obj_attr_is_set).
func (o *Object) Has(name string) bool {
	_, ok := o.Fields[name]
	return ok
}

// Get returns the primitive value of a field and whether it is set.
func (o *Object) Get(name string) (any, bool) {
	v, ok := o.Fields[name]
	return v, ok
}

// IsNull reports whether the field is set to None.
func (o *Object) IsNull(name string) bool {
	v, ok := o.Fields[name]
	return ok && v == nil
}

// Set sets a field and marks it changed, as assigning an attribute of an
// oslo object does (even when the value is the same). The value is
// converted to its primitive form by [ToPrimitive]; an unsupported type is
// an error and leaves the object untouched.
func (o *Object) Set(name string, value any) error {
	p, err := ToPrimitive(value)
	if err != nil {
		return fmt.Errorf("ovo: %s.%s: %w", o.Name, name, err)
	}
	o.setPrimitive(name, p)
	return nil
}

func (o *Object) setPrimitive(name string, p any) {
	if o.Fields == nil {
		o.Fields = map[string]any{}
	}
	o.Fields[name] = p
	o.MarkChanged(name)
}

// SetNull sets a field to None and marks it changed.
func (o *Object) SetNull(name string) { o.setPrimitive(name, nil) }

// Delete unsets a field (oslo's delattr). Like oslo it does not touch the
// change list; [Codec.Encode] leaves out changes of unset fields.
func (o *Object) Delete(name string) { delete(o.Fields, name) }

// MarkChanged adds fields to the object's own change list.
func (o *Object) MarkChanged(names ...string) {
	for _, n := range names {
		if !slices.Contains(o.Changes, n) {
			o.Changes = append(o.Changes, n)
		}
	}
}

// WhatChanged returns the changed fields as oslo's obj_what_changed does:
// the object's own changes, plus every field holding a nested object that
// has changes itself, plus, for an ObjectList (a field named "objects"
// holding a list), "objects" when any listed object has changes. Objects in
// other list fields do not propagate, exactly as in oslo.
func (o *Object) WhatChanged() []string {
	out := make([]string, 0, len(o.Changes))
	for _, n := range o.Changes {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	for _, name := range sortedKeys(o.Fields) {
		if slices.Contains(out, name) {
			continue
		}
		switch v := o.Fields[name].(type) {
		case *Object:
			if v != nil && len(v.WhatChanged()) > 0 {
				out = append(out, name)
			}
		case []any:
			if name != "objects" {
				continue
			}
			for _, item := range v {
				if child, ok := item.(*Object); ok && child != nil && len(child.WhatChanged()) > 0 {
					out = append(out, name)
					break
				}
			}
		}
	}
	return out
}

// Changed reports whether the field is among [Object.WhatChanged].
func (o *Object) Changed(name string) bool {
	return slices.Contains(o.WhatChanged(), name)
}

// ResetChanges forgets the object's own changes to the given fields, or to
// all fields when none is given (oslo's obj_reset_changes(fields)). Nested
// objects keep their changes.
func (o *Object) ResetChanges(fields ...string) {
	if len(fields) == 0 {
		o.Changes = nil
		return
	}
	o.Changes = slices.DeleteFunc(o.Changes, func(n string) bool { return slices.Contains(fields, n) })
	if len(o.Changes) == 0 {
		o.Changes = nil
	}
}

// ResetChangesRecursive is oslo's obj_reset_changes(fields, recursive=True):
// for every changed field (restricted to fields when given) that holds an
// object or a list of objects, those objects are reset recursively (all
// their fields); then the object's own changes are reset as
// [Object.ResetChanges] does.
func (o *Object) ResetChangesRecursive(fields ...string) {
	for _, name := range o.WhatChanged() {
		if len(fields) > 0 && !slices.Contains(fields, name) {
			continue
		}
		switch v := o.Fields[name].(type) {
		case *Object:
			if v != nil {
				v.ResetChangesRecursive()
			}
		case []any:
			for _, item := range v {
				if child, ok := item.(*Object); ok && child != nil {
					child.ResetChangesRecursive()
				}
			}
		}
	}
	o.ResetChanges(fields...)
}

// Clone returns a deep copy of the object (oslo's obj_clone).
func (o *Object) Clone() *Object {
	if o == nil {
		return nil
	}
	c := &Object{Name: o.Name, Namespace: o.Namespace, Version: o.Version}
	if o.Fields != nil {
		c.Fields = make(map[string]any, len(o.Fields))
		for k, v := range o.Fields {
			c.Fields[k] = cloneValue(v)
		}
	}
	if o.Changes != nil {
		c.Changes = slices.Clone(o.Changes)
	}
	return c
}

func cloneValue(v any) any {
	switch t := v.(type) {
	case *Object:
		return t.Clone()
	case []any:
		out := make([]any, len(t))
		for i, x := range t {
			out[i] = cloneValue(x)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, x := range t {
			out[k] = cloneValue(x)
		}
		return out
	default:
		return v
	}
}

// ToPrimitive converts a Go value to the primitive form kept in
// [Object.Fields], applying oslo's field wire formats:
//
//   - nil, bool, string, json.Number and *Object are kept;
//   - integers become json.Number; floats become json.Number written as
//     Python writes a float ("16.0", "1e+16"); NaN and infinities are
//     rejected (they are not JSON);
//   - time.Time becomes a DateTimeField string ([FormatDateTime]);
//   - netip.Addr and netip.Prefix become their string form (IPAddress and
//     IPNetwork fields);
//   - json.RawMessage is decoded (numbers kept exact); nested primitives
//     in it stay maps: use [Codec.DecodeEntity] for those;
//   - slices and arrays become []any, maps with string keys become
//     map[string]any, converting each element (a set field is sent as a
//     list: pass a slice);
//   - pointers are dereferenced (a nil pointer is None).
func ToPrimitive(v any) (any, error) {
	switch t := v.(type) {
	case nil:
		return nil, nil
	case *Object:
		if t == nil {
			return nil, nil
		}
		return t, nil
	case bool, string, json.Number:
		return t, nil
	case time.Time:
		return FormatDateTime(t), nil
	case netip.Addr:
		if !t.IsValid() {
			return nil, errors.New("invalid netip.Addr")
		}
		return t.String(), nil
	case netip.Prefix:
		if !t.IsValid() {
			return nil, errors.New("invalid netip.Prefix")
		}
		return t.String(), nil
	case json.RawMessage:
		return decodeJSONValue(t)
	case []any:
		out := make([]any, len(t))
		for i, x := range t {
			p, err := ToPrimitive(x)
			if err != nil {
				return nil, err
			}
			out[i] = p
		}
		return out, nil
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, x := range t {
			p, err := ToPrimitive(x)
			if err != nil {
				return nil, err
			}
			out[k] = p
		}
		return out, nil
	case []*Object:
		out := make([]any, len(t))
		for i, x := range t {
			if x == nil {
				out[i] = nil
			} else {
				out[i] = x
			}
		}
		return out, nil
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return json.Number(fmt.Sprint(rv.Int())), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return json.Number(fmt.Sprint(rv.Uint())), nil
	case reflect.Float32, reflect.Float64:
		f := rv.Float()
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("float %v is not JSON", f)
		}
		return json.Number(FormatFloat(f)), nil
	case reflect.String:
		return rv.String(), nil
	case reflect.Bool:
		return rv.Bool(), nil
	case reflect.Pointer, reflect.Interface:
		if rv.IsNil() {
			return nil, nil
		}
		return ToPrimitive(rv.Elem().Interface())
	case reflect.Slice, reflect.Array:
		if rv.Kind() == reflect.Slice && rv.IsNil() {
			return []any{}, nil
		}
		out := make([]any, rv.Len())
		for i := range out {
			p, err := ToPrimitive(rv.Index(i).Interface())
			if err != nil {
				return nil, err
			}
			out[i] = p
		}
		return out, nil
	case reflect.Map:
		if rv.Type().Key().Kind() != reflect.String {
			return nil, fmt.Errorf("map key type %s is not a string", rv.Type().Key())
		}
		out := make(map[string]any, rv.Len())
		iter := rv.MapRange()
		for iter.Next() {
			p, err := ToPrimitive(iter.Value().Interface())
			if err != nil {
				return nil, err
			}
			out[iter.Key().String()] = p
		}
		return out, nil
	}
	return nil, fmt.Errorf("unsupported value type %T", v)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

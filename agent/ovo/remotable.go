package ovo

import (
	"encoding/json"
	"fmt"
	"maps"
)

// Method names of nova-conductor's object indirection API (ConductorAPI,
// RPC version 3.0, topic "conductor").
const (
	MethodObjectClassActionVersions = "object_class_action_versions"
	MethodObjectAction              = "object_action"
	MethodObjectBackportVersions    = "object_backport_versions"
)

// ObjWhatChangedKey is the key of an object_action reply's updates that
// carries the object's obj_what_changed() after the call.
const ObjWhatChangedKey = "obj_what_changed"

func (c Codec) callArgs(args []any, kwargs map[string]any) (any, any, error) {
	if args == nil {
		args = []any{}
	}
	if kwargs == nil {
		kwargs = map[string]any{}
	}
	a, err := c.EncodeEntity(args)
	if err != nil {
		return nil, nil, fmt.Errorf("ovo: args: %w", err)
	}
	k, err := c.EncodeEntity(kwargs)
	if err != nil {
		return nil, nil, fmt.Errorf("ovo: kwargs: %w", err)
	}
	return a, k, nil
}

// ClassActionArgs returns the message "args" of object_class_action_versions
// as oslo's remotable_classmethod sends them through nova's ConductorAPI:
// objname, objmethod, object_versions (the caller's manifest, normally
// [Registry.TreeVersions] of objname), args (positional arguments after the
// context; nil sends []) and kwargs (nil sends {}). Objects among args and
// kwargs are encoded (serialize_entity).
//
// The reply's result is whatever the class method returned: an object
// primitive (already backported by conductor to object_versions[objname]),
// a list, a scalar or null; decode it with [Codec.UnmarshalEntity].
func (c Codec) ClassActionArgs(objname, objmethod string, objectVersions map[string]string, args []any, kwargs map[string]any) (map[string]any, error) {
	a, k, err := c.callArgs(args, kwargs)
	if err != nil {
		return nil, err
	}
	return map[string]any{
		"objname":         objname,
		"objmethod":       objmethod,
		"object_versions": versionsArg(objectVersions),
		"args":            a,
		"kwargs":          k,
	}, nil
}

// ObjectActionArgs returns the message "args" of object_action as oslo's
// remotable sends them: objinst is the whole primitive of obj (every set
// field, nested objects included, and its changes), then objmethod, args
// and kwargs (e.g. Instance.save's {"expected_task_state": [...]}).
//
// Apply the reply with [Codec.ApplyObjectActionReply].
func (c Codec) ObjectActionArgs(obj *Object, objmethod string, args []any, kwargs map[string]any) (map[string]any, error) {
	prim, err := c.Encode(obj)
	if err != nil {
		return nil, err
	}
	a, k, err := c.callArgs(args, kwargs)
	if err != nil {
		return nil, err
	}
	return map[string]any{
		"objinst":   prim,
		"objmethod": objmethod,
		"args":      a,
		"kwargs":    k,
	}, nil
}

// BackportArgs returns the message "args" of object_backport_versions:
// objinst is the object as received (an *Object is encoded, a decoded
// primitive or json.RawMessage is sent as is) and object_versions the
// receiver's manifest of the top object's class ([Registry.TreeVersions]).
// nova's serializer sends the primitive with an "X.Y.Z" version already cut
// to "X.Y". The reply's result is the object primitive at
// object_versions[name]; decode it with [Codec.Unmarshal].
func (c Codec) BackportArgs(objinst any, objectVersions map[string]string) (map[string]any, error) {
	p, err := c.EncodeEntity(objinst)
	if err != nil {
		return nil, err
	}
	return map[string]any{
		"objinst":         p,
		"object_versions": versionsArg(objectVersions),
	}, nil
}

// versionsArg copies a manifest; nil is sent as {} (Python always sends a
// dict).
func versionsArg(v map[string]string) map[string]string {
	if v == nil {
		return map[string]string{}
	}
	return maps.Clone(v)
}

// ObjectActionReply is the decoded result of an object_action call:
// conductor's (updates, result) pair.
type ObjectActionReply struct {
	// Updates maps each field that differs after the call (or that the
	// call set) to its value, nested objects decoded.
	Updates map[string]any
	// WhatChanged is the object's obj_what_changed() after the call.
	WhatChanged []string
	// Result is the method's return value, objects decoded.
	Result any
}

// DecodeObjectActionReply decodes the result of object_action: a
// two-element list [updates, result], updates holding "obj_what_changed".
func (c Codec) DecodeObjectActionReply(raw json.RawMessage) (*ObjectActionReply, error) {
	v, err := c.UnmarshalEntity(raw)
	if err != nil {
		return nil, err
	}
	pair, ok := v.([]any)
	if !ok || len(pair) != 2 {
		return nil, fmt.Errorf("ovo: object_action result is not [updates, result]: %T", v)
	}
	updates, ok := pair[0].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("ovo: object_action updates is a %T, not a JSON object", pair[0])
	}
	r := &ObjectActionReply{Updates: make(map[string]any, len(updates)), Result: pair[1]}
	for k, x := range updates {
		if k != ObjWhatChangedKey {
			r.Updates[k] = x
			continue
		}
		if x == nil {
			continue
		}
		l, ok := x.([]any)
		if !ok {
			return nil, fmt.Errorf("ovo: %s is a %T, not a list", ObjWhatChangedKey, x)
		}
		for _, n := range l {
			s, ok := n.(string)
			if !ok {
				return nil, fmt.Errorf("ovo: %s holds a %T", ObjWhatChangedKey, n)
			}
			r.WhatChanged = append(r.WhatChanged, s)
		}
	}
	return r, nil
}

// Apply applies the reply to the object the call was made on, as oslo's
// remotable does: every update is set on obj (only fields the class
// declares when known is non-nil and knows obj's class: a newer conductor
// may return fields this version does not have), then obj's own changes
// are reset (not recursively: nested objects keep the changes they came
// with) and replaced by WhatChanged.
func (r *ObjectActionReply) Apply(obj *Object, known *Registry) {
	var fields map[string]FieldSpec
	if known != nil {
		if s, ok := known.objects[obj.Name]; ok {
			fields = s.Fields
		}
	}
	if obj.Fields == nil {
		obj.Fields = map[string]any{}
	}
	for _, k := range sortedKeys(r.Updates) {
		if fields != nil {
			if _, ok := fields[k]; !ok {
				continue
			}
		}
		obj.Fields[k] = r.Updates[k]
	}
	obj.Changes = nil
	obj.MarkChanged(r.WhatChanged...)
}

// ApplyObjectActionReply decodes the result of object_action and applies
// it to obj (see [ObjectActionReply.Apply]); it returns the method's
// result.
func (c Codec) ApplyObjectActionReply(obj *Object, raw json.RawMessage, known *Registry) (any, error) {
	r, err := c.DecodeObjectActionReply(raw)
	if err != nil {
		return nil, err
	}
	r.Apply(obj, known)
	return r.Result, nil
}

package ovo

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
)

// FieldSpec describes one field of an object class as oslo declares it.
//
// Type names the wire form: "String" (also enums, UUID-less patterns and
// nova's address types), "UUID", "Integer", "Float", "Boolean",
// "DateTime", "IPAddress", "IPNetwork", "JSON" (nova's NetworkModel and
// NetworkVIFModel: a JSON document in a string), "Object<Name>" (with
// "|"-separated subclass names, "Object<Base|Sub1|Sub2>", for fields that
// accept subclasses), and the
// compound "List<T>", "Set<T>" (a list on the wire) and "Dict<T>" whose
// element type T ends in "?" when elements may be None.
type FieldSpec struct {
	Type     string
	Nullable bool
}

// ObjectSpec describes the newest version of one object class.
type ObjectSpec struct {
	// Version is the class's VERSION.
	Version string
	// List is true for ObjectListBase classes.
	List bool
	// Children are the classes of the ObjectField and ListOfObjectsField
	// fields, in declaration order, as oslo's obj_tree_get_versions walks
	// them.
	Children []string
	// Fields maps field names to their specs.
	Fields map[string]FieldSpec
}

func (s ObjectSpec) clone() ObjectSpec {
	s.Children = slices.Clone(s.Children)
	s.Fields = maps.Clone(s.Fields)
	return s
}

// Registry is an immutable object registry: the classes one service knows,
// each at its newest version (oslo's VersionedObjectRegistry as seen by
// obj_class_from_name and obj_tree_get_versions).
type Registry struct {
	objects map[string]ObjectSpec
}

// NewRegistry returns a registry of the given classes (copied).
func NewRegistry(objects map[string]ObjectSpec) *Registry {
	r := &Registry{objects: make(map[string]ObjectSpec, len(objects))}
	for k, v := range objects {
		r.objects[k] = v.clone()
	}
	return r
}

// NovaZed returns the registry of nova 26.2.2 (Zed): every class of
// nova.objects.register_all() at its newest version.
func NovaZed() *Registry { return &Registry{objects: novaZedObjects()} }

// CinderZed returns the registry of cinder 21.3.1 (Zed), objects history
// [CinderZedObjectsVersion].
func CinderZed() *Registry { return &Registry{objects: cinderZedObjects()} }

// NovaZedVersions returns a fresh map of every nova Zed class to its
// version (e.g. "Instance": "2.7", "ComputeNode": "1.19").
func NovaZedVersions() map[string]string { return NovaZed().Versions() }

// CinderZedVersions returns a fresh map of every cinder Zed class to its
// version (e.g. "Volume": "1.9", "Snapshot": "1.6").
func CinderZedVersions() map[string]string { return CinderZed().Versions() }

// Names returns the registered class names, sorted.
func (r *Registry) Names() []string { return sortedKeys(r.objects) }

// Lookup returns a copy of a class's spec.
func (r *Registry) Lookup(name string) (ObjectSpec, bool) {
	s, ok := r.objects[name]
	if !ok {
		return ObjectSpec{}, false
	}
	return s.clone(), true
}

// Version returns the version of a class.
func (r *Registry) Version(name string) (string, bool) {
	s, ok := r.objects[name]
	return s.Version, ok
}

// Versions returns a fresh map of every class to its version.
func (r *Registry) Versions() map[string]string {
	out := make(map[string]string, len(r.objects))
	for k, v := range r.objects {
		out[k] = v.Version
	}
	return out
}

// TreeVersions is oslo's obj_tree_get_versions(objname): the versions of
// objname and of every class reachable through its object and
// list-of-objects fields. This is the object_versions manifest of
// object_class_action_versions and object_backport_versions.
func (r *Registry) TreeVersions(objname string) (map[string]string, error) {
	tree := map[string]string{}
	if err := r.tree(objname, "", tree); err != nil {
		return nil, err
	}
	return tree, nil
}

func (r *Registry) tree(name, parent string, tree map[string]string) error {
	if _, ok := tree[name]; ok {
		return nil
	}
	s, ok := r.objects[name]
	if !ok {
		if parent == "" {
			return fmt.Errorf("ovo: unregistered object %s", name)
		}
		return fmt.Errorf("ovo: %s has unregistered sub-object %s", parent, name)
	}
	tree[name] = s.Version
	for _, c := range s.Children {
		if err := r.tree(c, name, tree); err != nil {
			return err
		}
	}
	return nil
}

// CompareVersions compares two dotted versions numerically part by part
// (a shorter version sorts first when equal so far, as Python tuples do):
// -1, 0 or 1.
func CompareVersions(a, b string) (int, error) {
	va, err := parseVersion(a)
	if err != nil {
		return 0, err
	}
	vb, err := parseVersion(b)
	if err != nil {
		return 0, err
	}
	return slices.Compare(va, vb), nil
}

// IsCompatible is oslo's versionutils.is_compatible(requested, current):
// the same major version and current >= requested. A receiver with class
// version current can hydrate an object of version requested.
func IsCompatible(requested, current string) (bool, error) {
	vr, err := parseVersion(requested)
	if err != nil {
		return false, err
	}
	vc, err := parseVersion(current)
	if err != nil {
		return false, err
	}
	return vr[0] == vc[0] && slices.Compare(vc, vr) >= 0, nil
}

// IncompatibleVersionError says that an object (or one nested in it) has
// a version the registry cannot hydrate (oslo's IncompatibleObjectVersion):
// the receiver must ask conductor for a backport
// ([Codec.BackportArgs] with [Registry.TreeVersions] of the top object).
type IncompatibleVersionError struct {
	Name, Version, Supported string
}

// Error implements error.
func (e *IncompatibleVersionError) Error() string {
	return fmt.Sprintf("ovo: version %s of %s is not supported, supported version is %s",
		e.Version, e.Name, e.Supported)
}

// UnregisteredObjectError says that an object's class is not in the
// registry (oslo's UnsupportedObjectError from obj_class_from_name).
type UnregisteredObjectError struct{ Name string }

// Error implements error.
func (e *UnregisteredObjectError) Error() string {
	return fmt.Sprintf("ovo: unregistered object type %s", e.Name)
}

// Check applies oslo's obj_class_from_name to o and to every object nested
// in its fields: each class must be registered and its version compatible
// ([IsCompatible]) with the registry's. A version "X.Y.Z" that fails is
// retried as "X.Y", as oslo's serializer does. The first failure is
// returned as *IncompatibleVersionError or *UnregisteredObjectError.
func (r *Registry) Check(o *Object) error {
	return r.check(o, 0)
}

func (r *Registry) check(o *Object, depth int) error {
	if depth > maxDepth {
		return errors.New("ovo: objects nested too deeply")
	}
	s, ok := r.objects[o.Name]
	if !ok {
		return &UnregisteredObjectError{Name: o.Name}
	}
	if o.Version != s.Version {
		ok, err := IsCompatible(o.Version, s.Version)
		if err != nil {
			return err
		}
		if !ok && strings.Count(o.Version, ".") == 2 {
			ok, _ = IsCompatible(o.Version[:strings.LastIndex(o.Version, ".")], s.Version)
		}
		if !ok {
			return &IncompatibleVersionError{Name: o.Name, Version: o.Version, Supported: s.Version}
		}
	}
	for _, k := range sortedKeys(o.Fields) {
		if err := r.checkValue(o.Fields[k], depth+1); err != nil {
			return err
		}
	}
	return nil
}

func (r *Registry) checkValue(v any, depth int) error {
	switch t := v.(type) {
	case *Object:
		if t != nil {
			return r.check(t, depth)
		}
	case []any:
		for _, x := range t {
			if err := r.checkValue(x, depth+1); err != nil {
				return err
			}
		}
	case map[string]any:
		for _, k := range sortedKeys(t) {
			if err := r.checkValue(t[k], depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// Validate checks o and its nested objects against the registry's field
// specs, as strictly as oslo's setters (coerce) would: every field is
// declared, None only where nullable, and each primitive has its type's
// wire form (DateTime parses, IP addresses parse, JSON fields hold JSON,
// objects have the declared class). oslo's from_primitive is more lenient;
// use Validate on objects this agent builds, before sending them.
func (r *Registry) Validate(o *Object) error {
	return r.validate(o, 0)
}

func (r *Registry) validate(o *Object, depth int) error {
	if depth > maxDepth {
		return errors.New("ovo: objects nested too deeply")
	}
	s, ok := r.objects[o.Name]
	if !ok {
		return &UnregisteredObjectError{Name: o.Name}
	}
	for _, k := range sortedKeys(o.Fields) {
		f, ok := s.Fields[k]
		if !ok {
			return fmt.Errorf("ovo: %s %s has no field %q", o.Name, o.Version, k)
		}
		if err := r.validateValue(f.Type, f.Nullable, o.Fields[k], depth+1); err != nil {
			return fmt.Errorf("ovo: %s.%s: %w", o.Name, k, err)
		}
	}
	return nil
}

func (r *Registry) validateValue(typ string, nullable bool, v any, depth int) error {
	if v == nil {
		if nullable {
			return nil
		}
		return errors.New("None in a field that is not nullable")
	}
	bad := func() error { return fmt.Errorf("%T %v is not a %s", v, v, typ) }
	inner := func(prefix string) (string, bool, bool) {
		if !strings.HasPrefix(typ, prefix+"<") || !strings.HasSuffix(typ, ">") {
			return "", false, false
		}
		t := typ[len(prefix)+1 : len(typ)-1]
		if strings.HasSuffix(t, "?") {
			return t[:len(t)-1], true, true
		}
		return t, false, true
	}
	switch typ {
	case "String", "UUID":
		if _, ok := v.(string); !ok {
			return bad()
		}
		return nil
	case "Integer":
		n, ok := v.(json.Number)
		if !ok {
			return bad()
		}
		if _, err := n.Int64(); err != nil {
			return bad()
		}
		return nil
	case "Float":
		n, ok := v.(json.Number)
		if !ok {
			return bad()
		}
		if _, err := n.Float64(); err != nil {
			return bad()
		}
		return nil
	case "Boolean":
		if _, ok := v.(bool); !ok {
			return bad()
		}
		return nil
	case "DateTime":
		s, ok := v.(string)
		if !ok {
			return bad()
		}
		_, err := ParseDateTime(s)
		return err
	case "IPAddress":
		s, ok := v.(string)
		if !ok {
			return bad()
		}
		_, err := netip.ParseAddr(s)
		return err
	case "IPNetwork":
		s, ok := v.(string)
		if !ok {
			return bad()
		}
		if _, err := netip.ParsePrefix(s); err != nil {
			if _, err2 := netip.ParseAddr(s); err2 != nil {
				return err
			}
		}
		return nil
	case "JSON":
		s, ok := v.(string)
		if !ok || !json.Valid([]byte(s)) {
			return bad()
		}
		return nil
	}
	if names, _, ok := inner("Object"); ok {
		o, isObj := v.(*Object)
		if !isObj || o == nil {
			return bad()
		}
		if !slices.Contains(strings.Split(names, "|"), o.Name) {
			return fmt.Errorf("an object of type %s is required, not a %s", names, o.Name)
		}
		return r.validate(o, depth+1)
	}
	for _, kind := range []string{"List", "Set"} {
		if el, elNull, ok := inner(kind); ok {
			l, isList := v.([]any)
			if !isList {
				return bad()
			}
			for i, x := range l {
				if err := r.validateValue(el, elNull, x, depth+1); err != nil {
					return fmt.Errorf("[%d]: %w", i, err)
				}
			}
			return nil
		}
	}
	if el, elNull, ok := inner("Dict"); ok {
		m, isMap := v.(map[string]any)
		if !isMap {
			return bad()
		}
		for _, k := range sortedKeys(m) {
			if err := r.validateValue(el, elNull, m[k], depth+1); err != nil {
				return fmt.Errorf("[%q]: %w", k, err)
			}
		}
		return nil
	}
	return fmt.Errorf("unknown field type %q", typ)
}

// Set sets a field of o the way assigning it on an oslo object does
// (Field.coerce, then to_primitive on sending): value goes through
// [ToPrimitive], then is checked against the field's spec and normalised
// — a DateTime string is parsed and rewritten ([NormalizeDateTime]), an IP
// address is rewritten in canonical form, a Float is written as Python
// writes a float, an integral Float given for an Integer becomes an
// integer. The field is marked changed. An undeclared field or a value of
// the wrong type is an error and leaves o untouched.
func (r *Registry) Set(o *Object, field string, value any) error {
	s, ok := r.objects[o.Name]
	if !ok {
		return &UnregisteredObjectError{Name: o.Name}
	}
	f, ok := s.Fields[field]
	if !ok {
		return fmt.Errorf("ovo: %s %s has no field %q", o.Name, o.Version, field)
	}
	p, err := ToPrimitive(value)
	if err != nil {
		return fmt.Errorf("ovo: %s.%s: %w", o.Name, field, err)
	}
	if p, err = coerce(f.Type, p); err != nil {
		return fmt.Errorf("ovo: %s.%s: %w", o.Name, field, err)
	}
	if err := r.validateValue(f.Type, f.Nullable, p, 0); err != nil {
		return fmt.Errorf("ovo: %s.%s: %w", o.Name, field, err)
	}
	o.setPrimitive(field, p)
	return nil
}

// coerce normalises scalar primitives of a field type; anything it does not
// recognise is returned unchanged for validateValue to judge.
func coerce(typ string, p any) (any, error) {
	switch typ {
	case "DateTime":
		if s, ok := p.(string); ok {
			return NormalizeDateTime(s)
		}
	case "IPAddress":
		if s, ok := p.(string); ok {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, err
			}
			return a.String(), nil
		}
	case "Float":
		if n, ok := p.(json.Number); ok {
			f, err := n.Float64()
			if err != nil {
				return nil, err
			}
			return ToPrimitive(f)
		}
	case "Integer":
		if n, ok := p.(json.Number); ok {
			if _, err := n.Int64(); err != nil {
				f, ferr := n.Float64()
				if ferr != nil || f != float64(int64(f)) {
					return p, nil
				}
				return json.Number(fmt.Sprint(int64(f))), nil
			}
		}
	}
	return p, nil
}

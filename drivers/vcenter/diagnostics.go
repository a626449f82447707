package vcenter

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// VMDiagnostics returns the VM's summary.config, summary.quickStats and
// summary.runtime merged into one flat map, as nova's vmops._get_diagnostics
// does with oslo.vmware's object_to_dict(list_depth=1): the keys are the
// vSphere property names (memorySizeMB, overallCpuUsage, powerState,
// uptimeSeconds, …), nested data objects are maps, lists keep their first
// element, unset values are left out. A VM that does not exist fails with
// ErrNotFound.
//
// Cost: 1 SOAP round trip. Safe for concurrent use.
func (s *Session) VMDiagnostics(ctx context.Context, vm Ref) (map[string]any, error) {
	op := "read diagnostics of vm " + vm.Value
	c := s.activeClient()
	if c == nil {
		return nil, wrapErr(op, ErrNotLoggedIn)
	}
	var m mo.VirtualMachine
	if err := s.retrieveOne(ctx, c, vm, []string{"summary.config", "summary.quickStats", "summary.runtime"}, &m); err != nil {
		return nil, wrapVMErr(op, err)
	}
	out := map[string]any{}
	for _, part := range []any{m.Summary.Config, m.Summary.QuickStats, m.Summary.Runtime} {
		d, ok := objectToDict(reflect.ValueOf(part)).(map[string]any)
		if !ok {
			return nil, wrapErr(op, fmt.Errorf("unexpected summary part %T", part))
		}
		for k, v := range d {
			out[k] = v
		}
	}
	return out, nil
}

// objectToDict converts a vSphere data object to JSON-like values the way
// oslo.vmware's object_to_dict sees a suds object: struct fields by their
// XML names, unset (nil, empty) ones left out, lists cut to one element.
func objectToDict(v reflect.Value) any {
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return nil
		}
		v = v.Elem()
	}
	switch val := v.Interface().(type) {
	case time.Time:
		return val.UTC().Format("2006-01-02T15:04:05.000000Z")
	case types.ManagedObjectReference:
		return val.Value
	}
	switch v.Kind() {
	case reflect.Struct:
		out := map[string]any{}
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			fv := v.Field(i)
			if f.Anonymous {
				if d, ok := objectToDict(fv).(map[string]any); ok {
					for k, x := range d {
						out[k] = x
					}
				}
				continue
			}
			if !f.IsExported() || fv.IsZero() && (fv.Kind() == reflect.Pointer || fv.Kind() == reflect.Interface || fv.Kind() == reflect.Slice || fv.Kind() == reflect.String) {
				continue
			}
			name := strings.Split(f.Tag.Get("xml"), ",")[0]
			if name == "" || name == "-" {
				name = strings.ToLower(f.Name[:1]) + f.Name[1:]
			}
			if x := objectToDict(fv); x != nil {
				out[name] = x
			}
		}
		return out
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			b, _ := json.Marshal(v.Interface())
			return string(b)
		}
		list := []any{}
		if v.Len() > 0 {
			if x := objectToDict(v.Index(0)); x != nil {
				list = append(list, x)
			}
		}
		return list
	case reflect.String:
		return v.String()
	case reflect.Bool:
		return v.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return v.Int()
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return v.Uint()
	case reflect.Float32, reflect.Float64:
		return v.Float()
	}
	return nil
}

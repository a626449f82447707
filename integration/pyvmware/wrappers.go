package main

import (
	"path"
	"reflect"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// installWrappers replaces a few managed objects in the simulator's
// registry with wrapper types that fix, for nova's VMware driver, methods
// the simulator gets wrong. The simulator dispatches a SOAP call by method
// name on whatever object the registry holds for the moref, so a wrapper's
// method wins over the embedded one; everything else is promoted.
func installWrappers(m *simulator.Registry) {
	content := m.Get(vim25ServiceInstance).(*simulator.ServiceInstance).Content

	// The root property collector. (The simulator makes each session's
	// instance with reflect.New of the registered type, so the wrapper
	// embeds the collector by value: its zero value is a usable collector.)
	pc := &typedCollector{}
	pc.Self = content.PropertyCollector
	m.Put(pc)

	if content.VirtualDiskManager != nil {
		if vdm, ok := m.Get(*content.VirtualDiskManager).(*simulator.VirtualDiskManager); ok {
			m.Put(&diskManager{vdm})
		}
	}
	for _, r := range m.AllReference("HostDatastoreBrowser") {
		if b, ok := r.(*simulator.HostDatastoreBrowser); ok {
			m.Put(&datastoreBrowser{b})
		}
	}
}

var vim25ServiceInstance = types.ManagedObjectReference{Type: "ServiceInstance", Value: "ServiceInstance"}

// typedCollector is the root PropertyCollector with vSphere's rule for
// TraversalSpecs: a spec applies only to objects of its type (or a
// subtype). The simulator applies every spec to every object, so
// oslo.vmware's recursive specs (rp_to_rp and rp_to_vm, named in their own
// selectSet) walk VirtualMachine.resourcePool -> ResourcePool.vm -> ...
// until the simulator dies of a stack overflow. For a request with nested
// selectSets the wrapper does the traversal itself, typed and with each
// (object, spec) visited once, and hands the simulator the flat list of
// objects reached; other requests (govmomi's container views) go through
// unchanged.
type typedCollector struct {
	simulator.PropertyCollector
}

func (pc *typedCollector) RetrievePropertiesEx(ctx *simulator.Context, r *types.RetrievePropertiesEx) soap.HasFault {
	flat := *r
	flat.SpecSet = flattenSpecs(ctx, r.SpecSet)
	return pc.PropertyCollector.RetrievePropertiesEx(ctx, &flat)
}

func (pc *typedCollector) RetrieveProperties(ctx *simulator.Context, r *types.RetrieveProperties) soap.HasFault {
	flat := *r
	flat.SpecSet = flattenSpecs(ctx, r.SpecSet)
	return pc.PropertyCollector.RetrieveProperties(ctx, &flat)
}

// nested reports whether a spec set has a TraversalSpec with a selectSet
// of its own (the recursive kind).
func nested(specs []types.PropertyFilterSpec) bool {
	for _, s := range specs {
		for _, o := range s.ObjectSet {
			for _, ss := range o.SelectSet {
				if ts, ok := ss.(*types.TraversalSpec); ok && len(ts.SelectSet) > 0 {
					return true
				}
			}
		}
	}
	return false
}

func flattenSpecs(ctx *simulator.Context, specs []types.PropertyFilterSpec) []types.PropertyFilterSpec {
	if !nested(specs) {
		return specs
	}
	out := make([]types.PropertyFilterSpec, len(specs))
	for i, s := range specs {
		out[i] = s
		out[i].ObjectSet = nil
		w := walker{ctx: ctx, named: map[string]*types.TraversalSpec{}, seen: map[string]bool{}, got: map[types.ManagedObjectReference]bool{}}
		for _, o := range s.ObjectSet {
			if o.SelectSet == nil || !isTrue(o.Skip) {
				w.add(o.Obj)
			}
			w.walk(o.Obj, o.SelectSet)
		}
		for _, ref := range w.refs {
			out[i].ObjectSet = append(out[i].ObjectSet, types.ObjectSpec{Obj: ref})
		}
		if len(out[i].ObjectSet) == 0 {
			// nothing reached: keep one object so the answer stays empty
			// rather than becoming a fault
			out[i].ObjectSet = []types.ObjectSpec{{Obj: s.ObjectSet[0].Obj, Skip: types.NewBool(true), SelectSet: []types.BaseSelectionSpec{}}}
			reportMissing := true
			out[i].ReportMissingObjectsInResults = &reportMissing
		}
	}
	return out
}

type walker struct {
	ctx   *simulator.Context
	named map[string]*types.TraversalSpec
	seen  map[string]bool
	got   map[types.ManagedObjectReference]bool
	refs  []types.ManagedObjectReference
}

func (w *walker) add(ref types.ManagedObjectReference) {
	if !w.got[ref] {
		w.got[ref] = true
		w.refs = append(w.refs, ref)
	}
}

func (w *walker) walk(ref types.ManagedObjectReference, set []types.BaseSelectionSpec) {
	for _, ss := range set {
		if ts, ok := ss.(*types.TraversalSpec); ok && ts.Name != "" {
			w.named[ts.Name] = ts
		}
	}
	obj := w.lookup(ref)
	if obj == nil {
		return
	}
	for _, ss := range set {
		ts, ok := ss.(*types.TraversalSpec)
		if !ok {
			if ts = w.named[ss.GetSelectionSpec().Name]; ts == nil {
				continue
			}
		}
		key := ref.Type + ":" + ref.Value + "|" + ts.Name + "|" + ts.Type + "|" + ts.Path
		if w.seen[key] || !isA(obj, ref, ts.Type) {
			continue
		}
		w.seen[key] = true
		var next []types.ManagedObjectReference
		w.ctx.WithLock(obj, func() { next = refsAt(obj, ts.Path) })
		for _, n := range next {
			// Only objects the registry still has: vCenter never reaches
			// a deleted object, but the simulator's inventory can still
			// list one (MarkAsTemplate clears a VM's resourcePool and
			// leaves the VM in the pool's vm list, so a destroyed
			// template, such as the linked clone of nova's snapshot, stays
			// there), and the simulator then faults the whole retrieval
			// with ManagedObjectNotFound.
			if !isTrue(ts.Skip) && w.lookup(n) != nil {
				w.add(n)
			}
			w.walk(n, ts.SelectSet)
		}
	}
}

func (w *walker) lookup(ref types.ManagedObjectReference) mo.Reference {
	if w.ctx.Session != nil {
		return w.ctx.Session.Get(ref)
	}
	return w.ctx.Map.Get(ref)
}

func isTrue(b *bool) bool { return b != nil && *b }

// moValue digs the vim25/mo struct out of a simulator object (the
// simulator's types embed it as their first field, possibly through
// wrappers like the ones here).
func moValue(obj mo.Reference) reflect.Value {
	v := reflect.ValueOf(obj)
	for {
		switch {
		case v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface:
			if v.IsNil() {
				return reflect.Value{}
			}
			v = v.Elem()
		case v.Kind() != reflect.Struct || path.Base(v.Type().PkgPath()) == "mo" || v.NumField() == 0:
			return v
		default:
			v = v.Field(0)
		}
	}
}

// isA: the object is of the managed object type typ or a subtype of it
// (mo types embed their base type: ClusterComputeResource embeds
// ComputeResource embeds ManagedEntity).
func isA(obj mo.Reference, ref types.ManagedObjectReference, typ string) bool {
	if typ == "" || typ == ref.Type {
		return true
	}
	v := moValue(obj)
	if !v.IsValid() || v.Kind() != reflect.Struct {
		return false
	}
	t := v.Type()
	for {
		if t.Name() == typ {
			return true
		}
		if t.NumField() == 0 || !t.Field(0).Anonymous {
			return false
		}
		t = t.Field(0).Type
		if t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return false
		}
	}
}

// refsAt returns the morefs in the object's property p (a single property
// name, as TraversalSpec paths are).
func refsAt(obj mo.Reference, p string) []types.ManagedObjectReference {
	v := moValue(obj)
	if !v.IsValid() || v.Kind() != reflect.Struct || p == "" {
		return nil
	}
	f := v.FieldByName(strings.ToUpper(p[:1]) + p[1:])
	if !f.IsValid() {
		return nil
	}
	switch x := f.Interface().(type) {
	case types.ManagedObjectReference:
		return []types.ManagedObjectReference{x}
	case *types.ManagedObjectReference:
		if x != nil {
			return []types.ManagedObjectReference{*x}
		}
	case []types.ManagedObjectReference:
		return append([]types.ManagedObjectReference(nil), x...)
	}
	return nil
}

// diskManager: CopyVirtualDisk_Task without destDatacenter (optional in the
// API: "the destination path belongs to the source datacenter"; nova sends
// none) fails in the simulator, which resolves the destination with a nil
// datacenter. The wrapper fills it in.
type diskManager struct {
	*simulator.VirtualDiskManager
}

func (m *diskManager) CopyVirtualDiskTask(ctx *simulator.Context, req *types.CopyVirtualDisk_Task) soap.HasFault {
	if req.DestDatacenter == nil {
		r := *req
		r.DestDatacenter = req.SourceDatacenter
		req = &r
	}
	return m.VirtualDiskManager.CopyVirtualDiskTask(ctx, req)
}

// datastoreBrowser: SearchDatastore_Task without a searchSpec (optional in
// the API; nova's image cache sends none) dereferences nil in the
// simulator and kills it. The wrapper passes an empty spec.
type datastoreBrowser struct {
	*simulator.HostDatastoreBrowser
}

func (b *datastoreBrowser) SearchDatastoreTask(ctx *simulator.Context, s *types.SearchDatastore_Task) soap.HasFault {
	if s.SearchSpec == nil {
		r := *s
		r.SearchSpec = new(types.HostDatastoreBrowserSearchSpec)
		s = &r
	}
	return b.HostDatastoreBrowser.SearchDatastoreTask(ctx, s)
}

func (b *datastoreBrowser) SearchDatastoreSubFoldersTask(ctx *simulator.Context, s *types.SearchDatastoreSubFolders_Task) soap.HasFault {
	if s.SearchSpec == nil {
		r := *s
		r.SearchSpec = new(types.HostDatastoreBrowserSearchSpec)
		s = &r
	}
	return b.HostDatastoreBrowser.SearchDatastoreSubFoldersTask(ctx, s)
}

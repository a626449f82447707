package vcenter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Defaults for WatchOptions.
const (
	DefaultWatchReconcile = 60 * time.Second
	DefaultWatchMaxWait   = 30 * time.Second
)

// watchCleanupTimeout bounds the destruction of the watcher's server-side
// objects once its context has ended.
const watchCleanupTimeout = 5 * time.Second

// The virtual machine properties the watcher follows.
const (
	vmPropName          = "name"
	vmPropPowerState    = "runtime.powerState"
	vmPropHost          = "runtime.host"
	vmPropInstanceUUID  = "config.instanceUuid"
	vmPropChangeVersion = "config.changeVersion"
	vmPropManagedBy     = "config.managedBy"
)

var watchedVMProps = []string{
	vmPropName, vmPropPowerState, vmPropHost, vmPropInstanceUUID, vmPropChangeVersion, vmPropManagedBy,
}

// VMState is what the watcher knows of one virtual machine.
type VMState struct {
	Ref Ref
	// InstanceUUID is config.instanceUuid, the vCenter-wide identifier of
	// the VM.
	InstanceUUID string
	Name         string
	// PowerState is "poweredOn", "poweredOff" or "suspended".
	PowerState string
	// ChangeVersion is config.changeVersion; it changes with every
	// configuration change, so a caller that caches the configuration
	// re-reads it when ChangeVersion moves.
	ChangeVersion string
	// Host is the ESXi host the VM is registered on (runtime.host).
	Host Ref
	// ManagedBy is config.managedBy.extensionKey; empty if unset.
	ManagedBy string
}

// VMEventKind says what happened to a virtual machine.
type VMEventKind int

const (
	// Upsert reports a VM seen for the first time or whose VMState
	// changed.
	Upsert VMEventKind = iota + 1
	// Removed reports a VM that is gone, or that no longer matches
	// WatchOptions.ManagedByKey. State is the last state reported.
	Removed
)

// String returns "upsert" or "removed".
func (k VMEventKind) String() string {
	switch k {
	case Upsert:
		return "upsert"
	case Removed:
		return "removed"
	default:
		return fmt.Sprintf("VMEventKind(%d)", int(k))
	}
}

// VMEvent is one change reported by [Session.WatchVMs].
type VMEvent struct {
	Kind  VMEventKind
	State VMState
}

// WatchOptions configures [Session.WatchVMs]. Zero values take the
// defaults.
type WatchOptions struct {
	// ManagedByKey keeps only VMs whose config.managedBy.extensionKey
	// equals it; empty watches every VM.
	ManagedByKey string
	// Reconcile is the period of the full re-read of all VMs, which
	// catches changes vCenter did not publish (default
	// DefaultWatchReconcile).
	Reconcile time.Duration
	// MaxWait bounds one long-poll (WaitForUpdatesEx MaxWaitSeconds,
	// rounded up to whole seconds; default DefaultWatchMaxWait). A shorter
	// wait notices a lost session sooner at the cost of more round trips.
	MaxWait time.Duration
}

func (o WatchOptions) resolve() (WatchOptions, error) {
	switch {
	case o.Reconcile < 0:
		return o, fmt.Errorf("%w: Reconcile must not be negative, got %s", ErrInvalidConfig, o.Reconcile)
	case o.MaxWait < 0:
		return o, fmt.Errorf("%w: MaxWait must not be negative, got %s", ErrInvalidConfig, o.MaxWait)
	}
	o.Reconcile = cmp.Or(o.Reconcile, DefaultWatchReconcile)
	o.MaxWait = cmp.Or(o.MaxWait, DefaultWatchMaxWait)
	return o, nil
}

// WatchVMs reports the power state and identity of virtual machines until
// ctx ends. It blocks; the caller owns the goroutine. It calls onEvent from
// that goroutine, one event at a time, so onEvent must not block for long
// (hand the event to a buffered channel or a worker) and must not call
// WatchVMs.
//
// It first reports every matching VM as Upsert, then each real change: an
// event is emitted only when a VM's VMState differs from the one last
// reported, and a VM that disappears or stops matching opts.ManagedByKey is
// reported Removed once.
//
// It uses one ContainerView of all VMs under the root folder, one dedicated
// PropertyCollector (so its long-poll blocks no other call) and one filter,
// drives WaitForUpdatesEx itself, and re-reads all VMs with one
// RetrievePropertiesEx at start-up, every opts.Reconcile, and whenever it
// rebuilds those objects. It rebuilds them after any failed call (the
// session's RoundTripper has re-logged in by then if the session was lost),
// backing off exponentially (up to 30 s) on repeated failures.
//
// Round trips, whatever the number of VMs: 5 to set up (CreateContainerView,
// CreatePropertyCollector, CreateFilter, RetrievePropertiesEx, and a first
// WaitForUpdatesEx that returns the initial state at once); then 1
// WaitForUpdatesEx per batch of changes (measured against vcsim: a power
// change is reported after 1 call, 40-160 ms) or per opts.MaxWait without
// changes; 1 RetrievePropertiesEx per reconcile (plus
// ContinueRetrievePropertiesEx pages on large inventories); after a lost
// session, the failed WaitForUpdatesEx, the Session's re-login (Logout,
// Login) and retry, then the 5 set-up calls again; and 2 to clean up
// (DestroyPropertyCollector, DestroyView).
//
// It returns ctx's error once ctx ends, or an error matching ErrNotLoggedIn
// once the Session is logged out; with ErrInvalidConfig at once for bad
// options.
func (s *Session) WatchVMs(ctx context.Context, opts WatchOptions, onEvent func(VMEvent)) error {
	opts, err := opts.resolve()
	if err != nil {
		return err
	}
	if onEvent == nil {
		return fmt.Errorf("%w: onEvent must not be nil", ErrInvalidConfig)
	}
	w := &vmWatcher{
		s:       s,
		opts:    opts,
		onEvent: onEvent,
		raw:     make(map[types.ManagedObjectReference]VMState),
		known:   make(map[types.ManagedObjectReference]VMState),
	}
	return w.run(ctx)
}

// vmWatcher is the state of one WatchVMs call. Only its goroutine uses it.
type vmWatcher struct {
	s       *Session
	opts    WatchOptions
	onEvent func(VMEvent)

	// raw holds every VM in the view, matching or not; known holds what
	// was last reported for matching VMs.
	raw   map[types.ManagedObjectReference]VMState
	known map[types.ManagedObjectReference]VMState

	// Server-side objects of the current build, valid for session gen.
	c       *vim25.Client
	gen     uint64
	view    *types.ManagedObjectReference
	pc      *types.ManagedObjectReference
	version string
	built   bool
}

func (w *vmWatcher) run(ctx context.Context) error {
	defer w.teardown(ctx)

	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 200 * time.Millisecond
	bo.MaxInterval = 30 * time.Second
	bo.MaxElapsedTime = 0 // forever

	var nextReconcile time.Time
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := w.step(ctx, &nextReconcile)
		if err == nil {
			bo.Reset()
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, ErrNotLoggedIn) {
			return wrapErr("watch virtual machines", err)
		}
		w.built = false // rebuild everything on the next step
		d := bo.NextBackOff()
		w.s.log.Warn().Err(err).Dur("retry_in", d).Msg("vCenter VM watcher failed; rebuilding")
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// step builds the server-side objects if needed, reconciles when due, and
// otherwise waits for one batch of updates.
func (w *vmWatcher) step(ctx context.Context, nextReconcile *time.Time) error {
	c := w.s.activeClient()
	if c == nil {
		return ErrNotLoggedIn
	}
	if w.built && w.gen != w.s.generation() {
		// The session was replaced (by the keep-alive or another caller):
		// our view and collector died with the old one.
		w.s.log.Debug().Msg("vCenter session replaced; rebuilding VM watcher")
		w.built = false
	}
	if !w.built {
		if err := w.build(ctx, c); err != nil {
			return err
		}
		*nextReconcile = time.Time{}
	}
	if !time.Now().Before(*nextReconcile) {
		if err := w.reconcile(ctx); err != nil {
			return err
		}
		*nextReconcile = time.Now().Add(w.opts.Reconcile)
	}
	return w.wait(ctx, time.Until(*nextReconcile))
}

// build replaces the view, collector and filter, destroying the old ones
// when they may still exist.
func (w *vmWatcher) build(ctx context.Context, c *vim25.Client) error {
	w.teardown(ctx)
	gen := w.s.generation()
	w.c, w.gen = c, gen

	vres, err := methods.CreateContainerView(ctx, c, &types.CreateContainerView{
		This:      *c.ServiceContent.ViewManager,
		Container: c.ServiceContent.RootFolder,
		Type:      []string{"VirtualMachine"},
		Recursive: true,
	})
	if err != nil {
		return fmt.Errorf("create container view: %w", err)
	}
	view := vres.Returnval
	w.view = &view

	pres, err := methods.CreatePropertyCollector(ctx, c, &types.CreatePropertyCollector{
		This: c.ServiceContent.PropertyCollector,
	})
	if err != nil {
		return fmt.Errorf("create property collector: %w", err)
	}
	pc := pres.Returnval
	w.pc = &pc

	_, err = methods.CreateFilter(ctx, c, &types.CreateFilter{
		This:           pc,
		Spec:           w.filterSpec(),
		PartialUpdates: false,
	})
	if err != nil {
		return fmt.Errorf("create property filter: %w", err)
	}
	if w.s.generation() != gen {
		return errors.New("vCenter session replaced while building the VM watcher")
	}
	w.version = ""
	w.built = true
	return nil
}

// filterSpec selects the watched properties of every VM in the view.
func (w *vmWatcher) filterSpec() types.PropertyFilterSpec {
	return types.PropertyFilterSpec{
		ObjectSet: []types.ObjectSpec{{
			Obj:  *w.view,
			Skip: types.NewBool(true),
			SelectSet: []types.BaseSelectionSpec{&types.TraversalSpec{
				Type: "ContainerView",
				Path: "view",
				Skip: types.NewBool(false),
			}},
		}},
		PropSet: []types.PropertySpec{{Type: "VirtualMachine", PathSet: watchedVMProps}},
	}
}

// teardown destroys the collector (with its filter) and the view if they
// belong to the current session. It runs even when ctx has ended.
func (w *vmWatcher) teardown(ctx context.Context) {
	view, pc := w.view, w.pc
	w.view, w.pc, w.built = nil, nil, false
	if (view == nil && pc == nil) || w.c == nil || w.gen != w.s.generation() || w.s.activeClient() == nil {
		return // nothing to destroy, or it died with its session
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), watchCleanupTimeout)
	defer cancel()
	if pc != nil {
		// Also ends a long-poll still running on vCenter.
		if _, err := methods.DestroyPropertyCollector(dctx, w.c, &types.DestroyPropertyCollector{This: *pc}); err != nil {
			w.s.log.Debug().Err(err).Str("collector", pc.Value).Msg("cannot destroy property collector")
		}
	}
	if view != nil {
		if _, err := methods.DestroyView(dctx, w.c, &types.DestroyView{This: *view}); err != nil {
			w.s.log.Debug().Err(err).Str("view", view.Value).Msg("cannot destroy container view")
		}
	}
}

// reconcile re-reads every VM in the view and reports the differences.
func (w *vmWatcher) reconcile(ctx context.Context) error {
	objects, err := mo.RetrievePropertiesEx(ctx, w.c, types.RetrievePropertiesEx{
		This:    *w.pc,
		SpecSet: []types.PropertyFilterSpec{w.filterSpec()},
	})
	if err != nil {
		return fmt.Errorf("retrieve virtual machines: %w", err)
	}
	raw := make(map[types.ManagedObjectReference]VMState, len(objects))
	for _, oc := range objects {
		if missingNotAuthenticated(oc) {
			return fmt.Errorf("retrieve virtual machines: %s: %w", oc.Obj, ErrNotAuthenticated)
		}
		st := VMState{Ref: refFrom(oc.Obj)}
		for _, p := range oc.PropSet {
			applyVMProp(&st, p.Name, p.Val)
		}
		raw[oc.Obj] = st
	}
	refs := make([]types.ManagedObjectReference, 0, len(raw)+len(w.known))
	for r := range raw {
		refs = append(refs, r)
	}
	for r := range w.known {
		if _, ok := raw[r]; !ok {
			refs = append(refs, r)
		}
	}
	w.raw = raw
	w.syncAll(refs)
	return nil
}

// wait runs one WaitForUpdatesEx of at most min(opts.MaxWait, until) and
// applies what it returns.
func (w *vmWatcher) wait(ctx context.Context, until time.Duration) error {
	d := min(w.opts.MaxWait, max(until, 0))
	secs := max(int32((d+time.Second-1)/time.Second), 1) // 0 would return at once
	res, err := methods.WaitForUpdatesEx(ctx, w.c, &types.WaitForUpdatesEx{
		This:    *w.pc,
		Version: w.version,
		Options: &types.WaitOptions{MaxWaitSeconds: types.NewInt32(secs)},
	})
	if err != nil {
		var nf *types.ManagedObjectNotFound
		if _, ok := fault.As(err, &nf); ok {
			return fmt.Errorf("wait for updates: collector lost with the session: %w", err)
		}
		return fmt.Errorf("wait for updates: %w", err)
	}
	set := res.Returnval
	if set == nil {
		return nil // MaxWaitSeconds passed without changes
	}
	w.version = set.Version
	var touched []types.ManagedObjectReference
	for _, fs := range set.FilterSet {
		for _, ou := range fs.ObjectSet {
			if ou.Obj.Type != "VirtualMachine" {
				continue
			}
			touched = append(touched, ou.Obj)
			switch ou.Kind {
			case types.ObjectUpdateKindLeave:
				delete(w.raw, ou.Obj)
				continue
			case types.ObjectUpdateKindEnter:
				// An enter carries every property: start afresh. vcsim
				// re-sends enter for all VMs on each create.
				w.raw[ou.Obj] = VMState{Ref: refFrom(ou.Obj)}
			}
			st, ok := w.raw[ou.Obj]
			if !ok {
				st = VMState{Ref: refFrom(ou.Obj)}
			}
			for _, pc := range ou.ChangeSet {
				if pc.Op == types.PropertyChangeOpRemove || pc.Op == types.PropertyChangeOpIndirectRemove {
					applyVMProp(&st, pc.Name, nil)
					continue
				}
				applyVMProp(&st, pc.Name, pc.Val)
			}
			w.raw[ou.Obj] = st
		}
	}
	w.syncAll(touched)
	return nil
}

// syncAll reports, in Ref order, every VM among refs whose wanted state
// differs from the one last reported.
func (w *vmWatcher) syncAll(refs []types.ManagedObjectReference) {
	slices.SortFunc(refs, func(a, b types.ManagedObjectReference) int {
		return cmp.Or(cmp.Compare(a.Type, b.Type), cmp.Compare(a.Value, b.Value))
	})
	refs = slices.Compact(refs)
	for _, r := range refs {
		w.sync(r)
	}
}

// sync compares what raw says of r with what was last reported.
func (w *vmWatcher) sync(r types.ManagedObjectReference) {
	st, ok := w.raw[r]
	if ok && w.opts.ManagedByKey != "" && st.ManagedBy != w.opts.ManagedByKey {
		ok = false
	}
	old, had := w.known[r]
	switch {
	case ok && (!had || old != st):
		w.known[r] = st
		w.onEvent(VMEvent{Kind: Upsert, State: st})
	case !ok && had:
		delete(w.known, r)
		w.onEvent(VMEvent{Kind: Removed, State: old})
	}
}

// applyVMProp sets the field of st for property path name to val; a nil val
// clears it. Unknown paths are ignored.
func applyVMProp(st *VMState, name string, val any) {
	switch name {
	case vmPropName:
		st.Name, _ = val.(string)
	case vmPropPowerState:
		switch v := val.(type) {
		case types.VirtualMachinePowerState:
			st.PowerState = string(v)
		case string:
			st.PowerState = v
		default:
			st.PowerState = ""
		}
	case vmPropHost:
		switch v := val.(type) {
		case types.ManagedObjectReference:
			st.Host = refFrom(v)
		case *types.ManagedObjectReference:
			st.Host = refFromPtr(v)
		default:
			st.Host = Ref{}
		}
	case vmPropInstanceUUID:
		st.InstanceUUID, _ = val.(string)
	case vmPropChangeVersion:
		st.ChangeVersion, _ = val.(string)
	case vmPropManagedBy:
		switch v := val.(type) {
		case types.ManagedByInfo:
			st.ManagedBy = v.ExtensionKey
		case *types.ManagedByInfo:
			st.ManagedBy = ""
			if v != nil {
				st.ManagedBy = v.ExtensionKey
			}
		default:
			st.ManagedBy = ""
		}
	}
}

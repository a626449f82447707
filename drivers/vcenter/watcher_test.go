package vcenter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

const watchTestManagedBy = "org.example.vcagent"

// watchEventLog records the events of one watcher.
type watchEventLog struct {
	mu      sync.Mutex
	events  []VMEvent
	hold    func(VMEvent) bool // if set, add blocks on the first match
	held    chan struct{}      // closed when add blocks
	release chan struct{}      // closed to let add return
}

func (l *watchEventLog) add(e VMEvent) {
	l.mu.Lock()
	l.events = append(l.events, e)
	if l.hold == nil || !l.hold(e) {
		l.mu.Unlock()
		return
	}
	l.hold = nil
	held, release := l.held, l.release
	l.mu.Unlock()
	close(held)
	<-release
}

// holdNext makes the watcher block in onEvent, after recording it, on the
// next event that satisfies cond, until release is called (at the latest
// when the test ends). held is closed once it blocks.
func (l *watchEventLog) holdNext(t *testing.T, cond func(VMEvent) bool) (held <-chan struct{}, release func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.hold, l.held, l.release = cond, make(chan struct{}), make(chan struct{})
	var once sync.Once
	ch := l.release
	release = func() { once.Do(func() { close(ch) }) }
	t.Cleanup(release)
	return l.held, release
}

func (l *watchEventLog) all() []VMEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]VMEvent(nil), l.events...)
}

// has reports whether an event of kind for the VM named name satisfies cond.
func (l *watchEventLog) has(kind VMEventKind, name string, cond func(VMState) bool) bool {
	for _, e := range l.all() {
		if e.Kind == kind && e.State.Name == name && (cond == nil || cond(e.State)) {
			return true
		}
	}
	return false
}

// count returns the number of events for the VM named name.
func (l *watchEventLog) count(name string) int {
	n := 0
	for _, e := range l.all() {
		if e.State.Name == name {
			n++
		}
	}
	return n
}

// vmAdmin changes the simulator's VMs through its own session, behind the
// watcher's back.
type vmAdmin struct {
	t      *testing.T
	c      *govmomi.Client
	folder *object.Folder
	pool   *object.ResourcePool
	host   *object.HostSystem
}

func newVMAdmin(t *testing.T, sim *Simulator) *vmAdmin {
	t.Helper()
	ctx := t.Context()
	c, err := govmomi.NewClient(ctx, sim.URL(), true)
	if err != nil {
		t.Fatalf("govmomi.NewClient: %v", err)
	}
	t.Cleanup(func() { _ = c.Logout(context.Background()) })
	f := find.NewFinder(c.Client)
	dc, err := f.Datacenter(ctx, "DC0")
	if err != nil {
		t.Fatalf("find datacenter: %v", err)
	}
	f.SetDatacenter(dc)
	folders, err := dc.Folders(ctx)
	if err != nil {
		t.Fatalf("datacenter folders: %v", err)
	}
	cluster, err := f.ClusterComputeResource(ctx, "DC0_C0")
	if err != nil {
		t.Fatalf("find cluster: %v", err)
	}
	pool, err := cluster.ResourcePool(ctx)
	if err != nil {
		t.Fatalf("cluster resource pool: %v", err)
	}
	host, err := f.HostSystem(ctx, "DC0_C0_H0")
	if err != nil {
		t.Fatalf("find host: %v", err)
	}
	return &vmAdmin{t: t, c: c, folder: folders.VmFolder, pool: pool, host: host}
}

// create makes a powered-off VM managed by managedBy (unless empty).
func (a *vmAdmin) create(name, managedBy string) *object.VirtualMachine {
	a.t.Helper()
	spec := types.VirtualMachineConfigSpec{
		Name:    name,
		GuestId: string(types.VirtualMachineGuestOsIdentifierOtherGuest64),
		Files:   &types.VirtualMachineFileInfo{VmPathName: "[LocalDS_0]"},
	}
	if managedBy != "" {
		spec.ManagedBy = &types.ManagedByInfo{ExtensionKey: managedBy, Type: "instance"}
	}
	task, err := a.folder.CreateVM(a.t.Context(), spec, a.pool, a.host)
	if err != nil {
		a.t.Fatalf("CreateVM %s: %v", name, err)
	}
	info, err := task.WaitForResult(a.t.Context(), nil)
	if err != nil {
		a.t.Fatalf("CreateVM %s: %v", name, err)
	}
	return object.NewVirtualMachine(a.c.Client, info.Result.(types.ManagedObjectReference))
}

// do runs a VM task and waits for it.
func (a *vmAdmin) do(what string, start func(context.Context) (*object.Task, error)) {
	a.t.Helper()
	task, err := start(a.t.Context())
	if err == nil {
		err = task.Wait(a.t.Context())
	}
	if err != nil {
		a.t.Fatalf("%s: %v", what, err)
	}
}

// startWatch runs WatchVMs in a goroutine and returns its log and a stop
// function that cancels it and checks that it returns promptly.
func startWatch(t *testing.T, s *Session, opts WatchOptions) (*watchEventLog, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	log := &watchEventLog{}
	done := make(chan error, 1)
	go pprof.Do(ctx, pprof.Labels(watchTestLabel, t.Name()), func(ctx context.Context) {
		done <- s.WatchVMs(ctx, opts, log.add)
	})
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			start := time.Now()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("WatchVMs returned %v, want context.Canceled", err)
				}
				if d := time.Since(start); d > time.Second {
					t.Errorf("WatchVMs took %s to return after cancel", d)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("WatchVMs did not return 5 s after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return log, stop
}

// watchTestLabel is the pprof label that marks the goroutines of a test's
// watcher (and any goroutine it starts), so that parallel tests can check
// for leaks independently.
const watchTestLabel = "vcagent_watch_test"

// watcherGoroutines returns the stacks of goroutines carrying t's watcher
// label and running code of this package. (Connection goroutines of the
// HTTP transport that the watcher's calls dialled carry the label too; they
// belong to the Session's connection pool.)
func watcherGoroutines(t *testing.T) []string {
	t.Helper()
	var buf bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 1); err != nil {
		t.Fatalf("goroutine profile: %v", err)
	}
	mark := fmt.Sprintf("%q:%q", watchTestLabel, t.Name())
	var found []string
	for _, g := range strings.Split(buf.String(), "\n\n") {
		if strings.Contains(g, mark) && strings.Contains(g, "vcagent/drivers/vcenter.") {
			found = append(found, g)
		}
	}
	return found
}

// checkNoWatcherGoroutines fails t if goroutines of its watcher are still
// running shortly after WatchVMs returned.
func checkNoWatcherGoroutines(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for {
		g := watcherGoroutines(t)
		if len(g) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("watcher goroutines left after cancel:\n%s", strings.Join(g, "\n\n"))
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// terminateOthers ends every session on the simulator but the admin's own,
// as a vCenter administrator can.
func (a *vmAdmin) terminateOthers() {
	a.t.Helper()
	ctx := a.t.Context()
	m := session.NewManager(a.c.Client)
	cur, err := m.UserSession(ctx)
	if err != nil {
		a.t.Fatalf("current session: %v", err)
	}
	var sm mo.SessionManager
	if err := property.DefaultCollector(a.c.Client).RetrieveOne(ctx, *a.c.ServiceContent.SessionManager, []string{"sessionList"}, &sm); err != nil {
		a.t.Fatalf("retrieve sessionList: %v", err)
	}
	var keys []string
	for _, us := range sm.SessionList {
		if us.Key != cur.Key {
			keys = append(keys, us.Key)
		}
	}
	if len(keys) == 0 {
		a.t.Fatal("no session to terminate")
	}
	if err := m.TerminateSession(ctx, keys); err != nil {
		a.t.Fatalf("TerminateSession: %v", err)
	}
}

func watchSim(t *testing.T) *Simulator {
	return startSim(t, SimulatorConfig{Clusters: 1, HostsPerCluster: 1, Datastores: 1})
}

func TestWatchVMs(t *testing.T) {
	t.Parallel()
	sim := watchSim(t)
	admin := newVMAdmin(t, sim)
	mine := admin.create("mine", watchTestManagedBy)
	admin.create("theirs", "org.example.other")
	admin.create("unmanaged", "")

	s := login(t, simConfig(sim))
	const reconcile = 2 * time.Second
	before := s.Calls()
	log, stop := startWatch(t, s, WatchOptions{ManagedByKey: watchTestManagedBy, Reconcile: reconcile, MaxWait: time.Second})

	waitFor(t, 3*time.Second, "initial upsert of mine", func() bool {
		return log.has(Upsert, "mine", func(st VMState) bool {
			return st.PowerState == "poweredOff" && st.InstanceUUID != "" && st.ManagedBy == watchTestManagedBy &&
				st.Ref == refFrom(mine.Reference()) && !st.Host.IsZero() && st.ChangeVersion != ""
		})
	})
	time.Sleep(100 * time.Millisecond) // let the first (full) WaitForUpdatesEx pass
	setup := delta(before, s.Calls())
	t.Logf("round trips to start watching: %v", setup)

	// A power change behind the watcher's back.
	before = s.Calls()
	start := time.Now()
	admin.do("power on", mine.PowerOn)
	waitFor(t, 2*time.Second, "poweredOn", func() bool {
		return log.has(Upsert, "mine", func(st VMState) bool { return st.PowerState == "poweredOn" })
	})
	t.Logf("power on reported after %s; round trips: %v", time.Since(start).Round(time.Millisecond), delta(before, s.Calls()))

	before = s.Calls()
	start = time.Now()
	admin.do("power off", func(ctx context.Context) (*object.Task, error) { return mine.PowerOff(ctx) })
	waitFor(t, 2*time.Second, "poweredOff", func() bool {
		evs := log.all()
		last := evs[len(evs)-1]
		return last.Kind == Upsert && last.State.Name == "mine" && last.State.PowerState == "poweredOff"
	})
	t.Logf("power off reported after %s; round trips: %v", time.Since(start).Round(time.Millisecond), delta(before, s.Calls()))

	// A new VM appears; the re-enter of every VM that vcsim sends with it
	// must not produce events for unchanged VMs.
	//
	// vcsim races (go test -race) when a VM is created while a
	// WaitForUpdatesEx on a view-based filter is collecting: createVM
	// assigns the new VM's name without its lock (simulator/folder.go:477)
	// while the collector reads it under the lock. So the VM is created
	// while the watcher sits in onEvent, with no long-poll on the server.
	held, release := log.holdNext(t, func(e VMEvent) bool { return e.State.PowerState == "poweredOn" })
	admin.do("power on", mine.PowerOn)
	select {
	case <-held:
	case <-time.After(2 * time.Second):
		t.Fatal("no poweredOn event")
	}
	n := log.count("mine")
	vm := admin.create("new", watchTestManagedBy)
	release()
	waitFor(t, 2*time.Second, "upsert of new", func() bool { return log.has(Upsert, "new", nil) })
	time.Sleep(200 * time.Millisecond)
	if got := log.count("mine"); got != n {
		t.Errorf("creating a VM produced %d events for the unchanged VM mine", got-n)
	}

	// A destroyed VM is reported Removed (by leave or by reconcile).
	admin.do("destroy", vm.Destroy)
	waitFor(t, reconcile+2*time.Second, "removal of new", func() bool { return log.has(Removed, "new", nil) })

	// Round trips while nothing changes: one long-poll per MaxWait, one
	// retrieval per reconcile.
	before = s.Calls()
	time.Sleep(reconcile + 100*time.Millisecond)
	t.Logf("round trips over one quiet reconcile period (%s, MaxWait 1s): %v", reconcile, delta(before, s.Calls()))

	stop()
	for _, e := range log.all() {
		if e.State.ManagedBy != watchTestManagedBy {
			t.Errorf("event for a VM not managed by %s: %+v", watchTestManagedBy, e)
		}
	}
	checkNoWatcherGoroutines(t)
	if n := serverSessions(t, sim); n != 2 {
		t.Errorf("simulator holds %d sessions, want 2 (the watcher's and the admin's)", n)
	}
}

func TestWatchVMsAll(t *testing.T) {
	t.Parallel()
	sim := watchSim(t)
	admin := newVMAdmin(t, sim)
	admin.create("a", watchTestManagedBy)
	admin.create("b", "")
	s := login(t, simConfig(sim))
	log, stop := startWatch(t, s, WatchOptions{MaxWait: time.Second})
	waitFor(t, 3*time.Second, "both VMs", func() bool {
		return log.has(Upsert, "a", nil) && log.has(Upsert, "b", func(st VMState) bool { return st.ManagedBy == "" })
	})
	stop()
	if got := len(log.all()); got != 2 {
		t.Errorf("got %d events, want 2: %+v", got, log.all())
	}
}

func TestWatchVMsSurvivesTerminatedSession(t *testing.T) {
	t.Parallel()
	sim := watchSim(t)
	admin := newVMAdmin(t, sim)
	vm := admin.create("mine", watchTestManagedBy)
	s := login(t, simConfig(sim))
	log, stop := startWatch(t, s, WatchOptions{ManagedByKey: watchTestManagedBy, MaxWait: time.Second})
	waitFor(t, 3*time.Second, "initial upsert", func() bool { return log.has(Upsert, "mine", nil) })

	for i, want := range []string{"poweredOn", "poweredOff"} {
		// Lose the session, and let the watcher notice (its long-poll
		// fails within MaxWait) and rebuild before changing the VM, so
		// the change must come through the rebuilt collector.
		filters := s.Calls()["CreateFilter"]
		before := s.Calls()
		start := time.Now()
		admin.terminateOthers()
		waitFor(t, 5*time.Second, "re-login and rebuild", func() bool {
			return s.Relogins() == int64(i+1) && s.Calls()["CreateFilter"] > filters
		})
		t.Logf("rebuilt %s after session loss; round trips: %v",
			time.Since(start).Round(time.Millisecond), delta(before, s.Calls()))
		if want == "poweredOn" {
			admin.do("power on", vm.PowerOn)
		} else {
			admin.do("power off", func(ctx context.Context) (*object.Task, error) { return vm.PowerOff(ctx) })
		}
		waitFor(t, 2*time.Second, want+" after session loss", func() bool {
			evs := log.all()
			last := evs[len(evs)-1]
			return last.State.Name == "mine" && last.State.PowerState == want
		})
	}
	stop()
	for _, e := range log.all() {
		if e.Kind != Upsert {
			t.Errorf("unexpected event %+v", e)
		}
	}
	if got := len(log.all()); got != 3 {
		t.Errorf("got %d events, want 3 (no duplicates after rebuilds): %+v", got, log.all())
	}
	checkNoWatcherGoroutines(t)
	if n := serverSessions(t, sim); n != 2 {
		t.Errorf("simulator holds %d sessions, want 2 (the watcher's and the admin's)", n)
	}
}

// TestWatchVMsReconcileRemoves checks that a VM the watcher knows but the
// full retrieval no longer returns is reported Removed, as happens when
// vcsim drops a leave.
func TestWatchVMsReconcileRemoves(t *testing.T) {
	t.Parallel()
	sim := watchSim(t)
	admin := newVMAdmin(t, sim)
	admin.create("real", "")
	s := login(t, simConfig(sim))

	ghost := types.ManagedObjectReference{Type: "VirtualMachine", Value: "vm-ghost"}
	log := &watchEventLog{}
	opts, err := WatchOptions{MaxWait: time.Second}.resolve()
	if err != nil {
		t.Fatal(err)
	}
	w := &vmWatcher{
		s: s, opts: opts, onEvent: log.add,
		raw:   map[types.ManagedObjectReference]VMState{ghost: {Ref: refFrom(ghost), Name: "ghost"}},
		known: map[types.ManagedObjectReference]VMState{ghost: {Ref: refFrom(ghost), Name: "ghost"}},
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.run(ctx) }()
	waitFor(t, 3*time.Second, "removal of ghost", func() bool {
		return log.has(Removed, "ghost", nil) && log.has(Upsert, "real", nil)
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("run returned %v", err)
	}
}

func TestWatchVMsErrors(t *testing.T) {
	t.Parallel()
	s, err := New(Config{URL: "https://user:pass@127.0.0.1:1/sdk", Insecure: true}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WatchVMs(t.Context(), WatchOptions{Reconcile: -1}, func(VMEvent) {}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("negative Reconcile: got %v, want ErrInvalidConfig", err)
	}
	if err := s.WatchVMs(t.Context(), WatchOptions{}, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("nil onEvent: got %v, want ErrInvalidConfig", err)
	}
	if err := s.WatchVMs(t.Context(), WatchOptions{}, func(VMEvent) {}); !errors.Is(err, ErrNotLoggedIn) {
		t.Errorf("not logged in: got %v, want ErrNotLoggedIn", err)
	}
}

func TestWatchVMsStopsAtLogout(t *testing.T) {
	t.Parallel()
	sim := watchSim(t)
	s, err := New(simConfig(sim), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Login(t.Context()); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.WatchVMs(t.Context(), WatchOptions{MaxWait: time.Second}, func(VMEvent) {}) }()
	time.Sleep(200 * time.Millisecond)
	if err := s.Logout(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrNotLoggedIn) {
			t.Errorf("WatchVMs returned %v, want ErrNotLoggedIn", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WatchVMs still running 5 s after Logout")
	}
}

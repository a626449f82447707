package compute

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
)

// What the lifecycle remembers of vCenter between operations, so that an
// operation asks vCenter only for the work itself. Each entry is dropped
// when vCenter says it is stale (the object is gone), and the next
// operation reads it afresh; nothing here is trusted past that.

// vmIndex maps instance uuids to their VMs as the VM watcher reports them
// (one WaitForUpdatesEx stream over the agent's VMs): stop, start, reboot
// and delete find their VM here instead of asking vCenter (FindAllByUuid
// and a property read, 2 round trips each).
type vmIndex struct {
	mu  sync.Mutex
	vms map[string]vcenter.VMState
}

func (x *vmIndex) apply(ev vcenter.VMEvent) {
	if ev.State.InstanceUUID == "" {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.vms == nil {
		x.vms = map[string]vcenter.VMState{}
	}
	switch ev.Kind {
	case vcenter.Upsert:
		x.vms[ev.State.InstanceUUID] = ev.State
	case vcenter.Removed:
		if x.vms[ev.State.InstanceUUID].Ref == ev.State.Ref {
			delete(x.vms, ev.State.InstanceUUID)
		}
	}
}

// get returns the VM last reported for the instance.
func (x *vmIndex) get(uuid string) (vcenter.Ref, bool) {
	st, ok := x.state(uuid)
	return st.Ref, ok
}

// state returns the VM's state as last reported.
func (x *vmIndex) state(uuid string) (vcenter.VMState, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	st, ok := x.vms[uuid]
	return st, ok
}

// countOn returns how many of the indexed VMs run on the given hosts.
func (x *vmIndex) countOn(hosts []vcenter.Host) int {
	on := make(map[vcenter.Ref]bool, len(hosts))
	for _, h := range hosts {
		on[h.Ref] = true
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	n := 0
	for _, st := range x.vms {
		if on[st.Host] {
			n++
		}
	}
	return n
}

func (x *vmIndex) forget(uuid string, ref vcenter.Ref) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.vms[uuid].Ref == ref {
		delete(x.vms, uuid)
	}
}

// withVM runs f on the instance's VM: the indexed one if the watcher has
// seen it, else (or if vCenter says the indexed one is gone) the one
// vCenter finds by instance uuid; none is nova's InstanceNotFound.
func (l *lifecycle) withVM(ctx context.Context, inst *ovo.Object, f func(vm vcenter.Ref) error) error {
	uuid := inst.StringOrEmpty("uuid")
	if ref, ok := l.vms.get(uuid); ok {
		err := f(ref)
		if !errors.Is(err, vcenter.ErrNotFound) {
			return err
		}
		l.vms.forget(uuid, ref) // gone behind the watcher's back
	}
	vm, err := l.vmOf(ctx, inst)
	if err != nil {
		return err
	}
	return f(vm.Ref)
}

// vmGetter reads a VM by its moref (vcenter.Session.GetVM).
type vmGetter interface {
	GetVM(ctx context.Context, ref vcenter.Ref) (vcenter.VM, error)
}

// vmRead reads the instance's VM: through the watcher's moref when it has
// one (1 round trip), else found by instance uuid (FindAllByUuid and the
// read, 2); none is nova's InstanceNotFound.
func (l *lifecycle) vmRead(ctx context.Context, inst *ovo.Object) (vcenter.VM, error) {
	uuid := inst.StringOrEmpty("uuid")
	if g, ok := l.hv.(vmGetter); ok {
		if ref, ok := l.vms.get(uuid); ok {
			vm, err := g.GetVM(ctx, ref)
			switch {
			case err == nil && vm.InstanceUUID == uuid:
				return vm, nil
			case err != nil && !errors.Is(err, vcenter.ErrNotFound):
				return vm, err
			}
			l.vms.forget(uuid, ref) // gone (or another VM's) behind the watcher's back
		}
	}
	return l.vmOf(ctx, inst)
}

// spawnCache keeps what every build needs and rarely changes: the
// extension registration, the projects' Instances folders and a recent
// read of the clusters (their datastores' free space may lag by
// inventoryTTL, which only steers the choice among usable datastores).
type spawnCache struct {
	mu         sync.Mutex
	extension  bool
	folders    map[string]vcenter.Ref // datacenter + "\x00" + project id
	clusters   []vcenter.Cluster
	clustersAt time.Time
}

// inventoryTTL bounds the age of the cluster inventory a build uses; a
// burst of builds shares one read.
const inventoryTTL = 10 * time.Second

// clusters returns the clusters, read at most inventoryTTL ago.
func (l *lifecycle) clusters(ctx context.Context) ([]vcenter.Cluster, error) {
	c := &l.known
	c.mu.Lock()
	if c.clusters != nil && time.Since(c.clustersAt) < inventoryTTL {
		defer c.mu.Unlock()
		return c.clusters, nil
	}
	c.mu.Unlock()
	clusters, err := l.hv.Clusters(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.clusters, c.clustersAt = clusters, time.Now()
	c.mu.Unlock()
	return clusters, nil
}

// ensureExtension registers the compute extension once per agent.
func (l *lifecycle) ensureExtension(ctx context.Context) error {
	c := &l.known
	c.mu.Lock()
	done := c.extension
	c.mu.Unlock()
	if done {
		return nil
	}
	if err := l.hv.EnsureExtension(ctx, extensionKey, "OpenStack Compute", "OpenStack"); err != nil {
		return err
	}
	c.mu.Lock()
	c.extension = true
	c.mu.Unlock()
	return nil
}

// instancesFolder returns the folder OpenStack/Project (<id>)/Instances of
// the datacenter, as nova's VMware driver lays it out.
func (l *lifecycle) instancesFolder(ctx context.Context, dc, project string) (vcenter.Ref, error) {
	c := &l.known
	key := dc + "\x00" + project
	c.mu.Lock()
	ref, ok := c.folders[key]
	c.mu.Unlock()
	if ok {
		return ref, nil
	}
	ref, err := l.hv.EnsureFolderPath(ctx, dc, "OpenStack", "Project ("+project+")", "Instances")
	if err != nil {
		return ref, err
	}
	c.mu.Lock()
	if c.folders == nil {
		c.folders = map[string]vcenter.Ref{}
	}
	c.folders[key] = ref
	c.mu.Unlock()
	return ref, nil
}

// forgetSpawnCache drops what a failed build may have found stale (a
// folder or datastore removed meanwhile); the next build reads it again.
func (l *lifecycle) forgetSpawnCache() {
	c := &l.known
	c.mu.Lock()
	c.folders = nil
	c.clusters = nil
	c.mu.Unlock()
}

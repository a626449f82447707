package compute

import (
	"context"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
)

// VMWatcher streams the power state of the agent's VMs.
type VMWatcher interface {
	WatchVMs(ctx context.Context, opts vcenter.WatchOptions, onEvent func(vcenter.VMEvent)) error
}

// syncPowerStates makes nova's view follow vCenter as nova's
// _sync_power_states does, but as vCenter reports changes instead of every
// 600 s: an ACTIVE server whose VM was powered off behind nova's back is
// stopped through the same path as nova's compute API stop (task_state
// powering-off, a "stop" instance action, then stop_instance), so it shows
// SHUTOFF within seconds. It runs until ctx ends.
func (l *lifecycle) syncPowerStates(ctx context.Context, w VMWatcher, reconcile time.Duration) {
	log := l.log.With().Str("task", "power_state_sync").Logger()
	// A check waits for the instance's lock, which an operation may hold
	// for a while (a build creates its VM powered off): it runs on its
	// own, so that the stream keeps flowing meanwhile, at most one per
	// instance at a time. They all end before this returns.
	var (
		checks  sync.WaitGroup
		mu      sync.Mutex
		pending = map[string]bool{}
	)
	defer checks.Wait()
	check := func(uuid string) {
		mu.Lock()
		defer mu.Unlock()
		if pending[uuid] {
			return
		}
		pending[uuid] = true
		checks.Add(1)
		go func() {
			defer checks.Done()
			l.stopIfShutOffBehindNovasBack(ctx, uuid, log)
			mu.Lock()
			delete(pending, uuid)
			mu.Unlock()
		}()
	}
	for ctx.Err() == nil {
		err := w.WatchVMs(ctx, vcenter.WatchOptions{ManagedByKey: extensionKey, Reconcile: reconcile}, func(ev vcenter.VMEvent) {
			l.vms.apply(ev)
			if ev.Kind != vcenter.Upsert || ev.State.PowerState != vcenter.PowerStateOff || ev.State.InstanceUUID == "" {
				return
			}
			check(ev.State.InstanceUUID)
		})
		if ctx.Err() != nil {
			return
		}
		log.Warn().Err(err).Msg("VM watcher stopped; starting it again")
		sleep(ctx, 5*time.Second)
	}
}

func (l *lifecycle) stopIfShutOffBehindNovasBack(ctx context.Context, uuid string, log zerolog.Logger) {
	unlock := l.locks.lock(uuid)
	defer unlock()
	rc := AdminContext()
	v, err := l.cond.ClassAction(ctx, rc, "Instance", "get_by_uuid", []any{uuid}, map[string]any{"expected_attrs": []string{}})
	if err != nil {
		if !isRemote(err, "InstanceNotFound") {
			log.Warn().Err(err).Str("instance_uuid", uuid).Msg("reading the instance failed")
		}
		return
	}
	inst, ok := v.(*ovo.Object)
	if !ok || inst.StringOrEmpty("host") != l.host || inst.StringOrEmpty("vm_state") != "active" || !inst.IsNull("task_state") {
		return
	}
	// The event may predate an operation that held the lock meanwhile (a
	// build powers its VM on after creating it off). When the stream has
	// reported the VM on since, that settles it; otherwise ask vCenter, as
	// nova's sync asks the driver for the current state (the stream may
	// lag behind a power-on that just finished).
	if st, ok := l.vms.state(uuid); ok && st.PowerState != vcenter.PowerStateOff {
		return
	}
	if vm, err := l.vmRead(ctx, inst); err != nil || vm.PowerState != vcenter.PowerStateOff {
		return
	}
	log.Info().Str("instance_uuid", uuid).Msg("instance shutdown by itself; calling the stop API")
	// What nova's compute API stop does before it casts stop_instance.
	inst.SetString("task_state", "powering-off")
	if err := l.save(ctx, rc, inst, []any{nil}); err != nil {
		log.Warn().Err(err).Str("instance_uuid", uuid).Msg("instance changed meanwhile; not stopping it")
		return
	}
	if _, err := l.cond.ClassAction(ctx, rc, "InstanceAction", "action_start", []any{uuid, "stop"}, map[string]any{"want_result": false}); err != nil {
		log.Warn().Err(err).Str("instance_uuid", uuid).Msg("recording the stop action failed")
	}
	if err := l.eventStart(ctx, rc, uuid, "compute_stop_instance"); err != nil {
		log.Warn().Err(err).Msg("event_start failed")
	}
	setStates(inst, "stopped", nil, powerShutdown)
	err = l.save(ctx, rc, inst, "powering-off")
	if err != nil {
		log.Error().Err(err).Str("instance_uuid", uuid).Msg("stopping the instance failed")
	}
	l.eventFinish(ctx, rc, uuid, "compute_stop_instance", err)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

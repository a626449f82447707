package compute

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/rpc"
)

// instanceEvents is nova's InstanceEvents: a build registers the external
// events it will wait for (network-vif-plugged-<port id>) before it
// creates the VM, so that none is lost, and external_instance_event hands
// them over as neutron reports them through nova-api.
type instanceEvents struct {
	mu      sync.Mutex
	waiting map[string]map[string]chan struct{} // instance uuid -> event key -> closed on arrival
}

// prepare registers the events of an instance and returns a function that
// waits for all of them; it returns the keys that did not arrive in time.
// The registration ends when wait returns.
func (e *instanceEvents) prepare(uuid string, keys []string) (wait func(ctx context.Context, timeout time.Duration) ([]string, error)) {
	e.mu.Lock()
	if e.waiting == nil {
		e.waiting = map[string]map[string]chan struct{}{}
	}
	chans := map[string]chan struct{}{}
	for _, k := range keys {
		chans[k] = make(chan struct{})
	}
	e.waiting[uuid] = chans
	e.mu.Unlock()
	return func(ctx context.Context, timeout time.Duration) ([]string, error) {
		defer func() {
			e.mu.Lock()
			delete(e.waiting, uuid)
			e.mu.Unlock()
		}()
		deadline := time.NewTimer(timeout)
		defer deadline.Stop()
		for k, ch := range chans {
			select {
			case <-ch:
			case <-deadline.C:
				var missing []string
				for k2, ch2 := range chans {
					select {
					case <-ch2:
					default:
						missing = append(missing, k2)
					}
				}
				slices.Sort(missing)
				return missing, nil
			case <-ctx.Done():
				return nil, fmt.Errorf("waiting for %s: %w", k, ctx.Err())
			}
		}
		return nil, nil
	}
}

// deliver hands an event to the build waiting for it; false when none
// waits (nova then logs an unexpected event).
func (e *instanceEvents) deliver(uuid, key string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	ch, ok := e.waiting[uuid][key]
	if !ok {
		return false
	}
	select {
	case <-ch:
	default:
		close(ch)
	}
	return true
}

// vifPluggedEvents are the network-vif-plugged events a build waits for:
// one per port neutron has not reported active yet (nova's
// _get_neutron_events).
func vifPluggedEvents(networkInfo []any) []string {
	var keys []string
	for _, vif := range vifMaps(networkInfo) {
		if active, _ := vif["active"].(bool); active {
			continue
		}
		if id, _ := vif["id"].(string); id != "" {
			keys = append(keys, "network-vif-plugged-"+id)
		}
	}
	return keys
}

// waitVIFsPlugged waits, as nova's wait_for_instance_event does with
// [DEFAULT] vif_plugging_timeout, for neutron to report the VM's ports
// plugged; a timeout fails the build when vif_plugging_is_fatal, as
// VirtualInterfaceCreateException.
func (l *lifecycle) waitVIFsPlugged(ctx context.Context, uuid string, wait func(context.Context, time.Duration) ([]string, error)) error {
	missing, err := wait(ctx, l.vifTimeout)
	if err != nil || len(missing) == 0 {
		return err
	}
	log := zerolog.Ctx(ctx).Warn().Strs("events", missing).Dur("timeout", l.vifTimeout)
	if !l.vifFatal {
		log.Msg("Timeout waiting for vif plugging callback for instance; continuing (vif_plugging_is_fatal is off)")
		return nil
	}
	log.Msg("Timeout waiting for vif plugging callback for instance")
	return &rpc.RemoteError{Class: "VirtualInterfaceCreateException", Module: "nova.exception",
		Message: "Virtual Interface creation failed", Kwargs: map[string]any{"code": 500}}
}

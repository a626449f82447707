package compute

import (
	"context"
	"encoding/json"
	"net/url"
	"strings"
	"testing"

	"github.com/vcagent/vcagent/agent/cloud"
	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// fixedIPNeutron is the fake neutron with what the multinic calls need
// beyond it: ports filtered by fixed_ips=ip_address=…, and an address
// allocated for a fixed IP asked by subnet alone.
type fixedIPNeutron struct {
	Neutron
	updates []string
}

func (n *fixedIPNeutron) ListPorts(ctx context.Context, q url.Values) ([]cloud.Port, error) {
	ports, err := n.Neutron.ListPorts(ctx, q)
	want, ok := strings.CutPrefix(q.Get("fixed_ips"), "ip_address=")
	if err != nil || !ok {
		return ports, err
	}
	var out []cloud.Port
	for _, p := range ports {
		for _, ip := range p.FixedIPs {
			if ip.IPAddress == want {
				out = append(out, p)
				break
			}
		}
	}
	return out, nil
}

func (n *fixedIPNeutron) UpdatePort(ctx context.Context, id string, body map[string]any) (cloud.Port, error) {
	b, _ := json.Marshal(body)
	n.updates = append(n.updates, id+" "+string(b))
	if fixed, ok := body["fixed_ips"].([]any); ok {
		for _, f := range fixed {
			if m := f.(map[string]any); m["ip_address"] == nil {
				m["ip_address"] = "10.1.0.99"
			}
		}
	}
	return n.Neutron.UpdatePort(ctx, id, body)
}

// machineIDHV records the VM's machine.id.
type machineIDHV struct {
	*srHV
	machineIDs []string
}

func (h *machineIDHV) SetExtraConfig(_ context.Context, _ vcenter.Ref, values map[string]string) error {
	h.machineIDs = append(h.machineIDs, values["machine.id"])
	return nil
}

func fixedIPRequest(t *testing.T, method string, inst *ovo.Object, args map[string]any) *rpc.Request {
	t.Helper()
	enc, err := ovo.NovaCodec().Encode(inst)
	if err != nil {
		t.Fatal(err)
	}
	args["instance"] = enc
	raw, _ := json.Marshal(args)
	rc, _ := rpc.NewContext(map[string]any{"request_id": "req-fip", "user_id": "u", "project_id": "proj", "is_admin": true})
	return &rpc.Request{Context: rc, Method: method, Version: "6.0", Args: raw}
}

// cachedIPs lists the addresses of a network info.
func cachedIPs(vifs []map[string]any) []string {
	var out []string
	for _, v := range vifs {
		network, _ := v["network"].(map[string]any)
		subnets, _ := network["subnets"].([]any)
		for _, s := range subnets {
			ips, _ := s.(map[string]any)["ips"].([]any)
			for _, ip := range ips {
				out = append(out, ip.(map[string]any)["address"].(string))
			}
		}
	}
	return out
}

// TestAddAndRemoveFixedIPFollowNova drives add_fixed_ip_to_instance and
// remove_fixed_ip_from_instance as nova's manager and neutron API do them:
// the port's fixed IPs updated, the info cache rebuilt, machine.id set on
// the VM, the instance saved (updated_at), no action event; and the
// NetworkNotFoundForInstance and FixedIpNotFoundForInstance failures
// recorded as instance faults.
//
// Not parallel: fake conductors of concurrent tests would share the
// "conductor" queue.
func TestAddAndRemoveFixedIPFollowNova(t *testing.T) {
	l, fn, nc := netEnv(t)
	fixed := &fixedIPNeutron{Neutron: l.net.client}
	l.net.client = fixed
	hv := &machineIDHV{srHV: &srHV{vm: srVM(vcenter.PowerStateOn)}}
	l.hv = hv
	fn.addNetwork("net1", "private", "proj", false, "physnet1")
	fn.addNetwork("net2", "other", "proj", false, "physnet1")
	fn.mu.Lock()
	p := fn.newPort("port1", "net1", "proj", "10.1.0.5")
	p["device_id"], p["device_owner"] = netUUID, "compute:nova"
	p["binding:host_id"], p["binding:vif_type"] = "host1", "dvs"
	fn.mu.Unlock()
	ctx := t.Context()
	inst := netInstance()
	// The info cache holds the port (the heal's forced refresh).
	if _, err := l.getInstanceNWInfo(ctx, rpc.Context{}, inst, nwInfoOpts{force: true}); err != nil {
		t.Fatal(err)
	}
	inst.ResetChangesRecursive()

	if _, err := l.AddFixedIPToInstance(ctx, fixedIPRequest(t, "add_fixed_ip_to_instance", inst, map[string]any{"network_id": "net1"})); err != nil {
		t.Fatal(err)
	}
	if len(fixed.updates) != 1 || fixed.updates[0] != `port1 {"fixed_ips":[{"ip_address":"10.1.0.5","subnet_id":"subnet-net1"},{"subnet_id":"subnet-net1"}]}` {
		t.Errorf("port updates %q", fixed.updates)
	}
	if got := strings.Join(cachedIPs(nc.lastCache(t)), ","); got != "10.1.0.5,10.1.0.99" {
		t.Errorf("cached IPs %s", got)
	}
	if len(hv.machineIDs) != 1 || !strings.Contains(hv.machineIDs[0], ";10.1.0.5;255.255.255.0;10.1.0.1;10.1.0.255;8.8.8.8#") {
		t.Errorf("machine.id %q", hv.machineIDs)
	}
	if nc.did("Instance.save") != 1 || nc.did("InstanceActionEvent.event_start") != 0 {
		t.Errorf("conductor actions %q", nc.actions)
	}

	// Remove the second address.
	fixed.updates = nil
	if _, err := l.RemoveFixedIPFromInstance(ctx, fixedIPRequest(t, "remove_fixed_ip_from_instance", inst, map[string]any{"address": "10.1.0.99"})); err != nil {
		t.Fatal(err)
	}
	if len(fixed.updates) != 1 || fixed.updates[0] != `port1 {"fixed_ips":[{"ip_address":"10.1.0.5","subnet_id":"subnet-net1"}]}` {
		t.Errorf("port updates %q", fixed.updates)
	}
	if got := strings.Join(cachedIPs(nc.lastCache(t)), ","); got != "10.1.0.5" {
		t.Errorf("cached IPs after removal %s", got)
	}
	if len(hv.machineIDs) != 2 || nc.did("Instance.save") != 2 {
		t.Errorf("machine.id %q, saves %d", hv.machineIDs, nc.did("Instance.save"))
	}

	// An address the instance lacks; a network it has no port on.
	_, err := l.RemoveFixedIPFromInstance(ctx, fixedIPRequest(t, "remove_fixed_ip_from_instance", inst, map[string]any{"address": "10.9.9.9"}))
	if remoteClass(err) != "FixedIpNotFoundForInstance" {
		t.Errorf("unknown address: %v", err)
	}
	_, err = l.AddFixedIPToInstance(ctx, fixedIPRequest(t, "add_fixed_ip_to_instance", inst, map[string]any{"network_id": "net2"}))
	if remoteClass(err) != "NetworkNotFoundForInstance" {
		t.Errorf("network without a port: %v", err)
	}
	_, err = l.AddFixedIPToInstance(ctx, fixedIPRequest(t, "add_fixed_ip_to_instance", inst, map[string]any{"network_id": "net-none"}))
	if remoteClass(err) != "NetworkNotFoundForInstance" {
		t.Errorf("network without subnets: %v", err)
	}
	if n := nc.did("InstanceFault.create"); n != 3 {
		t.Errorf("instance faults %d, want 3 (%q)", n, nc.actions)
	}
}

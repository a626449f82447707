//go:build integration

package integration

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/integration/cp"
)

// networkAgentEnv is the environment of an agent that is both the compute
// host and its DVS agent, with the simulator's DVS0 on physnet1.
func networkAgentEnv() []string {
	return []string{
		"VCAGENT_ROLES=compute,network",
		"VCAGENT_NETWORK_BRIDGE_MAPPINGS=physnet1:DVS0",
		"VCAGENT_NETWORK_REPORT_INTERVAL=5s",
		"VCAGENT_NETWORK_POLLING_INTERVAL=500ms",
		// builds wait for neutron's network-vif-plugged (off by default,
		// as in nova's VMware driver)
		"VCAGENT_VIF_PLUGGING_TIMEOUT=60s",
	}
}

// vmNIC is a VM's network card as vCenter shows it.
type vmNIC struct {
	MAC, SwitchUUID, PortgroupKey, PortKey string
}

// vmNICs reads the cards of the VM of instance uuid and its nvp.iface-id.N
// extraConfig.
func vmNICs(t testing.TB, vc *vcenter.Session, uuid string) ([]vmNIC, map[string]string) {
	t.Helper()
	ctx := context.Background()
	vm, err := vc.FindVMByInstanceUUID(ctx, uuid)
	if err != nil {
		t.Fatal(err)
	}
	var m mo.VirtualMachine
	if err := property.DefaultCollector(vc.Client()).RetrieveOne(ctx, vm.Ref.Reference(), []string{"config.hardware.device", "config.extraConfig"}, &m); err != nil {
		t.Fatal(err)
	}
	var nics []vmNIC
	for _, d := range m.Config.Hardware.Device {
		card, ok := d.(types.BaseVirtualEthernetCard)
		if !ok {
			continue
		}
		c := card.GetVirtualEthernetCard()
		n := vmNIC{MAC: c.MacAddress}
		if b, ok := c.Backing.(*types.VirtualEthernetCardDistributedVirtualPortBackingInfo); ok {
			n.SwitchUUID, n.PortgroupKey, n.PortKey = b.Port.SwitchUuid, b.Port.PortgroupKey, b.Port.PortKey
		}
		nics = append(nics, n)
	}
	extra := map[string]string{}
	for _, o := range m.Config.ExtraConfig {
		if v := o.GetOptionValue(); strings.HasPrefix(v.Key, "nvp.") {
			extra[v.Key] = fmt.Sprint(v.Value)
		}
	}
	return nics, extra
}

// waitPort polls neutron until port id satisfies pred, and returns it.
func waitPort(t testing.TB, ctrl *cp.ControlPlane, id string, within time.Duration, what string, pred func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		r, err := ctrl.NeutronGET(context.Background(), "/ports/"+id)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := r["port"].(map[string]any)
		if pred(p) {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("port %s: not %s after %s: status %v, binding %v on %v", id, what, within, p["status"], p["binding:vif_type"], p["binding:host_id"])
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// portgroupOf returns DVS0's port group of a network (ok false when none).
func portgroupOf(t testing.TB, vc *vcenter.Session, networkID string) (vcenter.DVS, vcenter.Portgroup, bool) {
	t.Helper()
	ctx := context.Background()
	d, err := vc.DVSByName(ctx, "DVS0")
	if err != nil {
		t.Fatal(err)
	}
	pgs, err := vc.Portgroups(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	for _, pg := range pgs {
		if pg.Name == "DVS0"+networkID {
			return d, pg, true
		}
	}
	return d, vcenter.Portgroup{}, false
}

func waitPortgroup(t testing.TB, vc *vcenter.Session, networkID string, within time.Duration, present bool) vcenter.Portgroup {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		_, pg, ok := portgroupOf(t, vc, networkID)
		if ok == present {
			return pg
		}
		if time.Now().After(deadline) {
			t.Fatalf("port group DVS0%s present=%v after %s", networkID, ok, within)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// dvsPortNamed returns the DVS0 port named after a neutron port.
func dvsPortNamed(t testing.TB, vc *vcenter.Session, pgKey, name string) (vcenter.DVPort, bool) {
	t.Helper()
	ctx := context.Background()
	d, err := vc.DVSByName(ctx, "DVS0")
	if err != nil {
		t.Fatal(err)
	}
	ports, err := vc.Ports(ctx, d, pgKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ports {
		if p.Name == name {
			return p, true
		}
	}
	return vcenter.DVPort{}, false
}

// createVLANNetwork creates a VLAN network on physnet1; neutron picks the
// VLAN from its range (so runs never collide on one). It returns the
// network's id and VLAN.
func createVLANNetwork(t testing.TB, ctrl *cp.ControlPlane, name string) (string, int32) {
	t.Helper()
	ctx := context.Background()
	r, err := ctrl.NeutronPOST(ctx, "/networks", map[string]any{"network": map[string]any{
		"name": name, "provider:network_type": "vlan", "provider:physical_network": "physnet1",
	}})
	if err != nil {
		t.Fatal(err)
	}
	n := r["network"].(map[string]any)
	id := n["id"].(string)
	t.Cleanup(func() { _, _ = ctrl.NeutronDELETE(context.Background(), "/networks/"+id) })
	return id, int32(num(n["provider:segmentation_id"]))
}

// TestNetworkRoleWithRealNeutronAndNova: the agent is compute host and DVS
// agent at once, against the control plane's real neutron-server (with the
// project's vmware_dvs mechanism driver) and real nova.
func TestNetworkRoleWithRealNeutronAndNova(t *testing.T) {
	ctrl, vc, agent, host, image := computeAgentWithImage(t, "vcagent-net-", networkAgentEnv()...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	t.Run("the agent is alive in neutron's agent list", func(t *testing.T) {
		wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
		defer wcancel()
		a, err := ctrl.NeutronWaitAgent(wctx, host, "DVS agent")
		if err != nil {
			t.Fatal(err)
		}
		conf, _ := a["configurations"].(map[string]any)
		bm, _ := conf["bridge_mappings"].(map[string]any)
		if a["binary"] != "neutron-dvs-agent" || bm["physnet1"] != "DVS0" {
			t.Errorf("agent %v", a)
		}
	})

	netID, vlan := createVLANNetwork(t, ctrl, "vcagent-it-net")
	if _, err := ctrl.NeutronPOST(ctx, "/subnets", map[string]any{"subnet": map[string]any{
		"network_id": netID, "ip_version": 4, "cidr": "192.168.140.0/24", "name": "vcagent-it-subnet-" + host,
	}}); err != nil {
		t.Fatal(err)
	}
	t.Run("create_network makes the port group with the VLAN", func(t *testing.T) {
		pg := waitPortgroup(t, vc, netID, 30*time.Second, true)
		if pg.VLAN != vlan || pg.Blocked {
			t.Errorf("port group %+v, want VLAN %d, not blocked", pg, vlan)
		}
	})

	// a security group of the test's own (the project's default one is
	// shared by every run)
	sgr, err := ctrl.NeutronPOST(ctx, "/security-groups", map[string]any{"security_group": map[string]any{"name": "vcagent-it-" + host}})
	if err != nil {
		t.Fatal(err)
	}
	sgID := sgr["security_group"].(map[string]any)["id"].(string)
	t.Cleanup(func() { _, _ = ctrl.NeutronDELETE(context.Background(), "/security-groups/"+sgID) })
	r, err := ctrl.NeutronPOST(ctx, "/ports", map[string]any{"port": map[string]any{"network_id": netID, "name": "vcagent-it-port", "security_groups": []string{sgID}}})
	if err != nil {
		t.Fatal(err)
	}
	port := r["port"].(map[string]any)
	portID, mac := port["id"].(string), port["mac_address"].(string)

	created, err := ctrl.NovaPOST(ctx, "/servers", map[string]any{"server": map[string]any{
		"name": "vcagent-it-netserver", "imageRef": image, "flavorRef": "42", "host": host,
		"networks": []any{map[string]any{"port": portID}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	server := created["server"].(map[string]any)["id"].(string)
	waitServer(t, ctrl, server, 2*time.Minute, settled("ACTIVE"))
	t.Run("the build waited for network-vif-plugged: the port is ACTIVE with the server", func(t *testing.T) {
		p, err := ctrl.NeutronGET(ctx, "/ports/"+portID)
		if err != nil {
			t.Fatal(err)
		}
		if st := p["port"].(map[string]any)["status"]; st != "ACTIVE" {
			t.Errorf("server ACTIVE while its port is %v", st)
		}
	})

	var pgKey string
	t.Run("the server's NIC is on the bound DVS port and the port is ACTIVE", func(t *testing.T) {
		p := waitPort(t, ctrl, portID, 30*time.Second, "ACTIVE", func(p map[string]any) bool { return p["status"] == "ACTIVE" })
		details, _ := p["binding:vif_details"].(map[string]any)
		if p["binding:vif_type"] != "dvs" || p["binding:host_id"] != host || p["device_id"] != server {
			t.Errorf("port binding %v on %v for %v", p["binding:vif_type"], p["binding:host_id"], p["device_id"])
		}
		_, pg, _ := portgroupOf(t, vc, netID)
		pgKey = pg.Key
		if details["pg_id"] != pg.Key || details["dvs_port_key"] == nil {
			t.Errorf("vif_details %v, port group %s", details, pg.Key)
		}
		nics, extra := vmNICs(t, vc, server)
		if len(nics) != 1 {
			t.Fatalf("VM NICs %+v, want 1", nics)
		}
		n := nics[0]
		if n.MAC != mac || n.PortgroupKey != pg.Key || n.PortKey != fmt.Sprint(details["dvs_port_key"]) || n.SwitchUUID != fmt.Sprint(details["dvs_id"]) {
			t.Errorf("NIC %+v, want MAC %s on %s port %v of %v", n, mac, pg.Key, details["dvs_port_key"], details["dvs_id"])
		}
		if extra["nvp.iface-id.0"] != portID || extra["nvp.vm-uuid"] != server {
			t.Errorf("extraConfig %v", extra)
		}
		dp, ok := dvsPortNamed(t, vc, pg.Key, portID)
		if !ok || dp.Key != n.PortKey || dp.ConnectedVM.Value == "" {
			t.Errorf("DVS port named %s: %+v (found %v)", portID, dp, ok)
		}
		v, err := ctrl.NovaGET(ctx, "/servers/"+server)
		if err != nil {
			t.Fatal(err)
		}
		addrs, _ := v["server"].(map[string]any)["addresses"].(map[string]any)
		if _, ok := addrs["vcagent-it-net"]; !ok {
			t.Errorf("server addresses %v lack network vcagent-it-net", addrs)
		}
	})

	t.Run("security group rule changes reach the DVS filter", func(t *testing.T) {
		rule, err := ctrl.NeutronPOST(ctx, "/security-group-rules", map[string]any{"security_group_rule": map[string]any{
			"security_group_id": sgID, "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
			"port_range_min": 2222, "port_range_max": 2222, "remote_ip_prefix": "10.22.0.0/16",
		}})
		if err != nil {
			t.Fatal(err)
		}
		ruleID := rule["security_group_rule"].(map[string]any)["id"].(string)
		has := func() bool {
			dp, _ := dvsPortNamed(t, vc, pgKey, portID)
			for _, r := range dp.Rules {
				if r.PortMin == 2222 && r.RemoteCIDR == "10.22.0.0/16" && r.Accept && r.Direction == vcenter.DirectionIncoming {
					return true
				}
			}
			return false
		}
		deadline := time.Now().Add(30 * time.Second)
		for !has() {
			if time.Now().After(deadline) {
				dp, _ := dvsPortNamed(t, vc, pgKey, portID)
				t.Fatalf("the new rule is not in the DVS port's filter: %+v", dp.Rules)
			}
			time.Sleep(300 * time.Millisecond)
		}
		if _, err := ctrl.NeutronDELETE(ctx, "/security-group-rules/"+ruleID); err != nil {
			t.Fatal(err)
		}
		deadline = time.Now().Add(30 * time.Second)
		for has() {
			if time.Now().After(deadline) {
				t.Fatal("a deleted rule stays in the DVS port's filter")
			}
			time.Sleep(300 * time.Millisecond)
		}
	})

	t.Run("interface attach and detach", func(t *testing.T) {
		att, err := ctrl.NovaPOST(ctx, "/servers/"+server+"/os-interface", map[string]any{"interfaceAttachment": map[string]any{"net_id": netID}})
		if err != nil {
			t.Fatal(err)
		}
		ia, _ := att["interfaceAttachment"].(map[string]any)
		second, _ := ia["port_id"].(string)
		if second == "" {
			t.Fatalf("attach answered %v", att)
		}
		p := waitPort(t, ctrl, second, 30*time.Second, "ACTIVE", func(p map[string]any) bool { return p["status"] == "ACTIVE" })
		nics, extra := vmNICs(t, vc, server)
		if len(nics) != 2 || nics[1].MAC != p["mac_address"] || extra["nvp.iface-id.1"] != second {
			t.Errorf("after attach: NICs %+v, extraConfig %v", nics, extra)
		}
		if _, err := ctrl.NovaDELETE(ctx, "/servers/"+server+"/os-interface/"+second); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			nics, extra = vmNICs(t, vc, server)
			if len(nics) == 1 && extra["nvp.iface-id.1"] == "free" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after detach: NICs %+v, extraConfig %v", nics, extra)
			}
			time.Sleep(300 * time.Millisecond)
		}
		// nova made that port: it deletes it, and the agent frees the DVS port
		deadline = time.Now().Add(30 * time.Second)
		for {
			_, err := ctrl.NeutronGET(ctx, "/ports/"+second)
			_, named := dvsPortNamed(t, vc, pgKey, second)
			if err != nil && !named {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("detached port %s: neutron error %v, DVS port still named: %v", second, err, named)
			}
			time.Sleep(300 * time.Millisecond)
		}
	})

	t.Run("server delete unbinds the port and frees the DVS port", func(t *testing.T) {
		if _, err := ctrl.NovaDELETE(ctx, "/servers/"+server); err != nil {
			t.Fatal(err)
		}
		waitPort(t, ctrl, portID, time.Minute, "unbound", func(p map[string]any) bool {
			return p["device_id"] == "" && p["binding:host_id"] == ""
		})
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, named := dvsPortNamed(t, vc, pgKey, portID); !named {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the DVS port stays named after the port was unbound")
			}
			time.Sleep(300 * time.Millisecond)
		}
	})

	t.Run("network delete removes the port group", func(t *testing.T) {
		if _, err := ctrl.NeutronDELETE(ctx, "/ports/"+portID); err != nil {
			t.Fatal(err)
		}
		if _, err := ctrl.NeutronDELETE(ctx, "/networks/"+netID); err != nil {
			t.Fatal(err)
		}
		waitPortgroup(t, vc, netID, 30*time.Second, false)
	})

	t.Run("a restarted agent picks up networks created while it was down", func(t *testing.T) {
		if err := agent.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-agent.done:
		case <-time.After(60 * time.Second):
			t.Fatal("the agent did not stop")
		}
		later, laterVLAN := createVLANNetwork(t, ctrl, "vcagent-it-later")
		time.Sleep(time.Second)
		if _, _, ok := portgroupOf(t, vc, later); ok {
			t.Fatal("a port group appeared while the agent was down")
		}
		vcEnv := slices.DeleteFunc(slices.Clone(agent.cmd.Env), func(s string) bool { return !strings.HasPrefix(s, "VCAGENT_") })
		startAgent(t, vcEnv...)
		pg := waitPortgroup(t, vc, later, 60*time.Second, true)
		if pg.VLAN != laterVLAN {
			t.Errorf("port group %+v, want VLAN %d", pg, laterVLAN)
		}
	})
}

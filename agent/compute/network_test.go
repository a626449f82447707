package compute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// netEnv is a lifecycle on host1 with a fake neutron and conductor.
func netEnv(t *testing.T) (*lifecycle, *fakeNeutron, *netConductor) {
	t.Helper()
	fn, client := newFakeNeutron(t)
	nc := &netConductor{}
	l := &lifecycle{cond: startNetConductor(t, nc), host: "host1", log: zerolog.Nop(), net: &networkAPI{client: client}}
	return l, fn, nc
}

func remoteClass(err error) string {
	var re *rpc.RemoteError
	if errors.As(err, &re) {
		return re.Class
	}
	return ""
}

func TestParseRequestedNetworks(t *testing.T) {
	t.Parallel()
	enc := func(reqs ...map[string]any) json.RawMessage {
		var objs []*ovo.Object
		for _, r := range reqs {
			o := ovo.New("NetworkRequest", "1.3")
			for k, v := range r {
				if v == nil {
					o.SetNull(k)
				} else {
					o.SetString(k, v.(string))
				}
			}
			objs = append(objs, o)
		}
		raw, err := ovo.NovaCodec().Marshal(ovo.NewList("NetworkRequestList", "1.1", objs...))
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	got, err := parseRequestedNetworks(enc(map[string]any{"network_id": "none", "port_id": nil}))
	if err != nil || !got.noAllocate() || got.autoAllocate() {
		t.Errorf("none: %+v %v", got, err)
	}
	got, _ = parseRequestedNetworks(enc(map[string]any{"network_id": "auto"}))
	if !got.autoAllocate() {
		t.Errorf("auto: %+v", got)
	}
	got, _ = parseRequestedNetworks(enc(map[string]any{"network_id": "net-1", "address": "10.0.0.7", "tag": "eth"}, map[string]any{"port_id": "p1"}))
	if len(got) != 2 || got[0] != (netRequest{NetworkID: "net-1", Address: "10.0.0.7", Tag: "eth"}) || got[1].PortID != "p1" {
		t.Errorf("list: %+v", got)
	}
	got, _ = parseRequestedNetworks(enc(map[string]any{}))
	if !got.singleUnspecified() {
		t.Errorf("unspecified: %+v", got)
	}
	if got, err := parseRequestedNetworks(json.RawMessage("null")); got != nil || err != nil {
		t.Errorf("null: %+v %v", got, err)
	}
}

func TestAllocateForInstanceBuildsNovasNetworkInfo(t *testing.T) {
	l, fn, nc := netEnv(t)
	fn.addNetwork("net-a", "private", "proj", false, "physnet1")
	inst := netInstance()
	ctx := context.Background()
	alloc, err := l.allocateForInstance(ctx, AdminContext(), inst, netRequests{{NetworkID: "net-a", Address: "10.1.0.99"}}, []string{"web"}, "host1")
	if err != nil {
		t.Fatal(err)
	}
	if len(alloc.vifs) != 1 || len(alloc.created) != 1 || len(alloc.preexisting) != 0 {
		t.Fatalf("allocation %+v", alloc)
	}
	portID := alloc.created[0]
	// _create_port_minimal's body, then _update_ports_for_instance's.
	var create, update map[string]map[string]any
	for _, r := range fn.requests() {
		if strings.HasPrefix(r, "POST /v2.0/ports ") {
			_ = json.Unmarshal([]byte(strings.TrimPrefix(r, "POST /v2.0/ports ")), &create)
		}
		if strings.HasPrefix(r, "PUT /v2.0/ports/"+portID+" ") && update == nil {
			_ = json.Unmarshal([]byte(r[strings.Index(r, "{"):]), &update)
		}
	}
	wantCreate := map[string]any{"device_id": netUUID, "network_id": "net-a", "admin_state_up": true, "tenant_id": "proj",
		"fixed_ips": []any{map[string]any{"ip_address": "10.1.0.99"}}, "security_groups": []any{"sg-web"}}
	if fmt.Sprint(create["port"]) != fmt.Sprint(wantCreate) {
		t.Errorf("create body %v\nwant %v", create["port"], wantCreate)
	}
	wantUpdate := map[string]any{"device_id": netUUID, "device_owner": "compute:nova", "binding:host_id": "host1"}
	if fmt.Sprint(update["port"]) != fmt.Sprint(wantUpdate) {
		t.Errorf("update body %v, want %v", update["port"], wantUpdate)
	}

	vif := alloc.vifs[0]
	port := fn.port(portID)
	network := vif["network"].(map[string]any)
	meta := network["meta"].(map[string]any)
	subnet := network["subnets"].([]map[string]any)[0]
	ips := subnet["ips"].([]any)
	if vif["id"] != portID || vif["address"] != port["mac_address"] || vif["type"] != "dvs" || vif["devname"] != ("tap" + portID)[:14] ||
		vif["active"] != false || vif["vnic_type"] != "normal" || vif["preserve_on_delete"] != false || vif["delegate_create"] != true ||
		vif["ovs_interfaceid"] != nil || vif["qbh_params"] != nil {
		t.Errorf("vif %v", vif)
	}
	if d := vif["details"].(map[string]any); d["pg_id"] != "dvportgroup-net-a" || d["dvs_id"] != "50 0a 1b 2c" {
		t.Errorf("details %v", d)
	}
	if network["id"] != "net-a" || network["bridge"] != "net-a" || network["label"] != "private" ||
		meta["tenant_id"] != "proj" || meta["mtu"] != int64(1500) && fmt.Sprint(meta["mtu"]) != "1500" || meta["physical_network"] != "physnet1" ||
		meta["injected"] != false || meta["tunneled"] != false {
		t.Errorf("network %v", network)
	}
	if subnet["cidr"] != "10.1.0.0/24" || subnet["version"] != 4 || subnet["gateway"].(map[string]any)["address"] != "10.1.0.1" ||
		len(ips) != 1 || ips[0].(map[string]any)["address"] != "10.1.0.99" || ips[0].(map[string]any)["type"] != "fixed" ||
		subnet["dns"].([]any)[0].(map[string]any)["address"] != "8.8.8.8" || subnet["meta"].(map[string]any)["dhcp_server"] != "10.1.0.1" {
		t.Errorf("subnet %v", subnet)
	}
	// Saved to the info cache through conductor, with a VirtualInterface.
	cached := nc.lastCache(t)
	if len(cached) != 1 || cached[0]["id"] != portID || cached[0]["devname"] != vif["devname"] {
		t.Errorf("info cache %v", cached)
	}
	if nc.did("VirtualInterface.create") != 1 {
		t.Errorf("conductor actions %v", nc.actions)
	}
	if vifs := networkInfo(inst); len(vifs) != 1 {
		t.Errorf("the instance's own cache: %v", vifs)
	}

	// The card for the VM: vif.get_vif_info with the image's model.
	nics, err := nicsForVIFs(vifModel(map[string]any{"hw_vif_model": "VirtualVmxnet3"}), alloc.vifs)
	if err != nil {
		t.Fatal(err)
	}
	want := vcenter.NIC{Model: "vmxnet3", MAC: port["mac_address"].(string), IfaceID: portID,
		Network: vcenter.NetworkRef{SwitchUUID: "50 0a 1b 2c", PortgroupKey: "dvportgroup-net-a", PortKey: vif["details"].(map[string]any)["dvs_port_key"].(string)}}
	if len(nics) != 1 || nics[0] != want {
		t.Errorf("nics %+v\nwant %+v", nics, want)
	}

	// Delete: the port nova created is deleted, the cache emptied.
	if err := l.deallocateForInstance(ctx, AdminContext(), inst, nil); err != nil {
		t.Fatal(err)
	}
	if fn.port(portID) != nil {
		t.Errorf("port %s not deleted", portID)
	}
	if c := nc.lastCache(t); len(c) != 0 {
		t.Errorf("cache after deallocate %v", c)
	}
	if nc.did("VirtualInterface.delete_by_instance_uuid") != 1 {
		t.Errorf("VirtualInterfaces not deleted: %v", nc.actions)
	}
}

func TestAllocatePreexistingPortIsUnboundNotDeleted(t *testing.T) {
	l, fn, _ := netEnv(t)
	fn.addNetwork("net-a", "private", "proj", false, "physnet1")
	fn.addPort("user-port", "net-a", "proj")
	fn.port("user-port")["binding:profile"] = map[string]any{"allocation": "rp-1", "keep": "me"}
	inst := netInstance()
	ctx := context.Background()
	alloc, err := l.allocateForInstance(ctx, AdminContext(), inst, netRequests{{PortID: "user-port"}}, nil, "host1")
	if err != nil {
		t.Fatal(err)
	}
	if len(alloc.vifs) != 1 || alloc.vifs[0]["preserve_on_delete"] != true || !slices.Equal(alloc.preexisting, []string{"user-port"}) {
		t.Fatalf("allocation %+v", alloc)
	}
	p := fn.port("user-port")
	if p["device_id"] != netUUID || p["device_owner"] != "compute:nova" || p["binding:host_id"] != "host1" || p["binding:vif_type"] != "dvs" {
		t.Errorf("port after the update %v", p)
	}
	// A second instance cannot take it.
	other := netInstance()
	other.SetString("uuid", "other")
	if _, err := l.allocateForInstance(ctx, AdminContext(), other, netRequests{{PortID: "user-port"}}, nil, "host1"); remoteClass(err) != "PortInUse" {
		t.Errorf("a port in use: %v", err)
	}
	if err := l.deallocateForInstance(ctx, AdminContext(), inst, nil); err != nil {
		t.Fatal(err)
	}
	p = fn.port("user-port")
	if p == nil {
		t.Fatal("the user's port was deleted")
	}
	if p["device_id"] != "" || p["device_owner"] != "" || p["binding:host_id"] != "" || p["binding:vif_type"] != "unbound" ||
		fmt.Sprint(p["binding:profile"]) != "map[keep:me]" {
		t.Errorf("port after unbind %v", p)
	}
	var unbind string
	for _, r := range fn.requests() {
		if strings.HasPrefix(r, "PUT /v2.0/ports/user-port ") {
			unbind = r
		}
	}
	if !strings.Contains(unbind, `"binding:host_id":null`) || !strings.Contains(unbind, `"device_id":""`) {
		t.Errorf("unbind request %s", unbind)
	}
}

func TestAllocateBindingFailedIsNovasPortBindingFailed(t *testing.T) {
	l, fn, _ := netEnv(t)
	fn.addNetwork("net-flat", "flat", "proj", true, "physnet-nobody-serves")
	inst := netInstance()
	_, err := l.allocateForInstance(context.Background(), AdminContext(), inst, netRequests{{NetworkID: "net-flat"}}, nil, "host1")
	var re *rpc.RemoteError
	if !errors.As(err, &re) || re.Class != "PortBindingFailed" ||
		!strings.HasSuffix(re.Message, ", please check neutron logs for more information.") {
		t.Fatalf("allocation on an unbindable network: %v", err)
	}
	// The port nova created is gone again.
	for _, r := range fn.requests() {
		if strings.HasPrefix(r, "POST /v2.0/ports") {
			if !slices.ContainsFunc(fn.requests(), func(s string) bool { return strings.HasPrefix(s, "DELETE /v2.0/ports/") }) {
				t.Errorf("created port not deleted: %q", fn.requests())
			}
		}
	}
	// The build reschedules it with nova's reason, code 500.
	berr := networkBuildError(netUUID, err)
	code, msg := faultCodeAndMessage(berr)
	if isBuildAbort(berr) || code != 500 || msg != re.Message {
		t.Errorf("build error %v: abort %v code %d msg %q", berr, isBuildAbort(berr), code, msg)
	}
}

func TestAllocateWithoutSpecificNetwork(t *testing.T) {
	l, fn, _ := netEnv(t)
	ctx := context.Background()
	inst := netInstance()
	// No network at all: nothing allocated.
	if alloc, err := l.allocateForInstance(ctx, AdminContext(), inst, nil, nil, "host1"); err != nil || len(alloc.vifs) != 0 {
		t.Errorf("no networks: %+v %v", alloc, err)
	}
	// 'auto' without any network: UnableToAutoAllocateNetwork, a build abort.
	_, err := l.allocateForInstance(ctx, AdminContext(), inst, netRequests{{NetworkID: "auto"}}, nil, "host1")
	if remoteClass(err) != "UnableToAutoAllocateNetwork" || !isBuildAbort(networkBuildError(netUUID, err)) {
		t.Errorf("auto: %v", err)
	}
	fn.addNetwork("net-a", "private", "proj", false, "physnet1")
	alloc, err := l.allocateForInstance(ctx, AdminContext(), inst, nil, nil, "host1")
	if err != nil || len(alloc.vifs) != 1 || alloc.vifs[0]["network"].(map[string]any)["id"] != "net-a" {
		t.Errorf("the project's only network: %+v %v", alloc, err)
	}
	fn.addNetwork("net-b", "public", "admin", true, "physnet1")
	if _, err := l.allocateForInstance(ctx, AdminContext(), inst, nil, nil, "host1"); remoteClass(err) != "NetworkAmbiguous" {
		t.Errorf("two networks: %v", err)
	}
	if _, err := l.allocateForInstance(ctx, AdminContext(), inst, netRequests{{NetworkID: "net-x"}}, nil, "host1"); remoteClass(err) != "NetworkNotFound" {
		t.Errorf("a missing network: %v", err)
	}
	if _, err := l.allocateForInstance(ctx, AdminContext(), inst, netRequests{{NetworkID: "net-a"}}, []string{"nosuch"}, "host1"); remoteClass(err) != "SecurityGroupNotFound" {
		t.Errorf("a missing security group: %v", err)
	}
	fn.addNetwork("net-full", "full", "proj", false, "physnet1")
	_, err = l.allocateForInstance(ctx, AdminContext(), inst, netRequests{{NetworkID: "net-full"}}, nil, "host1")
	if remoteClass(err) != "NoMoreFixedIps" {
		t.Errorf("a full network: %v", err)
	}
	berr := networkBuildError(netUUID, err)
	if _, msg := faultCodeAndMessage(berr); !isBuildAbort(berr) ||
		msg != "Build of instance "+netUUID+" aborted: Failed to allocate the network(s) with error No fixed IP addresses available for network: net-full, not rescheduling." {
		t.Errorf("full network build error: %v", berr)
	}
	// 'none' allocates nothing.
	if vifs, err := l.buildNetworks(ctx, AdminContext(), inst, netRequests{{NetworkID: "none"}}, nil); err != nil || vifs != nil {
		t.Errorf("none: %v %v", vifs, err)
	}
}

// nicHV records the NIC hot-plugs.
type nicHV struct {
	*srHV
	mu    sync.Mutex
	added []string
}

func (h *nicHV) AddNIC(_ context.Context, _ vcenter.Ref, nic vcenter.NIC, index int) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.added = append(h.added, fmt.Sprintf("add %s %s %s %s %d", nic.Model, nic.MAC, nic.IfaceID, nic.Network.PortgroupKey, index))
	h.vm.ExtraConfig[fmt.Sprintf("nvp.iface-id.%d", index)] = nic.IfaceID
	return nil
}

func (h *nicHV) RemoveNIC(_ context.Context, _ vcenter.Ref, mac string, index int) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.added = append(h.added, fmt.Sprintf("remove %s %d", mac, index))
	h.vm.ExtraConfig[fmt.Sprintf("nvp.iface-id.%d", index)] = "free"
	return nil
}

func TestAttachAndDetachInterface(t *testing.T) {
	l, fn, nc := netEnv(t)
	fn.addNetwork("net-a", "private", "proj", false, "physnet1")
	vm := srVM(vcenter.PowerStateOn)
	vm.ExtraConfig = map[string]string{"nvp.vm-uuid": netUUID, "nvp.iface-id.0": "boot-port", "nvp.iface-id.1": "free"}
	hv := &nicHV{srHV: &srHV{vm: vm}}
	l.hv = hv
	inst := netInstance()
	ctx := context.Background()

	vif, err := l.attachInterface(ctx, AdminContext(), inst, netRequest{NetworkID: "net-a"})
	if err != nil {
		t.Fatal(err)
	}
	portID, _ := vif["id"].(string)
	mac, _ := vif["address"].(string)
	if want := fmt.Sprintf("add vmxnet3 %s %s dvportgroup-net-a 1", mac, portID); len(hv.added) != 1 || hv.added[0] != want {
		t.Errorf("hot-plug %q, want %q", hv.added, want)
	}
	if c := nc.lastCache(t); len(c) != 1 || c[0]["id"] != portID {
		t.Errorf("cache after attach %v", c)
	}
	// A tagged attach is refused as the VMware driver does.
	if _, err := l.attachInterface(ctx, AdminContext(), inst, netRequest{NetworkID: "net-a", Tag: "x"}); remoteClass(err) != "NetworkInterfaceTaggedAttachNotSupported" {
		t.Errorf("tagged attach: %v", err)
	}

	// Detach: the card at the port's index, then the port deleted.
	if err := l.detachInterface(ctx, AdminContext(), inst, portID); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("remove %s 1", mac); hv.added[len(hv.added)-1] != want {
		t.Errorf("hot-unplug %q, want %q", hv.added, want)
	}
	if fn.port(portID) != nil {
		t.Error("the attached port was not deleted")
	}
	if c := nc.lastCache(t); len(c) != 0 {
		t.Errorf("cache after detach %v", c)
	}
	if err := l.detachInterface(ctx, AdminContext(), inst, portID); remoteClass(err) != "PortNotFound" {
		t.Errorf("detaching a port not attached: %v", err)
	}
}

func TestAttachFailureGivesThePortBack(t *testing.T) {
	l, fn, _ := netEnv(t)
	fn.addNetwork("net-a", "private", "proj", false, "physnet1")
	l.hv = &nicHV{srHV: &srHV{}} // no VM
	inst := netInstance()
	_, err := l.attachInterface(context.Background(), AdminContext(), inst, netRequest{NetworkID: "net-a"})
	if remoteClass(err) != "InterfaceAttachFailed" {
		t.Fatalf("attach to a missing VM: %v", err)
	}
	fn.mu.Lock()
	defer fn.mu.Unlock()
	for id, p := range fn.ports {
		if p["device_id"] == netUUID {
			t.Errorf("port %s left behind", id)
		}
	}
}

func TestNetworkChangedRefreshesOneVIF(t *testing.T) {
	l, fn, nc := netEnv(t)
	fn.addNetwork("net-a", "private", "proj", false, "physnet1")
	inst := netInstance()
	ctx := context.Background()
	alloc, err := l.allocateForInstance(ctx, AdminContext(), inst, netRequests{{NetworkID: "net-a"}}, nil, "host1")
	if err != nil {
		t.Fatal(err)
	}
	portID := alloc.created[0]
	fn.port(portID)["status"] = "ACTIVE"
	l.networkChanged(ctx, AdminContext(), inst, portID)
	if c := nc.lastCache(t); len(c) != 1 || c[0]["active"] != true {
		t.Errorf("cache after network-changed %v", c)
	}
	// The port gone from neutron: it leaves the cache.
	fn.mu.Lock()
	delete(fn.ports, portID)
	fn.mu.Unlock()
	l.networkChanged(ctx, AdminContext(), inst, portID)
	if c := nc.lastCache(t); len(c) != 0 {
		t.Errorf("cache after the port's deletion %v", c)
	}
}

func TestHealInstanceInfoCacheTakesInstancesInTurn(t *testing.T) {
	l, fn, nc := netEnv(t)
	fn.addNetwork("net-a", "private", "proj", false, "physnet1")
	a, b := netInstance(), netInstance()
	b.SetString("uuid", "second-instance")
	building := netInstance()
	building.SetString("uuid", "building-instance")
	building.SetString("vm_state", "building")
	enc := func(o *ovo.Object) any {
		m, err := ovo.NovaCodec().Encode(o)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	nc.answer = func(obj, method string, args json.RawMessage) any {
		switch obj + "." + method {
		case "InstanceList.get_by_host":
			return enc(ovo.NewList("InstanceList", "2.6", a, building, b))
		case "Instance.get_by_uuid":
			var uuid []string
			_ = json.Unmarshal(args, &uuid)
			if len(uuid) > 0 && uuid[0] == "second-instance" {
				return enc(b)
			}
			return enc(a)
		}
		return nil
	}
	fn.addPort("p-b", "net-a", "proj")
	fn.port("p-b")["device_id"] = "second-instance"
	ctx := context.Background()
	l.healInstanceInfoCache(ctx, AdminContext()) // a: no ports
	if c := nc.lastCache(t); len(c) != 0 {
		t.Errorf("first pass %v", c)
	}
	if !slices.Equal(l.net.healQueue, []string{"second-instance"}) {
		t.Errorf("queue %v", l.net.healQueue)
	}
	l.healInstanceInfoCache(ctx, AdminContext()) // b: its port, from neutron (force_refresh)
	if c := nc.lastCache(t); len(c) != 1 || c[0]["id"] != "p-b" {
		t.Errorf("second pass %v", c)
	}
	if len(l.net.healQueue) != 0 {
		t.Errorf("queue %v", l.net.healQueue)
	}
}

func TestPortIndexes(t *testing.T) {
	t.Parallel()
	extra := map[string]string{"nvp.iface-id.0": "a", "nvp.iface-id.1": "free", "nvp.iface-id.2": "c", "nvp.vm-uuid": "x"}
	if i := attachPortIndex(extra); i != 1 {
		t.Errorf("attach index %d", i)
	}
	if i := attachPortIndex(map[string]string{}); i != 0 {
		t.Errorf("attach index of a bare VM %d", i)
	}
	if i := attachPortIndex(map[string]string{"nvp.iface-id.0": "a", "nvp.iface-id.1": "b"}); i != 2 {
		t.Errorf("attach index of a full VM %d", i)
	}
	if i := detachPortIndex(extra, "c"); i != 2 {
		t.Errorf("detach index %d", i)
	}
	if i := detachPortIndex(extra, "zz"); i != -1 {
		t.Errorf("detach index of an unknown port %d", i)
	}
}

func TestNICForVIF(t *testing.T) {
	t.Parallel()
	vif := map[string]any{"id": "p1", "address": "fa:16:3e:00:00:01", "type": "dvs",
		"details": map[string]any{"dvs_port_group_name": "pg-net"}, "network": map[string]any{"id": "n1", "bridge": "n1"}}
	nic, err := nicForVIF("e1000", vif)
	if err != nil || nic.Network != (vcenter.NetworkRef{NetworkName: "pg-net"}) {
		t.Errorf("named port group: %+v %v", nic, err)
	}
	vif["details"] = map[string]any{}
	if nic, _ := nicForVIF("e1000", vif); nic.Network.NetworkName != "n1" {
		t.Errorf("bridge: %+v", nic)
	}
	vif["type"] = "binding_failed"
	if _, err := nicForVIF("e1000", vif); remoteClass(err) != "InvalidInput" {
		t.Errorf("unsupported vif type: %v", err)
	}
	if m := vifModel(nil); m != "e1000" {
		t.Errorf("default model %q", m)
	}
}

// buildHV is a Hypervisor for the build: it records the VM spec.
type buildHV struct {
	Hypervisor
	mu        sync.Mutex
	spec      *vcenter.VMSpec
	vm        vcenter.VM
	destroyed int
}

func (h *buildHV) Clusters(context.Context, ...string) ([]vcenter.Cluster, error) {
	return []vcenter.Cluster{{Ref: vcenter.Ref{Type: "ClusterComputeResource", Value: "domain-c9"}, Name: "c1", Datacenter: "DC0",
		Datastores: []vcenter.Datastore{{Name: "ds1", Accessible: true, Type: "VMFS", FreeBytes: 1 << 40}}}}, nil
}
func (h *buildHV) EnsureExtension(context.Context, string, string, string) error { return nil }
func (h *buildHV) EnsureFolderPath(context.Context, string, ...string) (vcenter.Ref, error) {
	return vcenter.Ref{Type: "Folder", Value: "group-v9"}, nil
}
func (h *buildHV) CopyToInstance(_ context.Context, _ string, _, dir vcenter.DatastorePath, _ int64) (vcenter.DatastorePath, error) {
	return dir.Join(netUUID + ".vmdk"), nil
}
func (h *buildHV) CreateVM(_ context.Context, spec vcenter.VMSpec) (vcenter.VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.spec = &spec
	h.vm = vcenter.VM{Ref: vcenter.Ref{Type: "VirtualMachine", Value: "vm-7"}, InstanceUUID: spec.InstanceUUID}
	return h.vm, nil
}
func (h *buildHV) PowerOn(context.Context, vcenter.Ref) error { return nil }
func (h *buildHV) FindVMByInstanceUUID(context.Context, string) (vcenter.VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.vm.Ref.IsZero() {
		return vcenter.VM{}, vcenter.ErrNotFound
	}
	return h.vm, nil
}
func (h *buildHV) DeleteDatastoreFile(context.Context, string, vcenter.DatastorePath) error {
	return nil
}

func buildInstance() *ovo.Object {
	inst := netInstance()
	inst.SetString("display_name", "vm1")
	inst.SetString("user_id", "user")
	inst.SetString("vm_state", "building")
	inst.SetNull("task_state")
	fl := ovo.New("Flavor", "1.2")
	fl.SetString("name", "m1.nano")
	fl.SetInt("vcpus", 1)
	fl.SetInt("memory_mb", 64)
	fl.SetInt("root_gb", 1)
	inst.SetObject("flavor", fl)
	inst.ResetChangesRecursive()
	return inst
}

func TestBuildSpawnsTheVMWithTheInstancesNICs(t *testing.T) {
	l, fn, nc := netEnv(t)
	fn.addNetwork("net-a", "private", "proj", false, "physnet1")
	fn.addNetwork("net-flat", "flat", "proj", false, "physnet9")
	l.sched = nc.tr.NewClient(rpc.Target{Exchange: "vcagent_network_test_sched", Topic: "scheduler", Fanout: true, Version: "4.2"})
	l.images, l.cache = srImages{}, &srCache{}
	ctx := context.Background()

	hv := &buildHV{}
	l.hv = hv
	inst := buildInstance()
	if err := l.build(ctx, AdminContext(), inst, "domain-c9.vc", map[string]any{"id": "img"}, netRequests{{NetworkID: "net-a"}}, []string{"default"}); err != nil {
		t.Fatal(err)
	}
	cached := nc.lastCache(t)
	if hv.spec == nil || len(cached) != 1 {
		t.Fatalf("spec %+v, cache %v", hv.spec, cached)
	}
	vif := cached[0]
	details := vif["details"].(map[string]any)
	want := []vcenter.NIC{{Model: "e1000", MAC: vif["address"].(string), IfaceID: vif["id"].(string),
		Network: vcenter.NetworkRef{SwitchUUID: "50 0a 1b 2c", PortgroupKey: "dvportgroup-net-a", PortKey: details["dvs_port_key"].(string)}}}
	if !slices.Equal(hv.spec.NICs, want) || hv.spec.ExtraConfig["nvp.vm-uuid"] != netUUID {
		t.Errorf("VM spec NICs %+v extraConfig %v\nwant %+v", hv.spec.NICs, hv.spec.ExtraConfig, want)
	}
	if sm, _ := inst.Dict("system_metadata"); sm["network_allocated"] != "True" {
		t.Errorf("system_metadata %v", sm)
	}
	if ips := legacyFixedIPs(inst); len(ips) != 1 || ips[0].(map[string]any)["label"] != "private" || ips[0].(map[string]any)["vif_mac"] != vif["address"] {
		t.Errorf("create.end fixed_ips %v", ips)
	}

	if ips := ipPayloads(inst); len(ips) != 1 || ips[0].(map[string]any)["nova_object.data"].(map[string]any)["port_uuid"] != vif["id"] {
		t.Errorf("versioned ip_addresses %v", ips)
	}

	// A port that cannot bind: the build fails before the VM exists, with
	// nova's PortBindingFailed, and is rescheduled (not aborted).
	hv2 := &buildHV{}
	l.hv = hv2
	l.known = spawnCache{}
	inst2 := buildInstance()
	inst2.SetString("uuid", "second-build")
	err := l.build(ctx, AdminContext(), inst2, "domain-c9.vc", map[string]any{"id": "img"}, netRequests{{NetworkID: "net-flat"}}, nil)
	if remoteClass(err) != "PortBindingFailed" || isBuildAbort(err) || hv2.spec != nil {
		t.Errorf("build on an unbindable network: %v (abort %v), VM %+v", err, isBuildAbort(err), hv2.spec)
	}
	if task := inst2.StringOrEmpty("task_state"); task != "spawning" {
		t.Errorf("task_state %q at the failure, want spawning (nova's async allocation fails in spawn)", task)
	}
	l.cleanupAllocatedNetworks(ctx, AdminContext(), inst2, netRequests{{NetworkID: "net-flat"}})
	fn.mu.Lock()
	for id, p := range fn.ports {
		if p["device_id"] == "second-build" {
			t.Errorf("port %s of the failed build left", id)
		}
	}
	fn.mu.Unlock()

	// 'none': a VM without cards.
	hv3 := &buildHV{}
	l.hv = hv3
	inst3 := buildInstance()
	if err := l.build(ctx, AdminContext(), inst3, "domain-c9.vc", map[string]any{"id": "img"}, netRequests{{NetworkID: "none"}}, nil); err != nil {
		t.Fatal(err)
	}
	if hv3.spec == nil || len(hv3.spec.NICs) != 0 {
		t.Errorf("networks none: spec %+v", hv3.spec)
	}
	// A tagged network request: the VMware driver cannot tag devices.
	l.hv = &buildHV{}
	err = l.build(ctx, AdminContext(), buildInstance(), "domain-c9.vc", map[string]any{"id": "img"}, netRequests{{NetworkID: "net-a", Tag: "t"}}, nil)
	if !isBuildAbort(err) {
		t.Errorf("tagged build: %v", err)
	}
}

package compute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// computeRPC6Methods are the methods of nova Zed's ComputeAPI
// (nova/compute/rpcapi.py) that send compute RPC 6.x, as read from the
// source (its helpers _ver, get_client, router and
// supports_numa_live_migration send nothing).
var computeRPC6Methods = []string{
	"add_fixed_ip_to_instance", "attach_interface", "attach_volume", "backup_instance",
	"build_and_run_instance", "cache_images", "check_can_live_migrate_destination",
	"check_can_live_migrate_source", "check_instance_shared_storage", "confirm_resize",
	"confirm_snapshot_based_resize_at_source", "detach_interface", "detach_volume",
	"drop_move_claim_at_destination", "external_instance_event", "finish_resize",
	"finish_revert_resize", "finish_revert_snapshot_based_resize_at_source",
	"finish_snapshot_based_resize_at_dest", "get_console_output", "get_diagnostics",
	"get_host_uptime", "get_instance_diagnostics", "get_mks_console", "get_rdp_console",
	"get_serial_console", "get_spice_console", "get_vnc_console", "host_maintenance_mode",
	"host_power_action", "inject_network_info", "live_migration", "live_migration_abort",
	"live_migration_force_complete", "pause_instance", "post_live_migration_at_destination",
	"pre_live_migration", "prep_resize", "prep_snapshot_based_resize_at_dest",
	"prep_snapshot_based_resize_at_source", "quiesce_instance", "reboot_instance",
	"rebuild_instance", "remove_fixed_ip_from_instance", "remove_volume_connection",
	"rescue_instance", "reserve_block_device_name", "resize_instance", "restore_instance",
	"resume_instance", "revert_resize", "revert_snapshot_based_resize_at_dest",
	"rollback_live_migration_at_destination", "set_admin_password", "set_host_enabled",
	"shelve_instance", "shelve_offload_instance", "snapshot_instance", "soft_delete_instance",
	"start_instance", "stop_instance", "suspend_instance", "swap_volume", "terminate_instance",
	"trigger_crash_dump", "unpause_instance", "unquiesce_instance", "unrescue_instance",
	"unshelve_instance", "validate_console_port", "volume_snapshot_create", "volume_snapshot_delete",
}

// managerHandlerKeys returns the method names of the handler map that
// Manager.Run registers (read from manager.go).
func managerHandlerKeys(t *testing.T) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "manager.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	ast.Inspect(f, func(n ast.Node) bool {
		lit, ok := n.(*ast.CompositeLit)
		if !ok {
			return true
		}
		mt, ok := lit.Type.(*ast.MapType)
		if !ok {
			return true
		}
		if sel, ok := mt.Value.(*ast.SelectorExpr); !ok || sel.Sel.Name != "Handler" {
			return true
		}
		for _, e := range lit.Elts {
			if kv, ok := e.(*ast.KeyValueExpr); ok {
				if bl, ok := kv.Key.(*ast.BasicLit); ok {
					k, _ := strconv.Unquote(bl.Value)
					keys = append(keys, k)
				}
			}
		}
		return true
	})
	return keys
}

// TestRegisteredEveryComputeRPC6Method checks that every compute RPC 6.x
// method is registered: by a line of Manager.Run's handler map or by
// Endpoints' defaults; and that the endpoint the
// manager builds serves each one (none gets oslo's NoSuchMethod).
func TestRegisteredEveryComputeRPC6Method(t *testing.T) {
	t.Parallel()
	explicit := managerHandlerKeys(t)
	if len(explicit) < 10 {
		t.Fatalf("handler map of manager.go not found: %v", explicit)
	}
	handlers := map[string]rpc.Handler{}
	for _, k := range explicit {
		handlers[k] = func(context.Context, *rpc.Request) (any, error) { return nil, nil }
	}
	served := Endpoints(handlers)[0].Methods
	for _, name := range computeRPC6Methods {
		t.Run(name, func(t *testing.T) {
			switch {
			case slices.Contains(explicit, name):
			case name == "get_host_uptime":
			default:
				t.Errorf("%s is not registered", name)
			}
			if served[name] == nil {
				t.Errorf("%s: the compute endpoint does not serve it", name)
			}
		})
	}
	for name := range served {
		if !slices.Contains(computeRPC6Methods, name) {
			t.Errorf("%s is served but is no compute RPC 6.x method", name)
		}
	}
}

// consoleHV is a Hypervisor for the console and diagnostics tests: the
// methods it does not override panic (nil embedded interface).
type consoleHV struct {
	Hypervisor
	vm      vcenter.VM
	gone    bool
	ports   map[string]int
	mksErr  error
	diag    map[string]any
	extra   map[string]string
	enabled int
}

func (h *consoleHV) FindVMByInstanceUUID(_ context.Context, uuid string) (vcenter.VM, error) {
	if h.gone {
		return vcenter.VM{}, fmt.Errorf("find: %w", vcenter.ErrNotFound)
	}
	return h.vm, nil
}

func (h *consoleHV) EnableVNC(_ context.Context, vm vcenter.Ref, minPort, total int, keymap string) (int, error) {
	h.enabled++
	if p, ok := h.ports[vm.Value]; ok {
		return p, nil
	}
	if total == 0 {
		return 0, fmt.Errorf("enable: %w", vcenter.ErrVNCPortsExhausted)
	}
	h.ports[vm.Value] = minPort
	return minPort, nil
}

func (h *consoleHV) HostName(context.Context, vcenter.Ref) (string, error) {
	return "esx1.example.org", nil
}

func (h *consoleHV) AcquireMKSTicket(context.Context, vcenter.Ref) (vcenter.MKSTicket, error) {
	if h.mksErr != nil {
		return vcenter.MKSTicket{}, h.mksErr
	}
	return vcenter.MKSTicket{Ticket: "52ac", CfgFile: "[ds] u/u.vmx", Host: "esx1.example.org", Port: 902, SSLThumbprint: "C3:9F:AA"}, nil
}

func (h *consoleHV) VMDiagnostics(context.Context, vcenter.Ref) (map[string]any, error) {
	return h.diag, nil
}

func (h *consoleHV) SetExtraConfig(_ context.Context, _ vcenter.Ref, values map[string]string) error {
	h.extra = values
	return nil
}

const testInstanceUUID = "a3c1e2f4-5b6d-4e7f-8a9b-0c1d2e3f4a5b"

// consoleEnv is a lifecycle on a fake conductor whose object_action
// answers reply.
func consoleEnv(t *testing.T, reply string) (*lifecycle, *consoleHV, *fakeConductor) {
	t.Helper()
	f := &fakeConductor{replies: map[string]json.RawMessage{
		"object_action":                json.RawMessage(reply),
		"object_class_action_versions": json.RawMessage(`null`),
	}, got: map[string][]json.RawMessage{}}
	c := startFakeConductor(t, f)
	hv := &consoleHV{vm: vcenter.VM{Ref: vcenter.Ref{Type: "VirtualMachine", Value: "vm-42"}, PowerState: vcenter.PowerStateOn, Host: vcenter.Ref{Type: "HostSystem", Value: "host-1"}},
		ports: map[string]int{}}
	l := &lifecycle{cond: c, hv: hv, host: "host1", log: zerolog.Nop()}
	return l, hv, f
}

// request makes a compute request carrying an ACTIVE instance and args.
func request(t *testing.T, method string, args map[string]any) *rpc.Request {
	t.Helper()
	inst := ovo.New("Instance", "2.7")
	inst.SetString("uuid", testInstanceUUID)
	inst.SetString("vm_state", "active")
	inst.SetNull("task_state")
	inst.SetInt("power_state", 1)
	inst.SetString("host", "host1")
	inst.ResetChanges()
	enc, err := ovo.NovaCodec().Encode(inst)
	if err != nil {
		t.Fatal(err)
	}
	all := map[string]any{"instance": enc}
	for k, v := range args {
		all[k] = v
	}
	raw, _ := json.Marshal(all)
	rc, _ := rpc.NewContext(map[string]any{"request_id": "req-1", "user_id": "u", "project_id": "p"})
	return &rpc.Request{Context: rc, Method: method, Version: "6.0", Args: raw}
}

// sentObjects returns the objects of the object_action calls conductor got.
func sentObjects(t *testing.T, f *fakeConductor) []map[string]any {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []map[string]any
	for _, raw := range f.got["object_action"] {
		var a map[string]any
		if err := json.Unmarshal(raw, &a); err != nil {
			t.Fatal(err)
		}
		out = append(out, a)
	}
	return out
}

// TestConsoleVNCAuthorizesThroughConductor checks get_vnc_console as in
// nova's captured flow: ConsoleAuthToken.authorize(600) through conductor
// with the console's fields, and the connect_info reply.
func TestConsoleVNCAuthorizesThroughConductor(t *testing.T) {
	l, hv, f := consoleEnv(t, `[{"id": 1, "token": "24428633-b069-476a-9b0b-011c7f9cac68", "created_at": "2026-11-24T06:35:57Z", "updated_at": null, "obj_what_changed": []}, "24428633-b069-476a-9b0b-011c7f9cac68"]`)
	res, err := l.GetVNCConsole(t.Context(), request(t, "get_vnc_console", map[string]any{"console_type": "novnc"}))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"host": "esx1.example.org", "port": 5900, "internal_access_path": nil,
		"token":      "24428633-b069-476a-9b0b-011c7f9cac68",
		"access_url": "http://127.0.0.1:6080/vnc_auto.html?path=%3Ftoken%3D24428633-b069-476a-9b0b-011c7f9cac68",
	}
	if !reflect.DeepEqual(res, want) {
		t.Errorf("reply\n got %v\nwant %v", res, want)
	}
	sent := sentObjects(t, f)
	if len(sent) != 1 || sent[0]["objmethod"] != "authorize" || !reflect.DeepEqual(sent[0]["args"], []any{float64(600)}) {
		t.Fatalf("conductor calls %v", sent)
	}
	obj := sent[0]["objinst"].(map[string]any)
	data := obj["nova_object.data"].(map[string]any)
	wantData := map[string]any{"console_type": "novnc", "host": "esx1.example.org", "port": float64(5900), "internal_access_path": nil,
		"instance_uuid": testInstanceUUID, "access_url_base": "http://127.0.0.1:6080/vnc_auto.html"}
	if obj["nova_object.name"] != "ConsoleAuthToken" || obj["nova_object.version"] != "1.1" || !reflect.DeepEqual(data, wantData) {
		t.Errorf("objinst %v", obj)
	}
	if hv.enabled != 1 {
		t.Errorf("EnableVNC calls %d", hv.enabled)
	}
}

// TestConsoleInvalidTypeFault checks the wrong console type: nova's
// ConsoleTypeInvalid (code 400) and its fault, without details.
func TestConsoleInvalidTypeFault(t *testing.T) {
	l, hv, f := consoleEnv(t, `[{"id": 3, "obj_what_changed": []}, null]`)
	_, err := l.GetVNCConsole(t.Context(), request(t, "get_vnc_console", map[string]any{"console_type": "xvpvnc"}))
	var re *rpc.RemoteError
	if !errors.As(err, &re) || re.Class != "ConsoleTypeInvalid" || re.Module != "nova.exception" || re.Message != "Invalid console type xvpvnc" ||
		re.Kwargs["code"] != 400 || re.Kwargs["console_type"] != "xvpvnc" {
		t.Fatalf("error %#v", err)
	}
	sent := sentObjects(t, f)
	if len(sent) != 1 {
		t.Fatalf("conductor calls %v", sent)
	}
	data := sent[0]["objinst"].(map[string]any)["nova_object.data"].(map[string]any)
	want := map[string]any{"instance_uuid": testInstanceUUID, "code": float64(400), "message": "Invalid console type xvpvnc", "details": "", "host": "host1"}
	if sent[0]["objmethod"] != "create" || !reflect.DeepEqual(data, want) {
		t.Errorf("fault %v", sent[0])
	}
	if hv.enabled != 0 {
		t.Error("the driver was asked for a console of an invalid type")
	}
}

// TestConsoleMKSAndUnsupportedTypes checks webmks (off by default as in
// nova; on, the simulator's missing AcquireTicket is a VimFaultException),
// the consoles the VMware driver lacks, and a VM that is gone.
func TestConsoleMKSAndUnsupportedTypes(t *testing.T) {
	l, hv, _ := consoleEnv(t, `[{"id": 3, "obj_what_changed": []}, null]`)
	ctx := t.Context()
	class := func(err error) string {
		var re *rpc.RemoteError
		if errors.As(err, &re) {
			return re.Module + "." + re.Class
		}
		return fmt.Sprint(err)
	}
	_, err := l.GetMKSConsole(ctx, request(t, "get_mks_console", map[string]any{"console_type": "webmks"}))
	if class(err) != "nova.exception.ConsoleTypeUnavailable" {
		t.Errorf("mks with [mks] enabled = False: %v", err)
	}
	cfg := DefaultConsoleConfig()
	cfg.MKSEnabled = true
	l.consoles = &cfg
	hv.mksErr = fmt.Errorf("acquire: %w", vcenter.ErrNotImplemented)
	_, err = l.GetMKSConsole(ctx, request(t, "get_mks_console", map[string]any{"console_type": "webmks"}))
	if class(err) != "oslo_vmware.exceptions.VimFaultException" {
		t.Errorf("mks without AcquireTicket: %v", err)
	}
	hv.mksErr = nil
	res, err := l.GetMKSConsole(ctx, request(t, "get_mks_console", map[string]any{"console_type": "webmks"}))
	m, _ := res.(map[string]any)
	if err != nil || m["port"] != 902 || m["internal_access_path"] != `{"ticket": "52ac", "cfgFile": "[ds] u/u.vmx", "thumbprint": "c39faa"}` ||
		!strings.HasPrefix(fmt.Sprint(m["access_url"]), "http://127.0.0.1:6090/?token=") {
		t.Errorf("mks console %v, %v", res, err)
	}
	for _, c := range []struct{ method, typ, want string }{
		{"get_spice_console", "spice-html5", "nova.exception.ConsoleTypeUnavailable"},
		{"get_rdp_console", "rdp-html5", "nova.exception.ConsoleTypeUnavailable"},
		{"get_serial_console", "serial", "nova.exception.ConsoleTypeUnavailable"},
	} {
		h := map[string]rpc.Handler{"get_spice_console": l.GetSpiceConsole, "get_rdp_console": l.GetRDPConsole, "get_serial_console": l.GetSerialConsole}[c.method]
		if _, err := h(ctx, request(t, c.method, map[string]any{"console_type": c.typ})); class(err) != c.want {
			t.Errorf("%s: %v, want %s", c.method, err, c.want)
		}
	}
	cfg.SerialEnabled = true
	l.consoles = &cfg
	if _, err := l.GetSerialConsole(ctx, request(t, "get_serial_console", map[string]any{"console_type": "serial"})); class(err) != "builtins.NotImplementedError" {
		t.Errorf("serial console enabled: %v, want the driver's NotImplementedError", err)
	}
	ok, err := l.ValidateConsolePort(ctx, request(t, "validate_console_port", map[string]any{"console_type": "novnc", "port": "5900"}))
	if err != nil || ok != true {
		t.Errorf("validate_console_port 5900 = %v, %v", ok, err)
	}
	ok, err = l.ValidateConsolePort(ctx, request(t, "validate_console_port", map[string]any{"console_type": "novnc", "port": "5901"}))
	if err != nil || ok != false {
		t.Errorf("validate_console_port 5901 = %v, %v", ok, err)
	}
	hv.gone = true
	if _, err := l.GetVNCConsole(ctx, request(t, "get_vnc_console", map[string]any{"console_type": "novnc"})); class(err) != "nova.exception.InstanceNotFound" {
		t.Errorf("console of a gone VM: %v", err)
	}
}

// TestConsoleOutputFromSerialLog checks get_console_output: the VSPC log's
// tail, ASCII with replacements, and "" without a log.
func TestConsoleOutputFromSerialLog(t *testing.T) {
	l, _, _ := consoleEnv(t, `null`)
	dir := t.TempDir()
	cfg := DefaultConsoleConfig()
	cfg.SerialLogDir = dir
	l.consoles = &cfg
	ctx := t.Context()
	out, err := l.GetConsoleOutput(ctx, request(t, "get_console_output", map[string]any{"tail_length": nil}))
	if err != nil || out != "" {
		t.Errorf("no log: %q, %v", out, err)
	}
	log := "boot\nline 2\nl\xe9ne 3\n"
	if err := os.WriteFile(filepath.Join(dir, strings.ReplaceAll(testInstanceUUID, "-", "")), []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = l.GetConsoleOutput(ctx, request(t, "get_console_output", map[string]any{"tail_length": 2}))
	if err != nil || out != "l\uFFFDne 3\n" {
		t.Errorf("tail 2: %q, %v", out, err)
	}
	out, _ = l.GetConsoleOutput(ctx, request(t, "get_console_output", map[string]any{"tail_length": nil}))
	if out != "boot\nline 2\nl\uFFFDne 3\n" {
		t.Errorf("whole log: %q", out)
	}
}

// TestDiagnosticsFromQuickStats checks both diagnostics calls and the
// InstanceInvalidState of a VM that is not running.
func TestDiagnosticsFromQuickStats(t *testing.T) {
	l, hv, _ := consoleEnv(t, `[{"id": 3, "obj_what_changed": []}, null]`)
	ctx := t.Context()
	hv.diag = map[string]any{"memorySizeMB": int64(64), "guestMemoryUsage": int64(12), "uptimeSeconds": int64(30), "powerState": "poweredOn", "overallCpuUsage": int64(5)}
	res, err := l.GetDiagnostics(ctx, request(t, "get_diagnostics", nil))
	if m, _ := res.(map[string]any); err != nil || m["vmware:memorySizeMB"] != int64(64) || len(m) != 5 {
		t.Errorf("get_diagnostics = %v, %v", res, err)
	}
	res, err = l.GetInstanceDiagnostics(ctx, request(t, "get_instance_diagnostics", nil))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(res)
	var obj map[string]any
	_ = json.Unmarshal(raw, &obj)
	data, _ := obj["nova_object.data"].(map[string]any)
	mem, _ := data["memory_details"].(map[string]any)
	if obj["nova_object.name"] != "Diagnostics" || data["state"] != "running" || data["driver"] != "vmwareapi" || data["uptime"] != float64(30) ||
		data["hypervisor_os"] != "esxi" || data["config_drive"] != false || data["num_cpus"] != float64(0) ||
		!reflect.DeepEqual(mem["nova_object.data"], map[string]any{"maximum": float64(64), "used": float64(12)}) {
		t.Errorf("Diagnostics %s", raw)
	}
	hv.vm.PowerState = vcenter.PowerStateOff
	hv.diag["powerState"] = vcenter.PowerStateOff // the summary's runtime says so too
	_, err = l.GetDiagnostics(ctx, request(t, "get_diagnostics", nil))
	var re *rpc.RemoteError
	if !errors.As(err, &re) || re.Class != "InstanceInvalidState" ||
		re.Message != "Instance "+testInstanceUUID+" in power state running. Cannot get_diagnostics while the instance is in this state." {
		t.Errorf("diagnostics of a stopped VM: %v", err)
	}
}

// TestMiscHostAndDriverAnswers checks the host calls and the VMware
// driver's missing operations.
func TestMiscHostAndDriverAnswers(t *testing.T) {
	l, hv, _ := consoleEnv(t, `[{"obj_what_changed": []}, null]`)
	ctx := t.Context()
	notImpl := func(what string, err error) {
		t.Helper()
		var re *rpc.RemoteError
		if !errors.As(err, &re) || re.Class != "NotImplementedError" || re.Module != "builtins" {
			t.Errorf("%s: %v, want NotImplementedError", what, err)
		}
	}
	_, err := l.HostPowerAction(ctx, &rpc.Request{Args: json.RawMessage(`{"action": "reboot"}`)})
	notImpl("host_power_action", err)
	_, err = l.HostMaintenanceMode(ctx, &rpc.Request{Args: json.RawMessage(`{"host": "h", "mode": true}`)})
	notImpl("host_maintenance_mode", err)
	_, err = l.CheckInstanceSharedStorage(ctx, &rpc.Request{Args: json.RawMessage(`{"data": {}}`)})
	notImpl("check_instance_shared_storage", err)
	_, err = l.GetHostUptimeNotified(ctx, &rpc.Request{Args: json.RawMessage(`{}`)})
	notImpl("get_host_uptime", err)
	for _, m := range []string{"quiesce_instance", "volume_snapshot_create"} {
		_, err = l.driverNotImplemented(m)(ctx, request(t, m, nil))
		notImpl(m, err)
	}
	for _, enabled := range []bool{true, false} {
		res, err := l.SetHostEnabled(ctx, &rpc.Request{Args: json.RawMessage(fmt.Sprintf(`{"enabled": %v}`, enabled))})
		if want := map[bool]string{true: "enabled", false: "disabled"}[enabled]; err != nil || res != want {
			t.Errorf("set_host_enabled(%v) = %v, %v", enabled, res, err)
		}
	}
	res, err := l.CacheImages(ctx, &rpc.Request{Args: json.RawMessage(`{"image_ids": ["a", "b"]}`)})
	if !reflect.DeepEqual(res, map[string]any{"a": "unsupported", "b": "unsupported"}) || err != nil {
		t.Errorf("cache_images = %v, %v", res, err)
	}
	if _, err := l.InjectNetworkInfo(ctx, request(t, "inject_network_info", nil)); err != nil || hv.extra["machine.id"] != "" || hv.extra == nil {
		t.Errorf("inject_network_info: %v, extraConfig %v", err, hv.extra)
	}
}

// TestMiscMachineID checks vmops._get_machine_id_str.
func TestMiscMachineID(t *testing.T) {
	t.Parallel()
	var vifs []any
	_ = json.Unmarshal([]byte(`[{"address": "fa:16:3e:12:34:56", "network": {"subnets": [{"version": 4, "cidr": "10.0.0.0/24",
		"ips": [{"address": "10.0.0.15"}], "dns": [{"address": "10.0.0.2"}], "gateway": {"address": "10.0.0.1"}}]}},
		{"address": "fa:16:3e:00:00:01", "network": {"subnets": []}}]`), &vifs)
	if got, want := machineID(vifs), "fa:16:3e:12:34:56;10.0.0.15;255.255.255.0;10.0.0.1;10.0.0.255;10.0.0.2#fa:16:3e:00:00:01;;;;;#"; got != want {
		t.Errorf("machineID = %q, want %q", got, want)
	}
	if machineID(nil) != "" {
		t.Error("no vifs must give an empty machine id")
	}
}

// TestMiscExternalEventsWithoutWaiters checks external_instance_event:
// vif-plugged is dropped without bus traffic, network-changed saves the info
// cache through conductor.
func TestMiscExternalEventsWithoutWaiters(t *testing.T) {
	l, _, f := consoleEnv(t, `[{"obj_what_changed": []}, null]`)
	ctx := t.Context()
	inst := request(t, "x", nil)
	var args map[string]any
	_ = json.Unmarshal(inst.Args, &args)
	event := func(name string) map[string]any {
		return map[string]any{"nova_object.name": "InstanceExternalEvent", "nova_object.namespace": "nova", "nova_object.version": "1.5",
			"nova_object.data": map[string]any{"instance_uuid": testInstanceUUID, "name": name, "status": "completed", "tag": "port-1", "data": map[string]any{}}}
	}
	send := func(names ...string) {
		t.Helper()
		evs := []any{}
		for _, n := range names {
			evs = append(evs, event(n))
		}
		raw, _ := json.Marshal(map[string]any{"instances": []any{args["instance"]}, "events": evs})
		if _, err := l.ExternalInstanceEvent(ctx, &rpc.Request{Context: inst.Context, Args: raw}); err != nil {
			t.Fatal(err)
		}
	}
	send("network-vif-plugged", "network-vif-unplugged")
	if n := len(sentObjects(t, f)); n != 0 {
		t.Errorf("vif events sent %d conductor calls, want none", n)
	}
	send("network-changed")
	sent := sentObjects(t, f)
	if len(sent) != 1 || sent[0]["objmethod"] != "save" {
		t.Fatalf("network-changed: %v", sent)
	}
	obj := sent[0]["objinst"].(map[string]any)
	if obj["nova_object.name"] != "InstanceInfoCache" || !reflect.DeepEqual(obj["nova_object.data"], map[string]any{"instance_uuid": testInstanceUUID, "network_info": "[]"}) {
		t.Errorf("info cache save %v", obj)
	}
}

func (h *consoleHV) PowerOff(context.Context, vcenter.Ref) error {
	h.vm.PowerState = vcenter.PowerStateOff
	return nil
}

func (h *consoleHV) PowerOn(context.Context, vcenter.Ref) error {
	h.vm.PowerState = vcenter.PowerStateOn
	return nil
}

// TestMiscSoftDeleteAndRestore checks soft_delete_instance and
// restore_instance: the VMware driver has neither, so nova powers the VM
// off and on, and saves SOFT_DELETED and ACTIVE with the expected task
// states.
func TestMiscSoftDeleteAndRestore(t *testing.T) {
	l, hv, f := consoleEnv(t, `[{"obj_what_changed": []}, null]`)
	ctx := t.Context()
	if _, err := l.SoftDeleteInstance(ctx, request(t, "soft_delete_instance", nil)); err != nil {
		t.Fatal(err)
	}
	if hv.vm.PowerState != vcenter.PowerStateOff {
		t.Errorf("VM %s after soft delete", hv.vm.PowerState)
	}
	if _, err := l.RestoreInstance(ctx, request(t, "restore_instance", nil)); err != nil {
		t.Fatal(err)
	}
	if hv.vm.PowerState != vcenter.PowerStateOn {
		t.Errorf("VM %s after restore", hv.vm.PowerState)
	}
	var saves []string
	for _, a := range sentObjects(t, f) {
		if a["objmethod"] != "save" {
			continue
		}
		data := a["objinst"].(map[string]any)["nova_object.data"].(map[string]any)
		kw, _ := a["kwargs"].(map[string]any)
		saves = append(saves, fmt.Sprintf("%v/%v/%v exp=%v", data["vm_state"], data["task_state"], data["power_state"], kw["expected_task_state"]))
	}
	want := []string{"soft-delete/<nil>/4 exp=[soft-deleting]", "active/<nil>/1 exp=restoring"}
	if !reflect.DeepEqual(saves, want) {
		t.Errorf("saves %v, want %v", saves, want)
	}
}

// TestConsoleAndDiagnosticsRoundTrips checks the exact vCenter calls of a
// VNC console and of diagnostics against a vCenter simulator: with the
// watcher's moref and host, the console reads the VM's port and the
// host's name (nova also finds the VM and reads its host); diagnostics
// read the summary once, whose power state answers nova's check.
func TestConsoleAndDiagnosticsRoundTrips(t *testing.T) {
	t.Parallel()
	r := newSimRig(t)
	ctx := t.Context()
	const (
		find = "FindAllByUuid"
		read = "RetrievePropertiesEx"
	)
	for _, tc := range []struct {
		power              string
		indexed            bool
		wantVNC, wantDiags []string
		wantDiagErr        string
	}{
		{power: vcenter.PowerStateOn, indexed: true, wantVNC: []string{read, read}, wantDiags: []string{read}},
		{power: vcenter.PowerStateOn, wantVNC: []string{find, read, read, read}, wantDiags: []string{find, read, read}},
		{power: vcenter.PowerStateOff, indexed: true, wantVNC: []string{read, read}, wantDiags: []string{read}, wantDiagErr: "InstanceInvalidState"},
	} {
		uuid := newUUID()
		vm := r.createVM(t, uuid, tc.power, tc.indexed)
		host, err := r.s.HostName(ctx, vm.Host)
		if err != nil {
			t.Fatal(err)
		}
		var c console
		calls, _ := r.measure(t, func() { c, err = r.l.vncConsole(ctx, simInstance(uuid)) })
		if err != nil || c.host != host || c.port != 5901 || !slices.Equal(calls, tc.wantVNC) {
			t.Errorf("%s VM (indexed %v): console %+v, %v, calls %v, want %s:5901 with %v", tc.power, tc.indexed, c, err, calls, host, tc.wantVNC)
		}
		if tc.indexed {
			r.index(vm) // the look-up that found it would have been indexed by the watcher
		}
		var d map[string]any
		calls, _ = r.measure(t, func() { d, err = r.l.diagnostics(ctx, simInstance(uuid)) })
		if got := errClass(err); got != tc.wantDiagErr || !slices.Equal(calls, tc.wantDiags) {
			t.Errorf("%s VM (indexed %v): diagnostics error %q, calls %v, want %q with %v", tc.power, tc.indexed, got, calls, tc.wantDiagErr, tc.wantDiags)
		}
		if err == nil && d["powerState"] != vcenter.PowerStateOn {
			t.Errorf("diagnostics %v", d)
		}
	}

	// A VM gone from the index's moref and from vCenter: InstanceNotFound
	// for the console, InstanceInvalidState for diagnostics (nova's
	// _get_power_state gives NOSTATE).
	uuid := newUUID()
	r.index(vcenter.VM{Ref: vcenter.Ref{Type: "VirtualMachine", Value: "vm-gone"}, InstanceUUID: uuid,
		PowerState: vcenter.PowerStateOn, Host: r.cluster.Hosts[0].Ref})
	if _, err := r.l.vncConsole(ctx, simInstance(uuid)); errClass(err) != "InstanceNotFound" {
		t.Errorf("console of a VM that is gone: %v", err)
	}
	r.index(vcenter.VM{Ref: vcenter.Ref{Type: "VirtualMachine", Value: "vm-gone"}, InstanceUUID: uuid, PowerState: vcenter.PowerStateOn})
	if _, err := r.l.diagnostics(ctx, simInstance(uuid)); errClass(err) != "InstanceInvalidState" {
		t.Errorf("diagnostics of a VM that is gone: %v", err)
	}
}

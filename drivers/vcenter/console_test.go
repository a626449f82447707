package vcenter

import (
	"errors"
	"strings"
	"testing"
)

// TestConsoleVNCPortAllocation checks nova's VNC port allocation: the first
// free port of the range across the vCenter's VMs, kept once set, and
// ErrVNCPortsExhausted when the range is full.
func TestConsoleVNCPortAllocation(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx := t.Context()
	uuids := []string{"4f5a0c1e-1111-4a4e-9d43-3f1c8d7f0a01", "4f5a0c1e-2222-4a4e-9d43-3f1c8d7f0a02", "4f5a0c1e-3333-4a4e-9d43-3f1c8d7f0a03"}
	var vms []VM
	for _, u := range uuids {
		vm, err := e.s.CreateVM(ctx, e.spec(u))
		if err != nil {
			t.Fatal(err)
		}
		vms = append(vms, vm)
	}
	if _, ok, err := e.s.VNCPort(ctx, vms[0].Ref); err != nil || ok {
		t.Fatalf("VNCPort of a new VM: ok %v, err %v; want none", ok, err)
	}
	for i, want := range []int{5900, 5901} {
		port, err := e.s.EnableVNC(ctx, vms[i].Ref, 5900, 2, "en-us")
		if err != nil || port != want {
			t.Fatalf("EnableVNC(vm %d) = %d, %v; want %d", i, port, err, want)
		}
	}
	if port, err := e.s.EnableVNC(ctx, vms[0].Ref, 5900, 2, "en-us"); err != nil || port != 5900 {
		t.Errorf("EnableVNC again = %d, %v; want the VM's port 5900", port, err)
	}
	if _, err := e.s.EnableVNC(ctx, vms[2].Ref, 5900, 2, "en-us"); !errors.Is(err, ErrVNCPortsExhausted) {
		t.Errorf("EnableVNC on a full range: %v, want ErrVNCPortsExhausted", err)
	}
	vm, err := e.s.GetVM(ctx, vms[1].Ref)
	if err != nil {
		t.Fatal(err)
	}
	if vm.ExtraConfig[VNCEnabledKey] != "true" || vm.ExtraConfig[VNCPortKey] != "5901" || vm.ExtraConfig[VNCKeymapKey] != "en-us" {
		t.Errorf("extraConfig %v", vm.ExtraConfig)
	}
	used, err := e.s.VNCPortsInUse(ctx)
	if err != nil || len(used) != 2 || used[5900] != vms[0].Ref || used[5901] != vms[1].Ref {
		t.Errorf("VNCPortsInUse = %v, %v", used, err)
	}
	name, err := e.s.HostName(ctx, vm.Host)
	if err != nil || name == "" {
		t.Errorf("HostName(%v) = %q, %v", vm.Host, name, err)
	}
}

// TestConsoleMKSTicketOnSimulator: the embedded simulator's AcquireTicket
// extension (vcsim has none) gives a running VM an MKS ticket for its host,
// and refuses a VM that is off, as vCenter does.
func TestConsoleMKSTicketOnSimulator(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx := t.Context()
	vm, err := e.s.CreateVM(ctx, e.spec("4f5a0c1e-4444-4a4e-9d43-3f1c8d7f0a04"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.AcquireMKSTicket(ctx, vm.Ref); err == nil || !IsFault(err) {
		t.Errorf("AcquireMKSTicket of a VM that is off: %v, want a fault", err)
	}
	if err := e.s.PowerOn(ctx, vm.Ref); err != nil {
		t.Fatal(err)
	}
	tk, err := e.s.AcquireMKSTicket(ctx, vm.Ref)
	if err != nil {
		t.Fatal(err)
	}
	running, err := e.s.GetVM(ctx, vm.Ref)
	if err != nil {
		t.Fatal(err)
	}
	host, err := e.s.HostName(ctx, running.Host)
	if err != nil {
		t.Fatal(err)
	}
	if len(tk.Ticket) != 32 || tk.Port != 902 || tk.Host != host || !strings.HasSuffix(tk.CfgFile, ".vmx") {
		t.Errorf("ticket %+v, want one for host %s", tk, host)
	}
	tk2, err := e.s.AcquireMKSTicket(ctx, vm.Ref)
	if err != nil || tk2.Ticket == tk.Ticket {
		t.Errorf("second ticket %+v, %v: want a new one", tk2, err)
	}
}

// TestDiagnosticsQuickStats checks the flat map nova's get_diagnostics
// builds from the VM's summary.
func TestDiagnosticsQuickStats(t *testing.T) {
	t.Parallel()
	e := newVMEnv(t)
	ctx := t.Context()
	vm, err := e.s.CreateVM(ctx, e.spec("4f5a0c1e-5555-4a4e-9d43-3f1c8d7f0a05"))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.s.PowerOn(ctx, vm.Ref); err != nil {
		t.Fatal(err)
	}
	d, err := e.s.VMDiagnostics(ctx, vm.Ref)
	if err != nil {
		t.Fatal(err)
	}
	if d["memorySizeMB"] != int64(512) || d["numCpu"] != int64(2) || d["powerState"] != "poweredOn" || d["name"] != vm.Name {
		t.Errorf("diagnostics %v", d)
	}
	for _, k := range []string{"overallCpuUsage", "guestMemoryUsage", "uptimeSeconds", "host", "connectionState"} {
		if _, ok := d[k]; !ok {
			t.Errorf("diagnostics have no %s: %v", k, d)
		}
	}
	if err := e.s.Destroy(ctx, vm.Ref); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.VMDiagnostics(ctx, vm.Ref); !errors.Is(err, ErrNotFound) {
		t.Errorf("diagnostics of a destroyed VM: %v, want ErrNotFound", err)
	}
}

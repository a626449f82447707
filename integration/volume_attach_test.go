//go:build integration

package integration

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/integration/cp"
)

// TestVolumeAttach: one agent as nova-compute and cinder-volume of the
// real control plane; a server booted through nova, a volume made through
// cinder, attached through nova's os-volume_attachments: nova-api reserves
// the device name on the agent and creates the attachment, the agent
// gives cinder the VMware connector (cinder's VMDK driver, the agent's
// volume role, creates the backing next to the VM), attaches the
// backing's disk to the VM with extraConfig volume-<id>, and completes the
// attachment: the volume is in-use, the server lists it, and its actions
// show attach_volume. A swap fails as with nova's VMware driver (no
// swap_volume) and leaves both volumes as they were. Detached through nova, the disk leaves the VM (the
// backing keeps it), the volume is available again and detach_volume is
// in the actions. Attached again and the server deleted, the volume is
// available and its backing keeps the disk.
func TestVolumeAttach(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	ctrl, vc, host, typ := volumeComputeAgent(ctx, t, "vcagent-volatt-",
		"VCAGENT_NOTIFICATION_DRIVER=messagingv2", "VCAGENT_NOTIFICATION_FORMAT=both")
	// a real nova notification consumer, loading the versioned payloads
	// into nova's classes
	listener := startPeer(t, []string{"pypeer/nova_notifications.py", "--url", ctrl.TransportURL, "--pool", "vcagent-" + host})

	image := uploadFlatImage(t, ctrl)
	server := createServer(t, ctrl, "volatt", image, host)
	t.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
		defer dcancel()
		_, _ = ctrl.NovaDELETE(dctx, "/servers/"+server)
	})
	waitServer(t, ctrl, server, 120*time.Second, settled("ACTIVE"))

	vol := createTestVolume(ctx, t, ctrl, "vcagent-volatt", typ)

	// ---- attach through nova
	start := time.Now()
	a, err := ctrl.NovaPOST(ctx, "/servers/"+server+"/os-volume_attachments", map[string]any{"volumeAttachment": map[string]any{"volumeId": vol}})
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	att, _ := a["volumeAttachment"].(map[string]any)
	device, _ := att["device"].(string)
	if att["volumeId"] != vol || !strings.HasPrefix(device, "/dev/sd") {
		t.Errorf("attachment %v: want the volume on a /dev/sd* device", att)
	}
	st, err := ctrl.CinderVolumeStatus(ctx, vol, "available", "reserved", "attaching")
	if err != nil || st != "in-use" {
		m, _ := ctrl.CinderGET(ctx, "/messages?resource_uuid="+vol)
		t.Fatalf("volume %s after attach: %q, %v; want in-use; messages %v", vol, st, err, m)
	}
	t.Logf("attach: in-use after %s, device %s", time.Since(start).Round(time.Millisecond), device)
	g, err := ctrl.CinderGET(ctx, "/volumes/"+vol)
	if err != nil {
		t.Fatal(err)
	}
	cvol, _ := g["volume"].(map[string]any)
	atts, _ := cvol["attachments"].([]any)
	if len(atts) != 1 || atts[0].(map[string]any)["server_id"] != server || atts[0].(map[string]any)["device"] != device {
		t.Errorf("cinder's attachments of %s: %v; want one to %s at %s", vol, atts, server, device)
	}

	backing, err := vc.FindBacking(ctx, vol)
	if err != nil {
		t.Fatalf("the volume's backing: %v", err)
	}
	vm, err := vc.FindVMByInstanceUUID(ctx, server)
	if err != nil {
		t.Fatal(err)
	}
	if !vmHasDisk(vm, backing.DiskPath) || len(vm.Disks) != 2 {
		t.Errorf("VM disks %+v: want the root disk and the backing's %s", vm.Disks, backing.DiskPath)
	}
	if vm.ExtraConfig["volume-"+vol] == "" {
		t.Errorf("VM extraConfig %v: no volume-%s", vm.ExtraConfig, vol)
	}
	if vm.Host != backing.Host && !sameCluster(ctx, t, vc, vm.Host, backing.Host) {
		t.Errorf("backing on host %v, VM on %v: want the VM's cluster", backing.Host, vm.Host)
	}
	l, err := ctrl.NovaGET(ctx, "/servers/"+server+"/os-volume_attachments")
	if err != nil {
		t.Fatal(err)
	}
	if as := asList(l, "volumeAttachments"); len(as) != 1 || as[0]["volumeId"] != vol || as[0]["device"] != device {
		t.Errorf("nova's attachments: %v", as)
	}
	checkInstanceAction(ctx, t, ctrl, server, "attach_volume", "compute_attach_volume")

	// ---- swap: the VMware driver has none; nova rolls the volumes back
	other := createTestVolume(ctx, t, ctrl, "vcagent-volatt-swap", typ)
	if _, err := ctrl.Nova(ctx, "PUT", "/servers/"+server+"/os-volume_attachments/"+vol,
		map[string]any{"volumeAttachment": map[string]any{"volumeId": other}}); err != nil {
		t.Fatalf("swap: %v", err)
	}
	waitActionEvent(t, ctrl, server, "swap_volume", "compute_swap_volume", "Error")
	if st, err := ctrl.CinderVolumeStatus(ctx, other, "reserved", "attaching"); err != nil || st != "available" {
		t.Errorf("the new volume after the failed swap: %q, %v; want available", st, err)
	}
	if st, err := ctrl.CinderVolumeStatus(ctx, vol, "detaching"); err != nil || st != "in-use" {
		t.Errorf("the old volume after the failed swap: %q, %v; want in-use", st, err)
	}

	// ---- detach through nova
	start = time.Now()
	if _, err := ctrl.NovaDELETE(ctx, "/servers/"+server+"/os-volume_attachments/"+vol); err != nil {
		t.Fatal(err)
	}
	st, err = ctrl.CinderVolumeStatus(ctx, vol, "in-use", "detaching")
	if err != nil || st != "available" {
		t.Fatalf("volume %s after detach: %q, %v; want available", vol, st, err)
	}
	t.Logf("detach: available after %s", time.Since(start).Round(time.Millisecond))
	vm, err = vc.FindVMByInstanceUUID(ctx, server)
	if err != nil {
		t.Fatal(err)
	}
	if vmHasDisk(vm, backing.DiskPath) || len(vm.Disks) != 1 {
		t.Errorf("VM disks after detach %+v: want only the root disk", vm.Disks)
	}
	if _, ok := vm.ExtraConfig["volume-"+vol]; ok && vm.ExtraConfig["volume-"+vol] != "" {
		t.Errorf("VM extraConfig after detach: volume-%s = %q", vol, vm.ExtraConfig["volume-"+vol])
	}
	if b, err := vc.GetBacking(ctx, backing.Ref); err != nil || b.DiskPath != backing.DiskPath {
		t.Errorf("the backing after detach: %+v, %v; want it with its disk", b, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		l, err = ctrl.NovaGET(ctx, "/servers/"+server+"/os-volume_attachments")
		if err != nil {
			t.Fatal(err)
		}
		if len(asList(l, "volumeAttachments")) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nova still lists attachments after the detach: %v", l)
		}
		time.Sleep(250 * time.Millisecond)
	}
	checkInstanceAction(ctx, t, ctrl, server, "detach_volume", "compute_detach_volume")
	checkVolumeNotifications(t, listener, host, vol)

	// ---- attached again, then the server deleted: the volume is
	// available, its backing (and disk) kept
	if _, err := ctrl.NovaPOST(ctx, "/servers/"+server+"/os-volume_attachments", map[string]any{"volumeAttachment": map[string]any{"volumeId": vol}}); err != nil {
		t.Fatal(err)
	}
	if st, err := ctrl.CinderVolumeStatus(ctx, vol, "available", "reserved", "attaching"); err != nil || st != "in-use" {
		t.Fatalf("volume %s after the second attach: %q, %v; want in-use", vol, st, err)
	}
	start = time.Now()
	if _, err := ctrl.NovaDELETE(ctx, "/servers/"+server); err != nil {
		t.Fatal(err)
	}
	waitServerGone(ctx, t, ctrl, server, 60*time.Second)
	if st, err := ctrl.CinderVolumeStatus(ctx, vol, "in-use", "detaching"); err != nil || st != "available" {
		t.Fatalf("volume %s after the server's delete: %q, %v; want available", vol, st, err)
	}
	t.Logf("delete with the volume attached: available after %s", time.Since(start).Round(time.Millisecond))
	if b, err := vc.GetBacking(ctx, backing.Ref); err != nil || b.DiskPath != backing.DiskPath {
		t.Errorf("the backing after the server's delete: %+v, %v; want it with its disk", b, err)
	}
	if _, err := vc.FindVMByInstanceUUID(ctx, server); err == nil {
		t.Errorf("the server's VM is still in vCenter")
	}
}

// volumeComputeAgent starts an agent with the compute and volume roles (a
// backend of its own, volumes of the returned volume type go there) on a
// simulator the test owns, and waits until nova and cinder both use it.
func volumeComputeAgent(ctx context.Context, t *testing.T, prefix string, extraEnv ...string) (*cp.ControlPlane, *vcenter.Session, string, string) {
	t.Helper()
	vcEnv, vc := testVCenter(t)
	ctrl, host, typ := volumeComputeAgentOn(ctx, t, vcEnv, prefix, extraEnv...)
	return ctrl, vc, host, typ
}

// cinderEndpointEnv is the compute role's cinder endpoint: nova's
// [cinder] endpoint_template, with the request's project.
func cinderEndpointEnv(ctrl *cp.ControlPlane) string {
	return "VCAGENT_CINDER_ENDPOINT=" + ctrl.CinderURL[:strings.Index(ctrl.CinderURL, "/v3")] + "/v3/%(project_id)s"
}

// volumeComputeAgentOn is volumeComputeAgent on the simulator of vcEnv.
func volumeComputeAgentOn(ctx context.Context, t *testing.T, vcEnv []string, prefix string, extraEnv ...string) (*cp.ControlPlane, string, string) {
	t.Helper()
	ctrl := controlPlane(t)
	if ctrl.CinderURL == "" || ctrl.CinderDB == "" {
		t.Fatalf("env.json of %s has no cinder_url or cinder_db: re-run up.sh", ctrl.Work)
	}
	suffix := fmt.Sprint(time.Now().Unix() % 100000)
	host := prefix + suffix
	backendName := strings.ReplaceAll(strings.TrimPrefix(prefix, "vcagent-"), "-", "") + suffix
	backend := host + "@" + backendName
	env := append(computeAgentEnv(ctrl, host), vcEnv...)
	env = append(env,
		"VCAGENT_ROLES=compute,volume",
		"VCAGENT_VOLUME_BACKEND="+backendName,
		"VCAGENT_VOLUME_DATABASE_URL="+ctrl.CinderDB,
		"VCAGENT_VOLUME_EXCHANGE="+ctrl.CinderExchange,
		cinderEndpointEnv(ctrl),
	)
	env = append(env, extraEnv...)
	startAgent(t, env...) // its log is in the test log when the test fails
	waitServiceState(t, ctrl, host, "up", 90*time.Second)
	if out, err := ctrl.NovaManage(ctx, "cell_v2", "discover_hosts"); err != nil {
		t.Fatalf("discover_hosts: %v\n%s", err, out)
	}
	waitVolumeServiceState(ctx, t, ctrl, backend, "up", 90*time.Second)
	waitPool(ctx, t, ctrl, backend+"#"+backendName)
	return ctrl, host, volumeTypeFor(ctx, t, ctrl, backendName)
}

// createTestVolume makes a volume of 1 GB through cinder, deleted at the
// end of the test, and waits until it is available.
func createTestVolume(ctx context.Context, t *testing.T, ctrl *cp.ControlPlane, name, typ string) string {
	t.Helper()
	v, err := ctrl.CinderPOST(ctx, "/volumes", map[string]any{"volume": map[string]any{"name": name, "size": 1, "volume_type": typ}})
	if err != nil {
		t.Fatal(err)
	}
	vol, _ := v["volume"].(map[string]any)["id"].(string)
	t.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
		defer dcancel()
		_, _ = ctrl.CinderVolumeStatus(dctx, vol, "in-use", "detaching", "attaching", "reserved")
		_, _ = ctrl.CinderDELETE(dctx, "/volumes/"+vol)
	})
	if st, err := ctrl.CinderVolumeStatus(ctx, vol, "creating"); err != nil || st != "available" {
		t.Fatalf("volume %s: %q, %v; want available", vol, st, err)
	}
	return vol
}

// waitServerGone polls until nova answers 404 for the server.
func waitServerGone(ctx context.Context, t *testing.T, ctrl *cp.ControlPlane, server string, within time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		_, err := ctrl.NovaGET(ctx, "/servers/"+server)
		if cp.StatusCode(err) == 404 {
			return
		}
		if time.Since(start) > within {
			t.Fatalf("server %s not gone %s after its delete: %v", server, within, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestVolumeBootFromVolume: a server booted through nova from a volume
// made through cinder (no image): at the build the agent attaches the
// volume in cinder (before the VM exists), creates the VM without a disk
// of its own, moves the backing to the VM's datastore and attaches its
// disk as the root disk; the volume is in-use at /dev/sda. Deleted, the
// server leaves the volume available with its backing.
func TestVolumeBootFromVolume(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	ctrl, vc, host, typ := volumeComputeAgent(ctx, t, "vcagent-volbfv-")
	vol := createTestVolume(ctx, t, ctrl, "vcagent-volbfv", typ)
	if _, err := ctrl.CinderPOST(ctx, "/volumes/"+vol+"/action", map[string]any{"os-set_bootable": map[string]any{"bootable": true}}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	created, err := ctrl.NovaPOST(ctx, "/servers", map[string]any{"server": map[string]any{
		"name": "volbfv", "flavorRef": "42", "networks": "none", "host": host,
		"block_device_mapping_v2": []any{map[string]any{
			"boot_index": 0, "uuid": vol, "source_type": "volume", "destination_type": "volume", "delete_on_termination": false,
		}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	server := created["server"].(map[string]any)["id"].(string)
	t.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
		defer dcancel()
		_, _ = ctrl.NovaDELETE(dctx, "/servers/"+server)
	})
	waitServer(t, ctrl, server, 120*time.Second, settled("ACTIVE"))
	t.Logf("boot from volume: ACTIVE after %s", time.Since(start).Round(time.Millisecond))
	if st, err := ctrl.CinderVolumeStatus(ctx, vol, "available", "reserved", "attaching"); err != nil || st != "in-use" {
		t.Fatalf("volume %s of the booted server: %q, %v; want in-use", vol, st, err)
	}
	l, err := ctrl.NovaGET(ctx, "/servers/"+server+"/os-volume_attachments")
	if err != nil {
		t.Fatal(err)
	}
	if as := asList(l, "volumeAttachments"); len(as) != 1 || as[0]["volumeId"] != vol || as[0]["device"] != "/dev/sda" {
		t.Errorf("nova's attachments: %v; want the volume at /dev/sda", as)
	}
	backing, err := vc.FindBacking(ctx, vol)
	if err != nil {
		t.Fatalf("the volume's backing: %v", err)
	}
	vm, err := vc.FindVMByInstanceUUID(ctx, server)
	if err != nil {
		t.Fatal(err)
	}
	if len(vm.Disks) != 1 || !vmHasDisk(vm, backing.DiskPath) || vm.PowerState != vcenter.PowerStateOn {
		t.Errorf("VM %s, disks %+v: want it on with only the backing's %s", vm.PowerState, vm.Disks, backing.DiskPath)
	}
	if vm.ExtraConfig["volume-"+vol] == "" {
		t.Errorf("VM extraConfig %v: no volume-%s", vm.ExtraConfig, vol)
	}
	if !sameCluster(ctx, t, vc, vm.Host, backing.Host) {
		t.Errorf("backing on host %v, VM on %v: want the backing moved to the VM's cluster", backing.Host, vm.Host)
	}

	if _, err := ctrl.NovaDELETE(ctx, "/servers/"+server); err != nil {
		t.Fatal(err)
	}
	waitServerGone(ctx, t, ctrl, server, 60*time.Second)
	if st, err := ctrl.CinderVolumeStatus(ctx, vol, "in-use", "detaching"); err != nil || st != "available" {
		t.Fatalf("volume %s after the server's delete: %q, %v; want available", vol, st, err)
	}
	if b, err := vc.GetBacking(ctx, backing.Ref); err != nil || b.DiskPath != backing.DiskPath {
		t.Errorf("the backing after the server's delete: %+v, %v; want it with its disk", b, err)
	}
}

// checkVolumeNotifications reads the host's notifications up to the
// versioned volume_detach.end: the attach, failed swap and detach ones in
// both formats, nova-compute's, whose versioned payloads load into nova's
// InstanceActionVolume(Swap)Payload with the volume's id.
func checkVolumeNotifications(t *testing.T, listener *peer, host, vol string) {
	t.Helper()
	var legacy, versioned []string
	deadline := time.Now().Add(60 * time.Second)
	for !slices.Contains(versioned, "instance.volume_detach.end") || !slices.Contains(legacy, "compute.instance.volume.detach") {
		if time.Now().After(deadline) {
			t.Fatalf("no volume_detach.end within 60 s; legacy %v, versioned %v", legacy, versioned)
		}
		n := listener.next(t, time.Until(deadline))
		pub := fmt.Sprint(n["publisher_id"])
		et := fmt.Sprint(n["event_type"])
		if (pub != "compute."+host && pub != "nova-compute:"+host) || !strings.Contains(et, "volume") {
			continue
		}
		p, _ := n["payload"].(map[string]any)
		if n["topic"] == "notifications" {
			legacy = append(legacy, et)
			if et == "swap_volume" { // wrap_exception's: the exception and the call's arguments
				if args, _ := p["args"].(map[string]any); args["old_volume_id"] != vol || !strings.Contains(fmt.Sprint(p["exception"]), "NotImplementedError") {
					t.Errorf("%s: %v", et, p)
				}
			} else if p["volume_id"] != vol {
				t.Errorf("%s: volume_id %v, want %s", et, p["volume_id"], vol)
			}
			continue
		}
		versioned = append(versioned, et)
		class, key := "InstanceActionVolumePayload", "volume_id"
		if strings.HasPrefix(et, "instance.volume_swap.") {
			class, key = "InstanceActionVolumeSwapPayload", "old_volume_id"
		}
		if n["load_error"] != nil || n["payload_class"] != class {
			t.Errorf("%s: payload class %v, load error %v\n%v", et, n["payload_class"], n["load_error"], p)
		}
		if data, _ := p["nova_object.data"].(map[string]any); data[key] != vol {
			t.Errorf("%s: %s %v, want %s", et, key, data[key], vol)
		}
	}
	if want := []string{"instance.volume_attach.start", "instance.volume_attach.end", "instance.volume_swap.start", "instance.volume_swap.error",
		"instance.volume_detach.start", "instance.volume_detach.end"}; !slices.Equal(versioned, want) {
		t.Errorf("versioned notifications %v, want %v", versioned, want)
	}
	if want := []string{"compute.instance.volume.attach", "swap_volume", "compute.instance.volume.detach"}; !slices.Equal(legacy, want) {
		t.Errorf("legacy notifications %v, want %v", legacy, want)
	}
}

func vmHasDisk(vm vcenter.VM, path string) bool {
	for _, d := range vm.Disks {
		if d.FileName == path {
			return true
		}
	}
	return false
}

// sameCluster reports whether two hosts are in one cluster.
func sameCluster(ctx context.Context, t *testing.T, vc *vcenter.Session, a, b vcenter.Ref) bool {
	t.Helper()
	clusters, err := vc.Clusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range clusters {
		in := func(h vcenter.Ref) bool {
			for _, x := range c.Hosts {
				if x.Ref == h {
					return true
				}
			}
			return false
		}
		if in(a) && in(b) {
			return true
		}
	}
	return false
}

// checkInstanceAction waits for the server's action (os-instance-actions)
// whose compute event finished with Success.
func checkInstanceAction(ctx context.Context, t *testing.T, ctrl *cp.ControlPlane, server, action, event string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		l, err := ctrl.NovaGET(ctx, "/servers/"+server+"/os-instance-actions")
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range asList(l, "instanceActions") {
			if a["action"] != action {
				continue
			}
			d, err := ctrl.NovaGET(ctx, "/servers/"+server+"/os-instance-actions/"+fmt.Sprint(a["request_id"]))
			if err != nil {
				t.Fatal(err)
			}
			ia, _ := d["instanceAction"].(map[string]any)
			events, _ := ia["events"].([]any)
			for _, e := range events {
				ev, _ := e.(map[string]any)
				if ev["event"] == event && ev["result"] == "Success" {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Errorf("action %s of %s: events %v; want %s Success", action, server, events, event)
				return
			}
		}
		if time.Now().After(deadline) {
			t.Errorf("server %s has no action %s: %v", server, action, l)
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
}

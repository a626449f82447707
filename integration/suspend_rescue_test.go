//go:build integration

package integration

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/integration/cp"
)

// TestSuspendRescueRebuild drives a server through the real nova API on
// the agent: suspend and resume, rescue and unrescue, rebuild from the
// same image and from another one. It checks the server, its VM in
// vCenter, the instance actions nova recorded, and with a real
// oslo.messaging listener that both kinds of notifications come in
// nova-compute's order and that the versioned payloads load into nova's
// own classes (InstanceActionRescuePayload, InstanceActionRebuildPayload).
func TestSuspendRescueRebuild(t *testing.T) {
	ctrl, vc, host, image := computeHostWithImage(t, "vcagent-sr-",
		"VCAGENT_NOTIFICATION_DRIVER=messagingv2", "VCAGENT_NOTIFICATION_FORMAT=both")
	listener := startPeer(t, []string{"pypeer/nova_notifications.py", "--url", ctrl.TransportURL, "--pool", "vcagent-" + host})
	ctx := context.Background()

	t0 := time.Now()
	id := createServer(t, ctrl, "sr", image, host)
	waitServer(t, ctrl, id, 120*time.Second, settled("ACTIVE"))
	t.Logf("boot: ACTIVE after %s", time.Since(t0).Round(time.Millisecond))
	defer func() {
		if _, err := ctrl.NovaDELETE(ctx, "/servers/"+id); err != nil && cp.StatusCode(err) != http.StatusNotFound {
			t.Errorf("delete: %v", err)
		}
	}()

	clusters, err := vc.Clusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dc := clusters[0].Datacenter
	getVM := func() vcenter.VM {
		t.Helper()
		vm, err := vc.FindVMByInstanceUUID(ctx, id)
		if err != nil {
			t.Fatalf("no VM for server %s: %v", id, err)
		}
		return vm
	}
	act := func(body map[string]any, status string) map[string]any {
		t.Helper()
		t0 := time.Now()
		if _, err := ctrl.NovaPOST(ctx, "/servers/"+id+"/action", body); err != nil {
			t.Fatalf("%v: %v", keys(body), err)
		}
		time.Sleep(100 * time.Millisecond)
		s := waitServer(t, ctrl, id, 90*time.Second, settled(status))
		t.Logf("%v: %s after %s", keys(body), status, time.Since(t0).Round(time.Millisecond))
		return s
	}
	powerState := func(s map[string]any) any { return s["OS-EXT-STS:power_state"] }

	// suspend / resume.
	s := act(map[string]any{"suspend": nil}, "SUSPENDED")
	if vm := getVM(); vm.PowerState != vcenter.PowerStateSuspended {
		t.Errorf("after suspend: VM %s, want suspended", vm.PowerState)
	}
	if powerState(s) != float64(7) {
		t.Errorf("after suspend: power_state %v, want 7 (SUSPENDED)", powerState(s))
	}
	waitActionEvent(t, ctrl, id, "suspend", "compute_suspend_instance", "Success")
	s = act(map[string]any{"resume": nil}, "ACTIVE")
	if vm := getVM(); vm.PowerState != vcenter.PowerStateOn {
		t.Errorf("after resume: VM %s, want poweredOn", vm.PowerState)
	}
	if powerState(s) != float64(1) {
		t.Errorf("after resume: power_state %v, want 1", powerState(s))
	}
	waitActionEvent(t, ctrl, id, "resume", "compute_resume_instance", "Success")

	// rescue / unrescue, from the instance's own image, then from another
	// one named in the request.
	image2 := uploadFlatImage(t, ctrl)
	rescueCycle := func(body map[string]any, rescueImage string) {
		t.Helper()
		before := getVM()
		if len(before.Disks) != 1 {
			t.Fatalf("VM disks before rescue: %+v", before.Disks)
		}
		root := before.Disks[0]
		s := act(map[string]any{"rescue": body}, "RESCUE")
		if powerState(s) != float64(1) {
			t.Errorf("after rescue: power_state %v, want 1", powerState(s))
		}
		vm := getVM()
		var rescue vcenter.Disk
		for _, d := range vm.Disks {
			if strings.HasSuffix(d.FileName, "/"+rescueImage+"-rescue.vmdk") {
				rescue = d
			}
		}
		if len(vm.Disks) != 2 || rescue.Key == 0 || vm.PowerState != vcenter.PowerStateOn {
			t.Errorf("rescued VM: power %s, disks %+v; want on, root and %s-rescue.vmdk", vm.PowerState, vm.Disks, rescueImage)
		}
		if boot, err := vc.BootDisks(ctx, vm.Ref); err != nil || !slices.Equal(boot, []int32{rescue.Key}) {
			t.Errorf("rescued VM boot order %v (%v), want the rescue disk %d", boot, err, rescue.Key)
		}
		waitActionEvent(t, ctrl, id, "rescue", "compute_rescue_instance", "Success")

		s = act(map[string]any{"unrescue": nil}, "ACTIVE")
		vm = getVM()
		if len(vm.Disks) != 1 || vm.Disks[0].FileName != root.FileName || vm.PowerState != vcenter.PowerStateOn {
			t.Errorf("unrescued VM: power %s, disks %+v; want on, only %s", vm.PowerState, vm.Disks, root.FileName)
		}
		if boot, err := vc.BootDisks(ctx, vm.Ref); err != nil || !slices.Equal(boot, []int32{vm.Disks[0].Key}) {
			t.Errorf("unrescued VM boot order %v (%v), want the root disk", boot, err)
		}
		if rescue.FileName != "" {
			p, err := vcenter.ParseDatastorePath(rescue.FileName)
			if err != nil {
				t.Fatal(err)
			}
			if ok, err := vc.FileExists(ctx, dc, p); err != nil || ok {
				t.Errorf("rescue disk %s after unrescue: exists %v (%v)", p, ok, err)
			}
		}
		if powerState(s) != float64(1) {
			t.Errorf("after unrescue: power_state %v, want 1", powerState(s))
		}
		waitActionEvent(t, ctrl, id, "unrescue", "compute_unrescue_instance", "Success")
	}
	rescueCycle(map[string]any{}, image)
	rescueCycle(map[string]any{"rescue_image_ref": image2}, image2)

	// rebuild from the same image: a fresh VM.
	old := getVM()
	launched := waitServer(t, ctrl, id, time.Second, settled("ACTIVE"))["OS-SRV-USG:launched_at"]
	s = act(map[string]any{"rebuild": map[string]any{"imageRef": image}}, "ACTIVE")
	vm := getVM()
	if vm.Ref == old.Ref || vm.PowerState != vcenter.PowerStateOn || len(vm.Disks) != 1 || !strings.Contains(vm.Annotation, "imageid:"+image) {
		t.Errorf("rebuilt VM %+v; want a new powered-on VM (old %s) of image %s", vm, old.Ref.Value, image)
	}
	if s["OS-SRV-USG:launched_at"] == launched {
		t.Errorf("launched_at %v unchanged by the rebuild", launched)
	}
	waitActionEvent(t, ctrl, id, "rebuild", "compute_rebuild_instance", "Success")

	// rebuild from another image.
	old = vm
	s = act(map[string]any{"rebuild": map[string]any{"imageRef": image2}}, "ACTIVE")
	vm = getVM()
	if vm.Ref == old.Ref || vm.PowerState != vcenter.PowerStateOn || len(vm.Disks) != 1 || !strings.Contains(vm.Annotation, "imageid:"+image2) {
		t.Errorf("VM rebuilt from %s: %+v", image2, vm)
	}
	if img, _ := s["image"].(map[string]any); img["id"] != image2 {
		t.Errorf("server image %v after rebuild, want %s", s["image"], image2)
	}

	// rebuild of a stopped server: a fresh VM, stopped again.
	act(map[string]any{"os-stop": nil}, "SHUTOFF")
	old = getVM()
	s = act(map[string]any{"rebuild": map[string]any{"imageRef": image}}, "SHUTOFF")
	vm = getVM()
	if vm.Ref == old.Ref || vm.PowerState != vcenter.PowerStateOff || !strings.Contains(vm.Annotation, "imageid:"+image) {
		t.Errorf("VM of the stopped server rebuilt: %+v", vm)
	}
	if powerState(s) != float64(4) {
		t.Errorf("after rebuilding a stopped server: power_state %v, want 4", powerState(s))
	}
	waitActionEvent(t, ctrl, id, "rebuild", "compute_stop_instance", "Success")

	// The actions nova recorded, each with the compute's event a success.
	acts, err := ctrl.NovaGET(ctx, "/servers/"+id+"/os-instance-actions")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, a := range asList(acts, "instanceActions") {
		names = append(names, fmt.Sprint(a["action"]))
		detail, err := ctrl.NovaGET(ctx, fmt.Sprintf("/servers/%s/os-instance-actions/%s", id, a["request_id"]))
		if err != nil {
			t.Fatal(err)
		}
		// Every event a success, the compute's among them (a rebuild also
		// has conductor's rebuild_server).
		want := "compute_" + fmt.Sprint(a["action"]) + "_instance"
		if a["action"] == "create" {
			want = "compute__do_build_and_run_instance"
		}
		found := false
		ev := asList(detail["instanceAction"].(map[string]any), "events")
		for _, e := range ev {
			found = found || e["event"] == want
			if e["result"] != "Success" {
				t.Errorf("action %v: event %v result %v", a["action"], e["event"], e["result"])
			}
		}
		if !found {
			t.Errorf("action %v: no %s event in %v", a["action"], want, ev)
		}
	}
	if fmt.Sprint(names) != "[rebuild stop rebuild rebuild unrescue rescue unrescue rescue resume suspend create]" {
		t.Errorf("instance actions %v", names)
	}

	// The notifications, up to the third rebuild.end.
	var legacy, versioned []string
	deadline := time.Now().Add(60 * time.Second)
	count := func(l []string, s string) (n int) {
		for _, x := range l {
			if x == s {
				n++
			}
		}
		return n
	}
	for count(versioned, "instance.rebuild.end") < 3 || count(legacy, "compute.instance.rebuild.end") < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("no third rebuild.end within 60 s; legacy %v, versioned %v", legacy, versioned)
		}
		n := listener.next(t, time.Until(deadline))
		pub := fmt.Sprint(n["publisher_id"])
		if pub != "compute."+host && pub != "nova-compute:"+host {
			continue
		}
		et := fmt.Sprint(n["event_type"])
		if n["topic"] == "notifications" {
			legacy = append(legacy, et)
			checkLegacyPayload(t, et, n, id)
			continue
		}
		versioned = append(versioned, et)
		if n["load_error"] != nil {
			t.Errorf("%s: payload does not load into nova's classes: %v\n%v", et, n["load_error"], n["payload"])
		}
		want := "InstanceActionPayload"
		switch {
		case strings.HasPrefix(et, "instance.create."):
			want = "InstanceCreatePayload"
		case strings.HasPrefix(et, "instance.rescue."):
			want = "InstanceActionRescuePayload"
		case strings.HasPrefix(et, "instance.rebuild."):
			want = "InstanceActionRebuildPayload"
		}
		if n["payload_class"] != want {
			t.Errorf("%s: payload class %v, want %s", et, n["payload_class"], want)
		}
		if strings.HasPrefix(et, "instance.rescue.") {
			// None when the request named no image, then image2.
			var want any
			if count(versioned, "instance.rescue.start") > 1 {
				want = image2
			}
			p, _ := n["payload"].(map[string]any)
			data, _ := p["nova_object.data"].(map[string]any)
			if v, ok := data["rescue_image_ref"]; !ok || v != want {
				t.Errorf("%s: rescue_image_ref %v (set %v), want %v", et, v, ok, want)
			}
		}
	}
	wantVersioned := []string{
		"instance.create.start", "instance.create.end",
		"instance.suspend.start", "instance.suspend.end",
		"instance.resume.start", "instance.resume.end",
		"instance.rescue.start", "instance.rescue.end",
		"instance.unrescue.start", "instance.unrescue.end",
		"instance.rescue.start", "instance.rescue.end",
		"instance.unrescue.start", "instance.unrescue.end",
		"instance.rebuild.start", "instance.rebuild.end",
		"instance.rebuild.start", "instance.rebuild.end",
		"instance.power_off.start", "instance.power_off.end",
		"instance.rebuild.start", "instance.power_off.start", "instance.power_off.end", "instance.rebuild.end",
	}
	if !slices.Equal(versioned, wantVersioned) {
		t.Errorf("versioned notifications\n got %v\nwant %v", versioned, wantVersioned)
	}
	var wantLegacy []string
	for _, v := range wantVersioned {
		wantLegacy = append(wantLegacy, "compute."+v)
	}
	if !slices.Equal(legacy, wantLegacy) {
		t.Errorf("legacy notifications\n got %v\nwant %v", legacy, wantLegacy)
	}
}

// TestSuspendRescueRebuildEvacuateUnsupported evacuates a server from a
// compute host that is down to another agent: nova's VMware driver says
// supports_evacuate=False, so the destination answers as nova-compute
// does with it: the server goes to ERROR with InstanceEvacuateNotSupported,
// the evacuation's migration fails and the compute event ends in error.
func TestSuspendRescueRebuildEvacuateUnsupported(t *testing.T) {
	ctrl, _, source, image := computeHostWithImage(t, "vcagent-sr-")
	_, _, dest, _ := computeHostWithImage(t, "vcagent-sr-")
	ctx := context.Background()
	id := createServer(t, ctrl, "evac", image, source)
	waitServer(t, ctrl, id, 120*time.Second, settled("ACTIVE"))

	// The source host fails (forced down, as an operator marks it).
	svcs := computeServices(t, ctrl, source)
	if len(svcs) != 1 {
		t.Fatalf("services of %s: %v", source, svcs)
	}
	svc := fmt.Sprint(svcs[0]["id"])
	force := func(down bool) {
		if _, err := ctrl.Nova(ctx, "PUT", "/os-services/"+svc, map[string]any{"forced_down": down}); err != nil {
			t.Fatalf("forced_down=%v: %v", down, err)
		}
	}
	force(true)
	defer func() {
		force(false)
		if _, err := ctrl.NovaDELETE(ctx, "/servers/"+id); err != nil {
			t.Errorf("delete: %v", err)
		}
	}()

	t0 := time.Now()
	if _, err := ctrl.NovaPOST(ctx, "/servers/"+id+"/action", map[string]any{"evacuate": map[string]any{"host": dest}}); err != nil {
		t.Fatalf("evacuate: %v", err)
	}
	var s map[string]any
	for {
		v, err := ctrl.NovaGET(ctx, "/servers/"+id)
		if err != nil {
			t.Fatal(err)
		}
		s, _ = v["server"].(map[string]any)
		if s["status"] == "ERROR" && s["OS-EXT-STS:task_state"] == nil {
			break
		}
		if time.Since(t0) > 90*time.Second {
			t.Fatalf("evacuate: status %v task %v after 90 s", s["status"], s["OS-EXT-STS:task_state"])
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("evacuate: ERROR after %s", time.Since(t0).Round(time.Millisecond))
	fault, _ := s["fault"].(map[string]any)
	if !strings.Contains(fmt.Sprint(fault["message"]), "Instance evacuate is not supported.") {
		t.Errorf("fault %v, want InstanceEvacuateNotSupported", fault)
	}
	if s["OS-EXT-SRV-ATTR:host"] != source {
		t.Errorf("server host %v, want it left on %s", s["OS-EXT-SRV-ATTR:host"], source)
	}
	waitActionEvent(t, ctrl, id, "evacuate", "compute_rebuild_instance", "Error")
	migs, err := ctrl.NovaGET(ctx, "/os-migrations?instance_uuid="+id)
	if err != nil {
		t.Fatal(err)
	}
	ms := asList(migs, "migrations")
	if len(ms) != 1 || ms[0]["migration_type"] != "evacuation" || ms[0]["status"] != "failed" || ms[0]["dest_compute"] != dest {
		t.Errorf("migrations %v, want one failed evacuation to %s", ms, dest)
	}
}

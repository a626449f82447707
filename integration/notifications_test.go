//go:build integration

package integration

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vcagent/vcagent/integration/cp"
)

// TestNotificationsLoadIntoNovaPayloadClasses drives a server through the
// real nova API (boot, stop, start, reboot, the unsupported pause and
// password change, delete) on an agent sending nova's notifications in both
// formats, and checks with a real oslo.messaging notification listener that
// every versioned payload loads into nova's own payload classes, that both
// kinds come in nova-compute's order, and that the unsupported operations
// answer as nova's VMware driver does.
func TestNotificationsLoadIntoNovaPayloadClasses(t *testing.T) {
	ctrl, _, host, image := computeHostWithImage(t, "vcagent-notif-",
		"VCAGENT_NOTIFICATION_DRIVER=messagingv2", "VCAGENT_NOTIFICATION_FORMAT=both")
	listener := startPeer(t, []string{"pypeer/nova_notifications.py", "--url", ctrl.TransportURL, "--pool", "vcagent-" + host})
	ctx := context.Background()

	id := createServer(t, ctrl, "notified", image, host)
	waitServer(t, ctrl, id, 120*time.Second, settled("ACTIVE"))
	act := func(body map[string]any, status string) {
		t.Helper()
		if _, err := ctrl.NovaPOST(ctx, "/servers/"+id+"/action", body); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		waitServer(t, ctrl, id, 60*time.Second, settled(status))
	}
	act(map[string]any{"os-stop": nil}, "SHUTOFF")
	act(map[string]any{"os-start": nil}, "ACTIVE")
	act(map[string]any{"reboot": map[string]any{"type": "SOFT"}}, "ACTIVE")

	// pause: the VMware driver has none; the server stays ACTIVE and the
	// pause action ends in error.
	act(map[string]any{"pause": nil}, "ACTIVE")
	waitActionEvent(t, ctrl, id, "pause", "compute_pause_instance", "Error")

	// changePassword: a call; nova-api turns the driver's NotImplementedError
	// into 501.
	_, err := ctrl.NovaPOST(ctx, "/servers/"+id+"/action", map[string]any{"changePassword": map[string]any{"adminPass": "n0t-l0gged"}})
	var he *cp.HTTPError
	if !errors.As(err, &he) || he.StatusCode != 501 {
		t.Errorf("changePassword: %v, want HTTP 501 as with nova's VMware driver", err)
	}
	waitServer(t, ctrl, id, 30*time.Second, settled("ACTIVE"))

	if _, err := ctrl.NovaDELETE(ctx, "/servers/"+id); err != nil {
		t.Fatal(err)
	}

	// Collect this host's notifications up to the versioned delete.end.
	var legacy, versioned []string
	deadline := time.Now().Add(90 * time.Second)
	for !slices.Contains(versioned, "instance.delete.end") || !slices.Contains(legacy, "compute.instance.delete.end") {
		if time.Now().After(deadline) {
			t.Fatalf("no delete.end within 90 s; legacy %v, versioned %v", legacy, versioned)
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
		want := map[bool]string{true: "InstanceCreatePayload", false: "InstanceActionPayload"}[strings.HasPrefix(et, "instance.create.")]
		if et == "compute.exception" {
			want = "ExceptionPayload"
		}
		if n["payload_class"] != want {
			t.Errorf("%s: payload class %v, want %s", et, n["payload_class"], want)
		}
		if pub != "nova-compute:"+host {
			t.Errorf("%s: publisher %s", et, pub)
		}
	}

	wantVersioned := []string{
		"instance.create.start", "instance.create.end",
		"instance.power_off.start", "instance.power_off.end",
		"instance.power_on.start", "instance.power_on.end",
		"instance.reboot.start", "instance.reboot.end",
		"instance.pause.start", "compute.exception",
		"compute.exception", // set_admin_password
		"instance.delete.start", "instance.shutdown.start", "instance.shutdown.end", "instance.delete.end",
	}
	if !slices.Equal(versioned, wantVersioned) {
		t.Errorf("versioned notifications\n got %v\nwant %v", versioned, wantVersioned)
	}
	wantLegacy := []string{
		"compute.instance.create.start", "compute.instance.create.end",
		"compute.instance.power_off.start", "compute.instance.power_off.end",
		"compute.instance.power_on.start", "compute.instance.power_on.end",
		"compute.instance.reboot.start", "compute.instance.reboot.end",
		"compute.instance.pause.start", "pause_instance",
		"set_admin_password",
		"compute.instance.delete.start", "compute.instance.shutdown.start", "compute.instance.shutdown.end", "compute.instance.delete.end",
	}
	if !slices.Equal(legacy, wantLegacy) {
		t.Errorf("legacy notifications\n got %v\nwant %v", legacy, wantLegacy)
	}
}

// checkLegacyPayload checks what consumers of the legacy format read: the
// instance's identity and state for compute.instance.*, and for the error
// ones the exception and the call's arguments, never a password.
func checkLegacyPayload(t *testing.T, event string, n map[string]any, id string) {
	t.Helper()
	p, _ := n["payload"].(map[string]any)
	if !strings.HasPrefix(event, "compute.instance.") {
		if n["priority"] != "ERROR" || !strings.Contains(fmt.Sprint(p["exception"]), "NotImplementedError") {
			t.Errorf("%s: %v", event, n)
		}
		args, _ := p["args"].(map[string]any)
		inst, _ := args["instance"].(map[string]any)
		if inst["uuid"] != id {
			t.Errorf("%s: args.instance %v", event, args["instance"])
		}
		if strings.Contains(fmt.Sprint(p), "n0t-l0gged") {
			t.Errorf("%s carries the admin password: %v", event, p)
		}
		return
	}
	for _, k := range []string{"tenant_id", "user_id", "instance_id", "display_name", "instance_type", "memory_mb", "vcpus", "root_gb", "state", "host", "node", "image_ref_url", "image_meta", "created_at", "launched_at"} {
		if _, ok := p[k]; !ok {
			t.Errorf("%s: no %s in %v", event, k, p)
		}
	}
	if p["instance_id"] != id || p["instance_type"] != "m1.nano" || p["memory_mb"] != float64(64) {
		t.Errorf("%s: instance %v type %v memory %v", event, p["instance_id"], p["instance_type"], p["memory_mb"])
	}
}

// waitActionEvent waits until the server's action has the compute event
// finished with result ("Success" or "Error").
func waitActionEvent(t *testing.T, ctrl *cp.ControlPlane, id, action, event, result string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		acts, err := ctrl.NovaGET(context.Background(), "/servers/"+id+"/os-instance-actions")
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range asList(acts, "instanceActions") {
			if a["action"] != action {
				continue
			}
			detail, err := ctrl.NovaGET(context.Background(), fmt.Sprintf("/servers/%s/os-instance-actions/%s", id, a["request_id"]))
			if err != nil {
				t.Fatal(err)
			}
			ia, _ := detail["instanceAction"].(map[string]any)
			for _, e := range asList(ia, "events") {
				if e["event"] == event && e["result"] == result {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("server %s: no %s event %s with result %s within 60 s", id, action, event, result)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

//go:build integration

package integration

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/integration/cp"
)

// TestConsolesDiagnosticsAndEventsThroughNovaAPI drives the rest of the
// compute API through the real nova-api onto the agent: a noVNC console URL
// (the VM gets its VNC port in vCenter), the wrong console type as nova-api
// shows it with nova's error notifications (checked with nova's own payload
// classes), SPICE and serial consoles ([spice] and [serial_console] are off,
// nova's defaults), VNC and MKS URLs from the openstack CLI, the console output, the 2.48 diagnostics from the VM's
// quick stats, external events (vif-plugged and network-changed change
// nothing; volume-extended for an unattached volume succeeds; power-update
// fails in the driver as with nova's VMware driver), the service's
// disable/enable syncing COMPUTE_STATUS_DISABLED, and the diagnostics of a
// stopped server (409).
func TestConsolesDiagnosticsAndEventsThroughNovaAPI(t *testing.T) {
	ctrl, vc, host, image := computeHostWithImage(t, "vcagent-con-",
		"VCAGENT_NOTIFICATION_DRIVER=messagingv2", "VCAGENT_NOTIFICATION_FORMAT=both",
		"VCAGENT_MKS_ENABLED=true", "VCAGENT_MKSPROXY_BASE_URL=http://127.0.0.1:6091/", "VCAGENT_VNC_PORT=5950")
	listener := startPeer(t, []string{"pypeer/nova_notifications.py", "--url", ctrl.TransportURL, "--pool", "vcagent-" + host})
	ctx := context.Background()
	id := createServer(t, ctrl, "console", image, host)
	waitServer(t, ctrl, id, 120*time.Second, settled("ACTIVE"))
	t.Cleanup(func() { _, _ = ctrl.NovaDELETE(context.Background(), "/servers/"+id) })
	// [vnc] enabled (nova's default): the VM got its VNC port at spawn, from
	// VCAGENT_VNC_PORT ([vmware] vnc_port) on.
	vm, err := vc.FindVMByInstanceUUID(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if vm.ExtraConfig[vcenter.VNCPortKey] != "5950" || vm.ExtraConfig[vcenter.VNCEnabledKey] != "true" {
		t.Errorf("VM's VNC settings after spawn %v", vm.ExtraConfig)
	}

	// The CLI users run: openstack console url show, VNC and MKS.
	for _, c := range []struct{ flag, pattern string }{
		{"--novnc", `^http://127\.0\.0\.1:6080/vnc_auto\.html\?path=%3Ftoken%3D[0-9a-f-]{36}$`},
		{"--mks", `^http://127\.0\.0\.1:6091/\?token=[0-9a-f-]{36}$`},
	} {
		out, err := ctrl.OpenStack(ctx, "console", "url", "show", c.flag, "-f", "value", "-c", "url", id)
		if err != nil {
			t.Fatalf("openstack console url show %s: %v\n%s", c.flag, err, out)
		}
		if u := strings.TrimSpace(out); !regexp.MustCompile(c.pattern).MatchString(u) {
			t.Errorf("openstack console url show %s: %q, want %s", c.flag, u, c.pattern)
		}
	}

	// noVNC: the URL nova-api returns carries the token compute created.
	rc, err := ctrl.NovaPOST(ctx, "/servers/"+id+"/remote-consoles", map[string]any{"remote_console": map[string]any{"protocol": "vnc", "type": "novnc"}})
	if err != nil {
		t.Fatalf("VNC console: %v", err)
	}
	console, _ := rc["remote_console"].(map[string]any)
	u, _ := console["url"].(string)
	if !regexp.MustCompile(`^http://127\.0\.0\.1:6080/vnc_auto\.html\?path=%3Ftoken%3D[0-9a-f-]{36}$`).MatchString(u) || console["protocol"] != "vnc" || console["type"] != "novnc" {
		t.Errorf("remote console %v", rc)
	}
	t.Logf("console URL %s", u)
	if vm, err = vc.FindVMByInstanceUUID(ctx, id); err != nil {
		t.Fatal(err)
	}
	if vm.ExtraConfig[vcenter.VNCPortKey] != "5950" || vm.ExtraConfig[vcenter.VNCEnabledKey] != "true" {
		t.Errorf("VM's VNC settings %v", vm.ExtraConfig)
	}
	// A second console keeps the port and gives a new token.
	rc2, err := ctrl.NovaPOST(ctx, "/servers/"+id+"/remote-consoles", map[string]any{"remote_console": map[string]any{"protocol": "vnc", "type": "novnc"}})
	if err != nil {
		t.Fatal(err)
	}
	if u2 := rc2["remote_console"].(map[string]any)["url"]; u2 == u {
		t.Errorf("second console has the same token: %v", u2)
	}
	if p, _ := url.Parse(u); p == nil || !strings.HasPrefix(p.Query().Get("path"), "?token=") {
		t.Errorf("URL %s has no token path", u)
	}

	// The wrong type: ConsoleTypeInvalid, HTTP 400.
	_, err = ctrl.NovaPOST(ctx, "/servers/"+id+"/remote-consoles", map[string]any{"remote_console": map[string]any{"protocol": "vnc", "type": "xvpvnc"}})
	var he *cp.HTTPError
	if !errors.As(err, &he) || he.StatusCode != 400 || !strings.Contains(he.Body, "Invalid console type xvpvnc") {
		t.Errorf("xvpvnc console: %v, want HTTP 400 Invalid console type xvpvnc", err)
	}
	// ...with the error notifications nova-compute sends: the legacy one
	// named after the method, the versioned compute.exception.
	var legacyErr, versionedErr map[string]any
	deadline := time.Now().Add(60 * time.Second)
	for legacyErr == nil || versionedErr == nil {
		if time.Now().After(deadline) {
			t.Fatalf("no error notifications for the invalid console type: legacy %v, versioned %v", legacyErr, versionedErr)
		}
		n := listener.next(t, time.Until(deadline))
		switch pub, et := fmt.Sprint(n["publisher_id"]), fmt.Sprint(n["event_type"]); {
		case pub == "compute."+host && et == "get_vnc_console":
			legacyErr = n
		case pub == "nova-compute:"+host && et == "compute.exception":
			versionedErr = n
		}
	}
	lp, _ := legacyErr["payload"].(map[string]any)
	largs, _ := lp["args"].(map[string]any)
	if legacyErr["priority"] != "ERROR" || !strings.Contains(fmt.Sprint(lp["exception"]), "ConsoleTypeInvalid") || largs["console_type"] != "xvpvnc" {
		t.Errorf("legacy error notification %v", legacyErr)
	}
	vp, _ := versionedErr["payload"].(map[string]any)
	vdata, _ := vp["nova_object.data"].(map[string]any)
	if versionedErr["load_error"] != nil || versionedErr["payload_class"] != "ExceptionPayload" || vdata["exception"] != "ConsoleTypeInvalid" ||
		vdata["exception_message"] != "Invalid console type xvpvnc" {
		t.Errorf("versioned error notification %v", versionedErr)
	}

	// SPICE with nova's default [spice] enabled = False: ConsoleTypeUnavailable, 400.
	_, err = ctrl.NovaPOST(ctx, "/servers/"+id+"/remote-consoles", map[string]any{"remote_console": map[string]any{"protocol": "spice", "type": "spice-html5"}})
	if !errors.As(err, &he) || he.StatusCode != 400 || !strings.Contains(he.Body, "Unavailable console type spice-html5.") {
		t.Errorf("spice console: %v, want HTTP 400 Unavailable console type spice-html5.", err)
	}
	// Serial: off by default as in nova.
	_, err = ctrl.NovaPOST(ctx, "/servers/"+id+"/remote-consoles", map[string]any{"remote_console": map[string]any{"protocol": "serial", "type": "serial"}})
	if !errors.As(err, &he) || he.StatusCode != 400 || !strings.Contains(he.Body, "Unavailable console type serial.") {
		t.Errorf("serial console: %v, want HTTP 400", err)
	}

	// Console output: no VSPC log, so nothing, as with nova's VMware driver.
	out, err := ctrl.NovaPOST(ctx, "/servers/"+id+"/action", map[string]any{"os-getConsoleOutput": map[string]any{"length": 10}})
	if err != nil || out["output"] != "" {
		t.Errorf("console output %v, %v", out, err)
	}

	// Diagnostics (2.48+): the VM's quick stats.
	diag, err := ctrl.NovaGET(ctx, "/servers/"+id+"/diagnostics")
	if err != nil {
		t.Fatalf("diagnostics: %v", err)
	}
	mem, _ := diag["memory_details"].(map[string]any)
	if diag["state"] != "running" || diag["driver"] != "vmwareapi" || diag["hypervisor_os"] != "esxi" || diag["config_drive"] != false ||
		mem["maximum"] != float64(64) || diag["num_cpus"] != float64(0) {
		t.Errorf("diagnostics %v", diag)
	}

	// External events from neutron: accepted, nothing changes.
	ev, err := ctrl.NovaPOST(ctx, "/os-server-external-events", map[string]any{"events": []any{
		map[string]any{"name": "network-vif-plugged", "server_uuid": id, "tag": "5e2a8c3b-6f1d-4c2e-9a7b-1d2c3e4f5a6b", "status": "completed"},
		map[string]any{"name": "network-changed", "server_uuid": id, "tag": "5e2a8c3b-6f1d-4c2e-9a7b-1d2c3e4f5a6b"},
	}})
	if err != nil {
		t.Fatalf("external events: %v", err)
	}
	for _, e := range asList(ev, "events") {
		if e["code"] != float64(200) || e["status"] != "completed" {
			t.Errorf("event not accepted: %v", e)
		}
	}
	if len(asList(ev, "events")) != 2 {
		t.Errorf("events reply %v", ev)
	}
	time.Sleep(time.Second)
	s := waitServer(t, ctrl, id, 30*time.Second, settled("ACTIVE"))
	if s["fault"] != nil {
		t.Errorf("server has a fault after the events: %v", s["fault"])
	}

	// power-update from ironic-style callers: nova-compute sets
	// powering-off and calls the driver's power_update_event, which the
	// VMware driver lacks: the stop action's compute event ends in error,
	// the server stays ACTIVE with its task state reverted.
	// volume-extended for a volume the server does not have: a warning, the
	// extend_volume action's event succeeds. (Separate requests: as in
	// nova, the power-update failure ends the handling of its cast.)
	for _, e := range []map[string]any{
		{"name": "volume-extended", "server_uuid": id, "tag": "0d7ca2b1-7a9f-4d8c-9a51-3c1f2e0b9a11"},
		{"name": "power-update", "server_uuid": id, "tag": "POWER_OFF"},
	} {
		if _, err := ctrl.NovaPOST(ctx, "/os-server-external-events", map[string]any{"events": []any{e}}); err != nil {
			t.Fatalf("%s event: %v", e["name"], err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	waitActionEvent(t, ctrl, id, "stop", "compute_power_update", "Error")
	waitActionEvent(t, ctrl, id, "extend_volume", "compute_extend_volume", "Success")
	waitServer(t, ctrl, id, 30*time.Second, settled("ACTIVE"))
	if vm, err := vc.FindVMByInstanceUUID(ctx, id); err != nil || vm.PowerState != vcenter.PowerStateOn {
		t.Errorf("VM after power-update: %v, %v", vm.PowerState, err)
	}

	// Disabling the compute service puts COMPUTE_STATUS_DISABLED on its
	// providers (set_host_enabled); enabling it takes the trait away.
	svcs := computeServices(t, ctrl, host)
	if len(svcs) != 1 {
		t.Fatalf("services %v", svcs)
	}
	hvs := hypervisorsOf(t, ctrl, host, 2)
	traitOn := func(want bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for name, hv := range hvs {
			for {
				tr, err := ctrl.PlacementGET(ctx, fmt.Sprintf("/resource_providers/%v/traits", hv["id"]))
				if err != nil {
					t.Fatal(err)
				}
				has := strings.Contains(fmt.Sprint(tr["traits"]), "COMPUTE_STATUS_DISABLED")
				if has == want {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("provider %s traits %v: COMPUTE_STATUS_DISABLED %v, want %v", name, tr["traits"], has, want)
				}
				time.Sleep(250 * time.Millisecond)
			}
		}
	}
	for _, status := range []string{"disabled", "enabled"} {
		if _, err := ctrl.Nova(ctx, "PUT", fmt.Sprintf("/os-services/%v", svcs[0]["id"]), map[string]any{"status": status}); err != nil {
			t.Fatalf("service %s: %v", status, err)
		}
		traitOn(status == "disabled")
	}

	// Diagnostics of a stopped server: 409 (InstanceInvalidState).
	if _, err := ctrl.NovaPOST(ctx, "/servers/"+id+"/action", map[string]any{"os-stop": nil}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	waitServer(t, ctrl, id, 60*time.Second, settled("SHUTOFF"))
	_, err = ctrl.NovaGET(ctx, "/servers/"+id+"/diagnostics")
	if !errors.As(err, &he) || he.StatusCode != 409 {
		t.Errorf("diagnostics of a stopped server: %v, want HTTP 409", err)
	}
}

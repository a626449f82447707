//go:build integration

package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vcagent/vcagent/integration/cp"
)

// TestPortsThatCannotBindFailTheBuild boots servers through the real nova
// API onto an agent that is only the compute host (no DVS agent reports
// for it, so the real neutron-server's vmware_dvs mechanism driver cannot
// bind its ports), on a FLAT network: as with nova-compute, the port
// update binding:host_id=<host> comes back binding_failed, the build
// fails with PortBindingFailed and the server ends in ERROR with nova's
// fault; the port nova created for the server is deleted, and a port the
// user brought is unbound again (device_id, device_owner and
// binding:host_id cleared), not deleted.
func TestPortsThatCannotBindFailTheBuild(t *testing.T) {
	ctrl := controlPlane(t)
	if ctrl.NeutronServerURL == "" {
		t.Fatalf("env.json of %s has no neutron_server_url: a control plane from before neutron-server; re-run up.sh", ctrl.Work)
	}
	_, _, agent, host, image := computeAgentWithImage(t, "vcagent-ports-", "VCAGENT_NEUTRON_ENDPOINT="+ctrl.NeutronServerURL)
	ctx := context.Background()
	physnet := fmt.Sprintf("ports%d", time.Now().UnixNano()%1000000)
	r, err := ctrl.NeutronPOST(ctx, "/networks", map[string]any{"network": map[string]any{
		"name": "vcagent-ports-flat", "provider:network_type": "flat", "provider:physical_network": physnet,
	}})
	if err != nil {
		t.Fatal(err)
	}
	netID := r["network"].(map[string]any)["id"].(string)
	t.Cleanup(func() { _, _ = ctrl.NeutronDELETE(context.Background(), "/networks/"+netID) })
	if _, err := ctrl.NeutronPOST(ctx, "/subnets", map[string]any{"subnet": map[string]any{
		"network_id": netID, "ip_version": 4, "cidr": "192.168.211.0/24", "name": "vcagent-ports-subnet",
	}}); err != nil {
		t.Fatal(err)
	}

	failed := func(t *testing.T, id string) {
		t.Helper()
		s := waitServerError(t, ctrl, id, 3*time.Minute)
		fault, _ := s["fault"].(map[string]any)
		msg := fmt.Sprint(fault["message"])
		t.Logf("fault: %s", msg)
		// Without an alternate host the reschedule ends in conductor's
		// MaxRetriesExceeded; with retries off, in the compute's fault.
		if !strings.Contains(msg, "Binding failed for port") && !strings.Contains(msg, "Exceeded maximum number of retries") {
			t.Errorf("fault %v, want nova's PortBindingFailed or retries-exhausted fault", fault)
		}
		noAllocations(t, ctrl, id)
	}

	t.Run("a port nova created is deleted", func(t *testing.T) {
		created, err := ctrl.NovaPOST(ctx, "/servers", map[string]any{"server": map[string]any{
			"name": "vcagent-ports-net", "imageRef": image, "flavorRef": "42", "host": host,
			"networks": []any{map[string]any{"uuid": netID}},
		}})
		if err != nil {
			t.Fatal(err)
		}
		id := created["server"].(map[string]any)["id"].(string)
		t.Cleanup(func() { _, _ = ctrl.NovaDELETE(context.Background(), "/servers/"+id) })
		failed(t, id)
		agent.waitLog(t, 30*time.Second, func(m map[string]any) bool {
			return strings.Contains(fmt.Sprint(m["error"]), "PortBindingFailed")
		})
		ports, err := ctrl.NeutronGET(ctx, "/ports?device_id="+id)
		if err != nil {
			t.Fatal(err)
		}
		if left := asList(ports, "ports"); len(left) != 0 {
			t.Errorf("ports of the failed server left in neutron: %v", left)
		}
	})

	t.Run("a port the user brought is unbound", func(t *testing.T) {
		r, err := ctrl.NeutronPOST(ctx, "/ports", map[string]any{"port": map[string]any{"network_id": netID, "name": "vcagent-ports-user"}})
		if err != nil {
			t.Fatal(err)
		}
		portID := r["port"].(map[string]any)["id"].(string)
		t.Cleanup(func() { _, _ = ctrl.NeutronDELETE(context.Background(), "/ports/"+portID) })
		created, err := ctrl.NovaPOST(ctx, "/servers", map[string]any{"server": map[string]any{
			"name": "vcagent-ports-port", "imageRef": image, "flavorRef": "42", "host": host,
			"networks": []any{map[string]any{"port": portID}},
		}})
		if err != nil {
			t.Fatal(err)
		}
		id := created["server"].(map[string]any)["id"].(string)
		t.Cleanup(func() { _, _ = ctrl.NovaDELETE(context.Background(), "/servers/"+id) })
		failed(t, id)
		deadline := time.Now().Add(30 * time.Second)
		for {
			p, err := ctrl.NeutronGET(ctx, "/ports/"+portID)
			if cp.StatusCode(err) == 404 {
				t.Fatal("the user's port was deleted")
			}
			if err != nil {
				t.Fatal(err)
			}
			port := p["port"].(map[string]any)
			if port["device_id"] == "" && port["device_owner"] == "" && port["binding:host_id"] == "" {
				if port["binding:vif_type"] != "unbound" {
					t.Errorf("unbound port's vif_type %v", port["binding:vif_type"])
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("port not unbound: device_id %q owner %q host %q", port["device_id"], port["device_owner"], port["binding:host_id"])
			}
			time.Sleep(250 * time.Millisecond)
		}
	})

	t.Run("an interface attach whose port cannot bind fails and leaves no port", func(t *testing.T) {
		id := createServer(t, ctrl, "vcagent-ports-attach", image, host)
		t.Cleanup(func() { _, _ = ctrl.NovaDELETE(context.Background(), "/servers/"+id) })
		waitServer(t, ctrl, id, 2*time.Minute, settled("ACTIVE"))
		_, err := ctrl.NovaPOST(ctx, "/servers/"+id+"/os-interface", map[string]any{"interfaceAttachment": map[string]any{"net_id": netID}})
		// attach_interface's PortBindingFailed is no error nova's API maps: 500.
		if cp.StatusCode(err) != 500 {
			t.Errorf("attach: %v, want HTTP 500", err)
		}
		ports, err := ctrl.NeutronGET(ctx, "/ports?device_id="+id)
		if err != nil {
			t.Fatal(err)
		}
		if left := asList(ports, "ports"); len(left) != 0 {
			t.Errorf("ports of the failed attach left in neutron: %v", left)
		}
		s := waitServer(t, ctrl, id, 30*time.Second, settled("ACTIVE"))
		if addrs, _ := s["addresses"].(map[string]any); len(addrs) != 0 {
			t.Errorf("addresses after the failed attach: %v", addrs)
		}
	})
}

// waitServerError waits for the server's ERROR state with its fault.
func waitServerError(t *testing.T, ctrl *cp.ControlPlane, id string, within time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		v, err := ctrl.NovaGET(context.Background(), "/servers/"+id)
		if err != nil {
			t.Fatal(err)
		}
		s, _ := v["server"].(map[string]any)
		if s["status"] == "ERROR" && s["fault"] != nil {
			return s
		}
		if s["status"] == "ACTIVE" {
			t.Fatalf("server %s became ACTIVE; want ERROR", id)
		}
		if time.Now().After(deadline) {
			t.Fatalf("server %s: status %v task %v after %s, want ERROR", id, s["status"], s["OS-EXT-STS:task_state"], within)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

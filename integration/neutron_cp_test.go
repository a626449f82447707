//go:build integration

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vcagent/vcagent/integration/cp"
	"github.com/vcagent/vcagent/rpc"
)

// dvsRecorder is a fake DVS agent's RPC endpoint (networking-vsphere's protocol,
// version 1.1): it answers bind_port with a fixed binding and records every request.
type dvsRecorder struct {
	mu   sync.Mutex
	reqs []*rpc.Request
	got  chan *rpc.Request
}

const (
	fakeDVSUUID = "50 00 11 22 33 44 55 66-77 88 99 aa bb cc dd ee"
	fakePGKey   = "dvportgroup-4242"
	fakePortKey = "17"
)

func (d *dvsRecorder) endpoint() rpc.Endpoint {
	rec := func(ctx context.Context, r *rpc.Request) (any, error) {
		d.mu.Lock()
		d.reqs = append(d.reqs, r)
		d.mu.Unlock()
		select {
		case d.got <- r:
		default:
		}
		if r.Method == "bind_port" {
			return map[string]any{"key": fakePortKey, "dvs_uuid": fakeDVSUUID, "pg_key": fakePGKey}, nil
		}
		return nil, nil
	}
	m := map[string]rpc.Handler{}
	for _, n := range []string{"bind_port", "post_update_port", "delete_port",
		"create_network", "update_network", "delete_network"} {
		m[n] = rec
	}
	return rpc.Endpoint{Version: "1.1", Methods: m}
}

// wait returns the first recorded request of method whose args satisfy ok.
func (d *dvsRecorder) wait(t testing.TB, method string, within time.Duration, ok func(args map[string]any) bool) *rpc.Request {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		d.mu.Lock()
		for _, r := range d.reqs {
			var a map[string]any
			if r.Method == method && json.Unmarshal(r.Args, &a) == nil && ok(a) {
				d.mu.Unlock()
				return r
			}
		}
		var seen []string
		for _, r := range d.reqs {
			seen = append(seen, r.Method)
		}
		d.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s (got %v)", method, within, seen)
		}
		select {
		case <-d.got:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func idIs(key, id string) func(map[string]any) bool {
	return func(a map[string]any) bool {
		m, _ := a[key].(map[string]any)
		return m != nil && m["id"] == id
	}
}

// reportDVSAgent sends one report_state of a networking-vsphere "DVS agent" on host to
// q-reports-plugin, as a call (as that agent did) and returns neutron's answer.
func reportDVSAgent(ctx context.Context, c rpc.Client, rc rpc.Context, host string, start bool) (string, error) {
	state := map[string]any{
		"binary": "neutron-dvs-agent", "host": host, "topic": "N/A", "agent_type": "DVS agent",
		"configurations": map[string]any{
			"bridge_mappings":  map[string]any{"physnet1": "dvSwitch1"},
			"vsphere_hostname": "127.0.0.1",
		},
		"start_flag": start,
	}
	raw, err := c.Call(ctx, rc, "report_state", map[string]any{
		"agent_state": map[string]any{"agent_state": state},
		"time":        time.Now().UTC().Format("2006-01-02T15:04:05.000000"),
	})
	if err != nil {
		return "", err
	}
	var s string
	_ = json.Unmarshal(raw, &s)
	return s, nil
}

// TestNeutronControlPlane: the control plane's real neutron-server (Debian's Zed, ML2)
// runs the project's own mechanism driver vmware_dvs (contrib/neutron). A fake "DVS
// agent" (this test: report_state on q-reports-plugin, a Go RPC server on
// q-agent-notifier-dvs-update.<host>) is alive in the agents API; a VLAN network's
// create is cast to it; a port bound to its host makes neutron call bind_port there,
// and the port ends with binding:vif_type "dvs" and the agent's answer in vif_details;
// port update and delete and the network's delete reach the agent too; a port bound to
// a host without a DVS agent fails to bind.
func TestNeutronControlPlane(t *testing.T) {
	ctrl := controlPlane(t)
	if ctrl.NeutronServerURL == "" {
		t.Fatalf("env.json of %s has no neutron_server_url: a control plane from before neutron-server; re-run up.sh", ctrl.Work)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	t.Run("api", func(t *testing.T) {
		if ctrl.NeutronExchange != "neutron" {
			t.Errorf("neutron_exchange = %q, want \"neutron\"", ctrl.NeutronExchange)
		}
		if ctrl.NeutronServerURL != ctrl.NeutronURL {
			t.Errorf("neutron_server_url = %s, neutron_url = %s: nova must use the real neutron-server", ctrl.NeutronServerURL, ctrl.NeutronURL)
		}
		if _, err := ctrl.NeutronGET(ctx, "/networks"); err != nil {
			t.Fatal(err)
		}
		drivers, err := ctrl.NeutronMechanismDrivers()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(drivers, []string{"vmware_dvs"}) {
			t.Errorf("mechanism drivers loaded: %v, want [vmware_dvs]", drivers)
		}
		ext, err := ctrl.NeutronGET(ctx, "/extensions")
		if err != nil {
			t.Fatal(err)
		}
		var aliases []string
		for _, e := range asList(ext, "extensions") {
			aliases = append(aliases, fmt.Sprint(e["alias"]))
		}
		for _, want := range []string{"binding", "provider", "agent"} {
			if !slices.Contains(aliases, want) {
				t.Errorf("extension %q missing (have %v)", want, aliases)
			}
		}
	})

	// the fake DVS agent
	host := fmt.Sprintf("dvs-it-%d", time.Now().UnixNano()%1000000)
	tr := goTransport(t, ctrl.TransportURL)
	rec := &dvsRecorder{got: make(chan *rpc.Request, 64)}
	if err := goServer(t, tr, rpc.Target{Exchange: ctrl.NeutronExchange, Topic: "q-agent-notifier-dvs-update", Server: host},
		rec.endpoint()); err != nil {
		t.Fatal(err)
	}
	rc, err := rpc.NewContext(map[string]any{"is_admin": true, "user_id": nil, "project_id": nil,
		"request_id": "req-" + host, "roles": []string{"admin"}})
	if err != nil {
		t.Fatal(err)
	}
	reports := tr.NewClient(rpc.Target{Exchange: ctrl.NeutronExchange, Topic: "q-reports-plugin", Version: "1.2"})
	reports.Timeout = 30 * time.Second
	first, err := reportDVSAgent(ctx, reports, rc, host, true)
	if err != nil {
		t.Fatalf("report_state: %v", err)
	}
	if first != "new" && first != "alive" {
		t.Errorf("first report_state answered %q, want \"new\" or \"alive\"", first)
	}
	// heartbeat while the test runs
	hbCtx, hbStop := context.WithCancel(context.Background())
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		for {
			select {
			case <-hbCtx.Done():
				return
			case <-time.After(10 * time.Second):
				_, _ = reportDVSAgent(hbCtx, reports, rc, host, false)
			}
		}
	}()
	defer func() { hbStop(); <-hbDone }()

	t.Run("agent alive", func(t *testing.T) {
		wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
		defer wcancel()
		a, err := ctrl.NeutronWaitAgent(wctx, host, "DVS agent")
		if err != nil {
			t.Fatal(err)
		}
		conf, _ := a["configurations"].(map[string]any)
		bm, _ := conf["bridge_mappings"].(map[string]any)
		if a["binary"] != "neutron-dvs-agent" || bm["physnet1"] != "dvSwitch1" {
			t.Errorf("agent = %v", a)
		}
	})

	net, err := ctrl.NeutronPOST(ctx, "/networks", map[string]any{"network": map[string]any{"name": "net-" + host}})
	if err != nil {
		t.Fatal(err)
	}
	network, _ := net["network"].(map[string]any)
	netID, _ := network["id"].(string)
	if network["provider:network_type"] != "vlan" || network["provider:physical_network"] != "physnet1" {
		t.Errorf("network = %v, want a vlan on physnet1 (tenant_network_types)", network)
	}
	netDeleted := false
	defer func() {
		if !netDeleted {
			_, _ = ctrl.NeutronDELETE(context.Background(), "/networks/"+netID)
		}
	}()

	t.Run("create_network cast", func(t *testing.T) {
		r := rec.wait(t, "create_network", 15*time.Second, idIs("current", netID))
		var a struct {
			Segment map[string]any `json:"segment"`
		}
		_ = r.DecodeArgs(&a)
		if a.Segment["network_type"] != "vlan" || a.Segment["physical_network"] != "physnet1" ||
			a.Segment["segmentation_id"] != network["provider:segmentation_id"] {
			t.Errorf("create_network segment = %v, network = %v", a.Segment, network)
		}
		if r.IsCall() {
			t.Error("create_network was a call, want a cast")
		}
		if !strings.HasPrefix(r.Queue, "q-agent-notifier-dvs-update_fanout") {
			t.Errorf("create_network came from queue %q, want the fanout", r.Queue)
		}
	})

	t.Run("update_network cast", func(t *testing.T) {
		if _, err := ctrl.NeutronPUT(ctx, "/networks/"+netID, map[string]any{"network": map[string]any{"name": "net2-" + host}}); err != nil {
			t.Fatal(err)
		}
		r := rec.wait(t, "update_network", 15*time.Second, idIs("current", netID))
		var a struct {
			Current, Original, Segment map[string]any
		}
		_ = r.DecodeArgs(&a)
		if a.Current["name"] != "net2-"+host || a.Original["name"] != "net-"+host || a.Segment["network_type"] != "vlan" {
			t.Errorf("update_network: current %v, original %v, segment %v", a.Current["name"], a.Original["name"], a.Segment)
		}
	})

	p, err := ctrl.NeutronPOST(ctx, "/ports", map[string]any{"port": map[string]any{"network_id": netID, "name": "port-" + host}})
	if err != nil {
		t.Fatal(err)
	}
	port, _ := p["port"].(map[string]any)
	portID, _ := port["id"].(string)
	portDeleted := false
	defer func() {
		if !portDeleted {
			_, _ = ctrl.NeutronDELETE(context.Background(), "/ports/"+portID)
		}
	}()
	if port["binding:vif_type"] != "unbound" {
		t.Errorf("new port without host: binding:vif_type %v, want unbound", port["binding:vif_type"])
	}

	t.Run("bind", func(t *testing.T) {
		t0 := time.Now()
		u, err := ctrl.NeutronPUT(ctx, "/ports/"+portID, map[string]any{"port": map[string]any{"binding:host_id": host}})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("bind took %s", time.Since(t0).Round(time.Millisecond))
		bound, _ := u["port"].(map[string]any)
		if bound["binding:vif_type"] != "dvs" {
			t.Fatalf("binding:vif_type = %v, want dvs (port %v)", bound["binding:vif_type"], bound)
		}
		det, _ := bound["binding:vif_details"].(map[string]any)
		want := map[string]any{"dvs_id": fakeDVSUUID, "pg_id": fakePGKey, "dvs_port_key": fakePortKey, "connectivity": "l2"}
		for k, v := range want {
			if det[k] != v {
				t.Errorf("vif_details[%s] = %v, want %v (all: %v)", k, det[k], v, det)
			}
		}
		r := rec.wait(t, "bind_port", time.Second, idIs("current", portID))
		if !r.IsCall() || r.Queue != "q-agent-notifier-dvs-update."+host || r.Version != "1.1" {
			t.Errorf("bind_port: call %v, queue %q, version %q; want a 1.1 call on q-agent-notifier-dvs-update.%s",
				r.IsCall(), r.Queue, r.Version, host)
		}
		var a struct {
			Current         map[string]any   `json:"current"`
			NetworkSegments []map[string]any `json:"network_segments"`
			NetworkCurrent  map[string]any   `json:"network_current"`
		}
		if err := r.DecodeArgs(&a); err != nil {
			t.Fatal(err)
		}
		if a.NetworkCurrent["id"] != netID || len(a.NetworkSegments) != 1 ||
			a.NetworkSegments[0]["segmentation_id"] != network["provider:segmentation_id"] ||
			a.Current["binding:host_id"] != host {
			t.Errorf("bind_port args: network %v, segments %v, port host %v", a.NetworkCurrent["id"], a.NetworkSegments, a.Current["binding:host_id"])
		}
		// the binding's commit is a port update the agent hears of too
		pu := rec.wait(t, "post_update_port", 10*time.Second, idIs("current", portID))
		if pu.Queue != "q-agent-notifier-dvs-update."+host {
			t.Errorf("post_update_port came from %q", pu.Queue)
		}
		g, err := ctrl.NeutronGET(ctx, "/ports/"+portID)
		if err != nil {
			t.Fatal(err)
		}
		if gp, _ := g["port"].(map[string]any); gp["binding:vif_type"] != "dvs" || gp["binding:host_id"] != host {
			t.Errorf("GET port: vif_type %v host %v", gp["binding:vif_type"], gp["binding:host_id"])
		}
	})

	t.Run("no agent: binding_failed", func(t *testing.T) {
		q, err := ctrl.NeutronPOST(ctx, "/ports", map[string]any{"port": map[string]any{
			"network_id": netID, "binding:host_id": host + "-noagent"}})
		if err != nil {
			t.Fatal(err)
		}
		qp, _ := q["port"].(map[string]any)
		defer ctrl.NeutronDELETE(context.Background(), "/ports/"+fmt.Sprint(qp["id"])) //nolint:errcheck
		if qp["binding:vif_type"] != "binding_failed" {
			t.Errorf("port on a host without DVS agent: vif_type %v, want binding_failed", qp["binding:vif_type"])
		}
	})

	t.Run("deletes", func(t *testing.T) {
		if _, err := ctrl.NeutronDELETE(ctx, "/ports/"+portID); err != nil {
			t.Fatal(err)
		}
		portDeleted = true
		rec.wait(t, "delete_port", 10*time.Second, idIs("current", portID))
		if _, err := ctrl.NeutronDELETE(ctx, "/networks/"+netID); err != nil {
			t.Fatal(err)
		}
		netDeleted = true
		rec.wait(t, "delete_network", 10*time.Second, idIs("current", netID))
		if _, err := ctrl.NeutronGET(ctx, "/networks/"+netID); cp.StatusCode(err) != http.StatusNotFound {
			t.Errorf("GET deleted network: %v, want 404", err)
		}
	})
}

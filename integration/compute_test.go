//go:build integration

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vcagent/vcagent/integration/cp"
)

// The real control plane is shared by every test of this run and stopped
// by TestMain.
var (
	cpOnce sync.Once        //nolint:gochecknoglobals // one control plane per test run
	cpInst *cp.ControlPlane //nolint:gochecknoglobals
	cpErr  error            //nolint:gochecknoglobals
)

// controlPlane starts the real Zed control plane once per run.
func controlPlane(t testing.TB) *cp.ControlPlane {
	t.Helper()
	cpOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		start := time.Now()
		cpInst, cpErr = cp.Start(ctx, "")
		if cpErr == nil {
			fmt.Printf("control plane up in %s\n", time.Since(start).Round(time.Second))
		}
	})
	if cpErr != nil {
		t.Fatalf("real control plane: %v", cpErr)
	}
	return cpInst
}

func stopControlPlane() {
	if cpInst != nil {
		_ = cpInst.Stop()
	}
}

// computeAgentEnv is the environment of an agent joining ctrl as host.
func computeAgentEnv(ctrl *cp.ControlPlane, host string) []string {
	return []string{
		"VCAGENT_TRANSPORT_URL=" + ctrl.TransportURL,
		"VCAGENT_HOST=" + host,
		"VCAGENT_AUTH_TOKEN=" + ctrl.Token,
		"VCAGENT_PLACEMENT_ENDPOINT=" + ctrl.PlacementURL,
		"VCAGENT_GLANCE_ENDPOINT=" + ctrl.GlanceURL,
		"VCAGENT_NEUTRON_ENDPOINT=" + ctrl.NeutronURL,
		fmt.Sprintf("VCAGENT_REPORT_INTERVAL=%ds", max(ctrl.ReportInterval, 1)),
	}
}

// computeServices returns nova's service records of binary nova-compute on host.
func computeServices(t testing.TB, ctrl *cp.ControlPlane, host string) []map[string]any {
	t.Helper()
	v, err := ctrl.NovaGET(context.Background(), "/os-services?binary=nova-compute&host="+host)
	if err != nil {
		t.Fatal(err)
	}
	return asList(v, "services")
}

func asList(m map[string]any, key string) []map[string]any {
	items, _ := m[key].([]any)
	out := make([]map[string]any, 0, len(items))
	for _, it := range items {
		if mm, ok := it.(map[string]any); ok {
			out = append(out, mm)
		}
	}
	return out
}

// waitServiceState polls nova's API until the host's nova-compute service
// has the wanted state ("up" or "down").
func waitServiceState(t testing.TB, ctrl *cp.ControlPlane, host, state string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		svcs := computeServices(t, ctrl, host)
		if len(svcs) == 1 && svcs[0]["state"] == state {
			return time.Since(start)
		}
		if len(svcs) > 1 {
			t.Fatalf("%d nova-compute services for %s: %v", len(svcs), host, svcs)
		}
		if time.Since(start) > within {
			t.Fatalf("service nova-compute on %s not %s within %s: %v", host, state, within, svcs)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// clusterLogs returns the agent's "serving cluster" log lines by moref.
func clusterLogs(t testing.TB, a *agentProc) map[string]map[string]any {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]map[string]any{}
	for _, l := range a.logs {
		if l["message"] == "serving cluster" {
			out[l["moref"].(string)] = l
		}
	}
	return out
}

// TestComputeJoinsRealControlPlane: the agent, with its embedded vCenter of
// two clusters, joins the real Zed control plane as nova-compute: the
// service is up, discover_hosts maps it, one hypervisor and one placement
// provider per cluster carry the clusters' resources, the service goes
// down when the agent stops, and a restart brings it back without
// duplicates.
func TestComputeJoinsRealControlPlane(t *testing.T) {
	ctrl := controlPlane(t)
	host := "vcagent-e2e-" + fmt.Sprint(time.Now().Unix()%100000)
	schedulerFanout := listenFanout(t, ctrl.TransportURL, "scheduler")
	started := time.Now()
	agent := startAgent(t, computeAgentEnv(ctrl, host)...)
	upAfter := waitServiceState(t, ctrl, host, "up", 90*time.Second)
	t.Logf("service up %s after the agent consumed (%s after process start)", upAfter.Round(time.Millisecond), time.Since(started).Round(time.Millisecond))

	// The scheduler hears which instances live here (none yet).
	for {
		m := schedulerFanout.next(t)
		args, _ := m["args"].(map[string]any)
		if m["method"] == "sync_instance_info" && args["host_name"] == host {
			if uuids, ok := args["instance_uuids"].([]any); !ok || len(uuids) != 0 || m["version"] != "4.2" {
				t.Errorf("sync_instance_info: %v", m)
			}
			break
		}
	}

	ctx := context.Background()
	out, err := ctrl.NovaManage(ctx, "cell_v2", "discover_hosts", "--verbose")
	if err != nil {
		t.Fatalf("discover_hosts: %v\n%s", err, out)
	}
	hosts, err := ctrl.NovaManage(ctx, "cell_v2", "list_hosts")
	if err != nil || !strings.Contains(hosts, host) {
		t.Fatalf("cell_v2 list_hosts does not map %s: %v\n%s", host, err, hosts)
	}

	clusters := clusterLogs(t, agent)
	if len(clusters) != 2 {
		t.Fatalf("agent serves %d clusters, want 2", len(clusters))
	}
	hypervisors := hypervisorsOf(t, ctrl, host, 2)
	vcUUID := ""
	for _, l := range agent.logs {
		if l["message"] == "connected to vCenter" {
			vcUUID, _ = l["instance_uuid"].(string)
		}
	}
	for moref, cl := range clusters {
		name := moref + "." + vcUUID
		hv := hypervisors[name]
		if hv == nil {
			t.Fatalf("no hypervisor %s among %v", name, keys(hypervisors))
		}
		if hv["hypervisor_type"] != "VMware vCenter Server" || hv["state"] != "up" || hv["status"] != "enabled" {
			t.Errorf("hypervisor %s: %v", name, hv)
		}
		if num(hv["vcpus"]) != num(cl["vcpus"]) || num(hv["memory_mb"]) != num(cl["memory_mb"]) || num(hv["local_gb"]) != num(cl["disk_gb"]) {
			t.Errorf("hypervisor %s has vcpus %v memory_mb %v local_gb %v; the cluster has %v %v %v",
				name, hv["vcpus"], hv["memory_mb"], hv["local_gb"], cl["vcpus"], cl["memory_mb"], cl["disk_gb"])
		}
		checkProvider(t, ctrl, hv, cl)
	}

	// From 2.88 nova-api asks the compute for its uptime when showing a
	// hypervisor; the VMware driver has none, and the API shows null. (One
	// hypervisor at a time: a listing would also ask computes of earlier
	// tests that stopped moments ago, and fail on their silence.)
	for name, hv := range hypervisors {
		shown, err := ctrl.NovaGET(ctx, fmt.Sprintf("/os-hypervisors/%v", hv["id"]))
		if err != nil {
			t.Fatalf("show hypervisor %s at the newest microversion: %v", name, err)
		}
		h, _ := shown["hypervisor"].(map[string]any)
		if up, ok := h["uptime"]; !ok || up != nil {
			t.Errorf("hypervisor %s uptime %v, want null", name, up)
		}
	}

	// The operator endpoint: ready, and the RPC and vCenter figures moved.
	ops := agent.opsURL(t)
	if code, body := httpGet(t, ops+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz: %d %s", code, body)
	}
	_, metrics := httpGet(t, ops+"/metrics")
	for _, want := range []string{
		`vcagent_rpc_requests_total{method="get_host_uptime",outcome="NotImplementedError",topic="compute"}`,
		`vcagent_vcenter_calls_total{method="RetrievePropertiesEx",result="ok"}`,
		`vcagent_amqp_publishes_total{kind="call",result="confirmed"}`,
		`vcagent_amqp_connection_up{purpose="listen"} 1`,
		"vcagent_vcenter_tasks_in_flight 0",
		"vcagent_compute_builds_queued 0",
		"vcagent_compute_builds_running 0",
		"vcagent_vcenter_relogins_total 0",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// forced_down (an operator's fencing) wins over the heartbeats, which
	// must not reset it; clearing it brings the service back.
	svc := computeServices(t, ctrl, host)[0]
	force := func(down bool) {
		t.Helper()
		_, err := ctrl.Do(ctx, "PUT", fmt.Sprintf("%s/os-services/%v", ctrl.NovaURL, svc["id"]), map[string]any{"forced_down": down},
			http.Header{"X-OpenStack-Nova-API-Version": {"2.53"}, ctrl.AuthHeader: {ctrl.Token}, "Content-Type": {"application/json"}})
		if err != nil {
			t.Fatalf("forced_down=%v: %v", down, err)
		}
	}
	force(true)
	waitServiceState(t, ctrl, host, "down", 10*time.Second)
	time.Sleep(time.Duration(2*max(ctrl.ReportInterval, 1)) * time.Second) // heartbeats go on meanwhile
	if s := computeServices(t, ctrl, host)[0]; s["state"] != "down" || s["forced_down"] != true {
		t.Errorf("a heartbeat undid forced_down: %v", s)
	}
	force(false)
	waitServiceState(t, ctrl, host, "up", 30*time.Second)

	// Stop: nova marks the service down after service_down_time.
	if err := agent.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-agent.done
	downAfter := waitServiceState(t, ctrl, host, "down", time.Duration(ctrl.ServiceDownTime+60)*time.Second)
	t.Logf("service down %s after the agent stopped (service_down_time %d s)", downAfter.Round(time.Second), ctrl.ServiceDownTime)

	// Restart: the same records come back; nothing is duplicated.
	startAgent(t, computeAgentEnv(ctrl, host)...)
	waitServiceState(t, ctrl, host, "up", 90*time.Second)
	again := hypervisorsOf(t, ctrl, host, 2)
	for name, hv := range hypervisors {
		if again[name] == nil || fmt.Sprint(again[name]["id"]) != fmt.Sprint(hv["id"]) {
			t.Errorf("hypervisor %s changed across the restart: %v -> %v", name, hv["id"], again[name])
		}
	}
	rps := providersNamed(t, ctrl, keys(hypervisors))
	if len(rps) != 2 {
		t.Errorf("%d placement providers for the two clusters after a restart", len(rps))
	}
}

// hypervisorsOf lists the host's hypervisors by hypervisor_hostname,
// waiting until there are n of them.
func hypervisorsOf(t testing.TB, ctrl *cp.ControlPlane, host string, n int) map[string]map[string]any {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		// 2.87: the last microversion that shows the hypervisors' resources.
		v, err := ctrl.Do(context.Background(), "GET", ctrl.NovaURL+"/os-hypervisors/detail", nil,
			http.Header{"X-OpenStack-Nova-API-Version": {"2.87"}, ctrl.AuthHeader: {ctrl.Token}})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]map[string]any{}
		for _, hv := range asList(v, "hypervisors") {
			svc, _ := hv["service"].(map[string]any)
			if svc["host"] == host {
				out[hv["hypervisor_hostname"].(string)] = hv
			}
		}
		if len(out) == n {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d hypervisors for %s, want %d", len(out), host, n)
		}
		time.Sleep(time.Second)
	}
}

// checkProvider compares the node's placement provider with the cluster.
func checkProvider(t testing.TB, ctrl *cp.ControlPlane, hv, cl map[string]any) {
	t.Helper()
	ctx := context.Background()
	uuid, _ := hv["id"].(string)
	rp, err := ctrl.PlacementGET(ctx, "/resource_providers/"+uuid)
	if err != nil {
		t.Fatalf("placement provider of %s: %v", hv["hypervisor_hostname"], err)
	}
	if rp["name"] != hv["hypervisor_hostname"] {
		t.Errorf("provider %s is named %v", uuid, rp["name"])
	}
	invs, err := ctrl.PlacementGET(ctx, "/resource_providers/"+uuid+"/inventories")
	if err != nil {
		t.Fatal(err)
	}
	inv, _ := invs["inventories"].(map[string]any)
	vcpu, _ := inv["VCPU"].(map[string]any)
	mem, _ := inv["MEMORY_MB"].(map[string]any)
	disk, _ := inv["DISK_GB"].(map[string]any)
	if vcpu == nil || mem == nil || disk == nil {
		t.Fatalf("provider %s inventories %v", uuid, inv)
	}
	if num(vcpu["total"]) != num(cl["vcpus"]) || num(vcpu["allocation_ratio"]) != 16 || num(vcpu["max_unit"]) <= 0 || num(vcpu["max_unit"]) > num(vcpu["total"]) {
		t.Errorf("VCPU inventory %v for cluster %v", vcpu, cl)
	}
	if num(mem["total"]) != num(cl["memory_mb"]) || num(mem["reserved"]) != 512 || num(mem["allocation_ratio"]) != 1.5 {
		t.Errorf("MEMORY_MB inventory %v for cluster %v", mem, cl)
	}
	if num(disk["total"]) <= 0 || num(disk["max_unit"]) > num(disk["total"]) {
		t.Errorf("DISK_GB inventory %v", disk)
	}
	traits, err := ctrl.PlacementGET(ctx, "/resource_providers/"+uuid+"/traits")
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(traits["traits"])
	for _, want := range []string{"COMPUTE_NODE", "COMPUTE_IMAGE_TYPE_VMDK", "COMPUTE_NET_ATTACH_INTERFACE"} {
		if !strings.Contains(got, want) {
			t.Errorf("provider %s traits %s lack %s", uuid, got, want)
		}
	}
}

func providersNamed(t testing.TB, ctrl *cp.ControlPlane, names []string) []any {
	t.Helper()
	var out []any
	for _, n := range names {
		v, err := ctrl.PlacementGET(context.Background(), "/resource_providers?name="+n)
		if err != nil {
			t.Fatal(err)
		}
		rps, _ := v["resource_providers"].([]any)
		out = append(out, rps...)
	}
	return out
}

func num(v any) float64 {
	switch x := v.(type) {
	case float64:
		return x
	case json.Number:
		f, _ := x.Float64()
		return f
	case int:
		return float64(x)
	case int64:
		return float64(x)
	}
	return -1
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestComputeKeepsReportingAcrossVCenterSessionExpiry: the embedded
// vCenter ends idle sessions after 2 s while the agent refreshes its nodes
// every 3 s: the session re-logs in, every refresh succeeds, and nova keeps
// the service up.
func TestComputeKeepsReportingAcrossVCenterSessionExpiry(t *testing.T) {
	ctrl := controlPlane(t)
	host := "vcagent-relogin-" + fmt.Sprint(time.Now().Unix()%100000)
	env := append(computeAgentEnv(ctrl, host), "VCAGENT_SIM_SESSION_TIMEOUT=2s", "VCAGENT_RESOURCE_INTERVAL=3s")
	agent := startAgent(t, env...)
	waitServiceState(t, ctrl, host, "up", 90*time.Second)
	relogin := agent.waitLog(t, 60*time.Second, func(m map[string]any) bool { return m["message"] == "re-logged in to vCenter" })
	reloginAt, _ := time.Parse(time.RFC3339Nano, relogin["time"].(string))
	agent.waitLog(t, 30*time.Second, func(m map[string]any) bool {
		at, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(m["time"]))
		return m["message"] == "final resource view" && at.After(reloginAt)
	})
	agent.mu.Lock()
	for _, l := range agent.logs {
		if l["message"] == "update_available_resource failed" || l["message"] == "updating the compute node failed" {
			t.Errorf("a refresh failed across the session expiry: %v", l)
		}
	}
	agent.mu.Unlock()
	waitServiceState(t, ctrl, host, "up", 10*time.Second)
	if n := scrapeCounters(t, agent.opsURL(t))["vcagent_vcenter_relogins_total"]; n < 1 {
		t.Errorf("vcagent_vcenter_relogins_total = %v after a re-login", n)
	}
}

// listenFanout binds a private queue to <topic>_fanout (declared as oslo
// declares it) and returns the inner messages cast there.
func listenFanout(t testing.TB, url, topic string) *rawReplies {
	t.Helper()
	raw := rawPublisher(t, url)
	if err := raw.ch.ExchangeDeclare(topic+"_fanout", "fanout", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	r := raw.replyQueue(t)
	if err := raw.ch.QueueBind(r.name, topic, topic+"_fanout", false, nil); err != nil {
		t.Fatal(err)
	}
	return r
}

//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/integration/cp"
)

// simulatorEnv makes the test binary serve a vCenter simulator (see
// TestMain): out of the test process, whose race detector would otherwise
// report the simulator's own unsynchronised internals.
const simulatorEnv = "VCAGENT_TEST_SIMULATOR"

// serveSimulator runs when the test binary is re-executed as a simulator:
// it prints the URL and serves until its standard input closes.
func serveSimulator() {
	sim, err := vcenter.StartSimulator(context.Background(), vcenter.SimulatorConfig{Clusters: 2, HostsPerCluster: 3, Datastores: 2, ListenAddr: "127.0.0.1:0"})
	if err != nil {
		panic(err)
	}
	u := sim.URL()
	if os.Getenv(simulatorFaultsEnv) != "" {
		u = serveFaultProxy(u)
	}
	fmt.Println(u.String())
	_, _ = io.Copy(io.Discard, os.Stdin)
	sim.Close()
}

// testVCenter starts a vCenter simulator owned by the test, so the test
// can look at the VMs the agent makes, and returns the agent's settings for
// it and a session of the test's own.
func testVCenter(t testing.TB, env ...string) ([]string, *vcenter.Session) {
	t.Helper()
	ctx := context.Background()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), simulatorEnv+"=1", "GORACE=halt_on_error=0 exitcode=0 log_path="+filepath.Join(t.TempDir(), "race"))
	cmd.Env = append(cmd.Env, env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stdin.Close(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("simulator did not start: %v", err)
	}
	u, err := url.Parse(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	pass, _ := u.User.Password()
	user := u.User.Username()
	bare := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
	s, err := vcenter.New(vcenter.Config{URL: bare.String(), User: user, Password: pass, Insecure: true}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Login(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Logout(context.Background()) })
	return []string{"VCAGENT_VCENTER_URL=" + bare.String(), "VCAGENT_VCENTER_USER=" + user, "VCAGENT_VCENTER_PASSWORD=" + pass, "VCAGENT_VCENTER_INSECURE=true"}, s
}

// noAllocations waits until placement has no allocation of consumer left
// (the compute deletes them just after the server record is gone).
func noAllocations(t *testing.T, ctrl *cp.ControlPlane, consumer string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		allocs, err := ctrl.PlacementGET(context.Background(), "/allocations/"+consumer)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := allocs["allocations"].(map[string]any)
		if len(a) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("placement allocations of %s left: %v", consumer, a)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// uploadFlatImage puts a small preallocated VMDK image (its flat extent)
// into the real glance.
func uploadFlatImage(t *testing.T, ctrl *cp.ControlPlane) string {
	t.Helper()
	ctx := context.Background()
	h := http.Header{ctrl.AuthHeader: {ctrl.Token}}
	img, err := ctrl.Do(ctx, "POST", ctrl.GlanceURL+"/v2/images", map[string]any{
		"name": "vcagent-flat", "disk_format": "vmdk", "container_format": "bare",
		"vmware_disktype": "preallocated", "vmware_adaptertype": "lsiLogic",
	}, h)
	if err != nil {
		t.Fatal(err)
	}
	id := img["id"].(string)
	hb := http.Header{ctrl.AuthHeader: {ctrl.Token}, "Content-Type": {"application/octet-stream"}}
	if _, err := ctrl.Do(ctx, "PUT", ctrl.GlanceURL+"/v2/images/"+id+"/file", bytes.Repeat([]byte{0}, 1<<20), hb); err != nil {
		t.Fatal(err)
	}
	return id
}

// waitServer polls the server until pred holds; an ERROR fails the test
// with nova's fault.
func waitServer(t *testing.T, ctrl *cp.ControlPlane, id string, within time.Duration, pred func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		v, err := ctrl.NovaGET(context.Background(), "/servers/"+id)
		if err != nil {
			t.Fatal(err)
		}
		s, _ := v["server"].(map[string]any)
		if pred(s) {
			return s
		}
		if s["status"] == "ERROR" {
			t.Fatalf("server %s in ERROR: %v", id, s["fault"])
		}
		if time.Now().After(deadline) {
			t.Fatalf("server %s: status %v task %v after %s", id, s["status"], s["OS-EXT-STS:task_state"], within)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// computeHostWithImage starts an agent as a fresh compute host of the real
// control plane, on a vCenter simulator the test owns, maps it, and
// uploads an image to boot from.
func computeHostWithImage(t *testing.T, prefix string, env ...string) (ctrl *cp.ControlPlane, vc *vcenter.Session, host, image string) {
	t.Helper()
	ctrl, vc, _, host, image = computeAgentWithImage(t, prefix, env...)
	return ctrl, vc, host, image
}

// computeAgentWithImage is computeHostWithImage that also returns the
// agent, for a look at its logs and metrics.
func computeAgentWithImage(t *testing.T, prefix string, env ...string) (ctrl *cp.ControlPlane, vc *vcenter.Session, agent *agentProc, host, image string) {
	t.Helper()
	ctrl = controlPlane(t)
	vcEnv, vc := testVCenter(t)
	host = prefix + fmt.Sprint(time.Now().Unix()%100000)
	agent = startAgent(t, slices.Concat(computeAgentEnv(ctrl, host), vcEnv, env)...)
	waitServiceState(t, ctrl, host, "up", 90*time.Second)
	if out, err := ctrl.NovaManage(context.Background(), "cell_v2", "discover_hosts"); err != nil {
		t.Fatalf("discover_hosts: %v\n%s", err, out)
	}
	return ctrl, vc, agent, host, uploadFlatImage(t, ctrl)
}

// createServer asks the real nova API for a server of flavor 42 (m1.nano,
// 64 MB, 1 GB) without networks, from image, on host; it returns its id.
func createServer(t *testing.T, ctrl *cp.ControlPlane, name, image, host string) string {
	t.Helper()
	created, err := ctrl.NovaPOST(context.Background(), "/servers", map[string]any{"server": map[string]any{
		"name": name, "imageRef": image, "flavorRef": "42", "networks": "none", "host": host,
	}})
	if err != nil {
		t.Fatal(err)
	}
	return created["server"].(map[string]any)["id"].(string)
}

func settled(status string) func(map[string]any) bool {
	return func(s map[string]any) bool { return s["status"] == status && s["OS-EXT-STS:task_state"] == nil }
}

// TestServerLifecycleThroughNovaAPI boots a server through the real nova
// API onto the agent and drives it through stop, start, soft and hard
// reboot and delete, checking the server and its VM in vCenter each time.
func TestServerLifecycleThroughNovaAPI(t *testing.T) {
	ctrl, vc, agent, host, image := computeAgentWithImage(t, "vcagent-life-")
	ctx := context.Background()
	schedulerFanout := listenFanout(t, ctrl.TransportURL, "scheduler")
	metricsBefore := scrapeCounters(t, agent.opsURL(t))

	start := time.Now()
	id := createServer(t, ctrl, "vm1", image, host)
	waitServer(t, ctrl, id, 120*time.Second, settled("ACTIVE"))
	t.Logf("boot: ACTIVE after %s", time.Since(start).Round(time.Millisecond))

	vm, err := vc.FindVMByInstanceUUID(ctx, id)
	if err != nil {
		t.Fatalf("no VM for server %s: %v", id, err)
	}
	if vm.Name != "vm1 ("+id+")" || vm.PowerState != vcenter.PowerStateOn || vm.NumCPUs != 1 || vm.MemoryMB != 64 || len(vm.Disks) != 1 ||
		vm.ExtraConfig["nvp.vm-uuid"] != id || vm.ManagedByKey != "org.openstack.compute" {
		t.Errorf("VM %+v", vm)
	}
	if len(vm.Disks) == 1 {
		// The disk file holds the size (the simulator does not read it into
		// the device): the image was copied and extended to the flavor's 1 GB.
		p, err := vcenter.ParseDatastorePath(vm.Disks[0].FileName)
		if err != nil {
			t.Fatal(err)
		}
		clusters, err := vc.Clusters(ctx)
		if err != nil {
			t.Fatal(err)
		}
		kb, err := vc.VirtualDiskCapacityKB(ctx, clusters[0].Datacenter, p)
		if err != nil || kb != 1<<20 {
			t.Errorf("root disk %s: %d KB (%v), want the flavor's 1 GB", p, kb, err)
		}
	}

	power := func(want string) {
		t.Helper()
		vm, err := vc.FindVMByInstanceUUID(ctx, id)
		if err != nil || vm.PowerState != want {
			t.Errorf("VM power %v (%v), want %s", vm.PowerState, err, want)
		}
	}
	action := func(body map[string]any, status string) {
		t.Helper()
		t0 := time.Now()
		if _, err := ctrl.NovaPOST(ctx, "/servers/"+id+"/action", body); err != nil {
			t.Fatal(err)
		}
		// Wait for the task to start, then to settle.
		time.Sleep(100 * time.Millisecond)
		waitServer(t, ctrl, id, 60*time.Second, settled(status))
		t.Logf("%v: %s after %s", keys(body), status, time.Since(t0).Round(time.Millisecond))
	}
	action(map[string]any{"os-stop": nil}, "SHUTOFF")
	power(vcenter.PowerStateOff)
	action(map[string]any{"os-start": nil}, "ACTIVE")
	power(vcenter.PowerStateOn)
	action(map[string]any{"reboot": map[string]any{"type": "SOFT"}}, "ACTIVE")
	power(vcenter.PowerStateOn)
	action(map[string]any{"reboot": map[string]any{"type": "HARD"}}, "ACTIVE")
	power(vcenter.PowerStateOn)

	// /metrics moved with the work: the compute RPCs handled and the
	// vCenter calls made for them.
	metricsAfter := scrapeCounters(t, agent.opsURL(t))
	for _, name := range []string{
		`vcagent_rpc_requests_total{method="build_and_run_instance",outcome="ok",topic="compute"}`,
		`vcagent_rpc_requests_total{method="reboot_instance",outcome="ok",topic="compute"}`,
		`vcagent_vcenter_calls_total{method="PowerOnVM_Task",result="ok"}`,
		`vcagent_vcenter_calls_total{method="ResetVM_Task",result="ok"}`,
		`vcagent_vcenter_calls_total{method="CreateVM_Task",result="ok"}`,
	} {
		if metricsAfter[name] <= metricsBefore[name] {
			t.Errorf("%s: %v before the lifecycle, %v after: did not move", name, metricsBefore[name], metricsAfter[name])
		}
	}

	// The actions nova recorded, each with the compute's event finished.
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
		ev := asList(detail["instanceAction"].(map[string]any), "events")
		if len(ev) != 1 || ev[0]["result"] != "Success" {
			t.Errorf("action %v events %v", a["action"], ev)
		}
	}
	if fmt.Sprint(names) != "[reboot reboot start stop create]" {
		t.Errorf("instance actions %v", names)
	}

	// A VM powered off behind nova's back: the server shows SHUTOFF within
	// seconds, through a "stop" action as nova's power-state sync does.
	t0 := time.Now()
	if err := vc.PowerOff(ctx, vm.Ref); err != nil {
		t.Fatal(err)
	}
	waitServer(t, ctrl, id, 20*time.Second, settled("SHUTOFF"))
	t.Logf("VM powered off in vCenter: server SHUTOFF after %s", time.Since(t0).Round(time.Millisecond))

	t0 = time.Now()
	if _, err := ctrl.NovaDELETE(ctx, "/servers/"+id); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := ctrl.NovaGET(ctx, "/servers/"+id)
		if cp.StatusCode(err) == http.StatusNotFound {
			break
		}
		if time.Since(t0) > 60*time.Second {
			t.Fatalf("server not deleted: %v", err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("delete: gone after %s", time.Since(t0).Round(time.Millisecond))
	if _, err := vc.FindVMByInstanceUUID(ctx, id); err == nil {
		t.Errorf("VM of deleted server %s still in vCenter", id)
	}
	noInstanceFiles(t, vc, id)

	// The schedulers heard of the new instance and of its deletion.
	heard := map[string]bool{}
	for !heard["update_instance_info"] || !heard["delete_instance_info"] {
		m := schedulerFanout.next(t)
		args, _ := m["args"].(map[string]any)
		if args["host_name"] != host {
			continue
		}
		switch m["method"] {
		case "update_instance_info":
			info, _ := args["instance_info"].(map[string]any)
			data, _ := info["nova_object.data"].(map[string]any)
			objs, _ := data["objects"].([]any)
			if info["nova_object.name"] != "InstanceList" || len(objs) != 1 {
				t.Errorf("update_instance_info %v", info)
			}
			heard["update_instance_info"] = true
		case "delete_instance_info":
			if args["instance_uuid"] != id {
				t.Errorf("delete_instance_info %v", args)
			}
			heard["delete_instance_info"] = true
		}
	}
	if _, err := vc.FindVMByInstanceUUID(ctx, id); !errors.Is(err, vcenter.ErrNotFound) {
		t.Errorf("VM still in vCenter after delete: %v", err)
	}
	noAllocations(t, ctrl, id)
}

// TestTenServersInOneRequest boots ten servers with one request and deletes
// them: all ACTIVE, ten VMs, then nothing left in vCenter or placement.
func TestTenServersInOneRequest(t *testing.T) {
	ctrl, vc, agent, host, image := computeAgentWithImage(t, "vcagent-ten-")
	ctx := context.Background()
	t0 := time.Now()
	created, err := ctrl.NovaPOST(ctx, "/servers", map[string]any{"server": map[string]any{
		"name": "many", "imageRef": image, "flavorRef": "42", "networks": "none", "host": host,
		"min_count": 10, "max_count": 10, "return_reservation_id": true,
	}})
	if err != nil {
		t.Fatal(err)
	}
	rid, _ := created["reservation_id"].(string)
	var ids []string
	for len(ids) < 10 {
		list, err := ctrl.NovaGET(ctx, "/servers?reservation_id="+rid)
		if err != nil {
			t.Fatal(err)
		}
		ids = ids[:0]
		for _, s := range asList(list, "servers") {
			ids = append(ids, s["id"].(string))
		}
		if time.Since(t0) > 60*time.Second {
			t.Fatalf("%d servers in reservation %s", len(ids), rid)
		}
	}
	for _, id := range ids {
		waitServer(t, ctrl, id, 180*time.Second, settled("ACTIVE"))
	}
	t.Logf("10 in one request: all ACTIVE after %s", time.Since(t0).Round(time.Millisecond))
	for _, id := range ids {
		if vm, err := vc.FindVMByInstanceUUID(ctx, id); err != nil || vm.PowerState != vcenter.PowerStateOn {
			t.Errorf("server %s: VM %+v %v", id, vm, err)
		}
	}
	// /metrics counts them on their cluster (the scheduler chose the node).
	instances := func() float64 {
		var n float64
		for series, v := range scrapeCounters(t, agent.opsURL(t)) {
			if strings.HasPrefix(series, "vcagent_compute_instances{") {
				n += v
			}
		}
		return n
	}
	if n := instances(); n != 10 {
		t.Errorf("vcagent_compute_instances sums to %v, want 10", n)
	}
	t0 = time.Now()
	for _, id := range ids {
		if _, err := ctrl.NovaDELETE(ctx, "/servers/"+id); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids {
		for {
			_, err := ctrl.NovaGET(ctx, "/servers/"+id)
			if cp.StatusCode(err) == http.StatusNotFound {
				break
			}
			if time.Since(t0) > 120*time.Second {
				t.Fatalf("server %s not deleted", id)
			}
			time.Sleep(250 * time.Millisecond)
		}
		if _, err := vc.FindVMByInstanceUUID(ctx, id); !errors.Is(err, vcenter.ErrNotFound) {
			t.Errorf("VM of %s left in vCenter: %v", id, err)
		}
		noAllocations(t, ctrl, id)
	}
	t.Logf("10 deleted after %s", time.Since(t0).Round(time.Millisecond))
	for deadline := time.Now().Add(10 * time.Second); instances() != 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("vcagent_compute_instances sums to %v after the deletes, want 0", instances())
			break
		}
	}
}

// scrapeCounters reads the agent's /metrics as series -> value.
func scrapeCounters(t testing.TB, ops string) map[string]float64 {
	t.Helper()
	_, body := httpGet(t, ops+"/metrics")
	out := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// noInstanceFiles checks that no datastore keeps a directory of the
// instance (its VM's files, its root disk).
func noInstanceFiles(t *testing.T, vc *vcenter.Session, uuid string) {
	t.Helper()
	ctx := context.Background()
	clusters, err := vc.Clusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, ds := range clusters[0].Datastores {
		if ok, err := vc.FileExists(ctx, clusters[0].Datacenter, vcenter.DatastorePath{Datastore: ds.Name, Path: uuid}); ok || err != nil {
			t.Errorf("[%s] %s left behind (%v)", ds.Name, uuid, err)
		}
	}
}

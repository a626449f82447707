//go:build integration

// BenchmarkNetworkBind measures the network role on the real control plane,
// on demand (not in CI):
//
//	cd /work/main && VCAGENT_CP_KEEP=1 go test -tags integration -run '^$' \
//	    -bench BenchmarkNetworkBind -benchtime 1x -timeout 20m ./integration/
//
// One agent runs every role (compute, volume, network) on a simulator of
// the test's. Per network: the vCenter calls from neutron's network create
// to its port group. Per port, 10 times: bind latency (neutron's PUT of
// binding:host_id, which calls the agent's bind_port and returns with the
// binding), vCenter calls of the bind, then a VM with a NIC on the bound
// DVS port is created by the test (its time is shown apart) and the time
// from the bind to neutron showing the port ACTIVE, with the agent's
// vCenter calls for it. Last, the agent's peak RSS.
package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vcagent/vcagent/drivers/vcenter"
)

func BenchmarkNetworkBind(b *testing.B) {
	ctrl := controlPlane(b)
	vcEnv, vc := testVCenter(b)
	host := fmt.Sprintf("vcagent-nbench-%d", time.Now().Unix()%100000)
	env := slices.Concat(computeAgentEnv(ctrl, host), vcEnv, networkAgentEnv())
	env = append(env, "VCAGENT_ROLES=compute,volume,network", "VCAGENT_VOLUME_DATABASE_URL="+ctrl.CinderDB)
	// the agent without -race (TestMain's build has it, which would
	// inflate its time and memory several times)
	plain := filepath.Join(b.TempDir(), "vcagent")
	if out, err := exec.Command("go", "build", "-o", plain, "..").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	raceAgent := agentBinary
	agentBinary = plain
	agent := startAgent(b, env...)
	agentBinary = raceAgent
	ctx := context.Background()
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := ctrl.NeutronWaitAgent(wctx, host, "DVS agent"); err != nil {
		b.Fatal(err)
	}
	ops := agent.opsURL(b)
	calls := func() float64 {
		total := 0.0
		for k, v := range scrapeCounters(b, ops) {
			if strings.HasPrefix(k, "vcagent_vcenter_calls_total{") && !strings.Contains(k, `method="WaitForUpdatesEx"`) {
				total += v
			}
		}
		return total
	}

	c0 := calls()
	t0 := time.Now()
	netID, _ := createVLANNetwork(b, ctrl, "vcagent-bench-net")
	pg := waitPortgroup(b, vc, netID, 30*time.Second, true)
	netTime := time.Since(t0)
	time.Sleep(time.Second) // let the device pass that follows settle
	netCalls := calls() - c0

	clusters, err := vc.Clusters(ctx)
	if err != nil {
		b.Fatal(err)
	}
	cl := clusters[0]
	ds, _ := cl.BestDatastore(nil)
	folder, err := vc.EnsureFolderPath(ctx, cl.Datacenter, "vcagent-bench")
	if err != nil {
		b.Fatal(err)
	}
	var bind, toActive, vmTime []time.Duration
	var bindCalls, activeCalls []float64
	const ports = 10
	for i := range ports {
		r, err := ctrl.NeutronPOST(ctx, "/ports", map[string]any{"port": map[string]any{"network_id": netID, "name": fmt.Sprintf("bench-%d", i)}})
		if err != nil {
			b.Fatal(err)
		}
		port := r["port"].(map[string]any)
		id := port["id"].(string)
		device := newUUIDForBench()
		c0 := calls()
		start := time.Now()
		r, err = ctrl.NeutronPUT(ctx, "/ports/"+id, map[string]any{"port": map[string]any{
			"binding:host_id": host, "device_id": device, "device_owner": "compute:nova",
		}})
		if err != nil {
			b.Fatal(err)
		}
		bound := time.Now()
		bind = append(bind, bound.Sub(start))
		bindCalls = append(bindCalls, calls()-c0)
		p := r["port"].(map[string]any)
		details, _ := p["binding:vif_details"].(map[string]any)
		if p["binding:vif_type"] != "dvs" {
			b.Fatalf("port %s bound as %v", id, p["binding:vif_type"])
		}
		c1 := calls()
		vmStart := time.Now()
		_, err = vc.CreateVM(ctx, vcenter.VMSpec{
			Name: "bench-" + device, InstanceUUID: device, NumCPUs: 1, MemoryMB: 64, GuestID: "otherGuest64",
			Folder: folder, ResourcePool: cl.ResourcePool, Datastore: ds.Ref,
			NICs: []vcenter.NIC{{MAC: p["mac_address"].(string), IfaceID: id, Network: vcenter.NetworkRef{
				SwitchUUID: fmt.Sprint(details["dvs_id"]), PortgroupKey: pg.Key, PortKey: fmt.Sprint(details["dvs_port_key"]),
			}}},
		})
		if err != nil {
			b.Fatal(err)
		}
		vmTime = append(vmTime, time.Since(vmStart))
		waitPort(b, ctrl, id, 30*time.Second, "ACTIVE", func(p map[string]any) bool { return p["status"] == "ACTIVE" })
		toActive = append(toActive, time.Since(bound))
		activeCalls = append(activeCalls, calls()-c1)
	}
	rss := peakRSS(b, agent.cmd.Process.Pid)

	med := func(x []time.Duration) time.Duration {
		s := slices.Clone(x)
		slices.Sort(s)
		return s[len(s)/2]
	}
	medf := func(x []float64) float64 {
		s := slices.Clone(x)
		slices.Sort(s)
		return s[len(s)/2]
	}
	fmt.Printf("\nnetwork role, one agent with every role, %d ports (medians; min-max)\n", ports)
	fmt.Printf("| measure | value |\n|---|---|\n")
	fmt.Printf("| network create → port group | %s, %.0f vCenter calls |\n", netTime.Round(time.Millisecond), netCalls)
	fmt.Printf("| bind latency (PUT binding:host_id) | %s (%s-%s), %.0f vCenter calls |\n", med(bind).Round(time.Millisecond), slices.Min(bind).Round(time.Millisecond), slices.Max(bind).Round(time.Millisecond), medf(bindCalls))
	fmt.Printf("| VM with the NIC created by the test | %s |\n", med(vmTime).Round(time.Millisecond))
	fmt.Printf("| bind → ACTIVE (incl. the VM creation) | %s (%s-%s), %.0f agent vCenter calls |\n", med(toActive).Round(time.Millisecond), slices.Min(toActive).Round(time.Millisecond), slices.Max(toActive).Round(time.Millisecond), medf(activeCalls))
	fmt.Printf("| agent peak RSS (compute, volume, network) | %.1f MiB |\n", float64(rss)/1024)
}

// peakRSS is a process's VmHWM in KiB.
func peakRSS(tb testing.TB, pid int) int64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			n, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
			return n
		}
	}
	return 0
}

func newUUIDForBench() string {
	return fmt.Sprintf("%08x-0000-4000-8000-%012x", time.Now().UnixNano()&0xffffffff, time.Now().UnixNano()&0xffffffffffff)
}

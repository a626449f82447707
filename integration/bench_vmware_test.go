//go:build integration

// BenchmarkVMwareSideBySide runs one server scenario against vcagent and
// against the REAL Python nova-compute with the VMware vCenter driver
// (Debian's python3-nova, vmwareapi.VMwareVCDriver), on the same real Zed
// control plane and the same vCenter simulator, in one run, and prints both
// columns and their ratio. On demand only (CI runs no benchmarks):
//
//	cd /work/main && VCAGENT_CP_KEEP=1 nice go test -tags integration -run '^$' \
//	    -bench BenchmarkVMwareSideBySide -benchtime 1x -timeout 60m ./integration/
//
// The lifecycle (boot, stop, start, soft and hard reboot, delete) runs
// VCAGENT_BENCH_REPEAT times (default 3) and the table shows medians; then
// 10 boots in a row and 10 in one request (min = max = 10), each deleted;
// then every server action, VCAGENT_BENCH_REPEAT times on a new server
// per side (rows marked "·", medians): boot, stop, start, soft and hard
// reboot, suspend, resume, rescue, unrescue, rebuild, snapshot (until its
// image is active), shelve (until offloaded), unshelve, resize + confirm
// (same host), resize growing the disk + revert, VNC console URL,
// diagnostics, delete. Every figure is from the API request to the settled
// state, polled every 100 ms; the two computes take turns going first.
//
// The simulator is integration/pyvmware (govmomi's, with the fixes the Python
// driver needs; see its README) with two clusters: DC0_C0 for the Python
// compute ([vmware] cluster_name), DC0_C1 for the agent (VCAGENT_CLUSTERS),
// one datastore shared by both. The Python compute runs through
// integration/controlplane/python-compute.sh. The agent is built without the
// race detector for this benchmark (TestMain's build has it, which would
// inflate its time and memory several times).
package integration

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vcagent/vcagent/integration/cp"
)

// vmwSide is one compute of the side-by-side benchmark.
type vmwSide struct {
	name   string // "agent" or "python": also the simulator's client label
	host   string
	pid    int
	cpu0   time.Duration
	rssKiB map[string]int64
}

func BenchmarkVMwareSideBySide(b *testing.B) {
	for _, mod := range []string{"nova.virt.vmwareapi.driver", "oslo_vmware", "suds"} {
		if out, err := exec.Command(pythonBinDebian, "-c", "import "+mod).CombinedOutput(); err != nil {
			b.Fatalf("the Python VMware driver needs %s (apt-get install python3-nova python3-oslo.vmware python3-suds): %v\n%s", mod, err, out)
		}
	}
	ctrl := controlPlane(b)
	ctx := context.Background()
	tmp := b.TempDir()
	suffix := fmt.Sprint(time.Now().Unix() % 100000)

	// The simulator, and the agent built without -race.
	build := exec.Command("go", "build", "-o", tmp, "./pyvmware", "..")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		b.Fatalf("building the simulator launcher and the agent: %v", err)
	}
	vc := startVMwareSimulator(b, filepath.Join(tmp, "pyvmware"), tmp)

	agentSide := &vmwSide{name: "agent", host: "agentvmw-" + suffix, rssKiB: map[string]int64{}}
	pySide := &vmwSide{name: "python", host: "pyvmw-" + suffix, rssKiB: map[string]int64{}}
	sides := []*vmwSide{agentSide, pySide}
	bySide := map[string]*vmwSide{"agent": agentSide, "python": pySide}

	// Registered first, so run last: remove both computes' service records
	// (nova-api deletes their compute nodes and placement providers too).
	b.Cleanup(func() {
		for _, s := range sides {
			vmwDeleteService(ctrl, s.host)
		}
	})
	raceAgent := agentBinary
	agentBinary = filepath.Join(tmp, "vcagent")
	agent := startAgent(b, append(computeAgentEnv(ctrl, agentSide.host),
		"VCAGENT_VCENTER_URL="+vc.url, "VCAGENT_VCENTER_USER="+vc.user, "VCAGENT_VCENTER_PASSWORD="+vc.password,
		"VCAGENT_VCENTER_INSECURE=true", "VCAGENT_CLUSTERS=DC0_C1")...)
	agentBinary = raceAgent
	agentSide.pid = agent.cmd.Process.Pid
	waitServiceState(b, ctrl, agentSide.host, "up", 90*time.Second)
	if out, err := ctrl.NovaManage(ctx, "cell_v2", "discover_hosts"); err != nil {
		b.Fatalf("discover_hosts: %v\n%s", err, out)
	}
	// [vnc] enabled, nova's default and the agent's (the control plane's
	// nova-compute.conf turns it off): the console URL is measured, and
	// the driver's spawn then looks for a free VNC port as in production.
	pySide.pid = startPythonCompute(b, ctrl, pySide.host, vc, "VC_VNC_ENABLED=True")
	for _, s := range sides {
		_, s.rssKiB["idle"], _ = procStats(s.pid)
		s.cpu0, _, _ = procStats(s.pid)
	}
	image := vmwUploadImage(b, ctrl)

	// Each measurement of an operation is one sample; the table shows the
	// median of an operation's samples (the lifecycle runs `repeat` times).
	repeat := 3
	if v, err := strconv.Atoi(os.Getenv("VCAGENT_BENCH_REPEAT")); err == nil && v > 0 {
		repeat = v
	}
	spread := map[string]map[string]string{} // op -> side -> per-server times
	ss := newSideSamples(vc, "agent", "python")
	measure := func(op string, run func(s *vmwSide)) {
		b.Helper()
		row := ss.measure(b, op, func(name string) { run(bySide[name]) })
		fmt.Printf("  %-34s agent %7.2f s %5d calls | python %7.2f s %5d calls\n", op,
			row.secs["agent"], row.calls["agent"], row.secs["python"], row.calls["python"])
	}
	boot := func(s *vmwSide, name string, n int) []string {
		ids, _ := vmwBoot(b, ctrl, s.host, image, name, n)
		return ids
	}

	// The first boot of an image copies it to the datastore's image cache.
	ids := map[string]string{}
	measure("boot, first (image upload)", func(s *vmwSide) { ids[s.name] = boot(s, "first", 1)[0] })
	measure("delete (first server)", func(s *vmwSide) { vmwDelete(b, ctrl, ids[s.name]) })
	action := func(body map[string]any, status string) func(s *vmwSide) {
		return func(s *vmwSide) { vmwAction(b, ctrl, ids[s.name], body, status) }
	}
	for range repeat {
		measure("boot", func(s *vmwSide) { ids[s.name] = boot(s, "life", 1)[0] })
		measure("stop", action(map[string]any{"os-stop": nil}, "SHUTOFF"))
		measure("start", action(map[string]any{"os-start": nil}, "ACTIVE"))
		measure("reboot soft", action(map[string]any{"reboot": map[string]any{"type": "SOFT"}}, "ACTIVE"))
		measure("reboot hard", action(map[string]any{"reboot": map[string]any{"type": "HARD"}}, "ACTIVE"))
		measure("delete", func(s *vmwSide) { vmwDelete(b, ctrl, ids[s.name]) })
	}
	for _, s := range sides {
		_, s.rssKiB["after lifecycle"], _ = procStats(s.pid)
	}

	many := map[string][]string{}
	spread["10 boots in a row"] = map[string]string{}
	measure("10 boots in a row (all ACTIVE)", func(s *vmwSide) {
		many[s.name] = nil
		var took []time.Duration
		for i := range 10 {
			ids, d := vmwBoot(b, ctrl, s.host, image, fmt.Sprintf("seq%d", i), 1)
			many[s.name] = append(many[s.name], ids...)
			took = append(took, d...)
		}
		slices.Sort(took)
		spread["10 boots in a row"][s.name] = fmt.Sprintf("one boot: min %.2f s, median %.2f s, max %.2f s",
			took[0].Seconds(), took[len(took)/2].Seconds(), took[len(took)-1].Seconds())
	})
	measure("delete the 10 booted in a row", func(s *vmwSide) { vmwDelete(b, ctrl, many[s.name]...) })
	for _, s := range sides {
		_, s.rssKiB["after 10 in a row"], _ = procStats(s.pid)
	}
	spread["10 in one request"] = map[string]string{}
	measure("10 in one request (all ACTIVE)", func(s *vmwSide) {
		var took []time.Duration
		many[s.name], took = vmwBoot(b, ctrl, s.host, image, "multi", 10)
		spread["10 in one request"][s.name] = fmt.Sprintf("ACTIVE after: first %.2f s, 5th %.2f s, last %.2f s",
			took[0].Seconds(), took[4].Seconds(), took[len(took)-1].Seconds())
	})
	measure("delete the 10 of one request", func(s *vmwSide) { vmwDelete(b, ctrl, many[s.name]...) })
	for _, s := range sides {
		_, s.rssKiB["after 10 in one request"], _ = procStats(s.pid)
	}

	// Every server action of the issue, on one server per side, each side's
	// host alone in an availability zone of its own so that the resizes
	// (allow_resize_to_same_host, set in the control plane's nova.conf)
	// and the unshelve stay on it, as TestAgentMatchesPythonVMwareCompute
	// does. The sequence runs `repeat` times; the rows are medians.
	actionsFrom := len(ss.ops)
	azs := vmwZones(b, ctrl, suffix, sides)
	flavorSame, flavorBigger := vmwFlavors(b, ctrl, suffix)
	var snapshots []string
	b.Cleanup(func() {
		for _, id := range snapshots {
			_, _ = ctrl.Do(context.Background(), "DELETE", ctrl.GlanceURL+"/v2/images/"+id, nil, nil)
		}
	})
	for i := range repeat {
		measure("· boot", func(s *vmwSide) {
			ids[s.name] = vmwBootIn(b, ctrl, s.host, azs[s.name], image, fmt.Sprintf("act%d", i))
		})
		measure("· stop", action(map[string]any{"os-stop": nil}, "SHUTOFF"))
		measure("· start", action(map[string]any{"os-start": nil}, "ACTIVE"))
		measure("· reboot soft", action(map[string]any{"reboot": map[string]any{"type": "SOFT"}}, "ACTIVE"))
		measure("· reboot hard", action(map[string]any{"reboot": map[string]any{"type": "HARD"}}, "ACTIVE"))
		measure("· suspend", action(map[string]any{"suspend": nil}, "SUSPENDED"))
		measure("· resume", action(map[string]any{"resume": nil}, "ACTIVE"))
		measure("· rescue", action(map[string]any{"rescue": map[string]any{}}, "RESCUE"))
		measure("· unrescue", action(map[string]any{"unrescue": nil}, "ACTIVE"))
		measure("· rebuild (same image)", action(map[string]any{"rebuild": map[string]any{"imageRef": image}}, "ACTIVE"))
		measure("· snapshot (until image active)", func(s *vmwSide) {
			snapshots = append(snapshots, vmwSnapshot(b, ctrl, ids[s.name], fmt.Sprintf("bench-snap-%s-%s-%d", suffix, s.name, i)))
		})
		measure("· shelve (offloaded)", action(map[string]any{"shelve": nil}, "SHELVED_OFFLOADED"))
		measure("· unshelve", action(map[string]any{"unshelve": nil}, "ACTIVE"))
		measure("· resize (same host)", action(map[string]any{"resize": map[string]any{"flavorRef": flavorSame}}, "VERIFY_RESIZE"))
		measure("· resize confirm", action(map[string]any{"confirmResize": nil}, "ACTIVE"))
		measure("· resize (disk grows)", action(map[string]any{"resize": map[string]any{"flavorRef": flavorBigger}}, "VERIFY_RESIZE"))
		measure("· resize revert", action(map[string]any{"revertResize": nil}, "ACTIVE"))
		measure("· VNC console URL", func(s *vmwSide) {
			out, err := ctrl.NovaPOST(ctx, "/servers/"+ids[s.name]+"/remote-consoles",
				map[string]any{"remote_console": map[string]any{"protocol": "vnc", "type": "novnc"}})
			if err != nil {
				b.Fatalf("%s: VNC console: %v", s.name, err)
			}
			if c, _ := out["remote_console"].(map[string]any); c["url"] == nil {
				b.Fatalf("%s: VNC console without URL: %v", s.name, out)
			}
		})
		measure("· diagnostics", func(s *vmwSide) {
			out, err := ctrl.NovaGET(ctx, "/servers/"+ids[s.name]+"/diagnostics")
			if err != nil {
				b.Fatalf("%s: diagnostics: %v", s.name, err)
			}
			if out["state"] == nil {
				b.Fatalf("%s: diagnostics without state: %v", s.name, out)
			}
		})
		measure("· delete", func(s *vmwSide) { vmwDelete(b, ctrl, ids[s.name]) })
	}
	for _, s := range sides {
		_, s.rssKiB["after every action"], s.rssKiB["peak"] = procStats(s.pid)
	}

	// The table: medians of the samples.
	rows := ss.medians(func(op string, n int) string {
		if n > 1 && !strings.HasPrefix(op, "· ") {
			return fmt.Sprintf("%s (median of %d)", op, n)
		}
		return op
	})
	var out strings.Builder
	fmt.Fprintf(&out, "\nvcagent vs Python nova-compute (VMwareVCDriver), same control plane and vCenter simulator\n")
	fmt.Fprintf(&out, "%-38s %10s %10s %8s   %12s %12s\n", "operation (until settled)", "agent s", "python s", "py/agent", "agent calls", "python calls")
	for i, r := range rows {
		if i == actionsFrom {
			fmt.Fprintf(&out, "every server action, one server per side in its own zone (· median of %d)\n", repeat)
		}
		fmt.Fprintf(&out, "%-38s %10.2f %10.2f %7.1fx   %12d %12d\n", r.op, r.secs["agent"], r.secs["python"],
			r.secs["python"]/r.secs["agent"], r.calls["agent"], r.calls["python"])
	}
	fmt.Fprintf(&out, "\n%-34s %10s %10s %8s\n", "RSS of the compute process (MiB)", "agent", "python", "py/agent")
	for _, k := range []string{"idle", "after lifecycle", "after 10 in a row", "after 10 in one request", "after every action", "peak"} {
		a, p := float64(agentSide.rssKiB[k])/1024, float64(pySide.rssKiB[k])/1024
		fmt.Fprintf(&out, "%-34s %10.1f %10.1f %7.1fx\n", k, a, p, p/a)
	}
	var cpus [2]time.Duration
	for i, s := range sides {
		c, _, _ := procStats(s.pid)
		cpus[i] = c - s.cpu0
	}
	fmt.Fprintf(&out, "%-34s %10.2f %10.2f %7.1fx\n\n", "CPU of the scenario (s)", cpus[0].Seconds(), cpus[1].Seconds(),
		cpus[1].Seconds()/cpus[0].Seconds())
	for _, op := range []string{"10 boots in a row", "10 in one request"} {
		fmt.Fprintf(&out, "%s\n  agent:  %s\n  python: %s\n", op, spread[op]["agent"], spread[op]["python"])
	}
	fmt.Fprintf(&out, "\nvCenter requests by method (per operation, the last sample; SOAP method or HTTP method and path)\n")
	for _, r := range rows {
		fmt.Fprintf(&out, "%s\n  agent:  %s\n  python: %s\n", r.op, r.top["agent"], r.top["python"])
	}
	fmt.Print(out.String())

	for _, r := range rows {
		key := map[string]string{"boot": "boot", "10 in one request (all ACTIVE)": "boot10"}[strings.Split(r.op, " (median")[0]]
		if key != "" {
			b.ReportMetric(r.secs["agent"], "agent_"+key+"_s")
			b.ReportMetric(r.secs["python"], "python_"+key+"_s")
		}
	}
	b.ReportMetric(float64(agentSide.rssKiB["peak"])/1024, "agent_rss_MiB")
	b.ReportMetric(float64(pySide.rssKiB["peak"])/1024, "python_rss_MiB")
}

// vmwBoot boots n servers on host with one request (min = max = n), waits
// until all are ACTIVE and returns their ids and how long each took from
// the request, shortest first. Servers left behind by a failure are
// deleted at the end of the benchmark.
func vmwBoot(b *testing.B, ctrl *cp.ControlPlane, host, image, name string, n int) ([]string, []time.Duration) {
	b.Helper()
	ctx := context.Background()
	server := map[string]any{"name": name, "imageRef": image, "flavorRef": "42", "networks": "none", "host": host}
	if n > 1 {
		server["min_count"], server["max_count"], server["return_reservation_id"] = n, n, true
	}
	t0 := time.Now()
	created, err := ctrl.NovaPOST(ctx, "/servers", map[string]any{"server": server})
	if err != nil {
		b.Fatal(err)
	}
	var ids []string
	b.Cleanup(func() {
		for _, id := range ids {
			_, _ = ctrl.NovaDELETE(context.Background(), "/servers/"+id)
		}
	})
	if n == 1 {
		ids = []string{created["server"].(map[string]any)["id"].(string)}
		vmwWait(b, ctrl, ids[0], 300*time.Second, "ACTIVE")
		return ids, []time.Duration{time.Since(t0)}
	}
	// All servers of the reservation in one listing per poll.
	rid, _ := created["reservation_id"].(string)
	active := map[string]time.Duration{}
	deadline := t0.Add(300 * time.Second)
	for len(active) < n {
		list, err := ctrl.NovaGET(ctx, "/servers/detail?reservation_id="+rid)
		if err != nil {
			b.Fatal(err)
		}
		for _, s := range asList(list, "servers") {
			id := s["id"].(string)
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
			if _, ok := active[id]; !ok && s["status"] == "ACTIVE" && s["OS-EXT-STS:task_state"] == nil {
				active[id] = time.Since(t0)
			}
			if s["status"] == "ERROR" {
				b.Fatalf("server %s in ERROR on %v: %v", id, s["OS-EXT-SRV-ATTR:host"], s["fault"])
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d servers of reservation %s ACTIVE after 300 s", len(active), n, rid)
		}
		time.Sleep(100 * time.Millisecond)
	}
	took := slices.Sorted(maps.Values(active))
	return ids, took
}

// vmwWait polls the server every 100 ms until it has the status and no
// task; ERROR fails the benchmark with nova's fault.
func vmwWait(b *testing.B, ctrl *cp.ControlPlane, id string, within time.Duration, status string) {
	b.Helper()
	deadline := time.Now().Add(within)
	for {
		v, err := ctrl.NovaGET(context.Background(), "/servers/"+id)
		if err != nil {
			b.Fatal(err)
		}
		s, _ := v["server"].(map[string]any)
		if s["status"] == status && s["OS-EXT-STS:task_state"] == nil {
			return
		}
		if s["status"] == "ERROR" {
			b.Fatalf("server %s in ERROR on %v: %v", id, s["OS-EXT-SRV-ATTR:host"], s["fault"])
		}
		if time.Now().After(deadline) {
			b.Fatalf("server %s: status %v task %v after %s", id, s["status"], s["OS-EXT-STS:task_state"], within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// vmwAction posts a server action and waits until the server settles in
// status (after the task started: nova sets it before it answers).
func vmwAction(b *testing.B, ctrl *cp.ControlPlane, id string, body map[string]any, status string) {
	b.Helper()
	if _, err := ctrl.NovaPOST(context.Background(), "/servers/"+id+"/action", body); err != nil {
		b.Fatal(err)
	}
	vmwWait(b, ctrl, id, 120*time.Second, status)
}

// vmwDelete deletes the servers and waits until nova no longer knows them.
func vmwDelete(b *testing.B, ctrl *cp.ControlPlane, ids ...string) {
	b.Helper()
	ctx := context.Background()
	for _, id := range ids {
		if _, err := ctrl.NovaDELETE(ctx, "/servers/"+id); err != nil {
			b.Fatal(err)
		}
	}
	deadline := time.Now().Add(120 * time.Second)
	for _, id := range ids {
		for {
			v, err := ctrl.NovaGET(ctx, "/servers/"+id)
			if cp.StatusCode(err) == http.StatusNotFound {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			if s, _ := v["server"].(map[string]any); s["status"] == "ERROR" {
				b.Fatalf("server %s in ERROR while deleting: %v", id, s["fault"])
			}
			if time.Now().After(deadline) {
				b.Fatalf("server %s not deleted within 120 s", id)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// vmwZones puts each side's host alone in an availability zone of its own
// (an aggregate, removed at the end) and returns the zones by side.
func vmwZones(b *testing.B, ctrl *cp.ControlPlane, suffix string, sides []*vmwSide) map[string]string {
	b.Helper()
	ctx := context.Background()
	azs := map[string]string{}
	for _, s := range sides {
		az := "bench-" + s.name + "-" + suffix
		agg, err := ctrl.NovaPOST(ctx, "/os-aggregates", map[string]any{"aggregate": map[string]any{"name": az, "availability_zone": az}})
		if err != nil {
			b.Fatal(err)
		}
		aggID := agg["aggregate"].(map[string]any)["id"]
		host := s.host
		b.Cleanup(func() {
			_, _ = ctrl.NovaPOST(context.Background(), fmt.Sprintf("/os-aggregates/%v/action", aggID), map[string]any{"remove_host": map[string]any{"host": host}})
			_, _ = ctrl.NovaDELETE(context.Background(), fmt.Sprintf("/os-aggregates/%v", aggID))
		})
		if _, err := ctrl.NovaPOST(ctx, fmt.Sprintf("/os-aggregates/%v/action", aggID), map[string]any{"add_host": map[string]any{"host": host}}); err != nil {
			b.Fatal(err)
		}
		azs[s.name] = az
	}
	return azs
}

// vmwFlavors makes the resize flavors: one bigger in memory with the root
// disk of flavor 42, one bigger in vCPUs, memory and root disk.
func vmwFlavors(b *testing.B, ctrl *cp.ControlPlane, suffix string) (same, bigger string) {
	b.Helper()
	same, bigger = "bench-a-"+suffix, "bench-b-"+suffix
	for id, f := range map[string]map[string]any{
		same:   {"ram": 128, "vcpus": 1, "disk": 1},
		bigger: {"ram": 192, "vcpus": 2, "disk": 2},
	} {
		f["name"], f["id"] = id, id
		if _, err := ctrl.NovaPOST(context.Background(), "/flavors", map[string]any{"flavor": f}); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _, _ = ctrl.NovaDELETE(context.Background(), "/flavors/"+id) })
	}
	return same, bigger
}

// vmwBootIn boots one server on host in zone az and waits until it is
// ACTIVE.
func vmwBootIn(b *testing.B, ctrl *cp.ControlPlane, host, az, image, name string) string {
	b.Helper()
	created, err := ctrl.NovaPOST(context.Background(), "/servers", map[string]any{"server": map[string]any{
		"name": name, "imageRef": image, "flavorRef": "42", "networks": "none", "availability_zone": az, "host": host,
	}})
	if err != nil {
		b.Fatal(err)
	}
	id := created["server"].(map[string]any)["id"].(string)
	b.Cleanup(func() { _, _ = ctrl.NovaDELETE(context.Background(), "/servers/"+id) })
	vmwWait(b, ctrl, id, 300*time.Second, "ACTIVE")
	return id
}

// vmwSnapshot snapshots the server (createImage) and waits until it is
// ACTIVE without a task again and its image is active in glance; it
// returns the image.
func vmwSnapshot(b *testing.B, ctrl *cp.ControlPlane, id, name string) string {
	b.Helper()
	ctx := context.Background()
	out, err := ctrl.NovaPOST(ctx, "/servers/"+id+"/action", map[string]any{"createImage": map[string]any{"name": name}})
	if err != nil {
		b.Fatal(err)
	}
	img, _ := out["image_id"].(string)
	if img == "" {
		b.Fatalf("createImage answered %v", out)
	}
	vmwWait(b, ctrl, id, 300*time.Second, "ACTIVE")
	for deadline := time.Now().Add(120 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		v, err := ctrl.Do(ctx, "GET", ctrl.GlanceURL+"/v2/images/"+img, nil, nil)
		if err != nil {
			b.Fatalf("snapshot image %s: %v", img, err)
		}
		if v["status"] == "active" {
			return img
		}
		if st := v["status"]; (st != "queued" && st != "saving") || time.Now().After(deadline) {
			b.Fatalf("snapshot image %s is %v", img, st)
		}
	}
}

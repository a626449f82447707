//go:build integration

// BenchmarkCinderSideBySide runs the same volume operations against
// vcagent's volume role and against the REAL Python cinder-volume with the
// VMDK driver (Debian's python3-cinder,
// cinder.volume.drivers.vmware.vmdk.VMwareVcVmdkDriver), two backends of the
// same real cinder-api and cinder-scheduler on the same vCenter simulator,
// in one run, and prints both columns and their ratio. On demand only (CI
// runs no benchmarks):
//
//	cd /work/main && VCAGENT_CP_KEEP=1 nice go test -tags integration -run '^$' \
//	    -bench BenchmarkCinderSideBySide -benchtime 1x -timeout 60m ./integration/
//
// Each backend has a volume type of its own (volume_backend_name). Per
// repetition (VCAGENT_BENCH_REPEAT, default 3; the table shows medians)
// and per backend: create a blank 1 GB volume (lazy, the driver's default:
// no backing yet), its first attachment (POST /attachments with the
// connector nova's VMware driver sends, naming an instance VM: the backing
// is made next to it; then os-complete, until in-use), detach (the
// attachment deleted), extend to 2 GB, snapshot, clone, volume from the
// snapshot, delete the snapshot, delete the three volumes. Every figure
// runs from the API request until the status settles, polled every
// 100 ms; the two backends take turns going first. Then upload to image
// (a volume attached once, streamed to glance; VCAGENT_BENCH_REPEAT times):
// the Python driver exports the backing with VirtualMachine.ExportVm, which
// needs the launcher's ExportVm (integration/pyvmware/export.go); a side
// whose upload fails shows n/a.
//
// The simulator is integration/pyvmware (govmomi's, with the fixes the
// Python drivers need), which counts every vCenter request per client: the
// Python backend serves cluster DC0_C0 (vmware_cluster_name), the agent
// DC0_C1 (VCAGENT_CLUSTERS), one datastore shared by both. The Python
// cinder-volume runs through integration/controlplane/python-cinder-volume.sh
// with vmware_task_poll_interval 0.5 s (VCAGENT_BENCH_PY_TASK_POLL; cinder's
// default is 2.0 s, which would make it slower). The agent runs with
// VCAGENT_ROLES=volume only, built without the race detector.
package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/integration/cp"
)

// cvSide is one cinder-volume backend of the side-by-side benchmark.
type cvSide struct {
	name     string // "agent" or "python": also the simulator's client label
	host     string
	backend  string // the backend section and volume_backend_name
	volType  string
	instance string // moref value of the instance VM its attachments name
	pid      int    // the agent, or the Python launcher (its children serve)
	cpu0     time.Duration
	rssKiB   map[string]int64
}

func BenchmarkCinderSideBySide(b *testing.B) {
	for _, mod := range []string{"cinder.cmd.volume", "cinder.volume.drivers.vmware.vmdk", "oslo_vmware", "suds"} {
		if out, err := exec.Command(pythonBinDebian, "-c", "import "+mod).CombinedOutput(); err != nil {
			b.Fatalf("the Python VMDK driver needs %s (apt-get install python3-cinder python3-oslo.vmware python3-suds): %v\n%s", mod, err, out)
		}
	}
	ctrl := controlPlane(b)
	if ctrl.CinderURL == "" || ctrl.CinderDB == "" {
		b.Fatalf("env.json of %s has no cinder_url or cinder_db: re-run up.sh", ctrl.Work)
	}
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

	agentSide := &cvSide{name: "agent", host: "agentcv-" + suffix, backend: "agentcv" + suffix, rssKiB: map[string]int64{}}
	pySide := &cvSide{name: "python", host: "pycv-" + suffix, backend: "pycv" + suffix, rssKiB: map[string]int64{}}
	sides := []*cvSide{agentSide, pySide}
	bySide := map[string]*cvSide{"agent": agentSide, "python": pySide}
	// Registered first, so run last (after both services stopped): their
	// service records go, so no later scheduler start waits for them.
	b.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		for _, s := range sides {
			_, _ = ctrl.CinderManage(cctx, "service", "remove", "cinder-volume", s.host+"@"+s.backend)
		}
	})

	var opsURL string
	agentSide.pid, opsURL = startCinderBenchAgent(b, filepath.Join(tmp, "vcagent"), filepath.Join(tmp, "agent.log"), append(computeAgentEnv(ctrl, agentSide.host),
		"VCAGENT_ROLES=volume", "VCAGENT_VOLUME_BACKEND="+agentSide.backend,
		"VCAGENT_VOLUME_DATABASE_URL="+ctrl.CinderDB, "VCAGENT_VOLUME_EXCHANGE="+ctrl.CinderExchange,
		"VCAGENT_VCENTER_URL="+vc.url, "VCAGENT_VCENTER_USER="+vc.user, "VCAGENT_VCENTER_PASSWORD="+vc.password,
		"VCAGENT_VCENTER_INSECURE=true", "VCAGENT_CLUSTERS=DC0_C1", "VCAGENT_DATASTORE_REGEX=LocalDS_.*",
	)...)
	pySide.pid = startPythonCinderVolume(b, ctrl, pySide.host, pySide.backend, vc)
	for _, s := range sides {
		cvWaitPool(b, ctrl, s.host+"@"+s.backend+"#"+s.backend)
		s.volType = cvVolumeType(b, ctrl, s.backend)
	}

	// One instance VM per side, in its backend's cluster: the connector's
	// "instance", next to which the first attachment makes the backing.
	// Made by the benchmark's own session before any measurement.
	tvc, err := vcenter.New(vcenter.Config{URL: vc.url, User: vc.user, Password: vc.password, Insecure: true}, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	if err := tvc.Login(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = tvc.Logout(context.Background()) })
	clusters, err := tvc.Clusters(ctx)
	if err != nil {
		b.Fatal(err)
	}
	for _, s := range sides {
		want := map[string]string{"agent": "DC0_C1", "python": "DC0_C0"}[s.name]
		i := slices.IndexFunc(clusters, func(c vcenter.Cluster) bool { return c.Name == want })
		if i < 0 {
			b.Fatalf("simulator has no cluster %s: %v", want, clusters)
		}
		c := clusters[i]
		folder, err := tvc.EnsureFolderPath(ctx, c.Datacenter, "OpenStack", "Project ("+ctrl.Project+")", "Instances")
		if err != nil {
			b.Fatal(err)
		}
		inst, err := tvc.CreateVM(ctx, vcenter.VMSpec{Name: "cvbench-instance-" + s.name, NumCPUs: 1, MemoryMB: 64, GuestID: "otherGuest",
			Folder: folder, ResourcePool: c.ResourcePool, Datastore: c.Datastores[0].Ref})
		if err != nil {
			b.Fatal(err)
		}
		s.instance = inst.Ref.Value
	}
	for _, s := range sides {
		s.cpu0, s.rssKiB["idle"], _ = cvProcStats(s)
	}
	rpc0 := cvRPCTimes(b, opsURL)

	repeat := 3
	if v, err := strconv.Atoi(os.Getenv("VCAGENT_BENCH_REPEAT")); err == nil && v > 0 {
		repeat = v
	}
	ss := newSideSamples(vc, "agent", "python")
	measure := func(op string, run func(s *cvSide)) {
		b.Helper()
		row := ss.measure(b, op, func(name string) { run(bySide[name]) })
		fmt.Printf("  %-26s agent %6.2f s %4d calls | python %6.2f s %4d calls\n", op,
			row.secs["agent"], row.calls["agent"], row.secs["python"], row.calls["python"])
	}

	type vols struct{ vol, att, snap, clone, fromSnap string }
	cur := map[string]*vols{}
	for rep := range repeat {
		for _, s := range sides {
			cur[s.name] = &vols{}
		}
		name := func(s *cvSide, what string) string { return fmt.Sprintf("cvbench-%s-%s-%d", s.name, what, rep) }
		measure("create (blank 1 GB)", func(s *cvSide) {
			cur[s.name].vol = cvCreate(b, ctrl, map[string]any{"name": name(s, "vol"), "size": 1, "volume_type": s.volType})
		})
		measure("first attachment", func(s *cvSide) {
			cur[s.name].att = cvAttach(b, ctrl, cur[s.name].vol, map[string]any{
				// nova's VMware driver: the vCenter address, no iSCSI
				// initiator, the instance VM's moref value
				"ip": vc.host, "host": vc.host, "initiator": nil, "instance": s.instance,
			})
		})
		measure("detach", func(s *cvSide) {
			if _, err := ctrl.CinderDELETE(ctx, "/attachments/"+cur[s.name].att); err != nil {
				b.Fatal(err)
			}
			cvWaitVolume(b, ctrl, cur[s.name].vol, "available", "detaching", "in-use")
		})
		measure("extend to 2 GB", func(s *cvSide) {
			if _, err := ctrl.CinderPOST(ctx, "/volumes/"+cur[s.name].vol+"/action", map[string]any{"os-extend": map[string]any{"new_size": 2}}); err != nil {
				b.Fatal(err)
			}
			v := cvWaitVolume(b, ctrl, cur[s.name].vol, "available", "extending")
			if v["size"] != float64(2) {
				b.Fatalf("%s volume %s after extend: size %v", s.name, cur[s.name].vol, v["size"])
			}
		})
		measure("snapshot", func(s *cvSide) {
			r, err := ctrl.CinderPOST(ctx, "/snapshots", map[string]any{"snapshot": map[string]any{"volume_id": cur[s.name].vol, "name": name(s, "snap")}})
			if err != nil {
				b.Fatal(err)
			}
			snap, _ := r["snapshot"].(map[string]any)["id"].(string)
			cur[s.name].snap = snap
			b.Cleanup(func() { // a failed run's: before its volume's
				if _, err := ctrl.CinderDELETE(context.Background(), "/snapshots/"+snap); err == nil {
					for range 300 {
						if _, err := ctrl.CinderGET(context.Background(), "/snapshots/"+snap); cp.StatusCode(err) == http.StatusNotFound {
							break
						}
						time.Sleep(100 * time.Millisecond)
					}
				}
			})
			cvWaitSnapshot(b, ctrl, cur[s.name].snap, "available", "creating")
		})
		measure("clone (2 GB)", func(s *cvSide) {
			cur[s.name].clone = cvCreate(b, ctrl, map[string]any{"name": name(s, "clone"), "size": 2, "volume_type": s.volType, "source_volid": cur[s.name].vol})
		})
		measure("create from snapshot", func(s *cvSide) {
			cur[s.name].fromSnap = cvCreate(b, ctrl, map[string]any{"name": name(s, "fromsnap"), "size": 2, "volume_type": s.volType, "snapshot_id": cur[s.name].snap})
		})
		measure("delete snapshot", func(s *cvSide) {
			if _, err := ctrl.CinderDELETE(ctx, "/snapshots/"+cur[s.name].snap); err != nil {
				b.Fatal(err)
			}
			cvWaitSnapshot(b, ctrl, cur[s.name].snap, "deleted", "deleting", "available")
		})
		for _, which := range []string{"volume", "clone", "from snapshot"} {
			measure("delete", func(s *cvSide) {
				id := map[string]string{"volume": cur[s.name].vol, "clone": cur[s.name].clone, "from snapshot": cur[s.name].fromSnap}[which]
				cvDelete(b, ctrl, id)
			})
		}
		for _, s := range sides {
			_, s.rssKiB[fmt.Sprintf("after repetition %d", rep+1)], _ = cvProcStats(s)
		}
	}

	// Upload to image: a volume with a backing (attached once), streamed
	// to glance as streamOptimized. A side whose upload fails (the Python
	// driver needs VirtualMachine.ExportVm, which the simulator launcher
	// may lack) shows n/a.
	uploadVol := map[string]string{}
	uploadErr := map[string]string{}
	for _, s := range sides {
		id := cvCreate(b, ctrl, map[string]any{"name": "cvbench-" + s.name + "-upload", "size": 1, "volume_type": s.volType})
		att := cvAttach(b, ctrl, id, map[string]any{"ip": vc.host, "host": vc.host, "initiator": nil, "instance": s.instance})
		if _, err := ctrl.CinderDELETE(ctx, "/attachments/"+att); err != nil {
			b.Fatal(err)
		}
		cvWaitVolume(b, ctrl, id, "available", "detaching", "in-use")
		uploadVol[s.name] = id
	}
	for i := range repeat {
		measure("upload to image", func(s *cvSide) {
			if uploadErr[s.name] != "" {
				return
			}
			if err := cvUpload(b, ctrl, uploadVol[s.name], fmt.Sprintf("cvbench-%s-image-%d", s.name, i)); err != nil {
				uploadErr[s.name] = err.Error()
				fmt.Printf("  upload to image on %s failed: %v\n", s.name, err)
			}
		})
	}
	for _, s := range sides {
		cvDelete(b, ctrl, uploadVol[s.name])
	}
	for _, s := range sides {
		_, s.rssKiB["end"], s.rssKiB["peak"] = cvProcStats(s)
	}

	// The table: medians of the samples.
	rows := ss.medians(func(op string, n int) string {
		if n > 1 {
			return fmt.Sprintf("%s (median of %d)", op, n)
		}
		return op
	})
	var out strings.Builder
	fmt.Fprintf(&out, "\nvcagent volume role vs Python cinder-volume (VMwareVcVmdkDriver), same cinder-api/scheduler and vCenter simulator\n")
	fmt.Fprintf(&out, "%-38s %10s %10s %9s   %12s %12s %9s\n", "operation (until settled)", "agent s", "python s", "agent/py", "agent calls", "python calls", "agent/py")
	for _, r := range rows {
		if strings.HasPrefix(r.op, "upload to image") && (uploadErr["agent"] != "" || uploadErr["python"] != "") {
			cell := func(side string) string {
				if uploadErr[side] != "" {
					return "n/a"
				}
				return fmt.Sprintf("%.2f", r.secs[side])
			}
			fmt.Fprintf(&out, "%-38s %10s %10s %9s   %12d %12d %8s\n", r.op, cell("agent"), cell("python"), "", r.calls["agent"], r.calls["python"], "")
			continue
		}
		fmt.Fprintf(&out, "%-38s %10.2f %10.2f %8.2fx   %12d %12d %8s\n", r.op, r.secs["agent"], r.secs["python"],
			r.secs["agent"]/r.secs["python"], r.calls["agent"], r.calls["python"], ratio(r.calls["agent"], r.calls["python"]))
	}
	for side, err := range uploadErr {
		fmt.Fprintf(&out, "upload to image failed on %s: %s\n", side, err)
	}
	fmt.Fprintf(&out, "\n%-38s %10s %10s %9s\n", "RSS (MiB)", "agent", "python", "agent/py")
	keys := []string{"idle"}
	for rep := range repeat {
		keys = append(keys, fmt.Sprintf("after repetition %d", rep+1))
	}
	for _, k := range append(keys, "end", "peak") {
		a, p := float64(agentSide.rssKiB[k])/1024, float64(pySide.rssKiB[k])/1024
		fmt.Fprintf(&out, "%-38s %10.1f %10.1f %8.2fx\n", k, a, p, a/p)
	}
	var cpus [2]time.Duration
	for i, s := range sides {
		c, _, _ := cvProcStats(s)
		cpus[i] = c - s.cpu0
	}
	fmt.Fprintf(&out, "%-38s %10.2f %10.2f %8.2fx\n", "CPU of the scenario (s)", cpus[0].Seconds(), cpus[1].Seconds(),
		cpus[0].Seconds()/cpus[1].Seconds())
	fmt.Fprintf(&out, "(python: oslo.service's launcher and its backend process together; the backend process alone: idle %.1f MiB, end %.1f MiB)\n",
		float64(pySide.rssKiB["child idle"])/1024, float64(pySide.rssKiB["child end"])/1024)
	fmt.Fprintf(&out, "\nThe agent's own time per volume RPC (its metrics: from the message's arrival to its reply or end; the rest of an operation is cinder-api, the scheduler, the bus and the 100 ms polling)\n")
	rpc1 := cvRPCTimes(b, opsURL)
	for _, m := range slices.Sorted(maps.Keys(rpc1)) {
		if n := rpc1[m][1] - rpc0[m][1]; n > 0 {
			fmt.Fprintf(&out, "  %-28s %3.0f requests, mean %6.1f ms\n", m, n, 1000*(rpc1[m][0]-rpc0[m][0])/n)
		}
	}
	fmt.Fprintf(&out, "\nvCenter requests by method (per operation, the last sample; SOAP method or HTTP method and path)\n")
	for _, r := range rows {
		fmt.Fprintf(&out, "%s\n  agent:  %s\n  python: %s\n", r.op, r.top["agent"], r.top["python"])
	}
	fmt.Print(out.String())

	b.ReportMetric(float64(agentSide.rssKiB["peak"])/1024, "agent_rss_MiB")
	b.ReportMetric(float64(pySide.rssKiB["peak"])/1024, "python_rss_MiB")
}

// ratio formats a/b, or "-" when b is 0.
func ratio(a, b int) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", float64(a)/float64(b))
}

// cvProcStats is procStats for a side: the agent's process, or the
// Python launcher with its children (oslo.service forks one process per
// backend, which does the work). For Python it also records the backend
// process alone under "child idle" / "child end" the first and every
// later time.
func cvProcStats(s *cvSide) (cpu time.Duration, rssKiB, hwmKiB int64) {
	cpu, rssKiB, hwmKiB = procStats(s.pid)
	if s.name != "python" {
		return cpu, rssKiB, hwmKiB
	}
	var childRSS int64
	for _, child := range childPIDs(s.pid) {
		c, r, h := procStats(child)
		cpu, rssKiB, hwmKiB, childRSS = cpu+c, rssKiB+r, hwmKiB+h, childRSS+r
	}
	if _, ok := s.rssKiB["child idle"]; !ok {
		s.rssKiB["child idle"] = childRSS
	}
	s.rssKiB["child end"] = childRSS
	return cpu, rssKiB, hwmKiB
}

// childPIDs lists the processes whose parent is pid.
func childPIDs(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", n))
		if err != nil {
			continue
		}
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, n)
		}
	}
	return out
}

// startCinderBenchAgent runs the agent binary bin (a volume role only:
// startAgent waits for the compute topic) with its JSON log in logPath,
// waits until cinder lists its service up and returns its pid and the
// base URL of its operator endpoint. It is stopped with SIGTERM at the end.
func startCinderBenchAgent(b *testing.B, bin, logPath string, env ...string) (int, string) {
	b.Helper()
	logFile, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), append([]string{"VCAGENT_LOG_FORMAT=json", "VCAGENT_SHUTDOWN_TIMEOUT=10s", "VCAGENT_HTTP_ADDR=127.0.0.1:0"}, env...)...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done); _ = logFile.Close() }()
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if b.Failed() {
			if f, err := os.Open(logPath); err == nil {
				sc := bufio.NewScanner(f)
				sc.Buffer(make([]byte, 1<<20), 1<<22)
				for sc.Scan() {
					var m map[string]any
					if json.Unmarshal(sc.Bytes(), &m) == nil && (m["level"] == "warn" || m["level"] == "error") {
						b.Log(sc.Text())
					}
				}
				_ = f.Close()
			}
		}
	})
	host := ""
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "VCAGENT_HOST="); ok {
			host = v
		}
		if v, ok := strings.CutPrefix(e, "VCAGENT_VOLUME_BACKEND="); ok {
			host += "@" + v
		}
	}
	deadline := time.Now().Add(120 * time.Second)
	for {
		select {
		case <-done:
			b.Fatalf("the agent exited; log in %s", logPath)
		default:
		}
		svcs := volumeServices(context.Background(), b, controlPlane(b), host)
		if len(svcs) == 1 && svcs[0]["state"] == "up" {
			return cmd.Process.Pid, cvOpsURL(b, logPath)
		}
		if time.Now().After(deadline) {
			b.Fatalf("cinder-volume %s not up within 120 s: %v (log in %s)", host, svcs, logPath)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// cvOpsURL reads the agent's operator endpoint address from its log.
func cvOpsURL(b *testing.B, logPath string) string {
	b.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		data, err := os.ReadFile(logPath)
		if err != nil {
			b.Fatal(err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && strings.HasPrefix(fmt.Sprint(m["message"]), "operator endpoint listening") {
				if addr, ok := m["addr"].(string); ok {
					return "http://" + addr
				}
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("no operator endpoint in the agent's log %s", logPath)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// cvRPCTimes reads the agent's RPC handling time from its /metrics: per
// method of topic cinder-volume, the seconds summed and the count.
func cvRPCTimes(b *testing.B, opsURL string) map[string][2]float64 {
	b.Helper()
	code, body := httpGet(b, opsURL+"/metrics")
	if code != http.StatusOK {
		b.Fatalf("/metrics: HTTP %d", code)
	}
	out := map[string][2]float64{}
	for _, line := range strings.Split(body, "\n") {
		name, rest, ok := strings.Cut(line, "{")
		if !ok || !strings.HasPrefix(name, "vcagent_rpc_request_duration_seconds_") || !strings.Contains(rest, `topic="cinder-volume`) {
			continue
		}
		labels, value, _ := strings.Cut(rest, "} ")
		_, method, _ := strings.Cut(labels, `method="`)
		method, _, _ = strings.Cut(method, `"`)
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			continue
		}
		e := out[method]
		switch strings.TrimPrefix(name, "vcagent_rpc_request_duration_seconds_") {
		case "sum":
			e[0] = v
		case "count":
			e[1] = v
		}
		out[method] = e
	}
	return out
}

// startPythonCinderVolume starts the real Python cinder-volume as
// host@backend on cluster DC0_C0 through python-cinder-volume.sh (which
// waits until the scheduler has its pool) and returns the launcher's pid.
func startPythonCinderVolume(b *testing.B, ctrl *cp.ControlPlane, host, backend string, vc *vmwSim) int {
	b.Helper()
	script, err := filepath.Abs(filepath.Join("controlplane", "python-cinder-volume.sh"))
	if err != nil {
		b.Fatal(err)
	}
	poll := os.Getenv("VCAGENT_BENCH_PY_TASK_POLL")
	if poll == "" {
		poll = "0.5"
	}
	cmd := exec.Command("/bin/bash", script, ctrl.Work, "start", host, backend)
	cmd.Env = append(os.Environ(), "VC_HOST="+vc.host, "VC_PORT="+vc.port, "VC_USER="+vc.user, "VC_PASS="+vc.password,
		"VC_CLUSTER=DC0_C0", "VC_DATASTORE_REGEX=LocalDS_.*", "VC_POLL="+poll)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	b.Cleanup(func() {
		stop := exec.Command("/bin/bash", script, ctrl.Work, "stop", host)
		stop.Stderr = os.Stderr
		_ = stop.Run()
	})
	if err != nil {
		b.Fatalf("python-cinder-volume.sh start %s %s: %v", host, backend, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		b.Fatalf("python-cinder-volume.sh printed %q", out)
	}
	return pid
}

// cvWaitPool waits until cinder-scheduler has the pool.
func cvWaitPool(b *testing.B, ctrl *cp.ControlPlane, pool string) {
	b.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		p, err := ctrl.CinderGET(context.Background(), "/scheduler-stats/get_pools")
		if err != nil {
			b.Fatal(err)
		}
		for _, p := range asList(p, "pools") {
			if p["name"] == pool {
				return
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("cinder-scheduler has no pool %s", pool)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// cvVolumeType creates a public volume type placing volumes on the
// backends named backend (deleted at the end).
func cvVolumeType(b *testing.B, ctrl *cp.ControlPlane, backend string) string {
	b.Helper()
	name := "cvbench-" + backend
	v, err := ctrl.CinderPOST(context.Background(), "/types", map[string]any{"volume_type": map[string]any{
		"name": name, "os-volume-type-access:is_public": true,
		"extra_specs": map[string]any{"volume_backend_name": backend},
	}})
	if err != nil {
		b.Fatal(err)
	}
	id, _ := v["volume_type"].(map[string]any)["id"].(string)
	b.Cleanup(func() { _, _ = ctrl.CinderDELETE(context.Background(), "/types/"+id) })
	return name
}

// cvCreate creates a volume and waits until it is available; a volume
// left by a failure is deleted at the end.
func cvCreate(b *testing.B, ctrl *cp.ControlPlane, body map[string]any) string {
	b.Helper()
	v, err := ctrl.CinderPOST(context.Background(), "/volumes", map[string]any{"volume": body})
	if err != nil {
		b.Fatal(err)
	}
	id, _ := v["volume"].(map[string]any)["id"].(string)
	b.Cleanup(func() { cvCleanVolume(ctrl, id) })
	cvWaitVolume(b, ctrl, id, "available", "creating", "downloading")
	return id
}

// cvCleanVolume deletes a volume a failed run left behind (while its
// backend still runs): its attachments first (one that failed half-way
// leaves the volume reserved), then the volume, its status reset if
// cinder refuses the delete.
func cvCleanVolume(ctrl *cp.ControlPlane, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := ctrl.CinderGET(ctx, "/volumes/"+id); cp.StatusCode(err) == http.StatusNotFound {
		return
	}
	if a, err := ctrl.CinderGET(ctx, "/attachments?volume_id="+id); err == nil {
		for _, att := range asList(a, "attachments") {
			_, _ = ctrl.CinderDELETE(ctx, fmt.Sprintf("/attachments/%v", att["id"]))
		}
	}
	if _, err := ctrl.CinderDELETE(ctx, "/volumes/"+id); err != nil {
		_, _ = ctrl.CinderPOST(ctx, "/volumes/"+id+"/action", map[string]any{"os-reset_status": map[string]any{"status": "available", "attach_status": "detached"}})
		_, _ = ctrl.CinderDELETE(ctx, "/volumes/"+id)
	}
	_, _ = ctrl.CinderVolumeStatus(ctx, id, "deleting")
}

// cvAttach makes the volume's first attachment as nova does (attachment
// create with the connector, then os-complete) and returns its id once
// the volume is in-use. The attachment names no instance: deleting an
// instance's attachment makes cinder-api ask nova (bug #2004555).
func cvAttach(b *testing.B, ctrl *cp.ControlPlane, id string, connector map[string]any) string {
	b.Helper()
	ctx := context.Background()
	a, err := ctrl.CinderPOST(ctx, "/attachments", map[string]any{"attachment": map[string]any{
		"volume_uuid": id, "connector": connector, "mode": "rw",
	}})
	if err != nil {
		b.Fatal(err)
	}
	att, _ := a["attachment"].(map[string]any)
	attID, _ := att["id"].(string)
	if ci, _ := att["connection_info"].(map[string]any); ci["driver_volume_type"] != "vmdk" || ci["volume"] == nil {
		b.Fatalf("attachment of %s: connection_info %v", id, ci)
	}
	if _, err := ctrl.CinderPOST(ctx, "/attachments/"+attID+"/action", map[string]any{"os-complete": nil}); err != nil {
		b.Fatal(err)
	}
	cvWaitVolume(b, ctrl, id, "in-use", "attaching", "reserved")
	return attID
}

// cvUpload uploads the volume to a new glance image and waits until the
// volume is available and the image active (deleted at the end); an
// upload the backend fails (the volume back to available or in error
// without an active image) is the error.
func cvUpload(b *testing.B, ctrl *cp.ControlPlane, id, name string) error {
	b.Helper()
	ctx := context.Background()
	r, err := ctrl.CinderPOST(ctx, "/volumes/"+id+"/action", map[string]any{"os-volume_upload_image": map[string]any{
		"image_name": name, "disk_format": "vmdk", "container_format": "bare", "force": false,
	}})
	if err != nil {
		b.Fatal(err)
	}
	up, _ := r["os-volume_upload_image"].(map[string]any)
	imageID, _ := up["image_id"].(string)
	h := http.Header{ctrl.AuthHeader: {ctrl.Token}}
	b.Cleanup(func() { _, _ = ctrl.Do(context.Background(), "DELETE", ctrl.GlanceURL+"/v2/images/"+imageID, nil, h) })
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		g, err := ctrl.CinderGET(ctx, "/volumes/"+id)
		if err != nil {
			b.Fatal(err)
		}
		st, _ := g["volume"].(map[string]any)["status"].(string)
		img, err := ctrl.Do(ctx, "GET", ctrl.GlanceURL+"/v2/images/"+imageID, nil, h)
		switch {
		case cp.StatusCode(err) == http.StatusNotFound:
			img = map[string]any{"status": "deleted"}
		case err != nil:
			b.Fatal(err)
		}
		if st == "available" && img["status"] == "active" {
			return nil
		}
		if st != "uploading" && img["status"] != "active" && img["status"] != "saving" && img["status"] != "queued" || st == "error" {
			m, _ := ctrl.CinderGET(ctx, "/messages?resource_uuid="+id)
			return fmt.Errorf("volume %s %s, image %s %v; messages %v", id, st, imageID, img["status"], m)
		}
		if time.Now().After(deadline) {
			b.Fatalf("upload of volume %s: volume %s, image %v after 5 min", id, st, img["status"])
		}
	}
}

// cvDelete deletes the volume and waits until cinder no longer knows it.
func cvDelete(b *testing.B, ctrl *cp.ControlPlane, id string) {
	b.Helper()
	if _, err := ctrl.CinderDELETE(context.Background(), "/volumes/"+id); err != nil {
		b.Fatal(err)
	}
	cvWaitVolume(b, ctrl, id, "deleted", "deleting", "available")
}

// cvWaitVolume polls the volume every 100 ms while its status is one of
// transient and fails unless it then is want ("deleted": gone); it returns
// the volume.
func cvWaitVolume(b *testing.B, ctrl *cp.ControlPlane, id, want string, transient ...string) map[string]any {
	b.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		g, err := ctrl.CinderGET(context.Background(), "/volumes/"+id)
		st := ""
		var vol map[string]any
		switch {
		case cp.StatusCode(err) == http.StatusNotFound:
			st = "deleted"
		case err != nil:
			b.Fatal(err)
		default:
			vol, _ = g["volume"].(map[string]any)
			st, _ = vol["status"].(string)
		}
		if st == want {
			return vol
		}
		if !slices.Contains(transient, st) || time.Now().After(deadline) {
			m, _ := ctrl.CinderGET(context.Background(), "/messages?resource_uuid="+id)
			b.Fatalf("volume %s: %q, want %s; %v; messages %v", id, st, want, vol, m)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cvWaitSnapshot is cvWaitVolume for a snapshot.
func cvWaitSnapshot(b *testing.B, ctrl *cp.ControlPlane, id, want string, transient ...string) {
	b.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		g, err := ctrl.CinderGET(context.Background(), "/snapshots/"+id)
		st := ""
		switch {
		case cp.StatusCode(err) == http.StatusNotFound:
			st = "deleted"
		case err != nil:
			b.Fatal(err)
		default:
			st, _ = g["snapshot"].(map[string]any)["status"].(string)
		}
		if st == want {
			return
		}
		if !slices.Contains(transient, st) || time.Now().After(deadline) {
			m, _ := ctrl.CinderGET(context.Background(), "/messages?resource_uuid="+id)
			b.Fatalf("snapshot %s: %q, want %s; messages %v", id, st, want, m)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

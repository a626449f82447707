//go:build integration

package integration

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vcagent/vcagent/integration/cp"
)

// TestDrainRollingRestartBuildsEveryServerOnce floods nova with server
// builds while the two agents serving one compute host are restarted one
// after the other (SIGTERM A, start A', SIGTERM B, start B'), as an
// operator's rolling upgrade does. Each build_and_run_instance cast has
// durable effects that can be counted: a server that becomes ACTIVE, one
// build event in nova's instance action, one VM created (each agent logs
// the VMs it creates in its embedded vCenter; the logs are kept). With one
// worker per agent and oslo's unlimited prefetch, each agent holds a
// started build and unstarted, unacknowledged casts when it is stopped.
//
// It proves that SIGTERM stops the intake at once (the agent finishes
// exactly the builds it had started, read from its own metrics, which
// outlive the drain), lets them finish, exits with status 0 after logging
// out of vCenter, and leaves every unstarted cast on the broker for the
// other agent: every server is ACTIVE with exactly one build event and
// one VM created for it, and the agents' build counts add up to the
// servers (none lost, none done twice). Last, a second SIGTERM during a
// drain makes the agent exit at once.
//
// The agents use their embedded vCenters: govmomi's simulator can hang
// on concurrent tasks from several clients (seen here: CreateVM_Task and
// ReconfigVM_Task of two agents on one simulator blocked for minutes),
// which is not what this test is about. The race detector's reports go to
// files, and only those inside the simulator's own code are tolerated.
// VCAGENT_DRAIN_SERVERS caps the flood (default 24).
func TestDrainRollingRestartBuildsEveryServerOnce(t *testing.T) {
	ctrl := controlPlane(t)
	raceDir := t.TempDir()
	defer checkRaces(t, raceDir)
	host := fmt.Sprintf("drainhost%d", time.Now().Unix()%100000)
	sep := "?"
	if strings.Contains(ctrl.TransportURL, "?") {
		sep = "&"
	}
	env := append(computeAgentEnv(ctrl, host),
		// One build at a time per agent, so that casts queue up and each
		// agent holds unstarted ones (prefetched, unacknowledged) when it stops.
		"VCAGENT_TRANSPORT_URL="+ctrl.TransportURL+sep+"executor_thread_pool_size=1",
		"VCAGENT_SHUTDOWN_TIMEOUT=180s",
		// The embedded simulator's unsynchronised internals must not end
		// the agents (status 66); checkRaces reads the reports.
		"GORACE=halt_on_error=0 exitcode=0 log_path="+filepath.Join(raceDir, "race"),
	)
	agentA := startAgent(t, env...)
	agentB := startAgent(t, env...)
	waitServiceState(t, ctrl, host, "up", 90*time.Second)
	ctx := context.Background()
	if out, err := ctrl.NovaManage(ctx, "cell_v2", "discover_hosts"); err != nil {
		t.Fatalf("discover_hosts: %v\n%s", err, out)
	}
	image := uploadFlatImage(t, ctrl)
	prefix := "drain-" + host + "-"

	// The flood: four servers every four seconds (one request each, which
	// nova's conductor turns into four casts at once) until stopped.
	limit := 24
	if v, err := strconv.Atoi(os.Getenv("VCAGENT_DRAIN_SERVERS")); err == nil && v > 0 {
		limit = v
	}
	fl := startFlood(ctrl, prefix, image, host, 4, 4*time.Second, limit)

	agents := []*agentProc{agentA, agentB}
	built := 0 // builds done by the agents that were stopped
	var drains []time.Duration
	restart := func(name string, old *agentProc) *agentProc {
		t.Helper()
		ops := old.opsURL(t)
		busy := waitInFlight(t, ops, 120*time.Second)
		t.Logf("%s: %d build in flight; queue compute.%s: %s", name, busy, host, queueState(t, ctrl, "compute."+host))
		d, done := drainAgent(t, name, old, ops)
		t.Logf("%s gone; queue compute.%s: %s", name, host, queueState(t, ctrl, "compute."+host))
		drains = append(drains, d)
		built += done
		a := startAgent(t, env...)
		agents = append(agents, a)
		return a
	}
	agentA2 := restart("agent A", agentA)
	agentB2 := restart("agent B", agentB)
	ids, err := fl.stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d servers requested; drain times %v", len(ids), drains)

	// Every server ACTIVE: no cast lost.
	t0 := time.Now()
	servers := waitAllSettled(t, ctrl, ids, 2*time.Minute)
	t.Logf("servers waited for %s after the flood ended", time.Since(t0).Round(time.Second))
	var notActive []string
	for _, id := range ids {
		if s := servers[id]; s["status"] != "ACTIVE" || s["OS-EXT-STS:task_state"] != nil {
			notActive = append(notActive, fmt.Sprintf("%s: %v %v %v", id, s["status"], s["OS-EXT-STS:task_state"], s["fault"]))
		}
	}
	if len(notActive) > 0 {
		t.Errorf("%d of %d servers not ACTIVE:\n%s", len(notActive), len(ids), strings.Join(notActive, "\n"))
	}

	// Done once: one build event and one VM created per server, and as
	// many builds done by the agents as there are servers.
	vms := createdVMs(agents)
	for _, id := range ids {
		if n := vms[id]; n != 1 {
			t.Errorf("server %s: %d VMs created for it", id, n)
		}
		if n, results := buildEvents(t, ctrl, id); n != 1 {
			t.Errorf("server %s: %d build events %v, want 1", id, n, results)
		}
	}
	for _, a := range []*agentProc{agentA2, agentB2} {
		// A server shows ACTIVE a moment before its build returns.
		var m buildMetrics
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if m = scrape(a.opsURL(t)); m.ok && m.inFlight == 0 {
				break
			}
		}
		if !m.ok || m.inFlight != 0 || m.failed != 0 {
			t.Errorf("metrics of a running agent: %+v", m)
		}
		built += m.done
	}
	if built != len(ids) {
		t.Errorf("the agents did %d builds for %d servers", built, len(ids))
	}

	// A second SIGTERM during a drain exits at once, without draining.
	more := createServers(t, ctrl, prefix+"last", image, host, 4)
	ops := agentA2.opsURL(t)
	waitInFlight(t, ops, 120*time.Second)
	if err := agentA2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	t1 := time.Now()
	if err := agentA2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-agentA2.done:
		t.Logf("second SIGTERM: exited %s after it (%v)", time.Since(t1).Round(time.Millisecond), err)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Errorf("after a second SIGTERM the agent exited with %v, want status 1", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("the agent did not exit within 5 s of a second SIGTERM")
	}
	agentA2.waitLog(t, time.Second, func(m map[string]any) bool { return m["message"] == "second signal: exiting without draining" })

	deleteServers(t, ctrl, append(ids, more...))
}

// checkRaces fails on race reports of the agents that do not come from
// govmomi's simulator.
func checkRaces(t *testing.T, dir string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "race.*"))
	tolerated := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Error(err)
			continue
		}
		for _, r := range strings.Split(string(b), "WARNING: DATA RACE")[1:] {
			if strings.Contains(r, "github.com/vmware/govmomi/simulator.") {
				tolerated++
				continue
			}
			t.Errorf("data race in an agent:%s", r)
		}
	}
	t.Logf("%d race reports inside govmomi's simulator tolerated", tolerated)
}

// createdVMs counts the "created vm" log lines of the agents by instance uuid.
func createdVMs(agents []*agentProc) map[string]int {
	out := map[string]int{}
	for _, a := range agents {
		a.mu.Lock()
		for _, l := range a.logs {
			if l["message"] == "created vm" {
				if u, ok := l["instance_uuid"].(string); ok {
					out[u]++
				}
			}
		}
		a.mu.Unlock()
	}
	return out
}

// drainAgent sends SIGTERM to a, which must finish exactly the builds it
// had started, start none, exit with status 0 after logging out of vCenter,
// within its shutdown timeout. It returns the time from SIGTERM to exit and
// the builds the agent started (and so did) in its life.
func drainAgent(t *testing.T, name string, a *agentProc, ops string) (time.Duration, int) {
	t.Helper()
	t0 := time.Now()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Read right after the signal: whatever it shows started before it.
	m0 := scrape(ops)
	started := m0.done + m0.inFlight
	last := m0
	var exitErr error
	exited := false
	deadline := time.After(200 * time.Second)
	for !exited {
		select {
		case exitErr = <-a.done:
			exited = true
		case <-deadline:
			t.Fatalf("%s did not exit within 200 s of SIGTERM", name)
		case <-time.After(50 * time.Millisecond):
			// The endpoint serves until the drain is over; keep the last view.
			if m := scrape(ops); m.ok {
				last = m
			}
		}
	}
	d := time.Since(t0)
	t.Logf("%s: SIGTERM with %d builds in flight (%d done before): exited after %s, %d done, %d failed",
		name, m0.inFlight, m0.done, d.Round(time.Millisecond), last.done, last.failed)
	// The last view may predate the end of the last build by a few
	// milliseconds, but it can never show a build started after SIGTERM.
	// The started ones all finished: the exit status is 0 and the agent did
	// not give up on any (and nova shows each server's outcome).
	switch {
	case exitErr != nil:
		t.Errorf("%s exited with %v after SIGTERM", name, exitErr)
	case !m0.ok || !last.ok:
		t.Errorf("%s: metrics not readable during the drain", name)
	case last.done+last.inFlight != started:
		t.Errorf("%s: %d builds started before SIGTERM, %d done and %d in flight later: the intake did not stop at once",
			name, started, last.done, last.inFlight)
	case last.failed != 0:
		t.Errorf("%s: %d builds failed", name, last.failed)
	}
	a.waitLog(t, time.Second, func(m map[string]any) bool { return m["message"] == "logged out of vCenter" })
	a.mu.Lock()
	for _, l := range a.logs {
		if l["message"] == "in-flight requests did not finish in time; cancelling them" {
			t.Errorf("%s: %v", name, l)
		}
	}
	a.mu.Unlock()
	return d, started
}

// buildMetrics is what an agent's /metrics says of its builds.
type buildMetrics struct {
	ok                     bool
	inFlight, done, failed int
}

// scrape reads the agent's build_and_run_instance counts.
func scrape(ops string) buildMetrics {
	resp, err := scrapeClient.Get(ops + "/metrics") //nolint:noctx // test helper
	if err != nil {
		return buildMetrics{}
	}
	defer resp.Body.Close()
	var m buildMetrics
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		n, _ := strconv.ParseFloat(value, 64)
		switch {
		case name == `vcagent_rpc_requests_in_flight{topic="compute"}`:
			m.inFlight = int(n)
		case strings.HasPrefix(name, `vcagent_rpc_requests_total{method="build_and_run_instance",`):
			m.done += int(n)
			if !strings.Contains(name, `outcome="ok"`) {
				m.failed += int(n)
			}
		}
	}
	m.ok = sc.Err() == nil && resp.StatusCode == http.StatusOK
	return m
}

// scrapeClient does not wait long for an agent that is exiting.
var scrapeClient = &http.Client{Timeout: 2 * time.Second} //nolint:gochecknoglobals // test helper

// waitInFlight waits until the agent handles at least one request.
func waitInFlight(t *testing.T, ops string, within time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if m := scrape(ops); m.inFlight > 0 {
			return m.inFlight
		}
		if time.Now().After(deadline) {
			t.Fatalf("no build in flight on %s within %s", ops, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// queueState reports the broker's view of a queue of the control plane's vhost.
func queueState(t *testing.T, ctrl *cp.ControlPlane, queue string) string {
	t.Helper()
	out, err := exec.Command("rabbitmqctl", "-q", "list_queues", "-p", ctrl.Rabbit.VHost, "--no-table-headers",
		"name", "messages_ready", "messages_unacknowledged", "consumers").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("unknown (%v)", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 4 && f[0] == queue {
			return fmt.Sprintf("%s ready, %s unacknowledged, %s consumers", f[1], f[2], f[3])
		}
	}
	return "not found"
}

// createServers asks nova for n servers on host in one request and returns their ids.
func createServers(t *testing.T, ctrl *cp.ControlPlane, name, image, host string, n int) []string {
	t.Helper()
	ids, err := postServers(ctrl, name, image, host, n)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func postServers(ctrl *cp.ControlPlane, name, image, host string, n int) ([]string, error) {
	ctx := context.Background()
	created, err := ctrl.NovaPOST(ctx, "/servers", map[string]any{"server": map[string]any{
		"name": name, "imageRef": image, "flavorRef": "42", "networks": "none", "host": host,
		"min_count": n, "max_count": n, "return_reservation_id": true,
	}})
	if err != nil {
		return nil, err
	}
	rid, _ := created["reservation_id"].(string)
	deadline := time.Now().Add(60 * time.Second)
	for {
		list, err := ctrl.NovaGET(ctx, "/servers?reservation_id="+rid)
		if err != nil {
			return nil, err
		}
		var ids []string
		for _, s := range asList(list, "servers") {
			ids = append(ids, s["id"].(string))
		}
		if len(ids) == n {
			return ids, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%d servers in reservation %s, want %d", len(ids), rid, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// buildFlood creates servers in the background until stopped or at its limit.
type buildFlood struct {
	quit chan struct{}
	done chan struct{}
	ids  []string
	err  error
}

func startFlood(ctrl *cp.ControlPlane, prefix, image, host string, per int, every time.Duration, limit int) *buildFlood {
	f := &buildFlood{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(f.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := 0; len(f.ids)+per <= limit; i++ {
			ids, err := postServers(ctrl, fmt.Sprintf("%s%03d", prefix, i), image, host, per)
			if err != nil {
				f.err = err
				return
			}
			f.ids = append(f.ids, ids...)
			select {
			case <-f.quit:
				return
			case <-tick.C:
			}
		}
	}()
	return f
}

func (f *buildFlood) stop() ([]string, error) {
	close(f.quit)
	<-f.done
	return f.ids, f.err
}

// waitAllSettled polls until every server is ACTIVE or ERROR without a
// task, or none has settled for stall (a lost cast never settles), and
// returns the last view of each.
func waitAllSettled(t *testing.T, ctrl *cp.ControlPlane, ids []string, stall time.Duration) map[string]map[string]any {
	t.Helper()
	deadline := time.Now().Add(stall)
	last := map[string]map[string]any{}
	pending := append([]string(nil), ids...)
	for len(pending) > 0 && time.Now().Before(deadline) {
		before := len(pending)
		var still []string
		for _, id := range pending {
			v, err := ctrl.NovaGET(context.Background(), "/servers/"+id)
			if err != nil {
				t.Fatal(err)
			}
			s, _ := v["server"].(map[string]any)
			last[id] = s
			if (s["status"] != "ACTIVE" && s["status"] != "ERROR") || s["OS-EXT-STS:task_state"] != nil {
				still = append(still, id)
			}
		}
		pending = still
		if len(pending) < before {
			deadline = time.Now().Add(stall)
		}
		if len(pending) > 0 {
			time.Sleep(time.Second)
		}
	}
	return last
}

// buildEvents counts the compute's build events in the server's create
// action (each run of build_and_run_instance records one).
func buildEvents(t *testing.T, ctrl *cp.ControlPlane, id string) (int, []string) {
	t.Helper()
	ctx := context.Background()
	acts, err := ctrl.NovaGET(ctx, "/servers/"+id+"/os-instance-actions")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	var results []string
	for _, a := range asList(acts, "instanceActions") {
		detail, err := ctrl.NovaGET(ctx, fmt.Sprintf("/servers/%s/os-instance-actions/%s", id, a["request_id"]))
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range asList(detail["instanceAction"].(map[string]any), "events") {
			if ev["event"] == "compute__do_build_and_run_instance" {
				n++
				results = append(results, fmt.Sprint(ev["result"]))
			}
		}
	}
	sort.Strings(results)
	return n, results
}

// deleteServers deletes the servers and waits a while for them to go;
// leftovers are only logged (the host is the test's own).
func deleteServers(t *testing.T, ctrl *cp.ControlPlane, ids []string) {
	t.Helper()
	ctx := context.Background()
	for _, id := range ids {
		if _, err := ctrl.NovaDELETE(ctx, "/servers/"+id); err != nil && cp.StatusCode(err) != http.StatusNotFound {
			t.Logf("delete %s: %v", id, err)
		}
	}
	deadline := time.Now().Add(90 * time.Second)
	left := len(ids)
	for _, id := range ids {
		for time.Now().Before(deadline) {
			if _, err := ctrl.NovaGET(ctx, "/servers/"+id); cp.StatusCode(err) == http.StatusNotFound {
				left--
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	if left > 0 {
		t.Logf("%d servers not deleted within 90 s", left)
	}
}

//go:build integration

package integration

// The pieces that run the REAL Python nova-compute with the VMware driver
// next to the agent on one vCenter simulator (integration/pyvmware), shared
// by BenchmarkVMwareSideBySide and TestAgentMatchesPythonVMwareCompute.

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
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

// pythonBinDebian is Debian's python, where python3-nova lives.
const pythonBinDebian = "/usr/bin/python3"

// vmwSim is a running integration/pyvmware simulator.
type vmwSim struct {
	url, host, port, user, password string
	client                          *http.Client
}

func startVMwareSimulator(b testing.TB, bin, dir string) *vmwSim {
	b.Helper()
	cmd := exec.Command(bin, "-l", "127.0.0.1:0", "-cluster", "2", "-host", "3", "-ds", "1",
		"-wsdl", filepath.Join(dir, "vimService.wsdl"), "-stdin")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		b.Fatalf("simulator launcher did not start: %v", err)
	}
	var info struct{ URL, User, Password string }
	if err := json.Unmarshal([]byte(line), &info); err != nil {
		b.Fatalf("simulator launcher said %q: %v", line, err)
	}
	rest := strings.TrimPrefix(info.URL, "https://")
	hostPort := rest[:strings.IndexByte(rest, '/')]
	i := strings.LastIndexByte(hostPort, ':')
	vc := &vmwSim{url: info.URL, host: hostPort[:i], port: hostPort[i+1:], user: info.User, password: info.Password,
		client: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true}, Timeout: 10 * time.Second}}
	b.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	})
	return vc
}

// counts returns the simulator's request counts by client and method.
func (v *vmwSim) counts(b testing.TB) map[string]map[string]int {
	b.Helper()
	resp, err := v.client.Get("https://" + v.host + ":" + v.port + "/vcsim/counts")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	out := map[string]map[string]int{}
	if err := json.Unmarshal(data, &out); err != nil {
		b.Fatalf("counts %q: %v", data, err)
	}
	return out
}

// countDelta is the number of requests between two snapshots and the
// methods, most frequent first.
func countDelta(before, after map[string]int) (int, string) {
	total := 0
	d := map[string]int{}
	for k, n := range after {
		if n -= before[k]; n > 0 {
			d[k] = n
			total += n
		}
	}
	names := slices.SortedFunc(maps.Keys(d), func(x, y string) int {
		if d[x] != d[y] {
			return d[y] - d[x]
		}
		return strings.Compare(x, y)
	})
	parts := make([]string, len(names))
	for i, k := range names {
		parts[i] = fmt.Sprintf("%s %d", k, d[k])
	}
	return total, strings.Join(parts, ", ")
}

// startPythonCompute starts the real Python nova-compute on cluster DC0_C0
// through python-compute.sh and returns its pid; env adds python-compute.sh
// settings (VC_VNC_ENABLED=True, ...).
func startPythonCompute(b testing.TB, ctrl *cp.ControlPlane, host string, vc *vmwSim, env ...string) int {
	b.Helper()
	script, err := filepath.Abs(filepath.Join("controlplane", "python-compute.sh"))
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command("/bin/bash", script, ctrl.Work, "start", host)
	cmd.Env = append(os.Environ(), "VC_HOST="+vc.host, "VC_PORT="+vc.port, "VC_USER="+vc.user, "VC_PASS="+vc.password,
		"VC_CLUSTER=DC0_C0", "VC_DATASTORE_REGEX=LocalDS_.*")
	cmd.Env = append(cmd.Env, env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	b.Cleanup(func() {
		stop := exec.Command("/bin/bash", script, ctrl.Work, "stop", host)
		stop.Stderr = os.Stderr
		_ = stop.Run()
	})
	if err != nil {
		b.Fatalf("python-compute.sh start %s: %v", host, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		b.Fatalf("python-compute.sh printed %q", out)
	}
	return pid
}

// vmwUploadImage puts a small preallocated VMDK image into glance.
func vmwUploadImage(b testing.TB, ctrl *cp.ControlPlane) string {
	b.Helper()
	ctx := context.Background()
	img, err := ctrl.Do(ctx, "POST", ctrl.GlanceURL+"/v2/images", map[string]any{
		"name": "vmw-bench-flat", "disk_format": "vmdk", "container_format": "bare",
		"vmware_disktype": "preallocated", "vmware_adaptertype": "lsiLogic",
	}, nil)
	if err != nil {
		b.Fatal(err)
	}
	id := img["id"].(string)
	b.Cleanup(func() { _, _ = ctrl.Do(context.Background(), "DELETE", ctrl.GlanceURL+"/v2/images/"+id, nil, nil) })
	h := http.Header{"Content-Type": {"application/octet-stream"}}
	if _, err := ctrl.Do(ctx, "PUT", ctrl.GlanceURL+"/v2/images/"+id+"/file", make([]byte, 1<<20), h); err != nil {
		b.Fatal(err)
	}
	return id
}

// vmwDeleteService deletes the nova-compute service record of host (once
// the compute is stopped), with its compute nodes and providers.
func vmwDeleteService(ctrl *cp.ControlPlane, host string) {
	ctx := context.Background()
	h := http.Header{"X-OpenStack-Nova-API-Version": {"2.53"}, "OpenStack-API-Version": {"compute 2.53"}}
	v, err := ctrl.Do(ctx, "GET", ctrl.NovaURL+"/os-services?binary=nova-compute&host="+host, nil, h)
	if err != nil {
		return
	}
	for _, svc := range asList(v, "services") {
		_, _ = ctrl.Do(ctx, "DELETE", fmt.Sprintf("%s/os-services/%v", ctrl.NovaURL, svc["id"]), nil, h)
	}
}

// sideRow is one line of a side-by-side table: the seconds and vCenter
// requests of one operation per side.
type sideRow struct {
	op    string
	secs  map[string]float64
	calls map[string]int
	top   map[string]string // the requests by method, most frequent first
}

func newSideRow(op string) sideRow {
	return sideRow{op: op, secs: map[string]float64{}, calls: map[string]int{}, top: map[string]string{}}
}

// sideSamples are the measurements of a side-by-side benchmark: every
// operation run on both sides, timed, with each side's requests counted
// at the shared simulator.
type sideSamples struct {
	vc       *vmwSim
	sides    []string // side names, also the simulator's client labels
	ops      []string // in the order first measured
	samples  map[string][]sideRow
	measured int
}

func newSideSamples(vc *vmwSim, sides ...string) *sideSamples {
	return &sideSamples{vc: vc, sides: sides, samples: map[string][]sideRow{}}
}

// measure runs op on every side and records it. Every other measurement
// the sides go in the opposite order, so that neither always runs in the
// other's wake.
func (ss *sideSamples) measure(b testing.TB, op string, run func(side string)) sideRow {
	b.Helper()
	row := newSideRow(op)
	order := slices.Clone(ss.sides)
	if ss.measured%2 == 1 {
		slices.Reverse(order)
	}
	ss.measured++
	for _, s := range order {
		before := ss.vc.counts(b)[s]
		t0 := time.Now()
		run(s)
		row.secs[s] = time.Since(t0).Seconds()
		row.calls[s], row.top[s] = countDelta(before, ss.vc.counts(b)[s])
	}
	if ss.samples[op] == nil {
		ss.ops = append(ss.ops, op)
	}
	ss.samples[op] = append(ss.samples[op], row)
	return row
}

// medians is one row per operation, in the order measured: the median
// seconds and requests of its samples per side, the last sample's
// requests by method; name gives the row's label from the operation and
// its number of samples.
func (ss *sideSamples) medians(name func(op string, n int) string) []sideRow {
	var rows []sideRow
	for _, op := range ss.ops {
		samples := ss.samples[op]
		row := newSideRow(name(op, len(samples)))
		for _, s := range ss.sides {
			var secs []float64
			var calls []int
			for _, r := range samples {
				secs, calls = append(secs, r.secs[s]), append(calls, r.calls[s])
			}
			slices.Sort(secs)
			slices.Sort(calls)
			row.secs[s], row.calls[s] = secs[len(secs)/2], calls[len(calls)/2]
			row.top[s] = samples[len(samples)-1].top[s]
		}
		rows = append(rows, row)
	}
	return rows
}

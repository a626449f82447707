//go:build integration

package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/integration/cp"
)

// holdProxy sits between the agent and the vCenter simulator and holds
// the SOAP requests that match an armed pattern: the request is never
// forwarded, the test is told (hits) and the agent waits until it dies.
type holdProxy struct {
	url  string
	hits chan string

	mu    sync.Mutex
	rules []*regexp.Regexp
}

func newHoldProxy(t *testing.T, target string) *holdProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	hp := &holdProxy{hits: make(chan string, 16)}
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: u.Scheme, Host: u.Host})
	proxy.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // the local simulator's self-signed certificate
	done := make(chan struct{})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			hp.mu.Lock()
			var hit string
			for _, re := range hp.rules {
				if m := re.FindSubmatch(body); m != nil {
					hit = string(m[len(m)-1])
				}
			}
			hp.mu.Unlock()
			if hit != "" {
				hp.hits <- hit
				select {
				case <-r.Context().Done():
				case <-done:
				}
				http.Error(w, "held", http.StatusServiceUnavailable)
				return
			}
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(func() { close(done); srv.Close() })
	pu, _ := url.Parse(srv.URL)
	pu.Path = u.Path
	hp.url = pu.String()
	return hp
}

// hold arms a pattern; its last group names the hit.
func (hp *holdProxy) hold(pattern string) {
	hp.mu.Lock()
	hp.rules = append(hp.rules, regexp.MustCompile(pattern))
	hp.mu.Unlock()
}

func (hp *holdProxy) clear() {
	hp.mu.Lock()
	hp.rules = nil
	hp.mu.Unlock()
}

func (hp *holdProxy) waitHit(t *testing.T, want string) {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case h := <-hp.hits:
			if h == want {
				return
			}
		case <-timeout:
			t.Fatalf("the agent never sent the held vCenter request for %s", want)
		}
	}
}

// workerRowOf returns the workers row of a resource (status, service id), or ok false.
func workerRowOf(ctx context.Context, t *testing.T, db *sql.DB, typ, id string) (status string, service sql.NullInt64, ok bool) {
	t.Helper()
	err := db.QueryRowContext(ctx, "SELECT status, service_id FROM workers WHERE resource_type = ? AND resource_id = ? AND deleted = 0", typ, id).Scan(&status, &service)
	if errors.Is(err, sql.ErrNoRows) {
		return "", service, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return status, service, true
}

// waitNoWorker waits until the resource has no workers row.
func waitNoWorker(ctx context.Context, t *testing.T, db *sql.DB, typ, id string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, svc, ok := workerRowOf(ctx, t, db, typ, id)
		if !ok {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s %s still has a workers row (%s, service %v)", typ, id, st, svc)
			return
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// TestVolumeRestartCleanup: the agent killed (SIGKILL) while a volume is
// being created, another deleted and a snapshot taken (their vCenter
// tasks held by a proxy, so each stays under way) leaves them as
// cinder-volume would: creating, deleting and creating, each with a
// workers row of its service. Restarted with the same host, the agent
// runs cinder-volume's init_host clean-up: the volume in creating ends in
// error, the delete is resumed (backing gone, volume deleted, quota
// released) and the snapshot ends in error, and no workers row is left.
// Then the API's POST /workers/cleanup (cinder-scheduler's work_cleanup
// casting do_cleanup to the agent) cleans a volume left in creating, and
// cinder-api, cinder-manage and `openstack volume service list` show the
// service up, and down once the agent stops.
func TestVolumeRestartCleanup(t *testing.T) {
	ctrl := controlPlane(t)
	if ctrl.CinderURL == "" || ctrl.CinderDB == "" {
		t.Fatalf("env.json of %s has no cinder_url or cinder_db: re-run up.sh", ctrl.Work)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	db, err := sql.Open("mysql", ctrl.CinderDB)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	vcEnv, vc := testVCenter(t)
	var hp *holdProxy
	for i, kv := range vcEnv {
		if v, ok := strings.CutPrefix(kv, "VCAGENT_VCENTER_URL="); ok {
			hp = newHoldProxy(t, v)
			vcEnv[i] = "VCAGENT_VCENTER_URL=" + hp.url
		}
	}
	if hp == nil {
		t.Fatal("no VCAGENT_VCENTER_URL in the simulator's settings")
	}
	suffix := fmt.Sprint(time.Now().Unix() % 100000)
	host := "vcagent-volrestart-" + suffix
	backendName := "volrestart" + suffix
	backend := host + "@" + backendName
	env := append(computeAgentEnv(ctrl, host), vcEnv...)
	env = append(env, "VCAGENT_ROLES=compute,volume", "VCAGENT_VOLUME_BACKEND="+backendName,
		"VCAGENT_VOLUME_DATABASE_URL="+ctrl.CinderDB, "VCAGENT_VOLUME_EXCHANGE="+ctrl.CinderExchange,
		"VCAGENT_VOLUME_LAZY_CREATE=false")
	agent := startAgent(t, env...)
	waitVolumeServiceState(ctx, t, ctrl, backend, "up", 90*time.Second)
	waitPool(ctx, t, ctrl, backend+"#"+backendName)
	typ := volumeTypeFor(ctx, t, ctrl, backendName)
	var serviceID int64
	if err := db.QueryRowContext(ctx, "SELECT id FROM services WHERE host = ? AND `binary` = 'cinder-volume' AND deleted = 0", backend).Scan(&serviceID); err != nil {
		t.Fatal(err)
	}
	usedBefore := volumeQuotaInUse(ctx, t, ctrl)

	newVolume := func(t *testing.T, name string, wait bool) string {
		t.Helper()
		v, err := ctrl.CinderPOST(ctx, "/volumes", map[string]any{"volume": map[string]any{"name": name, "size": 1, "volume_type": typ}})
		if err != nil {
			t.Fatal(err)
		}
		id, _ := v["volume"].(map[string]any)["id"].(string)
		t.Cleanup(func() {
			dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
			defer dcancel()
			if _, err := ctrl.CinderDELETE(dctx, "/volumes/"+id); err == nil {
				_, _ = ctrl.CinderVolumeStatus(dctx, id, "deleting", "available", "error")
			}
		})
		if wait {
			if st, err := ctrl.CinderVolumeStatus(ctx, id, "creating"); err != nil || st != "available" {
				t.Fatalf("volume %s: %q, %v; want available", id, st, err)
			}
		}
		return id
	}
	// a volume to delete and one to snapshot, both with backings (eager create)
	toDelete := newVolume(t, "vcagent-restart-delete", true)
	toSnap := newVolume(t, "vcagent-restart-snap", true)
	delBacking, err := vc.FindBacking(ctx, toDelete)
	if err != nil {
		t.Fatal(err)
	}

	// three operations under way, their vCenter tasks held
	hp.hold(`<CreateVM_Task\b[\s\S]*?<name>volume-([^<]*)</name>`)
	hp.hold(`<CloneVM_Task\b[\s\S]*?<name>snapshot-([^<]*)</name>`)
	hp.hold(`<Destroy_Task\b[\s\S]*?<_this type="VirtualMachine">(` + regexp.QuoteMeta(delBacking.Ref.Value) + `)</_this>`)
	creating := newVolume(t, "vcagent-restart-creating", false)
	hp.waitHit(t, creating)
	if _, err := ctrl.CinderDELETE(ctx, "/volumes/"+toDelete); err != nil {
		t.Fatal(err)
	}
	hp.waitHit(t, delBacking.Ref.Value)
	s, err := ctrl.CinderPOST(ctx, "/snapshots", map[string]any{"snapshot": map[string]any{"volume_id": toSnap, "name": "vcagent-restart-snap"}})
	if err != nil {
		t.Fatal(err)
	}
	snapID, _ := s["snapshot"].(map[string]any)["id"].(string)
	t.Cleanup(func() { _, _ = ctrl.CinderDELETE(context.Background(), "/snapshots/"+snapID) })
	hp.waitHit(t, snapID)

	// the agent dies with the three under way
	if err := agent.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-agent.done
	hp.clear()
	for _, c := range []struct{ typ, id, status string }{{"Volume", creating, "creating"}, {"Volume", toDelete, "deleting"}, {"Snapshot", snapID, "creating"}} {
		st, svc, ok := workerRowOf(ctx, t, db, c.typ, c.id)
		if !ok || st != c.status || !svc.Valid || svc.Int64 != serviceID {
			t.Fatalf("after the kill: %s %s workers row %v %q service %v; want %q of service %d", c.typ, c.id, ok, st, svc, c.status, serviceID)
		}
	}
	if st := volumeStatus(ctx, t, ctrl, creating); st != "creating" {
		t.Fatalf("volume %s after the kill: %q, want creating", creating, st)
	}
	if st := volumeStatus(ctx, t, ctrl, toDelete); st != "deleting" {
		t.Fatalf("volume %s after the kill: %q, want deleting", toDelete, st)
	}
	t.Logf("killed the agent with volume %s creating, %s deleting, snapshot %s creating", creating, toDelete, snapID)

	// restarted: init_host's clean-up
	restarted := time.Now()
	agent = startAgent(t, env...)
	if st, err := ctrl.CinderVolumeStatus(ctx, creating, "creating"); err != nil || st != "error" {
		t.Errorf("volume %s left creating: %q, %v after the restart; want error", creating, st, err)
	}
	if st, err := ctrl.CinderVolumeStatus(ctx, toDelete, "deleting"); err != nil || st != "deleted" {
		t.Errorf("volume %s left deleting: %q, %v after the restart; want it deleted", toDelete, st, err)
	}
	if st := snapshotStatus(ctx, t, ctrl, snapID, "creating"); st != "error" {
		t.Errorf("snapshot %s left creating: %q after the restart; want error", snapID, st)
	}
	t.Logf("clean-up done %s after the restart", time.Since(restarted).Round(time.Millisecond))
	for _, c := range []struct{ typ, id string }{{"Volume", creating}, {"Volume", toDelete}, {"Snapshot", snapID}} {
		waitNoWorker(ctx, t, db, c.typ, c.id)
	}
	if _, err := vc.GetBacking(ctx, delBacking.Ref); !errors.Is(err, vcenter.ErrNotFound) {
		t.Errorf("the backing of the deleted volume %s is still there: %v", toDelete, err)
	}
	if _, err := vc.FindBacking(ctx, creating); !errors.Is(err, vcenter.ErrNotFound) {
		t.Errorf("the volume left in creating has a backing: %v", err)
	}
	// the error volume and snapshot can be deleted
	if _, err := ctrl.CinderDELETE(ctx, "/snapshots/"+snapID); err != nil {
		t.Error(err)
	} else if st := snapshotStatus(ctx, t, ctrl, snapID, "deleting", "error"); st != "deleted" {
		t.Errorf("snapshot %s after delete: %q", snapID, st)
	}
	if _, err := ctrl.CinderDELETE(ctx, "/volumes/"+creating); err != nil {
		t.Error(err)
	} else if st, err := ctrl.CinderVolumeStatus(ctx, creating, "deleting", "error"); err != nil || st != "deleted" {
		t.Errorf("volume %s after delete: %q, %v", creating, st, err)
	}
	if _, err := ctrl.CinderDELETE(ctx, "/volumes/"+toSnap); err != nil {
		t.Error(err)
	} else if st, err := ctrl.CinderVolumeStatus(ctx, toSnap, "deleting", "available"); err != nil || st != "deleted" {
		t.Errorf("volume %s after delete: %q, %v", toSnap, st, err)
	}
	if used := volumeQuotaInUse(ctx, t, ctrl); used != usedBefore {
		// other tests share the project: only log a difference
		t.Logf("quota in use %v, before the test %v", used, usedBefore)
	}

	t.Run("workers-cleanup-api", func(t *testing.T) {
		// a volume left creating with a workers row of this service, as a
		// create that died leaves it; POST /workers/cleanup reaches the
		// agent through cinder-scheduler's work_cleanup and do_cleanup.
		// (The request names the service by host: cinder's service query
		// knows no service_id filter, so a request by service_id finds no
		// service and cleans nothing.)
		id := newVolume(t, "vcagent-restart-api", true)
		if _, err := db.ExecContext(ctx, "UPDATE volumes SET status = 'creating' WHERE id = ?", id); err != nil {
			t.Fatal(err)
		}
		if _, err := db.ExecContext(ctx, "INSERT INTO workers (created_at, updated_at, deleted, resource_type, resource_id, status, service_id, race_preventer) VALUES (UTC_TIMESTAMP(), UTC_TIMESTAMP(6) - INTERVAL 1 MINUTE, 0, 'Volume', ?, 'creating', ?, 1)", id, serviceID); err != nil {
			t.Fatal(err)
		}
		res, err := ctrl.CinderPOST(ctx, "/workers/cleanup", map[string]any{"host": backend, "binary": "cinder-volume", "is_up": true, "resource_id": id})
		if err != nil {
			t.Fatal(err)
		}
		cleaning := asList(res, "cleaning")
		if len(cleaning) != 1 || cleaning[0]["host"] != backend {
			t.Errorf("workers cleanup answer %v: want the agent's service cleaning", res)
		}
		if st, err := ctrl.CinderVolumeStatus(ctx, id, "creating"); err != nil || st != "error" {
			t.Errorf("volume %s after the workers cleanup: %q, %v; want error", id, st, err)
		}
		waitNoWorker(ctx, t, db, "Volume", id)
	})

	t.Run("service-list", func(t *testing.T) {
		checkServiceLists(ctx, t, ctrl, backend, true)
		if err := agent.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		<-agent.done
		within := time.Duration(max(ctrl.ServiceDownTime, 20)+30) * time.Second
		d := waitVolumeServiceState(ctx, t, ctrl, backend, "down", within)
		t.Logf("cinder-volume %s down %s after the agent stopped", backend, d.Round(time.Millisecond))
		checkServiceLists(ctx, t, ctrl, backend, false)
	})
}

// checkServiceLists: cinder-manage service list (":-)" or "XXX") and
// openstack volume service list ("up" or "down") agree on backend.
func checkServiceLists(ctx context.Context, t *testing.T, ctrl *cp.ControlPlane, backend string, up bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	wantManage, wantCLI := "XXX", "down"
	if up {
		wantManage, wantCLI = ":-)", "up"
	}
	for {
		out, err := ctrl.CinderManage(ctx, "service", "list")
		if err != nil {
			t.Fatal(err)
		}
		line := ""
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) > 1 && f[0] == "cinder-volume" && f[1] == backend {
				line = l
			}
		}
		if strings.Contains(line, wantManage) {
			t.Logf("cinder-manage service list: %s", strings.Join(strings.Fields(line), " "))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cinder-manage service list: no cinder-volume %s %s:\n%s", backend, wantManage, out)
		}
		time.Sleep(time.Second)
	}
	out, err := ctrl.OpenStack(ctx, "--os-endpoint", ctrl.CinderURL, "--os-volume-api-version", "3", "volume", "service", "list", "--service", "cinder-volume", "--host", backend, "-f", "value", "-c", "Host", "-c", "State", "-c", "Status")
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(out); len(f) != 3 || f[0] != backend || f[1] != "enabled" || f[2] != wantCLI {
		t.Errorf("openstack volume service list --host %s: %q, want %s enabled %s", backend, out, backend, wantCLI)
	} else {
		t.Logf("openstack volume service list: %s", strings.TrimSpace(out))
	}
}

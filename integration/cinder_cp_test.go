//go:build integration

package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vcagent/vcagent/integration/cp"
)

// TestCinderControlPlane: the control plane runs the real cinder-api and
// cinder-scheduler (Debian's Zed packages) that the volume role will serve
// as cinder-volume: the scheduler is up in cinder's API and in cinder-manage,
// and with no volume service to place it on, a new volume ends in "error"
// by the real scheduler's NoValidBackend — the answer the volume role is to
// change.
func TestCinderControlPlane(t *testing.T) {
	ctrl := controlPlane(t)
	if ctrl.CinderURL == "" {
		t.Fatalf("env.json of %s has no cinder_url: a control plane from before cinder; re-run up.sh", ctrl.Work)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	t.Run("env", func(t *testing.T) {
		if ctrl.CinderExchange != "openstack" {
			t.Errorf("cinder_exchange = %q, want cinder's default \"openstack\"", ctrl.CinderExchange)
		}
		if want := "/v3/" + ctrl.Project; ctrl.Project == "" || !strings.HasSuffix(ctrl.CinderURL, want) {
			t.Errorf("cinder_url = %q, want it to end in %q", ctrl.CinderURL, want)
		}
		if !strings.Contains(ctrl.CinderDB, "@unix("+ctrl.MySQLSocket+")/cinder?") {
			t.Errorf("cinder_db = %q: not the cinder database over %s", ctrl.CinderDB, ctrl.MySQLSocket)
		}
		conf, err := os.ReadFile(ctrl.CinderConf)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"transport_url = " + ctrl.TransportURL + "\n", "control_exchange = openstack\n"} {
			if !strings.Contains(string(conf), want) {
				t.Errorf("%s lacks %q", ctrl.CinderConf, strings.TrimSpace(want))
			}
		}
	})

	t.Run("os-services", func(t *testing.T) {
		s, err := ctrl.CinderGET(ctx, "/os-services")
		if err != nil {
			t.Fatal(err)
		}
		var sched []string
		for _, svc := range asList(s, "services") {
			if svc["binary"] == "cinder-scheduler" {
				sched = append(sched, fmt.Sprintf("%v:%v:%v", svc["host"], svc["status"], svc["state"]))
				if svc["state"] == "up" && svc["status"] == "enabled" {
					return
				}
			}
		}
		t.Fatalf("no enabled cinder-scheduler up in os-services: %v", sched)
	})

	t.Run("noauth", func(t *testing.T) {
		// as nova's noauth2 here: only user "admin" is an admin
		h := http.Header{"X-Auth-Token": {"demo:demo"}, "OpenStack-API-Version": {"volume 3.0"}}
		root := strings.TrimSuffix(ctrl.CinderURL, "/"+ctrl.Project)
		_, err := ctrl.Do(ctx, http.MethodGet, root+"/os-services", nil, h)
		if cp.StatusCode(err) != http.StatusForbidden {
			t.Errorf("os-services as demo:demo: %v, want HTTP 403", err)
		}
		if _, err := ctrl.Do(ctx, http.MethodGet, root+"/volumes", nil, h); err != nil {
			t.Errorf("volumes as demo:demo: %v", err)
		}
	})

	t.Run("cinder-manage", func(t *testing.T) {
		out, err := ctrl.CinderManage(ctx, "service", "list")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "cinder-scheduler") {
			t.Fatalf("cinder-manage service list shows no cinder-scheduler:\n%s", out)
		}
	})

	t.Run("create-without-backend", func(t *testing.T) {
		body := map[string]any{"name": "cp-test-no-backend", "size": 1}
		if up := upVolumeServices(ctx, t, ctrl); len(up) > 0 {
			// Another test's volume service is up: a type no backend reports keeps the
			// scheduler's answer the same.
			typ := cinderNoBackendType(ctx, t, ctrl)
			t.Logf("volume services up (%v): using volume type %s (volume_backend_name none has)", up, typ)
			body["volume_type"] = typ
		}
		start := time.Now()
		v, err := ctrl.CinderPOST(ctx, "/volumes", map[string]any{"volume": body})
		if err != nil {
			t.Fatal(err)
		}
		vol, _ := v["volume"].(map[string]any)
		id, _ := vol["id"].(string)
		if id == "" {
			t.Fatalf("no volume id in %v", v)
		}
		t.Cleanup(func() {
			dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
			defer dcancel()
			if _, err := ctrl.CinderDELETE(dctx, "/volumes/"+id); err != nil {
				t.Errorf("deleting volume %s: %v", id, err)
				return
			}
			if st, err := ctrl.CinderVolumeStatus(dctx, id, "deleting", "error", "error_deleting"); err != nil || st != "deleted" {
				t.Errorf("volume %s after delete: %q, %v", id, st, err)
			}
		})
		st, err := ctrl.CinderVolumeStatus(ctx, id, "creating")
		if err != nil {
			t.Fatal(err)
		}
		if st != "error" {
			t.Fatalf("volume %s: status %q, want error (no volume service to place it on)", id, st)
		}
		// the scheduler's reason, as cinder tells the user (microversion >= 3.3)
		m, err := ctrl.CinderGET(ctx, "/messages?resource_uuid="+id)
		if err != nil {
			t.Fatal(err)
		}
		var msgs []string
		for _, msg := range asList(m, "messages") {
			um, _ := msg["user_message"].(string)
			msgs = append(msgs, um)
			if strings.Contains(um, "schedule allocate volume") {
				t.Logf("volume %s in error after %s: %s", id, time.Since(start).Round(10*time.Millisecond), um)
				return
			}
		}
		t.Fatalf("volume %s: no scheduler message, messages: %q", id, msgs)
	})

	t.Run("nova-to-cinder", func(t *testing.T) {
		// nova-api's [cinder] section: its volume proxy (microversion < 2.36) lists
		// cinder's volumes through the fixed endpoint
		h := http.Header{"OpenStack-API-Version": {"compute 2.1"}, "X-OpenStack-Nova-API-Version": {"2.1"}}
		if _, err := ctrl.Do(ctx, http.MethodGet, ctrl.NovaURL+"/os-volumes", nil, h); err != nil {
			if startedBefore(ctrl.Pids["nova-api"], ctrl.Pids["cinder-api"]) {
				t.Fatalf("nova-api cannot reach cinder-api in %s; if this control plane was extended by up.sh, restart it (down.sh, up.sh): nova.conf's [cinder] needs a nova-api restart): %v", ctrl.Work, err)
			}
			t.Fatal(err)
		}
	})
}

// upVolumeServices lists the cinder-volume services up in cinder's API.
func upVolumeServices(ctx context.Context, t testing.TB, ctrl *cp.ControlPlane) []string {
	t.Helper()
	s, err := ctrl.CinderGET(ctx, "/os-services?binary=cinder-volume")
	if err != nil {
		t.Fatal(err)
	}
	var up []string
	for _, svc := range asList(s, "services") {
		if svc["state"] == "up" {
			up = append(up, fmt.Sprint(svc["host"]))
		}
	}
	return up
}

// cinderNoBackendType creates a private volume type whose volume_backend_name no
// backend reports (deleted at the end of the test).
func cinderNoBackendType(ctx context.Context, t testing.TB, ctrl *cp.ControlPlane) string {
	t.Helper()
	name := fmt.Sprintf("cp-test-no-backend-%d", time.Now().UnixNano())
	v, err := ctrl.CinderPOST(ctx, "/types", map[string]any{"volume_type": map[string]any{
		"name": name, "os-volume-type-access:is_public": false,
		"extra_specs": map[string]any{"volume_backend_name": name},
	}})
	if err != nil {
		t.Fatal(err)
	}
	typ, _ := v["volume_type"].(map[string]any)
	id, _ := typ["id"].(string)
	t.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
		defer dcancel()
		// after the volume's own cleanup (t.Cleanup runs last-in first-out)
		if _, err := ctrl.CinderDELETE(dctx, "/types/"+id); err != nil {
			t.Logf("deleting volume type %s: %v", name, err)
		}
	})
	return name
}

// startedBefore: process a started before process b (start times from /proc; false
// when either is unknown).
func startedBefore(a, b int) bool {
	sa, sb := procStartTicks(a), procStartTicks(b)
	return sa > 0 && sb > 0 && sa < sb
}

func procStartTicks(pid int) int64 {
	if pid <= 0 {
		return 0
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) <= 19 {
		return 0
	}
	var n int64
	_, _ = fmt.Sscan(f[19], &n)
	return n
}

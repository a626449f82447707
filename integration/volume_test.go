//go:build integration

package integration

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vcagent/vcagent/integration/cp"
)

// volumeServices returns cinder's cinder-volume services on host (the
// backend host, <host>@<backend>).
func volumeServices(ctx context.Context, t testing.TB, ctrl *cp.ControlPlane, host string) []map[string]any {
	t.Helper()
	s, err := ctrl.CinderGET(ctx, "/os-services?binary=cinder-volume&host="+host)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, svc := range asList(s, "services") {
		if svc["host"] == host {
			out = append(out, svc)
		}
	}
	return out
}

// waitVolumeServiceState polls cinder's API until host's cinder-volume
// service has the wanted state ("up" or "down").
func waitVolumeServiceState(ctx context.Context, t testing.TB, ctrl *cp.ControlPlane, host, state string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		svcs := volumeServices(ctx, t, ctrl, host)
		if len(svcs) > 1 {
			t.Fatalf("%d cinder-volume services for %s: %v", len(svcs), host, svcs)
		}
		if len(svcs) == 1 && svcs[0]["state"] == state {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("service cinder-volume on %s not %s within %s: %v", host, state, within, svcs)
		}
		time.Sleep(time.Second)
	}
}

// TestVolumeServesRealCinder: the agent with the compute and volume roles
// registers as cinder-volume <host>@vmware in the real cinder's database,
// cinder-api and cinder-manage show it up with the Zed versions, the real
// cinder-scheduler places a new volume on it (the capabilities reached
// it), the volume becomes available (lazily, as the VMDK driver) and goes
// away on delete, and the service is down once the agent stops.
func TestVolumeServesRealCinder(t *testing.T) {
	ctrl := controlPlane(t)
	if ctrl.CinderURL == "" || ctrl.CinderDB == "" {
		t.Fatalf("env.json of %s has no cinder_url or cinder_db: a control plane from before cinder; re-run up.sh", ctrl.Work)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	host := "vcagent-vol-" + fmt.Sprint(time.Now().Unix()%100000)
	backend := host + "@vmware"
	env := append(computeAgentEnv(ctrl, host),
		"VCAGENT_ROLES=compute,volume",
		"VCAGENT_VOLUME_DATABASE_URL="+ctrl.CinderDB,
		"VCAGENT_VOLUME_EXCHANGE="+ctrl.CinderExchange,
		"VCAGENT_NOTIFICATION_DRIVER=messagingv2",
	)
	// cinder-volume's notifications, on cinder's exchange
	raw := rawPublisher(t, ctrl.TransportURL)
	notifications := raw.replyQueue(t)
	for _, key := range []string{"notifications.info", "notifications.error"} {
		if err := raw.ch.QueueBind(notifications.name, key, ctrl.CinderExchange, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	started := time.Now()
	agent := startAgent(t, env...)
	upAfter := waitVolumeServiceState(ctx, t, ctrl, backend, "up", 90*time.Second)
	t.Logf("cinder-volume %s up after %s (%s after the agent started)", backend, upAfter.Round(time.Millisecond), time.Since(started).Round(time.Millisecond))

	t.Run("os-services", func(t *testing.T) {
		svc := volumeServices(ctx, t, ctrl, backend)[0]
		if svc["status"] != "enabled" || svc["zone"] != "nova" {
			t.Errorf("service %v: want enabled in zone nova", svc)
		}
	})

	t.Run("cinder-manage", func(t *testing.T) {
		// cinder-manage counts a service up only once it has heartbeaten
		// (updated_at set), one report_interval after it started, as with
		// the Python cinder-volume; the API counts its creation already.
		deadline := time.Now().Add(60 * time.Second)
		for {
			out, err := ctrl.CinderManage(ctx, "service", "list")
			if err != nil {
				t.Fatal(err)
			}
			line := ""
			for _, l := range strings.Split(out, "\n") {
				if f := strings.Fields(l); len(f) > 0 && f[0] == "cinder-volume" && strings.Contains(l, " "+backend+" ") {
					line = l
				}
			}
			if line == "" {
				t.Fatalf("cinder-manage service list shows no cinder-volume %s:\n%s", backend, out)
			}
			if !strings.Contains(line, ":-)") && time.Now().Before(deadline) {
				time.Sleep(time.Second)
				continue
			}
			for _, want := range []string{" nova ", " enabled ", ":-)", " 3.18 ", " 1.39"} {
				if !strings.Contains(line+" ", want) {
					t.Errorf("cinder-manage service list: %q lacks %q", line, want)
				}
			}
			return
		}
	})

	t.Run("scheduler-pools", func(t *testing.T) {
		// the capabilities the agent reported, as the real scheduler keeps them
		deadline := time.Now().Add(30 * time.Second)
		for {
			p, err := ctrl.CinderGET(ctx, "/scheduler-stats/get_pools?detail=true")
			if err != nil {
				t.Fatal(err)
			}
			for _, pool := range asList(p, "pools") {
				if pool["name"] != backend+"#vmware" {
					continue
				}
				caps, _ := pool["capabilities"].(map[string]any)
				total, _ := caps["total_capacity_gb"].(float64)
				if caps["volume_backend_name"] != "vmware" || caps["vendor_name"] != "VMware" || caps["storage_protocol"] != "vmdk" || total <= 0 {
					t.Errorf("pool %s capabilities %v", pool["name"], caps)
				}
				t.Logf("scheduler pool %s: total %v GB, free %v GB", pool["name"], caps["total_capacity_gb"], caps["free_capacity_gb"])
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("cinder-scheduler has no pool %s#vmware: %v", backend, p)
			}
			time.Sleep(time.Second)
		}
	})

	t.Run("create-and-delete", func(t *testing.T) {
		usedBefore := volumeQuotaInUse(ctx, t, ctrl)
		v, err := ctrl.CinderPOST(ctx, "/volumes", map[string]any{"volume": map[string]any{"name": "vcagent-vol-test", "size": 1}})
		if err != nil {
			t.Fatal(err)
		}
		vol, _ := v["volume"].(map[string]any)
		id, _ := vol["id"].(string)
		if id == "" {
			t.Fatalf("no volume id in %v", v)
		}
		deleted := false
		t.Cleanup(func() {
			if !deleted {
				dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
				defer dcancel()
				_, _ = ctrl.CinderDELETE(dctx, "/volumes/"+id)
			}
		})
		created := time.Now()
		st, err := ctrl.CinderVolumeStatus(ctx, id, "creating")
		if err != nil {
			t.Fatal(err)
		}
		got, err := ctrl.CinderGET(ctx, "/volumes/"+id)
		if err != nil {
			t.Fatal(err)
		}
		vol, _ = got["volume"].(map[string]any)
		if st != "available" {
			m, _ := ctrl.CinderGET(ctx, "/messages?resource_uuid="+id)
			t.Fatalf("volume %s: status %q, want available; volume %v; messages %v", id, st, vol, m)
		}
		if h := vol["os-vol-host-attr:host"]; h != backend+"#vmware" {
			t.Errorf("volume on %v, want %s#vmware", h, backend)
		}
		t.Logf("volume %s available on %v after %s", id, vol["os-vol-host-attr:host"], time.Since(created).Round(time.Millisecond))

		// extending a volume without a backing: only the size and the quota change
		if _, err := ctrl.CinderPOST(ctx, "/volumes/"+id+"/action", map[string]any{"os-extend": map[string]any{"new_size": 2}}); err != nil {
			t.Fatal(err)
		}
		if st, err := ctrl.CinderVolumeStatus(ctx, id, "extending"); err != nil || st != "available" {
			t.Errorf("volume %s after extend: %q, %v; want available", id, st, err)
		}
		if g, err := ctrl.CinderGET(ctx, "/volumes/"+id); err != nil || g["volume"].(map[string]any)["size"] != float64(2) {
			t.Errorf("volume %s after extend: %v, %v; want size 2", id, g, err)
		}

		if _, err := ctrl.CinderDELETE(ctx, "/volumes/"+id); err != nil {
			t.Fatal(err)
		}
		deleted = true
		st, err = ctrl.CinderVolumeStatus(ctx, id, "deleting", "available")
		if err != nil {
			t.Fatal(err)
		}
		if st != "deleted" {
			t.Fatalf("volume %s after delete: %q, want it gone", id, st)
		}
		if used := volumeQuotaInUse(ctx, t, ctrl); used != usedBefore {
			t.Errorf("quota in use after the delete: %v, before the create: %v", used, usedBefore)
		}

		// volume.create.start/end from the create flow (publisher volume.<volume host>),
		// volume.delete.start/end from the manager (volume.<host>@<backend>)
		want := map[string]string{
			"volume.create.start": "volume." + backend + "#vmware", "volume.create.end": "volume." + backend + "#vmware",
			"volume.delete.start": "volume." + backend, "volume.delete.end": "volume." + backend,
		}
		for len(want) > 0 {
			n := notifications.next(t)
			payload, _ := n["payload"].(map[string]any)
			if payload["volume_id"] != id {
				continue
			}
			event, _ := n["event_type"].(string)
			if pub, ok := want[event]; ok {
				if n["publisher_id"] != pub || payload["host"] != backend+"#vmware" {
					t.Errorf("%s: publisher %v, host %v; want %s, %s#vmware", event, n["publisher_id"], payload["host"], pub, backend)
				}
				if event == "volume.create.end" && payload["status"] != "available" {
					t.Errorf("volume.create.end payload %v", payload)
				}
				delete(want, event)
			}
		}
	})

	t.Run("down-after-stop", func(t *testing.T) {
		if err := agent.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		<-agent.done
		within := time.Duration(max(ctrl.ServiceDownTime, 20)+30) * time.Second
		d := waitVolumeServiceState(ctx, t, ctrl, backend, "down", within)
		t.Logf("cinder-volume %s down %s after the agent stopped", backend, d.Round(time.Millisecond))
	})
}

// volumeQuotaInUse returns the control plane project's volumes and
// gigabytes in use, as cinder's quota usages say.
func volumeQuotaInUse(ctx context.Context, t testing.TB, ctrl *cp.ControlPlane) [2]float64 {
	t.Helper()
	q, err := ctrl.CinderGET(ctx, "/os-quota-sets/"+ctrl.Project+"?usage=true")
	if err != nil {
		t.Fatal(err)
	}
	set, _ := q["quota_set"].(map[string]any)
	var out [2]float64
	for i, res := range []string{"volumes", "gigabytes"} {
		r, _ := set[res].(map[string]any)
		out[i], _ = r["in_use"].(float64)
	}
	return out
}

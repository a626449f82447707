//go:build integration

package integration

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/vcagent/vcagent/integration/cp"
)

// TestBackupRotatesThroughNovaAPI drives backup_instance through the real
// nova API, twice with backup_type daily and rotation 1, and checks what
// nova-compute with the VMware driver does: each createBackup makes an
// active streamOptimized image in glance, compute_backup_instance
// succeeds, the server stays ACTIVE and running; then _rotate_backups asks
// glance for the server's backups (image_type backup, backup_type,
// instance_uuid, newest first).
//
// The VMware driver's upload_image_stream_optimized updates the image
// without purging its properties (nova's IMAGE_API.update, purge_props
// False; TestAgentMatchesPythonVMwareCompute compares the snapshot's
// properties with the Python driver's), so image_type, backup_type and
// instance_uuid stay and the rotation finds the backups: after the second
// one, with rotation 1, the first is rotated out of glance.
func TestBackupRotatesThroughNovaAPI(t *testing.T) {
	ctrl, _, agent, host, image := computeAgentWithImage(t, "vcagent-backup-", "VCAGENT_LOG_LEVEL=debug")
	ctx := context.Background()
	gh := http.Header{ctrl.AuthHeader: {ctrl.Token}}
	suffix := fmt.Sprint(time.Now().UnixNano() % 1000000)

	// A flavor without a root disk size keeps the disk at the image's size.
	flavorID := "vcagent-backup-" + suffix
	if _, err := ctrl.NovaPOST(ctx, "/flavors", map[string]any{"flavor": map[string]any{
		"name": flavorID, "id": flavorID, "vcpus": 1, "ram": 64, "disk": 0,
	}}); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = ctrl.NovaDELETE(ctx, "/flavors/"+flavorID) }()

	created, err := ctrl.NovaPOST(ctx, "/servers", map[string]any{"server": map[string]any{
		"name": "backup-a", "imageRef": image, "flavorRef": flavorID, "networks": "none", "host": host,
	}})
	if err != nil {
		t.Fatal(err)
	}
	id := created["server"].(map[string]any)["id"].(string)
	defer func() {
		if _, err := ctrl.NovaDELETE(ctx, "/servers/"+id); err != nil && cp.StatusCode(err) != http.StatusNotFound {
			t.Errorf("delete: %v", err)
		}
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
			if _, err := ctrl.NovaGET(ctx, "/servers/"+id); cp.StatusCode(err) == http.StatusNotFound {
				return
			}
		}
		t.Errorf("server %s not deleted within 60 s", id)
	}()
	waitServer(t, ctrl, id, 120*time.Second, settled("ACTIVE"))

	backups := func() []map[string]any {
		t.Helper()
		res, err := ctrl.Do(ctx, "GET", ctrl.GlanceURL+"/v2/images?image_type=backup&instance_uuid="+id, nil, gh)
		if err != nil {
			t.Fatal(err)
		}
		return asList(res, "images")
	}
	var made []string
	defer func() {
		for _, im := range made {
			_, _ = ctrl.Do(ctx, "DELETE", ctrl.GlanceURL+"/v2/images/"+im, nil, gh)
		}
	}()
	backup := func(name string) string {
		t.Helper()
		t0 := time.Now()
		res, err := ctrl.NovaPOST(ctx, "/servers/"+id+"/action", map[string]any{"createBackup": map[string]any{
			"name": name, "backup_type": "daily", "rotation": 1,
		}})
		if err != nil {
			t.Fatalf("createBackup: %v", err)
		}
		imageID, _ := res["image_id"].(string)
		if imageID == "" {
			t.Fatalf("createBackup answered %v", res)
		}
		made = append(made, imageID)
		time.Sleep(100 * time.Millisecond)
		waitServer(t, ctrl, id, 120*time.Second, settled("ACTIVE"))
		var im map[string]any
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(250 * time.Millisecond) {
			if im, err = ctrl.Do(ctx, "GET", ctrl.GlanceURL+"/v2/images/"+imageID, nil, gh); err != nil {
				t.Fatalf("backup image %s: %v", imageID, err)
			}
			if im["status"] == "active" || time.Now().After(deadline) {
				break
			}
		}
		for k, want := range map[string]any{"status": "active", "disk_format": "vmdk", "vmware_disktype": "streamOptimized",
			"vmware_image_version": "1", "image_type": "backup", "backup_type": "daily", "instance_uuid": id} {
			if im[k] != want {
				t.Errorf("backup image %s: %s = %v, want %v", name, k, im[k], want)
			}
		}
		t.Logf("%s: image %s active after %s", name, imageID, time.Since(t0).Round(time.Millisecond))
		return imageID
	}

	// rotation waits for _rotate_backups' query of the backups: found is
	// what glance listed, excess what it deletes.
	rotation := func(found, excess int) {
		t.Helper()
		line := agent.waitLog(t, 30*time.Second, func(m map[string]any) bool {
			return m["message"] == "found backup images" && m["instance_uuid"] == id && m["num_images"] == float64(found)
		})
		if line["rotation"] != float64(1) {
			t.Errorf("rotation: %v", line)
		}
		if excess > 0 {
			agent.waitLog(t, 30*time.Second, func(m map[string]any) bool {
				return m["message"] == "rotating out backups" && m["instance_uuid"] == id && m["excess"] == float64(excess)
			})
		}
	}
	first := backup("backup-a-1")
	waitActionEvent(t, ctrl, id, "createBackup", "compute_backup_instance", "Success")
	rotation(1, 0)
	second := backup("backup-a-2")
	rotation(2, 1)
	// The oldest backup is gone from glance, the newest stays.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		_, err := ctrl.Do(ctx, "GET", ctrl.GlanceURL+"/v2/images/"+first, nil, gh)
		if cp.StatusCode(err) == http.StatusNotFound {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backup %s after the rotation: %v, want it rotated out (404)", first, err)
		}
	}
	if got, err := ctrl.Do(ctx, "GET", ctrl.GlanceURL+"/v2/images/"+second, nil, gh); err != nil || got["status"] != "active" {
		t.Errorf("newest backup %s after the rotation: %v %v, want active", second, got["status"], err)
	}
	if left := backups(); len(left) != 1 || left[0]["id"] != second {
		t.Errorf("the server's backups after the rotation: %v, want only %s", left, second)
	}
	s, err := ctrl.NovaGET(ctx, "/servers/"+id)
	if err != nil {
		t.Fatal(err)
	}
	if srv := s["server"].(map[string]any); srv["status"] != "ACTIVE" || srv["OS-EXT-STS:power_state"] != float64(1) {
		t.Errorf("server after the backups: %v power %v", srv["status"], srv["OS-EXT-STS:power_state"])
	}
}

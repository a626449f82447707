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
// The VMware driver's upload_image_stream_optimized replaces the image's
// properties (nova's IMAGE_API.update purges the others, image_type,
// backup_type and instance_uuid among them; TestAgentMatchesPythonVMwareCompute
// compares the snapshot's image_type with the Python driver's), so the
// rotation's query finds no backup and deletes nothing: with nova-compute
// and the VMware driver both backups remain, and so they do here.
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
			"vmware_image_version": "1", "image_type": nil, "backup_type": nil, "instance_uuid": nil} {
			if im[k] != want {
				t.Errorf("backup image %s: %s = %v, want %v", name, k, im[k], want)
			}
		}
		t.Logf("%s: image %s active after %s", name, imageID, time.Since(t0).Round(time.Millisecond))
		return imageID
	}

	rotation := func() {
		t.Helper()
		line := agent.waitLog(t, 30*time.Second, func(m map[string]any) bool {
			return m["message"] == "found backup images" && m["instance_uuid"] == id
		})
		if line["num_images"] != float64(len(backups())) || line["rotation"] != float64(1) {
			t.Errorf("rotation: %v", line)
		}
	}
	first := backup("backup-a-1")
	waitActionEvent(t, ctrl, id, "createBackup", "compute_backup_instance", "Success")
	rotation()
	second := backup("backup-a-2")
	rotation()
	for _, im := range []string{first, second} {
		if got, err := ctrl.Do(ctx, "GET", ctrl.GlanceURL+"/v2/images/"+im, nil, gh); err != nil || got["status"] != "active" {
			t.Errorf("backup %s after the rotation: %v %v, want active (nothing rotated out)", im, got["status"], err)
		}
	}
	s, err := ctrl.NovaGET(ctx, "/servers/"+id)
	if err != nil {
		t.Fatal(err)
	}
	if srv := s["server"].(map[string]any); srv["status"] != "ACTIVE" || srv["OS-EXT-STS:power_state"] != float64(1) {
		t.Errorf("server after the backups: %v power %v", srv["status"], srv["OS-EXT-STS:power_state"])
	}
}

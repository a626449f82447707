package compute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/cloud"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// backupImages is a glance with a list of backups, newest first.
type backupImages struct {
	snapImages
	listed    []map[string]string
	backups   []cloud.Image
	failDel   map[string]error
	sortKey   string
	sortDir   string
	listError error
}

func (g *backupImages) ListImages(_ context.Context, _ string, filters map[string]string, sortKey, sortDir string) ([]cloud.Image, error) {
	g.listed = append(g.listed, filters)
	g.sortKey, g.sortDir = sortKey, sortDir
	return slices.Clone(g.backups), g.listError
}

func (g *backupImages) DeleteImage(ctx context.Context, token, id string) error {
	_ = g.snapImages.DeleteImage(ctx, token, id)
	return g.failDel[id]
}

func TestRotateBackupsDeletesTheOldestBeyondRotation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	g := &backupImages{backups: []cloud.Image{{ID: "b4"}, {ID: "b3"}, {ID: "b2"}, {ID: "b1"}},
		failDel: map[string]error{"b1": cloud.ErrNotFound, "b2": errors.New("409 conflict")}}
	l := &lifecycle{images: g}
	if err := l.rotateBackups(ctx, rpc.Context{}, srInstance(), "daily", 1); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"image_type": "backup", "backup_type": "daily", "instance_uuid": srUUID}
	if len(g.listed) != 1 || !reflect.DeepEqual(g.listed[0], want) || g.sortKey != "created_at" || g.sortDir != "desc" {
		t.Errorf("listed %v sorted %s %s", g.listed, g.sortKey, g.sortDir)
	}
	// Oldest first; failures are logged and the next image tried.
	if !slices.Equal(g.deleted, []string{"b1", "b2", "b3"}) {
		t.Errorf("deleted %v", g.deleted)
	}

	// Within the rotation nothing is deleted.
	g = &backupImages{backups: []cloud.Image{{ID: "b2"}, {ID: "b1"}}}
	l = &lifecycle{images: g}
	if err := l.rotateBackups(ctx, rpc.Context{}, srInstance(), "weekly", 2); err != nil || len(g.deleted) != 0 {
		t.Errorf("rotation 2 of 2: %v, deleted %v", err, g.deleted)
	}
	// Rotation 0 deletes every backup.
	if err := l.rotateBackups(ctx, rpc.Context{}, srInstance(), "weekly", 0); err != nil || !slices.Equal(g.deleted, []string{"b1", "b2"}) {
		t.Errorf("rotation 0: %v, deleted %v", err, g.deleted)
	}
	// A failed listing is the operation's failure.
	g = &backupImages{listError: errors.New("glance 503")}
	l = &lifecycle{images: g}
	if err := l.rotateBackups(ctx, rpc.Context{}, srInstance(), "daily", 1); err == nil {
		t.Error("listing failure ignored")
	}
}

// TestBackupInstanceFollowsNova drives backup_instance with a fake
// conductor: the action event, the snapshot's task states from
// image_backup on (nova's _snapshot_instance with expected task state
// image_backup), the upload, then the rotation.
//
// Not parallel: fake conductors of concurrent tests would share the
// "conductor" queue.
func TestBackupInstanceFollowsNova(t *testing.T) {
	f := &fakeConductor{replies: map[string]json.RawMessage{
		"object_action":                json.RawMessage(`[{"obj_what_changed": []}, null]`),
		"object_class_action_versions": json.RawMessage(`null`),
	}, got: map[string][]json.RawMessage{}}
	cond := startFakeConductor(t, f)
	hv := &srHV{vm: srVM(vcenter.PowerStateOn)}
	g := &backupImages{backups: []cloud.Image{{ID: "img-new"}, {ID: "img-old"}}}
	l := &lifecycle{hv: snapHV{srHV: hv, data: "KDMV"}, images: g, cond: cond, log: zerolog.Nop(), host: "host1"}
	inst := srInstance()
	inst.SetString("task_state", "image_backup")
	inst.ResetChanges()
	_, err := l.BackupInstance(t.Context(), rszRequest(t, "backup_instance", map[string]any{
		"instance": inst, "image_id": "img-new", "backup_type": "daily", "rotation": 1,
	}))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"instance active/image_backup host=<nil> node=domain-c9.vc-uuid progress=<nil> exp=<nil>",
		"instance active/image_pending_upload host=<nil> node=domain-c9.vc-uuid progress=<nil> exp=image_backup",
		"instance active/image_uploading host=<nil> node=domain-c9.vc-uuid progress=<nil> exp=image_pending_upload",
		"instance active/<nil> host=<nil> node=domain-c9.vc-uuid progress=<nil> exp=image_uploading",
	}
	if got := rszSaves(t, f); !reflect.DeepEqual(got, want) {
		t.Errorf("saves\n got %q\nwant %q", got, want)
	}
	if g.uploaded != "KDMV" || !slices.Equal(g.deleted, []string{"img-old"}) {
		t.Errorf("uploaded %q, deleted %v", g.uploaded, g.deleted)
	}
	var events []string
	f.mu.Lock()
	for _, raw := range f.got["object_class_action_versions"] {
		var a map[string]any
		_ = json.Unmarshal(raw, &a)
		events = append(events, fmt.Sprint(a["objmethod"], a["args"]))
	}
	f.mu.Unlock()
	if want := []string{"event_start[" + srUUID + " compute_backup_instance]", "event_finish_with_failure[" + srUUID + " compute_backup_instance]"}; !slices.Equal(events, want) {
		t.Errorf("events %q, want %q", events, want)
	}

	// A failed upload deletes the new image (delete_image_on_error), skips
	// the rotation and is the operation's failure.
	f.mu.Lock()
	f.got = map[string][]json.RawMessage{}
	f.mu.Unlock()
	g = &backupImages{backups: []cloud.Image{{ID: "img-2"}, {ID: "img-old"}}}
	g.failPut = errors.New("glance 500")
	l.images = g
	_, err = l.BackupInstance(t.Context(), rszRequest(t, "backup_instance", map[string]any{
		"instance": inst, "image_id": "img-2", "backup_type": "daily", "rotation": 1,
	}))
	if err == nil || !slices.Equal(g.deleted, []string{"img-2"}) || len(g.listed) != 0 {
		t.Errorf("failed upload: %v, deleted %v, listed %v", err, g.deleted, g.listed)
	}
}

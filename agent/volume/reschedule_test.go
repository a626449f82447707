package volume

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"testing"
)

// TestWantsReschedule: the create flow reschedules only with the
// scheduler's retry information and when the sender allows it.
func TestWantsReschedule(t *testing.T) {
	no := false
	retry := map[string]any{"num_attempts": 1.0, "backends": []any{"h@b#b"}, "hosts": []any{"h@b#b"}}
	for _, tc := range []struct {
		name string
		args createArgs
		want bool
	}{
		{"retry", createArgs{FilterProperties: map[string]any{"retry": retry}}, true},
		{"no filter properties", createArgs{}, false},
		{"no retry (scheduler_max_attempts 1)", createArgs{FilterProperties: map[string]any{"size": 1.0}}, false},
		{"empty retry", createArgs{FilterProperties: map[string]any{"retry": map[string]any{}}}, false},
		{"reschedule not allowed", createArgs{FilterProperties: map[string]any{"retry": retry}, AllowReschedule: &no}, false},
	} {
		if got := tc.args.wantsReschedule(); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestReschedulable: OnFailureRescheduleTask's no_reschedule_types put
// the volume in error; driver failures are tried elsewhere.
func TestReschedulable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{errors.New("vCenter said no"), true},
		{errNoDatastore, true},
		{profileNotFound("gold"), true},
		{backendError("create volume", errNoDatastore), true},
		{cinderError("ImageUnacceptable", "bad image"), false},
		{cinderError("ImageCopyFailure", "copy failed"), false},
		{cinderError("SnapshotNotFound", "gone"), false},
		{cinderError("VolumeNotFound", "gone"), false},
		{cinderError("VolumeTypeNotFound", "gone"), false},
		{cinderError("MetadataCopyFailure", "no"), false},
	} {
		if got := reschedulable(tc.err); got != tc.want {
			t.Errorf("reschedulable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestRescheduleMessage: what goes back to the scheduler: the volume
// without a host, scheduled now; the request spec with the volume id; the
// filter properties with the scheduler's retry information (this backend
// in it) and the failure as retry.exc; the received arguments untouched.
func TestRescheduleMessage(t *testing.T) {
	const id = "3f2e1d0c-9b8a-4766-8554-43322110ffee"
	vol := `{"versioned_object.name": "Volume", "versioned_object.namespace": "cinder", "versioned_object.version": "1.9",
		"versioned_object.data": {"id": "` + id + `", "host": "h1@b1#b1", "status": "creating", "size": 1},
		"versioned_object.changes": ["status"]}`
	spec := `{"versioned_object.name": "RequestSpec", "versioned_object.namespace": "cinder", "versioned_object.version": "1.5",
		"versioned_object.data": {"volume_properties": {"size": 1}}}`
	retry := map[string]any{"num_attempts": 1.0, "backends": []any{"h1@b1#b1"}, "hosts": []any{"h1@b1#b1"}}
	a := createArgs{Volume: json.RawMessage(vol), RequestSpec: json.RawMessage(spec),
		FilterProperties: map[string]any{"retry": retry, "size": 1.0}}
	cause := profileNotFound("gold")
	msg, err := rescheduleMessage(a, id, cause, "2026-12-02T13:00:00Z")
	if err != nil {
		t.Fatal(err)
	}
	v := msg["volume"].(map[string]any)
	data := v["versioned_object.data"].(map[string]any)
	if data["host"] != nil || data["scheduled_at"] != "2026-12-02T13:00:00Z" || data["status"] != "creating" || v["versioned_object.namespace"] != "cinder" {
		t.Errorf("volume sent back: %v", v)
	}
	if got, want := v["versioned_object.changes"], []any{"status", "host", "scheduled_at"}; !reflect.DeepEqual(got, want) {
		t.Errorf("volume changes %v, want %v", got, want)
	}
	sd := msg["request_spec"].(map[string]any)["versioned_object.data"].(map[string]any)
	if sd["volume_id"] != id || sd["volume_properties"] == nil {
		t.Errorf("request spec sent back: %v", sd)
	}
	props := msg["filter_properties"].(map[string]any)
	r := props["retry"].(map[string]any)
	if r["num_attempts"] != 1.0 || !reflect.DeepEqual(r["backends"], []any{"h1@b1#b1"}) || props["size"] != 1.0 {
		t.Errorf("filter properties sent back: %v", props)
	}
	exc, _ := r["exc"].([]string)
	if len(exc) == 0 || exc[len(exc)-1] != "cinder.volume.drivers.vmware.exceptions.ProfileNotFoundException: Storage profile: gold not found.\n" {
		t.Errorf("retry.exc = %q", exc)
	}
	if _, ok := retry["exc"]; ok {
		t.Error("the received retry information was changed")
	}
	for _, k := range []string{"snapshot_id", "image_id", "backup_id"} {
		if v, ok := msg[k]; !ok || v != nil {
			t.Errorf("%s = %v, want null", k, v)
		}
	}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("%w: 1 GB", errNoDatastore), "cinder.volume.drivers.vmware.exceptions.NoValidDatastoreException: there is no valid datastore satisfying the requirements: 1 GB\n"},
		{errors.New("task failed"), "cinder.exception.VolumeBackendAPIException: task failed\n"},
	} {
		if got := formatException(tc.err); got[len(got)-1] != tc.want {
			t.Errorf("formatException(%v) ends %q, want %q", tc.err, got[len(got)-1], tc.want)
		}
	}
	if _, err := rescheduleMessage(createArgs{Volume: json.RawMessage(`{}`)}, id, cause, ""); err == nil {
		t.Error("a volume without data was sent back")
	}
}

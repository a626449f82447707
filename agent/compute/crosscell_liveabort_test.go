package compute

// live_migration_abort (misc.go): kept with the cross-cell tests, the
// other methods that left pendingMethods together.

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
)

// TestLiveMigrationAbortFollowsNova checks live_migration_abort: the
// migration read by id; one not running is InvalidMigrationState, a
// running one the VMware driver's NotImplementedError; either way the
// action event (finished with the failure) and the instance fault.
//
// Not parallel: fake conductors of concurrent tests would share the
// "conductor" queue.
func TestLiveMigrationAbortFollowsNova(t *testing.T) {
	for _, tc := range []struct{ status, class string }{{"preparing", "InvalidMigrationState"}, {"running", "NotImplementedError"}} {
		t.Run(tc.status, func(t *testing.T) { liveMigrationAbortCase(t, tc.status, tc.class) })
	}
}

func liveMigrationAbortCase(t *testing.T, status, class string) {
	t.Helper()
	mig := ovo.New("Migration", "1.7")
	mig.SetInt("id", 7)
	mig.SetString("status", status)
	enc, err := ovo.NovaCodec().Marshal(mig)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeConductor{replies: map[string]json.RawMessage{
		"object_action":                json.RawMessage(`[{"obj_what_changed": []}, null]`),
		"object_class_action_versions": enc,
	}, got: map[string][]json.RawMessage{}}
	l := &lifecycle{hv: &srHV{vm: srVM(vcenter.PowerStateOn)}, cond: startFakeConductor(t, f), log: zerolog.Nop(), host: "host1"}
	_, err = l.LiveMigrationAbort(t.Context(), rszRequest(t, "live_migration_abort", map[string]any{"instance": srInstance(), "migration_id": 7}))
	if remoteClass(err) != class {
		t.Errorf("%s: %v, want %s", status, err, class)
	}
	var calls []string
	f.mu.Lock()
	for _, raw := range f.got["object_class_action_versions"] {
		var a map[string]any
		_ = json.Unmarshal(raw, &a)
		calls = append(calls, fmt.Sprint(a["objname"], ".", a["objmethod"]))
	}
	var faults int
	for _, raw := range f.got["object_action"] {
		var a map[string]any
		_ = json.Unmarshal(raw, &a)
		if o, _ := a["objinst"].(map[string]any); o["nova_object.name"] == "InstanceFault" {
			faults++
		}
	}
	f.mu.Unlock()
	want := []string{"InstanceActionEvent.event_start", "Migration.get_by_id", "InstanceActionEvent.event_finish_with_failure"}
	if !slices.Equal(calls, want) || faults != 1 {
		t.Errorf("%s: conductor calls %q, faults %d", status, calls, faults)
	}
}

package vcenter

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func TestEnsureFolderPath(t *testing.T) {
	t.Parallel()
	sim := startSim(t, SimulatorConfig{Clusters: 1, HostsPerCluster: 1, Datastores: 1})
	s := login(t, simConfig(sim))
	ctx := t.Context()

	tests := []struct {
		name      string
		dc        string
		path      []string
		wantCalls map[string]int64
		wantErr   error
	}{
		{"new", "DC0", []string{"OpenStack", "Project (p1)", "Instances"},
			map[string]int64{"FindByInventoryPath": 2, "CreateFolder": 3}, nil},
		{"existing", "DC0", []string{"OpenStack", "Project (p1)", "Instances"},
			map[string]int64{"FindByInventoryPath": 1}, nil},
		{"sibling project", "DC0", []string{"OpenStack", "Project (p2)", "Instances"},
			map[string]int64{"FindByInventoryPath": 2, "CreateFolder": 3}, nil},
		{"no datacenter", "DC9", []string{"OpenStack"}, nil, ErrNotFound},
		{"empty name", "DC0", []string{"OpenStack", ""}, nil, ErrInvalidArgument},
	}
	refs := make(map[string]Ref)
	for _, tt := range tests {
		before := s.Calls()
		ref, err := s.EnsureFolderPath(ctx, tt.dc, tt.path...)
		d := delta(before, s.Calls())
		t.Logf("%s: %d round trips %v", tt.name, vmTotal(d), d)
		if tt.wantErr != nil {
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("%s: err = %v, want %v", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil || ref.Type != "Folder" {
			t.Fatalf("%s: EnsureFolderPath = %v, %v", tt.name, ref, err)
		}
		for k, v := range tt.wantCalls {
			if d[k] != v {
				t.Errorf("%s: calls = %v, want %v", tt.name, d, tt.wantCalls)
				break
			}
		}
		refs[tt.name] = ref
	}
	if refs["new"] != refs["existing"] || refs["new"] == refs["sibling project"] {
		t.Errorf("folders = %v", refs)
	}
}

// TestEnsureFolderPathRace checks that a folder another client created
// meanwhile (DuplicateName from CreateFolder) counts as created, both when
// the fault names the existing folder (vCenter, vcsim) and when it does not
// (then FindChild looks it up). The race is staged deterministically:
// vcsim's FindByInventoryPath reads folders without locking, so truly
// concurrent creations trip the race detector inside the simulator.
func TestEnsureFolderPathRace(t *testing.T) {
	t.Parallel()
	sim := startSim(t, SimulatorConfig{Clusters: 1, HostsPerCluster: 1, Datastores: 1})
	s := login(t, simConfig(sim))
	ctx := t.Context()
	want, err := s.EnsureFolderPath(ctx, "DC0", "OpenStack", "Project (race)")
	if err != nil {
		t.Fatal(err)
	}
	c := s.Client()
	parent, err := findByInventoryPath(ctx, c, "DC0/vm/OpenStack")
	if err != nil || parent == nil {
		t.Fatalf("find parent: %v, %v", parent, err)
	}

	tests := []struct {
		name      string
		inject    bool
		wantCalls map[string]int64
	}{
		{"fault names the folder", false, map[string]int64{"CreateFolder": 1}},
		{"fault without the folder", true, map[string]int64{"CreateFolder": 1, "FindChild": 1}},
	}
	for _, tt := range tests {
		if tt.inject {
			sim.model.Service.AddFaultRule(&simulator.FaultInjectionRule{
				MethodName: "CreateFolder", ObjectType: "Folder", ObjectName: "*",
				Probability: 1, FaultType: simulator.FaultTypeCustom,
				Fault:    &types.DuplicateName{Name: "Project (race)"},
				MaxCount: 1, Enabled: true,
			})
		}
		before := s.Calls()
		got, err := s.createFolder(ctx, c, *parent, "Project (race)")
		d := delta(before, s.Calls())
		if err != nil || refFrom(got) != want {
			t.Errorf("%s: createFolder = %v, %v; want %v", tt.name, got, err, want)
		}
		if !maps.Equal(d, tt.wantCalls) {
			t.Errorf("%s: calls = %v, want %v", tt.name, d, tt.wantCalls)
		}
	}
}

// TestRequestLoggerCarriesRequestIDs checks that what the driver logs for a
// request goes through the request's logger (its ids) and names the vCenter,
// while work without one uses the session's logger.
func TestRequestLoggerCarriesRequestIDs(t *testing.T) {
	t.Parallel()
	sim := startSim(t, SimulatorConfig{Clusters: 1, HostsPerCluster: 1, Datastores: 1})
	s := login(t, simConfig(sim))
	var buf bytes.Buffer
	reqLog := zerolog.New(&buf).With().Str("request_id", "req-42").Str("instance_uuid", "u-1").Logger()
	if _, err := s.EnsureFolderPath(reqLog.WithContext(t.Context()), "DC0", "OpenStack", "Project (logs)"); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("request log has %d lines, want one per created folder:\n%s", len(lines), buf.String())
	}
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatal(err)
		}
		if m["request_id"] != "req-42" || m["instance_uuid"] != "u-1" || m["vcenter"] == nil || m["message"] != "created folder" {
			t.Errorf("log line %v", m)
		}
	}
}

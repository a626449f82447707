package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"testing"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/rpc"
)

// TestEndpointVersions: the endpoint speaks cinder Zed's VolumeAPI 3.18, the
// version written to the services row that caps what cinder sends; the
// capability reports use the scheduler API versions cinder-volume sends
// (3.3, 3.5), below Zed's scheduler 3.12.
func TestEndpointVersions(t *testing.T) {
	m := &Manager{log: zerolog.Nop()}
	ep := m.endpoint()
	if ep.Version != RPCVersion || RPCVersion != "3.18" || ep.Namespace != "" {
		t.Fatalf("endpoint %q namespace %q, want 3.18 without namespace", ep.Version, ep.Namespace)
	}
	for _, c := range []struct{ method, version string }{{"update_service_capabilities", "3.3"}, {"notify_service_capabilities", "3.5"}} {
		if !versionLE(c.version, "3.12") {
			t.Errorf("%s %s is newer than cinder Zed's scheduler 3.12", c.method, c.version)
		}
	}
	for _, v := range []string{"3.0", "3.6", "3.15", "3.17", "3.18"} {
		if !versionLE(v, ep.Version) {
			t.Errorf("a %s request would not be served", v)
		}
	}
	for _, v := range []string{"3.19", "3.20"} {
		if versionLE(v, ep.Version) {
			t.Errorf("a %s request would be served by a 3.18 endpoint", v)
		}
	}
}

// versionLE: same major, minor not newer (oslo's version_is_compatible
// without revisions).
func versionLE(v, imp string) bool {
	var vm, vn, im, in int
	if _, err := fmtSscanf(v, &vm, &vn); err != nil {
		return false
	}
	if _, err := fmtSscanf(imp, &im, &in); err != nil {
		return false
	}
	return vm == im && vn <= in
}

// TestEveryMethodAnswered: every method of cinder's VolumeAPI has a handler;
// the ones not implemented yet answer NotImplementedError.
func TestEveryMethodAnswered(t *testing.T) {
	m := &Manager{log: zerolog.Nop()}
	ep := m.endpoint()
	want := methods
	// Cross-check with the installed cinder, when there is one.
	if src, err := os.ReadFile("/usr/lib/python3/dist-packages/cinder/volume/rpcapi.py"); err == nil {
		want = nil
		for _, mm := range regexp.MustCompile(`(?m)^    def ([a-z]\w*)\(`).FindAllSubmatch(src, -1) {
			want = append(want, string(mm[1]))
		}
	}
	for _, name := range want {
		if _, ok := ep.Methods[name]; !ok {
			t.Errorf("VolumeAPI.%s has no handler", name)
		}
	}
	for _, name := range []string{"create_volume", "delete_volume", "get_capabilities", "publish_service_capabilities"} {
		if !slices.Contains(want, name) {
			t.Errorf("%s is not a VolumeAPI method", name)
		}
	}
	_, err := ep.Methods["migrate_volume"](context.Background(), &rpc.Request{Method: "migrate_volume", Version: "3.5"})
	var re *rpc.RemoteError
	if !errors.As(err, &re) || re.Class != "NotImplementedError" || re.Module != "builtins" {
		t.Fatalf("migrate_volume: %v, want builtins.NotImplementedError", err)
	}
}

func fmtSscanf(v string, major, minor *int) (int, error) { return fmt.Sscanf(v, "%d.%d", major, minor) }

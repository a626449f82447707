package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLayering keeps the dependency arrows pointing one way:
// main → agent → {rpc, drivers}. rpc knows no vCenter and no agent;
// drivers know no AMQP and no agent; roles do not import each other.
func TestLayering(t *testing.T) {
	const mod = "github.com/vcagent/vcagent"
	rules := []struct {
		pkg       string
		forbidden []string
	}{
		{"./rpc/...", []string{"github.com/vmware/govmomi", mod + "/agent", mod + "/drivers"}},
		{"./drivers/...", []string{"github.com/rabbitmq/amqp091-go", mod + "/agent", mod + "/rpc"}},
		{"./agent/compute/...", []string{mod + "/agent/volume", mod + "/agent/network"}},
	}
	for _, r := range rules {
		out, err := exec.Command("go", "list", "-deps", r.pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", r.pkg, err, out)
		}
		deps := strings.Fields(string(out))
		if len(deps) == 0 {
			t.Fatalf("go list -deps %s listed nothing", r.pkg)
		}
		for _, dep := range deps {
			for _, bad := range r.forbidden {
				if dep == bad || strings.HasPrefix(dep, bad+"/") {
					t.Errorf("%s depends on %s", r.pkg, dep)
				}
			}
		}
	}
}

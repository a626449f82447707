package vcenter

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImports enforces the package's place in the import graph: it talks to
// vCenter and never to the message bus or the agent.
func TestImports(t *testing.T) {
	t.Parallel()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not in PATH")
	}
	out, err := exec.CommandContext(t.Context(), goTool, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	forbidden := []string{
		"github.com/rabbitmq/amqp091-go",
		"github.com/vcagent/vcagent/rpc",
		"github.com/vcagent/vcagent/agent",
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f+"/") {
				t.Errorf("drivers/vcenter depends on %s", dep)
			}
		}
	}
}

package compute

import (
	"context"
	"slices"
	"testing"
	"time"
)

func TestInstanceEventsWaitForEveryPort(t *testing.T) {
	tests := []struct {
		name     string
		deliver  []string
		wantMiss []string
	}{
		{name: "all arrive", deliver: []string{"network-vif-plugged-a", "network-vif-plugged-b"}},
		{name: "one missing", deliver: []string{"network-vif-plugged-b"}, wantMiss: []string{"network-vif-plugged-a"}},
		{name: "none", wantMiss: []string{"network-vif-plugged-a", "network-vif-plugged-b"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var e instanceEvents
			wait := e.prepare("i1", []string{"network-vif-plugged-a", "network-vif-plugged-b"})
			if e.deliver("i2", "network-vif-plugged-a") {
				t.Error("an event of another instance was taken")
			}
			for _, k := range tc.deliver {
				if !e.deliver("i1", k) {
					t.Errorf("event %s not taken", k)
				}
			}
			missing, err := wait(context.Background(), 50*time.Millisecond)
			if err != nil || !slices.Equal(missing, tc.wantMiss) {
				t.Errorf("missing %v, %v; want %v", missing, err, tc.wantMiss)
			}
			if e.deliver("i1", "network-vif-plugged-a") {
				t.Error("an event was taken after the wait ended")
			}
		})
	}
}

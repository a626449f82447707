package vcenter

import (
	"context"
	"errors"
	"net/http"
	"os"
	"testing"
	"time"
)

func TestStartSimulatorDefaults(t *testing.T) {
	t.Parallel()
	start := time.Now()
	sim := startSim(t, SimulatorConfig{})
	t.Logf("default simulator started in %s", time.Since(start))

	u := sim.URL()
	pw, hasPW := u.User.Password()
	if u.Scheme != "https" || u.Path != "/sdk" || u.User.Username() != DefaultSimulatorUser || !hasPW || len(pw) < 16 {
		t.Errorf("URL() = %s", u.Redacted())
	}
	u.User = nil
	if sim.URL().User == nil {
		t.Error("URL() returned a shared *url.URL")
	}

	s := login(t, simConfig(sim))
	clusters, err := s.Clusters(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(clusters) != DefaultSimulatorClusters {
		t.Fatalf("got %d clusters", len(clusters))
	}
	for _, c := range clusters {
		if len(c.Hosts) != DefaultSimulatorHostsPerCluster || len(c.Datastores) != DefaultSimulatorDatastores {
			t.Errorf("cluster %s: %d hosts, %d datastores", c.Name, len(c.Hosts), len(c.Datastores))
		}
		if len(c.UsableDatastores(nil)) != DefaultSimulatorDatastores {
			t.Errorf("cluster %s: usable datastores %+v", c.Name, c.Datastores)
		}
	}
}

func TestStartSimulatorInvalidConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  SimulatorConfig
	}{
		{"negative clusters", SimulatorConfig{Clusters: -1}},
		{"negative hosts", SimulatorConfig{HostsPerCluster: -1}},
		{"negative datastores", SimulatorConfig{Datastores: -1}},
		{"negative session timeout", SimulatorConfig{SessionTimeout: -time.Second}},
		{"listen address without port", SimulatorConfig{ListenAddr: "127.0.0.1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sim, err := StartSimulator(t.Context(), tc.cfg)
			if err == nil {
				sim.Close()
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("StartSimulator(%+v) err = %v, want ErrInvalidConfig", tc.cfg, err)
			}
		})
	}
}

func TestStartSimulatorCancelledContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	sim, err := StartSimulator(ctx, SimulatorConfig{})
	if err == nil {
		sim.Close()
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}

func TestSimulatorClose(t *testing.T) {
	t.Parallel()
	sim, err := StartSimulator(t.Context(), SimulatorConfig{Clusters: 1, HostsPerCluster: 1, Datastores: 1})
	if err != nil {
		t.Fatal(err)
	}
	home := sim.model.Map().OptionManager().Setting
	var dir string
	for _, o := range home {
		if ov := o.GetOptionValue(); ov.Key == "vcsim.home" {
			dir, _ = ov.Value.(string)
		}
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("simulator home %q: %v", dir, err)
	}
	sim.Close()
	sim.Close() // idempotent
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("simulator home %q still exists after Close: %v", dir, err)
	}
	client := &http.Client{Timeout: 2 * time.Second}
	u := sim.URL()
	u.User = nil
	u.Scheme = "http"
	if res, err := client.Get(u.String()); err == nil {
		_ = res.Body.Close()
		t.Error("simulator still serving after Close")
	}
}

package vcenter

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/vim25/mo"
)

// testLogger writes the package's logs to the test log.
func testLogger(t *testing.T) zerolog.Logger {
	t.Helper()
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel).With().Timestamp().Logger()
}

// startSim starts a simulator that is closed when the test ends.
func startSim(t *testing.T, cfg SimulatorConfig) *Simulator {
	t.Helper()
	sim, err := StartSimulator(t.Context(), cfg)
	if err != nil {
		t.Fatalf("StartSimulator(%+v): %v", cfg, err)
	}
	t.Cleanup(sim.Close)
	return sim
}

// simConfig returns a session Config for sim.
func simConfig(sim *Simulator) Config {
	return Config{URL: sim.URL().String(), Insecure: true, KeepAlive: time.Hour}
}

// login creates and logs in a Session that is logged out when the test
// ends (before the simulator closes).
func login(t *testing.T, cfg Config) *Session {
	t.Helper()
	s, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Login(t.Context()); err != nil {
		t.Fatalf("Login: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Logout(context.Background()); err != nil {
			t.Errorf("Logout: %v", err)
		}
	})
	return s
}

// delta returns after-before per method, leaving out zeros.
func delta(before, after map[string]int64) map[string]int64 {
	d := make(map[string]int64)
	for k, v := range after {
		if n := v - before[k]; n != 0 {
			d[k] = n
		}
	}
	return d
}

// serverSessions returns the number of sessions the simulator holds, not
// counting the one used to ask.
func serverSessions(t *testing.T, sim *Simulator) int {
	t.Helper()
	ctx := t.Context()
	c, err := govmomi.NewClient(ctx, sim.URL(), true)
	if err != nil {
		t.Fatalf("govmomi.NewClient: %v", err)
	}
	defer func() { _ = c.Logout(context.Background()) }()
	var m mo.SessionManager
	if err := property.DefaultCollector(c.Client).RetrieveOne(ctx, *c.ServiceContent.SessionManager, []string{"sessionList"}, &m); err != nil {
		t.Fatalf("retrieve sessionList: %v", err)
	}
	return len(m.SessionList) - 1
}

// terminateSessions ends every session on the simulator but the one used to
// do it, as a vCenter administrator can.
func terminateSessions(t *testing.T, sim *Simulator) {
	t.Helper()
	ctx := t.Context()
	c, err := govmomi.NewClient(ctx, sim.URL(), true)
	if err != nil {
		t.Fatalf("govmomi.NewClient: %v", err)
	}
	defer func() { _ = c.Logout(context.Background()) }()
	var m mo.SessionManager
	if err := property.DefaultCollector(c.Client).RetrieveOne(ctx, *c.ServiceContent.SessionManager, []string{"sessionList", "currentSession"}, &m); err != nil {
		t.Fatalf("retrieve sessionList: %v", err)
	}
	var keys []string
	for _, us := range m.SessionList {
		if us.Key != m.CurrentSession.Key {
			keys = append(keys, us.Key)
		}
	}
	if len(keys) == 0 {
		t.Fatal("no session to terminate")
	}
	if err := session.NewManager(c.Client).TerminateSession(ctx, keys); err != nil {
		t.Fatalf("TerminateSession: %v", err)
	}
}

// waitFor polls cond every 10 ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

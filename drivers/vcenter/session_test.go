package vcenter

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func TestLoginLogout(t *testing.T) {
	t.Parallel()
	sim := startSim(t, SimulatorConfig{})
	ctx := t.Context()
	s, err := New(simConfig(sim), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Clusters(ctx); !errors.Is(err, ErrNotLoggedIn) {
		t.Errorf("Clusters before Login: err = %v, want ErrNotLoggedIn", err)
	}
	if err := s.Login(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Login(ctx); err != nil { // no-op
		t.Fatal(err)
	}

	about := s.About()
	if about.Name != "VMware vCenter Server" || about.Version != "8.0.3" || about.APIType != "VirtualCenter" {
		t.Errorf("About() = %+v", about)
	}
	if want := sim.model.ServiceContent.About.InstanceUuid; s.InstanceUUID() != want || want == "" {
		t.Errorf("InstanceUUID() = %q, want %q", s.InstanceUUID(), want)
	}
	if got := s.soap.Version; got != "8.0.3.0" {
		t.Errorf("negotiated SOAP version = %q, want the simulator's 8.0.3.0", got)
	}
	if c := s.Client(); c == nil || !c.IsVC() {
		t.Fatalf("Client() = %v, want a vCenter client", c)
	}
	if n := serverSessions(t, sim); n != 1 {
		t.Errorf("server sessions after Login = %d, want 1", n)
	}

	if err := s.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Logout(ctx); err != nil { // no-op
		t.Fatal(err)
	}
	if n := serverSessions(t, sim); n != 0 {
		t.Errorf("server sessions after Logout = %d, want 0", n)
	}
	if _, err := s.Clusters(ctx); !errors.Is(err, ErrNotLoggedIn) {
		t.Errorf("Clusters after Logout: err = %v, want ErrNotLoggedIn", err)
	}

	// The Session can log in again.
	if err := s.Login(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Clusters(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"RetrieveServiceContent": 1, "Login": 2, "Logout": 2, "CreateContainerView": 1, "RetrievePropertiesEx": 1, "DestroyView": 1}
	if got := s.Calls(); !equalCalls(got, want) {
		t.Errorf("Calls() = %v, want %v", got, want)
	}
	if s.Relogins() != 0 {
		t.Errorf("Relogins() = %d, want 0", s.Relogins())
	}
}

func equalCalls(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestLoginErrors(t *testing.T) {
	t.Parallel()
	sim := startSim(t, SimulatorConfig{Password: "right"})

	// A port nothing listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := l.Addr().String()
	_ = l.Close()

	tests := []struct {
		name        string
		cfg         func() Config
		wantIs      error
		wantFault   types.BaseMethodFault
		wantMessage string
	}{
		{
			name: "wrong password",
			cfg: func() Config {
				c := simConfig(sim)
				c.Password = "wrong"
				return c
			},
			wantIs:    ErrInvalidLogin,
			wantFault: &types.InvalidLogin{},
		},
		{
			name: "unreachable",
			cfg: func() Config {
				return Config{URL: "https://" + closedAddr + "/sdk", User: "u", Password: "p", Insecure: true}
			},
			wantMessage: "connection refused",
		},
		{
			name: "untrusted certificate",
			cfg: func() Config {
				c := simConfig(sim)
				c.Insecure = false
				return c
			},
			wantMessage: "certificate",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := tc.cfg()
			s, err := New(cfg, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			err = s.Login(ctx)
			if err == nil {
				_ = s.Logout(ctx)
				t.Fatal("Login succeeded")
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("Login: err = %v, want errors.Is %v", err, tc.wantIs)
			}
			if tc.wantFault != nil && !fault.Is(err, tc.wantFault) {
				t.Errorf("Login: err = %v, want fault %T", err, tc.wantFault)
			}
			if !strings.Contains(err.Error(), tc.wantMessage) {
				t.Errorf("Login: err = %q, want it to mention %q", err, tc.wantMessage)
			}
			if strings.Contains(err.Error(), "right") {
				t.Errorf("Login: err = %q leaks the password", err)
			}
			if errors.Is(err, ErrInvalidLogin) != (tc.wantIs == ErrInvalidLogin) {
				t.Errorf("Login: err = %v, ErrInvalidLogin mismatch", err)
			}
		})
	}
}

func TestLoginWithCAFile(t *testing.T) {
	t.Parallel()
	sim := startSim(t, SimulatorConfig{})
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, sim.CertificatePEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := simConfig(sim)
	cfg.Insecure = false
	cfg.CAFile = ca
	s := login(t, cfg)
	if _, err := s.Clusters(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// TestReloginAfterSessionExpiry lets the simulator expire the session in the
// middle of a run: the next inventory read re-logs in transparently.
func TestReloginAfterSessionExpiry(t *testing.T) {
	t.Parallel()
	// Long enough that the new session cannot expire during one slow call
	// under the race detector.
	const timeout = 500 * time.Millisecond
	sim := startSim(t, SimulatorConfig{SessionTimeout: timeout})
	s := login(t, simConfig(sim)) // keep-alive every hour: it does not interfere
	ctx := t.Context()

	first, err := s.Clusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The simulator checks idle sessions every timeout; after 3 of them
	// ours is gone.
	time.Sleep(3*timeout + 50*time.Millisecond)
	if n := serverSessions(t, sim); n != 0 {
		t.Fatalf("server sessions after idling = %d, want 0 (expired)", n)
	}

	before := s.Calls()
	second, err := s.Clusters(ctx)
	if err != nil {
		t.Fatalf("Clusters after expiry: %v", err)
	}
	if len(second) != len(first) || len(second[0].Hosts) != len(first[0].Hosts) {
		t.Errorf("Clusters after expiry returned %d clusters, want %d", len(second), len(first))
	}
	// CreateContainerView fails NotAuthenticated, the old session is
	// logged out (already gone), a new one logged in, the call retried.
	// On a machine so loaded that one call outlasts the timeout, the new
	// session can expire too and be replaced again.
	n := s.Relogins()
	got := delta(before, s.Calls())
	if n < 1 || got["Login"] != n || got["Logout"] != n || got["CreateContainerView"] < 2 {
		t.Errorf("Relogins() = %d, calls for the read = %v; want a re-login per Login and Logout", n, got)
	}
	want := map[string]int64{"CreateContainerView": 2, "Logout": 1, "Login": 1, "RetrievePropertiesEx": 1, "DestroyView": 1}
	if n == 1 && !equalCalls(got, want) {
		t.Errorf("calls for the read = %v, want %v", got, want)
	}
	if n := serverSessions(t, sim); n != 1 {
		t.Errorf("server sessions after re-login = %d, want 1", n)
	}
}

// TestConcurrentReloginIsSingleFlight has many callers hit a session that
// vCenter dropped (terminated by an administrator) at once: exactly one
// re-login happens and every call succeeds.
func TestConcurrentReloginIsSingleFlight(t *testing.T) {
	t.Parallel()
	sim := startSim(t, SimulatorConfig{})
	s := login(t, simConfig(sim))
	terminateSessions(t, sim)

	before := s.Calls()
	const callers = 16
	var wg sync.WaitGroup
	errs := make([]error, callers)
	start := make(chan struct{})
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, errs[i] = s.Clusters(t.Context())
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("caller %d: %v", i, err)
		}
	}
	if got := s.Relogins(); got != 1 {
		t.Errorf("Relogins() = %d, want 1", got)
	}
	d := delta(before, s.Calls())
	if d["Login"] != 1 || d["RetrievePropertiesEx"] != callers || d["DestroyView"] != callers {
		t.Errorf("calls = %v, want 1 Login and %d reads", d, callers)
	}
}

// TestReloginOnInjectedNotAuthenticated makes the property retrieval fail
// once with NotAuthenticated while the session is in fact valid: the
// re-login replaces the session, which takes the container view with it, so
// the read is redone.
func TestReloginOnInjectedNotAuthenticated(t *testing.T) {
	t.Parallel()
	sim := startSim(t, SimulatorConfig{})
	s := login(t, simConfig(sim))
	sim.model.Service.AddFaultRule(&simulator.FaultInjectionRule{
		MethodName:  "RetrievePropertiesEx",
		ObjectType:  "*",
		ObjectName:  "*",
		Probability: 1,
		FaultType:   simulator.FaultTypeNotAuthenticated,
		MaxCount:    1,
		Enabled:     true,
	})
	before := s.Calls()
	clusters, err := s.Clusters(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(clusters) != DefaultSimulatorClusters {
		t.Errorf("got %d clusters, want %d", len(clusters), DefaultSimulatorClusters)
	}
	if got := s.Relogins(); got != 1 {
		t.Errorf("Relogins() = %d, want 1", got)
	}
	want := map[string]int64{
		"CreateContainerView": 2, "RetrievePropertiesEx": 3, "DestroyView": 2, "Logout": 1, "Login": 1,
	}
	if got := delta(before, s.Calls()); !equalCalls(got, want) {
		t.Errorf("calls = %v, want %v", got, want)
	}
	if n := serverSessions(t, sim); n != 1 {
		t.Errorf("server sessions = %d, want 1 (the stale one logged out)", n)
	}
}

func TestKeepAliveKeepsSessionAlive(t *testing.T) {
	t.Parallel()
	const timeout = time.Second
	sim := startSim(t, SimulatorConfig{SessionTimeout: timeout})
	cfg := simConfig(sim)
	cfg.KeepAlive = timeout / 10
	s := login(t, cfg)

	time.Sleep(5 * timeout / 2)
	if n := serverSessions(t, sim); n != 1 {
		t.Errorf("server sessions = %d, want 1", n)
	}
	if _, err := s.Clusters(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := s.Relogins(); got != 0 {
		t.Errorf("Relogins() = %d, want 0: the keep-alive should have kept the session", got)
	}
	if got := s.Calls()["RetrievePropertiesEx"]; got < 5 {
		t.Errorf("RetrievePropertiesEx calls = %d, want keep-alive pings", got)
	}
}

func TestKeepAliveRelogsInExpiredSession(t *testing.T) {
	t.Parallel()
	const timeout = 150 * time.Millisecond
	sim := startSim(t, SimulatorConfig{SessionTimeout: timeout})
	cfg := simConfig(sim)
	cfg.KeepAlive = 4 * timeout // slower than the timeout: the session expires in between
	s := login(t, cfg)

	waitFor(t, 10*time.Second, "a keep-alive re-login", func() bool { return s.Relogins() >= 1 })
	if n := serverSessions(t, sim); n != 1 {
		t.Errorf("server sessions = %d, want 1", n)
	}
}

func TestLogoutStopsKeepAliveAndSurvivesCancelledContext(t *testing.T) {
	t.Parallel()
	sim := startSim(t, SimulatorConfig{})
	cfg := simConfig(sim)
	cfg.KeepAlive = 20 * time.Millisecond
	s, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Login(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "keep-alive pings", func() bool { return s.Calls()["RetrievePropertiesEx"] >= 2 })

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := s.Logout(ctx); err != nil {
		t.Fatalf("Logout with a cancelled context: %v", err)
	}
	if n := serverSessions(t, sim); n != 0 {
		t.Errorf("server sessions after Logout = %d, want 0", n)
	}
	after := s.Calls()
	time.Sleep(100 * time.Millisecond)
	if d := delta(after, s.Calls()); len(d) != 0 {
		t.Errorf("calls after Logout: %v, want none (keep-alive stopped)", d)
	}
}

func TestLogsNeverContainPassword(t *testing.T) {
	t.Parallel()
	const password = "s3cr3t-Passw0rd"
	sim := startSim(t, SimulatorConfig{Password: password, SessionTimeout: 100 * time.Millisecond})
	var buf syncBuffer
	s, err := New(simConfig(sim), zerolog.New(&buf).Level(zerolog.TraceLevel))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := s.Login(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(350 * time.Millisecond)
	if _, err := s.Clusters(ctx); err != nil { // re-logs in
		t.Fatal(err)
	}
	if err := s.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	bad, _ := New(Config{URL: sim.URL().String(), Password: "wrong-" + password, Insecure: true}, zerolog.New(&buf))
	if err := bad.Login(ctx); err == nil || strings.Contains(err.Error(), password) {
		t.Errorf("Login with a wrong password: err = %v", err)
	}
	out := buf.String()
	if !strings.Contains(out, "re-logged in") {
		t.Errorf("log lacks the re-login: %s", out)
	}
	if strings.Contains(out, password) {
		t.Errorf("log contains the password: %s", out)
	}
}

// syncBuffer is a concurrency-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

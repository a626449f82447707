package vcenter

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"
)

// TestOnCallSeesEveryCallAndTellsFaultsFromSilence: the OnCall hook gets
// each SOAP call with its method; a vSphere fault counts as an answer
// (IsFault), a refused connection does not.
func TestOnCallSeesEveryCallAndTellsFaultsFromSilence(t *testing.T) {
	t.Parallel()
	sim := startSim(t, SimulatorConfig{Password: "right"})
	var mu sync.Mutex
	calls := map[string]int{}
	var errs []error
	cfg := simConfig(sim)
	cfg.OnCall = func(method string, d time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		calls[method]++
		if err != nil {
			errs = append(errs, err)
		}
	}
	s := login(t, cfg)
	if _, err := s.Clusters(context.Background()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if calls["Login"] != 1 || calls["RetrievePropertiesEx"] == 0 {
		t.Errorf("calls seen: %v", calls)
	}
	mu.Unlock()

	bad := simConfig(sim)
	bad.Password = "wrong"
	bad.OnCall = cfg.OnCall
	bs, err := New(bad, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	loginErr := bs.Login(context.Background())
	if loginErr == nil || !IsFault(loginErr) {
		t.Fatalf("InvalidLogin is a fault (vCenter answered): %v", loginErr)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	gone, err := New(Config{URL: "https://" + addr + "/sdk", User: "u", Password: "p", Insecure: true}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := gone.Login(context.Background()); err == nil || IsFault(err) {
		t.Fatalf("a refused connection is not a fault: %v", err)
	}
}

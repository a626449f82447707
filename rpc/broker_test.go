package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// testVhost is the broker vhost of these tests, so that killing its
// connections disturbs nothing else on the broker.
const testVhost = "vcagent_rpc_test"

// testBrokerURL is the broker the tests use; the README's test command
// starts RabbitMQ, so a missing broker is a failure, not a skip.
func testBrokerURL(t testing.TB) string {
	if u := os.Getenv("VCAGENT_TEST_TRANSPORT_URL"); u != "" {
		return u
	}
	ensureVhost(t)
	return "rabbit://guest:guest@127.0.0.1:5672/" + testVhost
}

var vhostOnce sync.Once //nolint:gochecknoglobals // test-only, once per test binary

func ensureVhost(t testing.TB) {
	vhostOnce.Do(func() {
		rabbitmqctl(t, "add_vhost", testVhost)
		rabbitmqctl(t, "set_permissions", "-p", testVhost, "guest", ".*", ".*", ".*")
	})
}

// rabbitmqctl runs the broker's CLI (the tests run as root beside the broker).
func rabbitmqctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("rabbitmqctl", args...).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "already exists") {
		t.Fatalf("rabbitmqctl %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func newTestTransport(t testing.TB, mutate func(*Options)) *Transport {
	t.Helper()
	u, err := ParseTransportURL(testBrokerURL(t))
	if err != nil {
		t.Fatal(err)
	}
	opts := DefaultOptions()
	if err := opts.ApplyQuery(u.Query); err != nil {
		t.Fatal(err)
	}
	if mutate != nil {
		mutate(&opts)
	}
	log := zerolog.Nop()
	if testing.Verbose() {
		log = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
	}
	tr, err := NewTransport(Config{URL: u, Options: opts, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.WaitConnected(ctx); err != nil {
		t.Fatalf("broker %s not reachable: %v", u.Redacted(), err)
	}
	t.Cleanup(tr.Close)
	return tr
}

// runServer starts srv and stops it when the test ends.
func runServer(t testing.TB, tr *Transport, cfg ServerConfig) *Server {
	t.Helper()
	consuming := make(chan struct{})
	var once sync.Once
	cfg.OnConsuming = func(on bool) {
		if on {
			once.Do(func() { close(consuming) })
		}
	}
	srv, err := tr.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-consuming:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not start consuming")
	}
	return srv
}

func uniqueTopic(prefix string) string { return prefix + "_" + uuidHex()[:8] }

func echoEndpoint(record chan<- *Request) Endpoint {
	return Endpoint{Version: "1.3", Methods: map[string]Handler{
		"echo": func(ctx context.Context, req *Request) (any, error) { return req.Args, nil },
		"record": func(ctx context.Context, req *Request) (any, error) {
			record <- req
			return nil, nil
		},
		"fail": func(ctx context.Context, req *Request) (any, error) {
			return nil, &RemoteError{Class: "PeerError", Module: "peererrors", Message: "Peer failure: disk full", Kwargs: map[string]any{"reason": "disk full", "code": 409}}
		},
		"slow": func(ctx context.Context, req *Request) (any, error) {
			var a struct{ Seconds float64 }
			if err := req.DecodeArgs(&a); err != nil {
				return nil, err
			}
			time.Sleep(time.Duration(a.Seconds * float64(time.Second)))
			return map[string]any{"slept": a.Seconds}, nil
		},
	}}
}

func TestCallCastFanoutThroughBroker(t *testing.T) {
	tr := newTestTransport(t, nil)
	topic := uniqueTopic("gotest")
	record := make(chan *Request, 8)
	runServer(t, tr, ServerConfig{Target: Target{Exchange: "vcagent_test", Topic: topic, Server: "host1"}, Endpoints: []Endpoint{echoEndpoint(record)}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rc, _ := NewContext(map[string]any{"request_id": "req-1", "roles": []string{"admin"}})

	c := tr.NewClient(Target{Exchange: "vcagent_test", Topic: topic, Server: "host1", Version: "1.3"})
	got, err := c.Call(ctx, rc, "echo", map[string]any{"x": "h\u00e9llo \u2603", "n": []any{1, 2.5, nil, true}})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(got, &m); err != nil || m["x"] != "h\u00e9llo \u2603" {
		t.Fatalf("echo returned %s (%v)", got, err)
	}

	c.Timeout = 5 * time.Second
	_, err = c.Call(ctx, rc, "no_such_method", nil)
	var re *RemoteError
	if !errors.As(err, &re) || re.Class != "NoSuchMethod" || re.Message != "Endpoint does not support RPC method no_such_method" {
		t.Fatalf("unknown method gave %v", err)
	}
	_, err = c.Call(ctx, rc, "fail", nil)
	if !errors.As(err, &re) || re.Class != "PeerError" || re.Kwargs["reason"] != "disk full" {
		t.Fatalf("fail gave %v", err)
	}

	if err := c.Cast(ctx, rc, "record", map[string]any{"k": 1}); err != nil {
		t.Fatal(err)
	}
	fan := c
	fan.Target.Fanout = true
	fan.Target.Server = ""
	if err := fan.Cast(ctx, rc, "record", map[string]any{"k": 2}); err != nil {
		t.Fatal(err)
	}
	// The two casts come through different queues and workers, so either
	// may be handled first: match each by its argument.
	for range 2 {
		select {
		case r := <-record:
			if r.Context.String("request_id") != "req-1" {
				t.Errorf("context lost: %v", r.Context)
			}
			var a struct {
				K int `json:"k"`
			}
			if err := r.DecodeArgs(&a); err != nil {
				t.Fatal(err)
			}
			switch {
			case a.K == 1 && (strings.HasPrefix(r.Queue, topic) && !strings.Contains(r.Queue, "_fanout_")):
			case a.K == 2 && strings.Contains(r.Queue, "_fanout_"):
			default:
				t.Errorf("cast k=%d arrived on %s", a.K, r.Queue)
			}
		case <-ctx.Done():
			t.Fatal("cast not received")
		}
	}
}

func TestCallMonitorHeartbeatsKeepSlowCallAlive(t *testing.T) {
	tr := newTestTransport(t, nil)
	topic := uniqueTopic("gotest")
	runServer(t, tr, ServerConfig{Target: Target{Exchange: "vcagent_test", Topic: topic, Server: "h"}, Endpoints: []Endpoint{echoEndpoint(nil)}})
	c := tr.NewClient(Target{Exchange: "vcagent_test", Topic: topic, Server: "h", Version: "1.3"})
	c.MonitorTimeout = 2 * time.Second
	c.Timeout = 20 * time.Second
	ctx := context.Background()
	got, err := c.Call(ctx, nil, "slow", map[string]any{"seconds": 3.3})
	if err != nil {
		t.Fatalf("slow call with heartbeats: %v", err)
	}
	if string(got) != `{"slept":3.3}` {
		t.Fatalf("slow returned %s", got)
	}
}

func TestCallTimesOutWithoutServer(t *testing.T) {
	tr := newTestTransport(t, nil)
	c := tr.NewClient(Target{Exchange: "vcagent_test", Topic: uniqueTopic("nobody"), Server: "h"})
	c.Timeout = 500 * time.Millisecond
	start := time.Now()
	_, err := c.Call(context.Background(), nil, "echo", nil)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("want ErrTimeout, got %v", err)
	}
	if d := time.Since(start); d < 400*time.Millisecond || d > 5*time.Second {
		t.Fatalf("timed out after %s", d)
	}
}

// TestCallTimesOutWhileBrokerUnreachable: with no broker to publish to, a
// call still ends after its timeout with ErrTimeout.
func TestCallTimesOutWhileBrokerUnreachable(t *testing.T) {
	u, err := ParseTransportURL("rabbit://guest:guest@127.0.0.1:1/")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := NewTransport(Config{URL: u, Options: DefaultOptions(), Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c := tr.NewClient(Target{Exchange: "x", Topic: "t", Server: "h"})
	c.Timeout = 500 * time.Millisecond
	start := time.Now()
	_, err = c.Call(context.Background(), nil, "echo", nil)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("want ErrTimeout, got %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("call took %s with a 500ms timeout", d)
	}
}

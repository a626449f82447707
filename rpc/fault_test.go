package rpc

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// counter records how often each cast id was handled.
type counter struct {
	mu   sync.Mutex
	seen map[string]int
}

func (c *counter) endpoint() Endpoint {
	return Endpoint{Version: "1.3", Methods: map[string]Handler{
		"record": func(ctx context.Context, req *Request) (any, error) {
			var a struct{ ID string }
			if err := req.DecodeArgs(&a); err != nil {
				return nil, err
			}
			c.mu.Lock()
			c.seen[a.ID]++
			c.mu.Unlock()
			return nil, nil
		},
		"echo": func(ctx context.Context, req *Request) (any, error) { return req.Args, nil },
		"slow": func(ctx context.Context, req *Request) (any, error) {
			time.Sleep(2 * time.Second)
			return "done", nil
		},
	}}
}

func (c *counter) waitAll(t *testing.T, ids []string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		n := 0
		for _, id := range ids {
			if c.seen[id] > 0 {
				n++
			}
		}
		c.mu.Unlock()
		if n == len(ids) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // let any duplicate land before counting
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range ids {
		if c.seen[id] != 1 {
			t.Errorf("cast %s handled %d times, want exactly once", id, c.seen[id])
		}
	}
}

// callEventually retries a call until the server answers again.
func callEventually(t *testing.T, c Client) {
	t.Helper()
	c.Timeout = 2 * time.Second
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := c.Call(context.Background(), nil, "echo", map[string]any{"x": 1})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server never answered again: %v", err)
		}
	}
}

// TestServerSurvivesClosedConnections kills every connection of the test
// vhost while casts are being sent: the server serves again without a
// restart and every cast is handled exactly once.
func TestServerSurvivesClosedConnections(t *testing.T) {
	srvT := newTestTransport(t, nil)
	cliT := newTestTransport(t, nil)
	topic := uniqueTopic("fault")
	cnt := &counter{seen: map[string]int{}}
	srv := runServer(t, srvT, ServerConfig{Target: Target{Exchange: "vcagent_test", Topic: topic, Server: "h"}, Endpoints: []Endpoint{cnt.endpoint()}})
	fanoutBefore := srv.FanoutQueue()
	c := cliT.NewClient(Target{Exchange: "vcagent_test", Topic: topic, Server: "h", Version: "1.3"})
	callEventually(t, c)

	var ids []string
	stop := make(chan struct{})
	sent := make(chan []string)
	go func() {
		var mine []string
		for i := 0; ; i++ {
			select {
			case <-stop:
				sent <- mine
				return
			default:
			}
			id := uuidHex()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			if err := c.Cast(ctx, nil, "record", map[string]any{"id": id}); err == nil {
				mine = append(mine, id)
			}
			cancel()
			time.Sleep(20 * time.Millisecond)
		}
	}()
	time.Sleep(300 * time.Millisecond)
	rabbitmqctl(t, "close_all_connections", "--vhost", testVhost, "vcagent fault test")
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	ids = <-sent
	callEventually(t, c)
	cnt.waitAll(t, ids)
	if srv.FanoutQueue() != fanoutBefore {
		t.Fatal("fanout queue name changed across the reconnect")
	}
	if len(ids) < 10 {
		t.Fatalf("only %d casts went out around the outage", len(ids))
	}
}

// TestCallInFlightAcrossBrokerRestart restarts the broker's application
// under a slow call: the call ends (answered or timed out) instead of
// hanging, and the server serves again afterwards.
func TestCallInFlightAcrossBrokerRestart(t *testing.T) {
	srvT := newTestTransport(t, nil)
	cliT := newTestTransport(t, nil)
	topic := uniqueTopic("restart")
	cnt := &counter{seen: map[string]int{}}
	runServer(t, srvT, ServerConfig{Target: Target{Exchange: "vcagent_test", Topic: topic, Server: "h"}, Endpoints: []Endpoint{cnt.endpoint()}})
	c := cliT.NewClient(Target{Exchange: "vcagent_test", Topic: topic, Server: "h", Version: "1.3"})
	callEventually(t, c)

	slow := c
	slow.Timeout = 8 * time.Second
	result := make(chan error, 1)
	go func() {
		_, err := slow.Call(context.Background(), nil, "slow", nil)
		result <- err
	}()
	time.Sleep(300 * time.Millisecond)
	rabbitmqctl(t, "stop_app")
	rabbitmqctl(t, "start_app")
	select {
	case err := <-result:
		if err != nil && !errors.Is(err, ErrTimeout) {
			t.Fatalf("call in flight ended with %v, want a result or ErrTimeout", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("call in flight hung across the broker restart")
	}
	callEventually(t, c)
	var ids []string
	for i := 0; i < 20; i++ {
		id := uuidHex()
		if err := c.Cast(context.Background(), nil, "record", map[string]any{"id": id}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	cnt.waitAll(t, ids)
}

//go:build integration

package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vcagent/vcagent/rpc"
)

// goEndpoints mirror the Python peer's endpoints, so the same calls can be
// made against either side.
func goEndpoints(recorded chan<- *rpc.Request) []rpc.Endpoint {
	return []rpc.Endpoint{
		{Version: "1.3", Methods: map[string]rpc.Handler{
			"echo":         func(ctx context.Context, r *rpc.Request) (any, error) { return r.Args, nil },
			"echo_context": func(ctx context.Context, r *rpc.Request) (any, error) { return r.Context, nil },
			"record": func(ctx context.Context, r *rpc.Request) (any, error) {
				recorded <- r
				return nil, nil
			},
			"fail": func(ctx context.Context, r *rpc.Request) (any, error) {
				var a struct{ Exc, Message string }
				if err := r.DecodeArgs(&a); err != nil {
					return nil, err
				}
				if a.Exc == "PeerError" {
					return nil, &rpc.RemoteError{Class: "PeerError", Module: "peererrors", Message: "Peer failure: " + a.Message,
						Kwargs: map[string]any{"reason": a.Message, "code": 409}}
				}
				return nil, rpc.BuiltinError(a.Exc, a.Message)
			},
			"slow": func(ctx context.Context, r *rpc.Request) (any, error) {
				var a struct{ Seconds float64 }
				if err := r.DecodeArgs(&a); err != nil {
					return nil, err
				}
				time.Sleep(time.Duration(a.Seconds * float64(time.Second)))
				return map[string]any{"slept": a.Seconds}, nil
			},
		}},
		{Namespace: "baseapi", Version: "1.1", Methods: map[string]rpc.Handler{
			"ping": func(ctx context.Context, r *rpc.Request) (any, error) {
				var a struct {
					Arg any `json:"arg"`
				}
				if err := r.DecodeArgs(&a); err != nil {
					return nil, err
				}
				return map[string]any{"service": "pypeer", "arg": a.Arg}, nil
			},
		}},
	}
}

var nested = map[string]any{ //nolint:gochecknoglobals // test data
	"s": "h\u00e9llo \u2603 <&>", "f": 1.5, "n": nil, "b": true,
	"l": []any{1.0, "two", map[string]any{"three": []any{3.0}}},
}

// TestPythonClientCallsGoServer: the real oslo.messaging client makes the
// same calls to the Go server and to the real Python server, and must get
// the same outcome from both: results, rebuilt exceptions (class, message,
// kwargs), version negotiation, heartbeats; casts and fanout casts arrive.
func TestPythonClientCallsGoServer(t *testing.T) {
	url := vhostURL(t, "vcagent_interop_py2go")
	tr := goTransport(t, url)
	recorded := make(chan *rpc.Request, 8)
	if err := goServer(t, tr, rpc.Target{Exchange: "nova", Topic: "interop", Server: "gohost"}, goEndpoints(recorded)...); err != nil {
		t.Fatal(err)
	}
	startPeer(t, peerArgs(url, "nova", nil, "server", "--topic", "interop", "--server", "pyhost"))
	ctx := map[string]any{"request_id": "req-py2go", "global_request_id": "req-global", "auth_token": "tok", "roles": []string{"admin"}, "is_admin": true}
	calls := []map[string]any{
		{"id": "echo", "method": "echo", "args": nested, "version": "1.0"},
		{"id": "minor", "method": "echo", "args": map[string]any{"x": 1}, "version": "1.2"},
		{"id": "noversion", "method": "echo", "args": map[string]any{"x": 1}},
		{"id": "newer", "method": "echo", "version": "1.4"},
		{"id": "revision", "method": "echo", "version": "1.3.1"},
		{"id": "major", "method": "echo", "version": "2.0"},
		{"id": "ping", "method": "ping", "namespace": "baseapi", "version": "1.1", "args": map[string]any{"arg": "x"}},
		{"id": "ping_newer", "method": "ping", "namespace": "baseapi", "version": "1.2", "args": map[string]any{"arg": "x"}},
		{"id": "ping_null_ns", "method": "ping", "args": map[string]any{"arg": "x"}},
		{"id": "unknown_ns", "method": "echo", "namespace": "nope"},
		{"id": "unknown", "method": "no_such_method", "version": "1.3"},
		{"id": "private", "method": "_private"},
		{"id": "unknown_allowed", "method": "no_such_method", "allowed_exmods": []string{"oslo_messaging.rpc.dispatcher"}},
		{"id": "valueerror", "method": "fail", "args": map[string]any{"exc": "ValueError", "message": "bad value 42"}},
		{"id": "peererror", "method": "fail", "args": map[string]any{"exc": "PeerError", "message": "disk full"}, "allowed_exmods": []string{"peererrors"}},
		{"id": "peererror_default", "method": "fail", "args": map[string]any{"exc": "PeerError", "message": "disk full"}},
		{"id": "slow_hb", "method": "slow", "args": map[string]any{"seconds": 3.3}, "cm_timeout": 2, "timeout": 20},
	}
	var specs []map[string]any
	for _, server := range []string{"gohost", "pyhost"} {
		for _, c := range calls {
			spec := map[string]any{"topic": "interop", "server": server}
			for k, v := range c {
				spec[k] = v
			}
			spec["id"] = server + "/" + c["id"].(string)
			specs = append(specs, spec)
		}
	}
	specs = append(specs,
		map[string]any{"id": "topic", "topic": "interop", "method": "echo", "args": nested},
		map[string]any{"id": "context", "topic": "interop", "server": "gohost", "method": "echo_context", "ctx": ctx},
		map[string]any{"id": "cast", "kind": "cast", "topic": "interop", "server": "gohost", "method": "record", "args": map[string]any{"id": "c1"}, "ctx": ctx},
		map[string]any{"id": "fanout", "kind": "cast", "topic": "interop", "fanout": true, "method": "record", "args": map[string]any{"id": "f1"}},
	)
	res := runCalls(t, url, "nova", specs)

	// What the caller sees must not depend on which server answered.
	for _, c := range calls {
		id := c["id"].(string)
		g, p := outcome(res["gohost/"+id]), outcome(res["pyhost/"+id])
		if !reflect.DeepEqual(g, p) {
			t.Errorf("%s: Go server gave %v\n    Python server gave %v", id, g, p)
		}
	}
	// And the outcomes are the ones oslo documents.
	for id, want := range map[string]string{
		"newer":   "Endpoint does not support RPC version 1.4. Attempted method: echo",
		"unknown": "Endpoint does not support RPC method no_such_method",
	} {
		if r := res["gohost/"+id]; r["exception_class"] != "RemoteError" || r["message"] != want {
			t.Errorf("%s: %v", id, r)
		}
	}
	if r := res["gohost/echo"]; !reflect.DeepEqual(r["result"], nested) {
		t.Errorf("echo: %v", r)
	}
	if r := res["gohost/slow_hb"]; r["ok"] != true {
		t.Errorf("slow call kept alive by heartbeats: %v", r)
	}
	if r := res["topic"]; !reflect.DeepEqual(r["result"], nested) {
		t.Errorf("topic call: %v", r)
	}
	gotCtx, _ := res["context"]["result"].(map[string]any)
	for k, v := range ctx {
		if !reflect.DeepEqual(normalize(gotCtx[k]), normalize(v)) {
			t.Errorf("context key %s: got %v want %v", k, gotCtx[k], v)
		}
	}
	got := map[string]*rpc.Request{}
	for len(got) < 2 {
		select {
		case r := <-recorded:
			var a struct{ ID string }
			_ = r.DecodeArgs(&a)
			got[a.ID] = r
		case <-time.After(10 * time.Second):
			t.Fatalf("casts received: %v", got)
		}
	}
	if got["c1"].Queue != "interop.gohost" || got["c1"].Context.String("request_id") != "req-py2go" {
		t.Errorf("server cast arrived on %s with context %v", got["c1"].Queue, got["c1"].Context)
	}
	if !strings.HasPrefix(got["f1"].Queue, "interop_fanout_") {
		t.Errorf("fanout cast arrived on %s", got["f1"].Queue)
	}
}

// outcome is what a Python caller observes of a call, without timings and
// tracebacks (which name the server's own files).
func outcome(r map[string]any) map[string]any {
	out := map[string]any{}
	for _, k := range []string{"ok", "result", "exception_class", "exception_module", "remote_exc_type", "message", "kwargs"} {
		if v, ok := r[k]; ok {
			out[k] = v
		}
	}
	return out
}

func normalize(v any) any {
	b, _ := json.Marshal(v)
	var out any
	_ = json.Unmarshal(b, &out)
	return out
}

// TestGoClientCallsPythonServer: the Go client against the real Python
// server: results, rebuilt exceptions, heartbeats, casts and fanout.
func TestGoClientCallsPythonServer(t *testing.T) {
	url := vhostURL(t, "vcagent_interop_go2py")
	srv := startPeer(t, peerArgs(url, "nova", nil, "server", "--topic", "pyinterop", "--server", "pyhost"))
	tr := goTransport(t, url)
	c := tr.NewClient(rpc.Target{Exchange: "nova", Topic: "pyinterop", Server: "pyhost", Version: "1.3"})
	c.Timeout = 20 * time.Second
	ctx := context.Background()
	rc, _ := rpc.NewContext(map[string]any{"request_id": "req-go2py", "roles": []string{"admin"}})

	raw, err := c.Call(ctx, rc, "echo", nested)
	if err != nil {
		t.Fatal(err)
	}
	var echoed any
	if err := json.Unmarshal(raw, &echoed); err != nil || !reflect.DeepEqual(echoed, nested) {
		t.Fatalf("echo: %s (%v)", raw, err)
	}
	topic := c
	topic.Target.Server = ""
	if _, err := topic.Call(ctx, rc, "echo", map[string]any{"x": 1}); err != nil {
		t.Fatalf("topic call: %v", err)
	}

	var re *rpc.RemoteError
	_, err = c.Call(ctx, rc, "fail", map[string]any{"exc": "PeerError", "message": "disk full"})
	if !errors.As(err, &re) || re.Class != "PeerError" || re.Module != "peererrors" || re.Kwargs["reason"] != "disk full" || re.Message != "Peer failure: disk full" {
		t.Fatalf("PeerError: %v %+v", err, re)
	}
	_, err = c.Call(ctx, rc, "fail", map[string]any{"exc": "ValueError", "message": "bad value 42"})
	if !errors.As(err, &re) || re.Class != "ValueError" || re.Module != "builtins" {
		t.Fatalf("ValueError: %v", err)
	}
	_, err = c.Call(ctx, rc, "no_such_method", nil)
	if !errors.Is(err, rpc.NoSuchMethod("no_such_method")) {
		t.Fatalf("unknown method: %v", err)
	}
	newer := c
	newer.Target.Version = "1.4"
	_, err = newer.Call(ctx, rc, "echo", nil)
	if !errors.As(err, &re) || re.Class != "UnsupportedVersion" || re.Message != "Endpoint does not support RPC version 1.4. Attempted method: echo" {
		t.Fatalf("version 1.4: %v", err)
	}
	ping := c
	ping.Target.Namespace, ping.Target.Version = "baseapi", "1.1"
	raw, err = ping.Call(ctx, rc, "ping", map[string]any{"arg": "hi"})
	if err != nil || string(raw) != `{"service": "pypeer", "arg": "hi"}` && !jsonEqual(raw, `{"service":"pypeer","arg":"hi"}`) {
		t.Fatalf("ping: %s %v", raw, err)
	}
	slow := c
	slow.MonitorTimeout = 2 * time.Second
	raw, err = slow.Call(ctx, rc, "slow", map[string]any{"seconds": 3.3})
	if err != nil || !jsonEqual(raw, `{"slept":3.3}`) {
		t.Fatalf("slow call with Python heartbeats: %s %v", raw, err)
	}

	if err := c.Cast(ctx, rc, "record", map[string]any{"id": "cast1"}); err != nil {
		t.Fatal(err)
	}
	fan := c
	fan.Target.Server, fan.Target.Fanout = "", true
	if err := fan.Cast(ctx, rc, "record", map[string]any{"id": "fan1"}); err != nil {
		t.Fatal(err)
	}
	seen := map[string]map[string]any{}
	for len(seen) < 2 {
		ev := srv.next(t, 10*time.Second)
		if ev["event"] != "record" {
			continue
		}
		args, _ := ev["args"].(map[string]any)
		seen[args["id"].(string)] = ev
	}
	ctxt, _ := seen["cast1"]["ctxt"].(map[string]any)
	if ctxt["request_id"] != "req-go2py" {
		t.Errorf("Python server got context %v", ctxt)
	}
}

func jsonEqual(raw json.RawMessage, want string) bool {
	var a, b any
	return json.Unmarshal(raw, &a) == nil && json.Unmarshal([]byte(want), &b) == nil && reflect.DeepEqual(a, b)
}

// TestPythonListenerReceivesGoNotifications: a real notification listener
// decodes what the Go notifier sends, v2 and legacy, with oslo's metadata
// and without the auth token.
func TestPythonListenerReceivesGoNotifications(t *testing.T) {
	url := vhostURL(t, "vcagent_interop_notify")
	tr := goTransport(t, url)
	lis := startPeer(t, peerArgs(url, "nova", nil, "listen", "--topics", "notifications,versioned_notifications", "--count", "3", "--timeout", "60"))
	rc, _ := rpc.NewContext(map[string]any{"request_id": "req-n", "auth_token": "secret-token", "project_id": "p1", "user_id": "u1"})
	ctx := context.Background()
	v2 := tr.NewNotifier(rpc.NotifierConfig{Exchange: "nova", PublisherID: "nova-compute:gohost", Topics: []string{"versioned_notifications"}})
	payload := map[string]any{"nova_object.name": "ServiceStatusPayload", "nova_object.namespace": "nova", "nova_object.version": "1.1",
		"nova_object.data": map[string]any{"host": "gohost", "binary": "nova-compute", "disabled": false}}
	if err := v2.Notify(ctx, rc, rpc.PriorityInfo, "service.update", payload); err != nil {
		t.Fatal(err)
	}
	legacy := tr.NewNotifier(rpc.NotifierConfig{Exchange: "nova", PublisherID: "compute.gohost", Topics: []string{"notifications"}})
	if err := legacy.Notify(ctx, rc, rpc.PriorityError, "compute.instance.create.error", map[string]any{"instance_id": "i1"}); err != nil {
		t.Fatal(err)
	}
	v1 := tr.NewNotifier(rpc.NotifierConfig{Exchange: "nova", PublisherID: "compute.gohost", Topics: []string{"notifications"}, Legacy: true})
	if err := v1.Notify(ctx, rc, "warning", "compute.instance.exists", map[string]any{"v": 1}); err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]any{}
	for len(got) < 3 {
		ev := lis.next(t, 30*time.Second)
		if ev["event"] == "notification" {
			got[ev["event_type"].(string)] = ev
		}
	}
	want := map[string][2]string{
		"service.update":                {"info", "nova-compute:gohost"},
		"compute.instance.create.error": {"error", "compute.gohost"},
		"compute.instance.exists":       {"warn", "compute.gohost"},
	}
	for et, w := range want {
		ev := got[et]
		if ev == nil || ev["priority"] != w[0] || ev["publisher_id"] != w[1] {
			t.Errorf("%s: got %v, want priority %s publisher %s", et, ev, w[0], w[1])
			continue
		}
		ctxt, _ := ev["ctxt"].(map[string]any)
		if ctxt["request_id"] != "req-n" || ctxt["auth_token"] != nil {
			t.Errorf("%s: context %v (request_id kept, auth_token dropped)", et, ctxt)
		}
		md, _ := ev["metadata"].(map[string]any)
		ts, _ := md["timestamp"].(string)
		if _, err := time.Parse("2006-01-02 15:04:05.000000", ts); err != nil {
			t.Errorf("%s: timestamp %q: %v", et, ts, err)
		}
		if id, _ := md["message_id"].(string); len(id) != 36 {
			t.Errorf("%s: message_id %q", et, id)
		}
	}
	if p := got["service.update"]["payload"]; !reflect.DeepEqual(p, payload) {
		t.Errorf("versioned payload %v", p)
	}
}

// TestDeclarationsCoexistWithPython: with amqp_durable_queues or
// rabbit_quorum_queue, the Go server declares the same exchanges and
// queues as a Python server with the same option, whichever starts first:
// the broker answers no 406, and calls reach both.
func TestDeclarationsCoexistWithPython(t *testing.T) {
	url := vhostURL(t, "vcagent_flavour")
	n := 0
	for _, flavour := range []string{"amqp_durable_queues=true", "rabbit_quorum_queue=true", "rabbit_transient_queues_ttl=60"} {
		for _, pyFirst := range []bool{true, false} {
			name := strings.Split(flavour, "=")[0]
			t.Run(name+map[bool]string{true: "/python_first", false: "/go_first"}[pyFirst], func(t *testing.T) {
				// Each case gets its own exchange and topic: a durable and a
				// transient "nova" cannot share one vhost.
				n++
				exchange, topic := fmt.Sprintf("flv%d", n), fmt.Sprintf("flavour%d", n)
				tr := goTransport(t, url, flavour)
				target := rpc.Target{Exchange: exchange, Topic: topic, Server: "gohost"}
				if pyFirst {
					startPeer(t, peerArgs(url, exchange, []string{flavour}, "server", "--topic", topic, "--server", "pyhost"))
				}
				if err := goServer(t, tr, target, goEndpoints(make(chan *rpc.Request, 8))...); err != nil {
					t.Fatalf("Go server next to Python with %s: %v", flavour, err)
				}
				if !pyFirst {
					startPeer(t, peerArgs(url, exchange, []string{flavour}, "server", "--topic", topic, "--server", "pyhost"))
				}
				c := tr.NewClient(rpc.Target{Exchange: exchange, Topic: topic, Version: "1.3"})
				c.Timeout = 10 * time.Second
				for _, server := range []string{"gohost", "pyhost"} {
					c.Target.Server = server
					if _, err := c.Call(context.Background(), nil, "echo", map[string]any{"to": server}); err != nil {
						t.Errorf("call to %s: %v", server, err)
					}
				}
				res := runCalls(t, url+"?"+flavour, exchange, []map[string]any{
					{"id": "go", "topic": topic, "server": "gohost", "method": "echo", "args": map[string]any{"x": 1}},
					{"id": "py", "topic": topic, "server": "pyhost", "method": "echo", "args": map[string]any{"x": 1}},
				})
				for id, r := range res {
					if r["ok"] != true {
						t.Errorf("python client to %s with %s: %v", id, flavour, r)
					}
				}
			})
		}
	}
}

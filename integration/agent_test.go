//go:build integration

package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/vcagent/vcagent/rpc"
)

// agentBinary is built once per test run by TestMain.
var agentBinary string //nolint:gochecknoglobals // set once in TestMain

func TestMain(m *testing.M) {
	if os.Getenv(benchServeEnv) != "" {
		serveForBench()
		return
	}
	if os.Getenv(simulatorEnv) != "" {
		serveSimulator()
		return
	}
	dir, err := os.MkdirTemp("", "vcagent-it-")
	if err != nil {
		panic(err)
	}
	agentBinary = filepath.Join(dir, "vcagent")
	build := exec.Command("go", "build", "-race", "-o", agentBinary, "..")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		panic("building the agent: " + err.Error())
	}
	code := m.Run()
	stopControlPlane()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// agentProc is a running agent with its JSON log lines.
type agentProc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []map[string]any
	done chan error
}

// startAgent runs the agent binary with env and waits until it consumes
// on compute.<host>.
func startAgent(t testing.TB, env ...string) *agentProc {
	t.Helper()
	a := &agentProc{cmd: exec.Command(agentBinary), done: make(chan error, 1)}
	a.cmd.Env = append(os.Environ(), append([]string{"VCAGENT_LOG_FORMAT=json", "VCAGENT_SHUTDOWN_TIMEOUT=10s", "VCAGENT_HTTP_ADDR=127.0.0.1:0"}, env...)...)
	stderr, err := a.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Every agent's log is kept for the run's secrets check (secrets_test.go).
	logFile := keepAgentLog(t, env)
	lines := make(chan struct{}, 1024)
	go func() {
		defer logFile.Close()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<22)
		for sc.Scan() {
			_, _ = fmt.Fprintf(logFile, "%s\n", sc.Bytes())
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				m = map[string]any{"message": sc.Text(), "unparsed": true}
			}
			a.mu.Lock()
			a.logs = append(a.logs, m)
			a.mu.Unlock()
			select {
			case lines <- struct{}{}:
			default:
			}
		}
		a.done <- a.cmd.Wait()
	}()
	t.Cleanup(func() {
		if a.cmd.ProcessState == nil {
			_ = a.cmd.Process.Kill()
		}
		if t.Failed() {
			a.mu.Lock()
			for _, l := range a.logs {
				b, _ := json.Marshal(l)
				t.Log(string(b))
			}
			a.mu.Unlock()
		}
	})
	a.waitLog(t, 180*time.Second, func(m map[string]any) bool { return m["message"] == "consuming" && m["topic"] == "compute" })
	return a
}

// opsURL is the base URL of the agent's operator endpoint.
func (a *agentProc) opsURL(t testing.TB) string {
	t.Helper()
	l := a.waitLog(t, 10*time.Second, func(m map[string]any) bool {
		return m["addr"] != nil && strings.HasPrefix(fmt.Sprint(m["message"]), "operator endpoint listening")
	})
	return "http://" + l["addr"].(string)
}

// httpGet returns the status and body of a GET.
func httpGet(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url) //nolint:noctx // test helper
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitLog waits for a log line matching pred.
func (a *agentProc) waitLog(t testing.TB, timeout time.Duration, pred func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(timeout)
	seen := 0
	for time.Now().Before(deadline) {
		a.mu.Lock()
		for ; seen < len(a.logs); seen++ {
			if pred(a.logs[seen]) {
				m := a.logs[seen]
				a.mu.Unlock()
				return m
			}
		}
		a.mu.Unlock()
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no matching agent log line within %s", timeout)
	return nil
}

// pingUntilAnswered calls baseapi ping on compute.<host> until it answers.
func pingUntilAnswered(t testing.TB, tr *rpc.Transport, host string, within time.Duration) {
	t.Helper()
	c := tr.NewClient(rpc.Target{Exchange: "nova", Topic: "compute", Server: host, Namespace: "baseapi", Version: "1.1"})
	c.Timeout = 2 * time.Second
	deadline := time.Now().Add(within)
	for {
		raw, err := c.Call(context.Background(), nil, "ping", map[string]any{"arg": "again"})
		if err == nil {
			if !jsonEqual(raw, `{"service":"compute","arg":"again"}`) {
				t.Fatalf("ping answered %s", raw)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not answer ping within %s: %v", within, err)
		}
	}
}

// TestAgentServesComputeBaseAPIAndSurvivesFaults runs the agent binary
// (embedded vCenter) as nova-compute of the real control plane and drives
// it from the real Python client: nova's baseapi ping is answered,
// unimplemented compute methods and unknown versions get oslo's failures,
// malformed messages are dropped or answered as oslo does and the next
// message is served, the agent serves again after its connections are
// killed and after a broker restart (and nova sees it up again), and
// SIGTERM stops it cleanly.
func TestAgentServesComputeBaseAPIAndSurvivesFaults(t *testing.T) {
	ctrl := controlPlane(t)
	url := ctrl.TransportURL
	host := fmt.Sprintf("agent-it-%d", time.Now().Unix()%100000)
	agent := startAgent(t, computeAgentEnv(ctrl, host)...)

	res := runCalls(t, url, "nova", []map[string]any{
		{"id": "ping", "topic": "compute", "server": host, "method": "ping", "namespace": "baseapi", "version": "1.1", "args": map[string]any{"arg": "x"}},
		{"id": "ping_topic", "topic": "compute", "method": "ping", "namespace": "baseapi", "version": "1.0", "args": map[string]any{"arg": 1}},
		{"id": "backdoor", "topic": "compute", "server": host, "method": "get_backdoor_port", "namespace": "baseapi", "version": "1.1"},
		{"id": "unimplemented", "topic": "compute", "server": host, "method": "get_console_topic", "version": "6.0"},
		{"id": "uptime", "topic": "compute", "server": host, "method": "get_host_uptime", "version": "6.0"},
		{"id": "newer", "topic": "compute", "server": host, "method": "get_host_uptime", "version": "6.2"},
		{"id": "major", "topic": "compute", "server": host, "method": "get_host_uptime", "version": "5.0"},
	})
	want := map[string]map[string]any{
		"ping":          {"ok": true, "result": map[string]any{"service": "compute", "arg": "x"}},
		"ping_topic":    {"ok": true, "result": map[string]any{"service": "compute", "arg": 1.0}},
		"backdoor":      {"ok": true, "result": nil},
		"unimplemented": {"ok": false, "exception_class": "RemoteError", "remote_exc_type": "NoSuchMethod", "message": "Endpoint does not support RPC method get_console_topic"},
		"uptime":        {"ok": false, "exception_class": "NotImplementedError", "message": "Multiple hosts may be managed by the VMWare vCenter driver; therefore we do not return uptime for just one host."},
		"newer":         {"ok": false, "exception_class": "RemoteError", "remote_exc_type": "UnsupportedVersion", "message": "Endpoint does not support RPC version 6.2. Attempted method: get_host_uptime"},
		"major":         {"ok": false, "exception_class": "RemoteError", "remote_exc_type": "UnsupportedVersion", "message": "Endpoint does not support RPC version 5.0. Attempted method: get_host_uptime"},
	}
	for id, w := range want {
		got := outcome(res[id])
		delete(got, "exception_module")
		if !jsonEqual(mustMarshal(got), mustJSON(w)) {
			t.Errorf("%s: got %v, want %v", id, got, w)
		}
	}

	// Malformed input: dropped (logged) or answered as oslo does; the next
	// request is served.
	raw := rawPublisher(t, url)
	replies := raw.replyQueue(t)
	for _, body := range []string{
		"this is not json",
		`{"oslo.version": "3.0", "oslo.message": "{\"method\": \"ping\"}"}`,
		`{"oslo.version": "2.0", "oslo.message": {"method": "ping"}}`,
	} {
		raw.publish(t, "compute."+host, body)
	}
	// Without a method, oslo's dispatcher raises TypeError when an endpoint
	// speaks the version, and UnsupportedVersion (no method named) when none does.
	raw.publish(t, "compute."+host, envelope(t, map[string]any{"args": map[string]any{}, "version": "6.0", "_msg_id": "m1", "_reply_q": replies.name, "_timeout": nil, "_unique_id": "u1"}))
	raw.publish(t, "compute."+host, envelope(t, map[string]any{"args": map[string]any{}, "_msg_id": "m2", "_reply_q": replies.name, "_timeout": nil, "_unique_id": "u2"}))
	for id, want := range map[string][2]string{
		"m1": {"TypeError", "attribute name must be string, not 'NoneType'"},
		"m2": {"UnsupportedVersion", "Endpoint does not support RPC version 1.0"},
	} {
		f := replies.byID(t, id)
		var failure map[string]any
		_ = json.Unmarshal([]byte(f["failure"].(string)), &failure)
		if f["ending"] != true || failure["class"] != want[0] || failure["message"] != want[1] {
			t.Errorf("request %s without method: reply %v, want %s %q", id, f, want[0], want[1])
		}
	}
	agent.waitLog(t, 10*time.Second, func(m map[string]any) bool {
		return strings.Contains(m["message"].(string), "failed to process message") && strings.Contains(m["error"].(string), "envelope version")
	})

	tr := goTransport(t, url)
	pingUntilAnswered(t, tr, host, 10*time.Second)

	rabbitmqctl(t, "close_all_connections", "--vhost", ctrl.Rabbit.VHost, "fault test")
	pingUntilAnswered(t, tr, host, 30*time.Second)

	ops := agent.opsURL(t)
	if code, body := httpGet(t, ops+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz before the broker stops: %d %s", code, body)
	}
	rabbitmqctl(t, "stop_app")
	notReady := false
	for i := 0; i < 50 && !notReady; i++ {
		code, body := httpGet(t, ops+"/readyz")
		notReady = code == http.StatusServiceUnavailable && strings.Contains(body, "amqp_")
		time.Sleep(100 * time.Millisecond)
	}
	if !notReady {
		t.Error("/readyz stayed ready while the broker was stopped")
	}
	rabbitmqctl(t, "start_app")
	pingUntilAnswered(t, tr, host, 60*time.Second)
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := httpGet(t, ops+"/readyz")
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz not ready again after the broker came back: %s", body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Heartbeats resume through the reconnected conductor client.
	waitServiceState(t, ctrl, host, "up", time.Duration(ctrl.ServiceDownTime+60)*time.Second)

	if err := agent.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-agent.done:
		if err != nil {
			t.Fatalf("agent exited with %v after SIGTERM", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("agent did not stop within 20 s of SIGTERM")
	}
	agent.waitLog(t, time.Second, func(m map[string]any) bool { return m["message"] == "logged out of vCenter" })
}

func mustMarshal(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

// envelope wraps an inner message the way oslo does.
func envelope(t testing.TB, inner map[string]any) string {
	t.Helper()
	b, err := json.Marshal(inner)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(map[string]string{"oslo.version": "2.0", "oslo.message": string(b)})
	return string(out)
}

// rawAMQP publishes hand-made bodies, bypassing every oslo encoder.
type rawAMQP struct {
	conn *amqp.Connection
	ch   *amqp.Channel
}

func rawPublisher(t testing.TB, url string) *rawAMQP {
	t.Helper()
	conn, err := amqp.Dial(strings.Replace(url, "rabbit://", "amqp://", 1))
	if err != nil {
		t.Fatal(err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &rawAMQP{conn: conn, ch: ch}
}

func (r *rawAMQP) publish(t testing.TB, key, body string) {
	t.Helper()
	err := r.ch.PublishWithContext(context.Background(), "nova", key, false, false,
		amqp.Publishing{ContentType: "application/json", ContentEncoding: "utf-8", DeliveryMode: 2, Body: []byte(body)})
	if err != nil {
		t.Fatal(err)
	}
}

type rawReplies struct {
	name string
	d    <-chan amqp.Delivery
	kept map[string]map[string]any
}

func (r *rawAMQP) replyQueue(t testing.TB) *rawReplies {
	t.Helper()
	q, err := r.ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := r.ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &rawReplies{name: q.Name, d: d}
}

// byID returns the reply with _msg_id id, keeping the others for later.
func (r *rawReplies) byID(t testing.TB, id string) map[string]any {
	t.Helper()
	if m, ok := r.kept[id]; ok {
		return m
	}
	for {
		m := r.next(t)
		if m["_msg_id"] == id {
			return m
		}
		if r.kept == nil {
			r.kept = map[string]map[string]any{}
		}
		r.kept[fmt.Sprint(m["_msg_id"])] = m
	}
}

func (r *rawReplies) next(t testing.TB) map[string]any {
	t.Helper()
	select {
	case d := <-r.d:
		var outer struct {
			Msg string `json:"oslo.message"`
		}
		if err := json.Unmarshal(d.Body, &outer); err != nil {
			t.Fatal(err)
		}
		var inner map[string]any
		if err := json.Unmarshal([]byte(outer.Msg), &inner); err != nil {
			t.Fatal(err)
		}
		return inner
	case <-time.After(10 * time.Second):
		t.Fatal("no reply")
	}
	return nil
}

//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/rpc"
)

// pythonBin is the interpreter with Debian's OpenStack libraries.
const pythonBin = "/usr/bin/python3"

// rabbitmqctl runs the broker's CLI; the tests run as root beside the broker.
func rabbitmqctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("rabbitmqctl", args...).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "already exists") {
		t.Fatalf("rabbitmqctl %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// vhostURL creates a fresh vhost and returns its transport URL, so each
// test sees only its own queues.
func vhostURL(t testing.TB, name string) string {
	t.Helper()
	_, _ = exec.Command("rabbitmqctl", "delete_vhost", name).CombinedOutput()
	rabbitmqctl(t, "add_vhost", name)
	rabbitmqctl(t, "set_permissions", "-p", name, "guest", ".*", ".*", ".*")
	t.Cleanup(func() { _, _ = exec.Command("rabbitmqctl", "delete_vhost", name).CombinedOutput() })
	return "rabbit://guest:guest@127.0.0.1:5672/" + name
}

// goTransport opens a Go transport on url with the given driver options.
func goTransport(t testing.TB, url string, opts ...string) *rpc.Transport {
	t.Helper()
	u, err := rpc.ParseTransportURL(url)
	if err != nil {
		t.Fatal(err)
	}
	o := rpc.DefaultOptions()
	for _, kv := range opts {
		k, v, _ := strings.Cut(kv, "=")
		if _, err := o.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	log := zerolog.Nop()
	if testing.Verbose() {
		log = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
	}
	tr, err := rpc.NewTransport(rpc.Config{URL: u, Options: o, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := tr.WaitConnected(ctx); err != nil {
		t.Fatalf("broker not reachable: %v", err)
	}
	t.Cleanup(tr.Close)
	return tr
}

// goServer runs an RPC server until the test ends; it returns once the
// server consumes, or the consume error (a 406, say).
func goServer(t testing.TB, tr *rpc.Transport, target rpc.Target, eps ...rpc.Endpoint) error {
	t.Helper()
	consuming := make(chan struct{})
	var once sync.Once
	srv, err := tr.NewServer(rpc.ServerConfig{Target: target, Endpoints: eps, DrainTimeout: 5 * time.Second,
		OnConsuming: func(on bool) {
			if on {
				once.Do(func() { close(consuming) })
			}
		}})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-consuming:
		return nil
	case <-time.After(8 * time.Second):
		return fmt.Errorf("server on %s did not start consuming", target)
	}
}

// peer is a running oslo_peer.py process with its JSON lines.
type peer struct {
	cmd   *exec.Cmd
	lines chan map[string]any
	mu    sync.Mutex
	err   bytes.Buffer
}

func peerArgs(url, exchange string, opts []string, cmd ...string) []string {
	args := []string{"pypeer/oslo_peer.py", "--url", url, "--exchange", exchange}
	for _, o := range opts {
		args = append(args, "--opt", o)
	}
	return append(args, cmd...)
}

// startPeer starts a long-running peer command and waits for its
// {"event":"ready"} line.
func startPeer(t testing.TB, args []string) *peer {
	t.Helper()
	p := &peer{cmd: exec.Command(pythonBin, args...), lines: make(chan map[string]any, 256)}
	p.cmd.Stderr = &lockedWriter{mu: &p.mu, w: &p.err}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s %v: %v", pythonBin, args, err)
	}
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				p.lines <- m
			}
		}
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			// oslo's transport cleanup can block for 15 s; nothing is
			// left to observe by then.
			_ = p.cmd.Process.Kill()
			<-done
		}
	})
	if ev := p.next(t, 30*time.Second); ev["event"] != "ready" {
		t.Fatalf("peer %v: first line %v, want ready", args, ev)
	}
	return p
}

// next returns the peer's next JSON line.
func (p *peer) next(t testing.TB, timeout time.Duration) map[string]any {
	t.Helper()
	select {
	case m, ok := <-p.lines:
		if !ok {
			p.mu.Lock()
			defer p.mu.Unlock()
			t.Fatalf("peer exited; stderr:\n%s", p.err.String())
		}
		return m
	case <-time.After(timeout):
		p.mu.Lock()
		defer p.mu.Unlock()
		t.Fatalf("no line from peer within %s; stderr:\n%s", timeout, p.err.String())
	}
	return nil
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// runCalls runs a batch of call specs through the real Python client and
// returns the result lines by id.
func runCalls(t testing.TB, url, exchange string, specs []map[string]any) map[string]map[string]any {
	t.Helper()
	in, _ := json.Marshal(specs)
	cmd := exec.Command(pythonBin, peerArgs(url, exchange, nil, "calls")...)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python calls: %v\n%s", err, stderr.String())
	}
	res := map[string]map[string]any{}
	for _, line := range bytes.Split(bytes.TrimSpace(out), []byte("\n")) {
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("bad line %q: %v", line, err)
		}
		res[fmt.Sprint(m["id"])] = m
	}
	if len(res) != len(specs) {
		t.Fatalf("got %d results for %d specs:\n%s\n%s", len(res), len(specs), out, stderr.String())
	}
	return res
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

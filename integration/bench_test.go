//go:build integration

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/ops"
	"github.com/vcagent/vcagent/rpc"
)

// benchServeEnv makes the test binary act as a bare Go RPC server (echo at
// 1.3), so that its CPU and memory can be measured as a process of its own,
// like the Python server's.
const benchServeEnv = "VCAGENT_BENCH_SERVE"

// serveForBench runs when the test binary is re-executed as the Go server.
// With a fourth word "metrics" it keeps the agent's Prometheus metrics of
// every request and publish, as the agent does, to measure what they cost.
func serveForBench() {
	parts := strings.Fields(os.Getenv(benchServeEnv)) // url topic server [metrics]
	u, err := rpc.ParseTransportURL(parts[0])
	if err != nil {
		panic(err)
	}
	cfg := rpc.Config{URL: u, Options: rpc.DefaultOptions()}
	var observer rpc.ServerObserver
	if len(parts) > 3 && parts[3] == "metrics" {
		o := ops.New(zerolog.Nop())
		cfg.OnPublish = o.OnPublish
		cfg.OnLinkEvent = o.OnLinkEvent
		observer = o.ServerObserver()
	}
	tr, err := rpc.NewTransport(cfg)
	if err != nil {
		panic(err)
	}
	srv, err := tr.NewServer(rpc.ServerConfig{
		Observer: observer,
		Target:   rpc.Target{Exchange: "nova", Topic: parts[1], Server: parts[2]},
		Endpoints: []rpc.Endpoint{{Version: "1.3", Methods: map[string]rpc.Handler{
			"echo": func(ctx context.Context, r *rpc.Request) (any, error) { return r.Args, nil },
		}}},
		OnConsuming: func(on bool) {
			if on {
				fmt.Println(`{"event":"ready"}`)
			}
		},
	})
	if err != nil {
		panic(err)
	}
	if path := os.Getenv("VCAGENT_BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			panic(err)
		}
		_ = pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	_ = srv.Run(ctx)
	tr.Close()
}

// procStats reads a process's CPU time and memory from /proc.
func procStats(pid int) (cpu time.Duration, rssKiB, hwmKiB int64) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err == nil {
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		cpu = time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ = 100
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err == nil {
		for _, line := range strings.Split(string(status), "\n") {
			fields := strings.Fields(line)
			if len(fields) >= 2 && fields[0] == "VmRSS:" {
				rssKiB, _ = strconv.ParseInt(fields[1], 10, 64)
			}
			if len(fields) >= 2 && fields[0] == "VmHWM:" {
				hwmKiB, _ = strconv.ParseInt(fields[1], 10, 64)
			}
		}
	}
	return cpu, rssKiB, hwmKiB
}

// flood pre-publishes n oslo echo calls to topic.server from one raw AMQP
// client and drains the n replies; it returns the wall time from the first
// publish to the last reply. The same client floods both servers.
func flood(b *testing.B, url, topic, server string, n int) time.Duration {
	b.Helper()
	conn, err := amqp.Dial(strings.Replace(url, "rabbit://", "amqp://", 1))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	replies, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	bodies := make([][]byte, n)
	for i := range bodies {
		inner, _ := json.Marshal(map[string]any{"method": "echo", "args": map[string]any{"i": i}, "version": "1.3",
			"_msg_id": fmt.Sprintf("m%d", i), "_reply_q": q.Name, "_timeout": nil, "_unique_id": fmt.Sprintf("%s-%d", topic, i),
			"_context_request_id": "req-bench"})
		bodies[i], _ = json.Marshal(map[string]string{"oslo.version": "2.0", "oslo.message": string(inner)})
	}
	start := time.Now()
	go func() {
		for _, body := range bodies {
			_ = ch.PublishWithContext(context.Background(), "nova", topic+"."+server, false, false, amqp.Publishing{
				ContentType: "application/json", ContentEncoding: "utf-8", DeliveryMode: 2, Expiration: "120000", Body: body})
		}
	}()
	timeout := time.After(3 * time.Minute)
	for got := 0; got < n; got++ {
		select {
		case <-replies:
		case <-timeout:
			b.Fatalf("%s: only %d of %d replies", server, got, n)
		}
	}
	return time.Since(start)
}

// BenchmarkServerFlood floods the Go server and the real Python
// oslo.messaging server (threading executor, 64 workers) with the same N
// calls from the same raw client on the same broker, one after the other,
// and reports calls/s, server CPU per call and server RSS for both; the Go
// server runs twice, without and with the agent's metrics, whose cost per
// call is the difference.
// Run on demand: go test -tags integration -run '^$' -bench BenchmarkServerFlood -benchtime 1x ./integration/
func BenchmarkServerFlood(b *testing.B) {
	n := 4000
	if v := os.Getenv("VCAGENT_BENCH_N"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	url := vhostURL(b, "vcagent_bench")
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	servers := []struct {
		name string
		cmd  *exec.Cmd
	}{
		{"go", exec.Command(self)},
		{"go+metrics", exec.Command(self)},
		{"python", exec.Command(pythonBin, peerArgs(url, "nova", nil, "server", "--topic", "bench", "--server", "pyhost")...)},
	}
	servers[0].cmd.Env = append(os.Environ(), benchServeEnv+"="+url+" bench gohost")
	servers[1].cmd.Env = append(os.Environ(), benchServeEnv+"="+url+" bench gometrics metrics")
	for _, s := range servers {
		host := map[string]string{"go": "gohost", "go+metrics": "gometrics", "python": "pyhost"}[s.name]
		out, err := s.cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := s.cmd.Start(); err != nil {
			b.Fatal(err)
		}
		ready := make([]byte, 256)
		if _, err := out.Read(ready); err != nil || !strings.Contains(string(ready), "ready") {
			b.Fatalf("%s server did not start: %q %v", s.name, ready, err)
		}
		pid := s.cmd.Process.Pid
		flood(b, url, "bench", host, 200) // warm-up
		cpu0, _, _ := procStats(pid)
		elapsed := flood(b, url, "bench", host, n)
		cpu1, rss, hwm := procStats(pid)
		perCall := float64((cpu1 - cpu0).Microseconds()) / 1000 / float64(n)
		b.ReportMetric(float64(n)/elapsed.Seconds(), s.name+"_calls/s")
		b.ReportMetric(perCall, s.name+"_cpu_ms/call")
		b.ReportMetric(float64(rss)/1024, s.name+"_rss_MiB")
		b.Logf("%s server: %d calls in %s = %.0f calls/s, %.4f ms CPU/call, RSS %.1f MiB (peak %.1f MiB)",
			s.name, n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), perCall, float64(rss)/1024, float64(hwm)/1024)
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		go func(c *exec.Cmd) { time.Sleep(3 * time.Second); _ = c.Process.Kill() }(s.cmd)
		_ = s.cmd.Wait()
	}
}

package ops

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/rpc"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Body)
	return rec.Code, string(body)
}

func TestReadinessFollowsComponents(t *testing.T) {
	o := New(zerolog.Nop())
	h := o.Handler()
	if code, body := get(t, h, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "starting") {
		t.Fatalf("before any component reports: %d %q", code, body)
	}
	o.OnLinkEvent(rpc.LinkEvent{Purpose: "listen", Connected: true})
	o.OnLinkEvent(rpc.LinkEvent{Purpose: "send", Connected: true})
	o.SetReady("compute_rpc", true, "")
	if code, _ := get(t, h, "/readyz"); code != http.StatusOK {
		t.Fatalf("all ready: %d", code)
	}
	o.OnLinkEvent(rpc.LinkEvent{Purpose: "listen", Err: errors.New("CONNECTION_FORCED")})
	code, body := get(t, h, "/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "amqp_listen: disconnected from the broker: CONNECTION_FORCED") {
		t.Fatalf("after a disconnect: %d %q", code, body)
	}
	o.OnLinkEvent(rpc.LinkEvent{Purpose: "listen", Connected: true})
	if code, _ := get(t, h, "/readyz"); code != http.StatusOK {
		t.Fatalf("after the reconnect: %d", code)
	}
	if code, body := get(t, h, "/healthz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Fatalf("healthz %d %q", code, body)
	}
	o.OnVCenterCall("RetrievePropertiesEx", time.Millisecond, errors.New("dial tcp: connection refused"))
	if code, body := get(t, h, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "vcenter: vCenter does not answer") {
		t.Fatalf("vCenter gone: %d %q", code, body)
	}
	o.OnVCenterCall("RetrievePropertiesEx", time.Millisecond, nil)
	if code, _ := get(t, h, "/readyz"); code != http.StatusOK {
		t.Fatalf("vCenter back: %d", code)
	}
}

func TestMetricsMove(t *testing.T) {
	o := New(zerolog.Nop())
	obs := o.ServerObserver()
	obs.RequestStarted("compute", "get_host_uptime")
	obs.RequestDone("compute", "get_host_uptime", "NotImplementedError", 3*time.Millisecond)
	obs.Rejected("compute")
	o.OnPublish(rpc.PublishReply, time.Millisecond, nil)
	o.OnLinkEvent(rpc.LinkEvent{Purpose: "send", Connected: true})
	o.OnLinkEvent(rpc.LinkEvent{Purpose: "send", Connected: true})
	o.OnVCenterCall("PowerOnVM_Task", 2*time.Millisecond, nil)
	_, body := get(t, o.Handler(), "/metrics")
	for _, want := range []string{
		`vcagent_rpc_requests_total{method="get_host_uptime",outcome="NotImplementedError",topic="compute"} 1`,
		`vcagent_rpc_requests_in_flight{topic="compute"} 0`,
		`vcagent_rpc_rejected_total{topic="compute"} 1`,
		`vcagent_amqp_publishes_total{kind="reply",result="confirmed"} 1`,
		`vcagent_amqp_reconnects_total{purpose="send"} 1`,
		`vcagent_vcenter_calls_total{method="PowerOnVM_Task",result="ok"} 1`,
		`vcagent_rpc_request_duration_seconds_count{method="get_host_uptime",topic="compute"} 1`,
		"go_goroutines", "process_resident_memory_bytes",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

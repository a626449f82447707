package ops

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// Ops holds the agent's metrics and readiness.
type Ops struct {
	reg *prometheus.Registry
	log zerolog.Logger

	rpcRequests  *prometheus.CounterVec
	rpcDuration  *prometheus.HistogramVec
	rpcInFlight  *prometheus.GaugeVec
	rpcRejected  *prometheus.CounterVec
	publishes    *prometheus.CounterVec
	publishTime  *prometheus.HistogramVec
	amqpUp       *prometheus.GaugeVec
	reconnects   *prometheus.CounterVec
	vcenterCalls *prometheus.CounterVec
	vcenterTime  *prometheus.HistogramVec

	mu       sync.Mutex
	ready    map[string]string // component -> "" when ready, else why not
	everUp   map[string]bool   // AMQP connections that have connected once
	listener net.Addr
}

// New creates the metrics (with Go's and the process's collectors) and an
// empty readiness table.
func New(log zerolog.Logger) *Ops {
	o := &Ops{reg: prometheus.NewRegistry(), log: log, ready: map[string]string{}, everUp: map[string]bool{}}
	o.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	o.rpcRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vcagent_rpc_requests_total",
		Help: "RPC requests handled, by topic, method and outcome (ok or the exception class returned)."}, []string{"topic", "method", "outcome"})
	o.rpcDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "vcagent_rpc_request_duration_seconds",
		Help: "Time to handle an RPC request.", Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)}, []string{"topic", "method"})
	o.rpcInFlight = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vcagent_rpc_requests_in_flight",
		Help: "RPC requests being handled."}, []string{"topic"})
	o.rpcRejected = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vcagent_rpc_rejected_total",
		Help: "Messages dropped as undecodable."}, []string{"topic"})
	o.publishes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vcagent_amqp_publishes_total",
		Help: "Messages published, by kind and result (confirmed or error)."}, []string{"kind", "result"})
	o.publishTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "vcagent_amqp_publish_duration_seconds",
		Help: "Time from publish to the broker's confirm.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}, []string{"kind"})
	o.amqpUp = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vcagent_amqp_connection_up",
		Help: "1 while the AMQP connection is open."}, []string{"purpose"})
	o.reconnects = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vcagent_amqp_reconnects_total",
		Help: "AMQP connections re-established after a loss."}, []string{"purpose"})
	o.vcenterCalls = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vcagent_vcenter_calls_total",
		Help: "vCenter SOAP calls, by method and result (ok, fault or error)."}, []string{"method", "result"})
	o.vcenterTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "vcagent_vcenter_call_duration_seconds",
		Help: "vCenter SOAP call latency.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 9)}, []string{"method"})
	o.reg.MustRegister(o.rpcRequests, o.rpcDuration, o.rpcInFlight, o.rpcRejected, o.publishes,
		o.publishTime, o.amqpUp, o.reconnects, o.vcenterCalls, o.vcenterTime)
	return o
}

// Registry is where a role registers metrics of its own.
func (o *Ops) Registry() prometheus.Registerer { return o.reg }

// GaugeVecFunc registers a gauge with one label, its series read from f
// (label value -> value) at each scrape. The label's values must be few
// (clusters, never instances).
func (o *Ops) GaugeVecFunc(name, help, label string, f func() map[string]float64) {
	o.reg.MustRegister(&gaugeVecFunc{desc: prometheus.NewDesc(name, help, []string{label}, nil), f: f})
}

type gaugeVecFunc struct {
	desc *prometheus.Desc
	f    func() map[string]float64
}

func (g *gaugeVecFunc) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

func (g *gaugeVecFunc) Collect(ch chan<- prometheus.Metric) {
	for label, v := range g.f() {
		ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, v, label)
	}
}

// CounterFunc registers a counter read from f at each scrape, for totals a
// component already keeps (vCenter re-logins).
func (o *Ops) CounterFunc(name, help string, f func() float64) {
	o.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
}

// GaugeFunc registers a gauge read from f at each scrape, for values a
// role already keeps (tasks in flight, queued builds), so that the role
// needs no metrics library of its own.
func (o *Ops) GaugeFunc(name, help string, f func() float64) {
	o.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
}

// SetReady records whether a component is ready; reason says why not.
func (o *Ops) SetReady(component string, ready bool, reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if ready {
		o.ready[component] = ""
	} else {
		if reason == "" {
			reason = "not ready"
		}
		o.ready[component] = reason
	}
}

// Ready reports whether every registered component is ready, and the
// reasons of those that are not.
func (o *Ops) Ready() (bool, []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var why []string
	for c, reason := range o.ready {
		if reason != "" {
			why = append(why, c+": "+reason)
		}
	}
	sort.Strings(why)
	return len(o.ready) > 0 && len(why) == 0, why
}

// OnLinkEvent follows the AMQP connections (rpc.Config.OnLinkEvent).
func (o *Ops) OnLinkEvent(ev rpc.LinkEvent) {
	name := "amqp_" + ev.Purpose
	if ev.Connected {
		o.amqpUp.WithLabelValues(ev.Purpose).Set(1)
		o.mu.Lock()
		again := o.everUp[ev.Purpose]
		o.everUp[ev.Purpose] = true
		o.mu.Unlock()
		if again {
			o.reconnects.WithLabelValues(ev.Purpose).Inc()
		}
		o.SetReady(name, true, "")
		return
	}
	o.amqpUp.WithLabelValues(ev.Purpose).Set(0)
	reason := "disconnected from the broker"
	if ev.Err != nil {
		reason += ": " + ev.Err.Error()
	}
	o.SetReady(name, false, reason)
}

// OnPublish counts publishes (rpc.Config.OnPublish).
func (o *Ops) OnPublish(kind string, d time.Duration, err error) {
	result := "confirmed"
	if err != nil {
		result = "error"
	}
	o.publishes.WithLabelValues(kind, result).Inc()
	if err == nil {
		o.publishTime.WithLabelValues(kind).Observe(d.Seconds())
	}
}

// OnVCenterCall counts vCenter calls (vcenter.Config.OnCall) and follows
// whether vCenter answers: a fault is an answer, a network error is not.
func (o *Ops) OnVCenterCall(method string, d time.Duration, err error) {
	result := "ok"
	switch {
	case err == nil:
	case vcenter.IsFault(err):
		result = "fault"
	default:
		result = "error"
	}
	o.vcenterCalls.WithLabelValues(method, result).Inc()
	o.vcenterTime.WithLabelValues(method).Observe(d.Seconds())
	if result == "error" && !errors.Is(err, context.Canceled) {
		o.SetReady("vcenter", false, "vCenter does not answer: "+err.Error())
	} else if result != "error" {
		o.SetReady("vcenter", true, "")
	}
}

// ServerObserver returns the observer for rpc servers (rpc.ServerConfig.Observer).
func (o *Ops) ServerObserver() rpc.ServerObserver { return serverObserver{o} }

type serverObserver struct{ o *Ops }

func (s serverObserver) RequestStarted(topic, method string) {
	s.o.rpcInFlight.WithLabelValues(topic).Inc()
}

func (s serverObserver) RequestDone(topic, method, outcome string, d time.Duration) {
	s.o.rpcInFlight.WithLabelValues(topic).Dec()
	s.o.rpcRequests.WithLabelValues(topic, method, outcome).Inc()
	s.o.rpcDuration.WithLabelValues(topic, method).Observe(d.Seconds())
}

func (s serverObserver) Rejected(topic string) { s.o.rpcRejected.WithLabelValues(topic).Inc() }

// Handler serves /metrics, /healthz and /readyz.
func (o *Ops) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(o.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ok, why := o.Ready()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			if len(why) == 0 {
				why = []string{"starting"}
			}
			_, _ = fmt.Fprintln(w, "not ready: "+strings.Join(why, "; "))
			return
		}
		_, _ = fmt.Fprintln(w, "ok")
	})
	return mux
}

// Serve listens on addr and serves the handler until ctx ends.
func (o *Ops) Serve(ctx context.Context, addr string) error {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("operator endpoint %s: %w", addr, err)
	}
	o.mu.Lock()
	o.listener = ln.Addr()
	o.mu.Unlock()
	o.log.Info().Str("addr", ln.Addr().String()).Msg("operator endpoint listening (/metrics, /healthz, /readyz)")
	srv := &http.Server{Handler: o.Handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-errc
		return nil
	}
}

package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/compute"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// Agent runs the roles for one vCenter on one bus.
type Agent struct {
	cfg Config
	log zerolog.Logger

	mu    sync.Mutex
	ready map[string]bool // readiness by component
}

// New builds an agent from a loaded configuration.
func New(cfg Config, log zerolog.Logger) (*Agent, error) {
	if cfg.transport.Hosts == nil {
		return nil, fmt.Errorf("%w: configuration was not loaded with LoadConfig", ErrConfig)
	}
	return &Agent{cfg: cfg, log: log, ready: map[string]bool{}}, nil
}

// Run connects to vCenter and the bus and serves until ctx ends, then
// drains: it stops taking messages, lets in-flight work finish within
// ShutdownTimeout, closes the bus connections and logs out of vCenter.
func (a *Agent) Run(ctx context.Context) error {
	vcCfg := vcenter.Config{URL: a.cfg.VCenterURL, User: a.cfg.VCenterUser, Password: a.cfg.VCenterPassword, Insecure: a.cfg.VCenterInsecure, CAFile: a.cfg.VCenterCAFile}
	if a.cfg.VCenterURL == "" {
		sim, err := vcenter.StartSimulator(ctx, vcenter.SimulatorConfig{
			Clusters:        a.cfg.SimClusters,
			HostsPerCluster: a.cfg.SimHostsPerCluster,
			Datastores:      a.cfg.SimDatastores,
			ListenAddr:      "127.0.0.1:0",
		})
		if err != nil {
			return fmt.Errorf("start the embedded vCenter simulator: %w", err)
		}
		defer sim.Close()
		u := sim.URL()
		vcCfg = vcenter.Config{URL: u.String(), Insecure: true}
		a.log.Info().Str("url", u.Redacted()).Int("clusters", a.cfg.SimClusters).Int("hosts_per_cluster", a.cfg.SimHostsPerCluster).
			Msg("no vCenter configured: embedded vCenter simulator listening")
	}
	vc, err := vcenter.New(vcCfg, a.log)
	if err != nil {
		return fmt.Errorf("vCenter: %w", err)
	}
	if err := vc.Login(ctx); err != nil {
		return fmt.Errorf("vCenter login: %w", err)
	}
	defer func() {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := vc.Logout(lctx); err != nil {
			a.log.Warn().Err(err).Msg("vCenter logout failed")
		}
	}()
	if err := a.logInventory(ctx, vc); err != nil {
		return err
	}

	tr, err := rpc.NewTransport(rpc.Config{
		URL:     a.cfg.transport,
		Options: a.cfg.rpcOpts,
		Log:     a.log.With().Str("component", "rpc").Logger(),
		OnLinkEvent: func(ev rpc.LinkEvent) {
			a.setReady("amqp_"+ev.Purpose, ev.Connected)
		},
	})
	if err != nil {
		return fmt.Errorf("bus: %w", err)
	}
	defer tr.Close()
	a.log.Info().Str("transport_url", a.cfg.transport.Redacted()).Str("host", a.cfg.Host).Msg("joining the bus")

	srv, err := tr.NewServer(rpc.ServerConfig{
		Target:       rpc.Target{Exchange: a.cfg.ControlExchange, Topic: compute.Topic, Server: a.cfg.Host},
		Endpoints:    compute.Endpoints(),
		DrainTimeout: a.cfg.ShutdownTimeout,
		OnConsuming:  func(on bool) { a.setReady("compute_rpc", on) },
	})
	if err != nil {
		return err
	}
	err = srv.Run(ctx)
	a.log.Info().Msg("compute RPC server stopped")
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// logInventory logs the clusters and datastores the agent will serve.
func (a *Agent) logInventory(ctx context.Context, vc *vcenter.Session) error {
	clusters, err := vc.Clusters(ctx, a.cfg.Clusters...)
	if err != nil {
		return fmt.Errorf("read vCenter inventory: %w", err)
	}
	if len(clusters) == 0 {
		return fmt.Errorf("%w: vCenter has no cluster to serve (VCAGENT_CLUSTERS=%v)", ErrConfig, a.cfg.Clusters)
	}
	about := vc.About()
	a.log.Info().Str("vcenter", about.FullName).Str("instance_uuid", vc.InstanceUUID()).Int("clusters", len(clusters)).Msg("connected to vCenter")
	for _, c := range clusters {
		res := c.Resources(a.cfg.dsRegex)
		var names []string
		for _, ds := range c.UsableDatastores(a.cfg.dsRegex) {
			names = append(names, ds.Name)
		}
		a.log.Info().Str("cluster", c.Name).Str("moref", c.Ref.Value).Int("hosts", len(c.Hosts)).
			Int64("vcpus", res.VCPUs).Int64("memory_mb", res.MemoryMB).Int64("disk_gb", res.DiskTotalGB).
			Strs("datastores", names).Msg("serving cluster")
	}
	return nil
}

func (a *Agent) setReady(component string, ok bool) {
	a.mu.Lock()
	a.ready[component] = ok
	a.mu.Unlock()
}

package network

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// Identity of the agent in neutron's agents table, as networking-vsphere's
// DVS agent reported itself: the mechanism driver binds only on hosts with
// a live agent of this type.
const (
	AgentType   = "DVS agent"
	AgentBinary = "neutron-dvs-agent"
)

// Topics the role serves and calls (neutron_lib.agent.topics).
const (
	topicDVS           = "q-agent-notifier-dvs-update"
	topicPortUpdate    = "q-agent-notifier-port-update"
	topicPortDelete    = "q-agent-notifier-port-delete"
	topicNetworkUpdate = "q-agent-notifier-network-update"
	topicNetworkDelete = "q-agent-notifier-network-delete"
	topicSecurityGroup = "q-agent-notifier-security_group-update"
	topicPlugin        = "q-plugin"
	topicReports       = "q-reports-plugin"
)

// Switches is what the role needs of vCenter (drivers/vcenter.Session).
type Switches interface {
	DVSByName(ctx context.Context, name string) (vcenter.DVS, error)
	Portgroups(ctx context.Context, d vcenter.DVS) ([]vcenter.Portgroup, error)
	EnsurePortgroup(ctx context.Context, d vcenter.DVS, spec vcenter.PortgroupSpec) (vcenter.Portgroup, error)
	DestroyPortgroup(ctx context.Context, pg vcenter.Ref) error
	Ports(ctx context.Context, d vcenter.DVS, portgroupKeys ...string) ([]vcenter.DVPort, error)
	ReservePort(ctx context.Context, d vcenter.DVS, pg vcenter.Portgroup, name string) (vcenter.DVPort, error)
	ReleasePort(ctx context.Context, d vcenter.DVS, portKey string) error
	SetPortFilter(ctx context.Context, d vcenter.DVS, portKey string, rules []vcenter.TrafficRule) error
}

// Config is the network role's configuration.
type Config struct {
	// Host is the agent's host: the nova compute host, which nova puts in
	// the ports' binding:host_id.
	Host string
	// Exchange is neutron's control exchange ("neutron").
	Exchange string
	// BridgeMappings maps physical networks to DVS names.
	BridgeMappings map[string]string
	// ReportInterval is the report_state period (neutron's
	// [AGENT] report_interval); PollingInterval how often the DVS ports
	// are read for NICs that connected or left.
	ReportInterval  time.Duration
	PollingInterval time.Duration
	// SecurityGroups programs security groups as DVS traffic filters.
	SecurityGroups bool
	// PortgroupPorts is the size of a new port group (doubled when full).
	PortgroupPorts int
	// VCenterHost is reported as configurations.vsphere_hostname.
	VCenterHost string
	// RPCTimeout bounds the role's calls to neutron-server.
	RPCTimeout   time.Duration
	DrainTimeout time.Duration
	RPCObserver  rpc.ServerObserver
}

func (c *Config) defaults() {
	if c.Exchange == "" {
		c.Exchange = "neutron"
	}
	if c.ReportInterval <= 0 {
		c.ReportInterval = 30 * time.Second
	}
	if c.PollingInterval <= 0 {
		c.PollingInterval = 2 * time.Second
	}
	if c.PortgroupPorts <= 0 {
		c.PortgroupPorts = 4
	}
	if c.RPCTimeout <= 0 {
		c.RPCTimeout = 60 * time.Second
	}
}

// Agent is the network role. Run serves it.
type Agent struct {
	cfg         Config
	tr          *rpc.Transport
	sw          Switches
	log         zerolog.Logger
	onConsuming func(bool)

	reports rpc.Client // q-reports-plugin, report_state
	plugin  rpc.Client // q-plugin: devices
	secgrp  rpc.Client // q-plugin, security groups
	pull    rpc.Client // q-plugin, resources bulk_pull

	// callFn, when set, replaces calls to neutron-server (tests).
	callFn func(ctx context.Context, target rpc.Target, method string, args any) (json.RawMessage, error)

	st *state
	// resync asks the sync loop for a full resynchronisation (start,
	// "revived", a reconnect); poke for an early device pass.
	resync chan struct{}
	poke   chan struct{}
}

// New builds the network role on the shared bus and vCenter session.
func New(cfg Config, tr *rpc.Transport, sw Switches, onConsuming func(bool), log zerolog.Logger) (*Agent, error) {
	cfg.defaults()
	if cfg.Host == "" {
		return nil, errors.New("network role: no host")
	}
	if len(cfg.BridgeMappings) == 0 {
		return nil, errors.New("network role: no bridge mappings (physnet:dvs)")
	}
	a := &Agent{
		cfg: cfg, tr: tr, sw: sw, onConsuming: onConsuming,
		log:    log.With().Str("role", "network").Logger(),
		st:     newState(),
		resync: make(chan struct{}, 1),
		poke:   make(chan struct{}, 1),
	}
	client := func(topic, version string, timeout time.Duration) rpc.Client {
		target := rpc.Target{Exchange: cfg.Exchange, Topic: topic, Version: version}
		c := rpc.Client{Target: target}
		if tr != nil {
			c = tr.NewClient(target)
		}
		c.Timeout = timeout
		return c
	}
	a.reports = client(topicReports, "1.2", cfg.ReportInterval)
	a.plugin = client(topicPlugin, "1.9", cfg.RPCTimeout)
	a.secgrp = client(topicPlugin, "1.3", cfg.RPCTimeout)
	a.pull = client(topicPlugin, "1.1", cfg.RPCTimeout)
	return a, nil
}

// AgentID is the agent_id the role gives neutron in device calls.
func (a *Agent) AgentID() string { return "dvs-agent-" + a.cfg.Host }

// Run serves the role until ctx ends: the RPC servers (so that bind_port
// is answered from the first report on), the state reports, and the loop
// that resynchronises and watches the DVS ports.
func (a *Agent) Run(ctx context.Context) error {
	servers, err := a.servers()
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(servers))
	for _, srv := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
				errs <- err
			}
		}()
	}
	a.requestResync()
	wg.Add(2)
	go func() { defer wg.Done(); a.runReports(ctx) }()
	go func() { defer wg.Done(); a.runSync(ctx) }()
	a.log.Info().Str("exchange", a.cfg.Exchange).Any("bridge_mappings", a.cfg.BridgeMappings).Msg("network role started")
	select {
	case <-ctx.Done():
		err = nil
	case err = <-errs:
	}
	wg.Wait()
	return err
}

// servers builds one RPC server per topic, as neutron's create_consumers
// does: each consumes <topic>, <topic>.<host> and its own fanout queue.
func (a *Agent) servers() ([]*rpc.Server, error) {
	dvs := rpc.Endpoint{Version: "1.1", Methods: map[string]rpc.Handler{
		"create_network":   a.createNetwork,
		"update_network":   a.updateNetwork,
		"delete_network":   a.deleteNetwork,
		"bind_port":        a.bindPort,
		"post_update_port": a.postUpdatePort,
		"delete_port":      a.deletePort,
	}}
	ml2 := rpc.Endpoint{Version: "1.7", Methods: map[string]rpc.Handler{
		"port_update":                    a.portUpdate,
		"port_delete":                    a.portDelete,
		"network_update":                 a.networkUpdate,
		"network_delete":                 a.networkDelete,
		"security_groups_rule_updated":   a.securityGroupsUpdated,
		"security_groups_member_updated": a.securityGroupsUpdated,
	}}
	var (
		servers   []*rpc.Server
		mu        sync.Mutex
		consuming = map[string]bool{}
		started   = map[string]bool{}
	)
	for _, t := range []struct {
		topic string
		ep    rpc.Endpoint
	}{
		{topicDVS, dvs}, {topicPortUpdate, ml2}, {topicPortDelete, ml2},
		{topicNetworkUpdate, ml2}, {topicNetworkDelete, ml2}, {topicSecurityGroup, ml2},
	} {
		target := rpc.Target{Exchange: a.cfg.Exchange, Topic: t.topic, Server: a.cfg.Host}
		key := target.String()
		consuming[key] = false
		srv, err := a.tr.NewServer(rpc.ServerConfig{
			Target:       target,
			Endpoints:    []rpc.Endpoint{t.ep},
			DrainTimeout: a.cfg.DrainTimeout,
			Observer:     a.cfg.RPCObserver,
			OnConsuming: func(on bool) {
				mu.Lock()
				// Consuming again after a loss: fanouts sent meanwhile
				// are gone, so everything is read again.
				again := on && started[key] && !consuming[key]
				consuming[key] = on
				started[key] = started[key] || on
				all := true
				for _, v := range consuming {
					all = all && v
				}
				mu.Unlock()
				if again {
					a.log.Info().Str("topic", t.topic).Msg("consuming again after a bus outage: resynchronising")
					a.requestResync()
				}
				if a.onConsuming != nil {
					a.onConsuming(all)
				}
			},
		})
		if err != nil {
			return nil, fmt.Errorf("network RPC server %s: %w", target, err)
		}
		servers = append(servers, srv)
	}
	return servers, nil
}

func (a *Agent) requestResync() {
	select {
	case a.resync <- struct{}{}:
	default:
	}
}

func (a *Agent) pokeDevices() {
	select {
	case a.poke <- struct{}{}:
	default:
	}
}

// adminContext is neutron's get_admin_context() as an agent sends it.
func adminContext() rpc.Context {
	rc, _ := rpc.NewContext(map[string]any{
		"user_id": nil, "project_id": nil, "system_scope": "all", "domain_id": nil,
		"user_domain_id": nil, "project_domain_id": nil, "is_admin": true, "read_only": false,
		"show_deleted": false, "auth_token": nil, "request_id": "req-" + newUUID(),
		"global_request_id": nil, "resource_uuid": nil, "roles": []string{"admin"},
		"user_identity": "- - - - -", "is_admin_project": true, "tenant_id": nil,
		"project_name": nil, "user_name": nil, "tenant_name": nil,
		"timestamp": time.Now().UTC().Format("2006-01-02 15:04:05.000000"),
	})
	return rc
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// decode is json.Unmarshal of a request's or reply's JSON into v.
func decode(raw json.RawMessage, v any) error {
	if len(raw) == 0 {
		return nil
	}
	return json.Unmarshal(raw, v)
}

//go:build integration

package cp

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Neutron sends a request to the control plane's real neutron-server (path below /v2.0,
// e.g. "/networks") with the control plane's token ("admin:admin": user admin of project
// admin, an admin) and returns the decoded JSON object (nil for an empty body). This is
// the same server nova uses (NeutronURL).
func (c *ControlPlane) Neutron(ctx context.Context, method, path string, body any) (map[string]any, error) {
	if c.NeutronServerURL == "" {
		return nil, errors.New("cp: env.json has no neutron_server_url (a control plane started before neutron-server was added: re-run up.sh)")
	}
	return c.Do(ctx, method, c.NeutronServerURL+"/v2.0"+path, body, nil)
}

// NeutronGET is Neutron(ctx, "GET", path, nil).
func (c *ControlPlane) NeutronGET(ctx context.Context, path string) (map[string]any, error) {
	return c.Neutron(ctx, http.MethodGet, path, nil)
}

// NeutronPOST is Neutron(ctx, "POST", path, body).
func (c *ControlPlane) NeutronPOST(ctx context.Context, path string, body any) (map[string]any, error) {
	return c.Neutron(ctx, http.MethodPost, path, body)
}

// NeutronPUT is Neutron(ctx, "PUT", path, body).
func (c *ControlPlane) NeutronPUT(ctx context.Context, path string, body any) (map[string]any, error) {
	return c.Neutron(ctx, http.MethodPut, path, body)
}

// NeutronDELETE is Neutron(ctx, "DELETE", path, nil).
func (c *ControlPlane) NeutronDELETE(ctx context.Context, path string) (map[string]any, error) {
	return c.Neutron(ctx, http.MethodDelete, path, nil)
}

// NeutronAgents lists neutron's agents of host (all hosts if "") and agentType (all
// types if "", e.g. "DVS agent").
func (c *ControlPlane) NeutronAgents(ctx context.Context, host, agentType string) ([]map[string]any, error) {
	q := url.Values{}
	if host != "" {
		q.Set("host", host)
	}
	if agentType != "" {
		q.Set("agent_type", agentType)
	}
	path := "/agents"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	r, err := c.NeutronGET(ctx, path)
	if err != nil {
		return nil, err
	}
	return objects(r, "agents"), nil
}

// NeutronWaitAgent polls the agents API until an agent of agentType on host is alive
// (returned) or ctx ends.
func (c *ControlPlane) NeutronWaitAgent(ctx context.Context, host, agentType string) (map[string]any, error) {
	for {
		agents, err := c.NeutronAgents(ctx, host, agentType)
		if err != nil {
			return nil, err
		}
		for _, a := range agents {
			if a["alive"] == true {
				return a, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no live %q agent on %s (agents: %v): %w", agentType, host, agents, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// NeutronLog returns neutron-server's oslo log (WORK/log/neutron-server.log).
func (c *ControlPlane) NeutronLog() (string, error) {
	b, err := os.ReadFile(filepath.Join(c.LogDir, "neutron-server.log"))
	return string(b), err
}

// NeutronMechanismDrivers returns the ML2 mechanism drivers neutron-server's log says
// it loaded ("Loaded mechanism driver names: [...]", the latest start).
func (c *ControlPlane) NeutronMechanismDrivers() ([]string, error) {
	log, err := c.NeutronLog()
	if err != nil {
		return nil, err
	}
	const marker = "Loaded mechanism driver names: ["
	i := strings.LastIndex(log, marker)
	if i < 0 {
		return nil, errors.New("cp: neutron-server's log names no loaded mechanism driver")
	}
	rest := log[i+len(marker):]
	rest, _, _ = strings.Cut(rest, "]")
	var names []string
	for _, n := range strings.Split(rest, ",") {
		if n = strings.Trim(strings.TrimSpace(n), "'\""); n != "" {
			names = append(names, n)
		}
	}
	return names, nil
}

// objects is r[key] as a list of JSON objects.
func objects(r map[string]any, key string) []map[string]any {
	l, _ := r[key].([]any)
	out := make([]map[string]any, 0, len(l))
	for _, x := range l {
		if m, ok := x.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}

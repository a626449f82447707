package cloud

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"
)

// fakeNeutronAPI answers a few neutron requests and records them.
type fakeNeutronAPI struct {
	mu   sync.Mutex
	reqs []string // "METHOD path?query body"
}

func (f *fakeNeutronAPI) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	line := r.Method + " " + r.URL.Path
	if r.URL.RawQuery != "" {
		line += "?" + r.URL.RawQuery
	}
	if len(body) > 0 {
		line += " " + string(body)
	}
	f.reqs = append(f.reqs, line)
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.Header.Get("X-Auth-Token") != "service-token":
		w.WriteHeader(http.StatusUnauthorized)
	case r.Method == http.MethodGet && r.URL.Path == "/v2.0/ports/p1":
		_, _ = io.WriteString(w, `{"port": {"id": "p1", "network_id": "n1", "tenant_id": "proj", "mac_address": "fa:16:3e:00:00:01",
			"admin_state_up": true, "status": "ACTIVE", "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.0.0.5"}],
			"binding:host_id": "h1", "binding:vif_type": "dvs", "binding:vnic_type": "normal",
			"binding:vif_details": {"dvs_id": "50 1a", "pg_id": "dvportgroup-1", "dvs_port_key": "12", "port_filter": true},
			"binding:profile": {}}}`)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v2.0/ports/"):
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"NeutronError": {"type": "PortNotFound", "message": "Port nope could not be found.", "detail": ""}}`)
	case r.Method == http.MethodGet && r.URL.Path == "/v2.0/ports":
		_, _ = io.WriteString(w, `{"ports": [{"id": "p1"}, {"id": "p2"}]}`)
	case r.Method == http.MethodPost && r.URL.Path == "/v2.0/ports":
		if strings.Contains(string(body), "full-net") {
			w.WriteHeader(http.StatusConflict)
			_, _ = io.WriteString(w, `{"NeutronError": {"type": "IpAddressGenerationFailure", "message": "No more IP addresses available on network full-net.", "detail": ""}}`)
			return
		}
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"port": {"id": "p3", "network_id": "n1", "binding:vif_type": "unbound"}}`)
	case r.Method == http.MethodPut && r.URL.Path == "/v2.0/ports/p1":
		_, _ = io.WriteString(w, `{"port": {"id": "p1", "binding:host_id": "", "binding:vif_type": "unbound"}}`)
	case r.Method == http.MethodDelete && r.URL.Path == "/v2.0/ports/p1":
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodGet && r.URL.Path == "/v2.0/networks/n1":
		_, _ = io.WriteString(w, `{"network": {"id": "n1", "name": "net1", "tenant_id": "proj", "mtu": 1500,
			"subnets": ["s1"], "port_security_enabled": true, "provider:physical_network": "physnet1",
			"provider:network_type": "vlan", "router:external": false}}`)
	case r.Method == http.MethodGet && r.URL.Path == "/v2.0/networks":
		_, _ = io.WriteString(w, `{"networks": [{"id": "n1", "shared": true}]}`)
	case r.Method == http.MethodGet && r.URL.Path == "/v2.0/subnets":
		_, _ = io.WriteString(w, `{"subnets": [{"id": "s1", "network_id": "n1", "cidr": "10.0.0.0/24", "gateway_ip": null,
			"ip_version": 4, "enable_dhcp": true, "dns_nameservers": ["8.8.8.8"],
			"host_routes": [{"destination": "10.1.0.0/16", "nexthop": "10.0.0.254"}]}]}`)
	case r.Method == http.MethodGet && r.URL.Path == "/v2.0/security-groups":
		_, _ = io.WriteString(w, `{"security_groups": [{"id": "sg1", "name": "default"}]}`)
	case r.Method == http.MethodGet && r.URL.Path == "/v2.0/floatingips":
		_, _ = io.WriteString(w, `{"floatingips": [{"id": "f1", "floating_ip_address": "172.24.4.9"}]}`)
	case r.Method == http.MethodGet && r.URL.Path == "/v2.0/extensions":
		_, _ = io.WriteString(w, `{"extensions": [{"alias": "binding"}, {"alias": "multi-provider"}]}`)
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}

func TestNeutronClient(t *testing.T) {
	f := &fakeNeutronAPI{}
	srv := httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(srv.Close)
	// The endpoint with or without /v2.0 reaches the same resources.
	for _, ep := range []string{srv.URL, srv.URL + "/v2.0/"} {
		sess, err := NewSession(context.Background(), AuthConfig{Token: "service-token", PlacementEndpoint: srv.URL, NeutronEndpoint: ep}, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		n, err := NewNeutron(sess)
		if err != nil {
			t.Fatal(err)
		}
		p, err := n.ShowPort(context.Background(), "p1")
		if err != nil {
			t.Fatal(err)
		}
		if p.VIFType != "dvs" || p.VIFDetails["pg_id"] != "dvportgroup-1" || p.HostID != "h1" || p.Tenant() != "proj" ||
			len(p.FixedIPs) != 1 || p.FixedIPs[0].IPAddress != "10.0.0.5" || !p.AdminStateUp {
			t.Fatalf("port %+v", p)
		}
	}
	sess, _ := NewSession(context.Background(), AuthConfig{Token: "service-token", PlacementEndpoint: srv.URL, NeutronEndpoint: srv.URL}, zerolog.Nop())
	n, _ := NewNeutron(sess)
	ctx := context.Background()

	_, err := n.ShowPort(ctx, "nope")
	if !errors.Is(err, ErrNotFound) || NeutronErrorType(err) != "PortNotFound" || NeutronStatus(err) != http.StatusNotFound ||
		!strings.Contains(err.Error(), "Port nope could not be found.") {
		t.Errorf("missing port: %v (type %q)", err, NeutronErrorType(err))
	}
	ports, err := n.ListPorts(ctx, url.Values{"device_id": {"inst"}, "tenant_id": {"proj"}})
	if err != nil || len(ports) != 2 {
		t.Fatalf("list ports: %v %v", ports, err)
	}
	created, err := n.CreatePort(ctx, map[string]any{"network_id": "n1", "tenant_id": "proj", "device_id": "inst"})
	if err != nil || created.ID != "p3" {
		t.Fatalf("create: %+v %v", created, err)
	}
	_, err = n.CreatePort(ctx, map[string]any{"network_id": "full-net"})
	if NeutronErrorType(err) != "IpAddressGenerationFailure" || NeutronStatus(err) != http.StatusConflict {
		t.Errorf("create on a full network: %v", err)
	}
	if _, err := n.UpdatePort(ctx, "p1", map[string]any{"device_id": "", "binding:host_id": nil}); err != nil {
		t.Fatal(err)
	}
	if err := n.DeletePort(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	if err := n.DeletePort(ctx, "gone"); !errors.Is(err, ErrNotFound) {
		t.Errorf("delete of a missing port: %v", err)
	}
	net, err := n.ShowNetwork(ctx, "n1")
	if err != nil || net.MTU == nil || *net.MTU != 1500 || net.PhysicalNetwork == nil || *net.PhysicalNetwork != "physnet1" ||
		net.PortSecurityEnabled == nil || !*net.PortSecurityEnabled {
		t.Fatalf("network %+v %v", net, err)
	}
	if nets, err := n.ListNetworks(ctx, url.Values{"id": {"n1", "n2"}}); err != nil || len(nets) != 1 || !nets[0].Shared {
		t.Fatalf("networks %+v %v", nets, err)
	}
	subnets, err := n.ListSubnets(ctx, url.Values{"id": {"s1"}})
	if err != nil || len(subnets) != 1 || subnets[0].GatewayIP != nil || subnets[0].HostRoutes[0].NextHop != "10.0.0.254" {
		t.Fatalf("subnets %+v %v", subnets, err)
	}
	if sgs, err := n.ListSecurityGroups(ctx, url.Values{"tenant_id": {"proj"}}); err != nil || len(sgs) != 1 || sgs[0].Name != "default" {
		t.Fatalf("security groups %+v %v", sgs, err)
	}
	if fips, err := n.ListFloatingIPs(ctx, url.Values{"port_id": {"p1"}}); err != nil || fips[0].FloatingIPAddress != "172.24.4.9" {
		t.Fatalf("floating IPs %+v %v", fips, err)
	}
	if exts, err := n.Extensions(ctx); err != nil || len(exts) != 2 || exts[1] != "multi-provider" {
		t.Fatalf("extensions %v %v", exts, err)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	want := map[string]bool{
		"GET /v2.0/ports?device_id=inst&tenant_id=proj":                       false,
		"GET /v2.0/networks?id=n1&id=n2":                                      false,
		"GET /v2.0/security-groups?fields=id&fields=name&tenant_id=proj":      false,
		`PUT /v2.0/ports/p1 {"port":{"binding:host_id":null,"device_id":""}}`: false,
		"DELETE /v2.0/ports/p1":                                               false,
	}
	for _, r := range f.reqs {
		if _, ok := want[r]; ok {
			want[r] = true
		}
		if strings.HasPrefix(r, "POST /v2.0/ports ") {
			var doc map[string]map[string]any
			if err := json.Unmarshal([]byte(strings.TrimPrefix(r, "POST /v2.0/ports ")), &doc); err != nil || doc["port"] == nil {
				t.Errorf("create body %s", r)
			}
		}
	}
	for r, seen := range want {
		if !seen {
			t.Errorf("request %q not sent; got %q", r, f.reqs)
		}
	}
}

func TestNeutronEndpointFromConfig(t *testing.T) {
	sess, err := NewSession(context.Background(), AuthConfig{Token: "t", PlacementEndpoint: "http://placement"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewNeutron(sess); !errors.Is(err, ErrAuthConfig) {
		t.Errorf("token auth without NeutronEndpoint: %v", err)
	}
	if err := (AuthConfig{Token: "t", PlacementEndpoint: "http://p", NeutronEndpoint: "neutron:9696"}).Validate(); !errors.Is(err, ErrAuthConfig) {
		t.Errorf("a NeutronEndpoint that is no URL: %v", err)
	}
}

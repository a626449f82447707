package compute

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/cloud"
	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/rpc"
)

// fakeNeutron is a neutron-server over httptest with ML2's port binding
// as the vmware_dvs mechanism driver does it: a port bound to a host with
// a live DVS agent gets vif_type dvs and its port group, elsewhere
// binding_failed.
type fakeNeutron struct {
	mu       sync.Mutex
	nets     map[string]map[string]any
	subnets  map[string]map[string]any
	ports    map[string]map[string]any
	order    []string
	sgs      []map[string]any
	bindable map[string]bool
	reqs     []string
	n        int
}

func newFakeNeutron(t *testing.T) (*fakeNeutron, *cloud.Neutron) {
	t.Helper()
	f := &fakeNeutron{
		nets:     map[string]map[string]any{},
		subnets:  map[string]map[string]any{},
		ports:    map[string]map[string]any{},
		bindable: map[string]bool{"host1": true},
		sgs: []map[string]any{
			{"id": "sg-default", "name": "default", "tenant_id": "proj"},
			{"id": "sg-web", "name": "web", "tenant_id": "proj"},
		},
	}
	srv := httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(srv.Close)
	sess, err := cloud.NewSession(context.Background(), cloud.AuthConfig{Token: "tok", PlacementEndpoint: srv.URL, NeutronEndpoint: srv.URL}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	n, err := cloud.NewNeutron(sess)
	if err != nil {
		t.Fatal(err)
	}
	return f, n
}

// addNetwork adds a network with one IPv4 subnet 10.<i>.0.0/24.
func (f *fakeNeutron) addNetwork(id, name, tenant string, shared bool, physnet string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := len(f.nets) + 1
	sid := "subnet-" + id
	f.nets[id] = map[string]any{"id": id, "name": name, "tenant_id": tenant, "shared": shared, "mtu": 1500,
		"subnets": []any{sid}, "port_security_enabled": true, "router:external": false,
		"provider:physical_network": physnet, "provider:network_type": "vlan", "admin_state_up": true}
	f.subnets[sid] = map[string]any{"id": sid, "network_id": id, "cidr": fmt.Sprintf("10.%d.0.0/24", i),
		"gateway_ip": fmt.Sprintf("10.%d.0.1", i), "ip_version": 4, "enable_dhcp": true,
		"dns_nameservers": []any{"8.8.8.8"}, "host_routes": []any{}}
}

// addPort adds a port the user made (no device) on network id.
func (f *fakeNeutron) addPort(id, netID, tenant string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.newPort(id, netID, tenant, nil)
}

func (f *fakeNeutron) newPort(id, netID, tenant string, ip any) map[string]any {
	f.n++
	var sub map[string]any
	for _, s := range f.subnets {
		if s["network_id"] == netID {
			sub = s
		}
	}
	fixed := []any{}
	if sub != nil {
		if ip == nil {
			cidr := sub["cidr"].(string)
			ip = strings.TrimSuffix(cidr, "0/24") + fmt.Sprint(10+f.n)
		}
		fixed = append(fixed, map[string]any{"subnet_id": sub["id"], "ip_address": ip})
	}
	p := map[string]any{"id": id, "network_id": netID, "tenant_id": tenant, "mac_address": fmt.Sprintf("fa:16:3e:00:00:%02x", f.n),
		"admin_state_up": true, "status": "DOWN", "device_id": "", "device_owner": "", "fixed_ips": fixed,
		"security_groups": []any{"sg-default"}, "binding:host_id": "", "binding:vif_type": "unbound",
		"binding:vnic_type": "normal", "binding:vif_details": map[string]any{}, "binding:profile": map[string]any{}}
	f.ports[id] = p
	f.order = append(f.order, id)
	return p
}

func (f *fakeNeutron) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.reqs)
}

func (f *fakeNeutron) port(id string) map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ports[id]
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func neutronErr(w http.ResponseWriter, code int, typ, msg string) {
	writeJSON(w, code, map[string]any{"NeutronError": map[string]any{"type": typ, "message": msg, "detail": ""}})
}

func matches(obj map[string]any, q map[string][]string, keys ...string) bool {
	for _, k := range keys {
		vals, ok := q[k]
		if !ok {
			continue
		}
		v := fmt.Sprint(obj[k])
		if b, isBool := obj[k].(bool); isBool {
			v = map[bool]string{true: "True", false: "False"}[b]
		}
		if !slices.Contains(vals, v) {
			return false
		}
	}
	return true
}

func (f *fakeNeutron) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	defer f.mu.Unlock()
	line := r.Method + " " + r.URL.Path
	if len(body) > 0 {
		line += " " + string(body)
	}
	f.reqs = append(f.reqs, line)
	q := r.URL.Query()
	parts := strings.Split(strings.Trim(strings.TrimPrefix(r.URL.Path, "/v2.0/"), "/"), "/")
	var doc map[string]map[string]any
	_ = json.Unmarshal(body, &doc)
	switch {
	case r.Method == http.MethodGet && parts[0] == "extensions":
		writeJSON(w, 200, map[string]any{"extensions": []any{map[string]any{"alias": "binding"}, map[string]any{"alias": "multi-provider"}}})
	case r.Method == http.MethodGet && parts[0] == "networks" && len(parts) == 1:
		out := []any{}
		for _, n := range f.nets {
			if matches(n, q, "id", "tenant_id", "shared") {
				out = append(out, n)
			}
		}
		slices.SortFunc(out, func(a, b any) int {
			return strings.Compare(a.(map[string]any)["id"].(string), b.(map[string]any)["id"].(string))
		})
		writeJSON(w, 200, map[string]any{"networks": out})
	case r.Method == http.MethodGet && parts[0] == "networks":
		n, ok := f.nets[parts[1]]
		if !ok {
			neutronErr(w, 404, "NetworkNotFound", "Network "+parts[1]+" could not be found.")
			return
		}
		writeJSON(w, 200, map[string]any{"network": n})
	case r.Method == http.MethodGet && parts[0] == "subnets":
		out := []any{}
		for _, s := range f.subnets {
			if matches(s, q, "id", "network_id") {
				out = append(out, s)
			}
		}
		writeJSON(w, 200, map[string]any{"subnets": out})
	case r.Method == http.MethodGet && parts[0] == "security-groups":
		out := []any{}
		for _, s := range f.sgs {
			if matches(s, q, "tenant_id") {
				out = append(out, map[string]any{"id": s["id"], "name": s["name"]})
			}
		}
		writeJSON(w, 200, map[string]any{"security_groups": out})
	case r.Method == http.MethodGet && parts[0] == "floatingips":
		// ML2 without the L3 router plugin, as the control plane's: no API.
		neutronErr(w, 404, "HTTPNotFound", "The resource could not be found.")
	case r.Method == http.MethodGet && parts[0] == "ports" && len(parts) == 1:
		out := []any{}
		for _, id := range f.order {
			if p := f.ports[id]; p != nil && matches(p, q, "id", "device_id", "tenant_id", "network_id", "device_owner") {
				out = append(out, p)
			}
		}
		writeJSON(w, 200, map[string]any{"ports": out})
	case parts[0] == "ports" && len(parts) == 2 && r.Method != http.MethodPost:
		p, ok := f.ports[parts[1]]
		if !ok {
			neutronErr(w, 404, "PortNotFound", "Port "+parts[1]+" could not be found.")
			return
		}
		switch r.Method {
		case http.MethodGet:
			writeJSON(w, 200, map[string]any{"port": p})
		case http.MethodDelete:
			delete(f.ports, parts[1])
			w.WriteHeader(http.StatusNoContent)
		case http.MethodPut:
			for k, v := range doc["port"] {
				p[k] = v
			}
			if host, ok := doc["port"]["binding:host_id"]; ok {
				f.bind(p, host)
			}
			writeJSON(w, 200, map[string]any{"port": p})
		}
	case r.Method == http.MethodPost && parts[0] == "ports":
		b := doc["port"]
		netID, _ := b["network_id"].(string)
		net, ok := f.nets[netID]
		if !ok {
			neutronErr(w, 404, "NetworkNotFound", "Network "+netID+" could not be found.")
			return
		}
		if net["name"] == "full" {
			neutronErr(w, 409, "IpAddressGenerationFailure", "No more IP addresses available on network "+netID+".")
			return
		}
		var ip any
		if fi, ok := b["fixed_ips"].([]any); ok && len(fi) > 0 {
			ip = fi[0].(map[string]any)["ip_address"]
		}
		id := fmt.Sprintf("port-%d-%s", f.n+1, strings.Repeat("x", 20))
		tenant, _ := b["tenant_id"].(string)
		p := f.newPort(id, netID, tenant, ip)
		for k, v := range b {
			if k != "fixed_ips" {
				p[k] = v
			}
		}
		if host, ok := b["binding:host_id"]; ok {
			f.bind(p, host)
		}
		writeJSON(w, 201, map[string]any{"port": p})
	default:
		neutronErr(w, 404, "HTTPNotFound", "no such resource")
	}
}

// bind is ML2 binding the port to host.
func (f *fakeNeutron) bind(p map[string]any, host any) {
	h, _ := host.(string)
	switch {
	case h == "":
		p["binding:host_id"] = ""
		p["binding:vif_type"] = "unbound"
		p["binding:vif_details"] = map[string]any{}
	case f.bindable[h] && f.nets[p["network_id"].(string)]["provider:physical_network"] == "physnet1":
		p["binding:vif_type"] = "dvs"
		p["binding:vif_details"] = map[string]any{"dvs_id": "50 0a 1b 2c", "pg_id": "dvportgroup-" + p["network_id"].(string),
			"dvs_port_key": "1" + fmt.Sprint(f.n), "port_filter": true, "ovs_hybrid_plug": false}
	default:
		p["binding:vif_type"] = "binding_failed"
		p["binding:vif_details"] = map[string]any{}
	}
}

// netConductor is a fake conductor answering by object and method, and
// recording what it was asked.
type netConductor struct {
	mu      sync.Mutex
	answer  func(obj, method string, args json.RawMessage) any
	actions []string // "Obj.method"
	saved   []map[string]any
	tr      *rpc.Transport
}

func (c *netConductor) handler(kind string) rpc.Handler {
	return func(_ context.Context, r *rpc.Request) (any, error) {
		var a struct {
			ObjName   string          `json:"objname"`
			ObjMethod string          `json:"objmethod"`
			ObjInst   json.RawMessage `json:"objinst"`
			Args      json.RawMessage `json:"args"`
		}
		_ = json.Unmarshal(r.Args, &a)
		if kind == "object_action" {
			var o struct {
				Name string         `json:"nova_object.name"`
				Data map[string]any `json:"nova_object.data"`
			}
			_ = json.Unmarshal(a.ObjInst, &o)
			a.ObjName = o.Name
			c.mu.Lock()
			c.actions = append(c.actions, o.Name+"."+a.ObjMethod)
			if a.ObjMethod == "save" || a.ObjMethod == "create" {
				o.Data["_name"] = o.Name
				c.saved = append(c.saved, o.Data)
			}
			c.mu.Unlock()
			return []any{map[string]any{}, nil}, nil
		}
		c.mu.Lock()
		c.actions = append(c.actions, a.ObjName+"."+a.ObjMethod)
		c.mu.Unlock()
		if c.answer != nil {
			return c.answer(a.ObjName, a.ObjMethod, a.Args), nil
		}
		return nil, nil
	}
}

// lastCache returns the network_info last saved to the info cache.
func (c *netConductor) lastCache(t *testing.T) []map[string]any {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.saved) - 1; i >= 0; i-- {
		if c.saved[i]["_name"] == "InstanceInfoCache" {
			var out []map[string]any
			if err := json.Unmarshal([]byte(c.saved[i]["network_info"].(string)), &out); err != nil {
				t.Fatal(err)
			}
			return out
		}
	}
	t.Fatal("no info cache saved")
	return nil
}

func (c *netConductor) did(action string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, a := range c.actions {
		if a == action {
			n++
		}
	}
	return n
}

func startNetConductor(t *testing.T, c *netConductor) *Conductor {
	t.Helper()
	u, err := rpc.ParseTransportURL("rabbit://guest:guest@127.0.0.1:5672/")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := rpc.NewTransport(rpc.Config{URL: u, Options: rpc.DefaultOptions(), Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.Close)
	c.tr = tr
	exchange := "vcagent_network_test_" + newUUID()[:8]
	consuming := make(chan struct{})
	var once sync.Once
	srv, err := tr.NewServer(rpc.ServerConfig{
		Target: rpc.Target{Exchange: exchange, Topic: "conductor", Server: "fake"},
		Endpoints: []rpc.Endpoint{{Version: "3.0", Methods: map[string]rpc.Handler{
			"object_action": c.handler("object_action"), "object_class_action_versions": c.handler("class"),
		}}, BaseAPIEndpoint("conductor")},
		OnConsuming: func(on bool) {
			if on {
				once.Do(func() { close(consuming) })
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-consuming:
	case <-time.After(15 * time.Second):
		t.Fatal("broker not reachable: fake conductor did not start")
	}
	return NewConductor(tr, exchange, 10*time.Second, zerolog.Nop())
}

const netUUID = "7b0e3c1d-2f4a-4b5c-8d6e-9f0a1b2c3d4e"

// netInstance is an instance of project proj with an empty info cache.
func netInstance() *ovo.Object {
	inst := ovo.New("Instance", "2.7")
	inst.SetString("uuid", netUUID)
	inst.SetString("project_id", "proj")
	inst.SetString("availability_zone", "nova")
	inst.SetString("hostname", "vm1")
	inst.SetString("host", "host1")
	inst.SetString("vm_state", "active")
	inst.SetBool("deleted", false)
	inst.SetStringDict("system_metadata", map[string]string{"image_hw_vif_model": "vmxnet3"})
	ic := ovo.New("InstanceInfoCache", "1.5")
	ic.SetString("instance_uuid", netUUID)
	ic.SetString("network_info", "[]")
	inst.SetObject("info_cache", ic)
	inst.ResetChangesRecursive()
	return inst
}

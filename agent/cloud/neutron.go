package cloud

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
)

// ServiceTypeNetwork is neutron's service type in the keystone catalog.
const ServiceTypeNetwork = "network"

// NetworkClient returns a neutron (networking v2.0) service client:
// NeutronEndpoint if set, else the catalog's network endpoint.
func (s *Session) NetworkClient() (*gophercloud.ServiceClient, error) {
	ep := s.cfg.NeutronEndpoint
	if ep == "" {
		if s.cfg.Token != "" {
			return nil, fmt.Errorf("%w: no NeutronEndpoint configured for token auth", ErrAuthConfig)
		}
		var err error
		if ep, err = s.endpoint(ServiceTypeNetwork); err != nil {
			return nil, err
		}
	}
	ep = gophercloud.NormalizeURL(ep)
	base := ep
	if !strings.HasSuffix(strings.TrimSuffix(ep, "/"), "/v2.0") {
		base = ep + "v2.0/"
	}
	return &gophercloud.ServiceClient{
		ProviderClient: s.provider,
		Endpoint:       ep,
		ResourceBase:   base,
		Type:           ServiceTypeNetwork,
	}, nil
}

// Neutron is the compute role's client of the networking service, as
// nova's nova.network.neutron uses it with the service's (admin) token:
// ports with the port binding extension's attributes, networks, subnets,
// security groups and floating IPs. Bodies are sent as nova sends them
// (explicit nulls included), so requests are plain JSON documents.
//
// Errors are *HTTPError values whose Code is neutron's error type (the
// "type" of its {"NeutronError": {...}} document, e.g. "PortNotFound",
// "IpAddressGenerationFailure", "OverQuota").
type Neutron struct {
	sc *gophercloud.ServiceClient
}

// NewNeutron returns a neutron client on the session's network endpoint.
func NewNeutron(s *Session) (*Neutron, error) {
	sc, err := s.NetworkClient()
	if err != nil {
		return nil, err
	}
	return &Neutron{sc: sc}, nil
}

// Port is a neutron port with the attributes nova reads.
type Port struct {
	ID             string        `json:"id"`
	Name           string        `json:"name"`
	NetworkID      string        `json:"network_id"`
	TenantID       string        `json:"tenant_id"`
	ProjectID      string        `json:"project_id"`
	MACAddress     string        `json:"mac_address"`
	AdminStateUp   bool          `json:"admin_state_up"`
	Status         string        `json:"status"`
	DeviceID       string        `json:"device_id"`
	DeviceOwner    string        `json:"device_owner"`
	FixedIPs       []PortFixedIP `json:"fixed_ips"`
	SecurityGroups []string      `json:"security_groups"`
	DNSName        string        `json:"dns_name"`
	// The port binding extension (binding:*).
	HostID     string         `json:"binding:host_id"`
	VIFType    string         `json:"binding:vif_type"`
	VNICType   string         `json:"binding:vnic_type"`
	VIFDetails map[string]any `json:"binding:vif_details"`
	Profile    map[string]any `json:"binding:profile"`
	// ResourceRequest is the port's QoS resource request (admin only).
	ResourceRequest any `json:"resource_request"`
}

// Tenant returns the port's project (tenant_id, else project_id).
func (p Port) Tenant() string {
	if p.TenantID != "" {
		return p.TenantID
	}
	return p.ProjectID
}

// PortFixedIP is one of a port's fixed IPs.
type PortFixedIP struct {
	SubnetID  string `json:"subnet_id"`
	IPAddress string `json:"ip_address"`
}

// Network is a neutron network with the attributes nova reads.
type Network struct {
	ID       string   `json:"id"`
	Name     string   `json:"name"`
	TenantID string   `json:"tenant_id"`
	Shared   bool     `json:"shared"`
	Status   string   `json:"status"`
	Subnets  []string `json:"subnets"`
	// MTU is nil when neutron does not report one.
	MTU *int64 `json:"mtu"`
	// PortSecurityEnabled is nil without the port-security extension.
	PortSecurityEnabled *bool  `json:"port_security_enabled"`
	RouterExternal      bool   `json:"router:external"`
	DNSDomain           string `json:"dns_domain"`
	// The provider extension (admin only).
	PhysicalNetwork *string `json:"provider:physical_network"`
	NetworkType     *string `json:"provider:network_type"`
	// Segments is the multi-provider extension's list of segments.
	Segments []map[string]any `json:"segments"`
}

// Subnet is a neutron subnet with the attributes nova reads.
type Subnet struct {
	ID              string      `json:"id"`
	NetworkID       string      `json:"network_id"`
	CIDR            string      `json:"cidr"`
	GatewayIP       *string     `json:"gateway_ip"`
	IPVersion       int         `json:"ip_version"`
	EnableDHCP      bool        `json:"enable_dhcp"`
	DNSNameservers  []string    `json:"dns_nameservers"`
	HostRoutes      []HostRoute `json:"host_routes"`
	IPv6AddressMode *string     `json:"ipv6_address_mode"`
}

// HostRoute is a subnet's host route.
type HostRoute struct {
	Destination string `json:"destination"`
	NextHop     string `json:"nexthop"`
}

// SecurityGroup is a neutron security group (id and name, the fields nova
// asks for).
type SecurityGroup struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// FloatingIP is a neutron floating IP.
type FloatingIP struct {
	ID                string `json:"id"`
	FloatingIPAddress string `json:"floating_ip_address"`
	FixedIPAddress    string `json:"fixed_ip_address"`
	PortID            string `json:"port_id"`
}

// neutronError converts a failed request's error into an *HTTPError whose
// Code is neutron's error type and Message its message.
func neutronError(op string, err error) error {
	he := httpError(err)
	var h *HTTPError
	if errors.As(he, &h) {
		var ue gophercloud.ErrUnexpectedResponseCode
		var body []byte
		if errors.As(err, &ue) {
			body = ue.Body
		} else if pue := (*gophercloud.ErrUnexpectedResponseCode)(nil); errors.As(err, &pue) && pue != nil {
			body = pue.Body
		}
		var doc struct {
			NeutronError struct {
				Type    string `json:"type"`
				Message string `json:"message"`
			} `json:"NeutronError"`
		}
		if json.Unmarshal(body, &doc) == nil && doc.NeutronError.Type != "" {
			h.Code = doc.NeutronError.Type
			if doc.NeutronError.Message != "" {
				h.Message = doc.NeutronError.Message
			}
		}
	}
	return fmt.Errorf("neutron: %s: %w", op, he)
}

// NeutronErrorType returns neutron's error type of err ("" if err is not
// a neutron error document).
func NeutronErrorType(err error) string {
	var h *HTTPError
	if errors.As(err, &h) {
		return h.Code
	}
	return ""
}

// NeutronStatus returns the HTTP status of a neutron error (0 if none).
func NeutronStatus(err error) int {
	var h *HTTPError
	if errors.As(err, &h) {
		return h.Status
	}
	return 0
}

func (n *Neutron) get(ctx context.Context, op string, out any, q url.Values, path ...string) error {
	u := n.sc.ServiceURL(path...)
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	_, err := n.sc.Get(ctx, u, out, &gophercloud.RequestOpts{OkCodes: []int{http.StatusOK}})
	if err != nil {
		return neutronError(op, err)
	}
	return nil
}

// ShowPort is GET /v2.0/ports/{id}.
func (n *Neutron) ShowPort(ctx context.Context, id string) (Port, error) {
	var r struct {
		Port Port `json:"port"`
	}
	err := n.get(ctx, "show port "+id, &r, nil, "ports", id)
	return r.Port, err
}

// ListPorts is GET /v2.0/ports with the query (device_id, tenant_id,
// network_id, device_owner, …; repeated keys for several values).
func (n *Neutron) ListPorts(ctx context.Context, q url.Values) ([]Port, error) {
	var r struct {
		Ports []Port `json:"ports"`
	}
	err := n.get(ctx, "list ports", &r, q, "ports")
	return r.Ports, err
}

// CreatePort is POST /v2.0/ports with body as the "port" document.
func (n *Neutron) CreatePort(ctx context.Context, body map[string]any) (Port, error) {
	var r struct {
		Port Port `json:"port"`
	}
	_, err := n.sc.Post(ctx, n.sc.ServiceURL("ports"), map[string]any{"port": body}, &r,
		&gophercloud.RequestOpts{OkCodes: []int{http.StatusCreated}})
	if err != nil {
		return Port{}, neutronError("create port", err)
	}
	return r.Port, nil
}

// UpdatePort is PUT /v2.0/ports/{id} with body as the "port" document
// (a nil value is sent as null, e.g. binding:host_id to unbind).
func (n *Neutron) UpdatePort(ctx context.Context, id string, body map[string]any) (Port, error) {
	var r struct {
		Port Port `json:"port"`
	}
	_, err := n.sc.Put(ctx, n.sc.ServiceURL("ports", id), map[string]any{"port": body}, &r,
		&gophercloud.RequestOpts{OkCodes: []int{http.StatusOK}})
	if err != nil {
		return Port{}, neutronError("update port "+id, err)
	}
	return r.Port, nil
}

// DeletePort is DELETE /v2.0/ports/{id}.
func (n *Neutron) DeletePort(ctx context.Context, id string) error {
	_, err := n.sc.Delete(ctx, n.sc.ServiceURL("ports", id), &gophercloud.RequestOpts{OkCodes: []int{http.StatusNoContent}})
	if err != nil {
		return neutronError("delete port "+id, err)
	}
	return nil
}

// ShowNetwork is GET /v2.0/networks/{id}.
func (n *Neutron) ShowNetwork(ctx context.Context, id string) (Network, error) {
	var r struct {
		Network Network `json:"network"`
	}
	err := n.get(ctx, "show network "+id, &r, nil, "networks", id)
	return r.Network, err
}

// ListNetworks is GET /v2.0/networks with the query (id, tenant_id,
// shared, admin_state_up).
func (n *Neutron) ListNetworks(ctx context.Context, q url.Values) ([]Network, error) {
	var r struct {
		Networks []Network `json:"networks"`
	}
	err := n.get(ctx, "list networks", &r, q, "networks")
	return r.Networks, err
}

// ListSubnets is GET /v2.0/subnets with the query (id, network_id).
func (n *Neutron) ListSubnets(ctx context.Context, q url.Values) ([]Subnet, error) {
	var r struct {
		Subnets []Subnet `json:"subnets"`
	}
	err := n.get(ctx, "list subnets", &r, q, "subnets")
	return r.Subnets, err
}

// ListSecurityGroups is GET /v2.0/security-groups?fields=id&fields=name
// with the query (tenant_id).
func (n *Neutron) ListSecurityGroups(ctx context.Context, q url.Values) ([]SecurityGroup, error) {
	var r struct {
		SecurityGroups []SecurityGroup `json:"security_groups"`
	}
	qq := url.Values{"fields": {"id", "name"}}
	for k, v := range q {
		qq[k] = v
	}
	err := n.get(ctx, "list security groups", &r, qq, "security-groups")
	return r.SecurityGroups, err
}

// ListFloatingIPs is GET /v2.0/floatingips with the query (port_id,
// fixed_ip_address).
func (n *Neutron) ListFloatingIPs(ctx context.Context, q url.Values) ([]FloatingIP, error) {
	var r struct {
		FloatingIPs []FloatingIP `json:"floatingips"`
	}
	err := n.get(ctx, "list floating IPs", &r, q, "floatingips")
	return r.FloatingIPs, err
}

// Extensions is GET /v2.0/extensions: the aliases of the loaded API
// extensions.
func (n *Neutron) Extensions(ctx context.Context) ([]string, error) {
	var r struct {
		Extensions []struct {
			Alias string `json:"alias"`
		} `json:"extensions"`
	}
	if err := n.get(ctx, "list extensions", &r, nil, "extensions"); err != nil {
		return nil, err
	}
	out := make([]string, 0, len(r.Extensions))
	for _, e := range r.Extensions {
		out = append(out, e.Alias)
	}
	return out, nil
}

package compute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/cloud"
	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// The compute role's networking, as nova's nova.network.neutron API does
// it for nova-compute: ports allocated and bound to this host at build,
// the network info model built from neutron into the instance's info
// cache, and ports deleted (or, when the user brought them, unbound) at
// delete.

// Neutron is what the compute role needs of the networking service
// (*cloud.Neutron has it). Every call is made with the service's token,
// as nova's admin client.
type Neutron interface {
	ShowPort(ctx context.Context, id string) (cloud.Port, error)
	ListPorts(ctx context.Context, q url.Values) ([]cloud.Port, error)
	CreatePort(ctx context.Context, body map[string]any) (cloud.Port, error)
	UpdatePort(ctx context.Context, id string, body map[string]any) (cloud.Port, error)
	DeletePort(ctx context.Context, id string) error
	ShowNetwork(ctx context.Context, id string) (cloud.Network, error)
	ListNetworks(ctx context.Context, q url.Values) ([]cloud.Network, error)
	ListSubnets(ctx context.Context, q url.Values) ([]cloud.Subnet, error)
	ListSecurityGroups(ctx context.Context, q url.Values) ([]cloud.SecurityGroup, error)
	ListFloatingIPs(ctx context.Context, q url.Values) ([]cloud.FloatingIP, error)
	Extensions(ctx context.Context) ([]string, error)
}

// nova's network model constants.
const (
	vifTypeOVS            = "ovs"
	vifTypeAgilioOVS      = "agilio_ovs"
	vifTypeDVS            = "dvs"
	vifTypeBridge         = "bridge"
	vifTypeVhostuser      = "vhostuser"
	vifTypeBindingFailed  = "binding_failed"
	vnicTypeNormal        = "normal"
	nicNameLen            = 14
	defaultOVSBridge      = "br-int" // [neutron] ovs_bridge
	defaultVIFModel       = "e1000"  // the VMware driver's DEFAULT_VIF_MODEL
	extensionsCacheMaxAge = 600 * time.Second
)

// l3NetworkTypes are nova's constants.L3_NETWORK_TYPES (tunneled networks).
var l3NetworkTypes = []string{"vxlan", "gre", "geneve"} //nolint:gochecknoglobals // a table

// netRequest is a NetworkRequest of build_and_run_instance's
// requested_networks (or attach_interface's arguments).
type netRequest struct {
	NetworkID, PortID, Address, Tag string
}

func (r netRequest) unspecified() bool {
	return r == netRequest{}
}

// netRequests is a NetworkRequestList; nil is "not requested" (None).
type netRequests []netRequest

func (rs netRequests) noAllocate() bool   { return len(rs) == 1 && rs[0].NetworkID == "none" }
func (rs netRequests) autoAllocate() bool { return len(rs) == 1 && rs[0].NetworkID == "auto" }
func (rs netRequests) singleUnspecified() bool {
	return len(rs) == 1 && rs[0].unspecified()
}

// parseRequestedNetworks decodes a NetworkRequestList primitive (or null).
func parseRequestedNetworks(raw json.RawMessage) (netRequests, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var prim any
	if err := json.Unmarshal(raw, &prim); err != nil {
		return nil, rpc.BuiltinError("ValueError", "requested_networks argument: "+err.Error())
	}
	list, err := ovo.NovaCodec().Decode(prim)
	if err != nil {
		return nil, rpc.BuiltinError("ValueError", "requested_networks argument: "+err.Error())
	}
	items, err := list.Items()
	if err != nil {
		return nil, rpc.BuiltinError("ValueError", "requested_networks argument: "+err.Error())
	}
	out := netRequests{}
	for _, it := range items {
		out = append(out, netRequest{
			NetworkID: it.StringOrEmpty("network_id"), PortID: it.StringOrEmpty("port_id"),
			Address: it.StringOrEmpty("address"), Tag: it.StringOrEmpty("tag"),
		})
	}
	return out, nil
}

// parseSecurityGroups decodes build_and_run_instance's security_groups (a
// list of names or ids, or null).
func parseSecurityGroups(raw json.RawMessage) []string {
	var sgs []string
	if len(raw) > 0 {
		_ = json.Unmarshal(raw, &sgs)
	}
	return sgs
}

// networkAPI carries the neutron client and what nova's API object keeps
// (the extensions cache).
type networkAPI struct {
	client Neutron

	mu        sync.Mutex
	exts      map[string]bool
	extsAt    time.Time
	healQueue []string // _instance_uuids_to_heal
}

// hasExtension is nova's _has_extension, the list refreshed every 600 s.
func (n *networkAPI) hasExtension(ctx context.Context, alias string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.exts == nil || time.Since(n.extsAt) > extensionsCacheMaxAge {
		list, err := n.client.Extensions(ctx)
		if err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("listing neutron's extensions failed")
			if n.exts == nil {
				return false
			}
		} else {
			n.exts = map[string]bool{}
			for _, a := range list {
				n.exts[a] = true
			}
			n.extsAt = time.Now()
		}
	}
	return n.exts[alias]
}

// nova exceptions of the network API.
func portNotFound(id string) error {
	return novaError("PortNotFound", fmt.Sprintf("Port id %s could not be found.", id), 404, map[string]any{"port_id": id})
}

func portBindingFailed(id string) error {
	return novaError("PortBindingFailed", fmt.Sprintf("Binding failed for port %s, please check neutron logs for more information.", id), 400, map[string]any{"port_id": id})
}

func invalidInput(reason string) error {
	return novaError("InvalidInput", "Invalid input received: "+reason, 400, map[string]any{"reason": reason})
}

// buildAbort is nova's BuildAbortException: the build fails without a
// reschedule.
func buildAbort(uuid, reason string) error {
	return novaError("BuildAbortException", fmt.Sprintf("Build of instance %s aborted: %s", uuid, reason), 500,
		map[string]any{"instance_uuid": uuid, "reason": reason})
}

func isNovaError(err error, classes ...string) bool {
	var re *rpc.RemoteError
	return errors.As(err, &re) && re.Module == "nova.exception" && slices.Contains(classes, re.Class)
}

// networkBuildError is what _build_and_run_instance makes of a network
// allocation failure (raised, as nova's async allocation raises it, when
// the driver reads the network info in spawn): NoMoreFixedIps and the
// failures no other host fixes abort the build, the rest reschedule it
// with the error as the reason.
func networkBuildError(uuid string, err error) error {
	var re *rpc.RemoteError
	switch {
	case isNovaError(err, "NoMoreFixedIps"):
		errors.As(err, &re)
		return buildAbort(uuid, fmt.Sprintf("Failed to allocate the network(s) with error %s, not rescheduling.", re.Message))
	case isNovaError(err, "ExternalNetworkAttachForbidden", "VirtualInterfaceCreateException", "VirtualInterfaceMacAddressException",
		"FixedIpInvalidOnHost", "UnableToAutoAllocateNetwork", "NetworksWithQoSPolicyNotSupported"):
		return buildAbort(uuid, "Failed to allocate the network(s), not rescheduling.")
	case isNovaError(err, "InvalidInput"):
		errors.As(err, &re)
		return buildAbort(uuid, re.Message)
	case errors.As(err, &re):
		// RescheduledException(reason=str(e)): its fault has code 500.
		kw := map[string]any{}
		for k, v := range re.Kwargs {
			kw[k] = v
		}
		kw["code"] = 500
		return &rpc.RemoteError{Class: re.Class, Module: re.Module, Message: re.Message, Kwargs: kw}
	}
	return err
}

// isAdmin tells an admin request context (nova's policy base.ADMIN).
func isAdmin(rc rpc.Context) bool {
	var roles []string
	_ = json.Unmarshal(rc["roles"], &roles)
	if slices.Contains(roles, "admin") {
		return true
	}
	var admin bool
	_ = json.Unmarshal(rc["is_admin"], &admin)
	return admin
}

// availableNetworks is _get_available_networks: the networks asked for
// by id (in that order), else the project's own and the shared ones.
func (n *networkAPI) availableNetworks(ctx context.Context, project string, netIDs []string, auto bool) ([]cloud.Network, error) {
	if len(netIDs) > 0 {
		nets, err := n.client.ListNetworks(ctx, url.Values{"id": netIDs})
		if err != nil {
			return nil, err
		}
		// _ensure_requested_network_ordering
		slices.SortStableFunc(nets, func(a, b cloud.Network) int {
			return slices.Index(netIDs, a.ID) - slices.Index(netIDs, b.ID)
		})
		return nets, nil
	}
	q := url.Values{"tenant_id": {project}, "shared": {"False"}}
	if auto {
		q.Set("admin_state_up", "True")
	}
	nets, err := n.client.ListNetworks(ctx, q)
	if err != nil {
		return nil, err
	}
	shared, err := n.client.ListNetworks(ctx, url.Values{"shared": {"True"}})
	if err != nil {
		return nil, err
	}
	return append(nets, shared...), nil
}

// showPort is _show_port: PortNotFound for a 404.
func (n *networkAPI) showPort(ctx context.Context, id string) (cloud.Port, error) {
	p, err := n.client.ShowPort(ctx, id)
	if err != nil {
		if errors.Is(err, cloud.ErrNotFound) {
			return p, portNotFound(id)
		}
		return p, novaError("NovaException", fmt.Sprintf("Failed to access port %s: %v", id, err), 500, nil)
	}
	return p, nil
}

// allocation is what allocate_for_instance did: the VIFs of the ports it
// processed, and which of those it created.
type allocation struct {
	vifs        []map[string]any
	created     []string
	preexisting []string
}

// allocateForInstance is the network API's allocate_for_instance with the
// service's (admin) client: the requested ports checked, ports created on
// the requested networks for the instance's project, every port updated
// with the instance as its device and bound to bindHost, the VirtualInterface
// records created, and the info cache rebuilt from neutron.
func (l *lifecycle) allocateForInstance(ctx context.Context, rc rpc.Context, inst *ovo.Object, reqs netRequests, secGroups []string, bindHost string) (allocation, error) {
	n := l.net
	uuid := inst.StringOrEmpty("uuid")
	project := inst.StringOrEmpty("project_id")
	if project == "" {
		return allocation{}, invalidInput("empty project id for instance " + uuid)
	}
	// _validate_requested_port_ids
	requestedPorts := map[string]cloud.Port{}
	var ordered []netRequest
	if len(reqs) > 0 && !reqs.autoAllocate() {
		for _, r := range reqs {
			if r.PortID != "" {
				port, err := n.showPort(ctx, r.PortID)
				if err != nil {
					return allocation{}, err
				}
				if port.Tenant() != project {
					return allocation{}, novaError("PortNotUsable", fmt.Sprintf("Port %s not usable for instance %s.", r.PortID, uuid), 400,
						map[string]any{"port_id": r.PortID, "instance": uuid})
				}
				if port.DeviceID != "" {
					return allocation{}, novaError("PortInUse", fmt.Sprintf("Port %s is still in use.", r.PortID), 400, map[string]any{"port_id": r.PortID})
				}
				if port.DNSName != "" && port.DNSName != inst.StringOrEmpty("hostname") {
					return allocation{}, novaError("PortNotUsableDNS",
						fmt.Sprintf("Port %s not usable for instance %s. Value %s assigned to dns_name attribute does not match instance's hostname %s",
							r.PortID, uuid, port.DNSName, inst.StringOrEmpty("hostname")), 400, map[string]any{"port_id": r.PortID})
				}
				if port.VIFType == vifTypeBindingFailed {
					return allocation{}, portBindingFailed(r.PortID)
				}
				r.NetworkID = port.NetworkID
				requestedPorts[r.PortID] = port
			}
			if r.NetworkID != "" {
				ordered = append(ordered, r)
			}
		}
	}
	// _validate_requested_network_ids
	var netIDs []string
	for _, r := range ordered {
		netIDs = append(netIDs, r.NetworkID)
	}
	nets, err := n.availableNetworks(ctx, project, netIDs, reqs.autoAllocate())
	if err != nil {
		return allocation{}, err
	}
	if len(nets) == 0 {
		if len(reqs) > 0 {
			if reqs.autoAllocate() {
				// The API checked that auto-allocation is available; the agent's
				// neutron has no auto-allocated-topology to ask.
				return allocation{}, novaError("UnableToAutoAllocateNetwork",
					fmt.Sprintf("Unable to automatically allocate a network for project %s", project), 400, map[string]any{"project_id": project})
			}
			for _, r := range reqs {
				if r.PortID == "" && r.NetworkID != "" {
					return allocation{}, novaError("NetworkNotFound", fmt.Sprintf("Network %s could not be found.", r.NetworkID), 404,
						map[string]any{"network_id": r.NetworkID})
				}
			}
		} else {
			zerolog.Ctx(ctx).Debug().Msg("No network configured")
			return allocation{}, nil
		}
	}
	if len(reqs) == 0 || reqs.singleUnspecified() || reqs.autoAllocate() {
		if len(nets) == 0 {
			return allocation{}, novaError("InterfaceAttachFailedNoNetwork",
				fmt.Sprintf("No specific network was requested and none are available for project '%s'.", project), 400,
				map[string]any{"project_id": project})
		}
		if len(nets) > 1 {
			return allocation{}, novaError("NetworkAmbiguous", "Multiple possible networks found, use a Network ID to be more specific.", 400, nil)
		}
		ordered = append(ordered, netRequest{NetworkID: nets[0].ID})
	}
	if !isAdmin(rc) {
		for _, net := range nets {
			if net.RouterExternal && !net.Shared {
				return allocation{}, novaError("ExternalNetworkAttachForbidden",
					fmt.Sprintf("It is not allowed to create an interface on external network %s", net.ID), 403,
					map[string]any{"network_uuid": net.ID})
			}
		}
	}
	netByID := map[string]cloud.Network{}
	for _, net := range nets {
		netByID[net.ID] = net
	}
	if len(netByID) == 0 {
		zerolog.Ctx(ctx).Debug().Msg("No network configured")
		return allocation{}, nil
	}
	// _clean_security_groups, _process_security_groups
	if len(secGroups) == 1 && secGroups[0] == "default" {
		secGroups = nil
	}
	sgIDs, err := n.processSecurityGroups(ctx, project, secGroups)
	if err != nil {
		return allocation{}, err
	}
	// _create_ports_for_instance
	type reqPort struct {
		req     netRequest
		created string
	}
	var pairs []reqPort
	var createdIDs []string
	for _, r := range ordered {
		net, ok := netByID[r.NetworkID]
		if !ok {
			continue
		}
		err := func() error {
			if net.PortSecurityEnabled == nil || *net.PortSecurityEnabled {
				if len(net.Subnets) == 0 {
					return novaError("SecurityGroupCannotBeApplied", "Network requires port_security_enabled and subnet associated in order to apply security groups.", 400, nil)
				}
			} else if len(sgIDs) > 0 {
				return novaError("SecurityGroupCannotBeApplied", "Network requires port_security_enabled and subnet associated in order to apply security groups.", 400, nil)
			}
			created := ""
			if r.PortID == "" {
				p, err := n.createPortMinimal(ctx, inst, r.NetworkID, r.Address, sgIDs)
				if err != nil {
					return err
				}
				created = p.ID
				createdIDs = append(createdIDs, p.ID)
			}
			pairs = append(pairs, reqPort{r, created})
			return nil
		}()
		if err != nil {
			n.deletePorts(ctx, createdIDs, false)
			return allocation{}, err
		}
	}
	// _update_ports_for_instance
	var preexisting, created, portsInOrder []string
	var netsInOrder []cloud.Network
	var vifObjs []*ovo.Object
	zone := "compute:" + nullableString(inst, "availability_zone")
	dnsExt := n.hasExtension(ctx, "dns-integration")
	for _, pr := range pairs {
		net, ok := netByID[pr.req.NetworkID]
		if !ok {
			continue
		}
		netsInOrder = append(netsInOrder, net)
		body := map[string]any{"device_id": uuid, "device_owner": zone, "binding:host_id": bindHost}
		if p, ok := requestedPorts[pr.req.PortID]; ok && len(p.Profile) > 0 {
			body["binding:profile"] = p.Profile
		}
		if dnsExt && net.DNSDomain == "" {
			body["dns_name"] = inst.StringOrEmpty("hostname")
		}
		portID := pr.req.PortID
		if pr.created != "" {
			portID = pr.created
			created = append(created, portID)
		}
		portsInOrder = append(portsInOrder, portID)
		err := func() error {
			updated, err := n.updatePort(ctx, portID, body)
			if err != nil {
				return err
			}
			vo, err := l.createVirtualInterface(ctx, rc, uuid, updated, pr.req.Tag)
			if err != nil {
				return err
			}
			vifObjs = append(vifObjs, vo)
			if pr.created == "" {
				preexisting = append(preexisting, portID)
			}
			if dnsExt && net.DNSDomain != "" {
				if _, err := n.client.UpdatePort(ctx, portID, map[string]any{"dns_name": inst.StringOrEmpty("hostname")}); err != nil {
					if cloud.NeutronStatus(err) == http.StatusBadRequest {
						return invalidInput(fmt.Sprintf("Instance hostname %s is not a valid DNS name", inst.StringOrEmpty("hostname")))
					}
					return err
				}
			}
			return nil
		}()
		if err != nil {
			n.unbindPorts(ctx, preexisting)
			n.deletePorts(ctx, created, false)
			for _, vo := range vifObjs {
				if _, derr := l.cond.ObjectAction(ctx, rc, vo, "destroy", nil, nil); derr != nil {
					zerolog.Ctx(ctx).Warn().Err(derr).Msg("destroying a VirtualInterface failed")
				}
			}
			return allocation{}, err
		}
	}
	vifs, err := l.getInstanceNWInfo(ctx, rc, inst, nwInfoOpts{networks: netsInOrder, portIDs: portsInOrder, preexisting: preexisting, given: true})
	if err != nil {
		return allocation{}, err
	}
	out := allocation{created: created, preexisting: preexisting}
	for _, v := range vifs {
		id, _ := v["id"].(string)
		if slices.Contains(created, id) || slices.Contains(preexisting, id) {
			out.vifs = append(out.vifs, v)
		}
	}
	return out, nil
}

// nullableString is a string field as Python's '%s' prints it ("None"
// for null).
func nullableString(o *ovo.Object, name string) string {
	if v, ok := o.Get(name); !ok || v == nil {
		return "None"
	}
	return o.StringOrEmpty(name)
}

// processSecurityGroups is _process_security_groups: names or ids of the
// project's security groups to ids.
func (n *networkAPI) processSecurityGroups(ctx context.Context, project string, names []string) ([]string, error) {
	if len(names) == 0 {
		return nil, nil
	}
	groups, err := n.client.ListSecurityGroups(ctx, url.Values{"tenant_id": {project}})
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, want := range names {
		var nameMatch, uuidMatch string
		for _, g := range groups {
			if g.Name == want {
				if nameMatch != "" {
					return nil, novaError("NoUniqueMatch", fmt.Sprintf("Multiple security groups found matching '%s'. Use an ID to be more specific.", want), 409, nil)
				}
				nameMatch = g.ID
			}
			if g.ID == want {
				uuidMatch = g.ID
			}
		}
		switch {
		case nameMatch != "":
			ids = append(ids, nameMatch)
		case uuidMatch != "":
			ids = append(ids, uuidMatch)
		default:
			return nil, novaError("SecurityGroupNotFound", fmt.Sprintf("Security group %s not found.", want), 404, map[string]any{"security_group_id": want})
		}
	}
	return ids, nil
}

// createPortMinimal is _create_port_minimal.
func (n *networkAPI) createPortMinimal(ctx context.Context, inst *ovo.Object, networkID, fixedIP string, sgIDs []string) (cloud.Port, error) {
	body := map[string]any{"device_id": inst.StringOrEmpty("uuid")}
	if fixedIP != "" {
		body["fixed_ips"] = []any{map[string]any{"ip_address": fixedIP}}
	}
	body["network_id"] = networkID
	body["admin_state_up"] = true
	body["tenant_id"] = inst.StringOrEmpty("project_id")
	if len(sgIDs) > 0 {
		body["security_groups"] = sgIDs
	}
	port, err := n.client.CreatePort(ctx, body)
	if err != nil {
		switch cloud.NeutronErrorType(err) {
		case "InvalidIpForNetwork", "InvalidIpForSubnet":
			return port, invalidInput(fmt.Sprintf("Fixed IP %s is not a valid ip address for network %s.", fixedIP, networkID))
		case "IpAddressInUse", "IpAddressAlreadyAllocated":
			return port, novaError("FixedIpAlreadyInUse", fmt.Sprintf("Fixed IP %s is already in use.", fixedIP), 500, nil)
		case "OverQuota":
			return port, novaError("PortLimitExceeded", "Maximum number of ports exceeded", 403, nil)
		case "IpAddressGenerationFailure":
			return port, novaError("NoMoreFixedIps", fmt.Sprintf("No fixed IP addresses available for network: %s", networkID), 500, map[string]any{"net": networkID})
		}
		zerolog.Ctx(ctx).Error().Err(err).Str("network_id", networkID).Msg("Neutron error creating port")
		return port, err
	}
	if hasResourceRequest(port) {
		n.deletePorts(ctx, []string{port.ID}, false)
		return port, novaError("NetworksWithQoSPolicyNotSupported",
			fmt.Sprintf("Using networks with QoS policy is not supported for instance %s. (Network ID is %s)", inst.StringOrEmpty("uuid"), networkID), 400, nil)
	}
	if port.VIFType == vifTypeBindingFailed {
		n.deletePorts(ctx, []string{port.ID}, false)
		return port, portBindingFailed(port.ID)
	}
	zerolog.Ctx(ctx).Debug().Str("port_id", port.ID).Msg("Successfully created port")
	return port, nil
}

func hasResourceRequest(p cloud.Port) bool {
	switch rr := p.ResourceRequest.(type) {
	case map[string]any:
		return len(rr) > 0
	case nil:
		return false
	}
	return true
}

// updatePort is _update_port: PortBindingFailed when neutron could not
// bind the port.
func (n *networkAPI) updatePort(ctx context.Context, id string, body map[string]any) (cloud.Port, error) {
	port, err := n.client.UpdatePort(ctx, id, body)
	if err != nil {
		switch cloud.NeutronErrorType(err) {
		case "MacAddressInUse":
			mac, _ := body["mac_address"].(string)
			return port, novaError("PortInUse", fmt.Sprintf("Port %s is still in use.", mac), 400, map[string]any{"port_id": mac})
		case "HostNotCompatibleWithFixedIps":
			return port, novaError("FixedIpInvalidOnHost", fmt.Sprintf("Requested fixed IPs are not valid on the host of port %s.", id), 400, map[string]any{"port_id": id})
		}
		return port, err
	}
	if port.VIFType == vifTypeBindingFailed {
		return port, portBindingFailed(id)
	}
	return port, nil
}

// deletePorts is _delete_ports: a missing port is not an error.
func (n *networkAPI) deletePorts(ctx context.Context, ids []string, raiseIfFail bool) error {
	var errs []error
	for _, id := range ids {
		err := n.client.DeletePort(ctx, id)
		switch {
		case err == nil:
		case errors.Is(err, cloud.ErrNotFound):
			zerolog.Ctx(ctx).Warn().Str("port_id", id).Msg("Port does not exist")
		default:
			zerolog.Ctx(ctx).Warn().Err(err).Str("port_id", id).Msg("Failed to delete port for instance.")
			errs = append(errs, err)
		}
	}
	if raiseIfFail && len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// unbindPorts is _unbind_ports: device_id and device_owner cleared, the
// binding dropped (binding:host_id null), the PCI and allocation keys
// removed from binding:profile, and dns_name reset with internal DNS.
func (n *networkAPI) unbindPorts(ctx context.Context, ids []string) {
	dnsExt := n.hasExtension(ctx, "dns-integration")
	for _, id := range ids {
		if id == "" {
			continue
		}
		body := map[string]any{"device_id": "", "device_owner": "", "binding:host_id": nil}
		profile := map[string]any{}
		var network cloud.Network
		port, err := n.client.ShowPort(ctx, id)
		if errors.Is(err, cloud.ErrNotFound) {
			zerolog.Ctx(ctx).Debug().Str("port_id", id).Msg("Unable to show port as it no longer exists.")
			continue
		}
		if err != nil {
			zerolog.Ctx(ctx).Error().Err(err).Str("port_id", id).Msg("Unable to get binding:profile for port")
		} else {
			for k, v := range port.Profile {
				profile[k] = v
			}
			if network, err = n.client.ShowNetwork(ctx, port.NetworkID); err != nil {
				zerolog.Ctx(ctx).Warn().Err(err).Str("network_id", port.NetworkID).Msg("reading the port's network failed")
			}
		}
		for _, k := range []string{"pci_vendor_info", "pci_slot", "allocation", "arq_uuid", "physical_network",
			"card_serial_number", "vf_num", "pf_mac_address", "device_mac_address"} {
			delete(profile, k)
		}
		body["binding:profile"] = profile
		if dnsExt && network.DNSDomain == "" {
			body["dns_name"] = ""
		}
		if _, err := n.client.UpdatePort(ctx, id, body); err != nil {
			if errors.Is(err, cloud.ErrNotFound) {
				zerolog.Ctx(ctx).Debug().Str("port_id", id).Msg("Unable to unbind port as it no longer exists.")
			} else {
				zerolog.Ctx(ctx).Error().Err(err).Str("port_id", id).Msg("Unable to clear device ID for port")
			}
		}
		if dnsExt && network.DNSDomain != "" {
			if _, err := n.client.UpdatePort(ctx, id, map[string]any{"dns_name": ""}); err != nil {
				zerolog.Ctx(ctx).Error().Err(err).Str("port_id", id).Msg("Failed to reset dns_name for port")
			}
		}
	}
}

// createVirtualInterface is VirtualInterface.create for a port (the
// address namespaced with the port id, as nova does).
func (l *lifecycle) createVirtualInterface(ctx context.Context, rc rpc.Context, uuid string, port cloud.Port, tag string) (*ovo.Object, error) {
	vo := ovo.New("VirtualInterface", l.cond.version("VirtualInterface"))
	vo.SetString("instance_uuid", uuid)
	if tag != "" {
		vo.SetString("tag", tag)
	} else {
		vo.SetNull("tag")
	}
	vo.SetString("address", port.MACAddress+"/"+port.ID)
	vo.SetString("uuid", port.ID)
	res, err := l.cond.ObjectAction(ctx, rc, vo, "create", nil, nil)
	if err != nil {
		return nil, err
	}
	if o, ok := res.(*ovo.Object); ok && o != nil {
		return o, nil
	}
	return vo, nil
}

// preexistingPortIDs is _get_preexisting_port_ids: the cached VIFs the
// user brought (preserve_on_delete).
func preexistingPortIDs(vifs []any) []string {
	var out []string
	for _, v := range vifs {
		if m, ok := v.(map[string]any); ok {
			if p, _ := m["preserve_on_delete"].(bool); p {
				id, _ := m["id"].(string)
				out = append(out, id)
			}
		}
	}
	return out
}

// nwInfoOpts are _build_network_info_model's arguments.
type nwInfoOpts struct {
	// networks and portIDs are the networks and ports being attached
	// (given); else the cache's are refreshed.
	networks    []cloud.Network
	portIDs     []string
	given       bool
	preexisting []string
	// refreshVIF refreshes only that port's VIF (network-changed with a tag).
	refreshVIF string
	// force reads the ports from neutron instead of the cache (the heal).
	force bool
}

// getInstanceNWInfo is get_instance_nw_info: the network info model
// rebuilt from neutron (under the instance's refresh_cache lock) and saved
// to the info cache.
func (l *lifecycle) getInstanceNWInfo(ctx context.Context, rc rpc.Context, inst *ovo.Object, o nwInfoOpts) ([]map[string]any, error) {
	unlock := l.locks.lock("refresh_cache-" + inst.StringOrEmpty("uuid"))
	defer unlock()
	l.reloadInfoCache(ctx, rc, inst)
	vifs, err := l.buildNetworkInfoModel(ctx, rc, inst, o)
	if err != nil {
		return nil, err
	}
	if err := l.saveInfoCache(ctx, rc, inst, vifs); err != nil {
		return nil, err
	}
	return vifs, nil
}

// reloadInfoCache is compute_utils.refresh_info_cache_for_instance: the
// instance's info cache read again from the database.
func (l *lifecycle) reloadInfoCache(ctx context.Context, rc rpc.Context, inst *ovo.Object) {
	cache, err := inst.Object("info_cache")
	if err != nil || cache == nil {
		return
	}
	res, err := l.cond.ClassAction(ctx, rc, "InstanceInfoCache", "get_by_instance_uuid", []any{inst.StringOrEmpty("uuid")}, nil)
	if err != nil {
		zerolog.Ctx(ctx).Debug().Err(err).Msg("Can not refresh info_cache")
		return
	}
	if fresh, ok := res.(*ovo.Object); ok && fresh != nil {
		if v, ok := fresh.Get("network_info"); ok {
			cache.Fields["network_info"] = v
		}
	}
}

// saveInfoCache is update_instance_cache_with_nw_info:
// InstanceInfoCache.save with vifs as network_info, unless the instance is
// deleted; the instance's own info_cache follows.
func (l *lifecycle) saveInfoCache(ctx context.Context, rc rpc.Context, inst *ovo.Object, vifs []map[string]any) error {
	if deleted, _ := inst.Bool("deleted"); deleted {
		zerolog.Ctx(ctx).Debug().Msg("Instance is deleted, no further info cache update")
		return nil
	}
	if vifs == nil {
		vifs = []map[string]any{}
	}
	b, err := json.Marshal(vifs)
	if err != nil {
		return err
	}
	ic := ovo.New("InstanceInfoCache", l.cond.version("InstanceInfoCache"))
	ic.SetString("instance_uuid", inst.StringOrEmpty("uuid"))
	ic.SetString("network_info", string(b))
	if _, err := l.cond.ObjectAction(ctx, rc, ic, "save", nil, nil); err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("Failed storing info cache")
		return err
	}
	if cache, err := inst.Object("info_cache"); err == nil && cache != nil {
		cache.SetString("network_info", string(b))
		cache.ResetChanges()
	} else {
		ic.ResetChanges()
		inst.SetObject("info_cache", ic) // instance.info_cache = ic
		inst.ResetChanges("info_cache")
	}
	return nil
}

// buildNetworkInfoModel is _build_network_info_model.
func (l *lifecycle) buildNetworkInfoModel(ctx context.Context, rc rpc.Context, inst *ovo.Object, o nwInfoOpts) ([]map[string]any, error) {
	n := l.net
	uuid := inst.StringOrEmpty("uuid")
	project := inst.StringOrEmpty("project_id")
	current, err := n.client.ListPorts(ctx, url.Values{"tenant_id": {project}, "device_id": {uuid}})
	if err != nil {
		return nil, err
	}
	cached := networkInfo(inst)
	preexisting := append(slices.Clone(o.preexisting), preexistingPortIDs(cached)...)
	byID := map[string]cloud.Port{}
	for _, p := range current {
		byID[p.ID] = p
	}
	if o.refreshVIF != "" && len(cached) > 0 {
		nw := make([]map[string]any, 0, len(cached))
		for _, v := range cached {
			if m, ok := v.(map[string]any); ok {
				nw = append(nw, m)
			}
		}
		port, ok := byID[o.refreshVIF]
		if !ok {
			for i, v := range nw {
				if v["id"] == o.refreshVIF {
					zerolog.Ctx(ctx).Info().Str("port_id", o.refreshVIF).Msg("Port from network info_cache is no longer associated with instance in Neutron. Removing from network info_cache.")
					return slices.Delete(nw, i, i+1), nil
				}
			}
			return nw, nil
		}
		nets, err := n.availableNetworks(ctx, project, []string{port.NetworkID}, false)
		if err != nil {
			return nil, err
		}
		vif, err := n.buildVIFModel(ctx, port, nets, preexisting)
		if err != nil {
			return nil, err
		}
		for i, v := range nw {
			if v["id"] == o.refreshVIF {
				nw[i] = vif
				return nw, nil
			}
		}
		return append(nw, vif), nil
	}
	refresh := !o.given
	networks, portIDs := o.networks, o.portIDs
	switch {
	case refresh && o.force:
		portIDs = l.orderedPortList(ctx, rc, inst, current)
		var netIDs []string
		for _, id := range portIDs {
			netIDs = append(netIDs, byID[id].NetworkID)
		}
		if networks, err = n.availableNetworks(ctx, project, netIDs, false); err != nil {
			return nil, err
		}
	case refresh:
		var netIDs []string
		for _, v := range cached {
			m, _ := v.(map[string]any)
			id, _ := m["id"].(string)
			portIDs = append(portIDs, id)
			net, _ := m["network"].(map[string]any)
			nid, _ := net["id"].(string)
			netIDs = append(netIDs, nid)
		}
		if networks, err = n.availableNetworks(ctx, project, netIDs, false); err != nil {
			return nil, err
		}
	default:
		// _gather_port_ids_and_networks with the networks and ports attached.
		var ids []string
		for _, net := range networks {
			ids = append(ids, net.ID)
		}
		var cachedPorts []string
		for _, v := range cached {
			m, _ := v.(map[string]any)
			net, _ := m["network"].(map[string]any)
			nid, _ := net["id"].(string)
			if !slices.Contains(ids, nid) {
				meta, _ := net["meta"].(map[string]any)
				label, _ := net["label"].(string)
				tenant, _ := meta["tenant_id"].(string)
				networks = append(networks, cloud.Network{ID: nid, Name: label, TenantID: tenant})
			}
			if id, _ := m["id"].(string); !slices.Contains(portIDs, id) {
				cachedPorts = append(cachedPorts, id)
			}
		}
		portIDs = append(cachedPorts, portIDs...)
	}
	out := []map[string]any{}
	for _, id := range portIDs {
		port, ok := byID[id]
		if !ok {
			if refresh {
				zerolog.Ctx(ctx).Info().Str("port_id", id).Msg("Port from network info_cache is no longer associated with instance in Neutron. Removing from network info_cache.")
			}
			continue
		}
		vif, err := n.buildVIFModel(ctx, port, networks, preexisting)
		if err != nil {
			return nil, err
		}
		out = append(out, vif)
	}
	return out, nil
}

// orderedPortList is _get_ordered_port_list: the ports in the order of
// their VirtualInterface records, new ones last.
func (l *lifecycle) orderedPortList(ctx context.Context, rc rpc.Context, inst *ovo.Object, ports []cloud.Port) []string {
	index := map[string]int64{}
	if res, err := l.cond.ClassAction(ctx, rc, "VirtualInterfaceList", "get_by_instance_uuid", []any{inst.StringOrEmpty("uuid")}, nil); err == nil {
		if list, ok := res.(*ovo.Object); ok && list != nil {
			items, _ := list.Items()
			for _, v := range items {
				id, _ := v.Int("id")
				index[v.StringOrEmpty("uuid")] = id
			}
		}
	} else {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("reading the instance's virtual interfaces failed")
	}
	var ordered, rest []string
	for _, p := range ports {
		if _, ok := index[p.ID]; ok {
			ordered = append(ordered, p.ID)
		} else {
			rest = append(rest, p.ID)
		}
	}
	slices.SortStableFunc(ordered, func(a, b string) int { return int(index[a] - index[b]) })
	return append(ordered, rest...)
}

// ipModel is nova's IP (and FixedIP with floating_ips).
func ipModel(address any, typ string) map[string]any {
	var version any
	if s, ok := address.(string); ok && s != "" {
		if a, err := netip.ParseAddr(s); err == nil {
			version = 4
			if a.Is6() && !a.Is4In6() {
				version = 6
			}
		}
	}
	return map[string]any{"address": address, "type": typ, "version": version, "meta": map[string]any{}}
}

// buildVIFModel is _build_vif_model: a VIF of the network info model from
// the port's current state in neutron.
func (n *networkAPI) buildVIFModel(ctx context.Context, port cloud.Port, networks []cloud.Network, preexisting []string) (map[string]any, error) {
	active := !port.AdminStateUp || port.Status == "ACTIVE"
	// _nw_info_get_ips
	var fixedIPs []map[string]any
	for _, fip := range port.FixedIPs {
		fixed := ipModel(fip.IPAddress, "fixed")
		floats := []any{}
		fl, err := n.client.ListFloatingIPs(ctx, url.Values{"fixed_ip_address": {fip.IPAddress}, "port_id": {port.ID}})
		if errors.Is(err, cloud.ErrNotFound) {
			fl, err = nil, nil // _safe_get_floating_ips: neutron without the L3 API
		}
		if err != nil {
			return nil, err
		}
		for _, f := range fl {
			floats = append(floats, ipModel(f.FloatingIPAddress, "floating"))
		}
		fixed["floating_ips"] = floats
		fixedIPs = append(fixedIPs, fixed)
	}
	subnets, err := n.subnetsFromPort(ctx, port)
	if err != nil {
		return nil, err
	}
	for _, s := range subnets {
		ips := []any{}
		cidr, _ := s["cidr"].(string)
		if pfx, err := netip.ParsePrefix(cidr); err == nil {
			for _, f := range fixedIPs {
				if a, err := netip.ParseAddr(f["address"].(string)); err == nil && pfx.Contains(a) {
					ips = append(ips, f)
				}
			}
		}
		s["ips"] = ips
	}
	network, ovsInterfaceID, err := n.buildNetwork(ctx, port, networks, subnets)
	if err != nil {
		return nil, err
	}
	vnicType := port.VNICType
	if vnicType == "" {
		vnicType = vnicTypeNormal
	}
	var vifType any
	if port.VIFType != "" {
		vifType = port.VIFType
	}
	details := port.VIFDetails
	if details == nil {
		details = map[string]any{}
	}
	profile := port.Profile
	if profile == nil {
		profile = map[string]any{}
	}
	devname := "tap" + port.ID
	if len(devname) > nicNameLen {
		devname = devname[:nicNameLen]
	}
	return map[string]any{
		"id":                 port.ID,
		"address":            port.MACAddress,
		"network":            network,
		"type":               vifType,
		"details":            details,
		"devname":            devname,
		"ovs_interfaceid":    ovsInterfaceID,
		"qbh_params":         nil,
		"qbg_params":         nil,
		"active":             active,
		"vnic_type":          vnicType,
		"profile":            profile,
		"preserve_on_delete": slices.Contains(preexisting, port.ID),
		"delegate_create":    true,
		"meta":               map[string]any{},
	}, nil
}

// subnetsFromPort is _get_subnets_from_port.
func (n *networkAPI) subnetsFromPort(ctx context.Context, port cloud.Port) ([]map[string]any, error) {
	if len(port.FixedIPs) == 0 {
		return nil, nil
	}
	var ids []string
	for _, f := range port.FixedIPs {
		if !slices.Contains(ids, f.SubnetID) {
			ids = append(ids, f.SubnetID)
		}
	}
	subnets, err := n.client.ListSubnets(ctx, url.Values{"id": ids})
	if err != nil {
		return nil, err
	}
	var out []map[string]any
	for _, s := range subnets {
		var gw any
		if s.GatewayIP != nil {
			gw = *s.GatewayIP
		}
		meta := map[string]any{}
		if s.IPv6AddressMode != nil && *s.IPv6AddressMode != "" {
			meta["ipv6_address_mode"] = *s.IPv6AddressMode
		}
		dhcp, err := n.client.ListPorts(ctx, url.Values{"network_id": {s.NetworkID}, "device_owner": {"network:dhcp"}})
		if err != nil {
			return nil, err
		}
	dhcpPorts:
		for _, p := range dhcp {
			for _, ip := range p.FixedIPs {
				if ip.SubnetID == s.ID {
					meta["dhcp_server"] = ip.IPAddress
					break dhcpPorts
				}
			}
		}
		if _, ok := meta["dhcp_server"]; !ok && s.EnableDHCP {
			meta["dhcp_server"] = gw
		}
		var version any
		if p, err := netip.ParsePrefix(s.CIDR); err == nil {
			version = 4
			if p.Addr().Is6() {
				version = 6
			}
		}
		dns := []any{}
		for _, d := range s.DNSNameservers {
			dns = append(dns, ipModel(d, "dns"))
		}
		routes := []any{}
		for _, r := range s.HostRoutes {
			routes = append(routes, map[string]any{"cidr": r.Destination, "gateway": ipModel(r.NextHop, "gateway"), "interface": nil, "meta": map[string]any{}})
		}
		out = append(out, map[string]any{
			"cidr": s.CIDR, "dns": dns, "gateway": ipModel(gw, "gateway"), "ips": []any{}, "routes": routes,
			"version": version, "meta": meta,
		})
	}
	return out, nil
}

// buildNetwork is _nw_info_build_network: the VIF's network, whose bridge
// is the network id for a DVS port (the port group's name contains it).
func (n *networkAPI) buildNetwork(ctx context.Context, port cloud.Port, networks []cloud.Network, subnets []map[string]any) (map[string]any, any, error) {
	var name, mtu any
	tenant := port.Tenant()
	found := false
	for _, net := range networks {
		if net.ID == port.NetworkID {
			name, tenant, found = net.Name, net.TenantID, true
			if net.MTU != nil {
				mtu = *net.MTU
			}
			break
		}
	}
	if !found {
		zerolog.Ctx(ctx).Warn().Str("network_id", port.NetworkID).Str("tenant_id", tenant).
			Msg("Network not matched with the tenants network! The ports tenant will be used.")
	}
	var bridge, ovsInterfaceID any
	shouldCreateBridge := false
	details := port.VIFDetails
	str := func(k, def string) string {
		if s, ok := details[k].(string); ok {
			return s
		}
		return def
	}
	boolean := func(k string) bool { b, _ := details[k].(bool); return b }
	switch {
	case port.VIFType == vifTypeOVS || port.VIFType == vifTypeAgilioOVS:
		bridge, ovsInterfaceID = str("bridge_name", defaultOVSBridge), port.ID
	case port.VIFType == vifTypeBridge:
		bridge, shouldCreateBridge = str("bridge_name", "brq"+port.NetworkID), true
	case port.VIFType == vifTypeDVS:
		bridge = port.NetworkID
	case port.VIFType == vifTypeVhostuser && boolean("vhostuser_ovs_plug"):
		bridge, ovsInterfaceID = str("bridge_name", defaultOVSBridge), port.ID
	case port.VIFType == vifTypeVhostuser && boolean("vhostuser_fp_plug"):
		bridge = str("bridge_name", "brq"+port.NetworkID)
	}
	if b, ok := bridge.(string); ok && port.VIFType != vifTypeDVS && len(b) > nicNameLen {
		bridge = b[:nicNameLen]
	}
	physnet, tunneled, err := n.physnetTunneled(ctx, port.NetworkID)
	if err != nil {
		return nil, nil, err
	}
	if subnets == nil {
		subnets = []map[string]any{}
	}
	network := map[string]any{
		"id": port.NetworkID, "bridge": bridge, "label": name, "subnets": subnets,
		"meta": map[string]any{"injected": false, "tenant_id": tenant, "mtu": mtu, "physical_network": physnet, "tunneled": tunneled},
	}
	if shouldCreateBridge {
		network["should_create_bridge"] = true
	}
	return network, ovsInterfaceID, nil
}

// physnetTunneled is _get_physnet_tunneled_info.
func (n *networkAPI) physnetTunneled(ctx context.Context, netID string) (any, bool, error) {
	net, err := n.client.ShowNetwork(ctx, netID)
	if err != nil {
		return nil, false, err
	}
	if len(net.Segments) > 0 {
		for _, s := range net.Segments {
			if p, _ := s["provider:physical_network"].(string); p != "" {
				return p, false, nil
			}
		}
		return nil, false, novaError("NovaException", fmt.Sprintf("None of the segments of network %s provides a physical_network", netID), 500, nil)
	}
	var physnet any
	if net.PhysicalNetwork != nil {
		physnet = *net.PhysicalNetwork
	}
	return physnet, net.NetworkType != nil && slices.Contains(l3NetworkTypes, *net.NetworkType), nil
}

// deallocateForInstance is the network API's deallocate_for_instance:
// the instance's ports that nova created are deleted, the others (those
// requested by port id, and the cache's preserve_on_delete ones) unbound,
// its VirtualInterface records deleted and its info cache emptied.
// requested are the build's requested networks (a failed build), nil for
// a delete.
func (l *lifecycle) deallocateForInstance(ctx context.Context, rc rpc.Context, inst *ovo.Object, requested netRequests) error {
	if l.net == nil {
		return nil
	}
	if requested.noAllocate() {
		zerolog.Ctx(ctx).Debug().Msg("Skipping network deallocation for instance since networking was not requested.")
		return nil
	}
	n := l.net
	uuid := inst.StringOrEmpty("uuid")
	ports, err := n.client.ListPorts(ctx, url.Values{"device_id": {uuid}})
	if err != nil {
		return err
	}
	var skip []string
	for _, r := range requested {
		if !slices.Contains(skip, r.PortID) {
			skip = append(skip, r.PortID)
		}
	}
	for _, id := range preexistingPortIDs(networkInfo(inst)) {
		if !slices.Contains(skip, id) {
			skip = append(skip, id)
		}
	}
	var del []string
	for _, p := range ports {
		if !slices.Contains(skip, p.ID) {
			del = append(del, p.ID)
		}
	}
	n.unbindPorts(ctx, skip)
	if err := n.deletePorts(ctx, del, true); err != nil {
		return err
	}
	if _, err := l.cond.ClassAction(ctx, rc, "VirtualInterface", "delete_by_instance_uuid", []any{uuid}, nil); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("deleting the instance's virtual interfaces failed")
	}
	return l.saveInfoCache(ctx, rc, inst, nil)
}

// cleanupAllocatedNetworks is _cleanup_allocated_networks after a failed
// build: the network deallocated and system_metadata's network_allocated
// set to False.
func (l *lifecycle) cleanupAllocatedNetworks(ctx context.Context, rc rpc.Context, inst *ovo.Object, requested netRequests) {
	if l.net == nil {
		return
	}
	ctx = context.WithoutCancel(ctx)
	if err := l.deallocateForInstance(ctx, rc, inst, requested); err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("Failed to deallocate networks")
		return
	}
	if sm, _ := inst.Dict("system_metadata"); sm != nil {
		sm["network_allocated"] = "False"
		if err := inst.Set("system_metadata", sm); err == nil {
			if err := l.save(ctx, rc, inst, nil); err != nil {
				zerolog.Ctx(ctx).Debug().Err(err).Msg("saving network_allocated failed")
			}
		}
	}
}

// buildNetworks is _build_networks_for_instance (with nova's async
// allocation waited for at once): nothing for 'none'; after a reschedule
// that left the network allocated, the ports bound to this host and the
// cache rebuilt; else allocate_for_instance, bound to this host, with
// system_metadata's network_allocated set (saved with the next save).
func (l *lifecycle) buildNetworks(ctx context.Context, rc rpc.Context, inst *ovo.Object, requested netRequests, secGroups []string) ([]map[string]any, error) {
	if requested.noAllocate() {
		zerolog.Ctx(ctx).Debug().Msg("Not allocating networking since 'none' was specified.")
		return nil, nil
	}
	sm, _ := inst.Dict("system_metadata")
	if s, _ := sm["network_allocated"].(string); strings.EqualFold(s, "true") {
		if err := l.setupInstanceNetworkOnHost(ctx, inst); err != nil {
			return nil, err
		}
		return l.getInstanceNWInfo(ctx, rc, inst, nwInfoOpts{})
	}
	alloc, err := l.allocateForInstance(ctx, rc, inst, requested, secGroups, l.host)
	if err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("Instance failed network setup after 1 attempt(s)")
		return nil, err
	}
	if sm != nil {
		sm["network_allocated"] = "True"
		_ = inst.Set("system_metadata", sm)
	}
	return alloc.vifs, nil
}

// vifModel is the VMware driver's NIC model from the image's hw_vif_model
// (vm_util.convert_vif_model's names, given as nova's short names).
func vifModel(props map[string]any) string {
	m, _ := props["hw_vif_model"].(string)
	switch m {
	case "":
		return defaultVIFModel
	case "VirtualE1000":
		return "e1000"
	case "VirtualE1000e":
		return "e1000e"
	case "VirtualPCNet32":
		return "pcnet32"
	case "VirtualSriovEthernetCard":
		return "sriov"
	case "VirtualVmxnet":
		return "vmxnet"
	case "VirtualVmxnet3":
		return "vmxnet3"
	}
	return m
}

// nicForVIF is vif.get_vif_dict: the VM's card for a VIF of the network
// info model. A DVS port bound with its switch and port group is
// connected to them (and to its DVS port); otherwise the card's network is
// found by name (dvs_port_group_name, else the bridge: the network id).
func nicForVIF(model string, vif map[string]any) (vcenter.NIC, error) {
	id, _ := vif["id"].(string)
	mac, _ := vif["address"].(string)
	typ, _ := vif["type"].(string)
	details, _ := vif["details"].(map[string]any)
	network, _ := vif["network"].(map[string]any)
	bridge, _ := network["bridge"].(string)
	nic := vcenter.NIC{Model: model, MAC: mac, IfaceID: id}
	str := func(k string) string {
		switch v := details[k].(type) {
		case nil:
			return ""
		case string:
			return v
		default: // a DVS port key sent as a number
			return fmt.Sprint(v)
		}
	}
	switch typ {
	case vifTypeDVS:
		if str("dvs_id") != "" && str("pg_id") != "" {
			nic.Network = vcenter.NetworkRef{SwitchUUID: str("dvs_id"), PortgroupKey: str("pg_id")}
		} else {
			name := str("dvs_port_group_name")
			if name == "" {
				name = bridge
			}
			if name == "" {
				return nic, novaError("NetworkNotFoundForBridge", fmt.Sprintf("Network could not be found for bridge %s", name), 404, map[string]any{"bridge": name})
			}
			nic.Network = vcenter.NetworkRef{NetworkName: name}
		}
		nic.Network.PortKey = str("dvs_port_key")
	case vifTypeOVS:
		// NSX's opaque networks are not supported by the agent; the
		// network is looked up by name as the integration bridge would be.
		name := str("nsx-logical-switch-id")
		if name == "" {
			name, _ = network["id"].(string)
		}
		nic.Network = vcenter.NetworkRef{NetworkName: name}
	default:
		reason := fmt.Sprintf("vif type %v not supported", vif["type"])
		return nic, invalidInput(reason)
	}
	return nic, nil
}

// nicsForVIFs is vif.get_vif_info.
func nicsForVIFs(model string, vifs []map[string]any) ([]vcenter.NIC, error) {
	var out []vcenter.NIC
	for _, v := range vifs {
		nic, err := nicForVIF(model, v)
		if err != nil {
			return nil, err
		}
		out = append(out, nic)
	}
	return out, nil
}

// remoteMessage is str(e) of a nova exception: its message.
func remoteMessage(err error) string {
	var re *rpc.RemoteError
	if errors.As(err, &re) && re.Message != "" {
		return re.Message
	}
	return err.Error()
}

// vifMaps returns the cached network info's VIFs as maps.
func vifMaps(vifs []any) []map[string]any {
	var out []map[string]any
	for _, v := range vifs {
		if m, ok := v.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}

// allocateBuildNetworks allocates the build's networks and saves the
// network info to the info cache (what the build's spawn reads). Without
// neutron, only 'none' (or nothing requested) can be served: the cache
// is saved empty, as before networking existed.
func (l *lifecycle) allocateBuildNetworks(ctx context.Context, rc rpc.Context, inst *ovo.Object, reqNets netRequests, secGroups []string) error {
	// _check_device_tagging: the VMware driver lacks supports_device_tagging.
	for _, r := range reqNets {
		if r.Tag != "" {
			return novaError("BuildAbortException", "Attempt to boot guest with tagged devices on host that does not support tagging.", 500, nil)
		}
	}
	if l.net == nil {
		if len(reqNets) > 0 && !reqNets.noAllocate() {
			zerolog.Ctx(ctx).Warn().Msg("networks requested but no neutron is configured (VCAGENT_NEUTRON_ENDPOINT or the catalog); the instance gets no network")
		}
		return l.saveInfoCache(ctx, rc, inst, nil)
	}
	vifs, err := l.buildNetworks(ctx, rc, inst, reqNets, secGroups)
	if err != nil {
		return err
	}
	if reqNets.noAllocate() || vifs == nil {
		// NetworkInfo([]) is still what the build caches.
		return l.saveInfoCache(ctx, rc, inst, allVIFs(inst))
	}
	return nil
}

// allVIFs is the instance's cached network info as maps.
func allVIFs(inst *ovo.Object) []map[string]any { return vifMaps(networkInfo(inst)) }

// networkChanged is the network-changed external event: the VIF of the
// event's port refreshed in the info cache (the whole cache without a
// tag), as get_instance_nw_info(refresh_vif_id=tag) does.
func (l *lifecycle) networkChanged(ctx context.Context, rc rpc.Context, inst *ovo.Object, portID string) {
	if l.net == nil {
		l.refreshInfoCache(ctx, rc, inst, nil)
		return
	}
	zerolog.Ctx(ctx).Debug().Msg("Refreshing instance network info cache due to event network-changed")
	if _, err := l.getInstanceNWInfo(ctx, rc, inst, nwInfoOpts{refreshVIF: portID}); err != nil {
		var re *rpc.RemoteError
		if errors.As(err, &re) && strings.HasSuffix(re.Class, "NotFound") || errors.Is(err, cloud.ErrNotFound) {
			zerolog.Ctx(ctx).Info().Err(err).Msg("Failed to process external instance event network-changed")
			return
		}
		zerolog.Ctx(ctx).Warn().Err(err).Msg("refreshing the network info cache failed")
	}
}

// healInstanceInfoCache is nova's _heal_instance_info_cache periodic task:
// each pass rebuilds one instance's network info cache from neutron
// (force_refresh), taking the host's instances in turn; building and
// deleting instances are skipped.
func (l *lifecycle) healInstanceInfoCache(ctx context.Context, rc rpc.Context) {
	if l.net == nil {
		return
	}
	log := zerolog.Ctx(ctx)
	log.Debug().Msg("Starting heal instance info cache")
	l.net.mu.Lock()
	queue := l.net.healQueue
	l.net.mu.Unlock()
	var inst *ovo.Object
	if len(queue) == 0 {
		log.Debug().Msg("Rebuilding the list of instances to heal")
		res, err := l.cond.ClassAction(ctx, rc, "InstanceList", "get_by_host", []any{l.host},
			map[string]any{"expected_attrs": []string{}, "use_slave": true})
		if err != nil {
			log.Warn().Err(err).Msg("listing the host's instances to heal failed")
			return
		}
		list, _ := res.(*ovo.Object)
		var items []*ovo.Object
		if list != nil {
			items, _ = list.Items()
		}
		for _, it := range items {
			if it.StringOrEmpty("vm_state") == "building" || it.StringOrEmpty("task_state") == "deleting" {
				continue
			}
			if inst == nil {
				inst = it
			} else {
				queue = append(queue, it.StringOrEmpty("uuid"))
			}
		}
		if inst != nil {
			// The list had no info cache loaded: read the instance in full.
			full, err := l.cond.ClassAction(ctx, rc, "Instance", "get_by_uuid", []any{inst.StringOrEmpty("uuid")},
				map[string]any{"expected_attrs": []string{"system_metadata", "info_cache", "flavor"}, "use_slave": true})
			if o, ok := full.(*ovo.Object); err == nil && ok && o != nil {
				inst = o
			}
		}
	} else {
		for len(queue) > 0 {
			uuid := queue[0]
			queue = queue[1:]
			res, err := l.cond.ClassAction(ctx, rc, "Instance", "get_by_uuid", []any{uuid},
				map[string]any{"expected_attrs": []string{"system_metadata", "info_cache", "flavor"}, "use_slave": true})
			it, ok := res.(*ovo.Object)
			if err != nil || !ok || it == nil {
				continue // gone
			}
			if it.StringOrEmpty("host") != l.host || it.StringOrEmpty("task_state") == "deleting" {
				continue
			}
			inst = it
			break
		}
	}
	l.net.mu.Lock()
	l.net.healQueue = queue
	l.net.mu.Unlock()
	if inst == nil {
		log.Debug().Msg("Didn't find any instances for network info cache update.")
		return
	}
	ilog := log.With().Str("instance_uuid", inst.StringOrEmpty("uuid")).Logger()
	if _, err := l.getInstanceNWInfo(ilog.WithContext(ctx), rc, inst, nwInfoOpts{force: true}); err != nil {
		ilog.Error().Err(err).Msg("An error occurred while refreshing the network cache.")
		return
	}
	ilog.Debug().Msg("Updated the network info_cache for instance")
}

// setupInstanceNetworkOnHost is the network API's
// setup_instance_network_on_host for this host
// (_update_port_binding_for_instance): the instance's ports bound
// elsewhere (or nowhere) are bound here; PortBindingFailed if neutron
// cannot. Unshelve and the moves call it on the destination.
func (l *lifecycle) setupInstanceNetworkOnHost(ctx context.Context, inst *ovo.Object) error {
	if l.net == nil {
		return nil
	}
	ports, err := l.net.client.ListPorts(ctx, url.Values{"device_id": {inst.StringOrEmpty("uuid")}})
	if err != nil {
		return err
	}
	for _, p := range ports {
		if p.HostID != l.host {
			if _, err := l.net.updatePort(ctx, p.ID, map[string]any{"binding:host_id": l.host}); err != nil {
				return err
			}
		}
	}
	return nil
}

// legacyFixedIPs is the fixed_ips of nova's legacy notifications
// (info_from_instance with the network info): every fixed IP of the
// cached VIFs with its network's label and the VIF's MAC.
func legacyFixedIPs(inst *ovo.Object) []any {
	out := []any{}
	for _, vif := range allVIFs(inst) {
		network, _ := vif["network"].(map[string]any)
		subnets, _ := network["subnets"].([]any)
		for _, s := range subnets {
			sub, _ := s.(map[string]any)
			ips, _ := sub["ips"].([]any)
			for _, ip := range ips {
				m, ok := ip.(map[string]any)
				if !ok {
					continue
				}
				c := make(map[string]any, len(m)+2)
				for k, v := range m {
					c[k] = v
				}
				c["label"] = network["label"]
				c["vif_mac"] = vif["address"]
				out = append(out, c)
			}
		}
	}
	return out
}

// ipPayloads is the versioned notifications' ip_addresses
// (IpPayload.from_network_info of the instance's cached network info).
func ipPayloads(inst *ovo.Object) []any {
	out := []any{}
	for _, vif := range allVIFs(inst) {
		network, _ := vif["network"].(map[string]any)
		subnets, _ := network["subnets"].([]any)
		meta, _ := vif["meta"].(map[string]any)
		if meta == nil {
			meta = map[string]any{}
		}
		for _, s := range subnets {
			sub, _ := s.(map[string]any)
			ips, _ := sub["ips"].([]any)
			for _, ip := range ips {
				m, ok := ip.(map[string]any)
				if !ok {
					continue
				}
				out = append(out, versionedObject("IpPayload", "1.0", map[string]any{
					"label": network["label"], "mac": vif["address"], "meta": meta, "port_uuid": vif["id"],
					"version": m["version"], "address": m["address"], "device_name": vif["devname"],
				}))
			}
		}
	}
	return out
}

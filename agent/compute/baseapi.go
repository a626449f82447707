package compute

import (
	"context"

	"github.com/vcagent/vcagent/rpc"
)

// RPCAPIVersion is the newest compute RPC API version the role accepts
// (nova Zed's ComputeManager target).
const RPCAPIVersion = "6.1"

// Topic is nova-compute's RPC topic.
const Topic = "compute"

// BaseAPIEndpoint is nova's BaseRPCAPI (nova/baseapi.py) that every nova
// service registers: ping answers {"service": <name>, "arg": arg}, and
// get_backdoor_port answers null (no eventlet backdoor here).
func BaseAPIEndpoint(serviceName string) rpc.Endpoint {
	return rpc.Endpoint{Namespace: "baseapi", Version: "1.1", Methods: map[string]rpc.Handler{
		"ping": func(ctx context.Context, req *rpc.Request) (any, error) {
			var a struct {
				Arg any `json:"arg"`
			}
			if err := req.DecodeArgs(&a); err != nil {
				return nil, err
			}
			return map[string]any{"service": serviceName, "arg": a.Arg}, nil
		},
		"get_backdoor_port": func(ctx context.Context, req *rpc.Request) (any, error) {
			return nil, nil
		},
	}}
}

// Endpoints are the endpoints of the compute RPC server, in nova's order:
// the compute manager (6.x), then baseapi. Methods not listed get oslo's
// NoSuchMethod, as from a nova-compute that lacks them.
func Endpoints(methods map[string]rpc.Handler) []rpc.Endpoint {
	all := map[string]rpc.Handler{"get_host_uptime": GetHostUptime}
	for name, h := range methods {
		all[name] = h
	}
	return []rpc.Endpoint{
		{Version: RPCAPIVersion, Methods: all},
		BaseAPIEndpoint(Topic),
	}
}

// GetHostUptime answers as nova's VMware driver does: one compute service
// manages many ESXi hosts, so there is no single uptime. nova-api turns this
// NotImplementedError into "uptime": null.
func GetHostUptime(ctx context.Context, req *rpc.Request) (any, error) {
	return nil, rpc.BuiltinError("NotImplementedError", "Multiple hosts may be managed by the VMWare vCenter driver; therefore we do not return uptime for just one host.")
}

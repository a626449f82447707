package compute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/rpc"
)

// conductorAPIVersion is nova Zed's ConductorAPI version for the object
// indirection calls.
const conductorAPIVersion = "3.0"

// Conductor is nova-compute's window on the database: every object read
// and write goes to nova-conductor over RPC, as oslo.versionedobjects'
// remotable methods do.
type Conductor struct {
	client   rpc.Client
	ping     rpc.Client
	codec    ovo.Codec
	registry *ovo.Registry
	log      zerolog.Logger
}

// NewConductor returns a conductor client on tr; exchange is nova's
// control exchange and timeout nova's rpc_response_timeout.
func NewConductor(tr *rpc.Transport, exchange string, timeout time.Duration, log zerolog.Logger) *Conductor {
	c := tr.NewClient(rpc.Target{Exchange: exchange, Topic: "conductor", Version: conductorAPIVersion})
	c.Timeout = timeout
	p := tr.NewClient(rpc.Target{Exchange: exchange, Topic: "conductor", Namespace: "baseapi", Version: "1.0"})
	p.Timeout = 10 * time.Second
	return &Conductor{client: c, ping: p, codec: ovo.NovaCodec(), registry: ovo.NovaZed(), log: log}
}

// WaitUntilReady pings conductor until it answers, like nova's
// conductor API wait_until_ready at start-up.
func (c *Conductor) WaitUntilReady(ctx context.Context, rc rpc.Context) error {
	for attempt := 1; ; attempt++ {
		_, err := c.ping.Call(ctx, rc, "ping", map[string]any{"arg": "1.21 GigaWatts"})
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !errors.Is(err, rpc.ErrTimeout) {
			return fmt.Errorf("ping conductor: %w", err)
		}
		c.log.Warn().Int("attempt", attempt).Msg("timed out waiting for nova-conductor; is it running? Or did this service start before nova-conductor? Reattempting establishment of nova-conductor connection...")
	}
}

// ClassAction calls a remotable classmethod (Service.get_by_host_and_binary,
// ComputeNode.get_by_host_and_nodename, InstanceList.get_by_host, …) and
// returns its decoded result: an *ovo.Object, a scalar, or nil.
func (c *Conductor) ClassAction(ctx context.Context, rc rpc.Context, objname, method string, args []any, kwargs map[string]any) (any, error) {
	versions, err := c.registry.TreeVersions(objname)
	if err != nil {
		return nil, err
	}
	callArgs, err := c.codec.ClassActionArgs(objname, method, versions, args, kwargs)
	if err != nil {
		return nil, err
	}
	raw, err := c.client.Call(ctx, rc, "object_class_action_versions", callArgs)
	if err != nil {
		return nil, fmt.Errorf("%s.%s: %w", objname, method, err)
	}
	return c.decode(ctx, rc, raw)
}

// ObjectAction calls a remotable method on obj (save, create, …) and
// applies conductor's [updates, result] reply to obj, as oslo does.
func (c *Conductor) ObjectAction(ctx context.Context, rc rpc.Context, obj *ovo.Object, method string, args []any, kwargs map[string]any) (any, error) {
	callArgs, err := c.codec.ObjectActionArgs(obj, method, args, kwargs)
	if err != nil {
		return nil, err
	}
	raw, err := c.client.Call(ctx, rc, "object_action", callArgs)
	if err != nil {
		return nil, fmt.Errorf("%s.%s: %w", obj.Name, method, err)
	}
	return c.codec.ApplyObjectActionReply(obj, raw, c.registry)
}

// decode turns a result into Go values; an object newer than the Zed
// registry is sent back to conductor to be backported, as oslo's
// serializer does with an indirection API.
func (c *Conductor) decode(ctx context.Context, rc rpc.Context, raw json.RawMessage) (any, error) {
	v, err := c.codec.UnmarshalEntity(raw)
	if err != nil {
		return nil, err
	}
	obj, ok := v.(*ovo.Object)
	if !ok {
		return v, nil
	}
	var incompatible *ovo.IncompatibleVersionError
	if err := c.registry.Check(obj); !errors.As(err, &incompatible) {
		return obj, nil
	}
	versions, err := c.registry.TreeVersions(obj.Name)
	if err != nil {
		return nil, err
	}
	args, err := c.codec.BackportArgs(obj, versions)
	if err != nil {
		return nil, err
	}
	raw, err = c.client.Call(ctx, rc, "object_backport_versions", args)
	if err != nil {
		return nil, fmt.Errorf("backport %s %s: %w", obj.Name, obj.Version, err)
	}
	return c.codec.UnmarshalEntity(raw)
}

// AdminContext is nova's get_admin_context() as RequestContext.to_dict
// sends it: the context of the service's own periodic work.
func AdminContext() rpc.Context {
	rc, _ := rpc.NewContext(map[string]any{
		"user": nil, "project_id": nil, "system_scope": nil, "project": nil, "domain": nil,
		"user_domain": nil, "project_domain": nil, "is_admin": true, "read_only": false,
		"show_deleted": false, "auth_token": nil, "request_id": "req-" + newUUID(),
		"global_request_id": nil, "resource_uuid": nil, "roles": []string{},
		"user_identity": "- - - - -", "is_admin_project": true, "user_id": nil,
		"read_deleted": "no", "remote_address": nil,
		"timestamp":   time.Now().UTC().Format("2006-01-02T15:04:05.000000"),
		"quota_class": nil, "user_name": nil, "service_catalog": nil, "project_name": nil,
	})
	return rc
}

// version is the Zed version of a nova object class.
func (c *Conductor) version(name string) string {
	v, _ := c.registry.Version(name)
	return v
}

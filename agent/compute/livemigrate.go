package compute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"

	"github.com/rs/zerolog"

	"github.com/vcagent/vcagent/agent/cloud"
	"github.com/vcagent/vcagent/agent/ovo"
	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// Live migration between clusters of one vCenter, as nova's manager and
// the VMware driver do it: check_can_live_migrate_destination (on the
// destination; it calls check_can_live_migrate_source on the source) →
// live_migration (on the source: pre_live_migration on the destination,
// then RelocateVM_Task to the destination cluster's resource pool, DRS
// choosing the host) → post_live_migration_at_destination, or the
// rollback when the relocation fails.

// allocationReader reads a consumer's allocations (*cloud.Placement has it).
type allocationReader interface {
	Allocations(ctx context.Context, consumerUUID string) (cloud.ConsumerAllocations, error)
}

// liveMigrationArgs are the arguments of the live migration RPC methods.
type liveMigrationArgs struct {
	Dest           string `json:"dest"`
	BlockMigration any    `json:"block_migration"`
	Migration      any    `json:"migration"`
	MigrateData    any    `json:"migrate_data"`
	DestCheckData  any    `json:"dest_check_data"`
}

// operationResult is operation for the calls that answer a value.
func (l *lifecycle) operationResult(ctx context.Context, req *rpc.Request, op opSpec, body func(ctx context.Context, inst *ovo.Object) (any, error)) (any, error) {
	var out any
	_, err := l.operation(ctx, req, op, func(ctx context.Context, inst *ovo.Object) error {
		v, err := body(ctx, inst)
		out = v
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func migrationPreCheckError(reason string) error {
	return novaError("MigrationPreCheckError", "Migration pre-check error: "+reason, 400, map[string]any{"reason": reason})
}

// hostNodes returns this host's compute nodes by provider (node) uuid.
func (l *lifecycle) hostNodes(ctx context.Context, rc rpc.Context) (map[string]string, error) {
	v, err := l.cond.ClassAction(ctx, rc, "ComputeNodeList", "get_all_by_host", []any{l.host}, nil)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	if list, ok := v.(*ovo.Object); ok {
		items, _ := list.Items()
		for _, n := range items {
			out[n.StringOrEmpty("uuid")] = n.StringOrEmpty("hypervisor_hostname")
		}
	}
	return out, nil
}

// liveMigrationDestNode finds which of this host's nodes the scheduler
// chose: the migration's dest_node when set, else the node whose provider
// holds the instance's allocation (conductor moved the source allocation
// to the migration consumer), else this host's only node.
func (l *lifecycle) liveMigrationDestNode(ctx context.Context, rc rpc.Context, inst, mig *ovo.Object) (string, error) {
	nodes, err := l.hostNodes(ctx, rc)
	if err != nil {
		return "", err
	}
	if mig != nil {
		if n := mig.StringOrEmpty("dest_node"); n != "" {
			return n, nil
		}
	}
	if ar, ok := l.pl.(allocationReader); ok {
		allocs, err := ar.Allocations(ctx, inst.StringOrEmpty("uuid"))
		if err != nil {
			return "", err
		}
		for rp := range allocs.Allocations {
			if n, ok := nodes[rp]; ok {
				return n, nil
			}
		}
	}
	if len(nodes) == 1 {
		for _, n := range nodes {
			return n, nil
		}
	}
	return "", migrationPreCheckError(fmt.Sprintf("cannot tell which of the %d nodes of host %s is the destination", len(nodes), l.host))
}

// CheckCanLiveMigrateDestination is check_can_live_migrate_destination (a
// call, on the destination): the VMware driver's answer, a
// VMwareLiveMigrateData naming the destination cluster and the datastore
// regex, checked by the source (check_can_live_migrate_source) whose
// answer is returned.
func (l *lifecycle) CheckCanLiveMigrateDestination(ctx context.Context, req *rpc.Request) (any, error) {
	var a liveMigrationArgs
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	return l.operationResult(ctx, req, opSpec{event: "compute_check_can_live_migrate_destination", method: "check_can_live_migrate_destination"},
		func(ctx context.Context, inst *ovo.Object) (any, error) {
			rc := req.Context
			var mig *ovo.Object
			if a.Migration != nil {
				mig, _ = decodeObject(a.Migration)
			}
			node, err := l.liveMigrationDestNode(ctx, rc, inst, mig)
			if err != nil {
				return nil, err
			}
			cluster, err := l.clusterOfNode(ctx, node)
			if err != nil {
				return nil, migrationPreCheckError(err.Error())
			}
			data := ovo.New("VMwareLiveMigrateData", l.cond.version("VMwareLiveMigrateData"))
			data.SetString("cluster_name", cluster.Name)
			re := ""
			if l.ds != nil {
				re = l.ds.String()
			}
			data.SetString("datastore_regex", re)
			raw, err := l.computeAt(inst.StringOrEmpty("host")).Call(ctx, rc, "check_can_live_migrate_source",
				map[string]any{"instance": encode(inst), "dest_check_data": encode(data)})
			if err != nil {
				return nil, err
			}
			md, err := decodeObject(raw)
			if err != nil {
				return nil, fmt.Errorf("check_can_live_migrate_source reply: %w", err)
			}
			// nova's skeleton of the VIFs to bind on the destination; the
			// agent's instances have no ports yet.
			if !md.Has("vifs") {
				md.SetObjects("vifs", []*ovo.Object{})
			}
			return encode(md), nil
		})
}

// CheckCanLiveMigrateSource is check_can_live_migrate_source (a call, on
// the source): is_volume_backed is set, and the VMware driver's check
// that the destination cluster and its resource pool exist.
func (l *lifecycle) CheckCanLiveMigrateSource(ctx context.Context, req *rpc.Request) (any, error) {
	var a liveMigrationArgs
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	return l.operationResult(ctx, req, opSpec{event: "compute_check_can_live_migrate_source", method: "check_can_live_migrate_source"},
		func(ctx context.Context, inst *ovo.Object) (any, error) {
			data, err := decodeObject(a.DestCheckData)
			if err != nil {
				return nil, fmt.Errorf("dest_check_data argument: %w", err)
			}
			data.SetBool("is_volume_backed", inst.StringOrEmpty("image_ref") == "")
			name := data.StringOrEmpty("cluster_name")
			cluster, err := l.clusterNamed(ctx, name)
			if err != nil {
				return nil, migrationPreCheckError(fmt.Sprintf("Cannot find destination cluster %s for live migration", name))
			}
			if cluster.ResourcePool.IsZero() {
				return nil, migrationPreCheckError("Cannot find destination resource pool for live migration")
			}
			return encode(data), nil
		})
}

// clusterNamed finds a cluster of the vCenter by name.
func (l *lifecycle) clusterNamed(ctx context.Context, name string) (vcenter.Cluster, error) {
	clusters, err := l.clusters(ctx)
	if err != nil {
		return vcenter.Cluster{}, err
	}
	for _, c := range clusters {
		if c.Name == name {
			return c, nil
		}
	}
	return vcenter.Cluster{}, fmt.Errorf("cluster %q: %w", name, vcenter.ErrNotFound)
}

// PreLiveMigration is pre_live_migration (a call, on the destination):
// the live_migration_pre notifications; the VMware driver has nothing to
// prepare and answers the migrate data back.
func (l *lifecycle) PreLiveMigration(ctx context.Context, req *rpc.Request) (any, error) {
	var a liveMigrationArgs
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	return l.operationResult(ctx, req, opSpec{event: "compute_pre_live_migration", method: "pre_live_migration"},
		func(ctx context.Context, inst *ovo.Object) (any, error) {
			rc := req.Context
			data, err := decodeObject(a.MigrateData)
			if err != nil {
				return nil, fmt.Errorf("migrate_data argument: %w", err)
			}
			l.notify.instanceAction(ctx, rc, inst, "live_migration.pre", "live_migration_pre", "start", nil, nil)
			// The volumes get attachments for this host (volumes_move.go).
			old, err := l.vols.preLiveMigrationVolumes(ctx, rc, inst)
			if err != nil {
				return nil, err
			}
			data.SetStringDict("old_vol_attachment_ids", old)
			data.SetBool("wait_for_vif_plugged", false)
			l.notify.instanceAction(ctx, rc, inst, "live_migration.pre", "live_migration_pre", "end", nil, nil)
			return encode(data), nil
		})
}

// LiveMigration is live_migration (a cast, on the source): the migration
// goes queued, preparing (pre_live_migration on the destination),
// running; the VM is relocated to the destination cluster's resource pool
// (vMotion) and post_live_migration runs; a failed relocation rolls back.
func (l *lifecycle) LiveMigration(ctx context.Context, req *rpc.Request) (any, error) {
	var a liveMigrationArgs
	if err := req.DecodeArgs(&a); err != nil {
		return nil, err
	}
	mig, err := decodeObject(a.Migration)
	if err != nil {
		return nil, fmt.Errorf("migration argument: %w", err)
	}
	return l.operation(ctx, req, opSpec{event: "compute_live_migration", method: "live_migration"},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			if err := l.setMigrationStatus(ctx, rc, mig, "queued"); err != nil {
				return err
			}
			err := l.doLiveMigration(ctx, rc, inst, mig, a)
			if err != nil && mig.StringOrEmpty("status") != "failed" && mig.StringOrEmpty("status") != "error" {
				_ = l.setMigrationStatus(ctx, rc, mig, "error")
			}
			return err
		})
}

func (l *lifecycle) doLiveMigration(ctx context.Context, rc rpc.Context, inst, mig *ovo.Object, a liveMigrationArgs) error {
	if err := l.setMigrationStatus(ctx, rc, mig, "preparing"); err != nil {
		return err
	}
	data, err := decodeObject(a.MigrateData)
	if err != nil {
		return fmt.Errorf("migrate_data argument: %w", err)
	}
	// source_bdms: the volumes as attached here, before the destination
	// replaces their attachments.
	sourceBDMs, err := l.vols.volumeBDMs(ctx, rc, inst)
	if err != nil {
		return err
	}
	raw, err := l.computeAt(a.Dest).Call(ctx, rc, "pre_live_migration",
		map[string]any{"instance": encode(inst), "disk": nil, "migrate_data": encode(data)})
	if err == nil {
		var v any
		if err = json.Unmarshal(raw, &v); err == nil {
			data, err = decodeObject(v)
		}
	}
	if err != nil {
		_ = l.setMigrationStatus(ctx, rc, mig, "error")
		l.vols.rollbackVolumeBDMs(ctx, rc, inst, sourceBDMs)
		l.rollbackLiveMigration(ctx, rc, inst, mig, data, a.Dest, "error")
		return err
	}
	data.SetObject("migration", mig)
	if err := l.setMigrationStatus(ctx, rc, mig, "running"); err != nil {
		return err
	}
	if err := l.relocateLive(ctx, inst, data); err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("live migration failed")
		l.vols.rollbackVolumeBDMs(ctx, rc, inst, sourceBDMs)
		l.rollbackLiveMigration(ctx, rc, inst, mig, data, a.Dest, "failed")
		return err
	}
	// The volumes' disks went with the VM; their backings follow them if
	// they changed datastore, and the source's attachments are deleted
	// (volumes_move.go).
	if len(sourceBDMs) > 0 {
		cur, err := l.vols.volumeBDMs(ctx, rc, inst)
		if err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("reading the migrated instance's volumes failed")
		}
		l.vols.consolidateVolumes(ctx, inst, cur)
	}
	l.vols.removeSourceVolumeConnections(ctx, rc, inst, sourceBDMs)
	l.postLiveMigration(ctx, rc, inst, mig, a.Dest, a.BlockMigration)
	return nil
}

// relocateLive is the VMware driver's live_migration: the VM goes to the
// named cluster's resource pool, keeping its datastore when the cluster
// mounts it (and the regex allows it), else onto the cluster's best one.
func (l *lifecycle) relocateLive(ctx context.Context, inst, data *ovo.Object) error {
	cluster, err := l.clusterNamed(ctx, data.StringOrEmpty("cluster_name"))
	if err != nil {
		return novaError("HostNotFound", "Compute host could not be found.", 404, map[string]any{"host": data.StringOrEmpty("cluster_name")})
	}
	vm, err := l.vmOf(ctx, inst)
	if err != nil {
		return err
	}
	dsRegex := l.ds
	if re := data.StringOrEmpty("datastore_regex"); re != "" {
		if dsRegex, err = regexp.Compile(re); err != nil {
			return fmt.Errorf("datastore_regex %q: %w", re, err)
		}
	}
	_, err = l.moveVMToCluster(ctx, vm, cluster, dsRegex)
	return err
}

// postLiveMigration is nova's _post_live_migration on the source: the
// live_migration._post notifications, post_live_migration_at_destination
// on the destination, the migration completed and the source node's
// allocation (held by the migration) released.
func (l *lifecycle) postLiveMigration(ctx context.Context, rc rpc.Context, inst, mig *ovo.Object, dest string, blockMigration any) {
	l.notify.instanceAction(ctx, rc, inst, "live_migration._post", "live_migration_post", "start", nil, nil)
	if _, err := l.computeAt(dest).Call(ctx, rc, "post_live_migration_at_destination",
		map[string]any{"instance": encode(inst), "block_migration": blockMigration}); err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Str("dest", dest).Msg("post live migration at destination failed")
	}
	if dest != l.host {
		if err := l.sched.Cast(ctx, rc, "delete_instance_info", map[string]any{"host_name": l.host, "instance_uuid": inst.StringOrEmpty("uuid")}); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("delete_instance_info to the scheduler failed")
		}
	}
	l.notify.instanceAction(ctx, rc, inst, "live_migration._post", "live_migration_post", "end", nil, nil)
	if err := l.setMigrationStatus(ctx, rc, mig, "completed"); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("completing the migration failed")
	}
	l.deleteMigrationAllocation(ctx, mig)
}

// rollbackLiveMigration is nova's _rollback_live_migration: the
// allocations go back to the instance, its task state is cleared, the
// destination is told to roll back and the migration ends in status.
func (l *lifecycle) rollbackLiveMigration(ctx context.Context, rc rpc.Context, inst, mig, data *ovo.Object, dest, status string) {
	ctx = context.WithoutCancel(ctx)
	if err := l.revertAllocation(ctx, inst, mig); err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("reverting the allocations failed")
	}
	inst.SetNull("task_state")
	inst.SetInt("progress", 0)
	if err := l.save(ctx, rc, inst, []any{"migrating"}); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("clearing the task state after a failed live migration failed")
	}
	l.notify.instanceAction(ctx, rc, inst, "live_migration._rollback", "live_migration_rollback", "start", nil, nil)
	args := map[string]any{"instance": encode(inst), "destroy_disks": false, "migrate_data": encode(data)}
	if err := l.computeAt(dest).Cast(ctx, rc, "rollback_live_migration_at_destination", args); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("rollback_live_migration_at_destination failed")
	}
	l.notify.instanceAction(ctx, rc, inst, "live_migration._rollback", "live_migration_rollback", "end", nil, nil)
	if err := l.setMigrationStatus(ctx, rc, mig, status); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("setting the migration status failed")
	}
}

// PostLiveMigrationAtDestination is post_live_migration_at_destination (a
// call, on the destination): the instance is on this host, on the node of
// the cluster its VM now runs in, with task_state cleared.
func (l *lifecycle) PostLiveMigrationAtDestination(ctx context.Context, req *rpc.Request) (any, error) {
	return l.operation(ctx, req, opSpec{event: "compute_post_live_migration_at_destination", method: "post_live_migration_at_destination"},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			l.notify.instanceAction(ctx, rc, inst, "live_migration.post.dest", "live_migration_post_dest", "start", nil, nil)
			node, power, err := l.nodeOfVM(ctx, inst)
			if err != nil {
				inst.SetString("vm_state", "error")
			}
			inst.SetString("host", l.host)
			if node != "" {
				inst.SetString("node", node)
			}
			if power >= 0 {
				inst.SetInt("power_state", power)
			}
			inst.SetNull("task_state")
			inst.SetInt("progress", 0)
			if serr := l.save(ctx, rc, inst, "migrating"); serr != nil {
				return serr
			}
			if err != nil {
				return err
			}
			l.updateSchedulerInstanceInfo(ctx, rc, inst)
			l.notify.instanceAction(ctx, rc, inst, "live_migration.post.dest", "live_migration_post_dest", "end", nil, nil)
			return nil
		})
}

// nodeOfVM returns the node of the cluster the instance's VM is in, and
// its nova power state (-1 if unknown).
func (l *lifecycle) nodeOfVM(ctx context.Context, inst *ovo.Object) (string, int64, error) {
	vm, err := l.vmOf(ctx, inst)
	if err != nil {
		return "", -1, err
	}
	power := int64(-1)
	if p, ok := vmPowerStates[vm.PowerState]; ok {
		power = p
	}
	clusters, err := l.clusters(ctx)
	if err != nil {
		return "", power, err
	}
	for _, c := range clusters {
		if c.ResourcePool == vm.ResourcePool {
			return NodeName(c, l.hv.InstanceUUID()), power, nil
		}
	}
	return "", power, errors.New("the VM is in no cluster's root resource pool")
}

// RollbackLiveMigrationAtDestination is
// rollback_live_migration_at_destination (a cast, on the destination).
// The VMware driver destroys the instance there; since one VM serves both
// ends and a failed relocation leaves it on the source, the agent only
// sends the notifications.
func (l *lifecycle) RollbackLiveMigrationAtDestination(ctx context.Context, req *rpc.Request) (any, error) {
	return l.operation(ctx, req, opSpec{event: "compute_rollback_live_migration_at_destination", method: "rollback_live_migration_at_destination"},
		func(ctx context.Context, inst *ovo.Object) error {
			rc := req.Context
			l.notify.instanceAction(ctx, rc, inst, "live_migration.rollback.dest", "live_migration_rollback_dest", "start", nil, nil)
			l.notify.instanceAction(ctx, rc, inst, "live_migration.rollback.dest", "live_migration_rollback_dest", "end", nil, nil)
			return nil
		})
}

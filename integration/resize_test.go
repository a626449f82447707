//go:build integration

package integration

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/integration/cp"
)

// rszEnv is a compute set-up of the resize tests: the hosts in their own
// availability zone, an image, and the test's view of vCenter.
type rszEnv struct {
	ctrl  *cp.ControlPlane
	vc    *vcenter.Session
	az    string
	image string
	// nodes maps hypervisor_hostname to its compute node (provider) uuid.
	nodes map[string]string
	// pools maps a node to its cluster's root resource pool.
	pools map[string]vcenter.Ref
}

// rszSetUp starts one agent per entry of hosts (host name -> clusters,
// empty for every cluster) on one vCenter simulator, puts the hosts in an
// availability zone of their own and uploads an image.
func rszSetUp(t *testing.T, hosts map[string]string, nodes int) *rszEnv {
	t.Helper()
	ctx := context.Background()
	ctrl := controlPlane(t)
	vcEnv, vc := testVCenter(t)
	for host, clusters := range hosts {
		env := append(computeAgentEnv(ctrl, host), vcEnv...)
		if clusters != "" {
			env = append(env, "VCAGENT_CLUSTERS="+clusters)
		}
		startAgent(t, env...)
	}
	for host := range hosts {
		waitServiceState(t, ctrl, host, "up", 90*time.Second)
	}
	if out, err := ctrl.NovaManage(ctx, "cell_v2", "discover_hosts"); err != nil {
		t.Fatalf("discover_hosts: %v\n%s", err, out)
	}
	names := make([]string, 0, len(hosts))
	for host := range hosts {
		names = append(names, host)
	}
	return newRszEnv(t, ctrl, vc, names, nodes)
}

// newRszEnv is the set-up of rszSetUp once the hosts' agents are up: the
// hosts' nodes, an availability zone of their own and an image.
func newRszEnv(t *testing.T, ctrl *cp.ControlPlane, vc *vcenter.Session, hosts []string, nodes int) *rszEnv {
	t.Helper()
	ctx := context.Background()
	e := &rszEnv{ctrl: ctrl, vc: vc, nodes: map[string]string{}, pools: map[string]vcenter.Ref{}}
	// Every node must exist before the hosts join the zone: nova-api puts
	// the nodes the host has then into the placement aggregate.
	clusters, err := vc.Clusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, host := range hosts {
		for name, hv := range hypervisorsOf(t, ctrl, host, nodes/len(hosts)) {
			e.nodes[name] = fmt.Sprint(hv["id"])
			total++
			moref, _, _ := strings.Cut(name, ".")
			for _, c := range clusters {
				if c.Ref.Value == moref {
					e.pools[name] = c.ResourcePool
				}
			}
		}
	}
	if total != nodes || len(e.pools) != nodes {
		t.Fatalf("nodes %v with pools %v, want %d", e.nodes, e.pools, nodes)
	}
	for _, rp := range e.nodes {
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, err := ctrl.PlacementGET(ctx, "/resource_providers/"+rp)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("provider %s: %v", rp, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	e.az = "vcagent-rsz-az-" + fmt.Sprint(time.Now().UnixNano()%100000)
	agg, err := ctrl.NovaPOST(ctx, "/os-aggregates", map[string]any{"aggregate": map[string]any{"name": e.az, "availability_zone": e.az}})
	if err != nil {
		t.Fatal(err)
	}
	aggID := agg["aggregate"].(map[string]any)["id"]
	for _, host := range hosts {
		if _, err := ctrl.NovaPOST(ctx, fmt.Sprintf("/os-aggregates/%v/action", aggID), map[string]any{"add_host": map[string]any{"host": host}}); err != nil {
			t.Fatal(err)
		}
	}
	// nova-api (and nova-manage placement sync_aggregates) map only a
	// host's first node into the placement aggregate of the zone; the
	// others are added as an operator of a multi-node host has to.
	aggUUID := fmt.Sprint(agg["aggregate"].(map[string]any)["uuid"])
	h := http.Header{ctrl.AuthHeader: {ctrl.Token}, "OpenStack-API-Version": {"placement 1.39"}}
	for _, rp := range e.nodes {
		url := ctrl.PlacementURL + "/resource_providers/" + rp + "/aggregates"
		for try := 0; ; try++ {
			cur, err := ctrl.Do(ctx, "GET", url, nil, h)
			if err != nil {
				t.Fatal(err)
			}
			aggs := []any{aggUUID}
			for _, a := range cur["aggregates"].([]any) {
				if a != aggUUID {
					aggs = append(aggs, a)
				}
			}
			_, err = ctrl.Do(ctx, "PUT", url, map[string]any{"aggregates": aggs, "resource_provider_generation": cur["resource_provider_generation"]}, h)
			if err == nil {
				break
			}
			if cp.StatusCode(err) != http.StatusConflict || try > 10 {
				t.Fatalf("aggregates of %s: %v", rp, err)
			}
		}
	}
	t.Cleanup(func() {
		for _, host := range hosts {
			_, _ = ctrl.NovaPOST(ctx, fmt.Sprintf("/os-aggregates/%v/action", aggID), map[string]any{"remove_host": map[string]any{"host": host}})
		}
		_, _ = ctrl.NovaDELETE(ctx, fmt.Sprintf("/os-aggregates/%v", aggID))
	})
	e.image = uploadFlatImage(t, ctrl)
	return e
}

// boot boots a server of the flavor in the zone and waits for ACTIVE.
func (e *rszEnv) boot(t *testing.T, name, flavor string) map[string]any {
	t.Helper()
	created, err := e.ctrl.NovaPOST(context.Background(), "/servers", map[string]any{"server": map[string]any{
		"name": name, "imageRef": e.image, "flavorRef": flavor, "networks": "none", "availability_zone": e.az,
	}})
	if err != nil {
		t.Fatal(err)
	}
	id := created["server"].(map[string]any)["id"].(string)
	t.Cleanup(func() { _, _ = e.ctrl.NovaDELETE(context.Background(), "/servers/"+id) })
	return waitServer(t, e.ctrl, id, 120*time.Second, settled("ACTIVE"))
}

// action posts a server action.
func (e *rszEnv) action(t *testing.T, id string, body map[string]any) {
	t.Helper()
	if _, err := e.ctrl.NovaPOST(context.Background(), "/servers/"+id+"/action", body); err != nil {
		t.Fatalf("%v: %v", body, err)
	}
}

// checkVM checks that the server's VM is in the cluster of the server's
// node, with the flavor's CPUs and memory, and powered as wanted.
func (e *rszEnv) checkVM(t *testing.T, s map[string]any, vcpus int32, memMB int64, power string) vcenter.VM {
	t.Helper()
	id := s["id"].(string)
	node := fmt.Sprint(s["OS-EXT-SRV-ATTR:hypervisor_hostname"])
	vm, err := e.vc.FindVMByInstanceUUID(context.Background(), id)
	if err != nil {
		t.Fatalf("VM of %s: %v", id, err)
	}
	if want, ok := e.pools[node]; !ok || vm.ResourcePool != want {
		t.Errorf("VM of %s in pool %v; the server is on node %s whose pool is %v", id, vm.ResourcePool, node, want)
	}
	if vm.NumCPUs != vcpus || vm.MemoryMB != memMB || vm.PowerState != power {
		t.Errorf("VM of %s: %d CPUs, %d MB, %s; want %d, %d, %s", id, vm.NumCPUs, vm.MemoryMB, vm.PowerState, vcpus, memMB, power)
	}
	return vm
}

// allocations returns a consumer's allocations: provider -> class -> amount.
func (e *rszEnv) allocations(t *testing.T, consumer string) map[string]map[string]float64 {
	t.Helper()
	v, err := e.ctrl.PlacementGET(context.Background(), "/allocations/"+consumer)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]float64{}
	a, _ := v["allocations"].(map[string]any)
	for rp, x := range a {
		res, _ := x.(map[string]any)["resources"].(map[string]any)
		out[rp] = map[string]float64{}
		for rc, n := range res {
			out[rp][rc] = num(n)
		}
	}
	return out
}

// checkAllocation checks that consumer holds memMB of MEMORY_MB on the
// node's provider only (memMB 0: no allocation at all).
func (e *rszEnv) checkAllocation(t *testing.T, what, consumer, node string, memMB float64) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		got := e.allocations(t, consumer)
		ok := len(got) == 0
		if memMB > 0 {
			rp := e.nodes[node]
			ok = len(got) == 1 && got[rp]["MEMORY_MB"] == memMB
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: allocations of %s %v; want %v MB on %s (%s)", what, consumer, got, memMB, node, e.nodes[node])
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// migration returns the server's newest migration record.
func (e *rszEnv) migration(t *testing.T, id string) map[string]any {
	t.Helper()
	v, err := e.ctrl.NovaGET(context.Background(), "/os-migrations?instance_uuid="+id)
	if err != nil {
		t.Fatal(err)
	}
	var newest map[string]any
	for _, m := range asList(v, "migrations") {
		if newest == nil || num(m["id"]) > num(newest["id"]) {
			newest = m
		}
	}
	if newest == nil {
		t.Fatalf("server %s has no migration", id)
	}
	return newest
}

// waitMigration waits until the server's newest migration has status.
func (e *rszEnv) waitMigration(t *testing.T, id, status string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		m := e.migration(t, id)
		if m["status"] == status {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("migration of %s: status %v, want %s", id, m["status"], status)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// actionEvents returns, for the server's newest action named action, its
// events' results by event name.
func (e *rszEnv) actionEvents(t *testing.T, id, action string) map[string]string {
	t.Helper()
	acts, err := e.ctrl.NovaGET(context.Background(), "/servers/"+id+"/os-instance-actions")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range asList(acts, "instanceActions") { // newest first
		if a["action"] != action {
			continue
		}
		detail, err := e.ctrl.NovaGET(context.Background(), fmt.Sprintf("/servers/%s/os-instance-actions/%s", id, a["request_id"]))
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		ia, _ := detail["instanceAction"].(map[string]any)
		for _, ev := range asList(ia, "events") {
			out[fmt.Sprint(ev["event"])] = fmt.Sprint(ev["result"])
		}
		return out
	}
	return nil
}

// checkEvents checks that the server's newest action has these events,
// all successful.
func (e *rszEnv) checkEvents(t *testing.T, id, action string, events ...string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := e.actionEvents(t, id, action)
		ok := true
		for _, ev := range events {
			if got[ev] != "Success" {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("server %s action %s events %v; want %v successful", id, action, got, events)
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// excludeNode keeps the scheduler off a node until the returned func
// runs: nova's compute_status_filter forbids the COMPUTE_STATUS_DISABLED
// trait, which the test sets on the node's provider (the agent keeps
// traits it does not own). Moves then have to go to the other cluster.
func (e *rszEnv) excludeNode(t *testing.T, node string) func() {
	t.Helper()
	set := func(on bool) {
		t.Helper()
		ctx := context.Background()
		url := e.ctrl.PlacementURL + "/resource_providers/" + e.nodes[node] + "/traits"
		h := http.Header{e.ctrl.AuthHeader: {e.ctrl.Token}, "OpenStack-API-Version": {"placement 1.39"}}
		for try := 0; ; try++ {
			cur, err := e.ctrl.Do(ctx, "GET", url, nil, h)
			if err != nil {
				t.Fatal(err)
			}
			var traits []string
			for _, x := range cur["traits"].([]any) {
				if x != "COMPUTE_STATUS_DISABLED" {
					traits = append(traits, x.(string))
				}
			}
			if on {
				traits = append(traits, "COMPUTE_STATUS_DISABLED")
			}
			_, err = e.ctrl.Do(ctx, "PUT", url, map[string]any{"traits": traits, "resource_provider_generation": cur["resource_provider_generation"]}, h)
			if err == nil {
				return
			}
			if cp.StatusCode(err) != http.StatusConflict || try > 10 {
				t.Fatalf("traits of %s: %v", node, err)
			}
		}
	}
	set(true)
	return func() { set(false) }
}

func otherNode(nodes map[string]string, node string) string {
	for n := range nodes {
		if n != node {
			return n
		}
	}
	return ""
}

// TestResizeConfirmRevertAndColdMigrate drives resizes and a cold
// migration through the real nova API on one agent serving both clusters
// of its vCenter (two nodes of one host): a resize to a bigger flavor,
// confirmed; a resize reverted; a cold migration, confirmed. After each
// step the VM is in the cluster of the server's node with the flavor's
// CPUs and memory, placement holds nova's allocations (the migration
// consumer the source node's until the confirm or revert), and the
// instance actions have the compute's events.
func TestResizeConfirmRevertAndColdMigrate(t *testing.T) {
	start := time.Now()
	host := "vcagent-rsz-" + fmt.Sprint(time.Now().Unix()%100000)
	e := rszSetUp(t, map[string]string{host: ""}, 2)
	ctx := context.Background()
	flavorID := "vcagent-rsz-" + fmt.Sprint(time.Now().UnixNano()%1000000)
	if _, err := e.ctrl.NovaPOST(ctx, "/flavors", map[string]any{"flavor": map[string]any{
		"name": flavorID, "id": flavorID, "ram": 256, "vcpus": 2, "disk": 2,
	}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = e.ctrl.NovaDELETE(context.Background(), "/flavors/"+flavorID) })
	t.Logf("set-up: %s", time.Since(start).Round(time.Millisecond))

	// 1. Resize m1.nano -> the bigger flavor, confirmed.
	s := e.boot(t, "rsz-confirm", "42")
	id := s["id"].(string)
	srcNode := fmt.Sprint(s["OS-EXT-SRV-ATTR:hypervisor_hostname"])
	e.checkVM(t, s, 1, 64, vcenter.PowerStateOn)
	step := time.Now()
	restore := e.excludeNode(t, srcNode)
	e.action(t, id, map[string]any{"resize": map[string]any{"flavorRef": flavorID}})
	s = waitServer(t, e.ctrl, id, 120*time.Second, settled("VERIFY_RESIZE"))
	restore()
	t.Logf("resize to VERIFY_RESIZE: %s", time.Since(step).Round(time.Millisecond))
	dstNode := fmt.Sprint(s["OS-EXT-SRV-ATTR:hypervisor_hostname"])
	if dstNode == srcNode || dstNode != otherNode(e.nodes, srcNode) {
		t.Errorf("resized from node %s to %s, want the other node", srcNode, dstNode)
	}
	if s["OS-EXT-SRV-ATTR:host"] != host {
		t.Errorf("resized server on host %v, want %s", s["OS-EXT-SRV-ATTR:host"], host)
	}
	vm := e.checkVM(t, s, 2, 256, vcenter.PowerStateOn)
	if len(vm.Disks) == 0 || vm.Disks[0].CapacityKB < 2<<20 {
		t.Fatalf("root disk after the resize: %+v, want 2 GB", vm.Disks)
	}
	// The pre-resize root disk is kept beside the root for a revert.
	root, err := vcenter.ParseDatastorePath(vm.Disks[0].FileName)
	if err != nil {
		t.Fatal(err)
	}
	original := vcenter.DatastorePath{Datastore: root.Datastore, Path: id + "/original.vmdk"}
	if ok, err := e.vc.FileExists(ctx, "DC0", original); !ok || err != nil {
		t.Errorf("%s after the resize: %t, %v; want it kept", original, ok, err)
	}
	mig := e.migration(t, id)
	if mig["status"] != "finished" || mig["source_node"] != srcNode || mig["dest_node"] != dstNode || mig["migration_type"] != "resize" {
		t.Errorf("migration after the resize: %v", mig)
	}
	migUUID := fmt.Sprint(mig["uuid"])
	e.checkAllocation(t, "resized", id, dstNode, 256)
	e.checkAllocation(t, "resized (source, held by the migration)", migUUID, srcNode, 64)
	e.checkEvents(t, id, "resize", "compute_prep_resize", "compute_resize_instance", "compute_finish_resize")
	t.Logf("resize from %s to %s", srcNode, dstNode)

	step = time.Now()
	e.action(t, id, map[string]any{"confirmResize": nil})
	s = waitServer(t, e.ctrl, id, 60*time.Second, settled("ACTIVE"))
	e.waitMigration(t, id, "confirmed")
	t.Logf("confirm: %s", time.Since(step).Round(time.Millisecond))
	e.checkVM(t, s, 2, 256, vcenter.PowerStateOn)
	e.checkAllocation(t, "confirmed", id, dstNode, 256)
	e.checkAllocation(t, "confirmed (migration)", migUUID, "", 0)
	e.checkEvents(t, id, "confirmResize", "compute_confirm_resize")
	if ok, err := e.vc.FileExists(ctx, "DC0", original); ok || err != nil {
		t.Errorf("%s after the confirm: %t, %v; want it deleted", original, ok, err)
	}
	if f, _ := s["flavor"].(map[string]any); f["original_name"] != flavorID {
		t.Errorf("flavor after the confirm: %v, want %s", f, flavorID)
	}

	// 2. Resize m1.nano -> the bigger flavor, reverted.
	s = e.boot(t, "rsz-revert", "42")
	id = s["id"].(string)
	srcNode = fmt.Sprint(s["OS-EXT-SRV-ATTR:hypervisor_hostname"])
	step = time.Now()
	restore = e.excludeNode(t, srcNode)
	e.action(t, id, map[string]any{"resize": map[string]any{"flavorRef": flavorID}})
	s = waitServer(t, e.ctrl, id, 120*time.Second, settled("VERIFY_RESIZE"))
	restore()
	dstNode = fmt.Sprint(s["OS-EXT-SRV-ATTR:hypervisor_hostname"])
	if dstNode == srcNode {
		t.Errorf("resized on node %s, want the other node", dstNode)
	}
	if vm := e.checkVM(t, s, 2, 256, vcenter.PowerStateOn); len(vm.Disks) == 0 || vm.Disks[0].CapacityKB != 2<<20 {
		t.Errorf("root disk after the resize: %+v, want 2 GB", vm.Disks)
	}
	migUUID = fmt.Sprint(e.migration(t, id)["uuid"])
	e.action(t, id, map[string]any{"revertResize": nil})
	s = waitServer(t, e.ctrl, id, 120*time.Second, settled("ACTIVE"))
	e.waitMigration(t, id, "reverted")
	t.Logf("resize and revert (%s -> %s -> back): %s", srcNode, dstNode, time.Since(step).Round(time.Millisecond))
	if got := fmt.Sprint(s["OS-EXT-SRV-ATTR:hypervisor_hostname"]); got != srcNode {
		t.Errorf("reverted server on node %s, want %s", got, srcNode)
	}
	if vm := e.checkVM(t, s, 1, 64, vcenter.PowerStateOn); len(vm.Disks) != 1 || vm.Disks[0].CapacityKB != 1<<20 {
		t.Errorf("root disk after the revert: %+v, want the 1 GB original back", vm.Disks)
	}
	e.checkAllocation(t, "reverted", id, srcNode, 64)
	e.checkAllocation(t, "reverted (migration)", migUUID, "", 0)
	e.checkEvents(t, id, "revertResize", "compute_revert_resize", "compute_finish_revert_resize")
	if f, _ := s["flavor"].(map[string]any); f["original_name"] != "m1.nano" {
		t.Errorf("flavor after the revert: %v, want m1.nano", f)
	}

	// 3. Cold migration (same flavor), confirmed.
	step = time.Now()
	restore = e.excludeNode(t, srcNode)
	e.action(t, id, map[string]any{"migrate": nil})
	s = waitServer(t, e.ctrl, id, 120*time.Second, settled("VERIFY_RESIZE"))
	restore()
	dstNode = fmt.Sprint(s["OS-EXT-SRV-ATTR:hypervisor_hostname"])
	if dstNode == srcNode {
		t.Errorf("cold-migrated on node %s, want the other node", dstNode)
	}
	mig = e.migration(t, id)
	if mig["migration_type"] != "migration" || mig["status"] != "finished" {
		t.Errorf("cold migration record: %v", mig)
	}
	e.checkVM(t, s, 1, 64, vcenter.PowerStateOn)
	e.checkAllocation(t, "migrated", id, dstNode, 64)
	e.checkAllocation(t, "migrated (source, held by the migration)", fmt.Sprint(mig["uuid"]), srcNode, 64)
	e.checkEvents(t, id, "migrate", "compute_prep_resize", "compute_resize_instance", "compute_finish_resize")
	e.action(t, id, map[string]any{"confirmResize": nil})
	s = waitServer(t, e.ctrl, id, 60*time.Second, settled("ACTIVE"))
	e.waitMigration(t, id, "confirmed")
	t.Logf("cold migration %s -> %s and confirm: %s", srcNode, dstNode, time.Since(step).Round(time.Millisecond))
	e.checkVM(t, s, 1, 64, vcenter.PowerStateOn)
	e.checkAllocation(t, "migration confirmed", id, dstNode, 64)
	e.checkAllocation(t, "migration confirmed (migration)", fmt.Sprint(mig["uuid"]), "", 0)

	// 4. A shrink is refused as the VMware driver refuses it.
	step = time.Now()
	e.action(t, id, map[string]any{"resize": map[string]any{"flavorRef": flavorID}})
	waitServer(t, e.ctrl, id, 120*time.Second, settled("VERIFY_RESIZE"))
	e.action(t, id, map[string]any{"confirmResize": nil})
	waitServer(t, e.ctrl, id, 60*time.Second, settled("ACTIVE"))
	small := "vcagent-rsz-s" + fmt.Sprint(time.Now().UnixNano()%1000000)
	if _, err := e.ctrl.NovaPOST(ctx, "/flavors", map[string]any{"flavor": map[string]any{
		"name": small, "id": small, "ram": 512, "vcpus": 2, "disk": 1,
	}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = e.ctrl.NovaDELETE(context.Background(), "/flavors/"+small) })
	e.action(t, id, map[string]any{"resize": map[string]any{"flavorRef": small}})
	s = waitServer(t, e.ctrl, id, 120*time.Second, func(s map[string]any) bool {
		return settled("ACTIVE")(s) && e.migration(t, id)["status"] == "error"
	})
	t.Logf("refused shrink: %s", time.Since(step).Round(time.Millisecond))
	if f, _ := s["flavor"].(map[string]any); f["original_name"] != flavorID {
		t.Errorf("flavor after the refused shrink: %v, want %s", f, flavorID)
	}
	ev := e.actionEvents(t, id, "resize")
	if ev["compute_resize_instance"] != "Error" {
		t.Errorf("refused shrink's events %v, want compute_resize_instance Error", ev)
	}
	e.checkVM(t, s, 2, 256, vcenter.PowerStateOn)
	e.checkAllocation(t, "after the refused shrink", id, fmt.Sprint(s["OS-EXT-SRV-ATTR:hypervisor_hostname"]), 256)
	t.Logf("total: %s", time.Since(start).Round(time.Millisecond))
}

// TestLiveMigrationBetweenAgentsOfOneVCenter live-migrates a server
// through the real nova API between two agents, each serving one cluster
// of the same vCenter (nova live-migrates between hosts only): the VM
// moves to the destination cluster's resource pool powered on, the server
// is on the destination host and node, the allocations moved, the
// migration is completed and the instance action has the compute's events;
// it migrates back to the named host, then cold-migrates between the two
// agents (resize_instance on one, finish_resize on the other) and confirms.
func TestLiveMigrationBetweenAgentsOfOneVCenter(t *testing.T) {
	start := time.Now()
	suffix := fmt.Sprint(time.Now().Unix() % 100000)
	hosts := map[string]string{"vcagent-rsz-la" + suffix: "DC0_C0", "vcagent-rsz-lb" + suffix: "DC0_C1"}
	e := rszSetUp(t, hosts, 2)
	t.Logf("set-up: %s", time.Since(start).Round(time.Millisecond))
	s := e.boot(t, "rsz-live", "42")
	id := s["id"].(string)
	srcHost := fmt.Sprint(s["OS-EXT-SRV-ATTR:host"])
	srcNode := fmt.Sprint(s["OS-EXT-SRV-ATTR:hypervisor_hostname"])
	e.checkVM(t, s, 1, 64, vcenter.PowerStateOn)
	dstNode := otherNode(e.nodes, srcNode)

	step := time.Now()
	e.action(t, id, map[string]any{"os-migrateLive": map[string]any{"host": nil, "block_migration": "auto"}})
	s = waitServer(t, e.ctrl, id, 120*time.Second, func(s map[string]any) bool {
		return settled("ACTIVE")(s) && s["OS-EXT-SRV-ATTR:host"] != srcHost
	})
	mig := e.waitMigration(t, id, "completed")
	t.Logf("live migration %s -> %s: %s", srcNode, dstNode, time.Since(step).Round(time.Millisecond))
	if got := fmt.Sprint(s["OS-EXT-SRV-ATTR:hypervisor_hostname"]); got != dstNode {
		t.Errorf("live-migrated server on node %s, want %s", got, dstNode)
	}
	if mig["migration_type"] != "live-migration" {
		t.Errorf("live migration record: %v", mig)
	}
	e.checkVM(t, s, 1, 64, vcenter.PowerStateOn)
	e.checkAllocation(t, "live-migrated", id, dstNode, 64)
	e.checkAllocation(t, "live-migrated (migration)", fmt.Sprint(mig["uuid"]), "", 0)
	e.checkEvents(t, id, "live-migration", "compute_check_can_live_migrate_destination",
		"compute_check_can_live_migrate_source", "compute_pre_live_migration", "compute_live_migration",
		"compute_post_live_migration_at_destination")

	// And back, to the named host.
	step = time.Now()
	e.action(t, id, map[string]any{"os-migrateLive": map[string]any{"host": srcHost, "block_migration": "auto"}})
	s = waitServer(t, e.ctrl, id, 120*time.Second, func(s map[string]any) bool {
		return settled("ACTIVE")(s) && s["OS-EXT-SRV-ATTR:host"] == srcHost
	})
	e.waitMigration(t, id, "completed")
	t.Logf("live migration back to %s: %s", srcHost, time.Since(step).Round(time.Millisecond))
	e.checkVM(t, s, 1, 64, vcenter.PowerStateOn)
	e.checkAllocation(t, "live-migrated back", id, srcNode, 64)

	// A cold migration between the agents, confirmed: resize_instance runs
	// on the source agent, finish_resize on the destination one.
	step = time.Now()
	restore := e.excludeNode(t, srcNode)
	e.action(t, id, map[string]any{"migrate": nil})
	s = waitServer(t, e.ctrl, id, 120*time.Second, settled("VERIFY_RESIZE"))
	restore()
	if got := fmt.Sprint(s["OS-EXT-SRV-ATTR:hypervisor_hostname"]); got != dstNode || s["OS-EXT-SRV-ATTR:host"] == srcHost {
		t.Errorf("cold-migrated to %v on %s, want the other agent's %s", s["OS-EXT-SRV-ATTR:host"], got, dstNode)
	}
	e.checkVM(t, s, 1, 64, vcenter.PowerStateOn)
	mig = e.migration(t, id)
	e.checkAllocation(t, "cold-migrated between agents (migration)", fmt.Sprint(mig["uuid"]), srcNode, 64)
	e.checkEvents(t, id, "migrate", "compute_prep_resize", "compute_resize_instance", "compute_finish_resize")
	e.action(t, id, map[string]any{"confirmResize": nil})
	s = waitServer(t, e.ctrl, id, 60*time.Second, settled("ACTIVE"))
	e.waitMigration(t, id, "confirmed")
	t.Logf("cold migration between agents and confirm: %s", time.Since(step).Round(time.Millisecond))
	e.checkVM(t, s, 1, 64, vcenter.PowerStateOn)
	e.checkAllocation(t, "cold migration between agents confirmed", id, dstNode, 64)
	e.checkAllocation(t, "cold migration between agents confirmed (migration)", fmt.Sprint(mig["uuid"]), "", 0)

	if _, err := e.ctrl.NovaDELETE(context.Background(), "/servers/"+id); err != nil {
		t.Fatal(err)
	}
	waitGone(t, e.ctrl, id)
	if _, err := e.vc.FindVMByInstanceUUID(context.Background(), id); err == nil {
		t.Errorf("VM of deleted server %s still in vCenter", id)
	}
	t.Logf("total: %s", time.Since(start).Round(time.Millisecond))
}

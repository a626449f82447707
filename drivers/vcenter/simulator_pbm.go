package vcenter

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/vmware/govmomi/pbm"
	pbmmethods "github.com/vmware/govmomi/pbm/methods"
	pbmtypes "github.com/vmware/govmomi/pbm/types"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// StorageTagNamespace is the capability namespace of tag-based storage
// policy rules (a rule's capability id is the tag category, its value the
// tags a compliant datastore carries), as vSphere writes them.
const StorageTagNamespace = "http://www.vmware.com/storage/tag"

// simPBM serves vCenter's storage policy service (the /pbm endpoint) in
// the embedded simulator; govmomi's simulator serves none unless its PBM
// package is built in, and that one has no compliance (no
// PbmQueryMatchingHub, every datastore compatible) and forgets which
// profile a VM has. It holds storage profiles (none at start; PbmCreate
// adds them, PbmDelete removes them) and answers:
//
//   - compliance: a datastore is compliant with a profile when one of the
//     profile's rule sets is satisfied by it. A tag-based rule
//     (StorageTagNamespace, capability id the tag category) is satisfied
//     by a datastore whose custom attribute named like the category holds
//     one of the rule's tags: the simulator serves no vSphere tagging
//     (the vAPI endpoint), so custom attributes stand in for tags. A vSAN
//     rule (namespace VSAN) needs a vsan datastore; rules of other
//     namespaces are not evaluated. A profile without rules is satisfied
//     by every datastore.
//   - association: the vmProfile given to CreateVM_Task, ReconfigVM_Task,
//     CloneVM_Task and RelocateVM_Task is remembered per VM (by instance
//     UUID) and answered by PbmQueryAssociatedProfile.
//
// It is an extension of the embedded simulator only; a real vCenter
// answers itself.
type simPBM struct {
	mu sync.Mutex
	// profiles are the storage profiles, in creation order.
	list []*pbmtypes.PbmCapabilityProfile
	// vmProfiles maps a VM's instance UUID to its storage profile id.
	vmProfiles map[string]string
}

// pbmServiceContent is the PBM service instance's content.
func pbmServiceContent() pbmtypes.PbmServiceInstanceContent {
	return pbmtypes.PbmServiceInstanceContent{
		AboutInfo:       pbmtypes.PbmAboutInfo{Name: "PBM", Version: "2.0", InstanceUuid: "6b7b4a4c-0f3e-4d6b-9a55-3c2a1f0e9d11"},
		SessionManager:  types.ManagedObjectReference{Type: "PbmSessionManager", Value: "SessionManager"},
		ProfileManager:  types.ManagedObjectReference{Type: "PbmProfileProfileManager", Value: "ProfileManager"},
		PlacementSolver: types.ManagedObjectReference{Type: "PbmPlacementSolver", Value: "placementSolver"},
	}
}

// installPBMExtension registers the storage policy endpoint on the
// model's service, and hooks the VM methods whose vmProfile it remembers
// after the registry's existing Handler (DVS, MKS) had its say.
func installPBMExtension(m *simulator.Model) {
	x := &simPBM{vmProfiles: map[string]string{}}
	reg := simulator.NewRegistry()
	reg.Namespace = pbm.Namespace
	reg.Path = pbm.Path
	reg.Cookie = simulator.SOAPCookie
	reg.Put(&simPBMServiceInstance{ManagedObjectReference: pbm.ServiceInstance})
	reg.Put(&simProfileManager{ManagedObjectReference: pbmServiceContent().ProfileManager, x: x})
	reg.Put(&simPlacementSolver{ManagedObjectReference: pbmServiceContent().PlacementSolver, x: x})
	m.Service.RegisterSDK(reg)

	vim := m.Map()
	next := vim.Handler
	vim.Handler = func(ctx *simulator.Context, method *simulator.Method) (mo.Reference, types.BaseMethodFault) {
		x.observe(ctx, method)
		if next != nil {
			return next(ctx, method)
		}
		return nil, nil
	}
}

// simPBMServiceInstance is the PBM service instance.
type simPBMServiceInstance struct {
	types.ManagedObjectReference
}

// PbmRetrieveServiceContent answers the service's content.
func (s *simPBMServiceInstance) PbmRetrieveServiceContent(*pbmtypes.PbmRetrieveServiceContent) soap.HasFault {
	return &pbmmethods.PbmRetrieveServiceContentBody{Res: &pbmtypes.PbmRetrieveServiceContentResponse{Returnval: pbmServiceContent()}}
}

// profile returns the profile of id, or nil.
func (x *simPBM) profile(id string) *pbmtypes.PbmCapabilityProfile {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, p := range x.list {
		if p.ProfileId.UniqueId == id {
			return p
		}
	}
	return nil
}

// observe remembers the vmProfile of the VM methods that set one.
func (x *simPBM) observe(ctx *simulator.Context, method *simulator.Method) {
	var specs []types.BaseVirtualMachineProfileSpec
	uuid := ""
	switch req := method.Body.(type) {
	case *types.CreateVM_Task:
		specs, uuid = req.Config.VmProfile, req.Config.InstanceUuid
	case *types.ReconfigVM_Task:
		specs, uuid = req.Spec.VmProfile, x.instanceUUID(ctx, req.This)
	case *types.RelocateVM_Task:
		specs, uuid = req.Spec.Profile, x.instanceUUID(ctx, req.This)
	case *types.CloneVM_Task:
		if req.Spec.Config != nil {
			specs, uuid = req.Spec.Config.VmProfile, req.Spec.Config.InstanceUuid
		}
		if len(specs) == 0 {
			specs = req.Spec.Location.Profile
		}
	default:
		return
	}
	if len(specs) == 0 || uuid == "" {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	switch s := specs[0].(type) {
	case *types.VirtualMachineDefinedProfileSpec:
		x.vmProfiles[uuid] = s.ProfileId
	case *types.VirtualMachineEmptyProfileSpec:
		delete(x.vmProfiles, uuid)
	}
}

func (x *simPBM) instanceUUID(ctx *simulator.Context, ref types.ManagedObjectReference) string {
	vm, ok := ctx.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return ""
	}
	uuid := ""
	ctx.WithLock(vm, func() {
		if vm.Config != nil {
			uuid = vm.Config.InstanceUuid
		}
	})
	return uuid
}

// simProfileManager is the PBM profile manager.
type simProfileManager struct {
	types.ManagedObjectReference
	x *simPBM
}

// PbmQueryProfile lists the profiles of a resource type (and category).
func (m *simProfileManager) PbmQueryProfile(req *pbmtypes.PbmQueryProfile) soap.HasFault {
	body := &pbmmethods.PbmQueryProfileBody{Res: &pbmtypes.PbmQueryProfileResponse{}}
	m.x.mu.Lock()
	defer m.x.mu.Unlock()
	for _, p := range m.x.list {
		if p.ResourceType == req.ResourceType && (req.ProfileCategory == "" || req.ProfileCategory == p.ProfileCategory) {
			body.Res.Returnval = append(body.Res.Returnval, p.ProfileId)
		}
	}
	return body
}

// PbmRetrieveContent returns profiles by id; an unknown id is a fault.
func (m *simProfileManager) PbmRetrieveContent(req *pbmtypes.PbmRetrieveContent) soap.HasFault {
	body := &pbmmethods.PbmRetrieveContentBody{}
	if len(req.ProfileIds) == 0 {
		body.Fault_ = simulator.Fault("", &types.InvalidRequest{})
		return body
	}
	res := &pbmtypes.PbmRetrieveContentResponse{}
	for _, id := range req.ProfileIds {
		p := m.x.profile(id.UniqueId)
		if p == nil {
			body.Fault_ = simulator.Fault("", &types.InvalidArgument{InvalidProperty: "profileId"})
			return body
		}
		res.Returnval = append(res.Returnval, p)
	}
	body.Res = res
	return body
}

// PbmCreate adds a capability profile.
func (m *simProfileManager) PbmCreate(ctx *simulator.Context, req *pbmtypes.PbmCreate) soap.HasFault {
	body := &pbmmethods.PbmCreateBody{}
	now := time.Now()
	user := ""
	if ctx.Session != nil {
		user = ctx.Session.UserName
	}
	p := &pbmtypes.PbmCapabilityProfile{
		PbmProfile: pbmtypes.PbmProfile{
			ProfileId: pbmtypes.PbmProfileId{UniqueId: randomUUID()}, Name: req.CreateSpec.Name, Description: req.CreateSpec.Description,
			CreationTime: now, CreatedBy: user, LastUpdatedTime: now, LastUpdatedBy: user,
		},
		ProfileCategory: req.CreateSpec.Category, ResourceType: req.CreateSpec.ResourceType, Constraints: req.CreateSpec.Constraints,
	}
	if p.ProfileCategory == "" {
		p.ProfileCategory = string(pbmtypes.PbmProfileCategoryEnumREQUIREMENT)
	}
	m.x.mu.Lock()
	for _, o := range m.x.list {
		if o.Name == p.Name {
			m.x.mu.Unlock()
			body.Fault_ = simulator.Fault("", &types.DuplicateName{Name: p.Name})
			return body
		}
	}
	m.x.list = append(m.x.list, p)
	m.x.mu.Unlock()
	body.Res = &pbmtypes.PbmCreateResponse{Returnval: p.ProfileId}
	return body
}

// PbmDelete removes profiles.
func (m *simProfileManager) PbmDelete(req *pbmtypes.PbmDelete) soap.HasFault {
	m.x.mu.Lock()
	defer m.x.mu.Unlock()
	m.x.list = slices.DeleteFunc(m.x.list, func(p *pbmtypes.PbmCapabilityProfile) bool {
		return slices.Contains(req.ProfileId, p.ProfileId)
	})
	return &pbmmethods.PbmDeleteBody{Res: &pbmtypes.PbmDeleteResponse{}}
}

// PbmQueryAssociatedProfile answers the profile a VM was given.
func (m *simProfileManager) PbmQueryAssociatedProfile(ctx *simulator.Context, req *pbmtypes.PbmQueryAssociatedProfile) soap.HasFault {
	body := &pbmmethods.PbmQueryAssociatedProfileBody{Res: &pbmtypes.PbmQueryAssociatedProfileResponse{}}
	if req.Entity.ObjectType != string(pbmtypes.PbmObjectTypeVirtualMachine) {
		return body
	}
	uuid := m.x.instanceUUID(ctx.For(vim25.Path), types.ManagedObjectReference{Type: "VirtualMachine", Value: req.Entity.Key})
	m.x.mu.Lock()
	id, ok := m.x.vmProfiles[uuid]
	m.x.mu.Unlock()
	if ok && uuid != "" {
		body.Res.Returnval = []pbmtypes.PbmProfileId{{UniqueId: id}}
	}
	return body
}

// simPlacementSolver answers PbmQueryMatchingHub with the compliance
// rules of simPBM.
type simPlacementSolver struct {
	types.ManagedObjectReference
	x *simPBM
}

// PbmQueryMatchingHub returns the hubs (all datastores when none are
// given) compliant with the profile; an unknown profile is a fault, as
// vCenter answers it.
func (s *simPlacementSolver) PbmQueryMatchingHub(ctx *simulator.Context, req *pbmtypes.PbmQueryMatchingHub) soap.HasFault {
	body := &pbmmethods.PbmQueryMatchingHubBody{}
	profile := s.x.profile(req.Profile.UniqueId)
	if profile == nil {
		body.Fault_ = simulator.Fault(fmt.Sprintf("profile %s not found", req.Profile.UniqueId), &types.InvalidArgument{InvalidProperty: "profile"})
		return body
	}
	vctx := ctx.For(vim25.Path)
	var hubs []pbmtypes.PbmPlacementHub
	if len(req.HubsToSearch) == 0 {
		for _, e := range vctx.Map.All("Datastore") {
			hubs = append(hubs, pbmtypes.PbmPlacementHub{HubType: "Datastore", HubId: e.Reference().Value})
		}
	} else {
		hubs = req.HubsToSearch
	}
	fields := map[int32]string{}
	if cfm := vctx.Map.CustomFieldsManager(); cfm != nil {
		vctx.WithLock(cfm, func() {
			for _, f := range cfm.Field {
				fields[f.Key] = f.Name
			}
		})
	}
	body.Res = &pbmtypes.PbmQueryMatchingHubResponse{}
	for _, h := range hubs {
		if h.HubType != "Datastore" {
			continue
		}
		ds, ok := vctx.Map.Get(types.ManagedObjectReference{Type: "Datastore", Value: h.HubId}).(*simulator.Datastore)
		if !ok {
			continue
		}
		attrs := map[string]string{}
		dsType := ""
		vctx.WithLock(ds, func() {
			for _, v := range ds.CustomValue {
				if sv, ok := v.(*types.CustomFieldStringValue); ok {
					attrs[fields[sv.Key]] = sv.Value
				}
			}
			dsType = ds.Summary.Type
		})
		if profileSatisfied(profile, attrs, dsType) {
			body.Res.Returnval = append(body.Res.Returnval, h)
		}
	}
	return body
}

// profileSatisfied applies the compliance rules of simPBM to a datastore
// with custom attributes attrs and summary type dsType.
func profileSatisfied(p *pbmtypes.PbmCapabilityProfile, attrs map[string]string, dsType string) bool {
	sub, ok := p.Constraints.(*pbmtypes.PbmCapabilitySubProfileConstraints)
	if !ok || len(sub.SubProfiles) == 0 {
		return true
	}
	for _, set := range sub.SubProfiles {
		all := true
		for _, c := range set.Capability {
			if !ruleSatisfied(c, attrs, dsType) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

func ruleSatisfied(c pbmtypes.PbmCapabilityInstance, attrs map[string]string, dsType string) bool {
	switch c.Id.Namespace {
	case StorageTagNamespace:
		have, ok := attrs[c.Id.Id]
		if !ok {
			return false
		}
		for _, ci := range c.Constraint {
			for _, pi := range ci.PropertyInstance {
				if slices.Contains(tagValues(pi.Value), have) {
					return true
				}
			}
		}
		return false
	case "VSAN":
		return dsType == "vsan"
	}
	return true
}

// tagValues is a tag rule's value: one tag or a discrete set of them.
func tagValues(v any) []string {
	switch t := v.(type) {
	case string:
		return []string{t}
	case pbmtypes.PbmCapabilityDiscreteSet:
		return tagValues(&t)
	case *pbmtypes.PbmCapabilityDiscreteSet:
		var out []string
		for _, x := range t.Values {
			if s, ok := x.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

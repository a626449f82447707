package vcenter

import (
	"context"
	"fmt"
	"sync"

	"github.com/vmware/govmomi/pbm"
	pbmmethods "github.com/vmware/govmomi/pbm/methods"
	pbmtypes "github.com/vmware/govmomi/pbm/types"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

// StoragePolicies is vCenter's storage policy service (SPBM, the "pbm"
// endpoint) on a session, as oslo.vmware's pbm module uses it for cinder's
// VMDK driver: storage profiles looked up by name, and the datastores
// compliant with a profile. Its client is made at first use, so a backend
// that never uses a profile never talks to SPBM.
type StoragePolicies struct {
	s *Session

	mu     sync.Mutex
	vim    *vim25.Client // the session client the pbm client was made from
	client *pbm.Client
}

// NewStoragePolicies returns the storage policy service of s.
func NewStoragePolicies(s *Session) *StoragePolicies { return &StoragePolicies{s: s} }

// StorageProfile is a storage profile (policy) as PbmRetrieveContent
// returns it.
type StorageProfile struct {
	// ID is the profile's unique id (the connection info's profile_id).
	ID   string
	Name string
}

// pbmClient returns the SPBM client of the session's current vim25
// client, made again after the session made a new one (a re-login).
func (p *StoragePolicies) pbmClient(ctx context.Context) (*pbm.Client, error) {
	c := p.s.activeClient()
	if c == nil {
		return nil, ErrNotLoggedIn
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.client != nil && p.vim == c {
		return p.client, nil
	}
	pc, err := pbm.NewClient(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("connect to the storage policy service: %w", err)
	}
	p.vim, p.client = c, pc
	return pc, nil
}

// Profiles returns vCenter's storage profiles (resource type STORAGE, every
// category), as oslo.vmware's get_all_profiles.
//
// Cost: 2 SPBM round trips (1 without profiles), +1 the first time.
func (p *StoragePolicies) Profiles(ctx context.Context) ([]StorageProfile, error) {
	op := "list storage profiles"
	c, err := p.pbmClient(ctx)
	if err != nil {
		return nil, wrapErr(op, err)
	}
	ids, err := c.QueryProfile(ctx, pbmtypes.PbmProfileResourceType{ResourceType: string(pbmtypes.PbmProfileResourceTypeEnumSTORAGE)}, "")
	if err != nil {
		return nil, wrapErr(op, err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	list, err := c.RetrieveContent(ctx, ids)
	if err != nil {
		return nil, wrapErr(op, err)
	}
	out := make([]StorageProfile, 0, len(list))
	for _, b := range list {
		pr := b.GetPbmProfile()
		out = append(out, StorageProfile{ID: pr.ProfileId.UniqueId, Name: pr.Name})
	}
	return out, nil
}

// ProfileID returns the id of the storage profile named name (the first
// of that name, as oslo.vmware's get_profile_id_by_name), or an error
// wrapping ErrNotFound.
//
// Cost: as Profiles.
func (p *StoragePolicies) ProfileID(ctx context.Context, name string) (string, error) {
	list, err := p.Profiles(ctx)
	if err != nil {
		return "", err
	}
	for _, pr := range list {
		if pr.Name == name {
			return pr.ID, nil
		}
	}
	return "", wrapErr(fmt.Sprintf("storage profile %q", name), ErrNotFound)
}

// CompliantDatastores returns those of datastores (every datastore of
// vCenter when empty) that are compliant with the profile, as
// oslo.vmware's filter_hubs_by_profile (PbmQueryMatchingHub); hubs that
// are not datastores (datastore clusters) are left out.
//
// Cost: 1 SPBM round trip, +1 the first time.
func (p *StoragePolicies) CompliantDatastores(ctx context.Context, profileID string, datastores []Ref) ([]Ref, error) {
	op := "datastores compliant with storage profile " + profileID
	c, err := p.pbmClient(ctx)
	if err != nil {
		return nil, wrapErr(op, err)
	}
	req := pbmtypes.PbmQueryMatchingHub{This: c.ServiceContent.PlacementSolver, Profile: pbmtypes.PbmProfileId{UniqueId: profileID}}
	for _, ds := range datastores {
		req.HubsToSearch = append(req.HubsToSearch, pbmtypes.PbmPlacementHub{HubType: "Datastore", HubId: ds.Value})
	}
	res, err := pbmmethods.PbmQueryMatchingHub(ctx, c, &req)
	if err != nil {
		return nil, wrapErr(op, err)
	}
	var out []Ref
	for _, h := range res.Returnval {
		if h.HubType == "Datastore" {
			out = append(out, Ref{Type: "Datastore", Value: h.HubId})
		}
	}
	return out, nil
}

// vmProfileSpec is the backing's vmProfile for a storage profile id, as
// the driver's create specs carry it; an empty id removes the backing's
// profile (change_backing_profile with no profile).
func vmProfileSpec(profileID string) []types.BaseVirtualMachineProfileSpec {
	if profileID == "" {
		return []types.BaseVirtualMachineProfileSpec{&types.VirtualMachineEmptyProfileSpec{}}
	}
	return []types.BaseVirtualMachineProfileSpec{&types.VirtualMachineDefinedProfileSpec{ProfileId: profileID}}
}

// SetBackingProfile associates a backing with a storage profile (none
// when profileID is empty), as the driver's change_backing_profile does
// after a retype.
//
// Cost: 2 SOAP round trips.
func (s *Session) SetBackingProfile(ctx context.Context, ref Ref, profileID string) error {
	op := fmt.Sprintf("set the storage profile of backing %s to %q", ref.Value, profileID)
	spec := types.VirtualMachineConfigSpec{VmProfile: vmProfileSpec(profileID)}
	if err := s.reconfigure(ctx, op, ref, spec); err != nil {
		return wrapVMErr(op, err)
	}
	s.logFor(ctx).Info().Str("vm", ref.Value).Str("profile_id", profileID).Msg("changed the storage profile of the volume backing")
	return nil
}

// BackingProfile returns the id of the storage profile associated with a
// VM ("" when none), as SPBM's PbmQueryAssociatedProfile answers it.
//
// Cost: 1 SPBM round trip, +1 the first time.
func (p *StoragePolicies) BackingProfile(ctx context.Context, vm Ref) (string, error) {
	op := "storage profile of " + vm.Value
	c, err := p.pbmClient(ctx)
	if err != nil {
		return "", wrapErr(op, err)
	}
	ids, err := c.QueryAssociatedProfile(ctx, pbmtypes.PbmServerObjectRef{ObjectType: string(pbmtypes.PbmObjectTypeVirtualMachine), Key: vm.Value})
	if err != nil {
		return "", wrapErr(op, err)
	}
	if len(ids) == 0 {
		return "", nil
	}
	return ids[0].UniqueId, nil
}

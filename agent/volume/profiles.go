package volume

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/vcagent/vcagent/drivers/vcenter"
	"github.com/vcagent/vcagent/rpc"
)

// StoragePolicyService is what the VMDK driver uses of vCenter's storage
// policy service (*vcenter.StoragePolicies implements it).
type StoragePolicyService interface {
	ProfileID(ctx context.Context, name string) (string, error)
	CompliantDatastores(ctx context.Context, profileID string, datastores []vcenter.Ref) ([]vcenter.Ref, error)
}

// complianceTTL bounds how old a cached compliance answer may be for the
// capacity reports; placement always asks SPBM again.
const complianceTTL = 5 * time.Minute

// storagePolicies is the driver's storage profile support
// (DatastoreSelector's profile id cache and PBM compliance queries). The
// driver enables PBM for every vCenter from 5.5 on; here SPBM is only
// reached when a profile is used (a volume type's vmware:storage_profile
// or the backend's vmware_storage_profile), so a backend without profiles
// makes no SPBM call.
type storagePolicies struct {
	svc StoragePolicyService

	mu        sync.Mutex
	ids       map[string]string // name -> profile id, kept as the driver does
	compliant map[string]complianceAnswer
}

type complianceAnswer struct {
	datastores map[vcenter.Ref]bool
	at         time.Time
}

func newStoragePolicies(svc StoragePolicyService) *storagePolicies {
	return &storagePolicies{svc: svc, ids: map[string]string{}, compliant: map[string]complianceAnswer{}}
}

// profileNotFound is the driver's ProfileNotFoundException.
func profileNotFound(name string) *rpc.RemoteError {
	return &rpc.RemoteError{Class: "ProfileNotFoundException", Module: "cinder.volume.drivers.vmware.exceptions",
		Message: fmt.Sprintf("Storage profile: %s not found.", name), Kwargs: map[string]any{"storage_profile": name}}
}

// id is DatastoreSelector.get_profile_id: the profile's id (cached once
// found), or ProfileNotFoundException.
func (p *storagePolicies) id(ctx context.Context, name string) (string, error) {
	if p == nil || p.svc == nil {
		return "", fmt.Errorf("storage profile %q: vCenter's storage policy service is not available", name)
	}
	p.mu.Lock()
	id, ok := p.ids[name]
	p.mu.Unlock()
	if ok {
		return id, nil
	}
	id, err := p.svc.ProfileID(ctx, name)
	if errors.Is(err, vcenter.ErrNotFound) {
		return "", profileNotFound(name)
	}
	if err != nil {
		return "", err
	}
	p.mu.Lock()
	p.ids[name] = id
	p.mu.Unlock()
	return id, nil
}

// datastores returns the datastores compliant with the profile id: the
// cached answer when fresh is false and it is younger than complianceTTL,
// else SPBM's (PbmQueryMatchingHub over every datastore), which is cached.
func (p *storagePolicies) datastores(ctx context.Context, profileID string, fresh bool) (map[vcenter.Ref]bool, error) {
	p.mu.Lock()
	a, ok := p.compliant[profileID]
	p.mu.Unlock()
	if ok && !fresh && time.Since(a.at) < complianceTTL {
		return a.datastores, nil
	}
	list, err := p.svc.CompliantDatastores(ctx, profileID, nil)
	if err != nil {
		return nil, err
	}
	set := make(map[vcenter.Ref]bool, len(list))
	for _, ds := range list {
		set[ds] = true
	}
	p.mu.Lock()
	p.compliant[profileID] = complianceAnswer{datastores: set, at: time.Now()}
	p.mu.Unlock()
	return set, nil
}

// monitored is the driver's _get_datastore_summaries with
// vmware_storage_profile: the datastores compliant with any of the named
// profiles (cached answers), profiles that do not exist left out; nil
// when no profile is named (every datastore counts).
func (p *storagePolicies) monitored(ctx context.Context, names []string) (map[vcenter.Ref]bool, error) {
	if len(names) == 0 {
		return nil, nil
	}
	out := map[vcenter.Ref]bool{}
	for _, name := range names {
		id, err := p.id(ctx, name)
		var re *rpc.RemoteError
		if errors.As(err, &re) {
			continue // not a profile of this vCenter: ignored, as the driver does
		}
		if err != nil {
			return nil, err
		}
		set, err := p.datastores(ctx, id, false)
		if err != nil {
			return nil, err
		}
		for ds := range set {
			out[ds] = true
		}
	}
	return out, nil
}

// storageProfileOf is the volume type's vmware:storage_profile ("" when
// none or unreadable).
func (m *Manager) storageProfileOf(ctx context.Context, vol objectPrimitive) string {
	if m.drv == nil {
		return ""
	}
	spec, err := m.volumeSpecOf(ctx, vol)
	if err != nil {
		return ""
	}
	return spec.StorageProfile
}

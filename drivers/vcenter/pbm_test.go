package vcenter

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/pbm"
	pbmtypes "github.com/vmware/govmomi/pbm/types"
	"github.com/vmware/govmomi/vim25/types"
)

// createTagProfile creates a storage profile with one tag-based rule
// (category, tags) through SPBM, as an administrator would.
func createTagProfile(ctx context.Context, t *testing.T, s *Session, name, category string, tags ...string) string {
	t.Helper()
	c, err := pbm.NewClient(ctx, s.Client())
	if err != nil {
		t.Fatal(err)
	}
	values := make([]types.AnyType, len(tags))
	for i, tag := range tags {
		values[i] = tag
	}
	id, err := c.CreateProfile(ctx, pbmtypes.PbmCapabilityProfileCreateSpec{
		Name: name, Category: string(pbmtypes.PbmProfileCategoryEnumREQUIREMENT),
		ResourceType: pbmtypes.PbmProfileResourceType{ResourceType: string(pbmtypes.PbmProfileResourceTypeEnumSTORAGE)},
		Constraints: &pbmtypes.PbmCapabilitySubProfileConstraints{SubProfiles: []pbmtypes.PbmCapabilitySubProfile{{
			Name: "tags",
			Capability: []pbmtypes.PbmCapabilityInstance{{
				Id: pbmtypes.PbmCapabilityMetadataUniqueId{Namespace: StorageTagNamespace, Id: category},
				Constraint: []pbmtypes.PbmCapabilityConstraintInstance{{PropertyInstance: []pbmtypes.PbmCapabilityPropertyInstance{{
					Id: "com.vmware.storage.tag." + category + ".property", Value: pbmtypes.PbmCapabilityDiscreteSet{Values: values},
				}}}},
			}},
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return id.UniqueId
}

// tagDatastore gives a datastore the simulator's stand-in of a tag: the
// custom attribute category = tag.
func tagDatastore(ctx context.Context, t *testing.T, s *Session, ds Ref, category, tag string) {
	t.Helper()
	m, err := object.GetCustomFieldsManager(s.Client())
	if err != nil {
		t.Fatal(err)
	}
	key, err := m.FindKey(ctx, category)
	if err != nil {
		def, aerr := m.Add(ctx, category, "Datastore", nil, nil)
		if aerr != nil {
			t.Fatal(aerr)
		}
		key = def.Key
	}
	if err := m.Set(ctx, ds.Reference(), key, tag); err != nil {
		t.Fatal(err)
	}
}

// TestStoragePolicies: profiles are found by name, an unknown name is
// ErrNotFound, only the datastores carrying a profile's tag are compliant
// with it, and a backing created with a profile is associated with it
// until the profile is changed or removed.
func TestStoragePolicies(t *testing.T) {
	sim := startSim(t, SimulatorConfig{Clusters: 1, HostsPerCluster: 1, Datastores: 2})
	s := login(t, simConfig(sim))
	ctx := t.Context()
	clusters, err := s.Clusters(ctx)
	if err != nil || len(clusters) != 1 || len(clusters[0].Datastores) != 2 {
		t.Fatalf("Clusters: %v, %+v", err, clusters)
	}
	c := clusters[0]
	gold := createTagProfile(ctx, t, s, "gold", "tier", "gold", "platinum")
	silver := createTagProfile(ctx, t, s, "silver", "tier", "silver")
	tagDatastore(ctx, t, s, c.Datastores[1].Ref, "tier", "gold")

	p := NewStoragePolicies(s)
	if id, err := p.ProfileID(ctx, "gold"); err != nil || id != gold {
		t.Errorf("ProfileID(gold) = %q, %v; want %q", id, err, gold)
	}
	if _, err := p.ProfileID(ctx, "bronze"); !errors.Is(err, ErrNotFound) {
		t.Errorf("ProfileID(bronze): %v, want ErrNotFound", err)
	}
	for _, tc := range []struct {
		name    string
		profile string
		among   []Ref
		want    []Ref
	}{
		{"gold, all datastores", gold, nil, []Ref{c.Datastores[1].Ref}},
		{"gold, among the first", gold, []Ref{c.Datastores[0].Ref}, nil},
		{"gold, among both", gold, []Ref{c.Datastores[0].Ref, c.Datastores[1].Ref}, []Ref{c.Datastores[1].Ref}},
		{"silver", silver, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := p.CompliantDatastores(ctx, tc.profile, tc.among)
			if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("CompliantDatastores = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
	if _, err := p.CompliantDatastores(ctx, "no-such-profile", nil); err == nil {
		t.Error("CompliantDatastores of an unknown profile: no error")
	}

	const id = "0d1e2f3a-4b5c-4d6e-8f7a-8b9c0d1e2f3a"
	folder, err := s.EnsureFolderPath(ctx, c.Datacenter, "OpenStack", "Project (p1)", "Volumes")
	if err != nil {
		t.Fatal(err)
	}
	ref, err := s.CreateBacking(ctx, BackingSpec{Name: "volume-" + id, VolumeID: id, SizeGB: 1, Folder: folder,
		ResourcePool: c.ResourcePool, Datastore: c.Datastores[1].Name, ProfileID: gold})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := p.BackingProfile(ctx, ref); err != nil || got != gold {
		t.Errorf("profile of the new backing = %q, %v; want %q", got, err, gold)
	}
	if err := s.SetBackingProfile(ctx, ref, silver); err != nil {
		t.Fatal(err)
	}
	if got, err := p.BackingProfile(ctx, ref); err != nil || got != silver {
		t.Errorf("profile after the change = %q, %v; want %q", got, err, silver)
	}
	if err := s.SetBackingProfile(ctx, ref, ""); err != nil {
		t.Fatal(err)
	}
	if got, err := p.BackingProfile(ctx, ref); err != nil || got != "" {
		t.Errorf("profile after its removal = %q, %v; want none", got, err)
	}
}

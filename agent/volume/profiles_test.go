package volume

import (
	"context"
	"fmt"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/pbm"
	pbmtypes "github.com/vmware/govmomi/pbm/types"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/vcagent/vcagent/drivers/vcenter"
)

// createTagProfile creates a storage profile with one tag-based rule
// through SPBM, as an administrator would, and returns its id.
func createTagProfile(ctx context.Context, t *testing.T, s *vcenter.Session, name, category, tag string) string {
	t.Helper()
	c, err := pbm.NewClient(ctx, s.Client())
	if err != nil {
		t.Fatal(err)
	}
	id, err := c.CreateProfile(ctx, pbmtypes.PbmCapabilityProfileCreateSpec{
		Name: name, Category: string(pbmtypes.PbmProfileCategoryEnumREQUIREMENT),
		ResourceType: pbmtypes.PbmProfileResourceType{ResourceType: string(pbmtypes.PbmProfileResourceTypeEnumSTORAGE)},
		Constraints: &pbmtypes.PbmCapabilitySubProfileConstraints{SubProfiles: []pbmtypes.PbmCapabilitySubProfile{{
			Name: "tags",
			Capability: []pbmtypes.PbmCapabilityInstance{{
				Id: pbmtypes.PbmCapabilityMetadataUniqueId{Namespace: vcenter.StorageTagNamespace, Id: category},
				Constraint: []pbmtypes.PbmCapabilityConstraintInstance{{PropertyInstance: []pbmtypes.PbmCapabilityPropertyInstance{{
					Id: "com.vmware.storage.tag." + category + ".property", Value: pbmtypes.PbmCapabilityDiscreteSet{Values: []types.AnyType{tag}},
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
// custom attribute category = tag ("" removes it).
func tagDatastore(ctx context.Context, t *testing.T, s *vcenter.Session, ds vcenter.Ref, category, tag string) {
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

// fakePolicies is an SPBM that counts its calls.
type fakePolicies struct {
	ids       map[string]string
	compliant map[string][]vcenter.Ref
	idCalls   int
	dsCalls   int
}

func (f *fakePolicies) ProfileID(_ context.Context, name string) (string, error) {
	f.idCalls++
	if id, ok := f.ids[name]; ok {
		return id, nil
	}
	return "", fmt.Errorf("storage profile %q: %w", name, vcenter.ErrNotFound)
}

func (f *fakePolicies) CompliantDatastores(_ context.Context, id string, _ []vcenter.Ref) ([]vcenter.Ref, error) {
	f.dsCalls++
	return f.compliant[id], nil
}

// TestStoragePoliciesCache: profile ids are looked up once; the
// capacity reports' compliance answers come from the cache (one SPBM
// query per profile within complianceTTL), placement's are fresh and
// refresh the cache; a monitored profile vCenter lacks is left out, one
// a volume type names is ProfileNotFoundException.
func TestStoragePoliciesCache(t *testing.T) {
	ctx := t.Context()
	ds := func(v string) vcenter.Ref { return vcenter.Ref{Type: "Datastore", Value: v} }
	f := &fakePolicies{ids: map[string]string{"gold": "g", "silver": "s"},
		compliant: map[string][]vcenter.Ref{"g": {ds("datastore-1")}, "s": {ds("datastore-1"), ds("datastore-2")}}}
	p := newStoragePolicies(f)
	for range 3 {
		got, err := p.monitored(ctx, []string{"gold", "silver", "bronze"})
		if err != nil || len(got) != 2 || !got[ds("datastore-1")] || !got[ds("datastore-2")] {
			t.Fatalf("monitored = %v, %v", got, err)
		}
	}
	if f.dsCalls != 2 {
		t.Errorf("%d compliance queries for three reports of two profiles, want 2", f.dsCalls)
	}
	if f.idCalls != 2+3 {
		t.Errorf("%d profile id look-ups, want gold and silver once and bronze each time (5)", f.idCalls)
	}
	f.compliant["g"] = nil
	if got, err := p.datastores(ctx, "g", true); err != nil || len(got) != 0 {
		t.Errorf("fresh answer %v, %v; want none", got, err)
	}
	if got, err := p.monitored(ctx, []string{"gold"}); err != nil || len(got) != 0 {
		t.Errorf("monitored after a fresh answer = %v, %v; want none", got, err)
	}
	if _, err := p.id(ctx, "bronze"); err == nil || err.Error() != profileNotFound("bronze").Error() {
		t.Errorf("id(bronze): %v", err)
	}
	if got, err := p.monitored(ctx, nil); got != nil || err != nil {
		t.Errorf("monitored without profiles = %v, %v; want nil (every datastore)", got, err)
	}
}

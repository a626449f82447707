package cloud

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

const (
	testToken = "admin:admin"
	rpUUID    = "8d2b8ef4-4c3a-4d5e-9b0e-1a2b3c4d5e6f"
	otherUUID = "11111111-2222-3333-4444-555555555555"
	rpName    = "domain-c8.vcenter.example"
)

// newTestPlacement returns a Placement on f through a fixed-token session,
// the way the test control plane is reached.
func newTestPlacement(t *testing.T, f *fakePlacement, opts PlacementOptions) *Placement {
	t.Helper()
	s, err := NewSession(context.Background(), AuthConfig{Token: testToken, PlacementEndpoint: f.srv.URL}, zerolog.Nop())
	if err != nil {
		t.Fatalf("NewSession: %v", err)
	}
	return NewPlacement(s, opts)
}

func vmwareInv() map[string]Inventory {
	return VMwareInventory(
		ClusterStats{VCPUs: 48, MaxVCPUsPerHost: 16, MemoryMB: 3 * 65536, MaxMemoryMBPerHost: 65536},
		[]DatastoreSpace{{CapacityBytes: 500 * gib, FreeSpaceBytes: 200 * gib}, {CapacityBytes: 1000 * gib, FreeSpaceBytes: 700 * gib}},
		nil, DefaultResourceConfig())
}

func TestEnsureProvider(t *testing.T) {
	tests := []struct {
		name      string
		setup     func(f *fakePlacement)
		provName  string
		wantName  string
		wantGen   int64
		wantPosts int
		wantErr   func(t *testing.T, err error)
	}{
		{name: "creates a missing provider", provName: rpName, wantName: rpName, wantPosts: 1},
		{name: "empty name means the uuid", provName: "", wantName: rpUUID, wantPosts: 1},
		{
			name:     "returns an existing provider",
			setup:    func(f *fakePlacement) { f.addRP(rpUUID, rpName, 5) },
			provName: rpName, wantName: rpName, wantGen: 5,
		},
		{
			name:     "does not rename an existing provider",
			setup:    func(f *fakePlacement) { f.addRP(rpUUID, "old-name", 2) },
			provName: rpName, wantName: "old-name", wantGen: 2,
		},
		{
			name: "takes the provider a concurrent creator made",
			setup: func(f *fakePlacement) {
				f.beforeCreate = func() { f.addRP(rpUUID, rpName, 3) }
			},
			provName: rpName, wantName: rpName, wantGen: 3, wantPosts: 1,
		},
		{
			name:     "name taken by another uuid is ResourceProviderCreationFailed",
			setup:    func(f *fakePlacement) { f.addRP(otherUUID, rpName, 0) },
			provName: rpName, wantPosts: 1,
			wantErr: func(t *testing.T, err error) {
				var ce *ProviderCreationError
				if !errors.As(err, &ce) || !ce.NameConflict || ce.UUID != rpUUID || ce.Name != rpName {
					t.Fatalf("err = %v, want *ProviderCreationError with NameConflict", err)
				}
				var he *HTTPError
				// At microversion 1.20 placement sends no error code: nova,
				// and EnsureProvider, tell the name clash by its text.
				if !errors.As(err, &he) || he.Status != http.StatusConflict || he.Code != "" ||
					!strings.Contains(he.Message, "Conflicting resource provider name: "+rpName) {
					t.Fatalf("err = %v, want a 409 name conflict *HTTPError inside", err)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakePlacement(t, testToken)
			if tc.setup != nil {
				tc.setup(f)
			}
			p := newTestPlacement(t, f, PlacementOptions{})
			prov, err := p.EnsureProvider(context.Background(), rpUUID, tc.provName)
			if got := f.count(http.MethodPost, "/resource_providers"); got != tc.wantPosts {
				t.Errorf("POSTs = %d, want %d", got, tc.wantPosts)
			}
			if tc.wantErr != nil {
				tc.wantErr(t, err)
				return
			}
			if err != nil {
				t.Fatalf("EnsureProvider: %v", err)
			}
			want := Provider{UUID: rpUUID, Name: tc.wantName, Generation: tc.wantGen}
			if prov != want {
				t.Errorf("provider = %+v, want %+v", prov, want)
			}
			if got := f.rp(rpUUID); got.name != tc.wantName {
				t.Errorf("placement has name %q, want %q", got.name, tc.wantName)
			}
		})
	}
}

func TestSetInventory(t *testing.T) {
	inv := vmwareInv()
	withVCPUAllocation := func(f *fakePlacement) {
		rp := f.addRP(rpUUID, rpName, 1)
		rp.inv = vmwareInv()
		f.consumers["inst-1"] = &fakeConsumer{gen: 1, project: "p", user: "u",
			allocs: map[string]map[string]int64{rpUUID: {"VCPU": 2}}}
	}
	tests := []struct {
		name     string
		setup    func(f *fakePlacement)
		inv      map[string]Inventory
		wantPuts int
		wantErr  error
		wantInv  map[string]Inventory // placement's inventory afterwards; nil: inv
	}{
		{name: "first inventory of a new provider", inv: inv, wantPuts: 1},
		{
			name:  "unchanged inventory sends nothing",
			setup: func(f *fakePlacement) { f.addRP(rpUUID, rpName, 7).inv = vmwareInv() },
			inv:   inv,
		},
		{
			name: "allocation ratio rounded by placement counts as unchanged",
			setup: func(f *fakePlacement) {
				i := vmwareInv()
				v := i[ResourceVCPU]
				v.AllocationRatio = 1.1
				i[ResourceVCPU] = v
				f.addRP(rpUUID, rpName, 7).inv = i
			},
			inv: func() map[string]Inventory {
				i := vmwareInv()
				v := i[ResourceVCPU]
				v.AllocationRatio = 1.1
				i[ResourceVCPU] = v
				return i
			}(),
		},
		{
			name:     "stale generation is re-read and retried",
			setup:    func(f *fakePlacement) { f.racePuts = 1 },
			inv:      inv,
			wantPuts: 2,
		},
		{
			name:     "gives up after MaxAttempts conflicts",
			setup:    func(f *fakePlacement) { f.racePuts = 100 },
			inv:      inv,
			wantPuts: DefaultMaxAttempts,
			wantErr:  ErrGenerationConflict,
			wantInv:  map[string]Inventory{},
		},
		{
			name:     "removing inventory in use is not retried",
			setup:    withVCPUAllocation,
			inv:      map[string]Inventory{ResourceMemoryMB: inv[ResourceMemoryMB]},
			wantPuts: 1,
			wantErr:  ErrInventoryInUse,
			wantInv:  inv,
		},
		{
			name:     "empty inventory removes all",
			setup:    func(f *fakePlacement) { f.addRP(rpUUID, rpName, 3).inv = vmwareInv() },
			inv:      nil,
			wantPuts: 1,
			wantInv:  map[string]Inventory{},
		},
		{
			name: "custom resource class is created first",
			inv: map[string]Inventory{"CUSTOM_VMWARE_LICENSE": {
				Total: 4, MinUnit: 1, MaxUnit: 4, StepSize: 1, AllocationRatio: 1,
			}},
			wantPuts: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakePlacement(t, testToken)
			if tc.setup != nil {
				tc.setup(f)
			}
			p := newTestPlacement(t, f, PlacementOptions{})
			ctx := context.Background()
			if _, err := p.EnsureProvider(ctx, rpUUID, rpName); err != nil {
				t.Fatalf("EnsureProvider: %v", err)
			}
			err := p.SetInventory(ctx, rpUUID, tc.inv)
			if tc.wantErr == nil && err != nil {
				t.Fatalf("SetInventory: %v", err)
			}
			if tc.wantErr != nil {
				var he *HTTPError
				if !errors.Is(err, tc.wantErr) || !errors.As(err, &he) || he.Status != http.StatusConflict {
					t.Fatalf("SetInventory err = %v, want %v as a 409 *HTTPError", err, tc.wantErr)
				}
			}
			if got := f.count(http.MethodPut, "/inventories"); got != tc.wantPuts {
				t.Errorf("inventory PUTs = %d, want %d (requests %v)", got, tc.wantPuts, f.requests())
			}
			want := tc.wantInv
			if want == nil {
				want = tc.inv
			}
			if got := f.rp(rpUUID).inv; !inventoriesEqual(got, want) {
				t.Errorf("placement inventory = %v, want %v", got, want)
			}
			for rc := range tc.inv {
				if strings.HasPrefix(rc, "CUSTOM_") {
					reqs := f.requests()
					rcAt := slices.Index(reqs, "PUT /resource_classes/"+rc)
					invAt := slices.IndexFunc(reqs, func(r string) bool { return strings.HasSuffix(r, "/inventories") && strings.HasPrefix(r, "PUT") })
					if rcAt < 0 || rcAt > invAt {
						t.Errorf("resource class %s not created before the inventory PUT: %v", rc, reqs)
					}
				}
			}
		})
	}
}

func TestSetInventoryCache(t *testing.T) {
	ctx := context.Background()
	f := newFakePlacement(t, testToken)
	p := newTestPlacement(t, f, PlacementOptions{AssociationRefresh: time.Minute})
	clock := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	p.now = func() time.Time { return clock }

	if _, err := p.EnsureProvider(ctx, rpUUID, rpName); err != nil {
		t.Fatal(err)
	}
	inv := vmwareInv()
	if err := p.SetInventory(ctx, rpUUID, inv); err != nil {
		t.Fatal(err)
	}
	n := len(f.requests())
	// Same inventory again: answered from the cache, no request at all.
	if err := p.SetInventory(ctx, rpUUID, inv); err != nil {
		t.Fatal(err)
	}
	if got := len(f.requests()); got != n {
		t.Fatalf("unchanged SetInventory sent %v", f.requests()[n:])
	}

	// Someone else changes the inventory. Within the refresh interval the
	// cache is trusted, as in nova...
	f.bump(rpUUID, func(rp *fakeRP) { rp.inv = map[string]Inventory{} })
	if err := p.SetInventory(ctx, rpUUID, inv); err != nil {
		t.Fatal(err)
	}
	if got := f.count(http.MethodPut, "/inventories"); got != 1 {
		t.Fatalf("inventory PUTs = %d within the refresh interval, want 1", got)
	}
	// ...but once it is stale the inventory is read again and restored.
	clock = clock.Add(2 * time.Minute)
	if err := p.SetInventory(ctx, rpUUID, inv); err != nil {
		t.Fatal(err)
	}
	if got := f.count(http.MethodPut, "/inventories"); got != 2 {
		t.Fatalf("inventory PUTs = %d after the refresh interval, want 2", got)
	}
	if !inventoriesEqual(f.rp(rpUUID).inv, inv) {
		t.Fatalf("placement inventory = %v, want %v", f.rp(rpUUID).inv, inv)
	}

	// A changed generation seen by EnsureProvider drops the cache at once.
	f.bump(rpUUID, func(rp *fakeRP) { rp.inv = map[string]Inventory{} })
	if _, err := p.EnsureProvider(ctx, rpUUID, rpName); err != nil {
		t.Fatal(err)
	}
	if err := p.SetInventory(ctx, rpUUID, inv); err != nil {
		t.Fatal(err)
	}
	if got := f.count(http.MethodPut, "/inventories"); got != 3 {
		t.Fatalf("inventory PUTs = %d after a foreign generation, want 3", got)
	}
}

func TestSetTraits(t *testing.T) {
	tests := []struct {
		name        string
		setup       func(f *fakePlacement)
		traits      []string
		wantPuts    int
		wantCreated []string
		wantErr     func(t *testing.T, err error)
		wantTraits  []string // nil: traits
	}{
		{
			name:        "sets standard traits and creates custom ones",
			traits:      []string{"COMPUTE_NODE", "CUSTOM_VCAGENT", "COMPUTE_NODE"},
			wantPuts:    1,
			wantCreated: []string{"CUSTOM_VCAGENT"},
			wantTraits:  []string{"COMPUTE_NODE", "CUSTOM_VCAGENT"},
		},
		{
			name:   "unchanged traits send nothing",
			setup:  func(f *fakePlacement) { f.addRP(rpUUID, rpName, 4).traits = toSet([]string{"COMPUTE_NODE"}) },
			traits: []string{"COMPUTE_NODE"},
		},
		{
			name:     "stale generation is re-read and retried",
			setup:    func(f *fakePlacement) { f.racePuts = 2 },
			traits:   []string{"COMPUTE_NODE", "COMPUTE_STATUS_DISABLED"},
			wantPuts: 3,
		},
		{
			name:     "gives up after MaxAttempts conflicts",
			setup:    func(f *fakePlacement) { f.racePuts = 100 },
			traits:   []string{"COMPUTE_NODE"},
			wantPuts: DefaultMaxAttempts,
			wantErr: func(t *testing.T, err error) {
				var he *HTTPError
				if !errors.Is(err, ErrGenerationConflict) || !errors.As(err, &he) || he.Status != http.StatusConflict {
					t.Fatalf("err = %v, want ErrGenerationConflict and a 409 *HTTPError", err)
				}
			},
			wantTraits: []string{},
		},
		{
			name:     "empty set clears the traits",
			setup:    func(f *fakePlacement) { f.addRP(rpUUID, rpName, 4).traits = toSet([]string{"COMPUTE_NODE"}) },
			traits:   nil,
			wantPuts: 1, wantTraits: []string{},
		},
		{
			name:   "unknown standard trait cannot be created",
			traits: []string{"COMPUTE_NODE", "HW_NO_SUCH_THING"},
			wantErr: func(t *testing.T, err error) {
				var he *HTTPError
				if !errors.As(err, &he) || he.Status != http.StatusBadRequest || !strings.Contains(he.Message, "CUSTOM_") {
					t.Fatalf("err = %v, want a 400 *HTTPError", err)
				}
			},
			wantTraits: []string{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakePlacement(t, testToken)
			if tc.setup != nil {
				tc.setup(f)
			}
			p := newTestPlacement(t, f, PlacementOptions{})
			ctx := context.Background()
			if _, err := p.EnsureProvider(ctx, rpUUID, rpName); err != nil {
				t.Fatal(err)
			}
			err := p.SetTraits(ctx, rpUUID, tc.traits)
			if tc.wantErr != nil {
				tc.wantErr(t, err)
			} else if err != nil {
				t.Fatalf("SetTraits: %v", err)
			}
			if got := f.count(http.MethodPut, rpUUID+"/traits"); got != tc.wantPuts {
				t.Errorf("trait PUTs = %d, want %d (requests %v)", got, tc.wantPuts, f.requests())
			}
			for _, c := range tc.wantCreated {
				if f.count(http.MethodPut, "/traits/"+c) != 1 {
					t.Errorf("trait %s not created: %v", c, f.requests())
				}
			}
			want := tc.wantTraits
			if want == nil {
				want = tc.traits
			}
			if got := sortedKeys(f.rp(rpUUID).traits); !slices.Equal(got, want) {
				t.Errorf("placement traits = %v, want %v", got, want)
			}
			if tc.wantErr == nil {
				got, err := p.Traits(ctx, rpUUID)
				if err != nil || !slices.Equal(got, want) {
					t.Errorf("Traits = %v, %v; want %v", got, err, want)
				}
			}
		})
	}
}

// TestInventoryAndTraitsShareTheGeneration: an inventory write bumps the
// generation a later traits write must use, without a conflict round.
func TestInventoryAndTraitsShareTheGeneration(t *testing.T) {
	ctx := context.Background()
	f := newFakePlacement(t, testToken)
	p := newTestPlacement(t, f, PlacementOptions{})
	if _, err := p.EnsureProvider(ctx, rpUUID, rpName); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := p.SetInventory(ctx, rpUUID, vmwareInv()); err != nil {
			t.Fatal(err)
		}
		if err := p.SetTraits(ctx, rpUUID, []string{"COMPUTE_NODE"}); err != nil {
			t.Fatal(err)
		}
	}
	if inv, tr := f.count(http.MethodPut, "/inventories"), f.count(http.MethodPut, rpUUID+"/traits"); inv != 1 || tr != 1 {
		t.Fatalf("PUTs: inventory %d, traits %d; want 1 each (requests %v)", inv, tr, f.requests())
	}
	if got := f.rp(rpUUID).gen; got != 2 {
		t.Fatalf("generation = %d, want 2", got)
	}
}

func TestProviderReadsAndDelete(t *testing.T) {
	ctx := context.Background()
	f := newFakePlacement(t, testToken)
	p := newTestPlacement(t, f, PlacementOptions{})

	_, err := p.Provider(ctx, rpUUID)
	var he *HTTPError
	if !errors.Is(err, ErrNotFound) || !errors.As(err, &he) {
		t.Fatalf("Provider of a missing uuid: %v, want ErrNotFound", err)
	}
	if he.Status != 404 || he.Code != "" || he.RequestID != "req-fake" || he.Method != http.MethodGet {
		t.Errorf("HTTPError = %+v", he)
	}
	if _, err := p.Inventories(ctx, rpUUID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Inventories of a missing uuid: %v", err)
	}
	if err := p.SetInventory(ctx, rpUUID, vmwareInv()); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetInventory of a missing uuid: %v", err)
	}

	rp := f.addRP(rpUUID, rpName, 9)
	rp.inv = vmwareInv()
	rp.traits = toSet([]string{"COMPUTE_NODE"})
	prov, err := p.Provider(ctx, rpUUID)
	if err != nil || prov != (Provider{UUID: rpUUID, Name: rpName, Generation: 9}) {
		t.Fatalf("Provider = %+v, %v", prov, err)
	}
	inv, err := p.Inventories(ctx, rpUUID)
	if err != nil || !inventoriesEqual(inv, vmwareInv()) {
		t.Fatalf("Inventories = %v, %v", inv, err)
	}
	tr, err := p.Traits(ctx, rpUUID)
	if err != nil || !slices.Equal(tr, []string{"COMPUTE_NODE"}) {
		t.Fatalf("Traits = %v, %v", tr, err)
	}

	f.consumers["inst-1"] = &fakeConsumer{gen: 1, project: "p", user: "u",
		allocs: map[string]map[string]int64{rpUUID: {"VCPU": 1}}}
	if err := p.DeleteProvider(ctx, rpUUID); !errors.Is(err, ErrProviderInUse) {
		t.Fatalf("DeleteProvider with allocations: %v, want ErrProviderInUse", err)
	}
	delete(f.consumers, "inst-1")
	if err := p.DeleteProvider(ctx, rpUUID); err != nil {
		t.Fatalf("DeleteProvider: %v", err)
	}
	if f.rp(rpUUID).uuid != "" {
		t.Fatal("provider still in placement")
	}
	if err := p.DeleteProvider(ctx, rpUUID); err != nil {
		t.Fatalf("DeleteProvider of a missing provider: %v", err)
	}
}

func TestAllocations(t *testing.T) {
	ctx := context.Background()
	f := newFakePlacement(t, testToken)
	p := newTestPlacement(t, f, PlacementOptions{})
	f.addRP(rpUUID, rpName, 1)

	got, err := p.Allocations(ctx, "inst-none")
	if err != nil || len(got.Allocations) != 0 || got.ConsumerGeneration != nil {
		t.Fatalf("Allocations of an unknown consumer = %+v, %v", got, err)
	}
	deleted, err := p.DeleteAllocations(ctx, "inst-none")
	if err != nil || deleted {
		t.Fatalf("DeleteAllocations of an unknown consumer = %v, %v", deleted, err)
	}
	if n := f.count(http.MethodPut, "/allocations/inst-none"); n != 0 {
		t.Fatalf("PUT sent for a consumer without allocations")
	}

	f.consumers["inst-1"] = &fakeConsumer{gen: 3, project: "proj", user: "user",
		allocs: map[string]map[string]int64{rpUUID: {"VCPU": 2, "MEMORY_MB": 512}}}
	got, err = p.Allocations(ctx, "inst-1")
	if err != nil {
		t.Fatal(err)
	}
	if got.ProjectID != "proj" || got.UserID != "user" || got.ConsumerGeneration == nil || *got.ConsumerGeneration != 3 ||
		got.Allocations[rpUUID].Resources["MEMORY_MB"] != 512 || got.Allocations[rpUUID].Generation != 1 {
		t.Fatalf("Allocations = %+v", got)
	}
	deleted, err = p.DeleteAllocations(ctx, "inst-1")
	if err != nil || !deleted {
		t.Fatalf("DeleteAllocations = %v, %v", deleted, err)
	}
	if f.consumers["inst-1"] != nil {
		t.Fatal("allocations still in placement")
	}
}

func TestTokenHeader(t *testing.T) {
	ctx := context.Background()
	f := newFakePlacement(t, testToken)
	f.addRP(rpUUID, rpName, 0)
	tests := []struct {
		token      string
		wantStatus int
	}{
		{token: testToken},
		{token: "someone:else", wantStatus: http.StatusUnauthorized},
	}
	for _, tc := range tests {
		t.Run(tc.token, func(t *testing.T) {
			s, err := NewSession(ctx, AuthConfig{Token: tc.token, PlacementEndpoint: f.srv.URL + "/"}, zerolog.Nop())
			if err != nil {
				t.Fatal(err)
			}
			_, err = NewPlacement(s, PlacementOptions{}).Provider(ctx, rpUUID)
			if tc.wantStatus == 0 {
				if err != nil {
					t.Fatalf("Provider with token %q: %v", tc.token, err)
				}
				return
			}
			var he *HTTPError
			if !errors.As(err, &he) || he.Status != tc.wantStatus {
				t.Fatalf("Provider with token %q: %v, want HTTP %d", tc.token, err, tc.wantStatus)
			}
		})
	}
}

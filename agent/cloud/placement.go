package cloud

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/placement/v1/allocations"
	"github.com/gophercloud/gophercloud/v2/openstack/placement/v1/resourceclasses"
	"github.com/gophercloud/gophercloud/v2/openstack/placement/v1/resourceproviders"
	"github.com/gophercloud/gophercloud/v2/openstack/placement/v1/traits"
	"github.com/rs/zerolog"
)

// Placement microversions, per call, as nova Zed's report client
// (nova/scheduler/client/report.py) sends them. Nova pins no single version:
// each request names the oldest one with the behaviour it needs, and the
// calls nova sends unversioned go without the header (placement serves 1.0).
const (
	// MicroversionGetProvider is GET /resource_providers/{uuid}
	// (NESTED_PROVIDER_API_VERSION).
	MicroversionGetProvider = "1.14"
	// MicroversionCreateProvider is POST /resource_providers, which
	// returns the new provider from 1.20 (POST_RPS_RETURNS_PAYLOAD_API_VERSION).
	MicroversionCreateProvider = "1.20"
	// MicroversionSetInventory is PUT /resource_providers/{uuid}/inventories;
	// 1.26 allows reserved == total (ALLOW_RESERVED_EQUAL_TOTAL_INVENTORY_VERSION).
	MicroversionSetInventory = "1.26"
	// MicroversionTraits is every /traits and /resource_providers/{uuid}/traits call.
	MicroversionTraits = "1.6"
	// MicroversionResourceClass is PUT /resource_classes/CUSTOM_*.
	MicroversionResourceClass = "1.7"
	// MicroversionAllocations is GET and PUT /allocations/{consumer}
	// (CONSUMER_GENERATION_VERSION).
	MicroversionAllocations = "1.28"
	// MicroversionNone marks the calls nova sends without a microversion:
	// GET /resource_providers/{uuid}/inventories and DELETE
	// /resource_providers/{uuid}.
	MicroversionNone = ""
)

// nameConflict is the text by which nova tells a provider name clash from a
// concurrent creation of the same uuid in a 409 from POST /resource_providers.
const nameConflict = "Conflicting resource provider name:"

// Defaults of PlacementOptions.
const (
	// DefaultAssociationRefresh is [compute]
	// resource_provider_association_refresh (300 s): how long cached
	// inventory and traits are trusted before being read again.
	DefaultAssociationRefresh = 300 * time.Second
	// DefaultMaxAttempts bounds generation-conflict retries, as nova's
	// _update_to_placement (stop_max_attempt_number=4).
	DefaultMaxAttempts = 4
)

// PlacementOptions tunes a Placement client; zero values mean the defaults.
type PlacementOptions struct {
	// AssociationRefresh is how long cached inventory and traits of a
	// provider are compared against without reading placement again
	// (default DefaultAssociationRefresh). Negative: never re-read after
	// the first load (nova's resource_provider_association_refresh = 0).
	AssociationRefresh time.Duration
	// MaxAttempts bounds the PUTs of one SetInventory or SetTraits under
	// generation conflicts (default DefaultMaxAttempts).
	MaxAttempts int
}

// Provider is a placement resource provider.
type Provider struct {
	UUID       string
	Name       string
	Generation int64
}

// ProviderAllocation is a consumer's allocation against one provider.
type ProviderAllocation struct {
	// Generation is the provider's generation.
	Generation int64
	// Resources maps resource class to amount.
	Resources map[string]int64
}

// ConsumerAllocations is GET /allocations/{consumer} at microversion 1.28.
type ConsumerAllocations struct {
	// Allocations maps provider uuid to the allocation; empty when the
	// consumer has none (placement then knows no consumer).
	Allocations map[string]ProviderAllocation
	// ProjectID and UserID own the consumer; empty without allocations.
	ProjectID string
	UserID    string
	// ConsumerGeneration is nil without allocations.
	ConsumerGeneration *int64
}

// Placement is nova's scheduler report client for the calls the compute
// role makes: ensure the compute node provider, set its inventory and
// traits, read and delete allocations. Like nova it caches each provider's
// generation, inventory and traits, skips writes that would change nothing,
// and on a generation conflict re-reads and retries a bounded number of
// times. Safe for concurrent use; create one per agent process.
type Placement struct {
	base    *gophercloud.ServiceClient
	log     zerolog.Logger
	refresh time.Duration
	tries   int
	now     func() time.Time

	mu    sync.Mutex
	cache map[string]*providerState
}

// providerState is what the client believes placement holds for a provider.
type providerState struct {
	generation int64
	inv        map[string]Inventory // nil: unknown
	invAt      time.Time
	traits     map[string]bool // nil: unknown
	traitsAt   time.Time
}

// NewPlacement returns a placement client on the session's placement
// endpoint.
func NewPlacement(s *Session, opts PlacementOptions) *Placement {
	return newPlacement(s.PlacementClient(), s.log, opts)
}

func newPlacement(sc *gophercloud.ServiceClient, log zerolog.Logger, opts PlacementOptions) *Placement {
	p := &Placement{
		base:    sc,
		log:     log.With().Str("service", "placement").Logger(),
		refresh: opts.AssociationRefresh,
		tries:   opts.MaxAttempts,
		now:     time.Now,
		cache:   map[string]*providerState{},
	}
	if p.refresh == 0 {
		p.refresh = DefaultAssociationRefresh
	}
	if p.tries <= 0 {
		p.tries = DefaultMaxAttempts
	}
	return p
}

// at returns the service client that sends microversion v (none for "").
func (p *Placement) at(v string) *gophercloud.ServiceClient {
	c := *p.base
	c.Microversion = v
	return &c
}

// --- cache ---

func (p *Placement) state(uuid string) *providerState {
	st := p.cache[uuid]
	if st == nil {
		st = &providerState{}
		p.cache[uuid] = st
	}
	return st
}

// observe records a generation read from placement. A generation other than
// the cached one means someone else changed the provider, so the cached
// inventory and traits are dropped. Callers hold p.mu.
func (p *Placement) observe(st *providerState, gen int64) {
	if st.generation != gen {
		st.inv, st.traits = nil, nil
	}
	st.generation = gen
}

func (p *Placement) fresh(at time.Time) bool {
	return p.refresh < 0 || p.now().Sub(at) < p.refresh
}

// Invalidate forgets what the client cached about a provider, so the next
// call reads it from placement again.
func (p *Placement) Invalidate(uuid string) {
	p.mu.Lock()
	delete(p.cache, uuid)
	p.mu.Unlock()
}

func (p *Placement) cachedInventory(uuid string) (map[string]Inventory, int64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.cache[uuid]
	if st == nil || st.inv == nil || !p.fresh(st.invAt) {
		return nil, 0, false
	}
	return st.inv, st.generation, true
}

func (p *Placement) cachedTraits(uuid string) (map[string]bool, int64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.cache[uuid]
	if st == nil || st.traits == nil || !p.fresh(st.traitsAt) {
		return nil, 0, false
	}
	return st.traits, st.generation, true
}

// noteInventory caches inventory at generation gen; own marks the answer to
// our own write, which changed nothing else on the provider.
func (p *Placement) noteInventory(uuid string, gen int64, inv map[string]Inventory, own bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.state(uuid)
	if !own {
		p.observe(st, gen)
	}
	st.generation = gen
	st.inv, st.invAt = inv, p.now()
}

func (p *Placement) noteTraits(uuid string, gen int64, set map[string]bool, own bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.state(uuid)
	if !own {
		p.observe(st, gen)
	}
	st.generation = gen
	st.traits, st.traitsAt = set, p.now()
}

func (p *Placement) noteGeneration(uuid string, gen int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.observe(p.state(uuid), gen)
}

// --- providers ---

// Provider reads a resource provider (GET /resource_providers/{uuid},
// microversion 1.14). A missing provider is an *HTTPError matching
// ErrNotFound.
func (p *Placement) Provider(ctx context.Context, uuid string) (Provider, error) {
	rp, err := resourceproviders.Get(ctx, p.at(MicroversionGetProvider), uuid).Extract()
	if err != nil {
		return Provider{}, fmt.Errorf("placement: get resource provider %s: %w", uuid, httpError(err))
	}
	p.noteGeneration(rp.UUID, int64(rp.Generation))
	return Provider{UUID: rp.UUID, Name: rp.Name, Generation: int64(rp.Generation)}, nil
}

// EnsureProvider returns the provider with uuid, creating it with name if
// placement has none (nova's _ensure_resource_provider for a root provider;
// an empty name means the uuid). If the creation races with another creator
// of the same uuid, the provider that won is returned. If placement refuses
// the name because another provider (another uuid) has it, or the creation
// fails otherwise, the error is a *ProviderCreationError (nova's
// ResourceProviderCreationFailed). An existing provider is not renamed.
func (p *Placement) EnsureProvider(ctx context.Context, uuid, name string) (Provider, error) {
	if name == "" {
		name = uuid
	}
	prov, err := p.Provider(ctx, uuid)
	if err == nil {
		if prov.Name != name {
			p.log.Info().Str("provider", uuid).Str("name", prov.Name).Str("wanted_name", name).
				Msg("resource provider exists under another name; not renaming it")
		}
		return prov, nil
	}
	if !errors.Is(err, ErrNotFound) {
		return Provider{}, err
	}

	rp, err := resourceproviders.Create(ctx, p.at(MicroversionCreateProvider),
		resourceproviders.CreateOpts{UUID: uuid, Name: name}).Extract()
	if err == nil {
		p.mu.Lock()
		p.cache[uuid] = &providerState{
			generation: int64(rp.Generation),
			inv:        map[string]Inventory{}, invAt: p.now(),
			traits: map[string]bool{}, traitsAt: p.now(),
		}
		p.mu.Unlock()
		p.log.Info().Str("provider", uuid).Str("name", name).Msg("created resource provider")
		return Provider{UUID: rp.UUID, Name: rp.Name, Generation: int64(rp.Generation)}, nil
	}
	err = httpError(err)
	var he *HTTPError
	if errors.As(err, &he) && he.Status == 409 {
		if !strings.Contains(he.Message, nameConflict) {
			p.log.Info().Str("provider", uuid).Msg("resource provider created concurrently; reading it")
			return p.Provider(ctx, uuid)
		}
		return Provider{}, &ProviderCreationError{UUID: uuid, Name: name, NameConflict: true, Err: err}
	}
	return Provider{}, &ProviderCreationError{UUID: uuid, Name: name, Err: err}
}

// DeleteProvider deletes a resource provider (DELETE
// /resource_providers/{uuid}, unversioned like nova); a missing one is not
// an error. A provider with allocations or children gives an *HTTPError
// matching ErrProviderInUse.
func (p *Placement) DeleteProvider(ctx context.Context, uuid string) error {
	err := resourceproviders.Delete(ctx, p.at(MicroversionNone), uuid).ExtractErr()
	p.Invalidate(uuid)
	if err == nil {
		p.log.Info().Str("provider", uuid).Msg("deleted resource provider")
		return nil
	}
	err = httpError(err)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil
	case errors.Is(err, ErrConflict):
		// Unversioned, placement sends no error code; like nova, any 409
		// here means the provider is in use.
		return fmt.Errorf("placement: delete resource provider %s: %w: %w", uuid, ErrProviderInUse, err)
	}
	return fmt.Errorf("placement: delete resource provider %s: %w", uuid, err)
}

// --- inventory ---

// Inventories reads a provider's inventory (GET
// /resource_providers/{uuid}/inventories, unversioned like nova) and
// refreshes the cache with it.
func (p *Placement) Inventories(ctx context.Context, uuid string) (map[string]Inventory, error) {
	inv, _, err := p.readInventories(ctx, uuid)
	return maps.Clone(inv), err
}

func (p *Placement) readInventories(ctx context.Context, uuid string) (map[string]Inventory, int64, error) {
	r, err := resourceproviders.GetInventories(ctx, p.at(MicroversionNone), uuid).Extract()
	if err != nil {
		return nil, 0, fmt.Errorf("placement: get inventory of provider %s: %w", uuid, httpError(err))
	}
	inv := fromGCInventories(r.Inventories)
	gen := int64(r.ResourceProviderGeneration)
	p.noteInventory(uuid, gen, inv, false)
	return inv, gen, nil
}

// SetInventory makes inv the provider's whole inventory (nova's
// set_inventory_for_provider; an empty inv removes all). It compares with
// what placement holds first (the cache, re-read when older than
// AssociationRefresh) and sends nothing when they match. Otherwise it
// creates missing CUSTOM_* resource classes and PUTs
// /resource_providers/{uuid}/inventories (microversion 1.26) with the cached
// generation; on a 409 generation conflict it re-reads and retries, at most
// MaxAttempts PUTs. Removing inventory that has allocations fails at once
// with an *HTTPError matching ErrInventoryInUse.
func (p *Placement) SetInventory(ctx context.Context, uuid string, inv map[string]Inventory) error {
	want := maps.Clone(inv)
	if want == nil {
		want = map[string]Inventory{}
	}
	classesEnsured := false
	var lastErr error
	for attempt := 1; attempt <= p.tries; attempt++ {
		cur, gen, ok := p.cachedInventory(uuid)
		if !ok {
			var err error
			if cur, gen, err = p.readInventories(ctx, uuid); err != nil {
				p.Invalidate(uuid)
				return err
			}
		}
		if inventoriesEqual(cur, want) {
			p.log.Debug().Str("provider", uuid).Msg("inventory unchanged")
			return nil
		}
		if !classesEnsured {
			if err := p.ensureResourceClasses(ctx, slices.Collect(maps.Keys(want))); err != nil {
				return err
			}
			classesEnsured = true
		}
		r, err := resourceproviders.UpdateInventories(ctx, p.at(MicroversionSetInventory), uuid,
			resourceproviders.UpdateInventoriesOpts{
				ResourceProviderGeneration: int(gen),
				Inventories:                toGCInventories(want),
			}).Extract()
		if err == nil {
			p.noteInventory(uuid, int64(r.ResourceProviderGeneration), fromGCInventories(r.Inventories), true)
			p.log.Info().Str("provider", uuid).Int64("generation", gen).Interface("inventory", want).
				Msg("updated inventory")
			return nil
		}
		err = httpError(err)
		p.Invalidate(uuid)
		if !errors.Is(err, ErrConflict) || errors.Is(err, ErrInventoryInUse) {
			return fmt.Errorf("placement: set inventory of provider %s: %w", uuid, err)
		}
		lastErr = err
		p.log.Info().Err(err).Str("provider", uuid).Int("attempt", attempt).
			Msg("inventory update conflicted; re-reading the provider")
	}
	return fmt.Errorf("placement: set inventory of provider %s: %w after %d attempts: %w",
		uuid, ErrGenerationConflict, p.tries, lastErr)
}

// ensureResourceClasses creates the CUSTOM_* classes among names (PUT
// /resource_classes/{name}, microversion 1.7; an existing one answers 204),
// as nova's _ensure_resource_classes.
func (p *Placement) ensureResourceClasses(ctx context.Context, names []string) error {
	slices.Sort(names)
	for _, n := range names {
		if !strings.HasPrefix(n, "CUSTOM_") {
			continue
		}
		if err := resourceclasses.Update(ctx, p.at(MicroversionResourceClass), n).ExtractErr(); err != nil {
			return fmt.Errorf("placement: ensure resource class %s: %w", n, httpError(err))
		}
	}
	return nil
}

func toGCInventories(in map[string]Inventory) map[string]resourceproviders.Inventory {
	out := make(map[string]resourceproviders.Inventory, len(in))
	for rc, i := range in {
		out[rc] = resourceproviders.Inventory{
			Total:           int(i.Total),
			Reserved:        int(i.Reserved),
			MinUnit:         int(i.MinUnit),
			MaxUnit:         int(i.MaxUnit),
			StepSize:        int(i.StepSize),
			AllocationRatio: float32(i.AllocationRatio),
		}
	}
	return out
}

func fromGCInventories(in map[string]resourceproviders.Inventory) map[string]Inventory {
	out := make(map[string]Inventory, len(in))
	for rc, i := range in {
		out[rc] = Inventory{
			Total:           int64(i.Total),
			Reserved:        int64(i.Reserved),
			MinUnit:         int64(i.MinUnit),
			MaxUnit:         int64(i.MaxUnit),
			StepSize:        int64(i.StepSize),
			AllocationRatio: float64(i.AllocationRatio),
		}
	}
	return out
}

// --- traits ---

// Traits reads a provider's traits, sorted (GET
// /resource_providers/{uuid}/traits, microversion 1.6), and refreshes the
// cache with them.
func (p *Placement) Traits(ctx context.Context, uuid string) ([]string, error) {
	set, _, err := p.readTraits(ctx, uuid)
	if err != nil {
		return nil, err
	}
	return sortedKeys(set), nil
}

func (p *Placement) readTraits(ctx context.Context, uuid string) (map[string]bool, int64, error) {
	r, err := resourceproviders.GetTraits(ctx, p.at(MicroversionTraits), uuid).Extract()
	if err != nil {
		return nil, 0, fmt.Errorf("placement: get traits of provider %s: %w", uuid, httpError(err))
	}
	set := toSet(r.Traits)
	gen := int64(r.ResourceProviderGeneration)
	p.noteTraits(uuid, gen, set, false)
	return set, gen, nil
}

// SetTraits makes traits the provider's whole trait set (nova's
// set_traits_for_provider). Like SetInventory it sends nothing when placement
// already has that set, creates traits placement lacks (PUT /traits/{name};
// only CUSTOM_* can be created, an unknown standard trait is an error), then
// PUTs /resource_providers/{uuid}/traits (microversion 1.6) with the cached
// generation, retrying generation conflicts at most MaxAttempts times.
func (p *Placement) SetTraits(ctx context.Context, uuid string, traitNames []string) error {
	want := toSet(traitNames)
	ensured := false
	var lastErr error
	for attempt := 1; attempt <= p.tries; attempt++ {
		cur, gen, ok := p.cachedTraits(uuid)
		if !ok {
			var err error
			if cur, gen, err = p.readTraits(ctx, uuid); err != nil {
				p.Invalidate(uuid)
				return err
			}
		}
		if maps.Equal(cur, want) {
			p.log.Debug().Str("provider", uuid).Msg("traits unchanged")
			return nil
		}
		list := sortedKeys(want)
		if !ensured {
			if err := p.ensureTraits(ctx, list); err != nil {
				return err
			}
			ensured = true
		}
		r, err := resourceproviders.UpdateTraits(ctx, p.at(MicroversionTraits), uuid,
			resourceproviders.UpdateTraitsOpts{ResourceProviderGeneration: int(gen), Traits: list}).Extract()
		if err == nil {
			p.noteTraits(uuid, int64(r.ResourceProviderGeneration), toSet(r.Traits), true)
			p.log.Info().Str("provider", uuid).Int64("generation", gen).Strs("traits", list).Msg("updated traits")
			return nil
		}
		err = httpError(err)
		p.Invalidate(uuid)
		if !errors.Is(err, ErrConflict) {
			return fmt.Errorf("placement: set traits of provider %s: %w", uuid, err)
		}
		lastErr = err
		p.log.Info().Err(err).Str("provider", uuid).Int("attempt", attempt).
			Msg("traits update conflicted; re-reading the provider")
	}
	return fmt.Errorf("placement: set traits of provider %s: %w after %d attempts: %w",
		uuid, ErrGenerationConflict, p.tries, lastErr)
}

// ensureTraits creates the traits placement does not know yet, as nova's
// _ensure_traits: GET /traits?name=in:..., then PUT /traits/{name} for each
// missing one.
func (p *Placement) ensureTraits(ctx context.Context, names []string) error {
	if len(names) == 0 {
		return nil
	}
	sc := p.at(MicroversionTraits)
	pages, err := traits.List(sc, traits.ListOpts{Name: "in:" + strings.Join(names, ",")}).AllPages(ctx)
	if err != nil {
		return fmt.Errorf("placement: list traits: %w", httpError(err))
	}
	known, err := traits.ExtractTraits(pages)
	if err != nil {
		return fmt.Errorf("placement: list traits: %w", err)
	}
	have := toSet(known)
	for _, n := range names {
		if have[n] {
			continue
		}
		if err := traits.Create(ctx, sc, n).ExtractErr(); err != nil {
			return fmt.Errorf("placement: create trait %s: %w", n, httpError(err))
		}
		p.log.Info().Str("trait", n).Msg("created trait")
	}
	return nil
}

func toSet(names []string) map[string]bool {
	set := make(map[string]bool, len(names))
	for _, n := range names {
		set[n] = true
	}
	return set
}

// sortedKeys returns the set's members sorted, never nil (placement wants
// a JSON array, not null).
func sortedKeys(set map[string]bool) []string {
	out := slices.Sorted(maps.Keys(set))
	if out == nil {
		out = []string{}
	}
	return out
}

// --- allocations ---

// Allocations reads a consumer's allocations (GET /allocations/{consumer},
// microversion 1.28). A consumer placement does not know has none.
func (p *Placement) Allocations(ctx context.Context, consumerUUID string) (ConsumerAllocations, error) {
	a, err := allocations.Get(ctx, p.at(MicroversionAllocations), consumerUUID).Extract()
	if err != nil {
		return ConsumerAllocations{}, fmt.Errorf("placement: get allocations of consumer %s: %w",
			consumerUUID, httpError(err))
	}
	out := ConsumerAllocations{Allocations: make(map[string]ProviderAllocation, len(a.Allocations))}
	for rp, pa := range a.Allocations {
		res := make(map[string]int64, len(pa.Resources))
		for rc, n := range pa.Resources {
			res[rc] = int64(n)
		}
		out.Allocations[rp] = ProviderAllocation{Generation: int64(pa.Generation), Resources: res}
	}
	if a.ProjectID != nil {
		out.ProjectID = *a.ProjectID
	}
	if a.UserID != nil {
		out.UserID = *a.UserID
	}
	if a.ConsumerGeneration != nil {
		g := int64(*a.ConsumerGeneration)
		out.ConsumerGeneration = &g
	}
	return out, nil
}

// DeleteAllocations removes all of a consumer's allocations the way nova's
// delete_allocation_for_instance does by default: read them with the
// consumer generation, then PUT an empty set with that generation
// (microversion 1.28), so allocations changed in between are not lost
// silently (the PUT fails with a 409 *HTTPError). It reports whether there
// was anything to delete.
func (p *Placement) DeleteAllocations(ctx context.Context, consumerUUID string) (bool, error) {
	cur, err := p.Allocations(ctx, consumerUUID)
	if err != nil {
		return false, err
	}
	if len(cur.Allocations) == 0 {
		p.log.Debug().Str("consumer", consumerUUID).Msg("no allocations to delete")
		return false, nil
	}
	opts := allocations.UpdateOpts{
		Allocations: map[string]allocations.ProviderAllocationsOpts{},
		ProjectID:   cur.ProjectID,
		UserID:      cur.UserID,
	}
	if cur.ConsumerGeneration != nil {
		g := int(*cur.ConsumerGeneration)
		opts.ConsumerGeneration = &g
	}
	if err := allocations.Update(ctx, p.at(MicroversionAllocations), consumerUUID, opts).ExtractErr(); err != nil {
		return false, fmt.Errorf("placement: delete allocations of consumer %s: %w", consumerUUID, httpError(err))
	}
	p.log.Info().Str("consumer", consumerUUID).Msg("deleted allocations")
	return true, nil
}

package cloud

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// fakePlacement is an in-memory placement API that enforces what the real
// one does for the calls under test: the X-Auth-Token, the microversion
// each route is called with (as nova sends it), resource provider
// generations (409 placement.concurrent_update on a stale one), trait and
// resource class existence, consumer generations.
type fakePlacement struct {
	t     *testing.T
	srv   *httptest.Server
	token func() string // the token the fake accepts

	mu        sync.Mutex
	rps       map[string]*fakeRP
	traits    map[string]bool
	classes   map[string]bool
	consumers map[string]*fakeConsumer
	reqs      []string
	// racePuts makes the next n provider PUTs (inventory or traits) lose a
	// race: another writer bumps the generation just before the PUT lands.
	racePuts int
	// beforeCreate runs (unlocked) when POST /resource_providers arrives.
	beforeCreate func()
}

type fakeRP struct {
	uuid, name string
	gen        int64
	inv        map[string]Inventory
	traits     map[string]bool
}

type fakeConsumer struct {
	gen           int64
	project, user string
	allocs        map[string]map[string]int64 // rp -> rc -> amount
}

func newFakePlacement(t *testing.T, token string) *fakePlacement {
	t.Helper()
	f := &fakePlacement{
		t:         t,
		token:     func() string { return token },
		rps:       map[string]*fakeRP{},
		traits:    map[string]bool{"COMPUTE_NODE": true, "COMPUTE_STATUS_DISABLED": true, "HW_CPU_X86_AVX": true},
		classes:   map[string]bool{"VCPU": true, "MEMORY_MB": true, "DISK_GB": true},
		consumers: map[string]*fakeConsumer{},
	}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakePlacement) addRP(uuid, name string, gen int64) *fakeRP {
	f.mu.Lock()
	defer f.mu.Unlock()
	rp := &fakeRP{uuid: uuid, name: name, gen: gen, inv: map[string]Inventory{}, traits: map[string]bool{}}
	f.rps[uuid] = rp
	return rp
}

func (f *fakePlacement) rp(uuid string) fakeRP {
	f.mu.Lock()
	defer f.mu.Unlock()
	rp := f.rps[uuid]
	if rp == nil {
		return fakeRP{}
	}
	c := *rp
	c.inv = maps.Clone(rp.inv)
	c.traits = maps.Clone(rp.traits)
	return c
}

// bump simulates another writer changing the provider.
func (f *fakePlacement) bump(uuid string, change func(*fakeRP)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rp := f.rps[uuid]
	if change != nil {
		change(rp)
	}
	rp.gen++
}

func (f *fakePlacement) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.reqs)
}

func (f *fakePlacement) count(method, suffix string) int {
	n := 0
	for _, r := range f.requests() {
		m, p, _ := strings.Cut(r, " ")
		p, _, _ = strings.Cut(p, "?")
		if m == method && strings.HasSuffix(p, suffix) {
			n++
		}
	}
	return n
}

// perr writes placement's JSON error. Like placement, it sends the error
// code only to requests of microversion 1.23 or later.
func perr(w http.ResponseWriter, r *http.Request, status int, code, detail string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Openstack-Request-Id", "req-fake")
	w.WriteHeader(status)
	if code == "" {
		code = "placement.undefined_code"
	}
	e := map[string]any{
		"status": status, "title": http.StatusText(status), "request_id": "req-fake",
		// as webob words it: its generic explanation, a blank line, the detail
		"detail": "There was a problem with your request.\n\n " + detail + "  ",
	}
	if v, ok := strings.CutPrefix(r.Header.Get("OpenStack-API-Version"), "placement 1."); ok {
		if minor, err := strconv.Atoi(v); err == nil && minor >= 23 {
			e["code"] = code
		}
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]any{e}})
}

func reply(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if body != nil {
		_ = json.NewEncoder(w).Encode(body)
	}
}

// route maps a request to its handler name and the microversion nova's
// report client sends on it ("" = no header).
func route(method, path string) (name, version string) {
	seg := strings.Split(strings.Trim(path, "/"), "/")
	switch {
	case len(seg) == 1 && seg[0] == "resource_providers" && method == http.MethodPost:
		return "create_rp", "1.20"
	case len(seg) == 2 && seg[0] == "resource_providers" && method == http.MethodGet:
		return "get_rp", "1.14"
	case len(seg) == 2 && seg[0] == "resource_providers" && method == http.MethodDelete:
		return "delete_rp", ""
	case len(seg) == 3 && seg[0] == "resource_providers" && seg[2] == "inventories" && method == http.MethodGet:
		return "get_inv", ""
	case len(seg) == 3 && seg[0] == "resource_providers" && seg[2] == "inventories" && method == http.MethodPut:
		return "put_inv", "1.26"
	case len(seg) == 3 && seg[0] == "resource_providers" && seg[2] == "traits" && method == http.MethodGet:
		return "get_rp_traits", "1.6"
	case len(seg) == 3 && seg[0] == "resource_providers" && seg[2] == "traits" && method == http.MethodPut:
		return "put_rp_traits", "1.6"
	case len(seg) == 1 && seg[0] == "traits" && method == http.MethodGet:
		return "list_traits", "1.6"
	case len(seg) == 2 && seg[0] == "traits" && method == http.MethodPut:
		return "put_trait", "1.6"
	case len(seg) == 2 && seg[0] == "resource_classes" && method == http.MethodPut:
		return "put_rc", "1.7"
	case len(seg) == 2 && seg[0] == "allocations" && method == http.MethodGet:
		return "get_allocs", "1.28"
	case len(seg) == 2 && seg[0] == "allocations" && method == http.MethodPut:
		return "put_allocs", "1.28"
	}
	return "", ""
}

func (f *fakePlacement) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.reqs = append(f.reqs, r.Method+" "+r.URL.RequestURI())
	f.mu.Unlock()

	if got := r.Header.Get("X-Auth-Token"); got != f.token() {
		perr(w, r, http.StatusUnauthorized, "", "The request you have made requires authentication.")
		return
	}
	name, version := route(r.Method, r.URL.Path)
	if name == "" {
		f.t.Errorf("fake placement: unexpected %s %s", r.Method, r.URL.Path)
		perr(w, r, http.StatusNotFound, "", "no route")
		return
	}
	want := ""
	if version != "" {
		want = "placement " + version
	}
	if got := r.Header.Get("OpenStack-API-Version"); got != want {
		f.t.Errorf("fake placement: %s %s sent OpenStack-API-Version %q, nova sends %q", r.Method, r.URL.Path, got, want)
		perr(w, r, http.StatusNotAcceptable, "", "wrong microversion")
		return
	}
	if r.Header.Get("Accept") != "application/json" {
		f.t.Errorf("fake placement: %s %s without Accept: application/json", r.Method, r.URL.Path)
	}
	if name == "create_rp" && f.beforeCreate != nil {
		f.beforeCreate()
	}
	body, _ := io.ReadAll(r.Body)
	seg := strings.Split(strings.Trim(r.URL.Path, "/"), "/")

	f.mu.Lock()
	defer f.mu.Unlock()
	switch name {
	case "create_rp":
		var in struct{ UUID, Name string }
		if err := json.Unmarshal(body, &in); err != nil || in.Name == "" || in.UUID == "" {
			perr(w, r, http.StatusBadRequest, "", "JSON does not validate")
			return
		}
		var dup []string
		if f.rps[in.UUID] != nil {
			dup = append(dup, "uuid: "+in.UUID)
		}
		for _, rp := range f.rps {
			if rp.name == in.Name {
				dup = append(dup, "name: "+in.Name)
			}
		}
		if len(dup) > 0 {
			perr(w, r, http.StatusConflict, "placement.duplicate_name",
				fmt.Sprintf("Conflicting resource provider %s already exists.", strings.Join(dup, ", ")))
			return
		}
		rp := &fakeRP{uuid: in.UUID, name: in.Name, inv: map[string]Inventory{}, traits: map[string]bool{}}
		f.rps[in.UUID] = rp
		reply(w, http.StatusOK, f.rpJSON(rp))
	case "get_rp", "delete_rp", "get_inv", "put_inv", "get_rp_traits", "put_rp_traits":
		rp := f.rps[seg[1]]
		if rp == nil {
			perr(w, r, http.StatusNotFound, "placement.resource_provider.not_found", "No resource provider with uuid "+seg[1]+" found")
			return
		}
		f.serveRP(w, r, name, rp, body)
	case "list_traits":
		q := r.URL.Query().Get("name")
		names, ok := strings.CutPrefix(q, "in:")
		if !ok {
			f.t.Errorf("fake placement: GET /traits?name=%q, want in:...", q)
		}
		var out []string
		for _, n := range strings.Split(names, ",") {
			if f.traits[n] {
				out = append(out, n)
			}
		}
		reply(w, http.StatusOK, map[string]any{"traits": out})
	case "put_trait":
		if !strings.HasPrefix(seg[1], "CUSTOM_") {
			perr(w, r, http.StatusBadRequest, "", `The trait is invalid. A valid trait must be no longer than 255 characters, start with the prefix "CUSTOM_"`)
			return
		}
		status := http.StatusNoContent
		if !f.traits[seg[1]] {
			f.traits[seg[1]] = true
			status = http.StatusCreated
		}
		w.WriteHeader(status)
	case "put_rc":
		status := http.StatusNoContent
		if !f.classes[seg[1]] {
			f.classes[seg[1]] = true
			status = http.StatusCreated
		}
		w.WriteHeader(status)
	case "get_allocs":
		c := f.consumers[seg[1]]
		if c == nil {
			reply(w, http.StatusOK, map[string]any{"allocations": map[string]any{}})
			return
		}
		allocs := map[string]any{}
		for rp, res := range c.allocs {
			allocs[rp] = map[string]any{"generation": f.rps[rp].gen, "resources": res}
		}
		reply(w, http.StatusOK, map[string]any{"allocations": allocs, "project_id": c.project,
			"user_id": c.user, "consumer_generation": c.gen})
	case "put_allocs":
		var in struct {
			Allocations        map[string]any `json:"allocations"`
			ProjectID          string         `json:"project_id"`
			UserID             string         `json:"user_id"`
			ConsumerGeneration *int64         `json:"consumer_generation"`
		}
		if err := json.Unmarshal(body, &in); err != nil || in.Allocations == nil || in.ProjectID == "" || in.UserID == "" {
			perr(w, r, http.StatusBadRequest, "", "JSON does not validate: "+string(body))
			return
		}
		c := f.consumers[seg[1]]
		if c == nil || in.ConsumerGeneration == nil || *in.ConsumerGeneration != c.gen {
			perr(w, r, http.StatusConflict, "placement.concurrent_update", "consumer generation conflict")
			return
		}
		if len(in.Allocations) != 0 {
			f.t.Errorf("fake placement: only empty allocation PUTs are modelled, got %s", body)
		}
		delete(f.consumers, seg[1])
		w.WriteHeader(http.StatusNoContent)
	}
}

func (f *fakePlacement) rpJSON(rp *fakeRP) map[string]any {
	return map[string]any{"uuid": rp.uuid, "name": rp.name, "generation": rp.gen,
		"parent_provider_uuid": nil, "root_provider_uuid": rp.uuid, "links": []any{}}
}

// serveRP handles the per-provider routes; f.mu is held.
func (f *fakePlacement) serveRP(w http.ResponseWriter, r *http.Request, name string, rp *fakeRP, body []byte) {
	switch name {
	case "get_rp":
		reply(w, http.StatusOK, f.rpJSON(rp))
	case "delete_rp":
		for _, c := range f.consumers {
			if c.allocs[rp.uuid] != nil {
				perr(w, r, http.StatusConflict, "placement.resource_provider.inuse", "Unable to delete resource provider: in use")
				return
			}
		}
		delete(f.rps, rp.uuid)
		w.WriteHeader(http.StatusNoContent)
	case "get_inv":
		reply(w, http.StatusOK, map[string]any{"resource_provider_generation": rp.gen, "inventories": rp.inv})
	case "get_rp_traits":
		reply(w, http.StatusOK, map[string]any{"resource_provider_generation": rp.gen, "traits": sortedKeys(rp.traits)})
	case "put_inv":
		var in struct {
			Gen *int64                                `json:"resource_provider_generation"`
			Inv map[string]map[string]json.RawMessage `json:"inventories"`
		}
		if err := json.Unmarshal(body, &in); err != nil || in.Gen == nil || in.Inv == nil {
			perr(w, r, http.StatusBadRequest, "", "JSON does not validate: "+string(body))
			return
		}
		inv := map[string]Inventory{}
		for rc, rec := range in.Inv {
			if !f.classes[rc] {
				perr(w, r, http.StatusBadRequest, "", "Unknown resource class in inventory: "+rc)
				return
			}
			if len(rec) != 6 {
				f.t.Errorf("fake placement: inventory %s has fields %v, nova sends all six", rc, slices.Sorted(maps.Keys(rec)))
			}
			raw, _ := json.Marshal(rec)
			var i Inventory
			if err := json.Unmarshal(raw, &i); err != nil || i.Total < 1 || i.MinUnit < 1 || i.MaxUnit < 1 || i.StepSize < 1 {
				perr(w, r, http.StatusBadRequest, "", "JSON does not validate: "+string(raw))
				return
			}
			inv[rc] = i
		}
		if f.racePuts > 0 {
			f.racePuts--
			rp.gen++
		}
		if *in.Gen != rp.gen {
			perr(w, r, http.StatusConflict, "placement.concurrent_update", "resource provider generation conflict")
			return
		}
		for rc := range rp.inv {
			if _, kept := inv[rc]; kept {
				continue
			}
			for _, c := range f.consumers {
				if c.allocs[rp.uuid][rc] > 0 {
					perr(w, r, http.StatusConflict, "placement.inventory.inuse",
						"update conflict: Inventory for '"+rc+"' on resource provider '"+rp.uuid+"' in use.")
					return
				}
			}
		}
		rp.inv = inv
		rp.gen++
		reply(w, http.StatusOK, map[string]any{"resource_provider_generation": rp.gen, "inventories": rp.inv})
	case "put_rp_traits":
		var in struct {
			Gen    *int64   `json:"resource_provider_generation"`
			Traits []string `json:"traits"`
		}
		if err := json.Unmarshal(body, &in); err != nil || in.Gen == nil || in.Traits == nil {
			perr(w, r, http.StatusBadRequest, "", "JSON does not validate: "+string(body))
			return
		}
		for _, tr := range in.Traits {
			if !f.traits[tr] {
				perr(w, r, http.StatusBadRequest, "", "No such trait(s): "+tr)
				return
			}
		}
		if f.racePuts > 0 {
			f.racePuts--
			rp.gen++
		}
		if *in.Gen != rp.gen {
			perr(w, r, http.StatusConflict, "placement.concurrent_update",
				"Resource provider's generation already changed. Please update the generation and try again.")
			return
		}
		rp.traits = toSet(in.Traits)
		rp.gen++
		reply(w, http.StatusOK, map[string]any{"resource_provider_generation": rp.gen, "traits": sortedKeys(rp.traits)})
	}
}

package cloud

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"
)

// movePlacement serves GET /allocations/{consumer} and POST /allocations
// over an in-memory set of consumers.
type movePlacement struct {
	mu        sync.Mutex
	consumers map[string]map[string]any // consumer -> GET body
	posted    map[string]allocationRequest
	conflict  bool
}

func (m *movePlacement) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v := r.Header.Get("OpenStack-API-Version"); v != "placement 1.28" {
		http.Error(w, "microversion "+v, http.StatusBadRequest)
		return
	}
	switch {
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/allocations/"):
		body := m.consumers[strings.TrimPrefix(r.URL.Path, "/allocations/")]
		if body == nil {
			body = map[string]any{"allocations": map[string]any{}}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(body)
	case r.Method == http.MethodPost && r.URL.Path == "/allocations":
		raw, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(raw, &m.posted); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if m.conflict {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusConflict)
			_, _ = io.WriteString(w, `{"errors":[{"status":409,"code":"placement.concurrent_update","title":"Conflict","detail":"consumer generation conflict"}]}`)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		http.Error(w, "no route", http.StatusNotFound)
	}
}

func TestMigrationAllocationsMove(t *testing.T) {
	m := &movePlacement{consumers: map[string]map[string]any{
		"mig": {"allocations": map[string]any{"rp-src": map[string]any{"generation": 3, "resources": map[string]any{"VCPU": 1, "MEMORY_MB": 64}}},
			"project_id": "p", "user_id": "u", "consumer_generation": 1},
		"inst": {"allocations": map[string]any{"rp-dst": map[string]any{"generation": 5, "resources": map[string]any{"VCPU": 2}}},
			"project_id": "p", "user_id": "u", "consumer_generation": 4},
	}}
	srv := httptest.NewServer(m)
	defer srv.Close()
	s, err := NewSession(context.Background(), AuthConfig{Token: testToken, PlacementEndpoint: srv.URL}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	p := NewPlacement(s, PlacementOptions{})
	ctx := context.Background()

	moved, err := p.MoveAllocations(ctx, "mig", "inst")
	if err != nil || !moved {
		t.Fatalf("MoveAllocations = %t, %v", moved, err)
	}
	src, dst := m.posted["mig"], m.posted["inst"]
	if len(src.Allocations) != 0 || src.ConsumerGeneration == nil || *src.ConsumerGeneration != 1 || src.ProjectID != "p" {
		t.Errorf("source part %+v: want emptied at generation 1", src)
	}
	if dst.Allocations["rp-src"].Resources["MEMORY_MB"] != 64 || len(dst.Allocations) != 1 ||
		dst.ConsumerGeneration == nil || *dst.ConsumerGeneration != 4 || dst.UserID != "u" {
		t.Errorf("target part %+v: want the source's allocations at generation 4", dst)
	}

	// A new target consumer has no generation: null.
	m.posted = nil
	if _, err := p.MoveAllocations(ctx, "mig", "new"); err != nil {
		t.Fatal(err)
	}
	if g := m.posted["new"].ConsumerGeneration; g != nil {
		t.Errorf("new consumer's generation %d, want null", *g)
	}

	// Nothing to move: nothing posted.
	m.posted = nil
	if moved, err := p.MoveAllocations(ctx, "none", "inst"); moved || err != nil || m.posted != nil {
		t.Errorf("MoveAllocations without allocations = %t, %v, posted %v", moved, err, m.posted)
	}

	m.conflict = true
	_, err = p.MoveAllocations(ctx, "mig", "inst")
	var he *HTTPError
	if !errors.As(err, &he) || he.Status != http.StatusConflict || he.Code != "placement.concurrent_update" {
		t.Errorf("conflicting move: %v, want a 409 *HTTPError", err)
	}
}

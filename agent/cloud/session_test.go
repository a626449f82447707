package cloud

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

const (
	testUser     = "nova"
	testPassword = "s3cret-pa55word"
	testProject  = "service"
)

// fakeKeystone answers POST /v3/auth/tokens for one user with a project
// scoped token and a catalog, as keystone does; each authentication issues
// a new token (tok-1, tok-2, ...).
type fakeKeystone struct {
	t       *testing.T
	srv     *httptest.Server
	catalog []map[string]any

	mu     sync.Mutex
	issued int
}

func newFakeKeystone(t *testing.T, catalog []map[string]any) *fakeKeystone {
	k := &fakeKeystone{t: t, catalog: catalog}
	k.srv = httptest.NewServer(http.HandlerFunc(k.serve))
	t.Cleanup(k.srv.Close)
	return k
}

func (k *fakeKeystone) count() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.issued
}

func (k *fakeKeystone) current() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return fmt.Sprintf("tok-%d", k.issued)
}

func (k *fakeKeystone) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v3/auth/tokens" {
		k.t.Errorf("fake keystone: unexpected %s %s", r.Method, r.URL.Path)
		http.NotFound(w, r)
		return
	}
	var in struct {
		Auth struct {
			Identity struct {
				Methods  []string `json:"methods"`
				Password struct {
					User struct {
						Name     string `json:"name"`
						Password string `json:"password"`
						Domain   struct {
							Name string `json:"name"`
						} `json:"domain"`
					} `json:"user"`
				} `json:"password"`
			} `json:"identity"`
			Scope struct {
				Project struct {
					Name   string `json:"name"`
					Domain struct {
						Name string `json:"name"`
					} `json:"domain"`
				} `json:"project"`
			} `json:"scope"`
		} `json:"auth"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	u, sc := in.Auth.Identity.Password.User, in.Auth.Scope.Project
	if len(in.Auth.Identity.Methods) != 1 || in.Auth.Identity.Methods[0] != "password" ||
		sc.Name != testProject || sc.Domain.Name != "Default" || u.Domain.Name != "Default" {
		k.t.Errorf("fake keystone: unexpected auth request %+v", in)
	}
	if u.Name != testUser || u.Password != testPassword {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}}`))
		return
	}
	k.mu.Lock()
	k.issued++
	tok := fmt.Sprintf("tok-%d", k.issued)
	k.mu.Unlock()
	w.Header().Set("X-Subject-Token", tok)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(map[string]any{"token": map[string]any{
		"methods":    []string{"password"},
		"expires_at": time.Now().Add(time.Hour).UTC().Format("2006-01-02T15:04:05.000000Z"),
		"issued_at":  time.Now().UTC().Format("2006-01-02T15:04:05.000000Z"),
		"user":       map[string]any{"id": "u1", "name": testUser, "domain": map[string]any{"id": "default", "name": "Default"}},
		"project":    map[string]any{"id": "p1", "name": testProject, "domain": map[string]any{"id": "default", "name": "Default"}},
		"catalog":    k.catalog,
	}})
}

func endpoint(iface, region, url string) map[string]any {
	return map[string]any{"id": iface + region, "interface": iface, "region": region, "region_id": region, "url": url}
}

func service(typ string, eps ...map[string]any) map[string]any {
	return map[string]any{"id": typ, "type": typ, "name": typ, "endpoints": eps}
}

func passwordConfig(k *fakeKeystone) AuthConfig {
	return AuthConfig{AuthURL: k.srv.URL + "/v3", Username: testUser, Password: testPassword, ProjectName: testProject}
}

func TestPasswordAuth(t *testing.T) {
	ctx := context.Background()
	var k *fakeKeystone
	f := newFakePlacement(t, "")
	f.token = func() string { return k.current() }
	f.addRP(rpUUID, rpName, 0)
	k = newFakeKeystone(t, []map[string]any{
		service("identity", endpoint("public", "RegionOne", "http://keystone.invalid/v3")),
		service("placement",
			endpoint("public", "RegionOne", "http://placement-public.invalid/"),
			endpoint("internal", "RegionOne", f.srv.URL)),
		service("image", endpoint("internal", "RegionOne", "http://glance.invalid:9292")),
	})
	var logs bytes.Buffer
	s, err := NewSession(ctx, passwordConfig(k), zerolog.New(&logs).Level(zerolog.TraceLevel))
	if err != nil {
		t.Fatalf("NewSession: %v", err)
	}
	if k.count() != 1 {
		t.Fatalf("keystone authentications = %d, want 1", k.count())
	}
	p := NewPlacement(s, PlacementOptions{})
	if _, err := p.Provider(ctx, rpUUID); err != nil {
		t.Fatalf("Provider through the catalog's internal endpoint: %v", err)
	}
	img, err := s.ImageClient()
	if err != nil || img.ResourceBase != "http://glance.invalid:9292/v2/" {
		t.Fatalf("ImageClient = %+v, %v", img, err)
	}

	// The token is revoked: placement answers 401, the session
	// re-authenticates once and the call goes through.
	k.mu.Lock()
	k.issued++ // tok-1 is no longer the current token
	k.mu.Unlock()
	if _, err := p.Provider(ctx, rpUUID); err != nil {
		t.Fatalf("Provider after the token was revoked: %v", err)
	}
	if k.count() != 3 {
		t.Fatalf("keystone authentications = %d, want a re-authentication", k.count())
	}
	if got := f.requests(); len(got) != 3 {
		t.Fatalf("placement requests = %v, want GET, 401'd GET, retried GET", got)
	}
	if strings.Contains(logs.String(), testPassword) || strings.Contains(logs.String(), "tok-") {
		t.Fatalf("a secret was logged: %s", logs.String())
	}
	if !strings.Contains(logs.String(), "authenticated to keystone") {
		t.Fatalf("no authentication log line: %s", logs.String())
	}
}

func TestPasswordAuthFailure(t *testing.T) {
	k := newFakeKeystone(t, nil)
	cfg := passwordConfig(k)
	cfg.Password = "wrong"
	_, err := NewSession(context.Background(), cfg, zerolog.Nop())
	var he *HTTPError
	if !errors.As(err, &he) || he.Status != http.StatusUnauthorized {
		t.Fatalf("NewSession with a wrong password: %v, want HTTP 401", err)
	}
	if strings.Contains(err.Error(), "wrong") {
		t.Fatalf("error shows the password: %v", err)
	}
}

func TestCatalogEndpointSelection(t *testing.T) {
	catalog := []map[string]any{
		service("placement",
			endpoint("public", "RegionOne", "http://public-one/placement"),
			endpoint("internal", "RegionOne", "http://internal-one/placement"),
			endpoint("public", "RegionTwo", "http://public-two/placement")),
	}
	k := newFakeKeystone(t, catalog)
	tests := []struct {
		name    string
		mod     func(*AuthConfig)
		want    string
		wantErr string
	}{
		{name: "nova's default prefers internal", want: "http://internal-one/placement/"},
		{name: "public only", mod: func(c *AuthConfig) { c.Interface = "public" }, want: "http://public-one/placement/"},
		{name: "region", mod: func(c *AuthConfig) { c.RegionName = "RegionTwo" }, want: "http://public-two/placement/"},
		{name: "endpoint override", mod: func(c *AuthConfig) { c.PlacementEndpoint = "http://override:8778" }, want: "http://override:8778/"},
		{name: "no admin endpoint", mod: func(c *AuthConfig) { c.Interface = "admin" }, wantErr: "no placement endpoint"},
		{name: "unknown region", mod: func(c *AuthConfig) { c.RegionName = "RegionThree" }, wantErr: "no placement endpoint"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := passwordConfig(k)
			if tc.mod != nil {
				tc.mod(&cfg)
			}
			s, err := NewSession(context.Background(), cfg, zerolog.Nop())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("NewSession: %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := s.PlacementClient().Endpoint; got != tc.want {
				t.Fatalf("placement endpoint = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     AuthConfig
		wantErr string
	}{
		{name: "password", cfg: AuthConfig{AuthURL: "http://k:5000/v3", Username: "u", Password: "p", ProjectName: "x"}},
		{name: "token", cfg: AuthConfig{Token: "admin:admin", PlacementEndpoint: "http://127.0.0.1:18778"}},
		{name: "nothing", cfg: AuthConfig{}, wantErr: "neither Token nor AuthURL"},
		{name: "token without endpoint", cfg: AuthConfig{Token: "t"}, wantErr: "needs PlacementEndpoint"},
		{name: "token and password", cfg: AuthConfig{Token: "t", Password: "p", PlacementEndpoint: "http://p"}, wantErr: "both Token and Password"},
		{name: "no user", cfg: AuthConfig{AuthURL: "http://k/v3", Password: "p", ProjectName: "x"}, wantErr: "needs Username"},
		{name: "no password", cfg: AuthConfig{AuthURL: "http://k/v3", Username: "u", ProjectName: "x"}, wantErr: "needs Password"},
		{name: "no project", cfg: AuthConfig{AuthURL: "http://k/v3", Username: "u", Password: "p"}, wantErr: "needs ProjectName"},
		{name: "bad URL", cfg: AuthConfig{Token: "t", PlacementEndpoint: "placement:8778"}, wantErr: "not an http(s) URL"},
		{name: "bad interface", cfg: AuthConfig{Token: "t", PlacementEndpoint: "http://p", Interface: "private"}, wantErr: "Interface"},
		{name: "interface list", cfg: AuthConfig{Token: "t", PlacementEndpoint: "http://p", Interface: "internalURL, public"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrAuthConfig) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Validate: %v, want ErrAuthConfig with %q", err, tc.wantErr)
			}
		})
	}
}

func TestSecretsNotPrinted(t *testing.T) {
	for _, cfg := range []AuthConfig{
		{AuthURL: "http://k/v3", Username: "u", Password: testPassword, ProjectName: "x"},
		{Token: testPassword, PlacementEndpoint: "http://p"},
	} {
		for _, s := range []string{fmt.Sprint(cfg), fmt.Sprintf("%v %+v %#v %s", cfg, cfg, cfg, cfg)} {
			if strings.Contains(s, testPassword) {
				t.Fatalf("secret printed: %s", s)
			}
		}
	}
	var logs bytes.Buffer
	f := newFakePlacement(t, testPassword)
	if _, err := NewSession(context.Background(), AuthConfig{Token: testPassword, PlacementEndpoint: f.srv.URL},
		zerolog.New(&logs).Level(zerolog.TraceLevel)); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), testPassword) {
		t.Fatalf("token logged: %s", logs.String())
	}
}

func TestImageClient(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		endpoint string
		want     string
	}{
		{"http://glance:9292", "http://glance:9292/v2/"},
		{"http://glance:9292/v2", "http://glance:9292/v2/"},
		{"http://host/image/", "http://host/image/v2/"},
	}
	for _, tc := range tests {
		s, err := NewSession(ctx, AuthConfig{Token: "t", PlacementEndpoint: "http://p", GlanceEndpoint: tc.endpoint}, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		c, err := s.ImageClient()
		if err != nil || c.ResourceBase != tc.want || c.Type != ServiceTypeImage {
			t.Errorf("ImageClient(%s) = %+v, %v; want base %s", tc.endpoint, c, err, tc.want)
		}
	}
	s, err := NewSession(ctx, AuthConfig{Token: "t", PlacementEndpoint: "http://p"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ImageClient(); !errors.Is(err, ErrAuthConfig) {
		t.Errorf("ImageClient without GlanceEndpoint under token auth: %v", err)
	}
}

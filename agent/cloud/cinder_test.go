package cloud

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// fakeCinderAPI answers the attachment calls nova-compute makes and
// records them as "METHOD path mv=<microversion> token=<token>
// service=<service token> body".
type fakeCinderAPI struct {
	mu       sync.Mutex
	reqs     []string
	failures int // 500s before a DELETE succeeds
}

func (f *fakeCinderAPI) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	line := r.Method + " " + r.URL.Path + " mv=" + r.Header.Get("OpenStack-API-Version") +
		" token=" + r.Header.Get("X-Auth-Token") + " service=" + r.Header.Get("X-Service-Token")
	if len(body) > 0 {
		line += " " + string(body)
	}
	f.reqs = append(f.reqs, line)
	fail := false
	if r.Method == http.MethodDelete && f.failures > 0 {
		f.failures--
		fail = true
	}
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch {
	case fail:
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = io.WriteString(w, `{"computeFault": {"message": "boom", "code": 500}}`)
	case r.Method == http.MethodGet && r.URL.Path == "/v3/proj/volumes/v1":
		_, _ = io.WriteString(w, `{"volume": {"id": "v1", "status": "reserved", "size": 2, "availability_zone": "nova",
			"multiattach": false, "attachments": [], "shared_targets": true, "service_uuid": "s1", "migration_status": null}}`)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v3/proj/volumes/"):
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"itemNotFound": {"message": "Volume nope could not be found.", "code": 404}}`)
	case r.Method == http.MethodPut && r.URL.Path == "/v3/proj/attachments/a1":
		_, _ = io.WriteString(w, `{"attachment": {"id": "a1", "status": "attaching", "instance": "i1", "volume_id": "v1",
			"attached_at": null, "detached_at": null, "attach_mode": "rw",
			"connection_info": {"driver_volume_type": "vmdk", "volume": "vm-42", "volume_id": "v1", "name": "volume-v1",
				"profile_id": null, "attachment_id": "a1", "access_mode": "rw", "encrypted": false, "qos_specs": null}}}`)
	case r.Method == http.MethodPost && r.URL.Path == "/v3/proj/attachments/a1/action":
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodDelete && r.URL.Path == "/v3/proj/volumes/v1":
		w.WriteHeader(http.StatusAccepted)
	case r.Method == http.MethodDelete && r.URL.Path == "/v3/proj/attachments/a1":
		_, _ = io.WriteString(w, `{"attachments": []}`)
	case r.Method == http.MethodDelete:
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"itemNotFound": {"message": "VolumeAttachment a2 could not be found.", "code": 404}}`)
	case r.Method == http.MethodPost && r.URL.Path == "/v3/proj/volumes/v1/action":
		if strings.Contains(string(body), "migrate_volume_completion") {
			_, _ = io.WriteString(w, `{"save_volume_id": "v1"}`)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	default:
		w.WriteHeader(http.StatusBadRequest)
	}
}

func (f *fakeCinderAPI) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.reqs...)
}

func newFakeCinder(t *testing.T, cfg func(url string) CinderConfig) (*Cinder, *fakeCinderAPI, string) {
	t.Helper()
	f := &fakeCinderAPI{}
	srv := httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(srv.Close)
	sess, err := NewSession(context.Background(), AuthConfig{Token: "service-token", PlacementEndpoint: srv.URL}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCinder(sess, cfg(srv.URL))
	if err != nil {
		t.Fatal(err)
	}
	return c, f, srv.URL
}

// TestCinderAttachmentFlow: the calls of nova's attach and detach with the
// endpoint_template's %(project_id)s taken from the request context, the
// user's token, the service token and the microversions nova uses; the
// connection info comes back old style.
func TestCinderAttachmentFlow(t *testing.T) {
	c, f, _ := newFakeCinder(t, func(u string) CinderConfig { return CinderConfig{EndpointTemplate: u + "/v3/%(project_id)s"} })
	ctx := context.Background()
	cc := CinderContext{Token: "user-token", Values: map[string]any{"project_id": "proj", "user_id": "u"}}
	v, err := c.Volume(ctx, cc, "v1")
	if err != nil {
		t.Fatal(err)
	}
	if v.ID != "v1" || v.Size != 2 || v.AttachStatus() != "detached" || !v.SharedTargets || v.MigrationStatus != nil {
		t.Errorf("volume %+v", v)
	}
	if _, err := c.Volume(ctx, cc, "nope"); !errors.Is(err, ErrNotFound) || CinderStatus(err) != 404 {
		t.Errorf("missing volume: %v", err)
	}
	ci, err := c.AttachmentUpdate(ctx, cc, "a1", map[string]any{"ip": "10.0.0.1", "host": "10.0.0.1", "instance": "vm-7"}, "/dev/sdb")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := ci["data"].(map[string]any)
	if ci["driver_volume_type"] != "vmdk" || data["volume"] != "vm-42" || data["volume_id"] != "v1" || data["access_mode"] != "rw" ||
		ci["instance"] != "i1" || ci["status"] != "attaching" {
		t.Errorf("connection info %v", ci)
	}
	if _, ok := data["attachment_id"]; ok {
		t.Errorf("connection info data keeps attachment_id: %v", data)
	}
	if err := c.AttachmentComplete(ctx, cc, "a1"); err != nil {
		t.Fatal(err)
	}
	if err := c.AttachmentDelete(ctx, cc, "a1"); err != nil {
		t.Fatal(err)
	}
	if err := c.AttachmentDelete(ctx, cc, "a2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleting a missing attachment: %v, want ErrNotFound", err)
	}
	if err := c.RollDetaching(ctx, cc, "v1"); err != nil {
		t.Fatal(err)
	}
	if id, err := c.MigrateVolumeCompletion(ctx, cc, "v1", "v2", true); err != nil || id != "v1" {
		t.Errorf("migrate completion: %q, %v", id, err)
	}
	if err := c.DeleteVolume(ctx, cc, "v1"); err != nil {
		t.Errorf("delete volume: %v", err)
	}
	want := []string{
		"GET /v3/proj/volumes/v1 mv=volume 3.48 token=user-token service=service-token",
		"GET /v3/proj/volumes/nope mv=volume 3.48 token=user-token service=service-token",
		`PUT /v3/proj/attachments/a1 mv=volume 3.44 token=user-token service=service-token {"attachment":{"connector":{"host":"10.0.0.1","instance":"vm-7","ip":"10.0.0.1","mountpoint":"/dev/sdb"}}}`,
		`POST /v3/proj/attachments/a1/action mv=volume 3.44 token=user-token service=service-token {"os-complete":null}`,
		"DELETE /v3/proj/attachments/a1 mv=volume 3.44 token=user-token service=service-token",
		"DELETE /v3/proj/attachments/a2 mv=volume 3.44 token=user-token service=service-token",
		`POST /v3/proj/volumes/v1/action mv=volume 3.0 token=user-token service=service-token {"os-roll_detaching":null}`,
		`POST /v3/proj/volumes/v1/action mv=volume 3.0 token=user-token service=service-token {"os-migrate_volume_completion":{"error":true,"new_volume":"v2"}}`,
		"DELETE /v3/proj/volumes/v1 mv=volume 3.0 token=user-token service=service-token",
	}
	got := f.requests()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("requests:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestCinderEndpointFromContextCatalog: without endpoint_template the
// endpoint is the request context's catalog entry of catalog_info (v2 and
// v3 formats), and a request without a token uses the session's.
func TestCinderEndpointFromContextCatalog(t *testing.T) {
	for _, format := range []string{"v2", "v3"} {
		t.Run(format, func(t *testing.T) {
			c, f, u := newFakeCinder(t, func(string) CinderConfig { return CinderConfig{} })
			ep := map[string]any{"region": "RegionOne", "publicURL": u + "/v3/proj", "internalURL": "http://internal.invalid/v3/proj"}
			if format == "v3" {
				ep = map[string]any{"region_id": "RegionOne", "interface": "public", "url": u + "/v3/proj"}
			}
			cc := CinderContext{ServiceCatalog: []any{
				map[string]any{"type": "image", "endpoints": []any{map[string]any{"publicURL": "http://glance.invalid"}}},
				map[string]any{"type": "volumev3", "name": "cinderv3", "endpoints": []any{ep}},
			}}
			if err := c.AttachmentComplete(context.Background(), cc, "a1"); err != nil {
				t.Fatal(err)
			}
			if got := f.requests(); len(got) != 1 || !strings.Contains(got[0], "token=service-token") {
				t.Errorf("requests %v", got)
			}
			if _, err := c.Volume(context.Background(), CinderContext{}, "v1"); !errors.Is(err, ErrAuthConfig) {
				t.Errorf("no catalog, token auth: %v, want ErrAuthConfig", err)
			}
		})
	}
}

// TestCinderAttachmentDeleteRetries: nova retries attachment_delete on a
// 500.
func TestCinderAttachmentDeleteRetries(t *testing.T) {
	old := attachmentDeleteBackoff
	attachmentDeleteBackoff = time.Millisecond
	t.Cleanup(func() { attachmentDeleteBackoff = old })
	c, f, _ := newFakeCinder(t, func(u string) CinderConfig { return CinderConfig{EndpointTemplate: u + "/v3/proj"} })
	f.failures = 2
	if err := c.AttachmentDelete(context.Background(), CinderContext{}, "a1"); err != nil {
		t.Fatal(err)
	}
	if n := len(f.requests()); n != 3 {
		t.Errorf("%d requests, want 3", n)
	}
}

func TestCinderConfig(t *testing.T) {
	sess, err := NewSession(context.Background(), AuthConfig{Token: "t", PlacementEndpoint: "http://placement"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewCinder(sess, CinderConfig{CatalogInfo: "volumev3"}); !errors.Is(err, ErrAuthConfig) {
		t.Errorf("bad catalog_info: %v", err)
	}
	if got := substitute("http://c/v3/%(project_id)s/%(user_id)s/%(nope)s", map[string]any{"project_id": "p", "user_id": nil}); got != "http://c/v3/p/None/%(nope)s" {
		t.Errorf("substitute = %q", got)
	}
}

// TestCinderCreateCalls: the calls nova-compute makes for the volumes it
// creates and moves: a volume created at 3.0 with only the given sources
// set, an attachment created at 3.44 with or without a connector (the
// mountpoint put into it), and a snapshot read.
func TestCinderCreateCalls(t *testing.T) {
	var mu sync.Mutex
	var reqs []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		reqs = append(reqs, r.Method+" "+r.URL.Path+" mv="+r.Header.Get("OpenStack-API-Version")+" "+string(body))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/v3/proj/volumes":
			w.WriteHeader(http.StatusAccepted)
			_, _ = io.WriteString(w, `{"volume": {"id": "v9", "status": "creating", "size": 2}}`)
		case r.Method == http.MethodPost && r.URL.Path == "/v3/proj/attachments" && strings.Contains(string(body), "connector"):
			_, _ = io.WriteString(w, `{"attachment": {"id": "a9", "status": "attaching", "instance": "i1",
				"connection_info": {"driver_volume_type": "vmdk", "volume": "vm-5", "volume_id": "v9"}}}`)
		case r.Method == http.MethodPost && r.URL.Path == "/v3/proj/attachments":
			_, _ = io.WriteString(w, `{"attachment": {"id": "a8", "status": "reserved", "instance": "i1", "connection_info": {}}}`)
		case r.Method == http.MethodGet && r.URL.Path == "/v3/proj/snapshots/s1":
			_, _ = io.WriteString(w, `{"snapshot": {"id": "s1", "volume_id": "v1", "status": "available", "size": 1}}`)
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"itemNotFound": {"message": "not found", "code": 404}}`)
		}
	}))
	t.Cleanup(srv.Close)
	sess, err := NewSession(context.Background(), AuthConfig{Token: "service-token", PlacementEndpoint: srv.URL}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCinder(sess, CinderConfig{EndpointTemplate: srv.URL + "/v3/%(project_id)s"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cc := CinderContext{Token: "user-token", Values: map[string]any{"project_id": "proj"}}

	v, err := c.CreateVolume(ctx, cc, VolumeCreate{Size: 2, ImageID: "img-1", VolumeType: "fast"})
	if err != nil || v.ID != "v9" || v.Status != "creating" {
		t.Fatalf("create volume: %+v, %v", v, err)
	}
	id, ci, err := c.AttachmentCreate(ctx, cc, "v9", "i1", nil, "")
	if err != nil || id != "a8" || ci != nil {
		t.Errorf("reserve attachment: %q %v %v; want a8 without connection info", id, ci, err)
	}
	id, ci, err = c.AttachmentCreate(ctx, cc, "v9", "i1", map[string]any{"ip": "10.0.0.1", "instance": "vm-7"}, "/dev/sdb")
	data, _ := ci["data"].(map[string]any)
	if err != nil || id != "a9" || ci["driver_volume_type"] != "vmdk" || data["volume"] != "vm-5" {
		t.Errorf("attachment with connector: %q %v %v", id, ci, err)
	}
	s, err := c.Snapshot(ctx, cc, "s1")
	if err != nil || s.VolumeID != "v1" {
		t.Errorf("snapshot: %+v, %v", s, err)
	}
	if _, err := c.Snapshot(ctx, cc, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing snapshot: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{
		`POST /v3/proj/volumes mv=volume 3.0 {"volume":{"availability_zone":null,"consistencygroup_id":null,"description":"","imageRef":"img-1","metadata":{},"name":"","size":2,"snapshot_id":null,"source_volid":null,"volume_type":"fast"}}`,
		`POST /v3/proj/attachments mv=volume 3.44 {"attachment":{"instance_uuid":"i1","volume_uuid":"v9"}}`,
		`POST /v3/proj/attachments mv=volume 3.44 {"attachment":{"connector":{"instance":"vm-7","ip":"10.0.0.1","mountpoint":"/dev/sdb"},"instance_uuid":"i1","volume_uuid":"v9"}}`,
		`GET /v3/proj/snapshots/s1 mv=volume 3.0 `,
	}
	for i, w := range want {
		if i >= len(reqs) || reqs[i] != w {
			t.Errorf("request %d:\n%v\nwant\n%s", i, reqs, w)
			break
		}
	}
}

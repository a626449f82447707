package cloud

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

func TestSnapshotGlanceUpdateUploadDelete(t *testing.T) {
	var patch []map[string]any
	var patchType, uploaded, uploadType string
	deleted := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Auth-Token") != "user-token" {
			t.Errorf("%s %s with token %q", r.Method, r.URL.Path, r.Header.Get("X-Auth-Token"))
		}
		switch r.Method + " " + r.URL.Path {
		case "PATCH /v2/images/img1":
			patchType = r.Header.Get("Content-Type")
			_ = json.NewDecoder(r.Body).Decode(&patch)
			_, _ = io.WriteString(w, `{"id": "img1"}`)
		case "PUT /v2/images/img1/file":
			uploadType = r.Header.Get("Content-Type")
			b, _ := io.ReadAll(r.Body)
			uploaded = string(b)
			w.WriteHeader(http.StatusNoContent)
		case "DELETE /v2/images/img1":
			deleted++
			w.WriteHeader(http.StatusNoContent)
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"code": 404, "title": "Not Found", "message": "No image found"}`)
		}
	}))
	defer srv.Close()
	sess, err := NewSession(context.Background(), AuthConfig{Token: "service-token", PlacementEndpoint: srv.URL, GlanceEndpoint: srv.URL}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	g, err := NewGlance(sess)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	err = g.UpdateImage(ctx, "user-token", "img1", ImageUpdate{DiskFormat: "vmdk", ContainerFormat: "bare",
		Properties: map[string]any{"vmware_disktype": "streamOptimized", "vmware_image_version": 1}, Remove: []string{"old"}})
	if err != nil {
		t.Fatal(err)
	}
	if patchType != "application/openstack-images-v2.1-json-patch" {
		t.Errorf("PATCH content type %q", patchType)
	}
	want := `[{"op":"replace","path":"/disk_format","value":"vmdk"},{"op":"replace","path":"/container_format","value":"bare"},` +
		`{"op":"add","path":"/vmware_disktype","value":"streamOptimized"},{"op":"add","path":"/vmware_image_version","value":1},{"op":"remove","path":"/old"}]`
	if got, _ := json.Marshal(patch); string(got) != want {
		t.Errorf("patch\n%s\nwant\n%s", got, want)
	}
	if err := g.UploadImage(ctx, "user-token", "img1", io.MultiReader(strings.NewReader("KDMV"), strings.NewReader("-data"))); err != nil {
		t.Fatal(err)
	}
	if uploaded != "KDMV-data" || uploadType != "application/octet-stream" {
		t.Errorf("uploaded %q as %q", uploaded, uploadType)
	}
	if err := g.DeleteImage(ctx, "user-token", "img1"); err != nil || deleted != 1 {
		t.Fatalf("delete: %v, %d", err, deleted)
	}
	if err := g.DeleteImage(ctx, "user-token", "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete of a missing image: %v", err)
	}
	if err := g.UploadImage(ctx, "user-token", "nope", strings.NewReader("x")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("upload to a missing image: %v", err)
	}
}

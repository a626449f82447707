package cloud

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// fakeGlance serves one image and records the tokens it was sent.
func fakeGlance(t *testing.T) (*httptest.Server, *[]string) {
	t.Helper()
	var tokens []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tokens = append(tokens, r.Header.Get("X-Auth-Token"))
		switch r.URL.Path {
		case "/v2/images/img1":
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"id": "img1", "name": "cirros", "status": "active", "disk_format": "vmdk",
				"container_format": "bare", "size": 11, "visibility": "public",
				"vmware_disktype": "preallocated", "vmware_adaptertype": "lsiLogic", "hw_vif_model": "e1000"}`)
		case "/v2/images/img1/file":
			w.Header().Set("Content-Length", "11")
			_, _ = io.WriteString(w, "disk-bytes!")
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"code": 404, "title": "Not Found", "message": "No image found"}`)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &tokens
}

func TestGlanceImageAndDownload(t *testing.T) {
	srv, tokens := fakeGlance(t)
	sess, err := NewSession(context.Background(), AuthConfig{Token: "service-token", PlacementEndpoint: srv.URL, GlanceEndpoint: srv.URL}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	g, err := NewGlance(sess)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	img, err := g.Image(ctx, "user-token", "img1")
	if err != nil {
		t.Fatal(err)
	}
	if img.DiskFormat != "vmdk" || img.Size != 11 || img.Properties["vmware_disktype"] != "preallocated" || img.Properties["visibility"] != nil {
		t.Fatalf("image %+v", img)
	}
	body, size, err := g.Download(ctx, "", "img1")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(body)
	_ = body.Close()
	if string(data) != "disk-bytes!" || size != 11 {
		t.Fatalf("download %q size %d", data, size)
	}
	if strings.Join(*tokens, ",") != "user-token,service-token" {
		t.Fatalf("tokens sent: %v (the user's for metadata, the service's for the download)", *tokens)
	}
	_, err = g.Image(ctx, "", "missing")
	var he *HTTPError
	if !errors.As(err, &he) || he.Status != http.StatusNotFound || !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing image: %v", err)
	}
}

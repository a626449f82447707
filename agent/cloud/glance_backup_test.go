package cloud

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/rs/zerolog"
)

func TestGlanceListImagesFiltersSortsAndPages(t *testing.T) {
	var queries []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/images" || r.Header.Get("X-Auth-Token") != "user-token" {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		q := r.URL.Query()
		queries = append(queries, q.Encode())
		if q.Get("image_type") != "backup" || q.Get("backup_type") != "daily" || q.Get("sort_key") != "created_at" || q.Get("sort_dir") != "desc" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if q.Get("marker") == "" {
			_, _ = io.WriteString(w, `{"images": [{"id": "b3", "name": "n3", "status": "active", "backup_type": "daily"},
				{"id": "b2", "name": "n2", "status": "active"}],
				"next": "/v2/images?image_type=backup&backup_type=daily&sort_key=created_at&sort_dir=desc&marker=b2"}`)
			return
		}
		_, _ = io.WriteString(w, `{"images": [{"id": "b1", "name": "n1", "status": "active"}]}`)
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
	imgs, err := g.ListImages(context.Background(), "user-token",
		map[string]string{"image_type": "backup", "backup_type": "daily"}, "created_at", "desc")
	if err != nil {
		t.Fatalf("%v (queries %v)", err, queries)
	}
	got := fmt.Sprint(len(imgs))
	for _, i := range imgs {
		got += " " + i.ID
	}
	if got != "3 b3 b2 b1" || imgs[0].Properties["backup_type"] != "daily" || len(queries) != 2 {
		t.Fatalf("images %s %+v, queries %v", got, imgs, queries)
	}
}

package cloud

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
)

// ListImages lists images as nova's image API get_all does with glance v2
// (GET /v2/images with the filters as query parameters, nova's
// "property-<name>" filters given here as "<name>"), following glance's
// "next" links until the last page. sortKey and sortDir ("created_at",
// "desc") order the result; empty leaves glance's default. token is the
// user's token, or "" for the service's own.
func (g *Glance) ListImages(ctx context.Context, token string, filters map[string]string, sortKey, sortDir string) ([]Image, error) {
	q := url.Values{}
	for k, v := range filters {
		q.Set(k, v)
	}
	if sortKey != "" {
		q.Set("sort_key", sortKey)
	}
	if sortDir != "" {
		q.Set("sort_dir", sortDir)
	}
	var out []Image
	for page := 0; page < 1000; page++ {
		u := g.sc.ServiceURL("images")
		if len(q) > 0 {
			u += "?" + q.Encode()
		}
		var body struct {
			Images []map[string]json.RawMessage `json:"images"`
			Next   string                       `json:"next"`
		}
		_, err := g.client(token).Get(ctx, u, &body, &gophercloud.RequestOpts{OkCodes: []int{http.StatusOK}})
		if err != nil {
			return nil, fmt.Errorf("glance: list images: %w", httpError(err))
		}
		for _, raw := range body.Images {
			out = append(out, imageFromRaw(raw))
		}
		if body.Next == "" || len(body.Images) == 0 {
			return out, nil
		}
		// next is "/v2/images?marker=…&…", relative to glance's root:
		// its query carries the filters, the sort and the marker.
		next, err := url.Parse(body.Next)
		if err != nil {
			return nil, fmt.Errorf("glance: list images: next link %q: %w", body.Next, err)
		}
		if !strings.HasSuffix(next.Path, "/images") {
			return nil, fmt.Errorf("glance: list images: unexpected next link %q", body.Next)
		}
		q = next.Query()
	}
	return nil, fmt.Errorf("glance: list images: more than 1000 pages")
}

// imageFromRaw is an image of glance's v2 JSON.
func imageFromRaw(raw map[string]json.RawMessage) Image {
	img := Image{Properties: map[string]any{}}
	str := func(k string) string {
		var s string
		_ = json.Unmarshal(raw[k], &s)
		return s
	}
	img.ID, img.Name, img.Status = str("id"), str("name"), str("status")
	img.DiskFormat, img.ContainerFormat = str("disk_format"), str("container_format")
	_ = json.Unmarshal(raw["size"], &img.Size)
	for k, v := range raw {
		if standardImageField(k) {
			continue
		}
		var x any
		if json.Unmarshal(v, &x) == nil {
			img.Properties[k] = x
		}
	}
	return img
}

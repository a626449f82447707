package cloud

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/gophercloud/gophercloud/v2"
)

// Glance reads images from the image service, as nova-compute does when it
// spawns: metadata first, then the data as a stream.
type Glance struct {
	sc *gophercloud.ServiceClient
}

// NewGlance returns a glance v2 client on the session's image endpoint.
func NewGlance(s *Session) (*Glance, error) {
	sc, err := s.ImageClient()
	if err != nil {
		return nil, err
	}
	return &Glance{sc: sc}, nil
}

// Image is what the compute role needs to know of a glance image.
type Image struct {
	ID              string
	Name            string
	Status          string
	DiskFormat      string
	ContainerFormat string
	// Size is the image data's size in bytes (0 when glance has none).
	Size int64
	// Properties are the image's other attributes (vmware_disktype,
	// vmware_adaptertype, hw_*, …), as glance returns them.
	Properties map[string]any
}

// standardImageFields are glance's own attributes; everything else in an
// image's JSON is a property.
func standardImageField(k string) bool {
	switch k {
	case "id", "name", "status", "disk_format", "container_format", "size", "virtual_size",
		"checksum", "os_hash_algo", "os_hash_value", "created_at", "updated_at", "visibility",
		"protected", "os_hidden", "owner", "min_disk", "min_ram", "tags", "self", "file",
		"schema", "direct_url", "locations", "stores":
		return true
	}
	return false
}

// client returns the service client to use: with the caller's token when
// there is one (nova reads images with the user's token from the request
// context), else the session's.
func (g *Glance) client(token string) *gophercloud.ServiceClient {
	if token == "" {
		return g.sc
	}
	pc := &gophercloud.ProviderClient{HTTPClient: g.sc.HTTPClient, UserAgent: g.sc.UserAgent}
	pc.SetToken(token)
	sc := *g.sc
	sc.ProviderClient = pc
	return &sc
}

// Image reads an image's metadata. token is the user's token from the
// request context, or "" for the service's own.
func (g *Glance) Image(ctx context.Context, token, id string) (Image, error) {
	var raw map[string]json.RawMessage
	_, err := g.client(token).Get(ctx, g.sc.ServiceURL("images", id), &raw, &gophercloud.RequestOpts{
		OkCodes: []int{http.StatusOK},
	})
	if err != nil {
		return Image{}, fmt.Errorf("glance: image %s: %w", id, httpError(err))
	}
	return imageFromRaw(raw), nil
}

// Download streams an image's data; the caller closes the reader. The
// size is the Content-Length glance announces (-1 when it announces none).
func (g *Glance) Download(ctx context.Context, token, id string) (io.ReadCloser, int64, error) {
	resp, err := g.client(token).Get(ctx, g.sc.ServiceURL("images", id, "file"), nil, &gophercloud.RequestOpts{
		OkCodes: []int{http.StatusOK}, KeepResponseBody: true,
	})
	if err != nil {
		return nil, 0, fmt.Errorf("glance: download image %s: %w", id, httpError(err))
	}
	size := int64(-1)
	if n, err := strconv.ParseInt(resp.Header.Get("Content-Length"), 10, 64); err == nil {
		size = n
	}
	return resp.Body, size, nil
}

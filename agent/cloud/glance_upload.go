package cloud

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"

	"github.com/gophercloud/gophercloud/v2"
)

// ImageUpdate is a change of an image's metadata, as nova's glance
// client sends it before uploading a snapshot's data.
type ImageUpdate struct {
	// Name, DiskFormat and ContainerFormat are replaced when not empty
	// (the formats only while the image is queued).
	Name            string
	DiskFormat      string
	ContainerFormat string
	// Properties are set (added or replaced).
	Properties map[string]any
	// Remove names properties to delete; those not on the image are
	// skipped.
	Remove []string
}

// UpdateImage changes an image's metadata with a JSON patch (PATCH
// /v2/images/<id>, media type openstack-images-v2.1-json-patch). token is
// the user's token, or "" for the service's own.
func (g *Glance) UpdateImage(ctx context.Context, token, id string, u ImageUpdate) error {
	type op struct {
		Op    string `json:"op"`
		Path  string `json:"path"`
		Value any    `json:"value,omitempty"`
	}
	var ops []op
	for _, f := range [][2]string{{"/name", u.Name}, {"/disk_format", u.DiskFormat}, {"/container_format", u.ContainerFormat}} {
		if f[1] != "" {
			ops = append(ops, op{Op: "replace", Path: f[0], Value: f[1]})
		}
	}
	keys := make([]string, 0, len(u.Properties))
	for k := range u.Properties {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		ops = append(ops, op{Op: "add", Path: "/" + k, Value: u.Properties[k]})
	}
	for _, k := range u.Remove {
		ops = append(ops, op{Op: "remove", Path: "/" + k})
	}
	body, err := json.Marshal(ops)
	if err != nil {
		return fmt.Errorf("glance: update image %s: %w", id, err)
	}
	_, err = g.client(token).Request(ctx, http.MethodPatch, g.sc.ServiceURL("images", id), &gophercloud.RequestOpts{
		RawBody:     bytes.NewReader(body),
		MoreHeaders: map[string]string{"Content-Type": "application/openstack-images-v2.1-json-patch"},
		OkCodes:     []int{http.StatusOK},
	})
	if err != nil {
		return fmt.Errorf("glance: update image %s: %w", id, httpError(err))
	}
	return nil
}

// UploadImage streams an image's data (PUT /v2/images/<id>/file, chunked
// when the size is unknown); glance makes the image active.
func (g *Glance) UploadImage(ctx context.Context, token, id string, data io.Reader) error {
	_, err := g.client(token).Request(ctx, http.MethodPut, g.sc.ServiceURL("images", id, "file"), &gophercloud.RequestOpts{
		RawBody:     io.NopCloser(data), // not a Seeker: gophercloud must not rewind a stream
		MoreHeaders: map[string]string{"Content-Type": "application/octet-stream"},
		OkCodes:     []int{http.StatusNoContent, http.StatusOK, http.StatusCreated},
	})
	if err != nil {
		return fmt.Errorf("glance: upload image %s: %w", id, httpError(err))
	}
	return nil
}

// DeleteImage deletes an image (DELETE /v2/images/<id>); a missing image
// fails with an error matching ErrNotFound.
func (g *Glance) DeleteImage(ctx context.Context, token, id string) error {
	_, err := g.client(token).Delete(ctx, g.sc.ServiceURL("images", id), &gophercloud.RequestOpts{
		OkCodes: []int{http.StatusNoContent, http.StatusOK},
	})
	if err != nil {
		return fmt.Errorf("glance: delete image %s: %w", id, httpError(err))
	}
	return nil
}

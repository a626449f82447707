package cloud

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
)

// ServiceTypeVolumeV3 is cinder's v3 service type in the keystone catalog.
const ServiceTypeVolumeV3 = "volumev3"

// DefaultCinderCatalogInfo is nova's [cinder] catalog_info default:
// <service_type>:<service_name>:<interface>.
const DefaultCinderCatalogInfo = "volumev3::publicURL"

// Cinder microversions nova-compute uses: 3.44 for the attachment API
// (3.27 created it, 3.44 added attachment_complete), 3.48 to read volumes
// with shared_targets.
const (
	CinderAttachMicroversion = "3.44"
	CinderVolumeMicroversion = "3.48"
)

// CinderConfig says where cinder is, as nova's [cinder] section does.
type CinderConfig struct {
	// EndpointTemplate is [cinder] endpoint_template, e.g.
	// "http://cinder:8776/v3/%(project_id)s": %(name)s is replaced by the
	// request context's value. Empty: the catalog.
	EndpointTemplate string
	// CatalogInfo is [cinder] catalog_info,
	// <service_type>:<service_name>:<interface>; empty means
	// DefaultCinderCatalogInfo.
	CatalogInfo string
	// RegionName is [cinder] os_region_name; empty accepts any region.
	RegionName string
}

// Cinder is the compute role's client of the block storage service, as
// nova's nova.volume.cinder.API uses it: every call is made for a request
// context, with the user's token from it (the session's token when the
// context has none, as for nova's periodic tasks), and with the session's
// token as X-Service-Token (nova's [service_user]
// send_service_user_token: cinder lets only a service delete an attachment
// nova still uses). The endpoint is endpoint_template with the context's
// values, else the context's service catalog (nova finds cinder there),
// else the session's catalog.
//
// Errors are *HTTPError values (errors.Is(err, ErrNotFound) for a 404).
type Cinder struct {
	s   *Session
	cfg CinderConfig
}

// NewCinder returns a cinder client on the session.
func NewCinder(s *Session, cfg CinderConfig) (*Cinder, error) {
	if cfg.CatalogInfo == "" {
		cfg.CatalogInfo = DefaultCinderCatalogInfo
	}
	if len(strings.Split(cfg.CatalogInfo, ":")) != 3 {
		return nil, fmt.Errorf("%w: cinder catalog_info %q: want <service_type>:<service_name>:<interface>", ErrAuthConfig, cfg.CatalogInfo)
	}
	if cfg.EndpointTemplate == "" && s.cfg.Token != "" {
		// Token auth has no catalog of its own: the request contexts'
		// catalogs are the only source; tell the operator early.
		s.log.Info().Msg("no cinder endpoint_template with token auth: cinder is looked up in each request's service catalog")
	}
	return &Cinder{s: s, cfg: cfg}, nil
}

// CinderContext is the request context a cinder call is made for.
type CinderContext struct {
	// Token is the user's token (auth_token); empty: the session's.
	Token string
	// Values are the context's fields (RequestContext.to_dict), for
	// endpoint_template's substitution.
	Values map[string]any
	// ServiceCatalog is the context's service_catalog (keystone v2
	// format, as nova-api passes it; the v3 format is understood too).
	ServiceCatalog []any
	// GlobalRequestID is sent as X-OpenStack-Request-ID.
	GlobalRequestID string
}

var templateVar = regexp.MustCompile(`%\((\w+)\)s`)

// substitute is Python's "template % context.to_dict()".
func substitute(tmpl string, values map[string]any) string {
	return templateVar.ReplaceAllStringFunc(tmpl, func(m string) string {
		v, ok := values[templateVar.FindStringSubmatch(m)[1]]
		switch {
		case !ok:
			return m
		case v == nil:
			return "None"
		}
		return fmt.Sprint(v)
	})
}

// catalogEndpoint finds the service in a keystone catalog list (v2
// entries with "<interface>URL" keys, or v3 with interface/url).
func catalogEndpoint(catalog []any, serviceType, serviceName, iface, region string) string {
	v3iface := strings.TrimSuffix(iface, "URL")
	for _, e := range catalog {
		entry, _ := e.(map[string]any)
		if entry == nil || entry["type"] != serviceType {
			continue
		}
		if serviceName != "" && entry["name"] != serviceName {
			continue
		}
		eps, _ := entry["endpoints"].([]any)
		for _, x := range eps {
			ep, _ := x.(map[string]any)
			if ep == nil {
				continue
			}
			if region != "" && ep["region"] != region && ep["region_id"] != region {
				continue
			}
			if u, _ := ep[v3iface+"URL"].(string); u != "" {
				return u
			}
			if ep["interface"] == v3iface {
				if u, _ := ep["url"].(string); u != "" {
					return u
				}
			}
		}
	}
	return ""
}

// endpoint is nova's _get_cinderclient_parameters.
func (c *Cinder) endpoint(cc CinderContext) (string, error) {
	if c.cfg.EndpointTemplate != "" {
		return gophercloud.NormalizeURL(substitute(c.cfg.EndpointTemplate, cc.Values)), nil
	}
	parts := strings.Split(c.cfg.CatalogInfo, ":")
	if u := catalogEndpoint(cc.ServiceCatalog, parts[0], parts[1], parts[2], c.cfg.RegionName); u != "" {
		return gophercloud.NormalizeURL(u), nil
	}
	if c.s.cfg.Token != "" {
		return "", fmt.Errorf("%w: no cinder endpoint: no endpoint_template, and the request's service catalog has no %s", ErrAuthConfig, parts[0])
	}
	return c.s.endpoint(parts[0])
}

// client returns a service client for the call: the user's token, or the
// session's.
func (c *Cinder) client(cc CinderContext) (*gophercloud.ServiceClient, error) {
	ep, err := c.endpoint(cc)
	if err != nil {
		return nil, err
	}
	pc := c.s.provider
	if cc.Token != "" {
		pc = &gophercloud.ProviderClient{HTTPClient: c.s.provider.HTTPClient, UserAgent: c.s.provider.UserAgent}
		pc.SetToken(cc.Token)
	}
	return &gophercloud.ServiceClient{ProviderClient: pc, Endpoint: ep, ResourceBase: ep, Type: "block-storage"}, nil
}

// do sends one request at microversion mv; out, if not nil, gets the JSON
// response.
func (c *Cinder) do(ctx context.Context, cc CinderContext, op, method, mv string, body, out any, ok []int, path ...string) error {
	sc, err := c.client(cc)
	if err != nil {
		return fmt.Errorf("cinder: %s: %w", op, err)
	}
	headers := map[string]string{"OpenStack-API-Version": "volume " + mv}
	if t := c.s.provider.Token(); t != "" {
		headers["X-Service-Token"] = t
	}
	if cc.GlobalRequestID != "" {
		headers["X-OpenStack-Request-ID"] = cc.GlobalRequestID
	}
	opts := &gophercloud.RequestOpts{OkCodes: ok, MoreHeaders: headers, JSONBody: body}
	if out != nil {
		opts.JSONResponse = out
	}
	if _, err := sc.Request(ctx, method, sc.ServiceURL(path...), opts); err != nil {
		return fmt.Errorf("cinder: %s: %w", op, httpError(err))
	}
	return nil
}

// VolumeAttachmentRef is one of a volume's attachments.
type VolumeAttachmentRef struct {
	ServerID     string `json:"server_id"`
	AttachmentID string `json:"attachment_id"`
	Device       string `json:"device"`
	HostName     string `json:"host_name"`
}

// Volume is a cinder volume with the fields nova reads.
type Volume struct {
	ID               string                `json:"id"`
	Name             string                `json:"name"`
	Status           string                `json:"status"`
	Size             int64                 `json:"size"`
	AvailabilityZone string                `json:"availability_zone"`
	Multiattach      bool                  `json:"multiattach"`
	Bootable         string                `json:"bootable"`
	VolumeType       string                `json:"volume_type"`
	Attachments      []VolumeAttachmentRef `json:"attachments"`
	MigrationStatus  *string               `json:"migration_status"`
	SharedTargets    bool                  `json:"shared_targets"`
	ServiceUUID      string                `json:"service_uuid"`
}

// AttachStatus is nova's attach_status of the volume: "attached" when it
// has attachments, else "detached".
func (v Volume) AttachStatus() string {
	if len(v.Attachments) > 0 {
		return "attached"
	}
	return "detached"
}

// Volume is GET /volumes/{id} at 3.48 (nova's volume_api.get with
// microversion 3.48).
func (c *Cinder) Volume(ctx context.Context, cc CinderContext, id string) (Volume, error) {
	var r struct {
		Volume Volume `json:"volume"`
	}
	err := c.do(ctx, cc, "get volume "+id, http.MethodGet, CinderVolumeMicroversion, nil, &r, []int{http.StatusOK}, "volumes", id)
	return r.Volume, err
}

// translateConnectionInfo is nova's _translate_attachment_ref: the
// attachment's flat connection_info back into the old style
// {driver_volume_type, data, status, instance, attached_at, detached_at}.
func translateConnectionInfo(att map[string]any) map[string]any {
	ci, _ := att["connection_info"].(map[string]any)
	if len(ci) == 0 {
		return nil
	}
	data := make(map[string]any, len(ci))
	for k, v := range ci {
		if k != "attachment_id" && k != "driver_volume_type" {
			data[k] = v
		}
	}
	return map[string]any{
		"driver_volume_type": ci["driver_volume_type"],
		"data":               data,
		"status":             att["status"],
		"instance":           att["instance"],
		"attached_at":        att["attached_at"],
		"detached_at":        att["detached_at"],
	}
}

// AttachmentUpdate is PUT /attachments/{id} at 3.44 with the host
// connector (nova's attachment_update: the mountpoint, if given, is put
// into the connector). It returns the connection info, old style.
func (c *Cinder) AttachmentUpdate(ctx context.Context, cc CinderContext, id string, connector map[string]any, mountpoint string) (map[string]any, error) {
	conn := connector
	if _, has := connector["mountpoint"]; mountpoint != "" && !has {
		conn = make(map[string]any, len(connector)+1)
		for k, v := range connector {
			conn[k] = v
		}
		conn["mountpoint"] = mountpoint
	}
	var r struct {
		Attachment map[string]any `json:"attachment"`
	}
	err := c.do(ctx, cc, "update attachment "+id, http.MethodPut, CinderAttachMicroversion,
		map[string]any{"attachment": map[string]any{"connector": conn}}, &r, []int{http.StatusOK}, "attachments", id)
	if err != nil {
		return nil, err
	}
	ci := translateConnectionInfo(r.Attachment)
	if ci == nil {
		return nil, fmt.Errorf("cinder: update attachment %s: the answer has no connection_info", id)
	}
	return ci, nil
}

// Attachment is GET /attachments/{id} at 3.44 (nova's attachment_get):
// the attachment with its connection info, old style, under
// "connection_info".
func (c *Cinder) Attachment(ctx context.Context, cc CinderContext, id string) (map[string]any, error) {
	var r struct {
		Attachment map[string]any `json:"attachment"`
	}
	if err := c.do(ctx, cc, "get attachment "+id, http.MethodGet, CinderAttachMicroversion, nil, &r, []int{http.StatusOK}, "attachments", id); err != nil {
		return nil, err
	}
	out := map[string]any{}
	for k, v := range r.Attachment {
		out[k] = v
	}
	out["connection_info"] = translateConnectionInfo(r.Attachment)
	return out, nil
}

// AttachmentComplete is POST /attachments/{id}/action os-complete at 3.44:
// the volume becomes in-use.
func (c *Cinder) AttachmentComplete(ctx context.Context, cc CinderContext, id string) error {
	return c.do(ctx, cc, "complete attachment "+id, http.MethodPost, CinderAttachMicroversion,
		map[string]any{"os-complete": nil}, nil, []int{http.StatusOK, http.StatusNoContent}, "attachments", id, "action")
}

// attachmentDeleteAttempts and attachmentDeleteBackoff are nova's retry of
// attachment_delete on a 500 or 504 (5 attempts).
const attachmentDeleteAttempts = 5

var attachmentDeleteBackoff = time.Second //nolint:gochecknoglobals // shortened by tests

// AttachmentDelete is DELETE /attachments/{id} at 3.44 (nova's
// attachment_delete): retried on a 500 or 504; a 404 is an error wrapping
// ErrNotFound (nova logs it and goes on; so do the callers).
func (c *Cinder) AttachmentDelete(ctx context.Context, cc CinderContext, id string) error {
	var err error
	for attempt := 1; attempt <= attachmentDeleteAttempts; attempt++ {
		err = c.do(ctx, cc, "delete attachment "+id, http.MethodDelete, CinderAttachMicroversion, nil, nil, []int{http.StatusOK, http.StatusNoContent}, "attachments", id)
		var h *HTTPError
		if err == nil || !errors.As(err, &h) || (h.Status != http.StatusInternalServerError && h.Status != http.StatusGatewayTimeout) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(attachmentDeleteBackoff):
		}
	}
	return err
}

// DeleteVolume is DELETE /volumes/{id} (nova's volume_api.delete, for a
// BDM's delete_on_termination).
func (c *Cinder) DeleteVolume(ctx context.Context, cc CinderContext, id string) error {
	return c.do(ctx, cc, "delete volume "+id, http.MethodDelete, "3.0", nil, nil, []int{http.StatusAccepted, http.StatusOK, http.StatusNoContent}, "volumes", id)
}

// volumeAction posts {name: body} to /volumes/{id}/action.
func (c *Cinder) volumeAction(ctx context.Context, cc CinderContext, id, name string, body, out any) error {
	return c.do(ctx, cc, name+" volume "+id, http.MethodPost, "3.0", map[string]any{name: body}, out,
		[]int{http.StatusOK, http.StatusAccepted, http.StatusNoContent}, "volumes", id, "action")
}

// RollDetaching is os-roll_detaching: a volume left "detaching" goes back
// to in-use.
func (c *Cinder) RollDetaching(ctx context.Context, cc CinderContext, id string) error {
	return c.volumeAction(ctx, cc, id, "os-roll_detaching", nil, nil)
}

// TerminateConnection is os-terminate_connection (the pre-3.44 flow, for
// BDMs without an attachment id).
func (c *Cinder) TerminateConnection(ctx context.Context, cc CinderContext, id string, connector map[string]any) error {
	return c.volumeAction(ctx, cc, id, "os-terminate_connection", map[string]any{"connector": connector}, nil)
}

// Detach is os-detach (the pre-3.44 flow).
func (c *Cinder) Detach(ctx context.Context, cc CinderContext, id, attachmentID string) error {
	body := map[string]any{}
	if attachmentID != "" {
		body["attachment_id"] = attachmentID
	}
	return c.volumeAction(ctx, cc, id, "os-detach", body, nil)
}

// MigrateVolumeCompletion is os-migrate_volume_completion: it returns the
// volume id nova keeps in the BDM (save_volume_id).
func (c *Cinder) MigrateVolumeCompletion(ctx context.Context, cc CinderContext, oldID, newID string, failed bool) (string, error) {
	var r struct {
		SaveVolumeID string `json:"save_volume_id"`
	}
	err := c.volumeAction(ctx, cc, oldID, "os-migrate_volume_completion", map[string]any{"new_volume": newID, "error": failed}, &r)
	return r.SaveVolumeID, err
}

// CinderStatus returns the HTTP status of a cinder error (0 if none).
func CinderStatus(err error) int {
	var h *HTTPError
	if errors.As(err, &h) {
		return h.Status
	}
	return 0
}

// AttachmentCreate is POST /attachments at 3.44 (nova's
// attachment_create): a new attachment of the volume to the instance.
// Without a connector the volume is only reserved; with one (the
// mountpoint, if given, put into it) cinder also answers the connection
// info, old style (nil without a connector).
func (c *Cinder) AttachmentCreate(ctx context.Context, cc CinderContext, volumeID, instanceUUID string, connector map[string]any, mountpoint string) (string, map[string]any, error) {
	body := map[string]any{"volume_uuid": volumeID, "instance_uuid": instanceUUID}
	if connector != nil {
		conn := make(map[string]any, len(connector)+1)
		for k, v := range connector {
			conn[k] = v
		}
		if _, has := conn["mountpoint"]; mountpoint != "" && !has {
			conn["mountpoint"] = mountpoint
		}
		body["connector"] = conn
	}
	var r struct {
		Attachment map[string]any `json:"attachment"`
	}
	if err := c.do(ctx, cc, "create attachment of volume "+volumeID, http.MethodPost, CinderAttachMicroversion,
		map[string]any{"attachment": body}, &r, []int{http.StatusOK, http.StatusCreated, http.StatusAccepted}, "attachments"); err != nil {
		return "", nil, err
	}
	id, _ := r.Attachment["id"].(string)
	if id == "" {
		return "", nil, fmt.Errorf("cinder: create attachment of volume %s: the answer has no id", volumeID)
	}
	return id, translateConnectionInfo(r.Attachment), nil
}

// VolumeCreate is what nova's volume_api.create sends: the size in GiB,
// name and description, and optionally the snapshot or image to create
// the volume from, its type and availability zone.
type VolumeCreate struct {
	Size             int64
	Name             string
	Description      string
	SnapshotID       string
	ImageID          string
	VolumeType       string
	AvailabilityZone string
}

// CreateVolume is POST /volumes at 3.0 (nova's volume_api.create, through
// cinderclient's volumes.create): it answers the volume as created
// (status "creating").
func (c *Cinder) CreateVolume(ctx context.Context, cc CinderContext, spec VolumeCreate) (Volume, error) {
	opt := func(s string) any {
		if s == "" {
			return nil
		}
		return s
	}
	body := map[string]any{
		"size": spec.Size, "name": spec.Name, "description": spec.Description, "metadata": map[string]any{},
		"snapshot_id": opt(spec.SnapshotID), "imageRef": opt(spec.ImageID), "volume_type": opt(spec.VolumeType),
		"availability_zone": opt(spec.AvailabilityZone), "source_volid": nil, "consistencygroup_id": nil,
	}
	var r struct {
		Volume Volume `json:"volume"`
	}
	err := c.do(ctx, cc, "create volume", http.MethodPost, "3.0", map[string]any{"volume": body}, &r,
		[]int{http.StatusOK, http.StatusAccepted}, "volumes")
	return r.Volume, err
}

// Snapshot is a cinder volume snapshot with the fields nova reads.
type Snapshot struct {
	ID       string `json:"id"`
	VolumeID string `json:"volume_id"`
	Status   string `json:"status"`
	Size     int64  `json:"size"`
}

// Snapshot is GET /snapshots/{id} (nova's volume_api.get_snapshot).
func (c *Cinder) Snapshot(ctx context.Context, cc CinderContext, id string) (Snapshot, error) {
	var r struct {
		Snapshot Snapshot `json:"snapshot"`
	}
	err := c.do(ctx, cc, "get snapshot "+id, http.MethodGet, "3.0", nil, &r, []int{http.StatusOK}, "snapshots", id)
	return r.Snapshot, err
}

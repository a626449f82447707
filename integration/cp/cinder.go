//go:build integration

package cp

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"time"
)

// Cinder sends a request to cinder-api (path below /v3/<project>, e.g. "/volumes/detail";
// CinderURL includes the project) at the microversion of env.json and returns the
// decoded JSON object (nil for an empty body). The token is the control plane's
// ("admin:admin": user admin of project admin, an admin). For another user or project
// use Do with a header map carrying X-Auth-Token "user:project" and a URL
// below /v3 without a project id (cinder routes every resource without one).
func (c *ControlPlane) Cinder(ctx context.Context, method, path string, body any) (map[string]any, error) {
	if c.CinderURL == "" {
		return nil, errors.New("cp: env.json has no cinder_url (a control plane started before cinder was added: re-run up.sh)")
	}
	h := http.Header{}
	mv := c.CinderMicroversion
	if mv == "" {
		mv = "3.0"
	}
	h.Set("OpenStack-API-Version", "volume "+mv)
	return c.Do(ctx, method, c.CinderURL+path, body, h)
}

// CinderGET is Cinder(ctx, "GET", path, nil).
func (c *ControlPlane) CinderGET(ctx context.Context, path string) (map[string]any, error) {
	return c.Cinder(ctx, http.MethodGet, path, nil)
}

// CinderPOST is Cinder(ctx, "POST", path, body); body is marshalled unless it is []byte.
func (c *ControlPlane) CinderPOST(ctx context.Context, path string, body any) (map[string]any, error) {
	return c.Cinder(ctx, http.MethodPost, path, body)
}

// CinderDELETE is Cinder(ctx, "DELETE", path, nil).
func (c *ControlPlane) CinderDELETE(ctx context.Context, path string) (map[string]any, error) {
	return c.Cinder(ctx, http.MethodDelete, path, nil)
}

// CinderManage runs cinder-manage with the control plane's cinder.conf and returns its
// stdout (e.g. CinderManage(ctx, "service", "list")). Each run costs seconds of Python
// start-up: prefer the REST API in tests.
func (c *ControlPlane) CinderManage(ctx context.Context, args ...string) (string, error) {
	if len(c.CinderManageCmd) == 0 {
		return "", errors.New("cp: env.json has no cinder_manage (re-run up.sh)")
	}
	argv := append(append([]string{}, c.CinderManageCmd...), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = cleanEnv()
	return run(cmd)
}

// CinderVolumeStatus polls GET /volumes/<id> until the volume's status is none of
// transient (e.g. "creating", "deleting") and returns that status; a volume that
// disappears gives "deleted". It gives up when ctx ends.
func (c *ControlPlane) CinderVolumeStatus(ctx context.Context, id string, transient ...string) (string, error) {
	for {
		v, err := c.CinderGET(ctx, "/volumes/"+id)
		if StatusCode(err) == http.StatusNotFound {
			return "deleted", nil
		}
		if err != nil {
			return "", err
		}
		vol, _ := v["volume"].(map[string]any)
		st, _ := vol["status"].(string)
		wait := false
		for _, t := range transient {
			wait = wait || st == t
		}
		if !wait {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("volume %s still %q: %w", id, st, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

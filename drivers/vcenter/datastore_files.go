package vcenter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"strings"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

// ErrFileExists reports that a datastore file or directory already exists
// (vSphere fault FileAlreadyExists).
var ErrFileExists = errors.New("vcenter file already exists")

// DatastorePath names a file or directory on a datastore, as vSphere writes
// it: "[datastore] dir/file.vmdk". Path is relative to the datastore root,
// uses forward slashes and may be empty (the root).
type DatastorePath struct {
	Datastore string
	Path      string
}

// String returns "[Datastore] Path", or "[Datastore]" when Path is empty.
func (p DatastorePath) String() string {
	if p.Path == "" {
		return "[" + p.Datastore + "]"
	}
	return "[" + p.Datastore + "] " + p.Path
}

// Join returns p with elem appended to its path.
func (p DatastorePath) Join(elem ...string) DatastorePath {
	return DatastorePath{Datastore: p.Datastore, Path: path.Join(append([]string{p.Path}, elem...)...)}
}

// Dir returns the directory holding p ("" path for a file at the root).
func (p DatastorePath) Dir() DatastorePath {
	d := path.Dir(p.Path)
	if d == "." || d == "/" {
		d = ""
	}
	return DatastorePath{Datastore: p.Datastore, Path: d}
}

// Base returns the last element of p's path.
func (p DatastorePath) Base() string { return path.Base(p.Path) }

// ParseDatastorePath parses "[datastore] path". The path part may be empty;
// surrounding blanks are trimmed. A string without a bracketed datastore
// name is an error.
func ParseDatastorePath(s string) (DatastorePath, error) {
	s = strings.TrimSpace(s)
	rest, ok := strings.CutPrefix(s, "[")
	if !ok {
		return DatastorePath{}, fmt.Errorf("vcenter: datastore path %q does not start with [datastore]", s)
	}
	ds, p, ok := strings.Cut(rest, "]")
	if !ok || ds == "" {
		return DatastorePath{}, fmt.Errorf("vcenter: datastore path %q has no datastore name", s)
	}
	return DatastorePath{Datastore: ds, Path: strings.TrimSpace(p)}, nil
}

// datacenterRef resolves the datacenter inventory path dc ("DC0", or
// "folder/DC0" for a datacenter inside a folder). The first call per
// datacenter costs 1 round trip (FindByInventoryPath); later calls none.
func (s *Session) datacenterRef(ctx context.Context, c *vim25.Client, dc string) (types.ManagedObjectReference, error) {
	if v, ok := s.dcRefs.Load(dc); ok {
		return v.(types.ManagedObjectReference), nil
	}
	res, err := methods.FindByInventoryPath(ctx, c, &types.FindByInventoryPath{
		This:          *c.ServiceContent.SearchIndex,
		InventoryPath: dc,
	})
	if err != nil {
		return types.ManagedObjectReference{}, fmt.Errorf("find datacenter %q: %w", dc, err)
	}
	if res.Returnval == nil || res.Returnval.Type != "Datacenter" {
		return types.ManagedObjectReference{}, fmt.Errorf("datacenter %q: %w", dc, ErrNotFound)
	}
	s.dcRefs.Store(dc, *res.Returnval)
	return *res.Returnval, nil
}

// forgetDatacenter drops a cached datacenter reference when err shows that
// vCenter no longer knows it.
func (s *Session) forgetDatacenter(dc string, ref types.ManagedObjectReference, err error) {
	var nf *types.ManagedObjectNotFound
	if _, ok := fault.As(err, &nf); ok && nf.Obj == ref {
		s.dcRefs.Delete(dc)
	}
}

// fileOp returns the logged-in client and the datacenter reference for a
// file operation.
func (s *Session) fileOp(ctx context.Context, op, dc string) (*vim25.Client, types.ManagedObjectReference, error) {
	c := s.activeClient()
	if c == nil {
		return nil, types.ManagedObjectReference{}, wrapErr(op, ErrNotLoggedIn)
	}
	ref, err := s.datacenterRef(ctx, c, dc)
	if err != nil {
		return nil, types.ManagedObjectReference{}, wrapErr(op, err)
	}
	return c, ref, nil
}

// fileTask runs one FileManager or VirtualDiskManager task in datacenter
// dc: it resolves dc, starts the task with start (given the client and
// dc's reference), waits for it, forgets dc's reference when vCenter says
// it is stale, and wraps the error as wrapFileErr does. A fault of
// ignore's type counts as success (a missing file for a delete).
func (s *Session) fileTask(ctx context.Context, op, dc string, ignore types.BaseMethodFault,
	start func(c *vim25.Client, dcRef types.ManagedObjectReference) (types.ManagedObjectReference, error)) error {
	c, dcRef, err := s.fileOp(ctx, op, dc)
	if err != nil {
		return err
	}
	_, err = s.runTask(ctx, c, op, func() (types.ManagedObjectReference, error) { return start(c, dcRef) })
	if err != nil && ignore != nil && fault.Is(err, ignore) {
		return nil
	}
	s.forgetDatacenter(dc, dcRef, err)
	return wrapFileErr(op, err)
}

// wrapFileErr is wrapErr plus the file faults: FileNotFound matches
// ErrNotFound, FileAlreadyExists matches ErrFileExists.
func wrapFileErr(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case fault.Is(err, &types.FileNotFound{}):
		return fmt.Errorf("vcenter: %s: %w: %w", op, ErrNotFound, err)
	case fault.Is(err, &types.FileAlreadyExists{}):
		return fmt.Errorf("vcenter: %s: %w: %w", op, ErrFileExists, err)
	default:
		return wrapErr(op, err)
	}
}

// MakeDirectory creates the directory p and any missing parents on the
// datastore. It succeeds if the directory already exists. dc is the
// datacenter's inventory path (its name when it is not in a folder).
//
// Cost: 1 round trip (MakeDirectory), plus 1 (FindByInventoryPath) the first
// time a Session uses dc.
func (s *Session) MakeDirectory(ctx context.Context, dc string, p DatastorePath) error {
	op := fmt.Sprintf("make directory %s", p)
	c, dcRef, err := s.fileOp(ctx, op, dc)
	if err != nil {
		return err
	}
	_, err = methods.MakeDirectory(ctx, c, &types.MakeDirectory{
		This:                    *c.ServiceContent.FileManager,
		Name:                    p.String(),
		Datacenter:              &dcRef,
		CreateParentDirectories: types.NewBool(true),
	})
	if err != nil && fault.Is(err, &types.FileAlreadyExists{}) {
		return nil
	}
	s.forgetDatacenter(dc, dcRef, err)
	return wrapFileErr(op, err)
}

// DeleteDatastoreFile deletes the file or directory (with its contents) p.
// A missing p counts as deleted.
//
// Cost: 1 round trip (DeleteDatastoreFile_Task) plus the task wait (see
// waitDiskTask; usually 1-2 RetrievePropertiesEx).
func (s *Session) DeleteDatastoreFile(ctx context.Context, dc string, p DatastorePath) error {
	op := fmt.Sprintf("delete %s", p)
	return s.fileTask(ctx, op, dc, &types.FileNotFound{}, func(c *vim25.Client, dcRef types.ManagedObjectReference) (types.ManagedObjectReference, error) {
		res, err := methods.DeleteDatastoreFile_Task(ctx, c, &types.DeleteDatastoreFile_Task{
			This:       *c.ServiceContent.FileManager,
			Name:       p.String(),
			Datacenter: &dcRef,
		})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return res.Returnval, nil
	})
}

// MoveDatastoreFile moves (renames) the file or directory src to dst, both in
// datacenter dc. With force an existing dst is replaced; without it an
// existing dst fails with an error wrapping ErrFileExists. A missing src
// fails with ErrNotFound. Moving a lone .vmdk descriptor leaves its extent
// (-flat.vmdk) behind; move the directory holding a disk instead.
//
// Cost: 1 round trip plus the task wait.
func (s *Session) MoveDatastoreFile(ctx context.Context, dc string, src, dst DatastorePath, force bool) error {
	op := fmt.Sprintf("move %s to %s", src, dst)
	return s.fileTask(ctx, op, dc, nil, func(c *vim25.Client, dcRef types.ManagedObjectReference) (types.ManagedObjectReference, error) {
		res, err := methods.MoveDatastoreFile_Task(ctx, c, &types.MoveDatastoreFile_Task{
			This:                  *c.ServiceContent.FileManager,
			SourceName:            src.String(),
			SourceDatacenter:      &dcRef,
			DestinationName:       dst.String(),
			DestinationDatacenter: &dcRef,
			Force:                 types.NewBool(force),
		})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return res.Returnval, nil
	})
}

// CopyDatastoreFile copies the file src to dst within datacenter dc, with
// the same error rules as MoveDatastoreFile. Copy virtual disks with
// CopyVirtualDisk, which copies the extents too.
//
// Cost: 1 round trip plus the task wait.
func (s *Session) CopyDatastoreFile(ctx context.Context, dc string, src, dst DatastorePath, force bool) error {
	op := fmt.Sprintf("copy %s to %s", src, dst)
	return s.fileTask(ctx, op, dc, nil, func(c *vim25.Client, dcRef types.ManagedObjectReference) (types.ManagedObjectReference, error) {
		res, err := methods.CopyDatastoreFile_Task(ctx, c, &types.CopyDatastoreFile_Task{
			This:                  *c.ServiceContent.FileManager,
			SourceName:            src.String(),
			SourceDatacenter:      &dcRef,
			DestinationName:       dst.String(),
			DestinationDatacenter: &dcRef,
			Force:                 types.NewBool(force),
		})
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		return res.Returnval, nil
	})
}

// datastoreURL returns the datastore HTTP URL of p: https://vc/folder/<path>
// ?dcPath=<dc>&dsName=<ds>.
func (s *Session) datastoreURL(dc string, p DatastorePath) *url.URL {
	u := s.soap.URL()
	u.User = nil
	u.Path = "/folder/" + strings.TrimPrefix(p.Path, "/")
	u.RawPath = ""
	u.RawQuery = url.Values{"dcPath": {dc}, "dsName": {p.Datastore}}.Encode()
	u.Fragment = ""
	return u
}

// doHTTP sends req with the session's cookie. A 401 or 403 answer triggers
// the shared re-login and fails with an error wrapping ErrNotAuthenticated;
// the request is not retried (its body may be spent), so the caller may
// simply try again. check inspects every other response.
func (s *Session) doHTTP(ctx context.Context, op string, req *http.Request, check func(*http.Response) error) error {
	if s.activeClient() == nil {
		return wrapErr(op, ErrNotLoggedIn)
	}
	gen := s.generation()
	var unauth bool
	err := s.soap.Do(ctx, req, func(res *http.Response) error {
		if res.StatusCode == http.StatusUnauthorized || res.StatusCode == http.StatusForbidden {
			unauth = true
			return fmt.Errorf("%s %s: %s", req.Method, req.URL.Path, res.Status)
		}
		return check(res)
	})
	if unauth {
		if rerr := s.relogin(ctx, gen); rerr != nil {
			s.log.Warn().Err(rerr).Msg("re-login after datastore HTTP 401 failed")
		}
		return fmt.Errorf("vcenter: %s: %w: %w", op, ErrNotAuthenticated, err)
	}
	return wrapErr(op, err)
}

// Upload writes size bytes from r to the datastore file p through vCenter's
// datastore HTTP endpoint (/folder), replacing any existing file. The
// directory must exist on a real vCenter (the simulator creates it). size
// must be the exact length of r. It sends no SOAP call: one HTTP PUT
// authenticated by the session cookie.
func (s *Session) Upload(ctx context.Context, dc string, p DatastorePath, r io.Reader, size int64) error {
	op := fmt.Sprintf("upload %s", p)
	if size < 0 {
		return wrapErr(op, errors.New("size must be known"))
	}
	body := io.NopCloser(r)
	if size == 0 {
		body = http.NoBody
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, s.datastoreURL(dc, p).String(), body)
	if err != nil {
		return wrapErr(op, err)
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	return s.doHTTP(ctx, op, req, func(res *http.Response) error {
		_, _ = io.Copy(io.Discard, res.Body)
		switch res.StatusCode {
		case http.StatusOK, http.StatusCreated, http.StatusNoContent:
			return nil
		case http.StatusNotFound:
			return fmt.Errorf("PUT: %s: %w", res.Status, ErrNotFound)
		default:
			return fmt.Errorf("PUT: %s", res.Status)
		}
	})
}

// Download reads the datastore file p through the datastore HTTP endpoint
// and returns its content; a missing file fails with an error wrapping
// ErrNotFound. It is meant for small files (descriptors, logs): the content
// is held in memory. It sends no SOAP call: one HTTP GET.
func (s *Session) Download(ctx context.Context, dc string, p DatastorePath, limit int64) ([]byte, error) {
	op := fmt.Sprintf("download %s", p)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.datastoreURL(dc, p).String(), nil)
	if err != nil {
		return nil, wrapErr(op, err)
	}
	var data []byte
	err = s.doHTTP(ctx, op, req, func(res *http.Response) error {
		switch res.StatusCode {
		case http.StatusOK:
		case http.StatusNotFound:
			return fmt.Errorf("GET: %s: %w", res.Status, ErrNotFound)
		default:
			return fmt.Errorf("GET: %s", res.Status)
		}
		var rerr error
		data, rerr = io.ReadAll(io.LimitReader(res.Body, limit+1))
		if rerr == nil && int64(len(data)) > limit {
			rerr = fmt.Errorf("file larger than %d bytes", limit)
		}
		return rerr
	})
	return data, err
}

// FileExists reports whether the datastore file or directory p exists. It
// sends no SOAP call: one HTTP HEAD to the datastore endpoint.
func (s *Session) FileExists(ctx context.Context, dc string, p DatastorePath) (bool, error) {
	op := fmt.Sprintf("stat %s", p)
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, s.datastoreURL(dc, p).String(), nil)
	if err != nil {
		return false, wrapErr(op, err)
	}
	var exists bool
	err = s.doHTTP(ctx, op, req, func(res *http.Response) error {
		switch res.StatusCode {
		case http.StatusOK:
			exists = true
			return nil
		case http.StatusNotFound:
			return nil
		default:
			return fmt.Errorf("HEAD: %s", res.Status)
		}
	})
	return exists, err
}

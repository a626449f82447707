package compute

import (
	"context"
	"errors"
	"fmt"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/vcagent/vcagent/drivers/vcenter"
)

// cacheStore is what the image cache ageing needs of the datastores: the
// sub-folders of a folder (nova's ds_util.get_sub_folders), and making and
// deleting folders.
type cacheStore interface {
	SubFolders(ctx context.Context, ds vcenter.Datastore, p vcenter.DatastorePath) ([]string, error)
	MakeDirectory(ctx context.Context, dc string, p vcenter.DatastorePath) error
	DeleteDatastoreFile(ctx context.Context, dc string, p vcenter.DatastorePath) error
}

// govmomiSession is what browsing a datastore needs of *vcenter.Session.
type govmomiSession interface {
	Client() *vim25.Client
	WaitTask(ctx context.Context, op string, t vcenter.Ref) (vcenter.TaskResult, error)
	MakeDirectory(ctx context.Context, dc string, p vcenter.DatastorePath) error
	DeleteDatastoreFile(ctx context.Context, dc string, p vcenter.DatastorePath) error
}

// sessionStore lists folders through the datastore's browser
// (SearchDatastore_Task), as nova's VMware driver does.
type sessionStore struct{ govmomiSession }

// cacheStoreOf returns the hypervisor's cacheStore, or nil when it has
// none (the ageing then does nothing).
func cacheStoreOf(hv any) cacheStore {
	switch s := hv.(type) {
	case cacheStore:
		return s
	case govmomiSession:
		return sessionStore{s}
	}
	return nil
}

// SubFolders returns the names of the folders directly in p; none when p
// does not exist. Cost: 1 RetrievePropertiesEx (the datastore's browser),
// SearchDatastore_Task and its wait.
func (s sessionStore) SubFolders(ctx context.Context, ds vcenter.Datastore, p vcenter.DatastorePath) ([]string, error) {
	c := s.Client()
	if c == nil {
		return nil, fmt.Errorf("list %s: %w", p, vcenter.ErrNotLoggedIn)
	}
	var d mo.Datastore
	if err := property.DefaultCollector(c).RetrieveOne(ctx, ds.Ref.Reference(), []string{"browser"}, &d); err != nil {
		return nil, fmt.Errorf("list %s: datastore browser: %w", p, err)
	}
	res, err := methods.SearchDatastore_Task(ctx, c, &types.SearchDatastore_Task{
		This:          d.Browser,
		DatastorePath: p.String(),
		SearchSpec:    &types.HostDatastoreBrowserSearchSpec{Query: []types.BaseFileQuery{&types.FolderFileQuery{}}, MatchPattern: []string{"*"}},
	})
	if err != nil {
		if fault.Is(err, &types.FileNotFound{}) {
			return nil, nil
		}
		return nil, fmt.Errorf("list %s: %w", p, err)
	}
	tr, err := s.WaitTask(ctx, "list "+p.String(), vcenter.Ref{Type: res.Returnval.Type, Value: res.Returnval.Value})
	if err != nil {
		var te *vcenter.TaskError
		if errors.As(err, &te) && te.Fault == "FileNotFound" || fault.Is(err, &types.FileNotFound{}) {
			return nil, nil
		}
		return nil, err
	}
	var files []types.BaseFileInfo
	switch r := tr.Result.(type) {
	case types.HostDatastoreBrowserSearchResults:
		files = r.File
	case *types.HostDatastoreBrowserSearchResults:
		files = r.File
	}
	out := make([]string, 0, len(files))
	for _, f := range files {
		out = append(out, f.GetFileInfo().Path)
	}
	return out, nil
}

package vcenter

import (
	"context"
	"fmt"
	"strings"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

// EnsureFolderPath returns the VM folder at path below the virtual machine
// folder (vmFolder) of the datacenter, creating the folders that are
// missing, e.g. EnsureFolderPath(ctx, "DC0", "OpenStack", "Project (p1)",
// "Instances"). datacenter is the datacenter's inventory path: its name, or
// "folder/name" for a datacenter inside folders. A folder that another client
// creates at the same time (DuplicateName) counts as created. Folder names
// must not be empty; "/" and "%" in names are escaped as vCenter does.
//
// Cost: 1 SOAP round trip when the folders exist (FindByInventoryPath);
// otherwise 2 plus one CreateFolder per path element (at most one more per
// element when vCenter reports a DuplicateName without the existing
// folder). Safe for concurrent use.
func (s *Session) EnsureFolderPath(ctx context.Context, datacenter string, path ...string) (Ref, error) {
	op := fmt.Sprintf("ensure folder %q in datacenter %q", strings.Join(path, "/"), datacenter)
	c := s.activeClient()
	if c == nil {
		return Ref{}, wrapErr(op, ErrNotLoggedIn)
	}
	if datacenter == "" {
		return Ref{}, wrapErr(op, fmt.Errorf("%w: empty datacenter", ErrInvalidArgument))
	}
	escaped := make([]string, len(path))
	for i, name := range path {
		if name == "" {
			return Ref{}, wrapErr(op, fmt.Errorf("%w: empty folder name", ErrInvalidArgument))
		}
		escaped[i] = escapeName(name)
	}

	root := strings.TrimSuffix(datacenter, "/") + "/vm"
	full := strings.Join(append([]string{root}, escaped...), "/")
	ref, err := findByInventoryPath(ctx, c, full)
	if err != nil {
		return Ref{}, wrapErr(op, err)
	}
	if ref != nil {
		return refFrom(*ref), nil
	}

	parent, err := findByInventoryPath(ctx, c, root)
	switch {
	case err != nil:
		return Ref{}, wrapErr(op, err)
	case parent == nil:
		return Ref{}, wrapErr(op, fmt.Errorf("datacenter %q: %w", datacenter, ErrNotFound))
	}
	folder := *parent
	for _, name := range path {
		folder, err = s.createFolder(ctx, c, folder, name)
		if err != nil {
			return Ref{}, wrapErr(op, err)
		}
	}
	return refFrom(folder), nil
}

// createFolder creates the folder name in parent, or returns the existing
// one of that name.
func (s *Session) createFolder(ctx context.Context, c *vim25.Client, parent types.ManagedObjectReference, name string) (types.ManagedObjectReference, error) {
	res, err := methods.CreateFolder(ctx, c, &types.CreateFolder{This: parent, Name: name})
	if err == nil {
		s.logFor(ctx).Info().Str("folder", name).Str("parent", parent.Value).Str("ref", res.Returnval.Value).Msg("created folder")
		return res.Returnval, nil
	}
	var dup *types.DuplicateName
	if _, ok := fault.As(err, &dup); !ok {
		return types.ManagedObjectReference{}, fmt.Errorf("create folder %q in %s: %w", name, parent.Value, err)
	}
	if dup.Object.Type == "Folder" && dup.Object.Value != "" {
		return dup.Object, nil
	}
	// The fault did not name the existing entity: look it up.
	found, ferr := methods.FindChild(ctx, c, &types.FindChild{
		This: *c.ServiceContent.SearchIndex, Entity: parent, Name: escapeName(name),
	})
	if ferr != nil {
		return types.ManagedObjectReference{}, fmt.Errorf("find folder %q in %s: %w", name, parent.Value, ferr)
	}
	if found.Returnval == nil || found.Returnval.Type != "Folder" {
		// The name is taken by something that is not a folder (e.g. a VM).
		return types.ManagedObjectReference{}, fmt.Errorf("create folder %q in %s: %w", name, parent.Value, err)
	}
	return *found.Returnval, nil
}

// findByInventoryPath returns the entity at path, or nil if there is none.
func findByInventoryPath(ctx context.Context, c *vim25.Client, path string) (*types.ManagedObjectReference, error) {
	res, err := methods.FindByInventoryPath(ctx, c, &types.FindByInventoryPath{
		This:          *c.ServiceContent.SearchIndex,
		InventoryPath: path,
	})
	if err != nil {
		return nil, fmt.Errorf("find %q: %w", path, err)
	}
	return res.Returnval, nil
}

// escapeName escapes an entity name for an inventory path the way vCenter
// stores names: "%" as %25 and "/" as %2f.
func escapeName(name string) string {
	return strings.NewReplacer("%", "%25", "/", "%2f").Replace(name)
}

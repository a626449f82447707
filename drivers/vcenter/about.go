package vcenter

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/vim25/types"
)

// About is vCenter's product information (ServiceContent.about).
type About struct {
	// Name is the product name, e.g. "VMware vCenter Server".
	Name string
	// FullName is name, version and build in one string.
	FullName string
	// Vendor is the product vendor.
	Vendor string
	// Version is the dotted product version, e.g. "8.0.3".
	Version string
	// Build is the product build number.
	Build string
	// OSType is the operating system type and architecture.
	OSType string
	// APIType is "VirtualCenter" for vCenter and "HostAgent" for ESXi.
	APIType string
	// APIVersion is the newest API version the server supports.
	APIVersion string
	// InstanceUUID identifies the vCenter instance.
	InstanceUUID string
	// ProductLineID is the product line, e.g. "vpx".
	ProductLineID string
}

func aboutFrom(a types.AboutInfo) About {
	return About{
		Name:          a.Name,
		FullName:      a.FullName,
		Vendor:        a.Vendor,
		Version:       a.Version,
		Build:         a.Build,
		OSType:        a.OsType,
		APIType:       a.ApiType,
		APIVersion:    a.ApiVersion,
		InstanceUUID:  a.InstanceUuid,
		ProductLineID: a.ProductLineId,
	}
}

// preRelease matches a trailing pre-release marker such as "1a2" or "3rc1".
var preRelease = regexp.MustCompile(`(\d+)(a|alpha|b|beta|rc)\d+$`)

// VersionNumber folds the dotted Version into one integer, 1000 per part:
// "8.0.3" gives 8000003 and "7.0.3.01000" gives 7000004000. A trailing
// pre-release marker ("3rc1") is dropped.
func (a About) VersionNumber() (int64, error) {
	v := preRelease.ReplaceAllString(strings.TrimSpace(a.Version), "$1")
	if v == "" {
		return 0, fmt.Errorf("vcenter: empty version")
	}
	var n int64
	for _, part := range strings.Split(v, ".") {
		p, err := strconv.ParseInt(part, 10, 64)
		if err != nil || p < 0 {
			return 0, fmt.Errorf("vcenter: version %q: part %q is not a number", a.Version, part)
		}
		n = n*1000 + p
	}
	return n, nil
}

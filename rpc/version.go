package rpc

import (
	"fmt"
	"strconv"
	"strings"
)

// versionCompatible is oslo's version_is_compatible(imp, v): the same major
// version, a minor no newer than ours, and when the minors are equal a
// revision no newer than ours.
func versionCompatible(imp, v string) (bool, error) {
	ip, err := versionParts(imp)
	if err != nil {
		return false, err
	}
	vp, err := versionParts(v)
	if err != nil {
		return false, err
	}
	if vp[0] != ip[0] {
		return false, nil
	}
	if vp[1] > ip[1] {
		return false, nil
	}
	if vp[1] == ip[1] && vp[2] > ip[2] {
		return false, nil
	}
	return true, nil
}

func versionParts(v string) ([3]int, error) {
	var out [3]int
	parts := strings.Split(v, ".")
	if len(parts) < 2 {
		return out, fmt.Errorf("version %q has no minor part", v)
	}
	for i := 0; i < 3 && i < len(parts); i++ {
		n, err := strconv.Atoi(parts[i])
		if err != nil {
			return out, fmt.Errorf("version %q: %w", v, err)
		}
		out[i] = n
	}
	return out, nil
}

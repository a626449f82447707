package vcenter

import (
	"errors"
	"fmt"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Sentinel errors. Errors returned by this package wrap one of these where it
// applies (test with errors.Is) and keep the underlying cause, such as the
// vSphere fault, in the chain (test with errors.As or fault.Is/As).
var (
	// ErrInvalidConfig reports a Config or SimulatorConfig that fails
	// validation. The message names the offending field.
	ErrInvalidConfig = errors.New("invalid vcenter configuration")

	// ErrInvalidLogin reports that vCenter rejected the credentials
	// (vSphere fault InvalidLogin). Retrying does not help.
	ErrInvalidLogin = errors.New("vcenter rejected the credentials")

	// ErrNotAuthenticated reports that a call failed because the session
	// was not authenticated and re-logging in did not cure it.
	ErrNotAuthenticated = errors.New("vcenter session not authenticated")

	// ErrNotLoggedIn reports a call on a Session that has not logged in
	// yet or has logged out.
	ErrNotLoggedIn = errors.New("vcenter session not logged in")

	// ErrNotFound reports that a named inventory object does not exist.
	ErrNotFound = errors.New("vcenter object not found")
)

// wrapErr prefixes err with the operation and adds the matching sentinel for
// well-known vSphere faults. It returns nil for a nil err.
func wrapErr(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrInvalidLogin), errors.Is(err, ErrNotAuthenticated),
		errors.Is(err, ErrNotLoggedIn), errors.Is(err, ErrNotFound):
		return fmt.Errorf("vcenter: %s: %w", op, err)
	case fault.Is(err, &types.InvalidLogin{}):
		return fmt.Errorf("vcenter: %s: %w: %w", op, ErrInvalidLogin, err)
	case isNotAuthenticated(err):
		return fmt.Errorf("vcenter: %s: %w: %w", op, ErrNotAuthenticated, err)
	default:
		return fmt.Errorf("vcenter: %s: %w", op, err)
	}
}

// isNotAuthenticated reports whether err carries a NotAuthenticated fault.
func isNotAuthenticated(err error) bool {
	return err != nil && fault.Is(err, &types.NotAuthenticated{})
}

// IsFault reports whether err is an answer from vCenter (a vSphere fault),
// as opposed to vCenter not answering at all (a network or TLS error). A
// fault says vCenter is reachable.
func IsFault(err error) bool {
	if err == nil {
		return false
	}
	if soap.IsSoapFault(err) || soap.IsVimFault(err) {
		return true
	}
	switch e := err.(type) { //nolint:errorlint // walking the tree by hand: soap's checks look at one error only
	case interface{ Unwrap() error }:
		return IsFault(e.Unwrap())
	case interface{ Unwrap() []error }:
		for _, inner := range e.Unwrap() {
			if IsFault(inner) {
				return true
			}
		}
	}
	return false
}

package cloud

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
)

// Placement error codes (the "code" member of placement's JSON errors), from
// placement/errors.py. Placement sends them only to requests of microversion
// 1.23 or later; of the calls nova makes, that is the inventory PUT (1.26)
// and the allocation calls (1.28).
const (
	// CodeConcurrentUpdate marks a stale resource provider generation.
	CodeConcurrentUpdate = "placement.concurrent_update"
	// CodeInventoryInUse marks an inventory change that would strand
	// allocations.
	CodeInventoryInUse = "placement.inventory.inuse"
	// CodeDuplicateName marks a provider name or uuid already taken.
	CodeDuplicateName = "placement.duplicate_name"
	// CodeProviderInUse marks a provider that still has allocations.
	CodeProviderInUse = "placement.resource_provider.inuse"
	// CodeCannotDeleteParent marks a provider that still has children.
	CodeCannotDeleteParent = "placement.resource_provider.cannot_delete_parent"
)

// Sentinels matched by errors.Is against an *HTTPError (see HTTPError.Is).
var (
	// ErrNotFound matches any 404.
	ErrNotFound = errors.New("not found")
	// ErrConflict matches any 409.
	ErrConflict = errors.New("conflict")
	// ErrGenerationConflict matches a 409 placement.concurrent_update: the
	// provider changed since its generation was read. SetInventory and
	// SetTraits also wrap it when they run out of attempts (the traits
	// calls, at microversion 1.6, get no error code).
	ErrGenerationConflict = errors.New("resource provider generation conflict")
	// ErrInventoryInUse matches a 409 placement.inventory.inuse (nova's
	// InventoryInUse).
	ErrInventoryInUse = errors.New("inventory in use")
	// ErrProviderInUse is a 409 on deleting a provider that has allocations
	// or children (nova's ResourceProviderInUse); DeleteProvider wraps it.
	ErrProviderInUse = errors.New("resource provider in use")
)

// HTTPError is an unexpected HTTP status from an OpenStack service. For
// placement, Code and Message come from its JSON error document
// ({"errors": [{"status", "title", "detail", "code", "request_id"}]}).
type HTTPError struct {
	Method string
	URL    string
	Status int
	// Code is placement's error code, e.g. "placement.concurrent_update";
	// empty when the service sent none (placement below microversion 1.23).
	Code string
	// Message is the error detail the service sent (or its raw body).
	Message string
	// RequestID is the x-openstack-request-id response header, if any.
	RequestID string

	err error // the gophercloud error it was built from
}

// Error implements error.
func (e *HTTPError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: HTTP %d %s", e.Method, e.URL, e.Status, http.StatusText(e.Status))
	if e.Code != "" {
		fmt.Fprintf(&b, " (%s)", e.Code)
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", e.Message)
	}
	if e.RequestID != "" {
		fmt.Fprintf(&b, " [%s]", e.RequestID)
	}
	return b.String()
}

// Unwrap returns the gophercloud error the HTTPError was built from.
func (e *HTTPError) Unwrap() error { return e.err }

// Is lets errors.Is match the package's sentinels by status and code.
func (e *HTTPError) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Status == http.StatusNotFound
	case ErrConflict:
		return e.Status == http.StatusConflict
	case ErrGenerationConflict:
		return e.Status == http.StatusConflict && e.Code == CodeConcurrentUpdate
	case ErrInventoryInUse:
		return e.Status == http.StatusConflict && e.Code == CodeInventoryInUse
	case ErrProviderInUse:
		return e.Status == http.StatusConflict &&
			(e.Code == CodeProviderInUse || e.Code == CodeCannotDeleteParent)
	}
	return false
}

// ProviderCreationError is nova's ResourceProviderCreationFailed: POST
// /resource_providers failed, typically because another provider already
// has the name (409 "Conflicting resource provider name: ...").
type ProviderCreationError struct {
	UUID string
	Name string
	// NameConflict is true when placement refused the name as taken by a
	// provider with another uuid.
	NameConflict bool
	// Err is the underlying failure, usually an *HTTPError.
	Err error
}

// Error implements error.
func (e *ProviderCreationError) Error() string {
	if e.NameConflict {
		return fmt.Sprintf("failed to create resource provider %s (%s): the name is taken by another provider: %v", e.Name, e.UUID, e.Err)
	}
	return fmt.Sprintf("failed to create resource provider %s (%s): %v", e.Name, e.UUID, e.Err)
}

// Unwrap returns the underlying failure.
func (e *ProviderCreationError) Unwrap() error { return e.Err }

// maxMessage bounds how much of an unparsed error body lands in Message.
const maxMessage = 512

// httpError converts gophercloud's unexpected-status error (possibly wrapped,
// e.g. after a re-authentication) into an *HTTPError; other errors pass
// through unchanged. nil stays nil.
func httpError(err error) error {
	if err == nil {
		return nil
	}
	var ue gophercloud.ErrUnexpectedResponseCode
	if !errors.As(err, &ue) {
		var pue *gophercloud.ErrUnexpectedResponseCode
		if !errors.As(err, &pue) || pue == nil {
			return err
		}
		ue = *pue
	}
	he := &HTTPError{
		Method: ue.Method,
		URL:    ue.URL,
		Status: ue.Actual,
		err:    err,
	}
	if ue.ResponseHeader != nil {
		he.RequestID = ue.ResponseHeader.Get("X-Openstack-Request-Id")
	}
	he.Code, he.Message = parseErrorBody(ue.Body)
	return he
}

// parseErrorBody extracts a code and a message from an OpenStack error body:
// placement's API-WG document first, then the {"<kind>": {"message": ...}}
// shape of nova and cinder, then the raw text.
func parseErrorBody(body []byte) (code, message string) {
	var pl struct {
		Errors []struct {
			Title  string `json:"title"`
			Detail string `json:"detail"`
			Code   string `json:"code"`
		} `json:"errors"`
	}
	if json.Unmarshal(body, &pl) == nil && len(pl.Errors) > 0 {
		e := pl.Errors[0]
		// webob puts its generic explanation first ("There was a
		// conflict when trying to complete your request.\n\n <detail>").
		msg := strings.TrimSpace(e.Detail)
		if i := strings.LastIndex(msg, "\n\n"); i >= 0 {
			msg = strings.TrimSpace(msg[i+2:])
		}
		if msg == "" {
			msg = e.Title
		}
		if e.Code == "placement.undefined_code" {
			e.Code = ""
		}
		return e.Code, msg
	}
	var legacy map[string]struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &legacy) == nil {
		for _, v := range legacy {
			if v.Message != "" {
				return "", v.Message
			}
		}
	}
	msg := strings.TrimSpace(string(body))
	if len(msg) > maxMessage {
		msg = msg[:maxMessage] + "..."
	}
	return "", msg
}

package cloud

import (
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"

	"github.com/gophercloud/gophercloud/v2"
)

func TestHTTPError(t *testing.T) {
	tests := []struct {
		name        string
		status      int
		body        string
		wantCode    string
		wantMessage string
		is          []error
		isNot       []error
	}{
		{
			name:     "placement generation conflict",
			status:   409,
			body:     `{"errors": [{"status": 409, "title": "Conflict", "detail": "There was a conflict when trying to complete your request.\n\n resource provider generation conflict  ", "code": "placement.concurrent_update", "request_id": "req-1"}]}`,
			wantCode: CodeConcurrentUpdate, wantMessage: "resource provider generation conflict",
			is:    []error{ErrConflict, ErrGenerationConflict},
			isNot: []error{ErrNotFound, ErrInventoryInUse, ErrProviderInUse},
		},
		{
			name:     "placement inventory in use",
			status:   409,
			body:     `{"errors": [{"status": 409, "title": "Conflict", "detail": "update conflict: in use", "code": "placement.inventory.inuse"}]}`,
			wantCode: CodeInventoryInUse, wantMessage: "update conflict: in use",
			is:    []error{ErrConflict, ErrInventoryInUse},
			isNot: []error{ErrGenerationConflict, ErrProviderInUse},
		},
		{
			name:        "placement undefined code",
			status:      409,
			body:        `{"errors": [{"status": 409, "title": "Conflict", "detail": "Race condition detected", "code": "placement.undefined_code"}]}`,
			wantMessage: "Race condition detected",
			is:          []error{ErrConflict},
			isNot:       []error{ErrGenerationConflict},
		},
		{
			name:        "nova style",
			status:      404,
			body:        `{"itemNotFound": {"code": 404, "message": "Instance could not be found."}}`,
			wantMessage: "Instance could not be found.",
			is:          []error{ErrNotFound},
		},
		{
			name:        "plain text",
			status:      502,
			body:        "  Bad Gateway\n",
			wantMessage: "Bad Gateway",
			isNot:       []error{ErrNotFound, ErrConflict},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ue := gophercloud.ErrUnexpectedResponseCode{
				Method: "PUT", URL: "http://placement/x", Actual: tc.status, Body: []byte(tc.body),
				ResponseHeader: http.Header{"X-Openstack-Request-Id": []string{"req-1"}},
			}
			// Wrapped as gophercloud does after a re-authentication, then by us.
			err := fmt.Errorf("context: %w", httpError(gophercloud.ErrErrorAfterReauthentication{ErrOriginal: ue}))
			var he *HTTPError
			if !errors.As(err, &he) {
				t.Fatalf("no *HTTPError in %v", err)
			}
			if he.Status != tc.status || he.Code != tc.wantCode || he.Message != tc.wantMessage || he.RequestID != "req-1" {
				t.Errorf("HTTPError = %+v", he)
			}
			for _, s := range tc.is {
				if !errors.Is(err, s) {
					t.Errorf("errors.Is(%v, %v) = false", err, s)
				}
			}
			for _, s := range tc.isNot {
				if errors.Is(err, s) {
					t.Errorf("errors.Is(%v, %v) = true", err, s)
				}
			}
			if !gophercloud.ResponseCodeIs(err, tc.status) {
				t.Errorf("the gophercloud error is not reachable through Unwrap")
			}
			if !strings.Contains(he.Error(), fmt.Sprint(tc.status)) {
				t.Errorf("Error() = %q", he.Error())
			}
		})
	}
	plain := errors.New("dial tcp: connection refused")
	if httpError(plain) != plain || httpError(nil) != nil {
		t.Error("httpError changed a non-HTTP error")
	}
}

// TestImports keeps the package a leaf of REST clients: no bus, no vCenter,
// no other layer of the agent.
func TestImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	const mod = "github.com/vcagent/vcagent"
	forbidden := []string{"github.com/rabbitmq/amqp091-go", "github.com/vmware/govmomi", mod + "/rpc", mod + "/drivers"}
	for _, dep := range strings.Fields(string(out)) {
		for _, bad := range forbidden {
			if dep == bad || strings.HasPrefix(dep, bad+"/") {
				t.Errorf("agent/cloud depends on %s", dep)
			}
		}
		if strings.HasPrefix(dep, mod+"/") && dep != mod+"/agent/cloud" {
			t.Errorf("agent/cloud depends on %s", dep)
		}
	}
}

package vcenter

import (
	"errors"
	"fmt"
	"testing"

	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

func TestMethodName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		req  soap.HasFault
		want string
	}{
		{&methods.RetrievePropertiesExBody{}, "RetrievePropertiesEx"},
		{&methods.LoginBody{}, "Login"},
		{&methods.CreateContainerViewBody{}, "CreateContainerView"},
		{nil, "unknown"},
	}
	for _, tc := range tests {
		if got := methodName(tc.req); got != tc.want {
			t.Errorf("methodName(%T) = %q, want %q", tc.req, got, tc.want)
		}
	}
}

func TestResetBody(t *testing.T) {
	t.Parallel()
	body := &methods.RetrievePropertiesExBody{
		Res:    &types.RetrievePropertiesExResponse{},
		Fault_: &soap.Fault{Code: "ServerFaultCode"},
	}
	if !resetBody(body) {
		t.Fatal("resetBody returned false for a body struct")
	}
	if body.Res != nil || body.Fault_ != nil || body.Fault() != nil {
		t.Errorf("body not reset: %+v", body)
	}
}

// wrappedFault returns the error govmomi's SOAP client produces for a fault.
func wrappedFault(f types.BaseMethodFault) error {
	return soap.WrapSoapFault(&soap.Fault{Code: "ServerFaultCode", String: fmt.Sprintf("%T", f), Detail: struct {
		Fault types.AnyType `xml:",any,typeattr"`
	}{Fault: f}})
}

func TestNeedsRelogin(t *testing.T) {
	t.Parallel()
	notAuth := wrappedFault(&types.NotAuthenticated{})
	missing := func(f types.BaseMethodFault) *methods.RetrievePropertiesExBody {
		return &methods.RetrievePropertiesExBody{Res: &types.RetrievePropertiesExResponse{Returnval: &types.RetrieveResult{
			Objects: []types.ObjectContent{{
				Obj:        types.ManagedObjectReference{Type: "HostSystem", Value: "host-1"},
				MissingSet: []types.MissingProperty{{Path: "name", Fault: types.LocalizedMethodFault{Fault: f}}},
			}},
		}}}
	}
	tests := []struct {
		name string
		err  error
		res  soap.HasFault
		want bool
	}{
		{name: "success", res: &methods.RetrievePropertiesExBody{}, want: false},
		{name: "NotAuthenticated fault", err: notAuth, res: &methods.CreateContainerViewBody{}, want: true},
		{name: "wrapped NotAuthenticated", err: fmt.Errorf("x: %w", notAuth), res: &methods.CreateContainerViewBody{}, want: true},
		{name: "InvalidLogin fault", err: wrappedFault(&types.InvalidLogin{}), res: &methods.LoginBody{}, want: false},
		{name: "network error", err: errors.New("connection refused"), res: &methods.CreateContainerViewBody{}, want: false},
		{name: "properties missing unauthenticated", res: missing(&types.NotAuthenticated{}), want: true},
		{name: "properties missing no permission", res: missing(&types.NoPermission{}), want: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := needsRelogin(tc.err, tc.res); got != tc.want {
				t.Errorf("needsRelogin = %t, want %t", got, tc.want)
			}
		})
	}
}

func TestWrapErr(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want error
	}{
		{name: "invalid login", err: wrappedFault(&types.InvalidLogin{}), want: ErrInvalidLogin},
		{name: "not authenticated", err: wrappedFault(&types.NotAuthenticated{}), want: ErrNotAuthenticated},
		{name: "sentinel kept", err: fmt.Errorf("x: %w", ErrNotFound), want: ErrNotFound},
	}
	for _, tc := range tests {
		got := wrapErr("op", tc.err)
		if !errors.Is(got, tc.want) || !errors.Is(got, tc.err) {
			t.Errorf("%s: wrapErr = %v; want it to wrap %v and the cause", tc.name, got, tc.want)
		}
	}
	if wrapErr("op", nil) != nil {
		t.Error("wrapErr(nil) != nil")
	}
}

package vcenter

import (
	"context"
	"maps"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// callCounter is a soap.RoundTripper that counts calls by SOAP method name
// before passing them on. It is safe for concurrent use.
type callCounter struct {
	next    soap.RoundTripper
	observe func(method string, d time.Duration, err error) // Config.OnCall

	mu    sync.Mutex
	calls map[string]int64
}

func newCallCounter(next soap.RoundTripper, observe func(string, time.Duration, error)) *callCounter {
	return &callCounter{next: next, observe: observe, calls: make(map[string]int64)}
}

// RoundTrip implements soap.RoundTripper.
func (c *callCounter) RoundTrip(ctx context.Context, req, res soap.HasFault) error {
	name := methodName(req)
	c.mu.Lock()
	c.calls[name]++
	c.mu.Unlock()
	if c.observe == nil {
		return c.next.RoundTrip(ctx, req, res)
	}
	start := time.Now()
	err := c.next.RoundTrip(ctx, req, res) // a SOAP fault comes back as an error
	c.observe(name, time.Since(start), err)
	return err
}

// snapshot returns a copy of the counts.
func (c *callCounter) snapshot() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.calls)
}

// methodName derives the SOAP method name from a govmomi request body type,
// e.g. *methods.RetrievePropertiesExBody -> "RetrievePropertiesEx".
func methodName(req soap.HasFault) string {
	t := reflect.TypeOf(req)
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil {
		return "unknown"
	}
	return strings.TrimSuffix(t.Name(), "Body")
}

// reloginRoundTripper retries a call once after a single-flight re-login when
// the call fails because the session is not authenticated.
type reloginRoundTripper struct {
	s    *Session
	next soap.RoundTripper
}

// RoundTrip implements soap.RoundTripper. Errors are returned exactly as the
// next RoundTripper produced them, so govmomi helpers that inspect them keep
// working.
func (r *reloginRoundTripper) RoundTrip(ctx context.Context, req, res soap.HasFault) error {
	switch req.(type) {
	case *methods.LoginBody, *methods.LogoutBody, *methods.LoginByTokenBody,
		*methods.LoginExtensionByCertificateBody, *methods.RetrieveServiceContentBody:
		return r.next.RoundTrip(ctx, req, res)
	}

	gen := r.s.generation()
	err := r.next.RoundTrip(ctx, req, res)
	if !needsRelogin(err, res) || ctx.Err() != nil {
		return err
	}

	method := methodName(req)
	if rerr := r.s.relogin(ctx, gen); rerr != nil {
		r.s.log.Warn().Err(rerr).Str("method", method).Msg("re-login after NotAuthenticated failed")
		return err
	}
	if !resetBody(res) {
		return err
	}
	r.s.log.Debug().Str("method", method).Msg("retrying call after re-login")
	return r.next.RoundTrip(ctx, req, res)
}

// needsRelogin reports whether a call's outcome shows a lost session: a
// NotAuthenticated fault, or a property retrieval whose properties are all
// missing with NotAuthenticated (what vCenter and vcsim return to
// RetrievePropertiesEx without a session).
func needsRelogin(err error, res soap.HasFault) bool {
	if err != nil {
		return isNotAuthenticated(err)
	}
	var objects []types.ObjectContent
	switch b := res.(type) {
	case *methods.RetrievePropertiesExBody:
		if b.Res != nil && b.Res.Returnval != nil {
			objects = b.Res.Returnval.Objects
		}
	case *methods.RetrievePropertiesBody:
		if b.Res != nil {
			objects = b.Res.Returnval
		}
	}
	for _, o := range objects {
		if missingNotAuthenticated(o) {
			return true
		}
	}
	return false
}

// missingNotAuthenticated reports whether o lacks a property because the
// session is not authenticated.
func missingNotAuthenticated(o types.ObjectContent) bool {
	for _, m := range o.MissingSet {
		if _, ok := m.Fault.Fault.(*types.NotAuthenticated); ok {
			return true
		}
	}
	return false
}

// resetBody zeroes a response body so that it can be decoded into again; the
// SOAP decoder does not clear fields (such as the fault) that a second
// response omits. It reports false if res is not a pointer to a struct.
func resetBody(res soap.HasFault) bool {
	v := reflect.ValueOf(res)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return false
	}
	v.Elem().SetZero()
	return true
}

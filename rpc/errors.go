package rpc

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// RemoteError is an exception as oslo.messaging carries it in a reply's
// "failure": the Python class and module the caller re-raises, the message,
// the positional args and the keyword args of its constructor.
//
// A handler returns one (or wraps one) to make a Python caller raise a
// specific exception, e.g. Module "nova.exception", Class "InstanceNotFound",
// Kwargs {"instance_id": …}. The client returns one for every failure reply.
type RemoteError struct {
	Class     string
	Module    string
	Message   string
	Args      []any
	Kwargs    map[string]any
	Traceback []string
}

// Error implements error.
func (e *RemoteError) Error() string {
	return fmt.Sprintf("remote error: %s.%s: %s", e.Module, e.Class, e.Message)
}

// Is matches another *RemoteError of the same module and class, so callers
// can write errors.Is(err, &rpc.RemoteError{Module: "nova.exception", Class: "NotFound"}).
func (e *RemoteError) Is(target error) bool {
	var t *RemoteError
	if !errors.As(target, &t) {
		return false
	}
	return t.Class == e.Class && (t.Module == "" || t.Module == e.Module)
}

// failureJSON is the JSON of serialize_remote_exception.
type failureJSON struct {
	Class   string         `json:"class"`
	Module  string         `json:"module"`
	Message string         `json:"message"`
	TB      []string       `json:"tb"`
	Args    []any          `json:"args"`
	Kwargs  map[string]any `json:"kwargs"`
}

// Oslo's own dispatcher errors. Default Python clients (no allowed module)
// re-raise them as oslo_messaging.RemoteError with these names, which is
// what nova and cinder log.
const dispatcherModule = "oslo_messaging.rpc.dispatcher"

// NoSuchMethod is oslo's failure for a method no compatible endpoint has.
func NoSuchMethod(method string) *RemoteError {
	msg := "Endpoint does not support RPC method " + method
	return &RemoteError{Class: "NoSuchMethod", Module: dispatcherModule, Message: msg, Args: []any{msg}}
}

// UnsupportedVersion is oslo's failure when no endpoint speaks the namespace
// and version of a request.
func UnsupportedVersion(version, method string) *RemoteError {
	msg := "Endpoint does not support RPC version " + version
	if method != "" {
		msg += ". Attempted method: " + method
	}
	return &RemoteError{Class: "UnsupportedVersion", Module: dispatcherModule, Message: msg, Args: []any{msg}}
}

// BuiltinError is a Python builtin exception (ValueError, TypeError, …).
func BuiltinError(class, message string) *RemoteError {
	return &RemoteError{Class: class, Module: "builtins", Message: message, Args: []any{message}}
}

// asRemoteError turns any handler error into the failure sent back. Errors
// that carry no Python identity travel as builtins.Exception, which every
// Python caller can rebuild.
func asRemoteError(err error) *RemoteError {
	var re *RemoteError
	if errors.As(err, &re) {
		return re
	}
	return BuiltinError("Exception", err.Error())
}

// encodeFailure serializes a failure as oslo does: a JSON *string* in the
// reply, never an object (a Python caller cannot parse an object).
func encodeFailure(re *RemoteError) (string, error) {
	tb := re.Traceback
	if len(tb) == 0 {
		name := re.Class
		if re.Module != "builtins" && re.Module != "" {
			name = re.Module + "." + re.Class
		}
		tb = []string{"Traceback (most recent call last):\n", "  (raised by vcagent)\n", name + ": " + re.Message + "\n"}
	}
	args := re.Args
	if args == nil {
		args = []any{re.Message}
	}
	kwargs := re.Kwargs
	if kwargs == nil {
		kwargs = map[string]any{}
	}
	class, module := re.Class, re.Module
	// Like oslo: an exception rebuilt from a remote one goes on under its
	// original name.
	if strings.HasSuffix(class, "_Remote") && strings.HasSuffix(module, "_Remote") {
		class, module = strings.TrimSuffix(class, "_Remote"), strings.TrimSuffix(module, "_Remote")
	}
	raw, err := marshalInner(failureJSON{Class: class, Module: module, Message: re.Message, TB: tb, Args: args, Kwargs: kwargs})
	if err != nil {
		return "", err
	}
	return string(raw), nil
}

// decodeFailure parses a reply's failure string.
func decodeFailure(raw json.RawMessage) (*RemoteError, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("failure is not a JSON string: %w", err)
	}
	var f failureJSON
	if err := json.Unmarshal([]byte(s), &f); err != nil {
		return nil, fmt.Errorf("failure string is not JSON: %w", err)
	}
	if f.Module == "exceptions" {
		f.Module = "builtins"
	}
	return &RemoteError{Class: f.Class, Module: f.Module, Message: f.Message, Args: f.Args, Kwargs: f.Kwargs, Traceback: f.TB}, nil
}

// ErrTimeout is oslo's MessagingTimeout: no reply came in time.
var ErrTimeout = errors.New("messaging timeout")

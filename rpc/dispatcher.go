package rpc

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
)

// Handler serves one RPC method. It returns the result (any value that
// encodes to JSON; a json.RawMessage is sent as it is) or an error; a
// *RemoteError (or an error wrapping one) reaches a Python caller as that
// Python exception.
type Handler func(ctx context.Context, req *Request) (any, error)

// Endpoint is a set of methods served under one namespace and version, like
// an oslo endpoint object with its Target.
type Endpoint struct {
	// Namespace is the endpoint's namespace; "" is oslo's null namespace.
	Namespace string
	// Version is the newest version the endpoint speaks ("6.1"); "" means "1.0".
	Version string
	// Methods maps method names to handlers.
	Methods map[string]Handler
}

// Request is one decoded RPC request.
type Request struct {
	// Context holds the request's _context_* keys, to pass on untouched.
	Context Context
	// Namespace is nil for oslo's null namespace.
	Namespace *string
	Method    string
	// Version is the requested version; "1.0" when the message has none.
	Version string
	// Args is the JSON object of keyword arguments.
	Args json.RawMessage
	// MsgID and ReplyQueue are set for calls; a cast has neither.
	MsgID      string
	ReplyQueue string
	// MonitorTimeout is the caller's call_monitor_timeout in seconds (0: none).
	MonitorTimeout float64
	UniqueID       string
	// Queue is the queue the request came from.
	Queue string

	fields map[string]json.RawMessage
}

// IsCall reports whether the caller waits for a reply.
func (r *Request) IsCall() bool { return r.MsgID != "" }

// DecodeArgs decodes the keyword arguments into v (a struct or map).
func (r *Request) DecodeArgs(v any) error {
	if len(r.Args) == 0 {
		return json.Unmarshal([]byte("{}"), v)
	}
	if err := json.Unmarshal(r.Args, v); err != nil {
		return BuiltinError("TypeError", fmt.Sprintf("%s() got invalid arguments: %v", r.Method, err))
	}
	return nil
}

// Field returns a raw field of the inner message (for fields oslo does not
// define, e.g. a peer's extensions).
func (r *Request) Field(name string) (json.RawMessage, bool) {
	v, ok := r.fields[name]
	return v, ok
}

// parseRequest reads the inner message fields. It never fails: the
// dispatcher answers malformed requests the way oslo's does.
func parseRequest(fields map[string]json.RawMessage, queue string) *Request {
	r := &Request{Context: contextFromFields(fields), Version: "1.0", fields: fields, Queue: queue}
	_ = json.Unmarshal(fields["method"], &r.Method)
	if raw, ok := fields["namespace"]; ok {
		var ns *string
		if json.Unmarshal(raw, &ns) == nil {
			r.Namespace = ns
		}
	}
	if raw, ok := fields["version"]; ok {
		var v *string
		if json.Unmarshal(raw, &v) == nil && v != nil {
			r.Version = *v
		} else {
			r.Version = "None"
		}
	}
	r.Args = fields["args"]
	_ = json.Unmarshal(fields["_msg_id"], &r.MsgID)
	_ = json.Unmarshal(fields["_reply_q"], &r.ReplyQueue)
	_ = json.Unmarshal(fields["_unique_id"], &r.UniqueID)
	var timeout float64
	if json.Unmarshal(fields["_timeout"], &timeout) == nil {
		r.MonitorTimeout = timeout
	}
	return r
}

// dispatcher picks the endpoint and method of a request with oslo's rules
// (rpc/dispatcher.py): endpoints in order; the first whose namespace and
// version match and that has the method serves it; NoSuchMethod when some
// endpoint matched but none had it; UnsupportedVersion when none matched.
type dispatcher struct {
	endpoints []Endpoint
}

func (d *dispatcher) lookup(r *Request) (Handler, error) {
	found := false
	for _, ep := range d.endpoints {
		if !namespaceMatches(ep.Namespace, r.Namespace) {
			continue
		}
		epVersion := ep.Version
		if epVersion == "" {
			epVersion = "1.0"
		}
		if ok, err := versionCompatible(epVersion, r.Version); err != nil || !ok {
			continue
		}
		if _, isString := methodName(r.fields["method"]); !isString {
			// hasattr(endpoint, <non-string>) raises in Python.
			return nil, BuiltinError("TypeError", "attribute name must be string, not '"+pythonTypeName(r.fields["method"])+"'")
		}
		// oslo's DefaultRPCAccessPolicy refuses private names.
		if h, ok := ep.Methods[r.Method]; ok && !strings.HasPrefix(r.Method, "_") {
			return h, nil
		}
		found = true
	}
	if found {
		return nil, NoSuchMethod(r.Method)
	}
	method := r.Method
	if _, isString := methodName(r.fields["method"]); !isString {
		method = ""
	}
	return nil, UnsupportedVersion(r.Version, method)
}

func namespaceMatches(endpoint string, requested *string) bool {
	if requested == nil {
		return endpoint == ""
	}
	return endpoint != "" && *requested == endpoint
}

func methodName(raw json.RawMessage) (string, bool) {
	var s string
	if raw == nil || json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// pythonTypeName names the Python type a JSON value decodes to.
func pythonTypeName(raw json.RawMessage) string {
	s := strings.TrimSpace(string(raw))
	switch {
	case s == "" || s == "null":
		return "NoneType"
	case s == "true" || s == "false":
		return "bool"
	case strings.HasPrefix(s, "["):
		return "list"
	case strings.HasPrefix(s, "{"):
		return "dict"
	case strings.HasPrefix(s, "\""):
		return "str"
	case strings.ContainsAny(s, ".eE"):
		return "float"
	default:
		return "int"
	}
}

package rpc

import (
	"encoding/json"
	"strings"
)

// Context is an RPC request context: the "_context_<key>" fields of a
// message, keyed without the prefix. Values stay raw JSON so that a context
// received from one service can be passed on to another untouched.
type Context map[string]json.RawMessage

const contextPrefix = "_context_"

// NewContext builds a context from plain values.
func NewContext(values map[string]any) (Context, error) {
	c := make(Context, len(values))
	for k, v := range values {
		if err := c.Set(k, v); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Set stores v under key.
func (c Context) Set(key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	c[key] = raw
	return nil
}

// String returns the string value of key, or "" when absent or not a string.
func (c Context) String(key string) string {
	var s string
	if raw, ok := c[key]; ok {
		_ = json.Unmarshal(raw, &s)
	}
	return s
}

// Clone returns a copy that can be changed without touching c.
func (c Context) Clone() Context {
	out := make(Context, len(c))
	for k, v := range c {
		out[k] = v
	}
	return out
}

// notificationContextKey reports whether oslo 14's notifier keeps key
// (_sanitize_context): everything else, auth_token first, stays out of
// notifications.
func notificationContextKey(key string) bool {
	switch key {
	case "user_id", "project_id", "domain_id", "user_domain_id", "project_domain_id",
		"is_admin", "request_id", "roles", "user_name", "project_name", "domain_name",
		"user_domain_name", "project_domain_name", "service_user_id",
		"service_user_domain_id", "service_user_domain_name", "service_project_id",
		"service_project_name", "service_project_domain_id",
		"service_project_domain_name", "service_roles", "global_request_id",
		"system_scope", "user", "domain", "user_domain", "project_domain":
		return true
	}
	return false
}

// forNotification keeps the keys oslo's notifier keeps.
func (c Context) forNotification() Context {
	out := make(Context, len(c))
	for k, v := range c {
		if notificationContextKey(k) {
			out[k] = v
		}
	}
	return out
}

// contextFromFields extracts the _context_* keys of an inner message.
func contextFromFields(fields map[string]json.RawMessage) Context {
	c := Context{}
	for k, v := range fields {
		if name, ok := strings.CutPrefix(k, contextPrefix); ok {
			c[name] = v
		}
	}
	return c
}

// appendContext adds rc to the JSON object inner as _context_<key> fields.
func appendContext(inner []byte, rc Context) []byte {
	if len(rc) == 0 {
		return inner
	}
	buf := make([]byte, 0, len(inner)+64*len(rc))
	buf = append(buf, inner[:len(inner)-1]...)
	for k, v := range rc {
		key, _ := json.Marshal(contextPrefix + k)
		buf = append(buf, ',')
		buf = append(buf, key...)
		buf = append(buf, ':')
		if len(v) == 0 {
			v = json.RawMessage("null")
		}
		buf = append(buf, v...)
	}
	return append(buf, '}')
}

package vcenter

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Defaults applied by Config.withDefaults.
const (
	// DefaultMaxConns is the default Config.MaxConns.
	DefaultMaxConns = 32
	// DefaultKeepAlive is the default Config.KeepAlive. vCenter's default
	// idle session timeout is 30 minutes.
	DefaultKeepAlive = 5 * time.Minute
	// DefaultMaxTasks is the default Config.MaxTasks.
	DefaultMaxTasks = 16

	// loginTimeout bounds a login or logout that must finish even when the
	// caller's context is cancelled.
	loginTimeout = 30 * time.Second
)

// Config describes how to reach and authenticate to one vCenter.
//
// Its String method redacts the password, so a Config can be logged safely
// with %v; log nothing else derived from it.
type Config struct {
	// URL is the vCenter SDK endpoint, e.g. https://vc.example.com/sdk.
	// A bare host name gets the https scheme and the /sdk path. User
	// information in the URL supplies User and Password when those fields
	// are empty.
	URL string
	// User and Password are the vCenter credentials.
	User     string
	Password string
	// Insecure disables TLS certificate verification. It is mutually
	// exclusive with CAFile.
	Insecure bool
	// CAFile is a PEM file (or an OS path list of PEM files) of CA
	// certificates used to verify vCenter's certificate instead of the
	// system roots.
	CAFile string
	// MaxConns sizes the HTTP transport's idle connection pool to vCenter
	// (http.Transport.MaxIdleConnsPerHost); set it to at least the number
	// of concurrent SOAP calls. Zero means DefaultMaxConns.
	MaxConns int
	// KeepAlive is the interval at which an idle session is touched (and
	// re-logged in if vCenter dropped it). Zero means DefaultKeepAlive. It
	// must be well below vCenter's session timeout.
	KeepAlive time.Duration
	// OnCall, if set, is told about every SOAP call: its method, how long
	// it took and its error (a fault included), for metrics. It must not
	// block.
	OnCall func(method string, d time.Duration, err error)
	// MaxTasks is the task budget: at most this many vCenter tasks
	// (CreateVM_Task, PowerOnVM_Task, CopyVirtualDisk_Task, ...) started by
	// this session run at once; further ones wait for a slot before they
	// are started, so a burst of builds queues here instead of flooding
	// vCenter's task manager. Zero means DefaultMaxTasks.
	MaxTasks int
}

// String returns a description of c with the password redacted.
func (c Config) String() string {
	u := "(unparsable)" // the raw string may hold a password
	if p, err := url.Parse(c.URL); err == nil {
		u = p.Redacted()
	}
	pw := ""
	if c.Password != "" {
		pw = "xxxxx"
	}
	return fmt.Sprintf("{URL:%s User:%s Password:%s Insecure:%t CAFile:%s MaxConns:%d KeepAlive:%s}",
		u, c.User, pw, c.Insecure, c.CAFile, c.MaxConns, c.KeepAlive)
}

// Validate reports whether c is usable. The error wraps ErrInvalidConfig and
// names every offending field.
func (c Config) Validate() error {
	_, _, err := c.resolve()
	return err
}

// resolve validates c and returns it with defaults applied and credentials
// taken from the URL where needed, plus the SDK URL without user
// information.
func (c Config) resolve() (Config, *url.URL, error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s: %s", ErrInvalidConfig, field, fmt.Sprintf(format, args...)))
	}

	u, err := parseSDKURL(c.URL)
	if err != nil {
		bad("URL", "%v", err)
	}
	if u != nil && u.User != nil {
		if c.User == "" {
			c.User = u.User.Username()
		}
		if pw, ok := u.User.Password(); ok && c.Password == "" {
			c.Password = pw
		}
		u.User = nil
	}
	if c.User == "" {
		bad("User", "must not be empty")
	}
	if c.Password == "" {
		bad("Password", "must not be empty")
	}
	if c.Insecure && c.CAFile != "" {
		bad("CAFile", "cannot be combined with Insecure")
	}
	switch {
	case c.MaxConns < 0:
		bad("MaxConns", "must not be negative, got %d", c.MaxConns)
	case c.MaxConns == 0:
		c.MaxConns = DefaultMaxConns
	}
	switch {
	case c.MaxTasks < 0:
		bad("MaxTasks", "must not be negative, got %d", c.MaxTasks)
	case c.MaxTasks == 0:
		c.MaxTasks = DefaultMaxTasks
	}
	switch {
	case c.KeepAlive < 0:
		bad("KeepAlive", "must not be negative, got %s", c.KeepAlive)
	case c.KeepAlive == 0:
		c.KeepAlive = DefaultKeepAlive
	}
	if len(errs) > 0 {
		return Config{}, nil, errors.Join(errs...)
	}
	return c, u, nil
}

// parseSDKURL parses a vCenter address. A missing scheme defaults to https
// and a missing path to /sdk.
func parseSDKURL(s string) (*url.URL, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("must not be empty")
	}
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		// url.Error includes the URL, which may hold a password.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("cannot parse: %w", err)
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return nil, fmt.Errorf("scheme must be https or http, got %q", u.Scheme)
	}
	if u.Host == "" {
		return nil, errors.New("has no host")
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/sdk"
	}
	return u, nil
}

package rpc

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// Host is one broker of a transport URL.
type Host struct {
	Username string
	Password string
	Host     string
	Port     int
}

// Address is host:port, suitable for dialling.
func (h Host) Address() string { return net.JoinHostPort(h.Host, strconv.Itoa(h.Port)) }

// TransportURL is a parsed oslo.messaging transport_url:
// rabbit://user:pass@host1:5672,user:pass@host2:5672/vhost?options.
type TransportURL struct {
	// Scheme is "rabbit" or "amqps"-like variants; TLS reports whether TLS is on.
	Scheme string
	Hosts  []Host
	// VirtualHost is the decoded vhost; "" and "/" both mean the default vhost.
	VirtualHost string
	// Query holds the driver options given in the query string.
	Query url.Values
	TLS   bool
}

// ErrInvalidTransportURL is returned (wrapped) for URLs oslo would refuse.
var ErrInvalidTransportURL = errors.New("invalid transport_url")

// ParseTransportURL parses a transport_url as oslo.messaging does. Several
// comma-separated hosts give failover; a host without credentials or port
// takes them from the previous host, then from the defaults guest/guest and
// 5672 (5671 with TLS).
func ParseTransportURL(raw string) (TransportURL, error) {
	var tu TransportURL
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return tu, fmt.Errorf("%w: %q has no scheme", ErrInvalidTransportURL, redactRaw(raw))
	}
	switch scheme {
	case "rabbit", "kombu+rabbit":
		tu.Scheme = "rabbit"
	case "amqps", "rabbits":
		tu.Scheme = scheme
		tu.TLS = true
	case "amqp":
		tu.Scheme = "amqp"
	default:
		return tu, fmt.Errorf("%w: scheme %q is not a rabbit driver", ErrInvalidTransportURL, scheme)
	}
	if i := strings.IndexByte(rest, '?'); i >= 0 {
		q, err := url.ParseQuery(rest[i+1:])
		if err != nil {
			return tu, fmt.Errorf("%w: query: %v", ErrInvalidTransportURL, err)
		}
		tu.Query = q
		rest = rest[:i]
	} else {
		tu.Query = url.Values{}
	}
	netloc, path, _ := strings.Cut(rest, "/")
	vhost, err := url.PathUnescape(path)
	if err != nil {
		return tu, fmt.Errorf("%w: virtual host: %v", ErrInvalidTransportURL, err)
	}
	tu.VirtualHost = vhost
	if v := tu.Query.Get("ssl"); v != "" {
		b, err := parseBool(v)
		if err != nil {
			return tu, fmt.Errorf("%w: ssl=%q", ErrInvalidTransportURL, v)
		}
		tu.TLS = tu.TLS || b
	}
	defaultPort := 5672
	if tu.TLS {
		defaultPort = 5671
	}
	prev := Host{Username: "guest", Password: "guest", Port: defaultPort}
	if netloc == "" {
		netloc = "localhost"
	}
	for _, part := range strings.Split(netloc, ",") {
		h := Host{Username: prev.Username, Password: prev.Password, Port: defaultPort}
		hostport := part
		if at := strings.LastIndexByte(part, '@'); at >= 0 {
			cred := part[:at]
			hostport = part[at+1:]
			user, pass, hasPass := strings.Cut(cred, ":")
			if h.Username, err = url.PathUnescape(user); err != nil {
				return tu, fmt.Errorf("%w: user name: %v", ErrInvalidTransportURL, err)
			}
			h.Password = ""
			if hasPass {
				if h.Password, err = url.PathUnescape(pass); err != nil {
					return tu, fmt.Errorf("%w: password: %v", ErrInvalidTransportURL, err)
				}
			}
		}
		host, port, err := net.SplitHostPort(hostport)
		if err != nil {
			host, port = strings.Trim(hostport, "[]"), ""
		}
		if host == "" {
			host = "localhost"
		}
		h.Host = host
		if port != "" {
			p, err := strconv.Atoi(port)
			if err != nil || p <= 0 || p > 65535 {
				return tu, fmt.Errorf("%w: port %q", ErrInvalidTransportURL, port)
			}
			h.Port = p
		}
		tu.Hosts = append(tu.Hosts, h)
		prev = h
	}
	return tu, nil
}

// Redacted returns the URL with every password replaced by "***", for logs.
func (tu TransportURL) Redacted() string {
	var b strings.Builder
	b.WriteString(tu.Scheme)
	b.WriteString("://")
	for i, h := range tu.Hosts {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(url.PathEscape(h.Username))
		b.WriteString(":***@")
		b.WriteString(h.Address())
	}
	b.WriteByte('/')
	b.WriteString(url.PathEscape(tu.VirtualHost))
	if len(tu.Query) > 0 {
		b.WriteByte('?')
		b.WriteString(tu.Query.Encode())
	}
	return b.String()
}

// redactRaw hides anything that looks like credentials in an unparsable URL.
func redactRaw(raw string) string {
	if i := strings.LastIndexByte(raw, '@'); i >= 0 {
		return "***" + raw[i:]
	}
	return raw
}

func parseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "1", "true", "yes", "on", "t", "y":
		return true, nil
	case "0", "false", "no", "off", "f", "n":
		return false, nil
	}
	return false, fmt.Errorf("not a boolean: %q", s)
}

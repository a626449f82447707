package cloud

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/tokens"
	"github.com/rs/zerolog"
)

// Service types in the keystone catalog.
const (
	ServiceTypePlacement = "placement"
	ServiceTypeImage     = "image"
)

// DefaultInterface is the endpoint interface preference nova's keystoneauth
// adapters use ([placement] valid_interfaces = internal,public).
const DefaultInterface = "internal,public"

// DefaultDomainName is keystone's default domain, used when a domain name is
// not configured.
const DefaultDomainName = "Default"

// reauthMargin re-authenticates this long before the token expires, like
// keystoneauth's minimum token life.
const reauthMargin = 2 * time.Minute

// ErrAuthConfig marks an invalid AuthConfig.
var ErrAuthConfig = errors.New("invalid OpenStack auth configuration")

// AuthConfig says how to reach and authenticate to the control plane; the
// fields mirror nova.conf's keystoneauth options of the [placement] group.
//
// Either password auth (AuthURL, Username, Password, ProjectName), whose
// token is renewed on expiry or on a 401, or a fixed Token sent as
// X-Auth-Token to explicitly configured endpoints (PlacementEndpoint, and
// GlanceEndpoint when images are needed), as behind a noauth filter.
type AuthConfig struct {
	// AuthURL is keystone's URL, e.g. http://keystone:5000/v3 ([placement] auth_url).
	AuthURL string
	// Username is the service user ([placement] username).
	Username string
	// Password is the service user's password ([placement] password).
	Password string
	// ProjectName is the project to scope the token to ([placement] project_name).
	ProjectName string
	// UserDomainName is the user's domain ([placement] user_domain_name);
	// empty means "Default".
	UserDomainName string
	// ProjectDomainName is the project's domain ([placement]
	// project_domain_name); empty means "Default".
	ProjectDomainName string
	// RegionName selects catalog endpoints of one region ([placement]
	// region_name); empty accepts any.
	RegionName string
	// Interface is the comma-separated endpoint interface preference
	// ([placement] valid_interfaces); empty means "internal,public".
	Interface string
	// Token is a fixed token; it excludes password auth and needs
	// PlacementEndpoint.
	Token string
	// PlacementEndpoint overrides the catalog's placement endpoint
	// ([placement] endpoint_override); required with Token.
	PlacementEndpoint string
	// GlanceEndpoint overrides the catalog's image endpoint ([glance]
	// endpoint_override).
	GlanceEndpoint string
	// NeutronEndpoint overrides the catalog's network endpoint ([neutron]
	// endpoint_override).
	NeutronEndpoint string
	// CAFile is a PEM bundle to verify TLS endpoints with ([placement] cafile).
	CAFile string
	// Insecure skips TLS verification ([placement] insecure).
	Insecure bool
}

// String describes the configuration without its secrets.
func (c AuthConfig) String() string {
	if c.Token != "" {
		return fmt.Sprintf("token auth (token redacted), placement %s, glance %s", c.PlacementEndpoint, c.GlanceEndpoint)
	}
	return fmt.Sprintf("password auth (password redacted) at %s as %s in project %s", c.AuthURL, c.Username, c.ProjectName)
}

// GoString keeps %#v from printing secrets.
func (c AuthConfig) GoString() string { return "cloud.AuthConfig{" + c.String() + "}" }

// interfaces returns the endpoint interface preference, in order.
func (c AuthConfig) interfaces() []string {
	s := c.Interface
	if strings.TrimSpace(s) == "" {
		s = DefaultInterface
	}
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(f), "URL"))
		if f != "" {
			out = append(out, f)
		}
	}
	return out
}

// Validate checks that c describes exactly one way to authenticate.
func (c AuthConfig) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrAuthConfig, fmt.Sprintf(format, args...))
	}
	for _, u := range []struct{ name, v string }{
		{"AuthURL", c.AuthURL}, {"PlacementEndpoint", c.PlacementEndpoint}, {"GlanceEndpoint", c.GlanceEndpoint},
		{"NeutronEndpoint", c.NeutronEndpoint},
	} {
		if u.v == "" {
			continue
		}
		p, err := url.Parse(u.v)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return bad("%s %q is not an http(s) URL", u.name, u.v)
		}
	}
	for _, i := range c.interfaces() {
		switch gophercloud.Availability(i) {
		case gophercloud.AvailabilityPublic, gophercloud.AvailabilityInternal, gophercloud.AvailabilityAdmin:
		default:
			return bad("Interface %q: want public, internal or admin", i)
		}
	}
	if c.Token != "" {
		if c.Password != "" {
			return bad("both Token and Password are set; choose one")
		}
		if c.PlacementEndpoint == "" {
			return bad("Token needs PlacementEndpoint (there is no catalog without keystone)")
		}
		return nil
	}
	switch {
	case c.AuthURL == "":
		return bad("neither Token nor AuthURL is set")
	case c.Username == "":
		return bad("password auth needs Username")
	case c.Password == "":
		return bad("password auth needs Password")
	case c.ProjectName == "":
		return bad("password auth needs ProjectName")
	}
	return nil
}

// Session is an authenticated connection to the control plane, safe for
// concurrent use. Its service clients share one token.
type Session struct {
	cfg          AuthConfig
	provider     *gophercloud.ProviderClient
	placementURL string
	log          zerolog.Logger
}

// NewSession validates cfg, authenticates (password auth: POST
// /v3/auth/tokens with AllowReauth, so a 401 or an expiring token leads to a
// new token) and resolves the placement endpoint. The password and token are
// never logged.
func NewSession(ctx context.Context, cfg AuthConfig, log zerolog.Logger) (*Session, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	hc, err := httpClient(cfg)
	if err != nil {
		return nil, err
	}
	s := &Session{cfg: cfg, log: log.With().Str("component", "cloud").Logger()}

	if cfg.Token != "" {
		pc := &gophercloud.ProviderClient{HTTPClient: *hc}
		pc.UseTokenLock()
		pc.UserAgent.Prepend("vcagent")
		pc.SetToken(cfg.Token)
		s.provider = pc
		s.placementURL = gophercloud.NormalizeURL(cfg.PlacementEndpoint)
		s.log.Info().Str("placement", s.placementURL).Str("glance", cfg.GlanceEndpoint).
			Msg("using a fixed token for the control plane")
		return s, nil
	}

	pc, err := openstack.NewClient(cfg.AuthURL)
	if err != nil {
		return nil, fmt.Errorf("%w: AuthURL: %v", ErrAuthConfig, err)
	}
	pc.HTTPClient = *hc
	pc.UserAgent.Prepend("vcagent")
	pc.ReauthBeforeTokenExpiration = reauthMargin
	userDomain := orDefault(cfg.UserDomainName, DefaultDomainName)
	opts := gophercloud.AuthOptions{
		IdentityEndpoint: cfg.AuthURL,
		Username:         cfg.Username,
		Password:         cfg.Password,
		DomainName:       userDomain,
		AllowReauth:      true,
		Scope: &gophercloud.AuthScope{
			ProjectName: cfg.ProjectName,
			DomainName:  orDefault(cfg.ProjectDomainName, DefaultDomainName),
		},
	}
	if err := openstack.AuthenticateV3(ctx, pc, &opts, gophercloud.EndpointOpts{}); err != nil {
		return nil, fmt.Errorf("keystone authentication at %s as %s: %w", cfg.AuthURL, cfg.Username, httpError(err))
	}
	s.provider = pc
	if cfg.PlacementEndpoint != "" {
		s.placementURL = gophercloud.NormalizeURL(cfg.PlacementEndpoint)
	} else if s.placementURL, err = s.endpoint(ServiceTypePlacement); err != nil {
		return nil, err
	}
	s.log.Info().Str("auth_url", cfg.AuthURL).Str("user", cfg.Username).Str("project", cfg.ProjectName).
		Str("placement", s.placementURL).Msg("authenticated to keystone")
	return s, nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// httpClient builds the HTTP client for cfg's TLS settings. It has no
// overall timeout (image transfers are long); callers bound calls with their
// context.
func httpClient(cfg AuthConfig) (*http.Client, error) {
	if cfg.CAFile == "" && !cfg.Insecure {
		return &http.Client{}, nil
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: cfg.Insecure} //nolint:gosec // [placement] insecure is the operator's choice
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: CAFile: %v", ErrAuthConfig, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: CAFile %s holds no PEM certificate", ErrAuthConfig, cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	tr.TLSClientConfig = tc
	return &http.Client{Transport: tr}, nil
}

// endpoint finds serviceType's URL in the current token's catalog, trying
// the configured interfaces in order (keystoneauth's valid_interfaces).
func (s *Session) endpoint(serviceType string) (string, error) {
	cr, ok := s.provider.GetAuthResult().(tokens.CreateResult)
	if !ok {
		return "", fmt.Errorf("no service catalog: the session was not authenticated by keystone")
	}
	cat, err := cr.ExtractServiceCatalog()
	if err != nil {
		return "", fmt.Errorf("service catalog: %w", err)
	}
	ifaces := s.cfg.interfaces()
	for _, iface := range ifaces {
		for _, e := range cat.Entries {
			if e.Type != serviceType {
				continue
			}
			for _, ep := range e.Endpoints {
				if ep.Interface != iface {
					continue
				}
				if s.cfg.RegionName != "" && ep.Region != s.cfg.RegionName && ep.RegionID != s.cfg.RegionName {
					continue
				}
				return gophercloud.NormalizeURL(ep.URL), nil
			}
		}
	}
	return "", fmt.Errorf("no %s endpoint in the service catalog for interfaces %s, region %q",
		serviceType, strings.Join(ifaces, ","), s.cfg.RegionName)
}

// ProviderClient returns the authenticated gophercloud provider client the
// session's service clients share.
func (s *Session) ProviderClient() *gophercloud.ProviderClient { return s.provider }

// PlacementClient returns a new placement service client (no microversion
// set; Placement sets one per request).
func (s *Session) PlacementClient() *gophercloud.ServiceClient {
	return &gophercloud.ServiceClient{
		ProviderClient: s.provider,
		Endpoint:       s.placementURL,
		ResourceBase:   s.placementURL,
		Type:           ServiceTypePlacement,
	}
}

// ImageClient returns a glance v2 service client: GlanceEndpoint if set,
// else the catalog's image endpoint.
func (s *Session) ImageClient() (*gophercloud.ServiceClient, error) {
	ep := s.cfg.GlanceEndpoint
	if ep == "" {
		if s.cfg.Token != "" {
			return nil, fmt.Errorf("%w: no GlanceEndpoint configured for token auth", ErrAuthConfig)
		}
		var err error
		if ep, err = s.endpoint(ServiceTypeImage); err != nil {
			return nil, err
		}
	}
	ep = gophercloud.NormalizeURL(ep)
	base := ep
	if !strings.HasSuffix(strings.TrimSuffix(ep, "/"), "/v2") {
		base = ep + "v2/"
	}
	return &gophercloud.ServiceClient{
		ProviderClient: s.provider,
		Endpoint:       ep,
		ResourceBase:   base,
		Type:           ServiceTypeImage,
	}, nil
}

// Logger returns the session's logger.
func (s *Session) Logger() zerolog.Logger { return s.log }

package vcenter

import (
	"context"
	"crypto/tls"
	"encoding/xml"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// userAgent is sent on every HTTP request to vCenter.
const userAgent = "vcagent"

// Session is the one authenticated connection to a vCenter. Create it with
// New, then call Login; call Logout when done. All methods are safe for
// concurrent use.
//
// The session re-logs in by itself when vCenter drops it: the keep-alive
// notices an expired session between calls, and a failed call with a
// NotAuthenticated fault triggers one re-login shared by all concurrent
// callers, after which the call is retried once.
type Session struct {
	cfg     Config
	url     *url.URL // SDK URL without user information
	log     zerolog.Logger
	soap    *soap.Client
	counter *callCounter // counts every SOAP call
	// dcRefs caches datacenter inventory path -> MoRef. Datacenter
	// references do not change across re-logins; an entry is dropped when
	// vCenter says the object no longer exists.
	dcRefs  sync.Map
	relogRT *reloginRoundTripper // the client's RoundTripper
	tasks   chan struct{}        // the task budget: one token per running task
	// taskPolls counts task state reads (TaskPolls).
	taskPolls atomic.Int64
	// vncMu serialises this session's VNC port allocations, as nova's
	// @utils.synchronized('vmware.get_and_set_vnc_port') does.
	vncMu sync.Mutex
	// vncPending holds the VNC ports ReserveVNCPort gave to VMs not yet
	// created (guarded by vncMu).
	vncPending map[int]bool
	flights    sync.WaitGroup  // running re-logins (for Logout)
	life       sync.Mutex      // serialises Login and Logout
	mu         sync.Mutex      // guards the fields below
	client     *vim25.Client   // nil until the first Login
	active     bool            // between Login and Logout
	gen        uint64          // bumped by every successful login
	flight     *loginFlight    // in-progress re-login, if any
	ka         *keepAlive      // running keep-alive, if any
	relogs     int64           // successful re-logins
	about      types.AboutInfo // from the service content
}

// loginFlight is one in-progress re-login that concurrent callers wait on.
type loginFlight struct {
	done chan struct{} // closed when the re-login has finished
	err  error         // written before done is closed
}

// New validates cfg and prepares a Session. It does no I/O; call Login.
// Log output goes to log; the password is never logged.
func New(cfg Config, log zerolog.Logger) (*Session, error) {
	cfg, u, err := cfg.resolve()
	if err != nil {
		return nil, err
	}

	sc := soap.NewClient(u, cfg.Insecure)
	if cfg.CAFile != "" {
		if err := sc.SetRootCAs(cfg.CAFile); err != nil {
			return nil, fmt.Errorf("%w: CAFile: %w", ErrInvalidConfig, err)
		}
	}
	sc.UserAgent = userAgent
	sc.Namespace = "urn:" + vim25.Namespace
	sc.Version = vim25.Version

	t := sc.DefaultTransport()
	t.MaxIdleConnsPerHost = cfg.MaxConns
	t.MaxIdleConns = max(t.MaxIdleConns, cfg.MaxConns)
	// govmomi's TLS dialer ignores the context; use one that honours it.
	dialer := &tls.Dialer{
		NetDialer: &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second},
		Config:    t.TLSClientConfig,
	}
	t.DialTLSContext = dialer.DialContext

	s := &Session{
		cfg:   cfg,
		url:   u,
		log:   log.With().Str("component", "vcenter").Str("vcenter", u.Host).Logger(),
		soap:  sc,
		tasks: make(chan struct{}, cfg.MaxTasks),
	}
	s.counter = newCallCounter(sc, cfg.OnCall)
	s.relogRT = &reloginRoundTripper{s: s, next: s.counter}
	return s, nil
}

// Login fetches the service content (first time only) and logs in, then
// starts the keep-alive. It is a no-op on a logged-in Session. It costs 2 SOAP
// round trips the first time (RetrieveServiceContent, Login) and 1 after a
// Logout, plus one HTTP GET of the service version list the first time.
func (s *Session) Login(ctx context.Context) error {
	s.life.Lock()
	defer s.life.Unlock()

	s.mu.Lock()
	active, c := s.active, s.client
	s.mu.Unlock()
	if active {
		return nil
	}

	if c == nil {
		s.negotiateVersion(ctx)
		content, err := methods.GetServiceContent(ctx, s.counter)
		if err != nil {
			return wrapErr("retrieve service content", err)
		}
		if content.SessionManager == nil {
			return wrapErr("retrieve service content", errors.New("endpoint has no SessionManager"))
		}
		c = &vim25.Client{Client: s.soap, ServiceContent: content, RoundTripper: s.relogRT}
	}

	if err := s.login(ctx, c); err != nil {
		return err
	}

	s.mu.Lock()
	s.client = c
	s.about = c.ServiceContent.About
	s.active = true
	s.gen++
	s.ka = s.startKeepAlive()
	s.mu.Unlock()

	s.log.Info().
		Str("user", s.cfg.User).
		Str("product", c.ServiceContent.About.FullName).
		Str("instance_uuid", c.ServiceContent.About.InstanceUuid).
		Str("soap_version", s.soap.Version).
		Msg("logged in to vCenter")
	return nil
}

// login performs the Login call on the session manager of c.
func (s *Session) login(ctx context.Context, c *vim25.Client) error {
	_, err := methods.Login(ctx, s.counter, &types.Login{
		This:     *c.ServiceContent.SessionManager,
		UserName: s.cfg.User,
		Password: s.cfg.Password,
	})
	if err != nil {
		return wrapErr(fmt.Sprintf("login as %q", s.cfg.User), err)
	}
	return nil
}

// Logout stops the keep-alive, waits for any re-login in progress and logs the
// session out, so that no session is left behind on vCenter. It logs out even
// when ctx is already cancelled (bounded by an internal timeout). A session
// that vCenter already dropped counts as logged out. Logout on a Session that
// is not logged in is a no-op. It costs 1 SOAP round trip.
func (s *Session) Logout(ctx context.Context) error {
	s.life.Lock()
	defer s.life.Unlock()

	s.mu.Lock()
	if !s.active {
		s.mu.Unlock()
		return nil
	}
	s.active = false // no new re-logins from here on
	ka, c := s.ka, s.client
	s.ka = nil
	s.mu.Unlock()

	ka.close()
	s.flights.Wait() // a re-login finishing now must be logged out below

	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), loginTimeout)
	defer cancel()
	_, err := methods.Logout(lctx, s.counter, &types.Logout{This: *c.ServiceContent.SessionManager})
	s.soap.CloseIdleConnections()
	switch {
	case err == nil:
		s.log.Info().Msg("logged out of vCenter")
		return nil
	case isNotAuthenticated(err):
		s.log.Info().Msg("vCenter session had already ended")
		return nil
	default:
		return wrapErr("logout", err)
	}
}

// Client returns the vim25 client of the session, for code that needs
// govmomi directly (object, property, view packages). Its RoundTripper
// re-logs in transparently. It returns nil before the first successful Login;
// after Logout it stays usable but unauthenticated.
func (s *Session) Client() *vim25.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.client
}

// activeClient returns the client while the Session is logged in, else nil.
func (s *Session) activeClient() *vim25.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.active {
		return nil
	}
	return s.client
}

// InstanceUUID returns vCenter's about.instanceUuid, which identifies the
// vCenter instance; "" before the first successful Login.
func (s *Session) InstanceUUID() string {
	return s.About().InstanceUUID
}

// About returns vCenter's product information from the service content
// (no round trip); the zero value before the first successful Login.
func (s *Session) About() About {
	s.mu.Lock()
	defer s.mu.Unlock()
	return aboutFrom(s.about)
}

// Relogins returns how many times the session has re-logged in after losing
// its vCenter session (the initial Login is not counted).
func (s *Session) Relogins() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.relogs
}

// Calls returns how many SOAP calls this Session has sent, by method name
// (e.g. "RetrievePropertiesEx"), including logins, keep-alives and retries.
// The map is a copy.
func (s *Session) Calls() map[string]int64 {
	return s.counter.snapshot()
}

// generation identifies the current vCenter session; it changes with every
// successful login.
func (s *Session) generation() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen
}

// relogin replaces the session that was current at generation seen. If a
// newer session already exists it returns nil at once; if a re-login is in
// progress it waits for that one (or for ctx); otherwise it performs the
// re-login itself. The re-login is not cancelled with ctx, since other
// callers depend on it; it is bounded by an internal timeout instead.
func (s *Session) relogin(ctx context.Context, seen uint64) error {
	s.mu.Lock()
	if s.gen != seen {
		s.mu.Unlock()
		return nil
	}
	if f := s.flight; f != nil {
		s.mu.Unlock()
		select {
		case <-f.done:
			return f.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if !s.active {
		s.mu.Unlock()
		return ErrNotLoggedIn
	}
	f := &loginFlight{done: make(chan struct{})}
	s.flight = f
	s.flights.Add(1)
	c := s.client
	s.mu.Unlock()

	defer s.flights.Done()
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), loginTimeout)
	defer cancel()

	// Drop the old session first: if it is still valid (the fault was
	// spurious), logging in on top of it would fail or leak it.
	_, _ = methods.Logout(lctx, s.counter, &types.Logout{This: *c.ServiceContent.SessionManager})
	err := s.login(lctx, c)

	s.mu.Lock()
	if err == nil {
		s.gen++
		s.relogs++
	}
	s.flight = nil
	n := s.relogs
	s.mu.Unlock()

	if err == nil {
		s.log.Info().Int64("relogins", n).Msg("re-logged in to vCenter")
	} else {
		s.log.Error().Err(err).Msg("re-login to vCenter failed")
	}
	f.err = err
	close(f.done)
	return err
}

// negotiateVersion lowers the SOAP API version sent to vCenter to the
// newest one the server announces in /sdk/vimServiceVersions.xml, when that
// is older than govmomi's default. Failures are logged and ignored.
func (s *Session) negotiateVersion(ctx context.Context) {
	u := *s.url
	u.Path = path.Join(u.Path, "vimServiceVersions.xml")
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		s.log.Debug().Err(err).Msg("cannot build service version request")
		return
	}
	var doc struct {
		Namespaces []struct {
			Name    string `xml:"name"`
			Version string `xml:"version"`
		} `xml:"namespace"`
	}
	err = s.soap.Do(ctx, req, func(res *http.Response) error {
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", u.Path, res.Status)
		}
		return xml.NewDecoder(res.Body).Decode(&doc)
	})
	if err != nil {
		s.log.Debug().Err(err).Msg("cannot read vCenter service versions; using the default SOAP version")
		return
	}
	for _, ns := range doc.Namespaces {
		if ns.Name != s.soap.Namespace || ns.Version == "" {
			continue
		}
		if compareVersions(ns.Version, s.soap.Version) < 0 {
			s.soap.Version = ns.Version
		}
		return
	}
}

// compareVersions compares dotted numeric versions ("8.0.3.0") part by
// part; a non-numeric part compares as 0.
func compareVersions(a, b string) int {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < max(len(pa), len(pb)); i++ {
		var x, y int
		if i < len(pa) {
			x, _ = strconv.Atoi(pa[i])
		}
		if i < len(pb) {
			y, _ = strconv.Atoi(pb[i])
		}
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	return 0
}

// logFor returns the logger for work done on behalf of ctx: the request's
// own logger when ctx carries one (zerolog.Ctx), so that every line of a
// request carries its request ids and instance, with the vCenter named;
// otherwise the session's logger.
func (s *Session) logFor(ctx context.Context) *zerolog.Logger {
	l := zerolog.Ctx(ctx)
	if l.GetLevel() == zerolog.Disabled {
		return &s.log
	}
	ll := l.With().Str("vcenter", s.url.Host).Logger()
	return &ll
}

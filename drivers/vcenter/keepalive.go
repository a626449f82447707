package vcenter

import (
	"context"
	"errors"
	"time"

	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/mo"
)

// keepAlive is the Session's keep-alive goroutine. The Session owns it:
// Login starts it and Logout closes it.
type keepAlive struct {
	cancel context.CancelFunc // stops the loop and any call in progress
	done   chan struct{}      // closed when the goroutine has returned
}

// startKeepAlive starts the keep-alive goroutine. The caller holds s.mu.
func (s *Session) startKeepAlive() *keepAlive {
	ctx, cancel := context.WithCancel(context.Background())
	k := &keepAlive{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(k.done)
		s.keepAliveLoop(ctx)
	}()
	return k
}

// close stops the goroutine and waits for it. It is safe on a nil keepAlive.
func (k *keepAlive) close() {
	if k == nil {
		return
	}
	k.cancel()
	<-k.done
}

// keepAliveLoop touches the session every cfg.KeepAlive until ctx ends.
func (s *Session) keepAliveLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.KeepAlive)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.ping(ctx); err != nil && ctx.Err() == nil {
			ev := s.log.Warn()
			if errors.Is(err, ErrInvalidLogin) {
				ev = s.log.Error()
			}
			ev.Err(err).Msg("vCenter keep-alive failed")
		}
	}
}

// ping reads the session manager's currentSession, which refreshes the
// session's idle timer on vCenter. A NotAuthenticated fault is cured by the
// client's RoundTripper; an empty currentSession (what an anonymous caller
// sees) triggers a re-login here. It costs 1 SOAP round trip, plus 2 for a
// re-login and 1 for the retry.
func (s *Session) ping(ctx context.Context) error {
	c := s.Client()
	if c == nil {
		return ErrNotLoggedIn
	}
	pctx, cancel := context.WithTimeout(ctx, loginTimeout)
	defer cancel()

	gen := s.generation()
	var mgr mo.SessionManager
	err := property.DefaultCollector(c).RetrieveOne(pctx, *c.ServiceContent.SessionManager, []string{"currentSession"}, &mgr)
	if err != nil {
		return wrapErr("keep-alive", err)
	}
	if mgr.CurrentSession != nil {
		s.log.Trace().Msg("vCenter keep-alive ok")
		return nil
	}
	s.log.Info().Msg("vCenter session expired; re-logging in")
	return wrapErr("keep-alive re-login", s.relogin(pctx, gen))
}

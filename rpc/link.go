package rpc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
)

// ErrClosed is returned by operations on a closed Transport.
var ErrClosed = errors.New("rpc: transport closed")

// link keeps one AMQP connection to one of the transport's brokers open. Its
// run loop is the only goroutine that dials; everyone else asks for the
// current connection and, when it breaks, asks again. Waiting for the next
// connection is how every consumer learns to redeclare its topology.
type link struct {
	purpose string
	url     TransportURL
	opts    Options
	tls     *tls.Config
	log     zerolog.Logger
	events  func(LinkEvent)

	mu        sync.Mutex
	conn      *amqp.Connection
	gen       uint64
	connected chan struct{} // closed while conn is usable; replaced on drop
	closed    bool
}

// LinkEvent reports a connection state change, for readiness and metrics.
type LinkEvent struct {
	Purpose   string // "listen" or "send"
	Connected bool
	Broker    string
	Err       error
}

func newLink(purpose string, u TransportURL, opts Options, tlsConf *tls.Config, log zerolog.Logger, events func(LinkEvent)) *link {
	return &link{
		purpose:   purpose,
		url:       u,
		opts:      opts,
		tls:       tlsConf,
		log:       log.With().Str("connection", purpose).Logger(),
		events:    events,
		connected: make(chan struct{}),
	}
}

// current returns the open connection and its generation, waiting for the
// run loop to (re)connect when there is none.
func (l *link) current(ctx context.Context) (*amqp.Connection, uint64, error) {
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return nil, 0, ErrClosed
		}
		conn, gen, ready := l.conn, l.gen, l.connected
		l.mu.Unlock()
		if conn != nil && !conn.IsClosed() {
			return conn, gen, nil
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
}

// run dials, waits for the connection to drop, and dials again, until ctx
// ends. The backoff is jittered and capped, never gives up, and sleeps only
// after a full pass over the brokers (a healthy second broker is tried at
// once when the first one refuses).
func (l *link) run(ctx context.Context) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = max(l.opts.RetryInterval, 100*time.Millisecond)
	bo.Multiplier = 2
	bo.MaxInterval = max(l.opts.IntervalMax, bo.InitialInterval)
	bo.MaxElapsedTime = 0
	bo.RandomizationFactor = 0.3
	next := 0
	for ctx.Err() == nil {
		var conn *amqp.Connection
		var err error
		var broker Host
		for i := 0; i < len(l.url.Hosts); i++ {
			broker = l.url.Hosts[(next+i)%len(l.url.Hosts)]
			conn, err = l.dial(broker)
			if err == nil {
				next = (next + i) % len(l.url.Hosts)
				break
			}
			l.log.Warn().Str("broker", broker.Address()).Err(err).Msg("AMQP server is unreachable")
		}
		if err != nil {
			wait := bo.NextBackOff()
			l.emit(LinkEvent{Purpose: l.purpose, Err: err})
			l.log.Info().Dur("retry_in", wait).Msg("trying the brokers again")
			if !sleepCtx(ctx, wait) {
				return
			}
			continue
		}
		bo.Reset()
		closes := conn.NotifyClose(make(chan *amqp.Error, 1))
		l.mu.Lock()
		l.conn = conn
		l.gen++
		close(l.connected)
		l.mu.Unlock()
		l.log.Info().Str("broker", broker.Address()).Msg("connected to AMQP server")
		l.emit(LinkEvent{Purpose: l.purpose, Connected: true, Broker: broker.Address()})

		var cause *amqp.Error
		select {
		case cause = <-closes:
		case <-ctx.Done():
		}
		l.mu.Lock()
		l.conn = nil
		l.connected = make(chan struct{})
		closing := l.closed
		l.mu.Unlock()
		if ctx.Err() != nil || closing {
			_ = conn.Close()
			return
		}
		var err2 error
		if cause != nil {
			err2 = cause
		}
		l.log.Warn().Err(err2).Msg("AMQP connection lost; reconnecting")
		l.emit(LinkEvent{Purpose: l.purpose, Err: fmt.Errorf("connection lost: %w", errOrClosed(err2))})
		// kombu_reconnect_delay: give the broker a moment, as oslo does,
		// rather than hammering a node that is shutting down.
		if !sleepCtx(ctx, l.opts.ReconnectDelay) {
			return
		}
		next = (next + 1) % len(l.url.Hosts)
	}
}

func errOrClosed(err error) error {
	if err == nil {
		return amqp.ErrClosed
	}
	return err
}

func (l *link) emit(ev LinkEvent) {
	if l.events != nil {
		l.events(ev)
	}
}

// close marks the link closed; run's context cancellation closes the socket.
func (l *link) close() {
	l.mu.Lock()
	l.closed = true
	conn := l.conn
	l.mu.Unlock()
	if conn != nil {
		_ = conn.Close()
	}
}

func (l *link) dial(h Host) (*amqp.Connection, error) {
	scheme := "amqp"
	if l.tls != nil {
		scheme = "amqps"
	}
	uri := amqp.URI{
		Scheme:   scheme,
		Host:     h.Host,
		Port:     h.Port,
		Username: h.Username,
		Password: h.Password,
		Vhost:    l.url.VirtualHost,
	}
	if uri.Vhost == "" {
		uri.Vhost = "/"
	}
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(fmt.Sprintf("vcagent:%d:%s", os.Getpid(), l.purpose))
	cfg := amqp.Config{
		Heartbeat:       l.opts.HeartbeatTimeout,
		TLSClientConfig: l.tls,
		Properties:      props,
		Locale:          "en_US",
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
			c, err := d.Dial(network, addr)
			if err != nil {
				return nil, err
			}
			// The handshake must not hang forever on a half-open broker;
			// amqp091 clears the deadline once the connection is open.
			if err := c.SetDeadline(time.Now().Add(15 * time.Second)); err != nil {
				_ = c.Close()
				return nil, err
			}
			return c, nil
		},
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 60 * time.Second
	}
	return amqp.DialConfig(uri.String(), cfg)
}

// tlsConfig builds the TLS settings from the ssl_* options.
func tlsConfig(opts Options, serverName string) (*tls.Config, error) {
	conf := &tls.Config{ServerName: serverName, InsecureSkipVerify: opts.SSLInsecure, MinVersion: tls.VersionTLS12} //nolint:gosec // opt-in for test brokers
	if opts.SSLCAFile != "" {
		pem, err := os.ReadFile(opts.SSLCAFile)
		if err != nil {
			return nil, fmt.Errorf("ssl_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ssl_ca_file %s: no certificate found", opts.SSLCAFile)
		}
		conf.RootCAs = pool
	}
	if opts.SSLCertFile != "" || opts.SSLKeyFile != "" {
		cert, err := tls.LoadX509KeyPair(opts.SSLCertFile, opts.SSLKeyFile)
		if err != nil {
			return nil, fmt.Errorf("ssl_cert_file/ssl_key_file: %w", err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf, nil
}

// sleepCtx sleeps d or until ctx ends; it reports whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

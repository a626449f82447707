package rpc

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
)

// Config configures a Transport.
type Config struct {
	URL     TransportURL
	Options Options
	Log     zerolog.Logger
	// OnLinkEvent, if set, is called from the connection goroutines on every
	// connect and disconnect (for readiness and metrics). It must not block.
	OnLinkEvent func(LinkEvent)
	// OnPublish, if set, is told about every publish once the broker
	// confirmed it (or it failed): its kind (PublishCall, …), how long it
	// took including the confirm, and the error. It must not block.
	OnPublish func(kind string, d time.Duration, err error)
}

// Transport is one process's presence on an oslo.messaging bus: a connection
// to listen (servers, the reply queue) and a connection to send (requests,
// replies, notifications), as oslo keeps them apart so that a publisher
// throttled by the broker cannot stall consumers. Servers, clients and
// notifiers of every role share one Transport.
//
// A Transport is safe for concurrent use. Close stops its goroutines.
type Transport struct {
	opts    Options
	log     zerolog.Logger
	listen  *link
	send    *link
	pub     *publisher
	replies *replyRouter

	done chan struct{} // closed by Close: every owned goroutine stops
	wg   sync.WaitGroup
	once sync.Once
}

// NewTransport validates cfg and starts connecting in the background;
// operations wait for a connection (see WaitConnected).
func NewTransport(cfg Config) (*Transport, error) {
	if len(cfg.URL.Hosts) == 0 {
		return nil, fmt.Errorf("%w: no broker host", ErrInvalidTransportURL)
	}
	if err := cfg.Options.Validate(); err != nil {
		return nil, err
	}
	var tlsConf *tls.Config
	if cfg.URL.TLS || cfg.Options.UseSSL {
		c, err := tlsConfig(cfg.Options, "")
		if err != nil {
			return nil, err
		}
		tlsConf = c
	}
	t := &Transport{
		opts:   cfg.Options,
		log:    cfg.Log,
		listen: newLink("listen", cfg.URL, cfg.Options, tlsConf, cfg.Log, cfg.OnLinkEvent),
		send:   newLink("send", cfg.URL, cfg.Options, tlsConf, cfg.Log, cfg.OnLinkEvent),
		done:   make(chan struct{}),
	}
	t.pub = newPublisher(t.send, cfg.Log, cfg.OnPublish)
	t.replies = newReplyRouter(t)
	t.goOwned(t.listen.run)
	t.goOwned(t.send.run)
	return t, nil
}

// Options returns the driver options the transport declares with.
func (t *Transport) Options() Options { return t.opts }

// WaitConnected blocks until both connections are up or ctx ends.
func (t *Transport) WaitConnected(ctx context.Context) error {
	if _, _, err := t.listen.current(ctx); err != nil {
		return err
	}
	_, _, err := t.send.current(ctx)
	return err
}

// Close stops every goroutine of the transport and closes both connections.
// Servers should be stopped first so that their last replies still go out.
func (t *Transport) Close() {
	t.once.Do(func() {
		close(t.done)
		t.listen.close()
		t.send.close()
		t.wg.Wait()
	})
}

// closing reports whether Close has been called, so that goroutines whose
// connection it closed stop quietly instead of reconnecting.
func (t *Transport) closing() bool {
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

// goOwned runs f as a goroutine owned by the transport: its context ends
// when Close is called, and Close waits for it.
func (t *Transport) goOwned(f func(ctx context.Context)) {
	ctx, cancel := context.WithCancel(context.Background())
	t.wg.Add(2)
	go func() {
		defer t.wg.Done()
		select {
		case <-t.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	go func() { defer t.wg.Done(); defer cancel(); f(ctx) }()
}

// listenChannel opens a channel on the listen connection, applying the
// prefetch oslo applies.
func (t *Transport) listenChannel(ctx context.Context) (*amqp.Channel, error) {
	conn, _, err := t.listen.current(ctx)
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open listen channel: %w", err)
	}
	if t.opts.PrefetchCount > 0 {
		if err := ch.Qos(t.opts.PrefetchCount, 0, false); err != nil {
			_ = ch.Close()
			return nil, fmt.Errorf("basic.qos: %w", err)
		}
	}
	return ch, nil
}

// isPermanent reports AMQP errors that a retry on the same settings cannot
// fix: a declaration the broker refuses (406), access refused (403).
func isPermanent(err error) bool {
	var ae *amqp.Error
	if errors.As(err, &ae) {
		return ae.Code == amqp.PreconditionFailed || ae.Code == amqp.AccessRefused || ae.Code == amqp.NotAllowed
	}
	return false
}

// uuidHex returns a random uuid4 as 32 hex digits, oslo's msg_id and
// unique_id form.
func uuidHex() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return hex.EncodeToString(b[:])
}

// uuidDashed returns a random uuid4 in its canonical dashed form.
func uuidDashed() string {
	h := uuidHex()
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
)

// ErrUnroutable is returned when the broker returns a mandatory message
// because no queue is bound to its routing key (a reply whose caller left).
var ErrUnroutable = errors.New("message unroutable")

// publisher sends on the send connection through one channel in
// publisher-confirm mode. Publishes are pipelined: the channel is shared and
// each caller waits only for its own confirm, so one slow confirm does not
// hold up the others.
type publisher struct {
	link    *link
	log     zerolog.Logger
	observe func(kind string, d time.Duration, err error)

	mu       sync.Mutex
	ch       *amqp.Channel
	declared map[string]bool // declarations already made on ch

	retMu    sync.Mutex
	returned map[string]chan struct{} // mandatory messages in flight by _unique_id -> signal
}

func newPublisher(l *link, log zerolog.Logger, observe func(kind string, d time.Duration, err error)) *publisher {
	return &publisher{link: l, log: log, observe: observe, returned: map[string]chan struct{}{}}
}

// outgoing is one message to publish.
type outgoing struct {
	kind       string // PublishCall, PublishReply, … (for the observer)
	exchange   string
	routingKey string
	mandatory  bool
	// returnKey identifies a mandatory message in a basic.return: the
	// _unique_id of its inner message.
	returnKey string
	msg       amqp.Publishing
	// declare names the declarations needed first (cached per channel) and
	// makes them.
	declareKey string
	declare    func(ch *amqp.Channel) error
}

// channel returns the confirm-mode channel, opening one on the current
// connection when there is none (after a reconnect the declaration cache
// starts empty, as oslo's does).
func (p *publisher) channel(ctx context.Context) (*amqp.Channel, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ch != nil && !p.ch.IsClosed() {
		return p.ch, nil
	}
	conn, _, err := p.link.current(ctx)
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open send channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("confirm.select: %w", err)
	}
	// Unbuffered on purpose: the library hands a basic.return to us before
	// it processes the confirm that follows it, so the caller waiting on
	// that confirm finds its message marked as returned.
	returns := ch.NotifyReturn(make(chan amqp.Return))
	go p.drainReturns(returns) // ends when the channel closes
	p.ch = ch
	p.declared = map[string]bool{}
	return ch, nil
}

func (p *publisher) drainReturns(returns <-chan amqp.Return) {
	for r := range returns {
		// Returns are rare (a caller gone away): decoding here keeps the
		// common path free of body copies.
		var uid string
		if fields, err := decodeBody(r.ContentType, r.Body); err == nil {
			_ = json.Unmarshal(fields["_unique_id"], &uid)
		}
		p.retMu.Lock()
		sig := p.returned[uid]
		p.retMu.Unlock()
		if sig != nil {
			select {
			case sig <- struct{}{}:
			default:
			}
		}
	}
}

// drop forgets ch after an error so the next publish opens a new one.
func (p *publisher) drop(ch *amqp.Channel) {
	p.mu.Lock()
	if p.ch == ch {
		p.ch = nil
	}
	p.mu.Unlock()
	_ = ch.Close()
}

// ensureDeclared makes o's declarations once per channel.
func (p *publisher) ensureDeclared(ch *amqp.Channel, o *outgoing) error {
	if o.declare == nil {
		return nil
	}
	p.mu.Lock()
	done := p.ch == ch && p.declared[o.declareKey]
	p.mu.Unlock()
	if done {
		return nil
	}
	if err := o.declare(ch); err != nil {
		return err
	}
	p.mu.Lock()
	if p.ch == ch {
		p.declared[o.declareKey] = true
	}
	p.mu.Unlock()
	return nil
}

// publish sends o and waits for the broker's confirm, retrying across
// reconnects until ctx ends. A mandatory message the broker returns gives
// ErrUnroutable.
func (p *publisher) publish(ctx context.Context, o outgoing) error {
	if p.observe == nil {
		return p.publishConfirmed(ctx, o)
	}
	start := time.Now()
	err := p.publishConfirmed(ctx, o)
	p.observe(o.kind, time.Since(start), err)
	return err
}

func (p *publisher) publishConfirmed(ctx context.Context, o outgoing) error {
	for attempt := 0; ; attempt++ {
		if attempt > 0 && !sleepCtx(ctx, time.Duration(min(attempt, 10))*100*time.Millisecond) {
			return ctx.Err()
		}
		ch, err := p.channel(ctx)
		if err != nil {
			if errors.Is(err, ErrClosed) || ctx.Err() != nil {
				return err
			}
			continue
		}
		if err := p.ensureDeclared(ch, &o); err != nil {
			p.drop(ch)
			if isPermanent(err) {
				return fmt.Errorf("declare for %s/%s: %w", o.exchange, o.routingKey, err)
			}
			continue
		}
		var sig chan struct{}
		if o.mandatory {
			sig = make(chan struct{}, 1)
			p.retMu.Lock()
			p.returned[o.returnKey] = sig
			p.retMu.Unlock()
		}
		ok, err := p.publishOnce(ctx, ch, o)
		if o.mandatory {
			p.retMu.Lock()
			delete(p.returned, o.returnKey)
			p.retMu.Unlock()
		}
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			p.log.Debug().Err(err).Str("exchange", o.exchange).Str("routing_key", o.routingKey).Msg("publish failed; retrying")
			p.drop(ch)
			continue
		}
		if !ok {
			// A nack, or the channel closed before the confirm: the broker
			// may not have the message, so send it again.
			continue
		}
		if sig != nil {
			select {
			case <-sig:
				return ErrUnroutable
			default:
			}
		}
		return nil
	}
}

func (p *publisher) publishOnce(ctx context.Context, ch *amqp.Channel, o outgoing) (bool, error) {
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, o.exchange, o.routingKey, o.mandatory, false, o.msg)
	if err != nil {
		return false, err
	}
	if dc == nil {
		return false, errors.New("channel not in confirm mode")
	}
	return dc.WaitContext(ctx)
}

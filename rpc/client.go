package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Client calls and casts to one target, like oslo's RPCClient. It is a
// small value: copy it and change Target.Version or Target.Server per call,
// as oslo's prepare() does. Safe for concurrent use.
type Client struct {
	t      *Transport
	Target Target
	// Timeout bounds a call (rpc_response_timeout by default); it is also
	// the request's AMQP expiration, so no server runs a call whose caller
	// has stopped waiting.
	Timeout time.Duration
	// MonitorTimeout, when set, is sent as _timeout: the server sends
	// heartbeats and the call fails after this long without one.
	MonitorTimeout time.Duration
}

// NewClient returns a client for target.
func (t *Transport) NewClient(target Target) Client {
	return Client{t: t, Target: target, Timeout: t.opts.ResponseTimeout}
}

// request is the inner message of a call or cast, in oslo's key order.
type request struct {
	Method    string          `json:"method"`
	Args      json.RawMessage `json:"args"`
	Namespace string          `json:"namespace,omitempty"`
	Version   string          `json:"version,omitempty"`
	MsgID     string          `json:"_msg_id,omitempty"`
	ReplyQ    string          `json:"_reply_q,omitempty"`
	Timeout   *json.Number    `json:"_timeout,omitempty"`
	UniqueID  string          `json:"_unique_id"`
}

// encodeRequest builds the inner message with the context keys appended.
func encodeRequest(r request, rc Context, call bool) ([]byte, error) {
	inner, err := marshalInner(r)
	if err != nil {
		return nil, err
	}
	// oslo sends "_timeout": null on calls without call monitoring.
	if call && r.Timeout == nil {
		inner = append(inner[:len(inner)-1], []byte(`,"_timeout":null}`)...)
	}
	return appendContext(inner, rc), nil
}

func (c Client) build(rc Context, method string, args any, call bool) (request, error) {
	raw, ok := args.(json.RawMessage)
	if !ok {
		if args == nil {
			args = map[string]any{}
		}
		var err error
		if raw, err = marshalInner(args); err != nil {
			return request{}, fmt.Errorf("encode args of %s: %w", method, err)
		}
	}
	return request{Method: method, Args: raw, Namespace: c.Target.Namespace, Version: c.Target.Version, UniqueID: uuidHex()}, nil
}

func (c Client) destination() (exchange exchangeDecl, key string) {
	o := c.t.opts
	if c.Target.Fanout {
		return o.fanoutExchange(c.Target.Topic), ""
	}
	key = c.Target.Topic
	if c.Target.Server != "" {
		key += "." + c.Target.Server
	}
	return o.topicExchange(c.Target.Exchange), key
}

func (c Client) send(ctx context.Context, inner []byte, expiration time.Duration) error {
	ex, key := c.destination()
	kind := PublishCast
	if expiration > 0 {
		kind = PublishCall
	}
	msg := publishing(encodeEnvelope(inner))
	if expiration > 0 {
		msg.Expiration = strconv.FormatInt(expiration.Milliseconds(), 10)
	}
	return c.t.pub.publish(ctx, outgoing{
		kind:       kind,
		exchange:   ex.Name,
		routingKey: key,
		msg:        msg,
		declareKey: "exchange:" + ex.Name,
		declare:    func(ch *amqp.Channel) error { return declareExchange(ch, ex) },
	})
}

// Cast sends a request that gets no reply. It returns once the broker has
// confirmed it.
func (c Client) Cast(ctx context.Context, rc Context, method string, args any) error {
	r, err := c.build(rc, method, args, false)
	if err != nil {
		return err
	}
	inner, err := encodeRequest(r, rc, false)
	if err != nil {
		return err
	}
	if err := c.send(ctx, inner, 0); err != nil {
		return fmt.Errorf("cast %s to %s: %w", method, c.Target, err)
	}
	return nil
}

// Call sends a request and waits for its reply. A failure reply returns a
// *RemoteError; no reply within Timeout (or within MonitorTimeout without a
// heartbeat) returns an error wrapping ErrTimeout.
func (c Client) Call(ctx context.Context, rc Context, method string, args any) (json.RawMessage, error) {
	if c.Target.Fanout {
		return nil, fmt.Errorf("call %s: a fanout target cannot be called", method)
	}
	r, err := c.build(rc, method, args, true)
	if err != nil {
		return nil, err
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = c.t.opts.ResponseTimeout
	}
	// The timeout covers the whole call, publishing included: while the
	// broker is away a call fails with ErrTimeout, as oslo's does, instead
	// of waiting for the broker indefinitely.
	callCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	replyQ, err := c.t.replies.queue(callCtx)
	if err != nil {
		return nil, c.callError(ctx, method, timeout, fmt.Errorf("reply queue: %w", err))
	}
	r.MsgID, r.ReplyQ = uuidHex(), replyQ
	if c.MonitorTimeout > 0 {
		n := json.Number(strconv.Itoa(int(c.MonitorTimeout.Seconds())))
		r.Timeout = &n
	}
	inner, err := encodeRequest(r, rc, true)
	if err != nil {
		return nil, err
	}
	frames := c.t.replies.wait(r.MsgID)
	defer c.t.replies.forget(r.MsgID)

	overall := time.NewTimer(timeout)
	defer overall.Stop()
	if err := c.send(callCtx, inner, timeout); err != nil {
		return nil, c.callError(ctx, method, timeout, err)
	}
	var monitor <-chan time.Time
	var monitorTimer *time.Timer
	if c.MonitorTimeout > 0 {
		monitorTimer = time.NewTimer(c.MonitorTimeout)
		defer monitorTimer.Stop()
		monitor = monitorTimer.C
	}
	var kept json.RawMessage
	for {
		select {
		case f := <-frames:
			if f.failure != nil {
				return nil, f.failure
			}
			if !isNull(f.result) {
				kept = f.result
			}
			if f.ending {
				if kept == nil {
					kept = json.RawMessage("null")
				}
				return kept, nil
			}
			if monitorTimer != nil && isNull(f.result) {
				monitorTimer.Reset(c.MonitorTimeout)
			}
		case <-overall.C:
			return nil, fmt.Errorf("%w: no reply to %s from %s within %s", ErrTimeout, method, c.Target, timeout)
		case <-monitor:
			return nil, fmt.Errorf("%w: no heartbeat for %s from %s within %s", ErrTimeout, method, c.Target, c.MonitorTimeout)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// callError reports a call that could not be sent: a timeout when the
// call's own deadline passed, the caller's error when its ctx ended.
func (c Client) callError(ctx context.Context, method string, timeout time.Duration, err error) error {
	if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: call %s to %s not sent within %s", ErrTimeout, method, c.Target, timeout)
	}
	return fmt.Errorf("call %s to %s: %w", method, c.Target, err)
}

func isNull(raw json.RawMessage) bool {
	return len(raw) == 0 || string(raw) == "null"
}

// replyFrame is one message on the reply queue.
type replyFrame struct {
	result  json.RawMessage
	failure *RemoteError
	ending  bool
}

// replyRouter owns the process's one reply queue ("reply_<uuid hex>",
// declared lazily at the first call, as oslo does) and routes each reply to
// its caller by _msg_id. Replies for unknown ids (late, duplicate, or oslo's
// leaked heartbeats) are dropped.
type replyRouter struct {
	t    *Transport
	name string

	startOnce sync.Once
	ready     chan struct{} // closed once the queue has been declared
	mu        sync.Mutex
	waiters   map[string]chan replyFrame
}

func newReplyRouter(t *Transport) *replyRouter {
	return &replyRouter{t: t, name: "reply_" + uuidHex(), ready: make(chan struct{}), waiters: map[string]chan replyFrame{}}
}

// queue returns the reply queue's name once it exists on the broker.
func (r *replyRouter) queue(ctx context.Context) (string, error) {
	r.startOnce.Do(func() { r.t.goOwned(r.run) })
	select {
	case <-r.ready:
		return r.name, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (r *replyRouter) wait(msgID string) <-chan replyFrame {
	ch := make(chan replyFrame, 8)
	r.mu.Lock()
	r.waiters[msgID] = ch
	r.mu.Unlock()
	return ch
}

func (r *replyRouter) forget(msgID string) {
	r.mu.Lock()
	delete(r.waiters, msgID)
	r.mu.Unlock()
}

func (r *replyRouter) run(ctx context.Context) {
	var once sync.Once
	for ctx.Err() == nil {
		err := r.consume(ctx, func() { once.Do(func() { close(r.ready) }) })
		if ctx.Err() != nil || errors.Is(err, ErrClosed) || r.t.closing() {
			return
		}
		r.t.log.Warn().Err(err).Str("queue", r.name).Msg("reply consumer stopped; consuming again")
		sleepCtx(ctx, r.t.opts.ReconnectDelay)
	}
}

func (r *replyRouter) consume(ctx context.Context, declared func()) error {
	ch, err := r.t.listenChannel(ctx)
	if err != nil {
		return err
	}
	defer ch.Close()
	if err := declareQueue(ch, r.t.opts.transientQueue(r.name)); err != nil {
		return fmt.Errorf("declare %s: %w", r.name, err)
	}
	deliveries, err := ch.Consume(r.name, r.name, false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %s: %w", r.name, err)
	}
	declared()
	for {
		select {
		case d, ok := <-deliveries:
			if !ok {
				return errors.New("reply consumer closed")
			}
			r.route(d)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (r *replyRouter) route(d amqp.Delivery) {
	fields, err := decodeBody(d.ContentType, d.Body)
	if err != nil {
		_ = d.Reject(false)
		r.t.log.Warn().Err(err).Msg("undecodable reply dropped")
		return
	}
	_ = d.Ack(false)
	var msgID string
	_ = json.Unmarshal(fields["_msg_id"], &msgID)
	r.mu.Lock()
	w := r.waiters[msgID]
	r.mu.Unlock()
	if w == nil {
		r.t.log.Debug().Str("msg_id", msgID).Msg("no caller waiting for this reply; dropped")
		return
	}
	f := replyFrame{result: fields["result"]}
	_ = json.Unmarshal(fields["ending"], &f.ending)
	if raw, ok := fields["failure"]; ok && !isNull(raw) {
		re, err := decodeFailure(raw)
		if err != nil {
			re = BuiltinError("ValueError", "undecodable failure in reply: "+err.Error())
		}
		f.failure = re
		f.ending = true
	}
	select {
	case w <- f:
	default:
		// The caller is not keeping up with heartbeats; it only needs the
		// latest one, and final frames always find room (buffer > 1).
	}
}

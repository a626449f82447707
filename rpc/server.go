package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
)

// Target names where a server listens or a client sends, as oslo's Target.
type Target struct {
	// Exchange is the control exchange ("nova", "openstack", "neutron").
	Exchange string
	Topic    string
	// Server is the host part of "topic.server"; empty for topic-wide calls.
	Server string
	// Fanout makes a cast go to every server of the topic.
	Fanout bool
	// Namespace and Version are what a client puts in its requests.
	Namespace string
	Version   string
}

func (t Target) String() string {
	s := t.Exchange + "/" + t.Topic
	if t.Server != "" {
		s += "." + t.Server
	}
	if t.Fanout {
		s += " (fanout)"
	}
	return s
}

// ServerConfig configures a Server.
type ServerConfig struct {
	Target    Target
	Endpoints []Endpoint
	// Workers bounds the requests handled at once (executor_thread_pool_size
	// by default). A full pool stops intake; messages wait on the broker.
	Workers int
	// DrainTimeout bounds how long Run waits for in-flight requests once its
	// context ends; then their contexts are cancelled.
	DrainTimeout time.Duration
	// Middleware wraps every handler, outermost first (logging, metrics).
	Middleware []func(Handler) Handler
	// OnConsuming, if set, is told when the server starts and stops
	// consuming (after each (re)declaration), for readiness.
	OnConsuming func(consuming bool)
	// Observer, if set, is told about every request, for metrics.
	Observer ServerObserver
}

// Server is an oslo RPC server: it consumes "topic", "topic.server" and its
// own fanout queue, acks each request on receipt (oslo's at-most-once),
// drops repeated _unique_ids, and runs handlers on a bounded pool, replying
// to calls. It survives broker restarts: after a reconnect it declares the
// same queues (the fanout queue keeps its name) and consumes again.
type Server struct {
	t      *Transport
	cfg    ServerConfig
	log    zerolog.Logger
	disp   dispatcher
	fanout string // <topic>_fanout_<uuid hex>, fixed for the server's life
	seen   *uniqueIDs
	slots  chan struct{}
	obs    *obsoleteQueues
}

// NewServer builds a server on t. Run starts it.
func (t *Transport) NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Target.Exchange == "" || cfg.Target.Topic == "" || cfg.Target.Server == "" {
		return nil, fmt.Errorf("rpc server needs an exchange, a topic and a server, got %q", cfg.Target)
	}
	if cfg.Workers <= 0 {
		cfg.Workers = t.opts.ExecutorPoolSize
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 60 * time.Second
	}
	return &Server{
		t:      t,
		cfg:    cfg,
		log:    t.log.With().Str("topic", cfg.Target.Topic).Str("server", cfg.Target.Server).Logger(),
		disp:   dispatcher{endpoints: cfg.Endpoints},
		fanout: cfg.Target.Topic + "_fanout_" + uuidHex(),
		seen:   newUniqueIDs(16),
		slots:  make(chan struct{}, cfg.Workers),
		obs:    newObsoleteQueues(),
	}, nil
}

// FanoutQueue is the name of the server's fanout queue.
func (s *Server) FanoutQueue() string { return s.fanout }

// Run consumes until ctx ends, then drains: it stops taking messages at
// once (unstarted ones stay on the broker), waits for in-flight requests up
// to DrainTimeout, deletes its fanout queue as oslo does on a clean stop,
// and returns.
func (s *Server) Run(ctx context.Context) error {
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	var inflight sync.WaitGroup

	for ctx.Err() == nil {
		err := s.consume(ctx, work, &inflight)
		if s.cfg.OnConsuming != nil {
			s.cfg.OnConsuming(false)
		}
		if ctx.Err() != nil || errors.Is(err, ErrClosed) {
			break
		}
		s.log.Warn().Err(err).Msg("consumer stopped; declaring and consuming again")
		if isPermanent(err) {
			// A 406 will not fix itself quickly; do not spin on it.
			sleepCtx(ctx, 5*time.Second)
		} else {
			sleepCtx(ctx, s.t.opts.ReconnectDelay)
		}
	}

	done := make(chan struct{})
	go func() { inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(s.cfg.DrainTimeout):
		s.log.Warn().Dur("drain_timeout", s.cfg.DrainTimeout).Msg("in-flight requests did not finish in time; cancelling them")
		cancelWork()
		<-done
	}
	s.deleteFanoutQueue()
	return nil
}

// consume declares the server's topology, then consumes each queue on a
// channel of its own (so that one multiple-ack covers exactly the
// deliveries of that queue already taken) until a channel or ctx ends.
func (s *Server) consume(ctx, work context.Context, inflight *sync.WaitGroup) error {
	tgt := s.cfg.Target
	o := s.t.opts
	server := tgt.Topic + "." + tgt.Server
	queues := []struct {
		exchange exchangeDecl
		queue    queueDecl
		key      string
	}{
		{o.topicExchange(tgt.Exchange), o.topicQueue(tgt.Topic), tgt.Topic},
		{o.topicExchange(tgt.Exchange), o.topicQueue(server), server},
		{o.fanoutExchange(tgt.Topic), o.transientQueue(s.fanout), tgt.Topic},
	}
	ch, err := s.t.listenChannel(ctx)
	if err != nil {
		return err
	}
	for _, q := range queues {
		if err := declareExchange(ch, q.exchange); err != nil {
			_ = ch.Close()
			return fmt.Errorf("declare exchange %s: %w", q.exchange.Name, err)
		}
		if err := declareQueue(ch, q.queue); err != nil {
			_ = ch.Close()
			return fmt.Errorf("declare queue %s: %w", q.queue.Name, err)
		}
		if err := ch.QueueBind(q.queue.Name, q.key, q.exchange.Name, false, nil); err != nil {
			_ = ch.Close()
			return fmt.Errorf("bind queue %s: %w", q.queue.Name, err)
		}
	}
	_ = ch.Close()

	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(queues))
	started := 0
	for i, q := range queues {
		err := s.startPump(ctx, pctx, work, inflight, q.queue.Name, fmt.Sprintf("%s.%d", s.fanout, i+1), errs)
		if err != nil {
			cancel()
			for ; started > 0; started-- {
				<-errs
			}
			return err
		}
		started++
	}
	s.log.Info().Str("exchange", tgt.Exchange).Strs("queues", []string{tgt.Topic, server, s.fanout}).Msg("consuming")
	if s.cfg.OnConsuming != nil {
		s.cfg.OnConsuming(true)
	}
	err = <-errs
	cancel()
	for started--; started > 0; started-- {
		<-errs
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// startPump opens a channel, consumes queue on it and pumps it in a
// goroutine that reports its end on errs and closes the channel.
func (s *Server) startPump(ctx, pctx, work context.Context, inflight *sync.WaitGroup, queue, tag string, errs chan<- error) error {
	ch, err := s.t.listenChannel(ctx)
	if err != nil {
		return err
	}
	d, err := ch.Consume(queue, tag, false, false, false, false, nil)
	if err != nil {
		_ = ch.Close()
		return fmt.Errorf("consume %s: %w", queue, err)
	}
	go func() {
		defer ch.Close()
		errs <- s.pump(pctx, work, inflight, ch, tag, d, queue)
	}()
	return nil
}

// maxBatch bounds how many waiting deliveries one ack covers.
const maxBatch = 64

// pump takes deliveries of one queue into the worker pool. It takes (acks)
// a delivery only with a worker slot for it, so that messages it cannot
// start yet stay unacknowledged and go back to the broker if the server stops.
// Deliveries already waiting are taken together and acknowledged with one
// multiple-ack, still before any of them is dispatched.
func (s *Server) pump(ctx, work context.Context, inflight *sync.WaitGroup, ch *amqp.Channel, tag string, deliveries <-chan amqp.Delivery, queue string) error {
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	batch := make([]amqp.Delivery, 0, maxBatch)
	for {
		select {
		case d, ok := <-deliveries:
			if !ok {
				return fmt.Errorf("consumer of %s cancelled", queue)
			}
			batch = append(batch[:0], d)
		case cerr := <-closed:
			return fmt.Errorf("listen channel closed: %w", errOrClosed(cerr))
		case <-ctx.Done():
			_ = ch.Cancel(tag, false)
			return ctx.Err()
		}
		// The slot is taken once there is a delivery, not before: an idle
		// pump holding one would starve the other queues' pumps when the
		// pool is smaller than the number of queues (executor_thread_pool_size
		// 1 or 2 left compute.<host> unserved). Until it gets a slot, the
		// delivery stays unacknowledged and goes back to the broker if the
		// server stops.
		select {
		case s.slots <- struct{}{}:
		case cerr := <-closed:
			return fmt.Errorf("listen channel closed: %w", errOrClosed(cerr))
		case <-ctx.Done():
			_ = ch.Cancel(tag, false)
			return ctx.Err()
		}
	more:
		for len(batch) < maxBatch {
			select {
			case s.slots <- struct{}{}:
			default:
				break more
			}
			select {
			case d, ok := <-deliveries:
				if ok {
					batch = append(batch, d)
					continue
				}
			default:
			}
			<-s.slots
			break more
		}
		// A stop wins over a delivery that raced with it: select picks at
		// random among ready cases, so the loops above may have taken
		// deliveries after ctx ended. Those are not acknowledged: the
		// channel's close gives them back to the broker for the next server.
		if ctx.Err() != nil {
			for range batch {
				<-s.slots
			}
			_ = ch.Cancel(tag, false)
			return ctx.Err()
		}
		for _, req := range s.accept(batch, queue) {
			if req == nil {
				<-s.slots
				continue
			}
			inflight.Add(1)
			go func() {
				defer inflight.Done()
				defer func() { <-s.slots }()
				s.serve(work, req)
			}()
		}
	}
}

// accept decodes a batch of deliveries and acknowledges them, rejecting
// (without requeue) those oslo could not decode either. It returns one
// entry per delivery: nil for rejected, duplicate or unacknowledged ones.
func (s *Server) accept(batch []amqp.Delivery, queue string) []*Request {
	reqs := make([]*Request, len(batch))
	last := -1
	for i, d := range batch {
		fields, err := decodeBody(d.ContentType, d.Body)
		if err != nil {
			s.log.Error().Err(err).Str("queue", queue).Msg("failed to process message; skipping it")
			_ = d.Reject(false)
			if s.cfg.Observer != nil {
				s.cfg.Observer.Rejected(s.cfg.Target.Topic)
			}
			continue
		}
		reqs[i] = parseRequest(fields, queue)
		last = i
	}
	if last < 0 {
		return reqs
	}
	if err := batch[last].Ack(true); err != nil {
		// oslo discards a request whose ack failed.
		s.log.Warn().Err(err).Int("requests", last+1).Msg("ack failed; requests discarded")
		return make([]*Request, len(batch))
	}
	for i, req := range reqs {
		if req != nil && req.UniqueID != "" && !s.seen.add(req.UniqueID) {
			s.log.Info().Str("unique_id", req.UniqueID).Msg("ignoring duplicate message")
			reqs[i] = nil
		}
	}
	return reqs
}

// serve runs one request and replies to calls.
func (s *Server) serve(ctx context.Context, req *Request) {
	log := s.log.With().Str("method", req.Method).Logger()
	if rid := req.Context.String("request_id"); rid != "" {
		log = log.With().Str("request_id", rid).Logger()
	}
	if gid := req.Context.String("global_request_id"); gid != "" {
		log = log.With().Str("global_request_id", gid).Logger()
	}
	ctx = log.WithContext(ctx)
	started := time.Now()
	if obs := s.cfg.Observer; obs != nil {
		obs.RequestStarted(s.cfg.Target.Topic, req.Method)
	}

	handler, derr := s.disp.lookup(req)
	var result any
	var err error
	if derr != nil {
		err = derr
	} else {
		stopHeartbeat := s.startHeartbeat(ctx, req)
		h := handler
		for i := len(s.cfg.Middleware) - 1; i >= 0; i-- {
			h = s.cfg.Middleware[i](h)
		}
		result, err = callSafely(ctx, h, req)
		stopHeartbeat()
	}
	outcome := "ok"
	if err != nil {
		re := asRemoteError(err)
		outcome = re.Class
		log.Error().Err(err).Str("exception", re.Module+"."+re.Class).Bool("call", req.IsCall()).Msg("exception during message handling")
	}
	if obs := s.cfg.Observer; obs != nil {
		// A method name the dispatcher did not know is not a label value
		// worth keeping: it would let any sender grow the metric.
		method := req.Method
		if derr != nil {
			method = "unknown"
		}
		obs.RequestDone(s.cfg.Target.Topic, method, outcome, time.Since(started))
	}
	if !req.IsCall() {
		return
	}
	if rerr := s.reply(ctx, req, result, err); rerr != nil {
		log.Warn().Err(rerr).Str("reply_q", req.ReplyQueue).Msg("reply not delivered")
	}
}

// callSafely turns a handler panic into a failure instead of a dead agent.
func callSafely(ctx context.Context, h Handler, req *Request) (result any, err error) {
	defer func() {
		if p := recover(); p != nil {
			zerolog.Ctx(ctx).Error().Interface("panic", p).Bytes("stack", debug.Stack()).Msg("handler panicked")
			err = BuiltinError("RuntimeError", fmt.Sprintf("%v", p))
		}
	}()
	return h(ctx, req)
}

// startHeartbeat sends oslo's call-monitor heartbeats every
// int(_timeout)/2 seconds while the handler runs, and only then: a caller
// that set no call_monitor_timeout breaks on a heartbeat.
func (s *Server) startHeartbeat(ctx context.Context, req *Request) (stop func()) {
	if !req.IsCall() || req.MonitorTimeout <= 0 {
		return func() {}
	}
	interval := time.Duration(float64(int(req.MonitorTimeout)) / 2 * float64(time.Second))
	if interval < time.Second {
		return func() {}
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				// A heartbeat that cannot go out within its interval is
				// useless, and must not hold up the handler's completion.
				hctx, cancel := context.WithTimeout(ctx, interval)
				err := s.publishReply(hctx, req, replyBody{Result: json.RawMessage("null"), MsgID: req.MsgID})
				cancel()
				if err != nil {
					zerolog.Ctx(ctx).Debug().Err(err).Msg("call-monitor heartbeat failed")
					return
				}
			}
		}
	}()
	return func() { close(done); <-stopped }
}

// buildReply makes the final reply to req: the result, or the failure as
// oslo serializes it, with ending=true.
func buildReply(req *Request, result any, herr error) replyBody {
	body := replyBody{Result: json.RawMessage("null"), Ending: true, MsgID: req.MsgID}
	if herr == nil && result != nil {
		raw, ok := result.(json.RawMessage)
		if !ok {
			var err error
			if raw, err = marshalInner(result); err != nil {
				herr = BuiltinError("TypeError", "result is not JSON serializable: "+err.Error())
			}
		}
		if herr == nil && raw != nil {
			body.Result = raw
		}
	}
	if herr != nil {
		f, err := encodeFailure(asRemoteError(herr))
		if err != nil {
			f, _ = encodeFailure(BuiltinError("Exception", herr.Error()))
		}
		body.Failure = &f
	}
	return body
}

// replyBody is the inner message of a reply or heartbeat.
type replyBody struct {
	Result   json.RawMessage `json:"result"`
	Failure  *string         `json:"failure"`
	Ending   bool            `json:"ending"`
	MsgID    string          `json:"_msg_id"`
	UniqueID string          `json:"_unique_id"`
}

// reply sends the one final reply oslo 14 sends: result or failure with
// ending=true. A reply queue that has gone away is retried every 0.25 s for
// kombu_missing_consumer_retry_timeout, then remembered as obsolete.
func (s *Server) reply(ctx context.Context, req *Request, result any, herr error) error {
	body := buildReply(req, result, herr)
	// No caller waits longer than this for a reply (oslo's limit too), so a
	// broker that stays away cannot hold a worker forever.
	ctx, cancel := context.WithTimeout(ctx, s.t.opts.MissingConsumerRetryTimeout+5*time.Second)
	defer cancel()
	if s.obs.has(req.ReplyQueue) {
		return fmt.Errorf("reply queue %s is obsolete: %w", req.ReplyQueue, ErrUnroutable)
	}
	deadline := time.Now().Add(s.t.opts.MissingConsumerRetryTimeout)
	for {
		err := s.publishReply(ctx, req, body)
		if !errors.Is(err, ErrUnroutable) {
			return err
		}
		if time.Now().After(deadline) {
			s.obs.add(req.ReplyQueue)
			return fmt.Errorf("reply failed to send after %s due to a missing queue (%s); abandoning: %w",
				s.t.opts.MissingConsumerRetryTimeout, req.ReplyQueue, err)
		}
		if !sleepCtx(ctx, 250*time.Millisecond) {
			return ctx.Err()
		}
	}
}

func (s *Server) publishReply(ctx context.Context, req *Request, body replyBody) error {
	body.UniqueID = uuidHex()
	return s.t.pub.publish(ctx, outgoing{
		kind:       PublishReply,
		exchange:   "",
		routingKey: req.ReplyQueue,
		mandatory:  true,
		returnKey:  body.UniqueID,
		msg:        publishing(encodeEnvelope(body.appendJSON(nil))),
	})
}

// appendJSON writes the reply's inner message. Written by hand because it
// is on every call's path and its fields are few and known: the ids are hex
// and the result and failure are JSON already.
func (r replyBody) appendJSON(b []byte) []byte {
	b = append(b, `{"result": `...)
	if len(r.Result) == 0 {
		b = append(b, "null"...)
	} else {
		b = append(b, r.Result...)
	}
	b = append(b, `, "failure": `...)
	if r.Failure == nil {
		b = append(b, "null"...)
	} else {
		b = appendJSONString(b, *r.Failure)
	}
	if r.Ending {
		b = append(b, `, "ending": true, "_msg_id": `...)
	} else {
		b = append(b, `, "ending": false, "_msg_id": `...)
	}
	b = appendJSONString(b, r.MsgID)
	b = append(b, `, "_unique_id": "`...)
	b = append(b, r.UniqueID...)
	return append(b, `"}`...)
}

// deleteFanoutQueue removes the fanout queue on a clean stop, as oslo does;
// the topic queues stay and keep casts for the next server.
func (s *Server) deleteFanoutQueue() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ch, err := s.t.listenChannel(ctx)
	if err != nil {
		return
	}
	defer ch.Close()
	if _, err := ch.QueueDelete(s.fanout, false, false, false); err != nil {
		s.log.Debug().Err(err).Msg("fanout queue not deleted")
	}
}

// uniqueIDs remembers the last n _unique_ids, like oslo's _MsgIdCache.
type uniqueIDs struct {
	mu   sync.Mutex
	ring []string
	next int
	set  map[string]struct{}
}

func newUniqueIDs(n int) *uniqueIDs {
	return &uniqueIDs{ring: make([]string, n), set: make(map[string]struct{}, n)}
}

// add records id and reports whether it was new.
func (u *uniqueIDs) add(id string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, dup := u.set[id]; dup {
		return false
	}
	if old := u.ring[u.next]; old != "" {
		delete(u.set, old)
	}
	u.ring[u.next] = id
	u.set[id] = struct{}{}
	u.next = (u.next + 1) % len(u.ring)
	return true
}

// obsoleteQueues remembers reply queues that stayed missing for a minute
// (oslo's ObsoleteReplyQueuesCache), so later replies to them are dropped
// at once instead of blocking a worker again.
type obsoleteQueues struct {
	mu    sync.Mutex
	until map[string]time.Time
}

func newObsoleteQueues() *obsoleteQueues { return &obsoleteQueues{until: map[string]time.Time{}} }

func (o *obsoleteQueues) add(q string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now()
	for k, t := range o.until {
		if now.After(t) {
			delete(o.until, k)
		}
	}
	if len(o.until) < 200 {
		o.until[q] = now.Add(60 * time.Second)
	}
}

func (o *obsoleteQueues) has(q string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	t, ok := o.until[q]
	return ok && time.Now().Before(t)
}

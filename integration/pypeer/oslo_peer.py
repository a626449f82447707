#!/usr/bin/python3
"""A real oslo.messaging peer for vcagent's Go interop tests.

Everything on the wire is produced or consumed by the real library
(oslo.messaging's rabbit:// driver), except `flood`, which deliberately
bypasses the oslo client to measure server capacity alone.

Run it with the interpreter that has oslo.messaging installed (Debian:
/usr/bin/python3 with python3-oslo.messaging):

  oslo_peer.py --url URL [--exchange E] [--opt K=V ...] [--debug] <command>

  --url       transport URL, e.g. rabbit://guest:guest@127.0.0.1:5672/vhost
              (driver options in the query string work too:
              ...?amqp_durable_queues=true)
  --exchange  control_exchange (default: nova)
  --opt K=V   config option; K alone means [oslo_messaging_rabbit] K,
              GROUP.K selects another group (e.g. DEFAULT.rpc_response_timeout)

Commands (all output is JSON lines on stdout; logs go to stderr):

  server --topic T --server S [--pool-size N]
      get_rpc_server (threading executor) with endpoints
        version 1.3, null namespace:
          echo(**kw) -> kw             echo_context() -> received context
          record(**kw) -> None, prints {"event":"record",...}
          fail(exc, message, kwargs)   raises builtins.<exc>, PeerError
                                       (module peererrors) or MessagingTimeout
          fail_expected(message)       ValueError via @expected_exceptions
          slow(seconds) -> {"slept": seconds}
        version 1.1, namespace baseapi (like nova's BaseRPCAPI):
          ping(arg) -> {"service": "pypeer", "arg": arg}
          get_backdoor_port() -> null
      prints {"event":"ready"} once listening and {"event":"stopped"} after
      SIGTERM/SIGINT.

  calls
      reads a JSON array of call specs on stdin and runs them in order; one
      result line per spec (see run_spec for the keys).  JSON Lines input
      (one spec per line) is run line by line as it arrives.

  listen --topics T1,T2 [--pool P] [--count N] [--timeout S]
      get_notification_listener for all priorities; prints {"event":"ready"}
      then one {"event":"notification",...} line per notification.

  notify --topic T --priority P --event-type E --publisher-id ID
         --payload JSON [--driver messagingv2|messaging] [--ctx JSON]

  bench --topic T --server S --n N --concurrency C
      N echo calls through the real RPCClient; latency percentiles.

  flood --topic T --server S --n N
      raw py-amqp client: pre-publishes N oslo-format echo calls, then drains
      the N replies.  Measures the server, not the Python client.
"""
import argparse
import builtins
import json
import logging
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid

# peererrors must be importable under exactly that name, by the server (to
# raise) and by the client (to rebuild); see peererrors.py.
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from oslo_config import cfg  # noqa: E402
from oslo_context import context as oslo_context  # noqa: E402
import oslo_messaging  # noqa: E402

import peererrors  # noqa: E402

LOG = logging.getLogger('oslo_peer')
RABBIT_GROUP = 'oslo_messaging_rabbit'
# (group, key, value) from --opt, kept for check_opts().
PEER_OPTS = []
PRIORITIES = ('audit', 'debug', 'info', 'warn', 'error', 'critical', 'sample')

# --------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------
_out_lock = threading.Lock()


def emit(obj):
    """Write one JSON line to stdout and flush it.

    Endpoints run on executor threads, so writes are serialised.  ASCII
    escapes keep the output valid whatever the locale of the parent.
    """
    line = json.dumps(obj, sort_keys=True, default=str)
    with _out_lock:
        sys.stdout.write(line + '\n')
        sys.stdout.flush()


def hard_exit(code):
    """Exit without running transport cleanup.

    transport.cleanup() joins kombu threads that sit in drain_events for up
    to heartbeat_timeout_threshold/heartbeat_rate/2 (15 s).  Every publish
    was already confirmed by the broker (confirm mode), so nothing is lost.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def die(msg):
    LOG.error('%s', msg)
    emit({'event': 'error', 'message': msg})
    hard_exit(2)


def bounded(fn, seconds):
    """Run fn in a daemon thread and give up waiting after `seconds`."""
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(seconds)
    return not t.is_alive()


# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------
def parse_opts(pairs):
    """['k=v', 'grp.k=v'] -> [(group, key, value)]."""
    res = []
    for pair in pairs or ():
        if '=' not in pair:
            die('--opt wants KEY=VALUE, got %r' % pair)
        key, value = pair.split('=', 1)
        group = RABBIT_GROUP
        if '.' in key:
            group, key = key.split('.', 1)
        res.append((group, key.strip(), value.strip()))
    return res


def make_conf(args):
    """The global ConfigOpts, carrying --exchange and the --opt values.

    It has to be the global cfg.CONF: oslo.messaging 14 registers its
    [oslo_messaging_metrics] options only there, and RPCClient.call reads
    them from the conf it was given.

    The options are written to a throw-away config file instead of
    set_override(): the rabbit driver registers its options only when the
    transport is built, and values read from a file are picked up whenever
    an option is registered later.  The file also gives oslo.config's usual
    string-to-type conversion ('true' -> True).
    """
    oslo_messaging.set_transport_defaults(control_exchange=args.exchange)
    conf = cfg.CONF
    opts = parse_opts(args.opt)
    argv = []
    path = None
    if opts:
        fd, path = tempfile.mkstemp(prefix='oslo_peer_', suffix='.conf')
        with os.fdopen(fd, 'w') as f:
            groups = {}
            for group, key, value in opts:
                groups.setdefault(group, []).append((key, value))
            for group, items in groups.items():
                f.write('[%s]\n' % group)
                for key, value in items:
                    f.write('%s = %s\n' % (key, value))
        argv = ['--config-file', path]
    try:
        # Hermetic: no /etc/oslo_peer/*.conf, no OS_* environment options.
        conf(argv, project='oslo_peer', default_config_files=[],
             default_config_dirs=[], use_env=False)
    finally:
        if path:
            os.unlink(path)
    PEER_OPTS[:] = opts
    return conf


def check_opts(conf):
    """Fail loudly on a misspelt --opt (oslo.config ignores unknown keys).

    Call after the transport/server exists, when the options are registered.
    """
    for group, key, _ in PEER_OPTS:
        try:
            if group == 'DEFAULT':
                getattr(conf, key)
            else:
                getattr(getattr(conf, group), key)
        except (cfg.NoSuchOptError, cfg.NoSuchGroupError, AttributeError):
            die('unknown option [%s] %s' % (group, key))


def default_context():
    """A realistic, deterministic request context (oslo.context keys).

    Passed as a plain dict: without a serializer oslo.messaging sends each
    key as _context_<key> and hands the endpoint a dict back.
    """
    return oslo_context.RequestContext(
        user_id='u-pypeer', project_id='p-pypeer',
        request_id='req-pypeer-0001', roles=['admin'], is_admin=True,
        auth_token='pypeer-fake-token').to_dict()


def load_json_arg(text, what):
    try:
        return json.loads(text)
    except ValueError as e:
        die('%s is not valid JSON: %s' % (what, e))


# --------------------------------------------------------------------------
# RPC endpoints
# --------------------------------------------------------------------------
class PeerEndpoint(object):
    """The test surface of the Python RPC server (null namespace, 1.3)."""

    target = oslo_messaging.Target(version='1.3')

    def echo(self, ctxt, **kwargs):
        return kwargs

    def echo_context(self, ctxt):
        # ctxt is the dict the server rebuilt from _context_* keys, plus
        # oslo's own client_timeout key.
        return ctxt

    def record(self, ctxt, **kwargs):
        # For casts: there is no reply, so the server's stdout is the only
        # evidence that the message arrived and how it was decoded.
        emit({'event': 'record', 'method': 'record', 'args': kwargs,
              'ctxt': ctxt})
        return None

    def fail(self, ctxt, exc='ValueError', message='boom', kwargs=None):
        if exc == 'PeerError':
            # Formatted like NovaException: message from kwargs.
            kw = {'reason': message, 'code': 409}
            kw.update(kwargs or {})
            raise peererrors.PeerError(**kw)
        if exc == 'MessagingTimeout':
            raise oslo_messaging.MessagingTimeout(message)
        cls = getattr(builtins, exc, None)
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            raise TypeError('fail: unknown exception class %r' % exc)
        raise cls(message)

    @oslo_messaging.expected_exceptions(ValueError)
    def fail_expected(self, ctxt, message='expected boom'):
        # ExpectedException only changes server logging; the wire shows the
        # plain ValueError.
        raise ValueError(message)

    def slow(self, ctxt, seconds=1.0):
        time.sleep(float(seconds))
        return {'slept': seconds}


class BaseAPI(object):
    """Mirror of nova's BaseRPCAPI (nova/baseapi.py): every nova service
    answers ping/get_backdoor_port in namespace 'baseapi', version 1.1."""

    target = oslo_messaging.Target(namespace='baseapi', version='1.1')

    def ping(self, ctxt, arg):
        return {'service': 'pypeer', 'arg': arg}

    def get_backdoor_port(self, ctxt):
        return None


def install_stop_signals(event):
    def handler(signum, frame):
        event.set()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_server(args, conf):
    transport = oslo_messaging.get_rpc_transport(conf, url=args.url)
    target = oslo_messaging.Target(topic=args.topic, server=args.server)
    server = oslo_messaging.get_rpc_server(
        transport, target, [PeerEndpoint(), BaseAPI()], executor='threading')
    check_opts(conf)
    stop = threading.Event()
    install_stop_signals(stop)
    # start() declares the exchange, queues and bindings synchronously, so
    # messages published after "ready" are queued even before consumption.
    server.start(override_pool_size=args.pool_size)
    emit({'event': 'ready', 'topic': args.topic, 'server': args.server,
          'exchange': args.exchange, 'pid': os.getpid()})
    while not stop.wait(0.5):
        pass
    # stop()+wait() finish in-flight requests and close the listener
    # connection, which deletes the fanout queue (oslo's clean shutdown).
    server.stop()
    server.wait()
    bounded(transport.cleanup, 5)
    emit({'event': 'stopped'})
    hard_exit(0)


# --------------------------------------------------------------------------
# RPC client: calls
# --------------------------------------------------------------------------
def describe_exception(e):
    """Flatten what the caller got into JSON.

    message: for RemoteError the remote message (RemoteError.value); for
    rebuilt exceptions oslo appends the remote traceback to str(e) (and to
    args[0] of builtins), which is cut off here and reported separately.
    """
    d = {'ok': False, 'exception_class': type(e).__name__,
         'exception_module': type(e).__module__}
    if isinstance(e, oslo_messaging.RemoteError):
        d['remote_exc_type'] = e.exc_type
        d['message'] = e.value
        tb = e.traceback
        d['traceback'] = ''.join(tb) if isinstance(tb, list) else tb
    else:
        # Builtins cannot change class, so oslo puts message+traceback in
        # args[0]; str() of e.g. KeyError would repr() it.
        if len(e.args) == 1 and isinstance(e.args[0], str):
            text = e.args[0]
        else:
            text = str(e)
        marker = '\nTraceback (most recent call last):'
        if marker in text:
            text, tb = text.split(marker, 1)
            d['traceback'] = marker.lstrip('\n') + tb
        d['message'] = text.rstrip('\n')
    kwargs = getattr(e, 'kwargs', None)
    if isinstance(kwargs, dict):
        d['kwargs'] = kwargs
    return d


class ClientCache(object):
    """One transport (hence one reply queue) per distinct
    allowed_remote_exmods set: the set is fixed when the transport is built,
    and it decides which remote exceptions are rebuilt."""

    def __init__(self, conf, url):
        self.conf = conf
        self.url = url
        self.clients = {}

    def get(self, allowed):
        key = tuple(sorted(allowed or ()))
        if key not in self.clients:
            transport = oslo_messaging.get_rpc_transport(
                self.conf, url=self.url, allowed_remote_exmods=list(key))
            # The base target only needs a topic; every spec prepare()s.
            client = oslo_messaging.get_rpc_client(
                transport, oslo_messaging.Target(topic='unset'))
            check_opts(self.conf)
            self.clients[key] = client
        return self.clients[key]


def run_spec(cache, spec, index):
    """Run one call spec and return its result line.

    spec: {"id", "kind": "call"|"cast", "topic", "server"?, "fanout"?,
           "method", "args"?, "version"?, "namespace"?, "timeout"?,
           "cm_timeout"?, "ctx"?, "allowed_exmods"?}
    result: {"id", "ok": true, "result", "elapsed_ms"} or
            {"id", "ok": false, "exception_class", "exception_module",
             "remote_exc_type"?, "message", "traceback"?, "kwargs"?,
             "elapsed_ms"}
    """
    sid = spec.get('id', index)
    kind = spec.get('kind', 'call')
    if kind not in ('call', 'cast') or not spec.get('topic') \
            or not spec.get('method'):
        return {'id': sid, 'ok': False, 'exception_class': 'BadSpec',
                'exception_module': 'oslo_peer',
                'message': 'spec needs kind call|cast, topic and method',
                'elapsed_ms': 0}
    prep = {'topic': spec['topic']}
    for key, name in (('server', 'server'), ('fanout', 'fanout'),
                      ('version', 'version'), ('namespace', 'namespace'),
                      ('timeout', 'timeout'),
                      ('cm_timeout', 'call_monitor_timeout')):
        if spec.get(key) is not None:
            prep[name] = spec[key]
    ctxt = spec['ctx'] if 'ctx' in spec else default_context()
    args = spec.get('args') or {}
    t0 = time.perf_counter()
    try:
        client = cache.get(spec.get('allowed_exmods')).prepare(**prep)
        if kind == 'call':
            result = client.call(ctxt, spec['method'], **args)
        else:
            client.cast(ctxt, spec['method'], **args)
            result = None
        res = {'ok': True, 'result': result}
    except Exception as e:  # every failure is data for the caller
        res = describe_exception(e)
    res['id'] = sid
    res['elapsed_ms'] = round((time.perf_counter() - t0) * 1000, 3)
    return res


def read_specs(stream):
    """Yield call specs from stdin.

    A JSON array (the normal form) is read whole.  Anything else is taken
    as JSON Lines and each spec is yielded as soon as its line arrives, so
    a test can keep one client process (one transport, one reply queue)
    and drive it interactively instead of paying the interpreter start-up
    per call.
    """
    first = ''
    for line in stream:
        if line.strip():
            first = line
            break
    if not first:
        return
    if first.lstrip().startswith('['):
        specs = load_json_arg(first + stream.read(), 'stdin')
        if not isinstance(specs, list):
            die('stdin must be a JSON array of objects or JSON lines')
        yield from specs
        return
    yield load_json_arg(first, 'stdin line')
    for line in stream:
        if line.strip():
            yield load_json_arg(line, 'stdin line')


def cmd_calls(args, conf):
    cache = ClientCache(conf, args.url)
    # Built eagerly so that a bad --opt fails even for an empty spec list.
    cache.get(())
    for i, spec in enumerate(read_specs(sys.stdin)):
        if not isinstance(spec, dict):
            die('spec %d is not a JSON object' % i)
        emit(run_spec(cache, spec, i))
    hard_exit(0)


# --------------------------------------------------------------------------
# notifications
# --------------------------------------------------------------------------
class NotificationEndpoint(object):
    """Prints every notification; one method per oslo priority."""

    def __init__(self, count, done):
        self.count = count
        self.done = done
        self.seen = 0
        self.lock = threading.Lock()

    def _handle(self, priority, ctxt, publisher_id, event_type, payload,
                metadata):
        emit({'event': 'notification', 'priority': priority,
              'publisher_id': publisher_id, 'event_type': event_type,
              'payload': payload, 'metadata': metadata, 'ctxt': ctxt})
        with self.lock:
            self.seen += 1
            if self.count and self.seen >= self.count:
                self.done.set()


def _priority_method(priority):
    def method(self, ctxt, publisher_id, event_type, payload, metadata):
        return self._handle(priority, ctxt, publisher_id, event_type,
                            payload, metadata)
    method.__name__ = priority
    return method


for _p in PRIORITIES:
    setattr(NotificationEndpoint, _p, _priority_method(_p))


def cmd_listen(args, conf):
    transport = oslo_messaging.get_notification_transport(conf, url=args.url)
    targets = [oslo_messaging.Target(topic=t)
               for t in args.topics.split(',') if t]
    done = threading.Event()
    endpoint = NotificationEndpoint(args.count, done)
    listener = oslo_messaging.get_notification_listener(
        transport, targets, [endpoint], executor='threading', pool=args.pool)
    check_opts(conf)
    install_stop_signals(done)
    listener.start()
    emit({'event': 'ready', 'topics': args.topics, 'pool': args.pool,
          'exchange': args.exchange, 'pid': os.getpid()})
    deadline = time.monotonic() + args.timeout if args.timeout else None
    while not done.wait(0.2):
        if deadline and time.monotonic() > deadline:
            break
    # Notifications are acked after the endpoint returns; give the last
    # one a moment to return so stop() flushes its ack instead of leaving
    # it unacked (it would be redelivered to the next listener).
    time.sleep(0.3)
    listener.stop()
    listener.wait()
    bounded(transport.cleanup, 5)
    short = bool(args.count) and endpoint.seen < args.count
    emit({'event': 'timeout' if short else 'stopped',
          'received': endpoint.seen})
    hard_exit(1 if short else 0)


def cmd_notify(args, conf):
    transport = oslo_messaging.get_notification_transport(conf, url=args.url)
    notifier = oslo_messaging.Notifier(
        transport, publisher_id=args.publisher_id, driver=args.driver,
        topics=[t for t in args.topic.split(',') if t])
    check_opts(conf)
    payload = load_json_arg(args.payload, '--payload')
    ctxt = (load_json_arg(args.ctx, '--ctx') if args.ctx is not None
            else default_context())
    priority = args.priority.lower()
    send = getattr(notifier, priority, None)
    if priority not in PRIORITIES + ('warning',) or send is None:
        die('unknown priority %r' % args.priority)
    # With retry unset the notifier retries forever on a dead broker; a
    # failure here means the options or URL are wrong, so report it.
    try:
        send(ctxt, args.event_type, payload)
    except Exception as e:
        emit(dict(describe_exception(e), event='notify'))
        hard_exit(1)
    emit({'event': 'notify', 'ok': True, 'priority': priority,
          'event_type': args.event_type, 'driver': args.driver})
    hard_exit(0)


# --------------------------------------------------------------------------
# benchmarks
# --------------------------------------------------------------------------
def percentile(sorted_values, p):
    """Nearest-rank percentile, in ms, of a sorted list of seconds."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1,
                   int(round(p / 100.0 * len(sorted_values))) - 1))
    return round(sorted_values[k] * 1000, 3)


def cmd_bench(args, conf):
    cache = ClientCache(conf, args.url)
    client = cache.get(()).prepare(topic=args.topic, server=args.server,
                                   timeout=args.timeout)
    ctxt = default_context()
    for _ in range(args.warmup):
        client.call(ctxt, 'echo', x=1)
    lat, errors = [], []
    lock = threading.Lock()
    todo = [args.n]

    def worker():
        while True:
            with lock:
                if todo[0] <= 0:
                    return
                todo[0] -= 1
            t = time.perf_counter()
            try:
                client.call(ctxt, 'echo', x=1)
            except Exception as e:
                with lock:
                    errors.append(type(e).__name__)
                continue
            d = time.perf_counter() - t
            with lock:
                lat.append(d)

    threads = [threading.Thread(target=worker)
               for _ in range(args.concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    lat.sort()
    emit({'event': 'bench', 'n': args.n, 'concurrency': args.concurrency,
          'ok': len(lat), 'errors': len(errors),
          'error_kinds': sorted(set(errors)),
          'elapsed_s': round(elapsed, 3),
          'calls_per_s': round(len(lat) / elapsed, 1) if elapsed else None,
          'p50_ms': percentile(lat, 50), 'p90_ms': percentile(lat, 90),
          'p99_ms': percentile(lat, 99),
          'max_ms': round(lat[-1] * 1000, 3) if lat else None,
          'mean_ms': round(statistics.mean(lat) * 1000, 3) if lat else None})
    hard_exit(1 if errors else 0)


def amqp_connect(conf, url):
    """A bare py-amqp connection to the first host of an oslo URL."""
    import amqp
    turl = oslo_messaging.TransportURL.parse(conf, url)
    if not turl.hosts:
        die('URL has no host: %s' % url)
    h = turl.hosts[0]
    conn = amqp.Connection(
        host='%s:%d' % (h.hostname or '127.0.0.1', h.port or 5672),
        userid=h.username or 'guest', password=h.password or 'guest',
        virtual_host=turl.virtual_host or '/', connect_timeout=10)
    conn.connect()
    return conn


def cmd_flood(args, conf):
    """Pre-publish N calls, then drain N replies, with no oslo client.

    The Python RPCClient costs as much CPU per call as the server does, so
    bench mostly measures the client.  Here the requests are already
    queued when the server works through them, which isolates the
    server's throughput.  The envelopes follow oslo's format exactly
    (2.0 envelope, _msg_id/_reply_q/_unique_id, _context_* keys).
    """
    import amqp
    import socket
    conn = amqp_connect(conf, args.url)
    ch = conn.channel()
    try:
        # Passive: the server owns the exchange and its flags.
        ch.exchange_declare(args.exchange, 'topic', passive=True)
    except amqp.exceptions.NotFound:
        die('exchange %r does not exist: is a server running?'
            % args.exchange)
    # Exclusive + auto-delete: replies come through the default exchange
    # by name, which works for exclusive queues, and nothing is left behind.
    reply_q = 'reply_flood_' + uuid.uuid4().hex
    ch.queue_declare(reply_q, durable=False, exclusive=True,
                     auto_delete=True)
    ctx_keys = {'_context_' + k: v for k, v in default_context().items()}
    routing_key = '%s.%s' % (args.topic, args.server)
    pending = set()
    bodies = []
    for i in range(args.n):
        msg_id = uuid.uuid4().hex
        pending.add(msg_id)
        inner = {'method': 'echo', 'args': {'i': i}, 'version': '1.3',
                 '_msg_id': msg_id, '_reply_q': reply_q, '_timeout': None,
                 '_unique_id': uuid.uuid4().hex}
        inner.update(ctx_keys)
        bodies.append(json.dumps({'oslo.version': '2.0',
                                  'oslo.message': json.dumps(inner)}))
    stats = {'replies': 0, 'failures': 0}

    def on_reply(msg):
        body = json.loads(msg.body)
        inner = json.loads(body['oslo.message']) \
            if 'oslo.message' in body else body
        if not inner.get('ending'):
            return  # heartbeat (not expected with _timeout null)
        if inner.get('_msg_id') in pending:
            pending.discard(inner['_msg_id'])
            stats['replies'] += 1
            if inner.get('failure'):
                stats['failures'] += 1

    ch.basic_consume(reply_q, callback=on_reply, no_ack=True)
    t0 = time.perf_counter()
    for body in bodies:
        ch.basic_publish(
            amqp.Message(body.encode('utf-8'),
                         content_type='application/json',
                         content_encoding='utf-8', delivery_mode=2,
                         priority=0, application_headers={},
                         expiration=str(int(args.timeout * 1000))),
            exchange=args.exchange, routing_key=routing_key)
    published_s = time.perf_counter() - t0
    deadline = time.monotonic() + args.timeout
    while pending and time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=0.5)
        except socket.timeout:
            pass
    elapsed = time.perf_counter() - t0
    got = stats['replies']
    emit({'event': 'flood', 'n': args.n, 'replies': got,
          'failures': stats['failures'], 'elapsed_s': round(elapsed, 3),
          'publish_s': round(published_s, 3),
          'calls_per_s': round(got / elapsed, 1) if elapsed else None})
    try:
        conn.close()
    except Exception:
        pass
    hard_exit(0 if got == args.n and not stats['failures'] else 1)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(
        prog='oslo_peer.py', description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--url', required=True, help='transport URL')
    p.add_argument('--exchange', default='nova',
                   help='control_exchange (default: nova)')
    p.add_argument('--opt', action='append', default=[], metavar='K=V',
                   help='[oslo_messaging_rabbit] K=V, or GROUP.K=V; '
                        'repeatable')
    p.add_argument('--debug', action='store_true',
                   help='DEBUG logging on stderr')
    sub = p.add_subparsers(dest='cmd', required=True)

    s = sub.add_parser('server', help='real RPC server')
    s.add_argument('--topic', required=True)
    s.add_argument('--server', required=True)
    s.add_argument('--pool-size', type=int, default=None,
                   help='executor threads (default '
                        'executor_thread_pool_size=64)')

    sub.add_parser('calls', help='run JSON call specs from stdin')

    li = sub.add_parser('listen', help='notification listener')
    li.add_argument('--topics', default='notifications')
    li.add_argument('--pool', default=None)
    li.add_argument('--count', type=int, default=0,
                    help='exit after N notifications (0: no limit)')
    li.add_argument('--timeout', type=float, default=0,
                    help='exit after S seconds (0: no limit)')

    n = sub.add_parser('notify', help='send one notification')
    n.add_argument('--topic', default='notifications',
                   help='notification topic(s), comma separated')
    n.add_argument('--priority', default='info')
    n.add_argument('--event-type', required=True)
    n.add_argument('--publisher-id', required=True)
    n.add_argument('--payload', default='{}')
    n.add_argument('--driver', default='messagingv2',
                   choices=['messagingv2', 'messaging'])
    n.add_argument('--ctx', default=None, help='JSON context dict')

    b = sub.add_parser('bench', help='echo calls through the real client')
    b.add_argument('--topic', required=True)
    b.add_argument('--server', required=True)
    b.add_argument('--n', type=int, default=1000)
    b.add_argument('--concurrency', type=int, default=1)
    b.add_argument('--warmup', type=int, default=20)
    b.add_argument('--timeout', type=float, default=60)

    f = sub.add_parser('flood', help='raw pre-published calls')
    f.add_argument('--topic', required=True)
    f.add_argument('--server', required=True)
    f.add_argument('--n', type=int, default=2000)
    f.add_argument('--timeout', type=float, default=120,
                   help='give up waiting for replies after S seconds')
    return p


COMMANDS = {'server': cmd_server, 'calls': cmd_calls, 'listen': cmd_listen,
            'notify': cmd_notify, 'bench': cmd_bench, 'flood': cmd_flood}


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        stream=sys.stderr,
        format='%(asctime)s %(levelname)s %(name)s %(message)s')
    conf = make_conf(args)
    COMMANDS[args.cmd](args, conf)


if __name__ == '__main__':
    main()

#!/bin/bash
# Self-test of oslo_peer.py: every command against a real Python server and
# listener (real oslo.messaging on both ends), so a failing Go interop test
# can be told apart from a broken peer.
#
# Needs RabbitMQ on 127.0.0.1:5672 (guest/guest) and rabbitmqctl (root).
# The vhost (default pypeer_selftest) is dedicated to this script: it is
# deleted and re-created at the start, so every run starts from an empty
# broker state, and deleted at the end unless KEEP_VHOST=1.
#
# Usage: bash integration/pypeer/selftest.sh
# Prints PASS/FAIL per check and a summary; exits non-zero on any failure.
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"
PY=/usr/bin/python3
VHOST=${VHOST:-pypeer_selftest}
URL="rabbit://guest:guest@127.0.0.1:5672/$VHOST"
PEER=("$PY" "$HERE/oslo_peer.py" --url "$URL")
TMP=$(mktemp -d)
PIDS=()
pass=0
fail=0

cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    rm -rf "$TMP"
    if [ "${KEEP_VHOST:-0}" != 1 ]; then
        rabbitmqctl -q delete_vhost "$VHOST" >/dev/null 2>&1
    fi
}
trap cleanup EXIT

# check NAME JSON_LINE PYTHON_EXPR: the expression sees the line as `d`.
check() {
    local name="$1" line="$2" expr="$3"
    if [ -n "$line" ] && printf '%s' "$line" | "$PY" -c "
import json, sys
d = json.loads(sys.stdin.read())
sys.exit(0 if ($expr) else 1)" 2>/dev/null; then
        echo "PASS $name"
        pass=$((pass + 1))
    else
        echo "FAIL $name :: $(printf '%s' "$line" | cut -c1-400)"
        fail=$((fail + 1))
    fi
}

# wait_for FILE PATTERN SECONDS
wait_for() {
    local i
    for i in $(seq 1 $(($3 * 10))); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

by_id() { grep "\"id\": \"$1\"" "$TMP/calls.out" | head -1; }

# --- fresh vhost --------------------------------------------------------
rabbitmqctl -q delete_vhost "$VHOST" >/dev/null 2>&1
rabbitmqctl -q add_vhost "$VHOST" || { echo "cannot create vhost $VHOST"; exit 1; }
rabbitmqctl -q set_permissions -p "$VHOST" guest '.*' '.*' '.*' || exit 1

# --- server and listener ------------------------------------------------
"${PEER[@]}" server --topic st --server h1 >"$TMP/server.out" 2>"$TMP/server.err" &
SPID=$!
PIDS+=("$SPID")
"${PEER[@]}" listen --topics st_notif,st_versioned --count 3 --timeout 60 \
    >"$TMP/listen.out" 2>"$TMP/listen.err" &
LPID=$!
PIDS+=("$LPID")
# A pool listener gets its own copy of every notification.
"${PEER[@]}" listen --topics st_notif --pool st_pool --count 1 --timeout 60 \
    >"$TMP/pool.out" 2>"$TMP/pool.err" &
POOLPID=$!
PIDS+=("$POOLPID")
wait_for "$TMP/server.out" '"ready"' 30
wait_for "$TMP/listen.out" '"ready"' 30
wait_for "$TMP/pool.out" '"ready"' 30
check "server ready" "$(head -1 "$TMP/server.out")" "d['event'] == 'ready' and d['topic'] == 'st'"
check "listener ready" "$(head -1 "$TMP/listen.out")" "d['event'] == 'ready'"

# --- calls --------------------------------------------------------------
cat >"$TMP/specs.json" <<'EOF'
[
 {"id": "echo", "kind": "call", "topic": "st", "server": "h1", "method": "echo",
  "args": {"s": "h\u00e9llo \u2603", "n": 3, "f": 1.5, "z": null, "b": true, "l": [1, {"k": "v"}]}},
 {"id": "topic", "kind": "call", "topic": "st", "method": "echo", "args": {"b": 2}},
 {"id": "ctx", "kind": "call", "topic": "st", "server": "h1", "method": "echo_context",
  "ctx": {"user_id": "u1", "project_id": "p1", "roles": ["reader"]}},
 {"id": "ping", "kind": "call", "topic": "st", "server": "h1", "method": "ping",
  "namespace": "baseapi", "version": "1.1", "args": {"arg": "z"}},
 {"id": "backdoor", "kind": "call", "topic": "st", "server": "h1", "method": "get_backdoor_port",
  "namespace": "baseapi", "version": "1.1"},
 {"id": "valueerror", "kind": "call", "topic": "st", "server": "h1", "method": "fail",
  "args": {"exc": "ValueError", "message": "bad value 42"}},
 {"id": "keyerror", "kind": "call", "topic": "st", "server": "h1", "method": "fail",
  "args": {"exc": "KeyError", "message": "nokey"}},
 {"id": "expected", "kind": "call", "topic": "st", "server": "h1", "method": "fail_expected",
  "args": {"message": "expected boom"}},
 {"id": "peererror", "kind": "call", "topic": "st", "server": "h1", "method": "fail",
  "args": {"exc": "PeerError", "message": "disk full", "kwargs": {"code": 507}},
  "allowed_exmods": ["peererrors"]},
 {"id": "peererror_remote", "kind": "call", "topic": "st", "server": "h1", "method": "fail",
  "args": {"exc": "PeerError", "message": "disk full"}},
 {"id": "remote_timeout", "kind": "call", "topic": "st", "server": "h1", "method": "fail",
  "args": {"exc": "MessagingTimeout", "message": "too slow"}},
 {"id": "nosuchmethod", "kind": "call", "topic": "st", "server": "h1", "method": "no_such_method"},
 {"id": "nosuchmethod_allowed", "kind": "call", "topic": "st", "server": "h1", "method": "no_such_method",
  "allowed_exmods": ["oslo_messaging.rpc.dispatcher"]},
 {"id": "private", "kind": "call", "topic": "st", "server": "h1", "method": "_private"},
 {"id": "unsupported", "kind": "call", "topic": "st", "server": "h1", "method": "echo", "version": "1.4"},
 {"id": "ns_nope", "kind": "call", "topic": "st", "server": "h1", "method": "echo", "namespace": "nope"},
 {"id": "heartbeat", "kind": "call", "topic": "st", "server": "h1", "method": "slow",
  "args": {"seconds": 3.3}, "cm_timeout": 2, "timeout": 20},
 {"id": "timeout", "kind": "call", "topic": "st", "server": "nobody", "method": "echo", "timeout": 1.5},
 {"id": "cast", "kind": "cast", "topic": "st", "server": "h1", "method": "record", "args": {"c": 3}},
 {"id": "fanout", "kind": "cast", "topic": "st", "fanout": true, "method": "record", "args": {"f": 4}},
 {"id": "fanout_call", "kind": "call", "topic": "st", "fanout": true, "method": "echo"},
 {"id": "badspec", "kind": "call", "topic": "st"}
]
EOF
"${PEER[@]}" calls <"$TMP/specs.json" >"$TMP/calls.out" 2>"$TMP/calls.err"
check "calls exit 0, one line per spec" "{\"rc\": $?, \"lines\": $(wc -l <"$TMP/calls.out")}" \
    "d['rc'] == 0 and d['lines'] == 22"
check "call echo (unicode, nested, float, null, bool)" "$(by_id echo)" \
    "d['ok'] and d['result'] == {'s': 'h\u00e9llo \u2603', 'n': 3, 'f': 1.5, 'z': None, 'b': True, 'l': [1, {'k': 'v'}]}"
check "call to topic (any server)" "$(by_id topic)" "d['ok'] and d['result'] == {'b': 2}"
check "echo_context gets ctx + client_timeout" "$(by_id ctx)" \
    "d['result'] == {'user_id': 'u1', 'project_id': 'p1', 'roles': ['reader'], 'client_timeout': None}"
check "baseapi ping v1.1" "$(by_id ping)" "d['result'] == {'service': 'pypeer', 'arg': 'z'}"
check "baseapi get_backdoor_port -> null" "$(by_id backdoor)" "d['ok'] and d['result'] is None"
check "ValueError rebuilt (builtins)" "$(by_id valueerror)" \
    "d['exception_class'] == 'ValueError' and d['exception_module'] == 'builtins' and d['message'] == 'bad value 42'"
check "KeyError rebuilt (builtins)" "$(by_id keyerror)" \
    "d['exception_class'] == 'KeyError' and d['message'] == \"'nokey'\""
check "expected exception arrives as ValueError" "$(by_id expected)" \
    "d['exception_class'] == 'ValueError' and d['message'] == 'expected boom'"
check "PeerError rebuilt with kwargs" "$(by_id peererror)" \
    "d['exception_class'] == 'PeerError_Remote' and d['exception_module'] == 'peererrors_Remote' and d['kwargs'] == {'reason': 'disk full', 'code': 507} and d['message'] == 'Peer failure: disk full'"
check "PeerError not allowed -> RemoteError" "$(by_id peererror_remote)" \
    "d['exception_class'] == 'RemoteError' and d['remote_exc_type'] == 'PeerError' and d['message'] == 'Peer failure: disk full'"
check "remote MessagingTimeout -> RemoteError" "$(by_id remote_timeout)" \
    "d['exception_class'] == 'RemoteError' and d['remote_exc_type'] == 'MessagingTimeout' and d['message'] == 'too slow'"
check "NoSuchMethod as RemoteError" "$(by_id nosuchmethod)" \
    "d['exception_class'] == 'RemoteError' and d['remote_exc_type'] == 'NoSuchMethod' and d['message'] == 'Endpoint does not support RPC method no_such_method'"
check "NoSuchMethod rebuilt when allowed" "$(by_id nosuchmethod_allowed)" \
    "d['exception_class'] == 'NoSuchMethod_Remote' and d['exception_module'] == 'oslo_messaging.rpc.dispatcher_Remote'"
check "_private -> NoSuchMethod" "$(by_id private)" "d.get('remote_exc_type') == 'NoSuchMethod'"
check "UnsupportedVersion 1.4 as RemoteError" "$(by_id unsupported)" \
    "d['exception_class'] == 'RemoteError' and d['remote_exc_type'] == 'UnsupportedVersion' and d['message'] == 'Endpoint does not support RPC version 1.4. Attempted method: echo'"
check "namespace nope -> UnsupportedVersion" "$(by_id ns_nope)" "d.get('remote_exc_type') == 'UnsupportedVersion'"
check "slow 3.3 s with call-monitor 2 s (heartbeats)" "$(by_id heartbeat)" \
    "d['ok'] and d['result'] == {'slept': 3.3} and d['elapsed_ms'] > 3000"
check "call to missing server times out" "$(by_id timeout)" \
    "d['exception_class'] == 'MessagingTimeout' and 1400 < d['elapsed_ms'] < 5000"
check "cast ok" "$(by_id cast)" "d['ok'] and d['result'] is None"
check "fanout cast ok" "$(by_id fanout)" "d['ok']"
check "call with fanout -> InvalidTarget" "$(by_id fanout_call)" "d['exception_class'] == 'InvalidTarget'"
check "bad spec reported, not fatal" "$(by_id badspec)" "d['ok'] is False and d['exception_class'] == 'BadSpec'"
wait_for "$TMP/server.out" '"f": 4' 10
check "server recorded the cast" "$(grep '"c": 3' "$TMP/server.out")" \
    "d['event'] == 'record' and d['args'] == {'c': 3} and d['ctxt']['user'] == 'u-pypeer'"
check "server recorded the fanout cast" "$(grep '"f": 4' "$TMP/server.out")" \
    "d['event'] == 'record' and d['args'] == {'f': 4}"

# --- notify -> listen ---------------------------------------------------
notify() { "${PEER[@]}" notify --publisher-id compute.h1 "$@" 2>>"$TMP/notify.err" | tail -1; }
check "notify info v2" "$(notify --topic st_notif --priority info --event-type st.info --payload '{"n": 5}')" "d['ok']"
check "notify warning v2" "$(notify --topic st_versioned --priority warning --event-type st.warn \
    --payload '{"nova_object.name": "P", "nova_object.data": {}}' --ctx '{"user_id": "nu", "auth_token": "secret"}')" "d['ok']"
check "notify error v1 (driver messaging)" "$(notify --topic st_notif --priority error --event-type st.v1 \
    --payload '{"v1": true}' --driver messaging)" "d['ok']"
wait "$LPID"
check "listener exits 0 after --count" "{\"rc\": $?}" "d['rc'] == 0"
check "listener got info" "$(grep '"st.info"' "$TMP/listen.out")" \
    "d['priority'] == 'info' and d['payload'] == {'n': 5} and d['publisher_id'] == 'compute.h1' and d['metadata']['message_id'] and d['ctxt']['user'] == 'u-pypeer'"
check "listener got warn, auth_token sanitised" "$(grep '"st.warn"' "$TMP/listen.out")" \
    "d['priority'] == 'warn' and d['payload']['nova_object.name'] == 'P' and d['ctxt'] == {'user_id': 'nu', 'client_timeout': None}"
check "listener got v1 error" "$(grep '"st.v1"' "$TMP/listen.out")" "d['priority'] == 'error' and d['payload'] == {'v1': True}"
wait "$POOLPID"
check "pool listener got its copy" "$(grep '"notification"' "$TMP/pool.out" | head -1)" "d['event_type'] in ('st.info', 'st.v1')"
"${PEER[@]}" listen --topics st_empty --count 1 --timeout 2 >"$TMP/empty.out" 2>&1
check "listener exits 1 when --timeout hits before --count" "{\"rc\": $?}" "d['rc'] == 1"

# --- options: --opt and URL query ----------------------------------------
"${PEER[@]}" --exchange st_durable --opt amqp_durable_queues=true server --topic st_dur --server h1 \
    >"$TMP/dur.out" 2>"$TMP/dur.err" &
DPID=$!
PIDS+=("$DPID")
wait_for "$TMP/dur.out" '"ready"' 30
check "durable queues via --opt" \
    "$(rabbitmqctl -q list_queues -p "$VHOST" name durable --formatter json | "$PY" -c \
       'import json,sys; print(json.dumps({q["name"]: q["durable"] for q in json.load(sys.stdin)}))')" \
    "d.get('st_dur') is True and d.get('st_dur.h1') is True and d.get('st') is False"
check "client with the option in the URL query" \
    "$(echo '[{"id": "q", "kind": "call", "topic": "st_dur", "server": "h1", "method": "echo", "args": {"q": 1}}]' | \
       "$PY" "$HERE/oslo_peer.py" --url "$URL?amqp_durable_queues=true" --exchange st_durable calls 2>/dev/null)" \
    "d['ok'] and d['result'] == {'q': 1}"
kill "$DPID"; wait "$DPID" 2>/dev/null
echo '[]' | "${PEER[@]}" --opt amqp_durable_queuez=true calls >/dev/null 2>&1
check "misspelt --opt rejected" "{\"rc\": $?}" "d['rc'] == 2"

# --- calls in JSON Lines mode (one client process driven line by line) ---
check "calls with JSON Lines input" \
    "$(printf '%s\n' '{"id": "jl1", "kind": "call", "topic": "st", "method": "echo", "args": {"j": 1}}' \
                     '{"id": "jl2", "kind": "call", "topic": "st", "method": "echo", "args": {"j": 2}}' | \
       "${PEER[@]}" calls 2>/dev/null | "$PY" -c 'import json,sys; print(json.dumps([json.loads(l) for l in sys.stdin]))')" \
    "[r['id'] for r in d] == ['jl1', 'jl2'] and [r['result'] for r in d] == [{'j': 1}, {'j': 2}]"

# --- throughput probes ----------------------------------------------------
check "flood 200" "$("${PEER[@]}" flood --topic st --server h1 --n 200 2>/dev/null)" \
    "d['replies'] == 200 and d['failures'] == 0 and d['calls_per_s'] > 0"
check "bench 100 x 2" "$("${PEER[@]}" bench --topic st --server h1 --n 100 --concurrency 2 2>/dev/null)" \
    "d['ok'] == 100 and d['errors'] == 0 and d['p50_ms'] is not None"

# --- clean stop -------------------------------------------------------------
kill -TERM "$SPID"
wait "$SPID"
check "server stops on SIGTERM" "$(tail -1 "$TMP/server.out")" "d['event'] == 'stopped'"
check "fanout queue deleted on stop" \
    "$(rabbitmqctl -q list_queues -p "$VHOST" name --formatter json | "$PY" -c \
       'import json,sys; print(json.dumps([q["name"] for q in json.load(sys.stdin)]))')" \
    "not any(n.startswith('st_fanout_') for n in d) and 'st.h1' in d"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]

#!/bin/bash
# python-compute.sh WORK start HOST   start the REAL Python nova-compute (Debian's python3-nova,
#                                     VMware vCenter driver) as compute HOST on the control
#                                     plane of WORK (see up.sh); waits until its service is up
#                                     in nova's API, then runs `nova-manage cell_v2 discover_hosts`.
#                                     Prints the process id (= process group) on stdout.
# python-compute.sh WORK stop HOST    stop it (TERM, KILL after 15 s)
# python-compute.sh WORK pid HOST     print its process id
#
# The vCenter comes from the environment: VC_HOST (127.0.0.1), VC_PORT (443), VC_USER,
# VC_PASS, VC_CLUSTER (DC0_C0), VC_DATASTORE_REGEX (empty: all), VC_POLL (task_poll_interval,
# 0.5), VC_VNC_ENABLED ([vnc] enabled, False). Written for integration/pyvmware's simulator
# launcher; any vCenter will do.
# Config: WORK/etc/nova-compute.conf (up.sh's) then WORK/etc/pycompute-HOST.conf (this
# compute's host, state and [vmware] section). Log WORK/log/pycompute-HOST.log, stdout/err
# WORK/log/pycompute-HOST.out. There is no nova-compute console script (the Debian package
# nova-compute pulls libvirt), so integration/pyvmware/nova_compute.py starts it.
set -euo pipefail
[ $# -eq 3 ] || { sed -n 2,17p "$0" >&2; exit 2; }
WORK=$(cd "$1" && pwd); ACTION=$2; HOST=$3
HERE=$(cd "$(dirname "$0")" && pwd)
PY=/usr/bin/python3
unset PYTHONPATH PYTHONHOME
NAME=pycompute-$HOST
PIDFILE=$WORK/run/$NAME.pid

log() { printf '[%s] python-compute.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
running() { [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
envjson() { $PY -c 'import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print(" ".join(v) if isinstance(v,list) else v)' "$WORK/env.json" "$1"; }

case $ACTION in
start)
  [ -s "$WORK/env.json" ] || die "$WORK/env.json missing: run up.sh $WORK first"
  running && die "$NAME already runs (pid $(cat "$PIDFILE"))"
  mkdir -p "$WORK/state/$NAME/instances" "$WORK/lock/$NAME" "$WORK/etc" "$WORK/log" "$WORK/run"
  conf=$WORK/etc/$NAME.conf
  cat > "$conf" <<EOF
# written by python-compute.sh for compute $HOST
[DEFAULT]
host = $HOST
state_path = $WORK/state/$NAME
instances_path = $WORK/state/$NAME/instances
[oslo_concurrency]
lock_path = $WORK/lock/$NAME
[vmware]
host_ip = ${VC_HOST:-127.0.0.1}
host_port = ${VC_PORT:-443}
host_username = ${VC_USER:-}
host_password = ${VC_PASS:-}
insecure = True
cluster_name = ${VC_CLUSTER:-DC0_C0}
datastore_regex = ${VC_DATASTORE_REGEX:-}
task_poll_interval = ${VC_POLL:-0.5}
api_retry_count = 2
use_linked_clone = False
[vnc]
enabled = ${VC_VNC_ENABLED:-False}
EOF
  base=$(envjson nova_compute_conf)
  since=$(date -u +%Y-%m-%dT%H:%M:%S)
  t0=$(date +%s.%N)
  # a session of its own: the pid is the process group; no fd of the caller stays open
  setsid "$PY" "$HERE/../pyvmware/nova_compute.py" --config-file "$base" --config-file "$conf" \
    --log-file "$WORK/log/$NAME.log" </dev/null >"$WORK/log/$NAME.out" 2>&1 &
  echo $! > "$PIDFILE"
  nova=$(envjson nova_url); token=$(envjson token); hdr=$(envjson auth_header)
  st=none
  for _ in $(seq 1 240); do
    # up = reported (updated_at) after this start: not the record of an earlier run
    st=$(curl -s -H "$hdr: $token" -H "X-OpenStack-Nova-API-Version: 2.53" \
      "$nova/os-services?binary=nova-compute&host=$HOST" | $PY -c '
import json, sys
s = json.load(sys.stdin).get("services", [])
print("up" if s and s[0]["state"] == "up" and (s[0]["updated_at"] or "") >= sys.argv[1] else "down")' "$since" 2>/dev/null || echo none)
    [ "$st" = up ] && break
    running || { tail -20 "$WORK/log/$NAME.out" "$WORK/log/$NAME.log" >&2 2>/dev/null; die "$NAME exited; see $WORK/log/$NAME.log"; }
    sleep 0.5
  done
  [ "$st" = up ] || die "$NAME not up after 120 s; see $WORK/log/$NAME.log"
  log "$NAME up after $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
  # map it to the cell now rather than at the scheduler's next discovery
  # shellcheck disable=SC2046
  $(envjson nova_manage) cell_v2 discover_hosts >&2 || true
  cat "$PIDFILE"
  ;;
stop)
  running || { rm -f "$PIDFILE"; exit 0; }
  pid=$(cat "$PIDFILE")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  log "$NAME stopped"
  ;;
pid)
  running || die "$NAME does not run"
  cat "$PIDFILE" ;;
*) die "unknown action $ACTION" ;;
esac

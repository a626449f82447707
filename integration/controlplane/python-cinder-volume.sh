#!/bin/bash
# python-cinder-volume.sh WORK start HOST BACKEND   start the REAL Python cinder-volume (Debian's
#                                     python3-cinder, VMDK driver VMwareVcVmdkDriver) as backend
#                                     HOST@BACKEND (volume_backend_name BACKEND, pool
#                                     HOST@BACKEND#BACKEND) on the control plane of WORK (see
#                                     up.sh); waits until cinder-scheduler has the pool's
#                                     capabilities from this start. Prints the process id (= process
#                                     group: oslo.service's launcher, its child serves the backend).
# python-cinder-volume.sh WORK stop HOST    stop it (TERM, KILL after 15 s)
# python-cinder-volume.sh WORK pid HOST     print its process id
#
# The vCenter comes from the environment: VC_HOST (127.0.0.1), VC_PORT (443), VC_USER, VC_PASS,
# VC_CLUSTER (DC0_C0: vmware_cluster_name), VC_DATASTORE_REGEX (empty: all), VC_POLL
# (vmware_task_poll_interval, 0.5 as nova's; cinder's default is 2.0), VC_LAZY
# (vmware_lazy_create, True as cinder's default). Written for integration/pyvmware's simulator
# launcher (it serves the WSDL suds needs at /sdk/vimService.wsdl); any vCenter will do.
# Config: WORK/etc/cinder.conf (up.sh's: bus, database, exchange) then
# WORK/etc/pycinder-HOST.conf (host, enabled_backends and the backend's section). Log
# WORK/log/pycinder-HOST.log, stdout/err WORK/log/pycinder-HOST.out. Debian's cinder-volume
# package (its console script) pulls lvm2 and friends, which up.sh does not install; the
# script is one line (cinder.cmd.volume's main), run here with python -c.
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,20p "$0" >&2; exit 2; }
WORK=$(cd "$1" && pwd); ACTION=$2; HOST=$3; BACKEND=${4:-}
PY=/usr/bin/python3
unset PYTHONPATH PYTHONHOME
NAME=pycinder-$HOST
PIDFILE=$WORK/run/$NAME.pid

log() { printf '[%s] python-cinder-volume.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
running() { [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
envjson() { $PY -c 'import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print(" ".join(v) if isinstance(v,list) else v)' "$WORK/env.json" "$1"; }

case $ACTION in
start)
  [ -n "$BACKEND" ] || die "start needs HOST and BACKEND"
  [ -s "$WORK/env.json" ] || die "$WORK/env.json missing: run up.sh $WORK first"
  running && die "$NAME already runs (pid $(cat "$PIDFILE"))"
  mkdir -p "$WORK/state/$NAME" "$WORK/lock/$NAME" "$WORK/etc" "$WORK/log" "$WORK/run"
  conf=$WORK/etc/$NAME.conf
  cat > "$conf" <<EOF
# written by python-cinder-volume.sh for cinder-volume $HOST@$BACKEND
[DEFAULT]
host = $HOST
enabled_backends = $BACKEND
state_path = $WORK/state/$NAME
[oslo_concurrency]
lock_path = $WORK/lock/$NAME
[$BACKEND]
volume_driver = cinder.volume.drivers.vmware.vmdk.VMwareVcVmdkDriver
volume_backend_name = $BACKEND
vmware_host_ip = ${VC_HOST:-127.0.0.1}
vmware_host_port = ${VC_PORT:-443}
vmware_host_username = ${VC_USER:-}
vmware_host_password = ${VC_PASS:-}
vmware_insecure = True
vmware_cluster_name = ${VC_CLUSTER:-DC0_C0}
vmware_datastore_regex = ${VC_DATASTORE_REGEX:-}
vmware_task_poll_interval = ${VC_POLL:-0.5}
vmware_api_retry_count = 2
vmware_lazy_create = ${VC_LAZY:-True}
EOF
  base=$(envjson cinder_conf)
  since=$(date -u +%Y-%m-%dT%H:%M:%S)
  t0=$(date +%s.%N)
  # a session of its own: the pid is the process group; no fd of the caller stays open
  setsid "$PY" -c 'import sys; from cinder.cmd.volume import main; sys.exit(main())' \
    --config-file "$base" --config-file "$conf" --log-file "$WORK/log/$NAME.log" \
    </dev/null >"$WORK/log/$NAME.out" 2>&1 &
  echo $! > "$PIDFILE"
  cinder=$(envjson cinder_url); token=$(envjson token); hdr=$(envjson auth_header)
  st=none
  for _ in $(seq 1 360); do
    # ready = the scheduler has the pool's capabilities from after this start (the service
    # row is "up" before the driver has logged in to vCenter)
    st=$(curl -s -H "$hdr: $token" -H "OpenStack-API-Version: volume 3.0" \
      "$cinder/scheduler-stats/get_pools?detail=true" | $PY -c '
import json, sys
for p in json.load(sys.stdin).get("pools", []):
    if p["name"] == sys.argv[1] and (p["capabilities"].get("timestamp") or "") >= sys.argv[2]:
        print("up"); break
else:
    print("down")' "$HOST@$BACKEND#$BACKEND" "$since" 2>/dev/null || echo none)
    [ "$st" = up ] && break
    running || { tail -20 "$WORK/log/$NAME.out" "$WORK/log/$NAME.log" >&2 2>/dev/null; die "$NAME exited; see $WORK/log/$NAME.log"; }
    sleep 0.5
  done
  [ "$st" = up ] || die "$NAME not ready after 180 s; see $WORK/log/$NAME.log"
  log "$NAME ready after $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
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

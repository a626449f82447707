#!/bin/bash
# down.sh WORK — stop every process up.sh started for WORK (by the pid files in WORK/run:
# each service runs in a process group of its own, which is signalled as a whole), then
# make sure no process of this control plane is left. Leaves WORK (configs, logs,
# databases) in place: a later up.sh WORK restarts from it. The RabbitMQ vhost stays too
# (up.sh empties it when it creates a new WORK).
set -uo pipefail
[ $# -eq 1 ] || { echo "usage: $0 WORK" >&2; exit 2; }
[ -d "$1" ] || { echo "down.sh: no such work dir: $1" >&2; exit 0; }
WORK=$(cd "$1" && pwd)
source "$(dirname "$0")/lib/common.sh"
exec 9>"$WORK/.updown.lock"
flock -w 1800 9 || die "could not lock $WORK/.updown.lock"

shopt -s nullglob
# stop_group NAME...: TERM the process groups of NAME... at once, wait for all of them
# (KILL after 20 s). In parallel: each oslo.service process takes seconds to stop.
stop_group() {
  local n pid pids="" alive
  for n in "$@"; do
    [ -s "$(pidfile "$n")" ] || continue
    pid=$(cat "$(pidfile "$n")")
    # only a live leader that is ours: a dead leader's pid may since belong to someone
    # else's group (remnants of ours are found by the scan below)
    ours "$pid" || continue
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    pids="$pids $pid"
  done
  for _ in $(seq 1 40); do
    alive=
    for pid in $pids; do kill -0 -- "-$pid" 2>/dev/null && alive="$alive $pid"; done
    [ -z "$alive" ] && break
    sleep 0.5
  done
  for pid in $alive; do
    log "process group $pid did not stop on TERM within 20 s: KILL"
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  for n in "$@"; do
    [ -s "$(pidfile "$n")" ] && log "stopped $n (pid $(cat "$(pidfile "$n")"))"
    rm -f "$(pidfile "$n")"
  done
}
# the OpenStack services and the stub together (and anything else with a pid file), then
# the database they all use
others=
for f in "$WORK"/run/*.pid; do
  n=$(basename "$f" .pid)
  [ "$n" = mysqld ] || others="$others $n"
done
# shellcheck disable=SC2086
[ -z "$others" ] || stop_group $others
stop_group mysqld

# Safety net: any process still running one of this WORK's configs or programs (pid file
# lost, a service that left its process group). Our own ancestors are spared.
leftovers() {
  local p skip=" $$ " a=$$
  while [ "$a" -gt 1 ] 2>/dev/null; do
    a=$(awk '{print $4}' "/proc/$a/stat" 2>/dev/null) || break
    skip="$skip$a "
  done
  # shellcheck disable=SC2013  # pids: one word per line
  for p in $(grep -lsaF -e "$WORK/etc/nova.conf" -e "$WORK/etc/glance-api.conf" \
               -e "$WORK/etc/placement" -e "$WORK/etc/cinder.conf" -e "$WORK/lib/" \
               -e "$WORK/etc/neutron.conf" \
               -e "--datadir=$WORK/mysql" \
               /proc/[0-9]*/cmdline 2>/dev/null); do
    p=${p#/proc/}; p=${p%/cmdline}
    [ -e "/proc/$p" ] || continue   # e.g. that grep itself
    case $skip in *" $p "*) ;; *) echo "$p" ;; esac
  done
}
left=$(leftovers)
if [ -n "$left" ]; then
  for p in $left; do log "leftover process $p: $(tr '\0' ' ' 2>/dev/null < "/proc/$p/cmdline")"; done
  # shellcheck disable=SC2086
  kill -TERM $left 2>/dev/null
  for _ in $(seq 1 20); do left=$(leftovers); [ -z "$left" ] && break; sleep 0.5; done
  # shellcheck disable=SC2086
  [ -z "$left" ] || kill -KILL $left 2>/dev/null
fi
log "control plane in $WORK stopped"

# Shared settings and helpers of up.sh / down.sh. Source it after setting WORK.
#
# Everything lives under $WORK (configs, logs, pid files, the private MariaDB, glance's
# images). Outside WORK only two things change: the Debian packages up.sh installs and
# the RabbitMQ vhost $CP_VHOST.

CP_DIR=${CP_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
PY=/usr/bin/python3   # Debian's python3 (the OpenStack libraries live there, not in pyenv etc.)
BIN=/usr/bin          # absolute paths: a pip-installed `openstack` earlier in PATH must not win
unset PYTHONPATH PYTHONHOME   # a caller's virtualenv / pyenv settings must not reach Debian's python

# Settings fixed when WORK is created (stored in WORK/settings.env; later runs reuse them,
# because the cell mapping in the DB records the transport URL and the ports end up in
# every config). Delete WORK to change them.
# (A variable added to this list later, e.g. CP_CINDER_PORT, is taken from the environment
# or its default the first time and then appended to an older WORK's settings.env.)
CP_FIXED_VARS="CP_VHOST CP_RABBIT_HOST CP_RABBIT_PORT CP_RABBIT_USER CP_RABBIT_PASS CP_NOVA_PORT CP_PLACEMENT_PORT CP_GLANCE_PORT CP_CINDER_PORT CP_TOKEN CP_NEUTRON_SERVER_PORT"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

load_settings() {
  local f=$WORK/settings.env v stored
  if [ -s "$f" ]; then
    for v in $CP_FIXED_VARS; do
      grep -q "^$v=" "$f" || continue   # not fixed yet in this WORK (see save_settings)
      stored=$(sed -n "s/^$v=//p" "$f" | tr -d "'")
      if [ -n "${!v:-}" ] && [ "${!v}" != "$stored" ]; then
        log "note: $WORK was created with $v=$stored; ignoring $v=${!v} (delete WORK to change it)"
      fi
    done
    # shellcheck disable=SC1090
    source "$f"
  fi
  CP_VHOST=${CP_VHOST:-vcagent_cp}
  CP_RABBIT_HOST=${CP_RABBIT_HOST:-127.0.0.1}
  CP_RABBIT_PORT=${CP_RABBIT_PORT:-5672}
  CP_RABBIT_USER=${CP_RABBIT_USER:-guest}
  CP_RABBIT_PASS=${CP_RABBIT_PASS:-guest}
  CP_NOVA_PORT=${CP_NOVA_PORT:-18774}
  CP_PLACEMENT_PORT=${CP_PLACEMENT_PORT:-18778}
  CP_GLANCE_PORT=${CP_GLANCE_PORT:-19292}
  CP_CINDER_PORT=${CP_CINDER_PORT:-18776}     # cinder-api (uwsgi)
  CP_TOKEN=${CP_TOKEN:-admin:admin}           # noauth2 token "user:project"; user admin is admin
  CP_NEUTRON_SERVER_PORT=${CP_NEUTRON_SERVER_PORT:-19697}   # the real neutron-server (nova's network service)
  # free settings (read on every run)
  CP_DEBUG=${CP_DEBUG:-False}
  CP_REPORT_INTERVAL=${CP_REPORT_INTERVAL:-5}
  CP_SERVICE_DOWN_TIME=${CP_SERVICE_DOWN_TIME:-20}
  CP_DISCOVER_INTERVAL=${CP_DISCOVER_INTERVAL:-2}
  # cinder-scheduler holds volume requests after its start until every known volume
  # service has reported its capabilities, at most this long (cinder's default: 60 s)
  CP_CINDER_SCHED_WAIT=${CP_CINDER_SCHED_WAIT:-10}
  # neutron-server: an agent is alive while its last report_state is younger than this
  CP_NEUTRON_AGENT_DOWN_TIME=${CP_NEUTRON_AGENT_DOWN_TIME:-75}
  CP_NEUTRON_VLAN_RANGES=${CP_NEUTRON_VLAN_RANGES:-physnet1:100:199}
  # the vmware_dvs ML2 driver's source (contrib/neutron of the checkout)
  CP_NEUTRON_CONTRIB=${CP_NEUTRON_CONTRIB:-$(cd "$CP_DIR/../.." && pwd)/contrib/neutron}
  # placeholders of WORK/etc/nova-compute.conf (the config a Python nova-compute with the
  # VMware driver would read; defaults = govmomi's vcsim)
  CP_COMPUTE_HOST=${CP_COMPUTE_HOST:-vcagent-1}
  CP_VC_HOST=${CP_VC_HOST:-127.0.0.1}
  CP_VC_PORT=${CP_VC_PORT:-8989}
  CP_VC_USER=${CP_VC_USER:-user}
  CP_VC_PASS=${CP_VC_PASS:-pass}
  CP_VC_CLUSTER=${CP_VC_CLUSTER:-DC0_C0}
  CP_VC_DATASTORE_REGEX=${CP_VC_DATASTORE_REGEX:-LocalDS_.*}

  TRANSPORT_URL="rabbit://$CP_RABBIT_USER:$CP_RABBIT_PASS@$CP_RABBIT_HOST:$CP_RABBIT_PORT/$CP_VHOST"
  NOVA_URL=http://127.0.0.1:$CP_NOVA_PORT/v2.1
  PLACEMENT_URL=http://127.0.0.1:$CP_PLACEMENT_PORT
  GLANCE_URL=http://127.0.0.1:$CP_GLANCE_PORT
  NEUTRON_SERVER_URL=http://127.0.0.1:$CP_NEUTRON_SERVER_PORT
  # cinder: the project of the token ("user:project") in the URL, as a keystone catalog
  # would give it. cinder routes a project id in a URL only if it matches
  # project_id_regex (default: hex ids of keystone), hence that project is added to it.
  CP_PROJECT=${CP_TOKEN#*:}
  CINDER_ROOT=http://127.0.0.1:$CP_CINDER_PORT
  CINDER_URL=$CINDER_ROOT/v3/$CP_PROJECT
  CINDER_PROJECT_ID_REGEX="[0-9a-f\\-]+|$(printf '%s' "$CP_PROJECT" | sed 's/[][\\.^$*+?(){}|]/\\&/g')"
  # shellcheck disable=SC2034  # used by up.sh
  DB_NAMES="nova_api nova_cell0 nova placement glance cinder neutron"
  # the private mariadbd's unix socket; a socket path must stay under 108 bytes
  # (sun_path), so a long WORK gets a socket in /tmp named after WORK's checksum
  MYSQL_SOCK=$WORK/run/mysqld.sock
  if [ ${#MYSQL_SOCK} -ge 100 ]; then
    MYSQL_SOCK=/tmp/vcagent-cp-$(printf '%s' "$WORK" | cksum | cut -d' ' -f1).sock
  fi
  DB_NOVA_API=$(db_url nova_api); DB_NOVA_CELL0=$(db_url nova_cell0); DB_NOVA=$(db_url nova)
  DB_PLACEMENT=$(db_url placement); DB_GLANCE=$(db_url glance); DB_CINDER=$(db_url cinder)
  DB_NEUTRON=$(db_url neutron)
  # the cinder database for Go's go-sql-driver/mysql (user cp: password auth works for any
  # client uid, root is unix_socket-authenticated)
  CINDER_GO_DSN="cp:cp@unix($MYSQL_SOCK)/cinder?parseTime=true"
  # exported for render (templates use @NAME@)
  export WORK CP_VHOST CP_RABBIT_HOST CP_RABBIT_PORT CP_RABBIT_USER CP_RABBIT_PASS \
    CP_NOVA_PORT CP_PLACEMENT_PORT CP_GLANCE_PORT CP_CINDER_PORT CP_TOKEN CP_DEBUG \
    CP_REPORT_INTERVAL CP_SERVICE_DOWN_TIME CP_DISCOVER_INTERVAL CP_COMPUTE_HOST \
    CP_VC_HOST CP_VC_PORT CP_VC_USER CP_VC_PASS CP_VC_CLUSTER CP_VC_DATASTORE_REGEX \
    TRANSPORT_URL NOVA_URL PLACEMENT_URL GLANCE_URL MYSQL_SOCK \
    DB_NOVA_API DB_NOVA_CELL0 DB_NOVA DB_PLACEMENT DB_GLANCE DB_CINDER CINDER_GO_DSN \
    CP_PROJECT CINDER_ROOT CINDER_URL CINDER_PROJECT_ID_REGEX CP_CINDER_SCHED_WAIT \
    CP_NEUTRON_SERVER_PORT NEUTRON_SERVER_URL DB_NEUTRON CP_NEUTRON_AGENT_DOWN_TIME \
    CP_NEUTRON_VLAN_RANGES CP_NEUTRON_CONTRIB
}

save_settings() {
  local f=$WORK/settings.env v
  if [ ! -s "$f" ]; then
    echo "# fixed at creation of this work dir (see integration/controlplane/lib/common.sh)" > "$f"
  fi
  # all of them for a new WORK; those added since for an older one
  for v in $CP_FIXED_VARS; do
    grep -q "^$v=" "$f" || printf "%s='%s'\n" "$v" "${!v}" >> "$f"
  done
}

# db_url NAME: SQLAlchemy URL of database NAME in the private mariadbd
db_url() { echo "mysql+pymysql://cp:cp@localhost/$1?unix_socket=$MYSQL_SOCK&charset=utf8"; }

# render TEMPLATE OUT: replace @VAR@ by the value of shell variable VAR
render() {
  local tmpl=$1 out=$2
  $PY - "$tmpl" "$out" <<'PYEOF'
import os, re, sys
src, dst = sys.argv[1], sys.argv[2]
text = open(src).read()
def sub(m):
    name = m.group(1)
    if name not in os.environ:
        sys.exit("render %s: @%s@ is not set" % (src, name))
    return os.environ[name]
out = re.sub(r'@([A-Z][A-Z0-9_]*)@', sub, text)
tmp = dst + '.tmp'
open(tmp, 'w').write(out)
os.replace(tmp, dst)
PYEOF
}

pidfile() { echo "$WORK/run/$1.pid"; }

# ours PID: PID runs a program of this work dir (each service's command line names a file
# under WORK), i.e. it is not a recycled pid of a stale pid file (after a reboot)
ours() { [ -n "$1" ] && grep -qsaF -- "$WORK/" "/proc/$1/cmdline"; }

is_running() {  # is_running NAME
  local f; f=$(pidfile "$1")
  [ -s "$f" ] && ours "$(cat "$f")"
}

# port_busy PORT: something accepts connections on 127.0.0.1:PORT
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_bg NAME PORT|- CMD...: run CMD in a session of its own (pid = pgid, so that
# down.sh can signal the whole group: uwsgi and nova-api fork workers); stdout/stderr to
# WORK/log/NAME.out. Refuses to start when PORT is already taken by someone else: a
# leftover from another work dir would otherwise answer the readiness checks.
start_bg() {
  local name=$1 port=$2; shift 2
  if is_running "$name"; then log "$name already running (pid $(cat "$(pidfile "$name")"))"; return 0; fi
  if [ "$port" != - ] && port_busy "$port"; then
    die "port $port (for $name) is already in use by another process: $(ss -ltnpH "sport = :$port" 2>/dev/null | grep -o 'users:.*' | head -1)"
  fi
  # 8>&- 9>&-: the service must not inherit up.sh's stderr copy (a caller reading up.sh's
  # output through a pipe would wait for the service's end) nor the lock (held forever)
  setsid "$@" >>"$WORK/log/$name.out" 2>&1 </dev/null 8>&- 9>&- &
  echo $! > "$(pidfile "$name")"
  log "started $name (pid $!)"
}

# wait_http NAME URL SECONDS: wait until URL answers (any HTTP status) while NAME runs
wait_http() {
  local name=$1 url=$2 t=$3
  for _ in $(seq 1 $((t * 4))); do
    is_running "$name" || die "$name exited; see $WORK/log/$name.out and $WORK/log/$name.log"
    curl -s -o /dev/null -m 2 "$url" && return 0
    sleep 0.25
  done
  die "$name: no answer from $url after $t s; see $WORK/log/$name.*"
}

# nova REST: novacurl METHOD PATH [JSON] -> body on stdout; fails on HTTP >= 400
novacurl() {
  curl -sS -f -X "$1" -H "X-Auth-Token: $CP_TOKEN" -H 'Content-Type: application/json' \
    -H 'OpenStack-API-Version: compute 2.93' ${3:+-d "$3"} "$NOVA_URL$2"
}

nova_manage() { $BIN/nova-manage --config-file "$WORK/etc/nova.conf" "$@"; }

# cinder REST: cindercurl METHOD PATH [JSON] -> body on stdout; fails on HTTP >= 400
# (PATH below /v3/<project>)
cindercurl() {
  curl -sS -f -X "$1" -H "X-Auth-Token: $CP_TOKEN" -H 'Content-Type: application/json' \
    -H 'OpenStack-API-Version: volume 3.70' ${3:+-d "$3"} "$CINDER_URL$2"
}

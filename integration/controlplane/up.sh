#!/bin/bash
# up.sh WORK — bring up a real OpenStack Zed control plane from Debian bookworm's packages
# for end-to-end tests of vcagent: nova-api, nova-conductor, nova-scheduler, placement-api,
# glance-api, cinder-api, cinder-scheduler (no cinder-volume: the agent is the volume
# service) and a real neutron-server (ML2, mechanism driver vmware_dvs from
# contrib/neutron; nova's network service), on a private MariaDB (unix
# socket under WORK) and the RabbitMQ vhost $CP_VHOST (default vcagent_cp). No keystone:
# noauth2, token admin:admin.
#
# Idempotent: installs what is missing, skips what is done, starts what is not running.
# Writes WORK/env (shell), WORK/env.json and WORK/etc/nova-compute.conf (the config a
# Python nova-compute with the VMware driver would read here). down.sh WORK stops it all.
# Settings (environment): see lib/common.sh and README.md.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 WORK" >&2; exit 2; }
T0=$(date +%s.%N)
mkdir -p "$1"
WORK=$(cd "$1" && pwd)
source "$(dirname "$0")/lib/common.sh"

[ "$(id -u)" = 0 ] || die "run as root (apt-get, rabbitmqctl, mariadbd)"
# one up.sh / down.sh at a time per work dir (parallel `go test` packages share one WORK)
exec 8>&2   # log lines of background steps
exec 9>"$WORK/.updown.lock"
flock -w 1800 9 || die "could not lock $WORK/.updown.lock"

load_settings
save_settings
mkdir -p "$WORK"/{etc/placement,lib,log,run,lock/nova,lock/compute,lock/placement,lock/glance,lock/cinder,state/nova,state/compute,state/cinder/coordination,glance/images,glance/staging,lock/neutron,state/neutron,lib/python,cache}

elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
FRESH=0; [ -d "$WORK/mysql/mysql" ] || FRESH=1

# ---------------------------------------------------------------- packages
PKGS="nova-api nova-conductor nova-scheduler placement-api glance-api cinder-api cinder-scheduler
python3-cinder neutron-server python3-neutron uwsgi-plugin-python3 python3-openstackclient python3-osc-placement python3-pymysql
mariadb-server mariadb-client curl eatmydata"
install_pkgs() {
  local pkgs=$PKGS missing="" p
  command -v rabbitmqctl >/dev/null || pkgs="$pkgs rabbitmq-server"
  local ok
  # shellcheck disable=SC2086
  ok=" $(dpkg-query -W -f='${db:Status-Status}:${Package} ' $pkgs 2>/dev/null || true) "
  for p in $pkgs; do
    case $ok in *" installed:$p "*) ;; *) missing="$missing $p" ;; esac
  done
  [ -n "${missing// /}" ] || return 0
  log "installing:$missing"
  local t apt="apt-get -o DPkg::Lock::Timeout=1200 -y --no-install-recommends"
  t=$(date +%s)
  # Debian's debconf questions (dbconfig, keystone registration, ...) default to "no" when
  # noninteractive; the services' own start-up is refused (policy-rc.d) or fails without
  # systemd, which is what we want: up.sh runs them itself.
  # shellcheck disable=SC2086
  if ! DEBIAN_FRONTEND=noninteractive $apt install $missing; then
    # stale package lists (fresh image) or an interrupted dpkg run
    DEBIAN_FRONTEND=noninteractive dpkg --configure -a || true
    apt-get -o DPkg::Lock::Timeout=1200 update
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $apt install $missing
  fi
  log "packages installed in $(( $(date +%s) - t )) s"
}

# ---------------------------------------------------------------- preflight
# every port must be free or held by our own running service; checked before anything
# (e.g. the vhost reset) can disturb another control plane on the same ports
preflight() {
  local spec name port
  for spec in placement-api:$CP_PLACEMENT_PORT \
              glance-api:$CP_GLANCE_PORT nova-api:$CP_NOVA_PORT cinder-api:$CP_CINDER_PORT \
              neutron-server:$CP_NEUTRON_SERVER_PORT; do
    name=${spec%%:*}; port=${spec##*:}
    if ! is_running "$name" && port_busy "$port"; then
      die "port $port (for $name) is in use by another process ($(ss -ltnpH "sport = :$port" 2>/dev/null | grep -o 'users:.*' | head -1)); stop it or set CP_*_PORT for a new WORK"
    fi
  done
}

# ---------------------------------------------------------------- RabbitMQ
rabbit_local() { case $CP_RABBIT_HOST in 127.0.0.1|localhost|::1) return 0 ;; esac; return 1; }
setup_rabbit() {
  rabbit_local || { log "RabbitMQ at $CP_RABBIT_HOST: vhost $CP_VHOST must exist already"; return 0; }
  if ! port_busy "$CP_RABBIT_PORT"; then
    log "RabbitMQ is not running: starting it"
    # (not with our lock fd or stderr: the broker would keep them open for ever)
    { service rabbitmq-server start || /etc/init.d/rabbitmq-server start; } \
      >>"$WORK/log/rabbitmq-start.log" 2>&1 </dev/null 8>&- 9>&- || true
    timeout 120 rabbitmqctl -q await_startup || die "RabbitMQ did not start"
  fi
  if [ "$FRESH" = 1 ]; then
    # a new work dir gets an empty vhost: queued messages of an earlier run (a cast to
    # compute.<host>, calls to the conductor) must not reach this run's services
    rabbitmqctl -q delete_vhost "$CP_VHOST" >/dev/null 2>&1 && log "deleted the old vhost $CP_VHOST"
  fi
  if [ "$FRESH" = 1 ] || ! rabbitmqctl -q list_vhosts | grep -qx "$CP_VHOST"; then
    rabbitmqctl -q add_vhost "$CP_VHOST"
    rabbitmqctl -q set_permissions -p "$CP_VHOST" "$CP_RABBIT_USER" '.*' '.*' '.*'
    log "created vhost $CP_VHOST"
  fi
}

# ---------------------------------------------------------------- configs
write_configs() {
  local t=$CP_DIR/templates e=$WORK/etc
  render "$t/nova.conf"          "$e/nova.conf"
  render "$t/nova-compute.conf"  "$e/nova-compute.conf"
  render "$t/placement.conf"     "$e/placement/placement.conf"
  render "$t/glance-api.conf"    "$e/glance-api.conf"
  render "$t/cinder.conf"        "$e/cinder.conf"
  render "$t/neutron.conf"       "$e/neutron.conf"
  render "$t/ml2_conf.ini"       "$e/ml2_conf.ini"
  cp "$t/glance-policy.yaml" "$e/glance-policy.yaml"
  # the running services use copies under WORK, not the checkout
  cp "$CP_DIR/lib/cp_noauth.py" "$CP_DIR/lib/cp_cinder_noauth.py" \
     "$CP_DIR/lib/nova_db_setup.py" "$CP_DIR/lib/cp_neutron_noauth.py" "$WORK/lib/"
  # the vmware_dvs ML2 driver (contrib/neutron) into WORK/lib/python, with the egg-info
  # whose entry point neutron's stevedore loads; on neutron-server's python path only
  [ -x "$CP_NEUTRON_CONTRIB/install.sh" ] || die "no $CP_NEUTRON_CONTRIB/install.sh (set CP_NEUTRON_CONTRIB)"
  "$CP_NEUTRON_CONTRIB/install.sh" "$WORK/lib/python" >/dev/null
  # Debian's nova paste pipeline with our noauth filter instead of noauth2's
  sed -e 's|^\(paste.filter_factory *= *\)nova.api.openstack.auth:NoAuthMiddleware.factory|\1cp_noauth:NoAuthKeepToken.factory|' \
    /etc/nova/api-paste.ini > "$e/nova-api-paste.ini.tmp"
  grep -q 'cp_noauth:NoAuthKeepToken.factory' "$e/nova-api-paste.ini.tmp" \
    || die "/etc/nova/api-paste.ini has no noauth2 filter to replace"
  mv "$e/nova-api-paste.ini.tmp" "$e/nova-api-paste.ini"
  # and cinder's, with lib/cp_cinder_noauth.py instead of cinder's noauth filter
  sed -e 's|^\(paste.filter_factory *= *\)cinder.api.middleware.auth:NoAuthMiddleware.factory|\1cp_cinder_noauth:NoAuthAdminOnly.factory|' \
    /etc/cinder/api-paste.ini > "$e/cinder-api-paste.ini.tmp"
  grep -q 'cp_cinder_noauth:NoAuthAdminOnly.factory' "$e/cinder-api-paste.ini.tmp" \
    || die "/etc/cinder/api-paste.ini has no noauth filter to replace"
  mv "$e/cinder-api-paste.ini.tmp" "$e/cinder-api-paste.ini"
  # and neutron's, with lib/cp_neutron_noauth.py instead of the fake_project_id filter
  sed -e 's|^\(paste.filter_factory *= *\)neutron.auth:NoauthFakeProjectId.factory|\1cp_neutron_noauth:NoauthUserProject.factory|' \
    /etc/neutron/api-paste.ini > "$e/neutron-api-paste.ini.tmp"
  grep -q 'cp_neutron_noauth:NoauthUserProject.factory' "$e/neutron-api-paste.ini.tmp" \
    || die "/etc/neutron/api-paste.ini has no fake_project_id filter to replace"
  mv "$e/neutron-api-paste.ini.tmp" "$e/neutron-api-paste.ini"
}

# ---------------------------------------------------------------- MariaDB
# A private mariadbd (socket only, no TCP, data under WORK): independent of the system
# server's state and users, nothing left behind outside WORK, a new WORK = new databases.
mysql_cli() { /usr/bin/mariadb --no-defaults -S "$MYSQL_SOCK" -u root "$@"; }
start_db() {
  # eatmydata turns fsync() into a no-op: creating nova's ~500 tables (one file each)
  # is 3-4x faster, and far more on a disk busy with other jobs. Test data only: a
  # machine crash may corrupt WORK's databases (CP_DB_FSYNC=1 keeps fsync).
  local wrap=
  [ "${CP_DB_FSYNC:-0}" = 1 ] || [ ! -x /usr/bin/eatmydata ] || wrap=/usr/bin/eatmydata
  if [ ! -d "$WORK/mysql/mysql" ]; then
    rm -rf "$WORK/mysql"; mkdir -p "$WORK/mysql"
    $wrap /usr/bin/mariadb-install-db --no-defaults --datadir="$WORK/mysql" --user=root \
      --auth-root-authentication-method=socket --skip-test-db >"$WORK/log/mysql-install.log" 2>&1 \
      || die "mariadb-install-db failed; see $WORK/log/mysql-install.log"
  fi
  if ! is_running mysqld; then rm -f "$MYSQL_SOCK"; fi
  start_bg mysqld - $wrap /usr/sbin/mariadbd --no-defaults --user=root --datadir="$WORK/mysql" \
    --socket="$MYSQL_SOCK" --skip-networking --pid-file="$WORK/mysql/mariadbd.pid" \
    --log-error="$WORK/log/mysqld.log" --tmpdir=/tmp --skip-log-bin \
    --innodb-buffer-pool-size=128M --innodb-log-file-size=64M \
    --innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 --innodb-flush-method=fsync \
    --performance-schema=OFF --max-connections=500 --character-set-server=utf8mb4 \
    --collation-server=utf8mb4_general_ci --skip-name-resolve
  for _ in $(seq 1 240); do
    mysql_cli -e 'select 1' >/dev/null 2>&1 && break
    is_running mysqld || die "mariadbd exited; see $WORK/log/mysqld.log"
    sleep 0.25
  done
  mysql_cli -e 'select 1' >/dev/null || die "mariadbd does not answer on $MYSQL_SOCK"
  local sql="CREATE USER IF NOT EXISTS 'cp'@'localhost' IDENTIFIED BY 'cp';" n
  for n in $DB_NAMES; do
    sql="$sql CREATE DATABASE IF NOT EXISTS $n CHARACTER SET utf8mb3; GRANT ALL ON $n.* TO 'cp'@'localhost';"
  done
  mysql_cli -e "$sql"
}

# ---------------------------------------------------------------- schema
# step NAME CMD...: run CMD once per work dir (marker in WORK/state), so that a failed run
# resumes where it stopped. A schema step that has not completed starts over from empty
# databases: MySQL DDL is not transactional, an interrupted migration cannot be resumed.
declare -A STEP_DBS=([nova-db]="nova_api nova_cell0 nova" [placement-db]=placement [glance-db]=glance [cinder-db]=cinder [neutron-db]=neutron)
step() {
  local name=$1 m=$WORK/state/.done-$1 n sql=; shift
  [ -e "$m" ] && return 0
  local t; t=$(date +%s)
  for n in ${STEP_DBS[$name]:-}; do
    sql="$sql DROP DATABASE IF EXISTS $n; CREATE DATABASE $n CHARACTER SET utf8mb3;"
  done
  [ -z "$sql" ] || mysql_cli -e "$sql" || return 1
  "$@" || return 1
  touch "$m"; log "done: $name ($(( $(date +%s) - t )) s)" 2>&8   # fd 8: up.sh's stderr
}
# nova: API DB, cell0 + cell1 mappings, the cells' schemas -- in one process
# (lib/nova_db_setup.py: the nova-manage commands without their start-up cost)
sync_nova() {
  step nova-db $PY "$WORK/lib/nova_db_setup.py" "$WORK/etc/nova.conf" "$DB_NOVA_CELL0"
}

sync_cinder() {
  step cinder-db $BIN/cinder-manage --config-file "$WORK/etc/cinder.conf" db sync
}

sync_neutron() {
  step neutron-db $BIN/neutron-db-manage --config-file "$WORK/etc/neutron.conf" \
    --config-file "$WORK/etc/ml2_conf.ini" upgrade heads
}

# ---------------------------------------------------------------- services
start_placement() {
  # uwsgi with --http11-socket: --http-socket breaks keep-alive clients (keystoneauth gets
  # "connection reset" on its second request)
  start_bg placement-api "$CP_PLACEMENT_PORT" /usr/bin/uwsgi --plugin python3 \
    --http11-socket "127.0.0.1:$CP_PLACEMENT_PORT" --wsgi-file /usr/bin/placement-api \
    --processes 1 --threads 4 --master --die-on-term --need-app --lazy-apps \
    --env "OS_PLACEMENT_CONFIG_DIR=$WORK/etc/placement"
}
start_glance() {
  start_bg glance-api "$CP_GLANCE_PORT" $BIN/glance-api --config-file "$WORK/etc/glance-api.conf" \
    --log-file "$WORK/log/glance-api.log"
}
start_nova() {
  local s
  for s in nova-conductor nova-scheduler; do
    start_bg $s - $BIN/$s --config-file "$WORK/etc/nova.conf" --log-file "$WORK/log/$s.log"
  done
  PYTHONPATH=$WORK/lib start_bg nova-api "$CP_NOVA_PORT" $BIN/nova-api \
    --config-file "$WORK/etc/nova.conf" --log-file "$WORK/log/nova-api.log"
}

# cinder-api: Debian's WSGI script under uwsgi as placement (Debian runs it so too); the
# oslo.config arguments go through --pyargv (no spaces in WORK, then). cinder-scheduler:
# Debian's console script (eventlet).
start_cinder() {
  start_bg cinder-scheduler - $BIN/cinder-scheduler --config-file "$WORK/etc/cinder.conf" \
    --log-file "$WORK/log/cinder-scheduler.log"
  start_bg cinder-api "$CP_CINDER_PORT" /usr/bin/uwsgi --plugin python3 \
    --http11-socket "127.0.0.1:$CP_CINDER_PORT" --wsgi-file /usr/bin/cinder-wsgi \
    --pyargv "--config-file $WORK/etc/cinder.conf --log-file $WORK/log/cinder-api.log" \
    --pythonpath "$WORK/lib" --buffer-size 65535 \
    --processes 1 --threads 4 --master --die-on-term --need-app --lazy-apps
}

# neutron-server (Debian's console script: parent, 1 API, 1 RPC, 1 state-report and a
# periodic worker, one process group) with the vmware_dvs driver from WORK/lib/python
# (found by its entry point; stevedore's cache under WORK/cache) and the noauth filter
# from WORK/lib. nova does not use it (nova.conf points at the stub).
start_neutron_server() {
  PYTHONPATH=$WORK/lib/python:$WORK/lib XDG_CACHE_HOME=$WORK/cache PYTHONDONTWRITEBYTECODE=1 \
    start_bg neutron-server "$CP_NEUTRON_SERVER_PORT" $BIN/neutron-server \
    --config-file "$WORK/etc/neutron.conf" --config-file "$WORK/etc/ml2_conf.ini" \
    --log-file "$WORK/log/neutron-server.log"
}

# neutron's API answers (only once ML2 and its drivers are loaded)
wait_neutron_server() {
  for _ in $(seq 1 720); do
    is_running neutron-server || die "neutron-server exited; see $WORK/log/neutron-server.*"
    curl -sf -m 2 -o /dev/null -H "X-Auth-Token: $CP_TOKEN" "$NEUTRON_SERVER_URL/v2.0/networks" && return 0
    sleep 0.25
  done
  die "neutron-server: no answer from $NEUTRON_SERVER_URL/v2.0/networks after 180 s; see $WORK/log/neutron-server.*"
}

# cinder-scheduler is up in cinder's os-services (it registers when it starts)
wait_cinder_services() {
  local st=""
  for _ in $(seq 1 240); do
    st=$(cindercurl GET /os-services?binary=cinder-scheduler 2>/dev/null | $PY -c '
import json, sys
print(" ".join(s["state"] for s in json.load(sys.stdin)["services"]))' 2>/dev/null || true)
    case " $st " in *" up "*) return 0 ;; esac
    is_running cinder-scheduler || die "cinder-scheduler exited; see $WORK/log/cinder-scheduler.*"
    is_running cinder-api || die "cinder-api exited; see $WORK/log/cinder-api.*"
    sleep 0.5
  done
  die "cinder-scheduler not up after 120 s (states: '$st'); see $WORK/log/cinder-*"
}

# a nova-api started before cinder was added to this control plane (by an older up.sh) read
# a nova.conf without [cinder]: it cannot reach cinder until restarted. Not restarted here:
# other tests may be using it.
note_old_nova_api() {
  local a c
  is_running nova-api && is_running cinder-api || return 0
  a=$(awk '{print $22}' "/proc/$(cat "$(pidfile nova-api)")/stat" 2>/dev/null) || return 0
  c=$(awk '{print $22}' "/proc/$(cat "$(pidfile cinder-api)")/stat" 2>/dev/null) || return 0
  [ -n "$a" ] && [ -n "$c" ] && [ "$a" -lt "$c" ] || return 0
  log "note: nova-api predates cinder here: it reaches cinder (volume attach) only after a restart (down.sh + up.sh)"
}

# conductor and scheduler have reported (os-services: state up)
wait_nova_services() {
  local up=""
  for _ in $(seq 1 240); do
    up=$(novacurl GET /os-services 2>/dev/null | $PY -c '
import json, sys
d = json.load(sys.stdin)
print(" ".join(sorted(s["binary"] for s in d["services"] if s["state"] == "up")))' 2>/dev/null || true)
    case " $up " in *" nova-conductor "*) case " $up " in *" nova-scheduler "*) return 0 ;; esac ;; esac
    is_running nova-conductor || die "nova-conductor exited; see $WORK/log/nova-conductor.*"
    is_running nova-scheduler || die "nova-scheduler exited; see $WORK/log/nova-scheduler.*"
    sleep 0.5
  done
  die "nova-conductor / nova-scheduler not up after 120 s (up: '$up'); see $WORK/log"
}

# the classic nova flavors, plus two small ones (ids as in devstack)
create_flavors() {
  local f name id vcpus ram disk code
  for f in m1.nano:42:1:64:1 m1.micro:84:1:128:1 m1.tiny:1:1:512:1 m1.small:2:1:2048:20 \
           m1.medium:3:2:4096:40 m1.large:4:4:8192:80 m1.xlarge:5:8:16384:160; do
    IFS=: read -r name id vcpus ram disk <<<"$f"
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Auth-Token: $CP_TOKEN" "$NOVA_URL/flavors/$id")
    [ "$code" = 200 ] && continue
    novacurl POST /flavors "{\"flavor\": {\"name\": \"$name\", \"id\": \"$id\", \"vcpus\": $vcpus, \"ram\": $ram, \"disk\": $disk}}" >/dev/null \
      || die "could not create flavor $name"
  done
}

# ---------------------------------------------------------------- env files
write_env() {
  cat > "$WORK/env.tmp" <<ENV
# source this file (bash) to use the vcagent test control plane; written by up.sh
export CP_WORK='$WORK'
export CP_TOKEN='$CP_TOKEN'
export CP_VHOST='$CP_VHOST'
export CP_TRANSPORT_URL='$TRANSPORT_URL'
export CP_NOVA_URL='$NOVA_URL' CP_PLACEMENT_URL='$PLACEMENT_URL' CP_GLANCE_URL='$GLANCE_URL' CP_NEUTRON_URL='$NEUTRON_SERVER_URL'
export CP_NOVA_CONF='$WORK/etc/nova.conf' CP_NOVA_COMPUTE_CONF='$WORK/etc/nova-compute.conf'
export CP_CINDER_URL='$CINDER_URL' CP_CINDER_CONF='$WORK/etc/cinder.conf' CP_CINDER_DB='$CINDER_GO_DSN'
export CP_NEUTRON_SERVER_URL='$NEUTRON_SERVER_URL' CP_NEUTRON_CONF='$WORK/etc/neutron.conf'
# the openstack CLI without keystone: keystoneauth's admin_token plugin (fixed token, one
# fixed endpoint for every service; OS_*_ENDPOINT_OVERRIDE is ignored by it). OS_ENDPOINT
# is nova; glance and placement commands need --os-endpoint (os_image / os_placement).
export OS_AUTH_TYPE=admin_token OS_TOKEN='$CP_TOKEN' OS_ENDPOINT='$NOVA_URL'
export OS_COMPUTE_API_VERSION=2.92   # newest this client (6.0.0) knows; the server does 2.93
unset OS_CLOUD OS_AUTH_URL OS_USERNAME OS_PASSWORD OS_PROJECT_NAME OS_USER_DOMAIN_NAME OS_PROJECT_DOMAIN_NAME
os_image()       { /usr/bin/openstack --os-endpoint '$GLANCE_URL/v2' "\$@"; }
os_placement()   { /usr/bin/openstack --os-endpoint '$PLACEMENT_URL' "\$@"; }
cp_nova_manage() { /usr/bin/nova-manage --config-file '$WORK/etc/nova.conf' "\$@"; }
os_volume()      { /usr/bin/openstack --os-endpoint '$CINDER_URL' --os-volume-api-version 3.70 "\$@"; }
cp_cinder_manage() { /usr/bin/cinder-manage --config-file '$WORK/etc/cinder.conf' "\$@"; }
# raw cinder REST at microversion 3.70: cp_ccurl METHOD PATH [JSON]   (PATH below /v3/$CP_PROJECT)
cp_ccurl() { curl -s -X "\$1" -H 'X-Auth-Token: $CP_TOKEN' -H 'Content-Type: application/json' -H 'OpenStack-API-Version: volume 3.70' \${3:+-d "\$3"} '$CINDER_URL'"\$2"; }
# the real neutron-server (not nova's stub): os_network network list, cp_ncurl GET /v2.0/agents
os_network() { /usr/bin/openstack --os-endpoint '$NEUTRON_SERVER_URL' "\$@"; }
cp_ncurl() { curl -s -X "\$1" -H 'X-Auth-Token: $CP_TOKEN' -H 'Content-Type: application/json' \${3:+-d "\$3"} '$NEUTRON_SERVER_URL'"\$2"; }
# raw nova REST at microversion 2.93: cp_curl METHOD PATH [JSON]   (PATH below /v2.1)
cp_curl() { curl -s -X "\$1" -H 'X-Auth-Token: $CP_TOKEN' -H 'Content-Type: application/json' -H 'OpenStack-API-Version: compute 2.93' \${3:+-d "\$3"} '$NOVA_URL'"\$2"; }
ENV
  mv "$WORK/env.tmp" "$WORK/env"
  $PY - "$WORK/env.json" <<'PYEOF'
import json, os, sys
e = os.environ
w = e['WORK']
def pid(name):
    try:
        return int(open(os.path.join(w, 'run', name + '.pid')).read().strip())
    except (OSError, ValueError):
        return None
services = ['mysqld', 'placement-api', 'glance-api',
            'nova-conductor', 'nova-scheduler', 'nova-api', 'cinder-api', 'cinder-scheduler', 'neutron-server']
d = {
    'work': w,
    'transport_url': e['TRANSPORT_URL'],
    'rabbit': {'host': e['CP_RABBIT_HOST'], 'port': int(e['CP_RABBIT_PORT']),
               'user': e['CP_RABBIT_USER'], 'password': e['CP_RABBIT_PASS'],
               'vhost': e['CP_VHOST']},
    'token': e['CP_TOKEN'],
    'auth_header': 'X-Auth-Token',
    'nova_url': e['NOVA_URL'],
    'nova_microversion': '2.93',
    'placement_url': e['PLACEMENT_URL'],
    'placement_microversion': '1.39',
    'glance_url': e['GLANCE_URL'],
    'neutron_url': e['NEUTRON_SERVER_URL'],
    'nova_conf': os.path.join(w, 'etc', 'nova.conf'),
    'nova_compute_conf': os.path.join(w, 'etc', 'nova-compute.conf'),
    'placement_conf': os.path.join(w, 'etc', 'placement', 'placement.conf'),
    'glance_conf': os.path.join(w, 'etc', 'glance-api.conf'),
    'cinder_url': e['CINDER_URL'],
    'cinder_microversion': '3.70',
    'cinder_conf': os.path.join(w, 'etc', 'cinder.conf'),
    'cinder_db': e['CINDER_GO_DSN'],
    'cinder_exchange': 'openstack',
    'cinder_manage': ['/usr/bin/cinder-manage', '--config-file', os.path.join(w, 'etc', 'cinder.conf')],
    'project': e['CP_PROJECT'],
    'neutron_server_url': e['NEUTRON_SERVER_URL'],
    'neutron_exchange': 'neutron',
    'neutron_conf': os.path.join(w, 'etc', 'neutron.conf'),
    'ml2_conf': os.path.join(w, 'etc', 'ml2_conf.ini'),
    'neutron_agent_down_time': int(e['CP_NEUTRON_AGENT_DOWN_TIME']),
    'compute_host': e['CP_COMPUTE_HOST'],
    'cell': 'cell1',
    'report_interval': int(e['CP_REPORT_INTERVAL']),
    'service_down_time': int(e['CP_SERVICE_DOWN_TIME']),
    'discover_hosts_interval': int(e['CP_DISCOVER_INTERVAL']),
    'mysql_socket': e['MYSQL_SOCK'],
    'databases': {'nova_api': e['DB_NOVA_API'], 'nova_cell0': e['DB_NOVA_CELL0'],
                  'nova': e['DB_NOVA'], 'placement': e['DB_PLACEMENT'],
                  'glance': e['DB_GLANCE'], 'cinder': e['DB_CINDER'],
                  'neutron': e['DB_NEUTRON']},
    'nova_manage': ['/usr/bin/nova-manage', '--config-file', os.path.join(w, 'etc', 'nova.conf')],
    'openstack_env': {'OS_AUTH_TYPE': 'admin_token', 'OS_TOKEN': e['CP_TOKEN'],
                      'OS_ENDPOINT': e['NOVA_URL'], 'OS_COMPUTE_API_VERSION': '2.92'},
    'log_dir': os.path.join(w, 'log'),
    'run_dir': os.path.join(w, 'run'),
    'pids': {s: pid(s) for s in services},
}
tmp = sys.argv[1] + '.tmp'
with open(tmp, 'w') as f:
    json.dump(d, f, indent=2, sort_keys=True)
    f.write('\n')
os.replace(tmp, sys.argv[1])
PYEOF
}

# ================================================================ main
install_pkgs
preflight
TP=$(date +%s.%N)
setup_rabbit > "$WORK/log/rabbit-setup.log" 2>&1 &
RABBIT_JOB=$!
write_configs
start_db
log "mariadb ready ($(elapsed) s)"

# schema: nova's chain in the background, placement and glance meanwhile; placement,
# and glance start as soon as their own database is ready
( sync_nova ) >> "$WORK/log/nova-db-sync.log" 2>&1 &
NOVA_SYNC_JOB=$!
( sync_cinder ) >> "$WORK/log/cinder-db-sync.log" 2>&1 &
CINDER_SYNC_JOB=$!
( sync_neutron ) >> "$WORK/log/neutron-db-sync.log" 2>&1 &
NEUTRON_SYNC_JOB=$!
step placement-db $BIN/placement-manage --config-file "$WORK/etc/placement/placement.conf" db sync \
  >>"$WORK/log/placement-db-sync.log" 2>&1 || die "placement db sync failed; see $WORK/log/placement-db-sync.log"
start_placement
step glance-db $BIN/glance-manage --config-file "$WORK/etc/glance-api.conf" db_sync \
  >>"$WORK/log/glance-db-sync.log" 2>&1 || die "glance db sync failed; see $WORK/log/glance-db-sync.log"
start_glance
wait $CINDER_SYNC_JOB || die "cinder db sync failed; see $WORK/log/cinder-db-sync.log"
start_cinder
wait $NEUTRON_SYNC_JOB || die "neutron db sync failed; see $WORK/log/neutron-db-sync.log"
start_neutron_server
wait $NOVA_SYNC_JOB || die "nova db sync failed; see $WORK/log/nova-db-sync.log"
wait $RABBIT_JOB || { cat "$WORK/log/rabbit-setup.log" >&2; die "RabbitMQ setup failed"; }
grep '^\[' "$WORK/log/rabbit-setup.log" >&2 || true
log "schemas ready ($(elapsed) s)"

start_nova
wait_http placement-api "$PLACEMENT_URL/" 120
wait_http glance-api "$GLANCE_URL/versions" 120
wait_http nova-api "$NOVA_URL/" 180
wait_nova_services
log "nova services up ($(elapsed) s)"
wait_http cinder-api "$CINDER_ROOT/" 180
wait_cinder_services
log "cinder services up ($(elapsed) s)"
wait_neutron_server
log "neutron-server up ($(elapsed) s)"
note_old_nova_api
step flavors create_flavors
write_env
log "control plane up in $(elapsed) s (after packages: $(awk -v a="$TP" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s); source $WORK/env or read $WORK/env.json"

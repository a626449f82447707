#!/usr/bin/env bash
# Runs every test of vcagent on a fresh Debian 12 machine: installs the real
# Python peers (Debian's OpenStack Zed packages), starts RabbitMQ if it is
# down, then runs vet, the unit tests, a short fuzz run and the end-to-end
# tests against the real peers. Run as root (apt-get, rabbitmqctl).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n=== %s\n' "$*"; }

# Debian packages the tests drive: the broker and the real oslo.messaging.
packages=(rabbitmq-server python3-oslo.messaging python3-oslo.context qemu-utils python3-oslo.vmware python3-suds python3-neutron)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

bash integration/broker.sh

log "go vet and gofmt"
go vet ./...
go vet -tags integration ./integration/...
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change: $unformatted" >&2
	exit 1
fi

log "static build (what the Containerfile builds)"
static=$(mktemp -d)/vcagent
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$static" .
"$static" --help | grep -q VCAGENT_TRANSPORT_URL
if ldd "$static" >/dev/null 2>&1; then
	echo "the agent binary is not static" >&2
	exit 1
fi
rm -rf "$(dirname "$static")"

# One package at a time: the rpc tests restart the broker's application,
# which must not cut the connections of another package's tests.
log "unit tests (race detector)"
go test -race -count=1 -p 1 -timeout 15m ./...

log "the vmware_dvs ML2 driver's unit tests (Debian's python3-neutron)"
(cd contrib/neutron && PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=. /usr/bin/python3 -m unittest tests/test_driver.py)

log "fuzzing the message decoder briefly"
go test -count=1 -run '^$' -fuzz '^FuzzDecodeRequest$' -fuzztime 15s ./rpc/

log "end-to-end tests against the real Python peers"
# Every agent's log is kept there; the last step searches them all for the
# passwords and tokens the run used.
VCAGENT_LOG_DIR=$(mktemp -d)
export VCAGENT_LOG_DIR
go test -race -count=1 -p 1 -tags integration -timeout 45m ./integration/...

log "no password or token in any agent log of the run"
go test -race -count=1 -tags integration -run '^TestSecretsNotInKeptLogs$' -timeout 10m ./integration/
rm -rf "$VCAGENT_LOG_DIR"

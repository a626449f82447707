#!/usr/bin/env bash
# Runs the agent against the local RabbitMQ and the embedded vCenter
# simulator (the default when VCAGENT_VCENTER_URL is unset), starting the
# broker first if needed. Any VCAGENT_* variable set by the caller applies.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
	bash integration/broker.sh
fi
go build -o bin/vcagent .
exec ./bin/vcagent "$@"

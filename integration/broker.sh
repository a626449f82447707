#!/usr/bin/env bash
# Makes sure a local RabbitMQ answers on 127.0.0.1:5672 (guest/guest),
# installing and starting it when needed. Run as root.
set -euo pipefail

if ! command -v rabbitmqctl >/dev/null 2>&1; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends rabbitmq-server
fi
if rabbitmqctl -q await_startup --timeout 5 >/dev/null 2>&1; then
	exit 0
fi
echo "starting RabbitMQ"
# No systemd in containers: fall back to the init script, then the server itself.
service rabbitmq-server start >/dev/null 2>&1 || (rabbitmq-server -detached >/dev/null 2>&1 || true)
rabbitmqctl -q await_startup --timeout 120
# The broker may have been stopped mid-test (the fault tests stop its app).
rabbitmqctl -q start_app >/dev/null 2>&1 || true

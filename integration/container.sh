#!/usr/bin/env bash
# Builds the agent's image from Containerfile with podman, runs it against
# the local RabbitMQ with its embedded vCenter, and checks it from the host:
# /healthz, /readyz, the non-root user, the image size, and a clean SIGTERM
# drain. No container registry is reachable here, so both base images are
# made locally and passed as the Containerfile's build arguments:
#   - the builder: busybox (for RUN's /bin/sh) and this machine's Go
#     toolchain, like golang:<version> (GOPATH=/go);
#   - the runtime: a scratch image with /etc/passwd (nonroot 65532), CA
#     certificates and /tmp, like distroless/static:nonroot.
# The build runs without network: the modules come from this machine's
# module cache, mounted at the builder's /go/pkg/mod; its build cache is
# mounted too (the same toolchain at the same path: a warm build is quick).
#
# When the test control plane is up (integration/controlplane/up.sh, WORK
# /tmp/vcagent-cp or $VCAGENT_CP_WORK), the container joins it and must
# become ready; otherwise it joins a vhost of its own, where it waits for
# nova-conductor, and the only reason /readyz may give is that one.
#
# CI does not run this script. Run as root: bash integration/container.sh
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n=== %s\n' "$*"; }
t_start=$(date +%s)

missing=()
for p in podman runc busybox-static rabbitmq-server; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
bash integration/broker.sh

IMAGE=${VCAGENT_IMAGE:-localhost/vcagent:test}
GO_IMAGE=localhost/vcagent-go:$(go env GOVERSION)
RUNTIME_IMAGE=localhost/vcagent-static:latest
NAME=vcagent-container-test
# This machine mounts cgroup v1 beside an empty cgroup2 ("hybrid"), which
# crun (podman's default runtime) refuses, and root lacks CAP_SYS_RESOURCE,
# so podman's default rlimits (above the current hard limits) cannot be set:
# runc, and limits within the current ones.
run_opts=(--runtime runc --ulimit nofile=16384:16384 --ulimit nproc=8192:8192)
PORT=${VCAGENT_CONTAINER_PORT:-19499}
work=$(mktemp -d)
cleanup() {
	podman rm -f "$NAME" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

if ! podman image exists "$GO_IMAGE"; then
	log "making the builder image $GO_IMAGE from $(go env GOROOT)"
	root=$work/go-root
	mkdir -p "$root"/{bin,usr/local,etc/ssl/certs,tmp,go,root}
	cp /bin/busybox "$root/bin/busybox"
	for a in sh ls cat cp mv rm mkdir env; do ln -s busybox "$root/bin/$a"; done
	cp -a "$(go env GOROOT)" "$root/usr/local/go"
	cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
	chmod 1777 "$root/tmp"
	tar -C "$root" --numeric-owner -c . | podman import \
		--change 'ENV PATH=/go/bin:/usr/local/go/bin:/bin' \
		--change 'ENV GOPATH=/go' --change 'ENV GOTOOLCHAIN=local' --change 'ENV HOME=/root' \
		--change 'WORKDIR /go' - "$GO_IMAGE" >/dev/null
fi
if ! podman image exists "$RUNTIME_IMAGE"; then
	log "making the runtime base image $RUNTIME_IMAGE"
	root=$work/static-root
	mkdir -p "$root"/{etc/ssl/certs,tmp,home/nonroot}
	printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
	printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
	cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
	chmod 1777 "$root/tmp"
	chown 65532:65532 "$root/home/nonroot"
	tar -C "$root" --numeric-owner -c . | podman import --change 'USER 65532:65532' - "$RUNTIME_IMAGE" >/dev/null
fi

log "podman build (GO_IMAGE=$GO_IMAGE RUNTIME_IMAGE=$RUNTIME_IMAGE)"
t0=$(date +%s)
modcache=$(go env GOMODCACHE)
go mod download # the build has no network: the cache must hold every module
podman build "${run_opts[@]}" --network none -v "$modcache:/go/pkg/mod" -v "$(go env GOCACHE):/root/.cache/go-build" \
	--build-arg GO_IMAGE="$GO_IMAGE" --build-arg RUNTIME_IMAGE="$RUNTIME_IMAGE" \
	-t "$IMAGE" -f Containerfile .
echo "built in $(($(date +%s) - t0)) s"

user=$(podman image inspect -f '{{.Config.User}}' "$IMAGE")
size=$(podman image inspect -f '{{.Size}}' "$IMAGE")
echo "image $IMAGE: user $user, $((size / 1024 / 1024)) MiB"
[ "$user" = "65532:65532" ] || { echo "the image runs as $user, not 65532:65532" >&2; exit 1; }
((size < 64 * 1024 * 1024)) || { echo "the image is $size bytes" >&2; exit 1; }
podman run "${run_opts[@]}" --rm "$IMAGE" --help >"$work/help"
grep -q VCAGENT_TRANSPORT_URL "$work/help"

cpwork=${VCAGENT_CP_WORK:-/tmp/vcagent-cp}
env=(-e VCAGENT_HTTP_ADDR="127.0.0.1:$PORT" -e VCAGENT_LOG_FORMAT=json -e VCAGENT_HOST="vcagent-container-$$")
if [ -s "$cpwork/env.json" ] && curl -fsS -o /dev/null "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nova_url"])' "$cpwork/env.json")/" 2>/dev/null; then
	log "running the image against the control plane in $cpwork"
	mapfile -t cpenv < <(python3 - "$cpwork/env.json" <<'EOF'
import json, sys
e = json.load(open(sys.argv[1]))
print("VCAGENT_TRANSPORT_URL=" + e["transport_url"])
print("VCAGENT_AUTH_TOKEN=" + e["token"])
print("VCAGENT_PLACEMENT_ENDPOINT=" + e["placement_url"])
print("VCAGENT_GLANCE_ENDPOINT=" + e["glance_url"])
EOF
	)
	for kv in "${cpenv[@]}"; do env+=(-e "$kv"); done
	want_ready=1
else
	log "running the image against the local broker (vhost vcagent_container, no nova-conductor)"
	rabbitmqctl -q add_vhost vcagent_container 2>/dev/null || true
	rabbitmqctl -q set_permissions -p vcagent_container guest '.*' '.*' '.*'
	env+=(-e VCAGENT_TRANSPORT_URL=rabbit://guest:guest@127.0.0.1:5672/vcagent_container)
	want_ready=0
fi
podman rm -f "$NAME" >/dev/null 2>&1 || true
t0=$(date +%s)
podman run "${run_opts[@]}" -d --name "$NAME" --network host "${env[@]}" "$IMAGE" >/dev/null
pid=$(podman inspect -f '{{.State.Pid}}' "$NAME")
uid=$(ps -o uid= -p "$pid" | tr -d ' ')
echo "agent process $pid runs as uid $uid"
[ "$uid" = 65532 ] || { echo "the agent runs as uid $uid" >&2; exit 1; }

ok=0
for _ in $(seq 1 240); do
	code=$(curl -s -o "$work/readyz" -w '%{http_code}' "http://127.0.0.1:$PORT/readyz" || true)
	body=$(cat "$work/readyz" 2>/dev/null || true)
	if [ "$want_ready" = 1 ] && [ "$code" = 200 ]; then ok=1; break; fi
	# Without a conductor: broker and vCenter fine, only nova-conductor missing.
	if [ "$want_ready" = 0 ] && [ "$code" = 503 ] && [ "$body" = "not ready: compute_rpc: waiting for nova-conductor" ]; then ok=1; break; fi
	sleep 0.5
done
echo "/readyz after $(($(date +%s) - t0)) s: $code $body"
curl -fsS "http://127.0.0.1:$PORT/healthz"
if [ "$ok" != 1 ]; then
	podman logs "$NAME" | tail -30 >&2
	echo "the container did not get to the expected readiness" >&2
	exit 1
fi

log "SIGTERM drain"
t0=$(date +%s.%N)
podman stop -t 60 "$NAME" >/dev/null
rc=$(podman inspect -f '{{.State.ExitCode}}' "$NAME")
echo "stopped after $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s with status $rc"
podman logs "$NAME" 2>&1 | grep -q '"logged out of vCenter"' || { echo "no vCenter logout in the log" >&2; exit 1; }
[ "$rc" = 0 ] || exit 1
echo "container check passed in $(($(date +%s) - t_start)) s"

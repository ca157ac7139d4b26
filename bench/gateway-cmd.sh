#!/usr/bin/env bash
# Runs the gateway the way ../shared/bench/run.sh expects (--gateway-cmd):
# writes a config from the BENCH_* variables into $BENCH_WORK_DIR and execs
# the release binary in the foreground.
#
#   ../shared/bench/run.sh --gateway-cmd 'exec bench/gateway-cmd.sh' \
#       --reps 5 --duration 2 --warmup 0
#
# GATEWAY_BIN overrides the binary (default: target/release/gateway next to
# this script). BENCH_JWT_ALG=ES256|RS256 with BENCH_JWT_PUBLIC_KEY=PEM
# switches the proxied routes to that algorithm (the harness mints HS256).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${GATEWAY_BIN:-$here/../target/release/gateway}
[[ -x "$bin" ]] || { echo "no gateway binary at $bin: cargo build --release first" >&2; exit 1; }
: "${BENCH_WORK_DIR:?}" "${BENCH_HTTP_PORT:?}" "${BENCH_HTTPS_PORT:?}" "${BENCH_CERT:?}" "${BENCH_KEY:?}"
: "${BENCH_STATIC_DIR:?}" "${BENCH_UPSTREAM_URL:?}"
workers=${BENCH_WORKERS:-1}
[[ "$workers" == auto ]] && workers=0

if [[ -n "${BENCH_JWT_ALG:-}" && -n "${BENCH_JWT_PUBLIC_KEY:-}" ]]; then
  jwt_key=$(printf 'algorithm = "%s"\npublic_key = "%s"' "$BENCH_JWT_ALG" "$BENCH_JWT_PUBLIC_KEY")
else
  jwt_key=$(printf 'algorithm = "HS256"\nsecret = "env:BENCH_JWT_SECRET"')
fi

cat >"$BENCH_WORK_DIR/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$BENCH_HTTPS_PORT"
http_listen = "127.0.0.1:$BENCH_HTTP_PORT"
redirect_http = false
workers = $workers
max_connections = 20000

[tls]
cert = "$BENCH_CERT"
key = "$BENCH_KEY"

[log]
access_log = false
level = "warn"

[jwt]
$jwt_key

[identity]
headers = { "X-User-Id" = "user_id" }

[upstreams.app]
url = "$BENCH_UPSTREAM_URL"

[[routes]]
path = "/static/"
static = "$BENCH_STATIC_DIR"

[[routes]]
path = "/"
upstream = "app"
auth = "${BENCH_AUTH:-required}"
TOML
exec "$bin" serve --config "$BENCH_WORK_DIR/gateway.toml"

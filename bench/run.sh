#!/usr/bin/env bash
# The gateway against nginx, side by side, on the same machine in one run.
#
# usage: bench/run.sh [--reps 3] [--duration 3] [--warmup 1] [--conns 64]
#                     [--threads 1] [--workers 1] [--out bench-results.json]
#                     [--scenarios LIST] [--h2-streams 8] [--tls-batch 256]
#                     [--idle-conns 10000] [--no-pin] [--keep-tmp] [--install]
#
#   --reps N          repetitions of every scenario; nginx and the gateway
#                     alternate ABBA per scenario and repetition
#   --duration S      seconds of load per measured run
#   --warmup S        seconds of unmeasured load before each measured run
#   --conns N         concurrent connections (h2load: N streams in all)
#   --threads N       load generator threads
#   --workers N       nginx worker processes = gateway worker threads
#   --out FILE        JSON results (default bench-results.json)
#   --scenarios LIST  comma-separated subset of the scenarios (default: all):
#                     proxy_http proxy_hs256 proxy_es256 proxy_es256_nocache
#                     proxy_rs256 static_1k static_64k static_1m https_h1
#                     https_h2 tls_handshakes upload_100m download_100m
#                     token_refresh idle_10k
#   --h2-streams N    h2load streams per connection (connections = conns/N)
#   --tls-batch N     tls_handshakes: connections per h2load batch
#   --idle-conns N    idle_10k: connections held open per server
#   --no-pin          no taskset
#   --keep-tmp        keep the temporary directory (configs, logs, raw output)
#   --install         (root) apt-get install the missing Debian packages
#
# Needs: nginx wrk nghttp2-client (h2load) openssl curl python3, and the
# release binary (GATEWAY_BIN, default target/release/gateway: cargo build
# --release). Everything runs on 127.0.0.1 from a temporary directory that is
# removed at exit; every process started here is stopped at exit by PID.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
HELP="$HERE/helpers.py"
GATEWAY_BIN=${GATEWAY_BIN:-$REPO/target/release/gateway}

ALL_SCENARIOS="proxy_http proxy_hs256 proxy_es256 proxy_es256_nocache proxy_rs256 static_1k static_64k
static_1m https_h1 https_h2 tls_handshakes upload_100m download_100m token_refresh idle_10k"
ALL_SCENARIOS=$(echo $ALL_SCENARIOS)
REPS=3 DURATION=3 WARMUP=1 CONNS=64 THREADS=1 WORKERS=1 OUT=bench-results.json SCENARIOS=$ALL_SCENARIOS
H2_STREAMS=8 TLS_BATCH=256 IDLE_CONNS=10000 PIN=1 KEEP_TMP=0 INSTALL=0
TRANSFER_MIB=100

die() { echo "bench/run.sh: $*" >&2; exit 1; }
say() { echo "bench/run.sh: $*" >&2; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

while (($#)); do
    case $1 in
        --reps) REPS=${2?}; shift ;;
        --duration) DURATION=${2?}; shift ;;
        --warmup) WARMUP=${2?}; shift ;;
        --conns) CONNS=${2?}; shift ;;
        --threads) THREADS=${2?}; shift ;;
        --workers) WORKERS=${2?}; shift ;;
        --out) OUT=${2?}; shift ;;
        --scenarios) SCENARIOS=${2//,/ }; shift ;;
        --h2-streams) H2_STREAMS=${2?}; shift ;;
        --tls-batch) TLS_BATCH=${2?}; shift ;;
        --idle-conns) IDLE_CONNS=${2?}; shift ;;
        --no-pin) PIN=0 ;;
        --keep-tmp) KEEP_TMP=1 ;;
        --install) INSTALL=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done
for v in REPS DURATION WARMUP CONNS THREADS WORKERS H2_STREAMS TLS_BATCH IDLE_CONNS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "--${v,,} must be a whole number, got '${!v}'"
done
((REPS > 0 && DURATION > 0 && CONNS > 0 && THREADS > 0 && WORKERS > 0 && H2_STREAMS > 0 && TLS_BATCH > 0 &&
    IDLE_CONNS > 0)) || die "--reps, --duration, --conns, --threads, --workers, --h2-streams, --tls-batch and --idle-conns must be positive"
((CONNS >= THREADS)) || die "--conns must be at least --threads"
for s in $SCENARIOS; do
    [[ " $ALL_SCENARIOS " == *" $s "* ]] || die "unknown scenario '$s' (known: $ALL_SCENARIOS)"
done
[[ $OUT == /* ]] || OUT=$PWD/$OUT
has() { [[ " $SCENARIOS " == *" $1 "* ]]; }

# --- tools ----------------------------------------------------------------------

APT_PKGS="nginx wrk nghttp2-client"
missing_pkgs() {
    local m=() 
    command -v nginx >/dev/null || m+=(nginx)
    command -v wrk >/dev/null || m+=(wrk)
    command -v h2load >/dev/null || m+=(nghttp2-client)
    command -v openssl >/dev/null || m+=(openssl)
    command -v curl >/dev/null || m+=(curl)
    command -v python3 >/dev/null || m+=(python3)
    echo "${m[*]}"
}
MISSING=$(missing_pkgs)
if [[ -n $MISSING ]]; then
    if ((INSTALL)); then
        ((EUID == 0)) || die "--install needs root (missing: $MISSING)"
        say "installing $MISSING from Debian's packages"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y $MISSING
        MISSING=$(missing_pkgs)
    fi
    REQUIRED=$(echo ${MISSING/nghttp2-client/})
    [[ -z $REQUIRED ]] || die "missing: $MISSING. Install them with:
    apt-get install -y $APT_PKGS openssl curl python3
(or run this script as root with --install)"
    [[ -z $MISSING ]] || say "h2load not found: https_h2 and tls_handshakes are skipped (apt-get install -y nghttp2-client, or --install as root)"
fi
for t in timeout ps taskset; do
    command -v "$t" >/dev/null || [[ $t == taskset ]] || die "$t not found (coreutils / procps)"
done
[[ -x $GATEWAY_BIN ]] || die "no gateway binary at $GATEWAY_BIN: run 'cargo build --release' first (or set GATEWAY_BIN)"

# Pinning: load generator on CPU 0, both front servers on CPU 1, the upstream
# (and the upload sink) on CPU 0 with the load generator.
if ((PIN)) && (($(nproc) >= 2)) && command -v taskset >/dev/null; then
    PIN_LOAD=(taskset -c 0) PIN_SERVER=(taskset -c 1) PIN_UPSTREAM=(taskset -c 0)
    PINNING="load generator cpu 0, servers cpu 1, upstream cpu 0"
else
    PIN=0 PIN_LOAD=() PIN_SERVER=() PIN_UPSTREAM=()
    PINNING="none"
fi

# 10,000 idle connections need file descriptors: raise the soft limit to the
# hard one for everything started from here.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
((NOFILE <= 32768)) || NOFILE=32768 # what the servers are configured for
if ((IDLE_CONNS + 500 > NOFILE)); then
    say "open file limit $NOFILE: idle_10k holds $((NOFILE - 500)) connections instead of $IDLE_CONNS"
    IDLE_CONNS=$((NOFILE - 500))
fi

# --- temporary directory, processes, cleanup -----------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gateway-bench.XXXXXX")
chmod 755 "$TMP" # nginx workers run as an unprivileged user when started as root
STARTED=()
LOAD_PID=

alive() { # PID: running and not a zombie
    local st
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ ${st%% *} != Z ]]
}
tree_pids() { # PID and its descendants
    local c
    echo "$1"
    for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do tree_pids "$c"; done
}
stop_tree() { # TERM a process tree, KILL what is left after 5 s
    local root=$1 pids p i left=()
    alive "$root" || { wait "$root" 2>/dev/null || true; return 0; }
    mapfile -t pids < <(tree_pids "$root")
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        left=()
        for p in "${pids[@]}"; do alive "$p" && left+=("$p"); done
        ((${#left[@]})) || break
        sleep 0.1
    done
    ((${#left[@]} == 0)) || kill -KILL "${left[@]}" 2>/dev/null || true
    wait "$root" 2>/dev/null || true
}
cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    [[ -z $LOAD_PID ]] || stop_tree "$LOAD_PID"
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop_tree "${STARTED[i]}"; done
    if ((KEEP_TMP)); then say "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

declare -A PID=()
start_bg() { # NAME LOG CMD...
    local name=$1 log=$2
    shift 2
    "$@" >"$log" 2>&1 </dev/null &
    STARTED+=("$!")
    PID[$name]=$!
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_ready() { # NAME LOG SECONDS PORT...
    local name=$1 log=$2 limit=$3 deadline p ok
    shift 3
    deadline=$((SECONDS + limit))
    while :; do
        alive "${PID[$name]}" || { tail -n 30 "$log" >&2; die "$name exited before listening (above: its output)"; }
        ok=1
        for p in "$@"; do port_open "$p" || { ok=0; break; }; done
        ((ok)) && return 0
        ((SECONDS < deadline)) || die "$name did not listen on $* within ${limit}s (log: $log)"
        sleep 0.1
    done
}

# --- inputs: ports, certificate, keys, files, tokens ----------------------------

read -r P_UP P_SINK P_NG_HTTP P_NG_HTTPS P_GW_HTTP P_GW_HTTPS P_GW_ES P_GW_ESNC P_GW_RS P_GW_TOK \
    P_NG_IDLE P_NG_IDLE_TLS P_GW_IDLE < <(python3 "$HELP" ports 13)
mkdir -p "$TMP"/{tls,keys,static,download,raw,upstream,nginx,gw}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$TMP/tls/key.pem" -out "$TMP/tls/cert.pem" \
    2>"$TMP/tls/openssl.log" || die "openssl could not make the certificate: $(cat "$TMP/tls/openssl.log")"
# JWT signing keys (the gateway only gets the public halves)
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/keys/es256.pem" 2>/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/keys/rs256.pem" 2>/dev/null
openssl pkey -in "$TMP/keys/es256.pem" -pubout -out "$TMP/keys/es256.pub.pem"
openssl pkey -in "$TMP/keys/rs256.pem" -pubout -out "$TMP/keys/rs256.pub.pem"
chmod 600 "$TMP/tls/key.pem" "$TMP/keys/"*.pem

head -c 1024 /dev/urandom >"$TMP/static/1k.bin"
head -c 65536 /dev/urandom >"$TMP/static/64k.bin"
head -c 1048576 /dev/urandom >"$TMP/static/1m.bin"
TRANSFER_BYTES=$((TRANSFER_MIB << 20))
if has upload_100m || has download_100m; then
    head -c "$TRANSFER_BYTES" /dev/urandom >"$TMP/download/100m.bin"
fi
chmod -R a+rX "$TMP/static" "$TMP/download"

HS_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')
HS_TOKEN=$(python3 "$HELP" mint-hs256 "$HS_SECRET")
OTHER_TOKEN=$(python3 "$HELP" mint-hs256 "another-key-$RANDOM")
# ES256 and RS256 tokens: minted by the gateway itself from a config that has
# the private key (used for nothing else).
mint() { # ALG PRIVATE_KEY
    cat >"$TMP/keys/mint-$1.toml" <<TOML
[server]
listen = "127.0.0.1:1"
[jwt]
algorithm = "$1"
private_key = "$2"
[[routes]]
path = "/"
static = "$TMP/static"
TOML
    "$GATEWAY_BIN" token --config "$TMP/keys/mint-$1.toml" --user-id 42 --ttl 3650d ||
        die "gateway token could not mint an $1 token"
}
ES_TOKEN=$(mint ES256 "$TMP/keys/es256.pem")
RS_TOKEN=$(mint RS256 "$TMP/keys/rs256.pem")

# --- upstream: nginx answering "ok", serving the download; python upload sink ---

cat >"$TMP/upstream/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $TMP/upstream/nginx.pid;
error_log $TMP/upstream/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    server_tokens off;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path $TMP/upstream/client_body;
    proxy_temp_path $TMP/upstream/proxy;
    fastcgi_temp_path $TMP/upstream/fastcgi;
    uwsgi_temp_path $TMP/upstream/uwsgi;
    scgi_temp_path $TMP/upstream/scgi;
    server {
        listen 127.0.0.1:$P_UP backlog=4096;
        location = /api/echo-user { return 200 "\$http_x_user_id"; }
        location /open/download/ { alias $TMP/download/; }
        location / { return 200 "ok"; }
    }
}
CONF
start_bg upstream "$TMP/upstream/out.log" "${PIN_UPSTREAM[@]}" \
    nginx -p "$TMP/upstream" -e "$TMP/upstream/error.log" -c "$TMP/upstream/nginx.conf"
start_bg sink "$TMP/upstream/sink.log" "${PIN_UPSTREAM[@]}" python3 "$HELP" sink "$P_SINK"
wait_ready upstream "$TMP/upstream/out.log" 10 "$P_UP"
wait_ready sink "$TMP/upstream/sink.log" 10 "$P_SINK"

# --- nginx as the front door ----------------------------------------------------

NGINX_VERSION=$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
if [[ "$(printf '%s\n' "$NGINX_VERSION" 1.25.1 | sort -V | head -n1)" == 1.25.1 ]]; then
    H2_LISTEN='' H2_DIRECTIVE='http2 on;'
else
    H2_LISTEN=http2 H2_DIRECTIVE=''
fi
# nginx_conf DIR HTTP_PORT HTTPS_PORT: writes DIR/nginx.conf
nginx_conf() {
    local NG=$1
    mkdir -p "$NG"
    cat >"$NG/nginx.conf" <<CONF
# Tuned as a production front door (as ../shared/bench/nginx-front.conf.tmpl).
worker_processes $WORKERS;
worker_rlimit_nofile $NOFILE;
daemon off;
pid $NG/nginx.pid;
error_log $NG/error.log warn;
events { worker_connections $((NOFILE - 100)); }
http {
    access_log off;
    server_tokens off;
    types { application/octet-stream bin; }
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    etag on;
    open_file_cache max=1000 inactive=60s;
    open_file_cache_valid 60s;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    client_body_temp_path $NG/client_body;
    proxy_temp_path $NG/proxy;
    fastcgi_temp_path $NG/fastcgi;
    uwsgi_temp_path $NG/uwsgi;
    scgi_temp_path $NG/scgi;
    ssl_certificate $TMP/tls/cert.pem;
    ssl_certificate_key $TMP/tls/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_timeout 1h;
    upstream app {
        server 127.0.0.1:$P_UP;
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    upstream sink {
        server 127.0.0.1:$P_SINK;
        keepalive 16;
    }
    server {
        listen 127.0.0.1:$2 backlog=4096;
        listen 127.0.0.1:$3 ssl $H2_LISTEN backlog=4096;
        $H2_DIRECTIVE
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host \$http_host;
        proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto \$scheme;
        proxy_set_header X-Forwarded-Host \$host;
        proxy_set_header X-Real-IP \$remote_addr;
        location /static/ { alias $TMP/static/; }
        # streamed both ways, as the gateway does
        location /upload/ {
            client_max_body_size $((TRANSFER_MIB * 2))m;
            proxy_request_buffering off;
            proxy_pass http://sink;
        }
        location / { proxy_pass http://app; }
    }
}
CONF
}
NG=$TMP/nginx
nginx_conf "$NG" "$P_NG_HTTP" "$P_NG_HTTPS"
start_bg nginx "$NG/out.log" "${PIN_SERVER[@]}" nginx -p "$NG" -e "$NG/error.log" -c "$NG/nginx.conf"
wait_ready nginx "$NG/out.log" 10 "$P_NG_HTTP" "$P_NG_HTTPS"

# --- the gateway: one instance per JWT setup, all pinned like nginx -------------

# gw_conf NAME LISTEN_LINES JWT_SECTION [MORE [TLS]]: writes $TMP/gw/NAME.toml
gw_conf() {
    cat >"$TMP/gw/$1.toml" <<TOML
[server]
$2
workers = $WORKERS
max_connections = $((NOFILE - 100))
max_body_bytes = "$((TRANSFER_MIB * 2))MiB"

[log]
access_log = false
level = "warn"

${5:-}

$3

[upstreams.app]
url = "http://127.0.0.1:$P_UP"

[upstreams.sink]
url = "http://127.0.0.1:$P_SINK"

${4:-}

[[routes]]
path = "/static/"
static = "$TMP/static"

[[routes]]
path = "/upload/"
upstream = "sink"
auth = "none"

[[routes]]
path = "/open/"
upstream = "app"
auth = "none"

[[routes]]
path = "/"
upstream = "app"
auth = "required"
TOML
}
IDENTITY='[identity]
headers = { "X-User-Id" = "user_id" }'
HS_JWT="[jwt]
algorithm = \"HS256\"
secret = \"$HS_SECRET\"
$IDENTITY"
gw_conf main "listen = \"127.0.0.1:$P_GW_HTTPS\"
http_listen = \"127.0.0.1:$P_GW_HTTP\"" "$HS_JWT" "" "[tls]
cert = \"$TMP/tls/cert.pem\"
key = \"$TMP/tls/key.pem\""
gw_conf es256 "listen = \"127.0.0.1:$P_GW_ES\"" "[jwt]
algorithm = \"ES256\"
public_key = \"$TMP/keys/es256.pub.pem\"
$IDENTITY"
gw_conf es256_nocache "listen = \"127.0.0.1:$P_GW_ESNC\"" "[jwt]
algorithm = \"ES256\"
public_key = \"$TMP/keys/es256.pub.pem\"
cache_size = 0
$IDENTITY"
gw_conf idle "listen = \"127.0.0.1:$P_GW_IDLE\"" "$HS_JWT"
gw_conf rs256 "listen = \"127.0.0.1:$P_GW_RS\"" "[jwt]
algorithm = \"RS256\"
public_key = \"$TMP/keys/rs256.pub.pem\"
$IDENTITY"
# token issuing: a users file, refresh without rotation so one token serves
# every request of the run
BENCH_PASSWORD=bench-$RANDOM$RANDOM
PW_HASH=$(printf '%s\n' "$BENCH_PASSWORD" | "$GATEWAY_BIN" hash-password) || die "gateway hash-password failed"
cat >"$TMP/gw/users.toml" <<TOML
[[user]]
username = "bench"
password = "$PW_HASH"
user_id = 42
TOML
gw_conf tokens "listen = \"127.0.0.1:$P_GW_TOK\"" "$HS_JWT" "[tokens]
rotate_refresh = false

[tokens.credentials]
users_file = \"$TMP/gw/users.toml\"

[store]
path = \"$TMP/gw/tokens.db\""

declare -A GW_PORTS=([main]="$P_GW_HTTP $P_GW_HTTPS" [es256]=$P_GW_ES [es256_nocache]=$P_GW_ESNC
    [rs256]=$P_GW_RS [tokens]=$P_GW_TOK [idle]=$P_GW_IDLE)
GW_NEEDED=(main)
has proxy_es256 && GW_NEEDED+=(es256)
has proxy_es256_nocache && GW_NEEDED+=(es256_nocache)
has proxy_rs256 && GW_NEEDED+=(rs256)
has token_refresh && GW_NEEDED+=(tokens)
for g in "${GW_NEEDED[@]}"; do
    "$GATEWAY_BIN" check --config "$TMP/gw/$g.toml" >"$TMP/gw/$g.check" 2>&1 ||
        die "gateway check rejected the $g config: $(cat "$TMP/gw/$g.check")"
    start_bg "gw_$g" "$TMP/gw/$g.log" "${PIN_SERVER[@]}" "$GATEWAY_BIN" serve --config "$TMP/gw/$g.toml"
done
for g in "${GW_NEEDED[@]}"; do
    # shellcheck disable=SC2086
    wait_ready "gw_$g" "$TMP/gw/$g.log" 30 ${GW_PORTS[$g]}
done
sleep 0.3
declare -A RSS_START=([nginx]=$(python3 "$HELP" tree-rss "${PID[nginx]}"))
for g in "${GW_NEEDED[@]}"; do RSS_START[gateway_$g]=$(python3 "$HELP" tree-rss "${PID[gw_$g]}"); done

REFRESH_LUA=$TMP/refresh.lua
if has token_refresh; then
    REFRESH=$(curl -sS --max-time 10 -H 'Content-Type: application/json' \
        --data "{\"username\":\"bench\",\"password\":\"$BENCH_PASSWORD\"}" \
        "http://127.0.0.1:$P_GW_TOK/api/token/" | python3 "$HELP" json-field refresh) ||
        die "could not obtain a refresh token from the gateway (log: $(tail -n 5 "$TMP/gw/tokens.log"))"
    cat >"$REFRESH_LUA" <<LUA
wrk.method = "POST"
wrk.body = '{"refresh":"$REFRESH"}'
wrk.headers["Content-Type"] = "application/json"
LUA
fi

# --- scenarios --------------------------------------------------------------------

# scenario -> "tool scheme gateway-instance path expected-bytes token"
declare -A SCEN=(
    [proxy_http]="wrk http main /open/x 2 -"
    [proxy_hs256]="wrk http main /api/x 2 HS"
    [proxy_es256]="wrk http es256 /api/x 2 ES"
    [proxy_es256_nocache]="wrk http es256_nocache /api/x 2 ES"
    [proxy_rs256]="wrk http rs256 /api/x 2 RS"
    [static_1k]="wrk http main /static/1k.bin 1024 -"
    [static_64k]="wrk http main /static/64k.bin 65536 -"
    [static_1m]="wrk http main /static/1m.bin 1048576 -"
    [https_h1]="wrk https main /api/x 2 HS"
    [https_h2]="h2load https main /api/x 2 HS"
    [tls_handshakes]="h2batch https main /api/x 2 HS"
    [upload_100m]="upload http main /upload/x $TRANSFER_BYTES -"
    [download_100m]="download http main /open/download/100m.bin $TRANSFER_BYTES -"
    [token_refresh]="refresh http tokens /api/token/refresh/ - -"
)
declare -A TOKEN=([HS]=$HS_TOKEN [ES]=$ES_TOKEN [RS]=$RS_TOKEN)
declare -A SKIPPED=()
if ! command -v h2load >/dev/null; then
    for s in https_h2 tls_handshakes; do has "$s" && SKIPPED[$s]="h2load not installed (nghttp2-client)"; done
fi

port_of() { # TARGET SCHEME INSTANCE
    local p
    if [[ $1 == nginx ]]; then
        [[ $2 == https ]] && echo "$P_NG_HTTPS" || echo "$P_NG_HTTP"
    else
        read -ra p <<<"${GW_PORTS[$3]}"
        [[ $2 == https ]] && echo "${p[1]}" || echo "${p[0]}"
    fi
}
url_of() { echo "$2://127.0.0.1:$(port_of "$@")$4"; } # TARGET SCHEME INSTANCE PATH
root_of() { [[ $1 == nginx ]] && echo "${PID[nginx]}" || echo "${PID[gw_$2]}"; } # TARGET INSTANCE

# Preflight: every scenario answers 200 with the whole body over the intended
# protocol, and the gateway really checks tokens and injects the identity.
for s in $SCENARIOS; do
    [[ -z ${SKIPPED[$s]:-} && $s != idle_10k && $s != upload_100m && $s != download_100m ]] || continue
    read -r tool scheme inst path size tok <<<"${SCEN[$s]}"
    for t in nginx gateway; do
        [[ $s == token_refresh && $t == nginx ]] && continue
        args=(-sk --max-time 10 -o /dev/null -w '%{http_code} %{size_download} %{http_version}')
        [[ $tok == - ]] || args+=(-H "Authorization: Bearer ${TOKEN[$tok]}")
        want_ver=1.1
        [[ $tool == h2load || $tool == h2batch ]] && { args+=(--http2); want_ver=2; }
        [[ $tool == wrk ]] && args+=(--http1.1)
        if [[ $tool == refresh ]]; then
            args+=(-H 'Content-Type: application/json' --data "{\"refresh\":\"$REFRESH\"}")
            got=$(curl "${args[@]}" "$(url_of "$t" "$scheme" "$inst" "$path")") || true
            [[ $got == 200\ * ]] || die "token_refresh preflight: got '$got'"
            continue
        fi
        got=$(curl "${args[@]}" "$(url_of "$t" "$scheme" "$inst" "$path")") || true
        [[ $got == "200 $size $want_ver" ]] ||
            die "$t $s preflight: wanted '200 $size $want_ver' (status bytes http-version), got '$got' (--keep-tmp keeps the logs)"
        if [[ $t == gateway && $tok != - ]]; then
            u=$(url_of gateway http "$inst" /api/echo-user)
            got=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' "$u") || true
            [[ $got == 401 ]] || die "gateway $s: a request without a token got $got, not 401"
            got=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $OTHER_TOKEN" "$u") || true
            [[ $got == 401 ]] || die "gateway $s: a token with a bad signature got $got, not 401"
            got=$(curl -s --max-time 10 -H "Authorization: Bearer ${TOKEN[$tok]}" -H 'X-User-Id: forged' "$u") || true
            [[ $got == 42 ]] || die "gateway $s: the upstream saw X-User-Id '$got', not 42"
        fi
    done
done

tree_ticks() { # user+system CPU ticks of a process tree
    local p sum=0 st f
    for p in $(tree_pids "$1"); do
        st=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        read -ra f <<<"$st"
        sum=$((sum + f[11] + f[12]))
    done
    echo "$sum"
}
tree_hwm_kib() { # peak RSS summed over a process tree
    local p sum=0 v
    for p in $(tree_pids "$1"); do
        v=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$p/status" 2>/dev/null) || continue
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

H2_CONNS=$((CONNS / H2_STREAMS))
((H2_CONNS >= THREADS)) || H2_CONNS=$THREADS

# load TOOL URL SECONDS OUT LOG TOKEN: one bounded load run, pinned, in the
# background and waited for (so that a signal stops it at once).
load() {
    local tool=$1 url=$2 secs=$3 out=$4 log=$5 tok=$6 rc=0 hdr=() end n
    [[ $tok == - ]] || hdr=(-H "Authorization: Bearer ${TOKEN[$tok]}")
    case $tool in
        wrk)
            timeout -k 5 $((secs + 30)) "${PIN_LOAD[@]}" wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" --latency \
                --timeout 5s "${hdr[@]}" "$url" >"$out" 2>&1 </dev/null &
            ;;
        refresh)
            timeout -k 5 $((secs + 30)) "${PIN_LOAD[@]}" wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" --latency \
                --timeout 5s -s "$REFRESH_LUA" "$url" >"$out" 2>&1 </dev/null &
            ;;
        h2load)
            timeout -k 5 $((secs + 30)) "${PIN_LOAD[@]}" h2load -t"$THREADS" -c"$H2_CONNS" -m"$H2_STREAMS" \
                -D "$secs" "${hdr[@]}" --log-file="$log" "$url" >"$out" 2>&1 </dev/null &
            ;;
        h2batch)
            # New TLS connections: batches of TLS_BATCH clients making one
            # request each (a full handshake each: h2load never resumes a
            # session across clients), until the duration is up.
            (
                end=$((${EPOCHREALTIME/./} + secs * 1000000))
                for ((n = 0; n < 100000; n++)); do
                    ((${EPOCHREALTIME/./} < end)) || break
                    timeout -k 2 20 "${PIN_LOAD[@]}" h2load -t1 -c"$TLS_BATCH" -n"$TLS_BATCH" "${hdr[@]}" "$url" ||
                        exit 1
                done
            ) >"$out" 2>&1 </dev/null &
            ;;
    esac
    LOAD_PID=$!
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=
    return "$rc"
}

MANIFEST=$TMP/manifest.tsv EXTRA=$TMP/extra.jsonl
: >"$MANIFEST"
: >"$EXTRA"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
START_TS=$(date -u +%Y-%m-%dT%H:%M:%SZ)
say "scenarios [$SCENARIOS], $REPS rep(s) of ${DURATION}s (+${WARMUP}s warmup), $WORKERS worker(s), pinning: $PINNING"

measure_load() { # REP SCENARIO TARGET
    local rep=$1 s=$2 t=$3 tool scheme inst path size tok url raw root t0 t1 w0 w1 rc=0 rps
    read -r tool scheme inst path size tok <<<"${SCEN[$s]}"
    url=$(url_of "$t" "$scheme" "$inst" "$path")
    raw=$TMP/raw/$rep-$s-$t
    root=$(root_of "$t" "$inst")
    if ((WARMUP > 0)); then load "$tool" "$url" "$WARMUP" "$raw.warmup" /dev/null "$tok" || true; fi
    t0=$(tree_ticks "$root")
    w0=${EPOCHREALTIME/./}
    load "$tool" "$url" "$DURATION" "$raw.out" "$raw.log" "$tok" || rc=$?
    w1=${EPOCHREALTIME/./}
    t1=$(tree_ticks "$root")
    alive "$root" || die "$t died during $s"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$s" "$t" \
        "$([[ $tool == wrk || $tool == refresh ]] && echo wrk || echo h2load)" "$raw" "$rc" "$((t1 - t0))" \
        "$(tree_hwm_kib "$root")" "$((w1 - w0))" >>"$MANIFEST"
    rps=$(sed -n 's/^Requests\/sec:[[:space:]]*\([0-9.]*\).*/\1/p; s/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$raw.out" | tail -n1)
    if [[ $tool == h2batch ]]; then # new connections over the whole loop
        rps=$(awk -v us=$((w1 - w0)) '/^requests: /{n += $6} END {printf "%.2f", n / us * 1e6}' "$raw.out")
    fi
    say "$(printf 'rep %d %-20s %-8s %10s req/s%s' "$rep" "$s" "$t" "${rps:-?}" "$( ((rc == 0)) || echo " (exit $rc)")")"
}

measure_transfer() { # REP SCENARIO TARGET
    local rep=$1 s=$2 t=$3 tool scheme inst path size tok
    read -r tool scheme inst path size tok <<<"${SCEN[$s]}"
    python3 "$HELP" transfer --rep "$rep" --scenario "$s" --target "$t" --mode "$tool" \
        --url "$(url_of "$t" "$scheme" "$inst" "$path")" --file "$TMP/download/100m.bin" \
        --body-out "$TMP/raw/transfer.body" --pid "$(root_of "$t" "$inst")" --size "$size" --timeout 60 \
        -- "${PIN_LOAD[@]}" >>"$EXTRA" || die "transfer helper failed"
    say "$(printf 'rep %d %-20s %-8s %s' "$rep" "$s" "$t" "$(tail -n1 "$EXTRA" | python3 "$HELP" describe)")"
}

for ((rep = 1; rep <= REPS; rep++)); do
    i=0
    for s in $SCENARIOS; do
        [[ -z ${SKIPPED[$s]:-} && $s != idle_10k ]] || continue
        order=(nginx gateway)
        [[ $s == token_refresh ]] && order=(gateway)
        # ABBA: who goes first alternates per scenario and per repetition
        if ((${#order[@]} == 2 && (rep + i) % 2 == 0)); then order=(gateway nginx); fi
        i=$((i + 1))
        for t in "${order[@]}"; do
            case $s in
                upload_100m | download_100m) measure_transfer "$rep" "$s" "$t" ;;
                *) measure_load "$rep" "$s" "$t" ;;
            esac
        done
    done
done

if has idle_10k; then
    # Fresh servers of their own (the others' heaps are warm from the load
    # runs), once each, not repeated: hold the connections, read RSS, close.
    nginx_conf "$TMP/nginx-idle" "$P_NG_IDLE" "$P_NG_IDLE_TLS"
    start_bg nginx_idle "$TMP/nginx-idle/out.log" "${PIN_SERVER[@]}" \
        nginx -p "$TMP/nginx-idle" -e "$TMP/nginx-idle/error.log" -c "$TMP/nginx-idle/nginx.conf"
    start_bg gw_idle "$TMP/gw/idle.log" "${PIN_SERVER[@]}" "$GATEWAY_BIN" serve --config "$TMP/gw/idle.toml"
    wait_ready nginx_idle "$TMP/nginx-idle/out.log" 10 "$P_NG_IDLE" "$P_NG_IDLE_TLS"
    wait_ready gw_idle "$TMP/gw/idle.log" 30 "$P_GW_IDLE"
    sleep 0.5
    for t in nginx gateway; do
        if [[ $t == nginx ]]; then port=$P_NG_IDLE pid=${PID[nginx_idle]}; else port=$P_GW_IDLE pid=${PID[gw_idle]}; fi
        timeout -k 5 120 "${PIN_LOAD[@]}" python3 "$HELP" idle --target "$t" --port "$port" --pid "$pid" \
            --conns "$IDLE_CONNS" --timeout 60 --settle 1 >>"$EXTRA" || die "idle helper failed"
        say "idle_10k $t: $(tail -n1 "$EXTRA" | python3 "$HELP" describe)"
    done
    stop_tree "${PID[gw_idle]}"
    stop_tree "${PID[nginx_idle]}"
fi

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ---------------------------------------------------------------------

python3 - "$TMP/meta.json" <<PY
import json, sys
rss = {$(for k in "${!RSS_START[@]}"; do printf '"%s": %s, ' "$k" "${RSS_START[$k]}"; done)}
skipped = {$(for k in "${!SKIPPED[@]}"; do printf '"%s": "%s", ' "$k" "${SKIPPED[$k]}"; done)}
meta = {
    "started": "$START_TS", "load_average_start": "$LOAD_START", "load_average_end": "$LOAD_END",
    "cpus": $(nproc), "reps": $REPS, "duration_s": $DURATION, "warmup_s": $WARMUP, "conns": $CONNS,
    "threads": $THREADS, "workers": $WORKERS, "h2load_conns": $H2_CONNS, "h2load_streams": $H2_STREAMS,
    "tls_batch": $TLS_BATCH, "idle_conns": $IDLE_CONNS, "transfer_mib": $TRANSFER_MIB,
    "pinning": "$PINNING", "nginx_version": "$NGINX_VERSION",
    "wrk_version": "$(wrk -v 2>&1 | head -n1 | awk '{print $2}')",
    "h2load_version": "$(h2load --version 2>/dev/null | awk '{print $2}' || true)",
    "gateway_bin": "$GATEWAY_BIN", "gateway_version": "$("$GATEWAY_BIN" --version 2>/dev/null || true)",
    "gateway_commit": "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || true)",
    "kernel": "$(uname -r)", "host": "$(uname -n)",
    "rss_at_start_kib": rss, "skipped": skipped,
    "notes": "access_log off on both; nginx proxies every path without checking tokens; the gateway validates "
             "them on /api/ (HS256, ES256 or RS256 by scenario) and injects X-User-Id; /open/ and /upload/ are auth none",
}
json.dump(meta, open(sys.argv[1], "w"), indent=2)
PY
python3 "$HELP" report --meta "$TMP/meta.json" --manifest "$MANIFEST" --extra "$EXTRA" --out "$OUT"

#!/usr/bin/env bash
# Services the TaxiPipeline tests run against (Kinesis, S3 and OpenSearch emulators), and the
# browser the dashboard test drives (Chromium with npm's playwright-core), which only that test needs.
#
# `.ci/test` sources this file, starts every service in TAXI_SERVICES and stops them on exit.
# To keep them running in the background while you run `cargo test` by hand:
#   eval "$(bash .ci/services.sh start)"   # starts them and exports TAXI_TEST_*_ENDPOINT here
#   eval "$(bash .ci/services.sh browser)" # finds or installs Chromium for the dashboard's browser test
#   bash .ci/services.sh status
#   bash .ci/services.sh stop
# Installs, logs (NAME.log), pid files and env files live in ${TAXI_SERVICES_DIR:-/tmp/taxi-services}.
# Every service listens on 127.0.0.1 on a free port; the tests read its endpoint from an env var.

TAXI_SERVICES_DIR="${TAXI_SERVICES_DIR:-/tmp/taxi-services}"
SVC_NODE="$TAXI_SERVICES_DIR/node"   # npm packages (node_modules/.bin is put on PATH)
SVC_VENV="$TAXI_SERVICES_DIR/venv"   # PyPI packages (bin is put on PATH)

# ---- Registry --------------------------------------------------------------------------------
# To add a service: add its name here and fill in its branch in service_install and service_start.
TAXI_SERVICES=(kinesis s3 opensearch)

service_install() { # NAME: make its program available; quick when it already is.
  case "$1" in
    kinesis)    npm_install kinesis-local@0.6.2 ;;
    # pyarrow: the tests read the Parquet archive back with it, and write TLC-layout Parquet input.
    s3)         pip_install 'moto[server]' && pip_install pyarrow==22.0.0 ;;
    opensearch) pip_install osmem-server==0.1.6 ;;
    *) svc_log "error: service_install: unknown service '$1'"; return 1 ;;
  esac
}

# service_start NAME: start it in the background, wait for its port, export its endpoint.
# Each branch sets `var` (the env var the tests read) and `cmd` (a foreground command that
# listens on 127.0.0.1:$port); `url` defaults to http://127.0.0.1:$port. A branch may set `health`
# (a path): then the service is ready only once GET $url$health answers 2xx, not merely listening.
service_start() {
  local name=$1 port var url health="" cmd=() km extra=()
  if service_running "$name"; then   # e.g. left running by `services.sh start`: reuse it
    svc_log "$name: already running (pid $(<"$TAXI_SERVICES_DIR/$name.pid")), reusing it"
    # shellcheck source=/dev/null
    source "$TAXI_SERVICES_DIR/$name.env"
    return 0
  fi
  port=$(free_port) || return 1
  case "$name" in
    kinesis) var=TAXI_TEST_KINESIS_ENDPOINT health=/healthcheck
      # kinesis-mock (Scala.js, one main.js): plain HTTP on $port, TLS on another free port; it binds
      # every interface, so the preload forces both onto 127.0.0.1. It needs its self-signed cert
      # (server.json) even for the plain port, and dies without it. Every asynchronous stream
      # operation (CREATING/UPDATING/DELETING -> ACTIVE) takes *_DURATION: 100ms instead of 500ms.
      # Region and account come from the request (default us-east-1, 000000000000). Requests must
      # be SigV4-signed (unsigned: MissingAuthenticationTokenException), but any credentials work.
      km="$SVC_NODE/node_modules/kinesis-local"
      cmd=(env KINESIS_MOCK_PLAIN_PORT="$port" KINESIS_MOCK_TLS_PORT="$(free_port)"
           KINESIS_MOCK_CERT_PATH="$km/server.json" LOG_LEVEL=WARN SHARD_LIMIT=10000
           CREATE_STREAM_DURATION=100ms DELETE_STREAM_DURATION=100ms
           UPDATE_SHARD_COUNT_DURATION=100ms SPLIT_SHARD_DURATION=100ms MERGE_SHARDS_DURATION=100ms
           REGISTER_STREAM_CONSUMER_DURATION=100ms DEREGISTER_STREAM_CONSUMER_DURATION=100ms
           START_STREAM_ENCRYPTION_DURATION=100ms STOP_STREAM_ENCRYPTION_DURATION=100ms
           UPDATE_STREAM_MODE_DURATION=100ms
           node --require "$(node_loopback_preload)" "$km/main.js") ;;
    s3) var=TAXI_TEST_S3_ENDPOINT health=/moto-api/
      extra=(TAXI_TEST_PYTHON "$SVC_VENV/bin/python")   # with pyarrow
      # moto's S3 (Flask/werkzeug, threaded): path-style requests, any credentials and region.
      # Conditional PutObject (If-None-Match: *, If-Match) answers 412 PreconditionFailed, and
      # If-Match on a missing key 404 NoSuchKey, as S3 does; but moto checks, then writes, without
      # a lock, so the check is not atomic across concurrent requests (a narrow window in practice).
      cmd=(moto_server -H 127.0.0.1 -p "$port") ;;
    opensearch) var=TAXI_TEST_OPENSEARCH_ENDPOINT health=/
      # osmem (a static Go binary inside the osmem_server wheel, not on PATH): in-memory
      # OpenSearch 3.x API. It exits when its stdin closes unless -no-stdin-watch; -no-ja skips
      # loading the Japanese analyzer. GET / answers 200 with the cluster info once it serves.
      cmd=("$(osmem_binary)" -addr "127.0.0.1:$port" -no-stdin-watch -no-ja) || return 1 ;;
    *) svc_log "error: service_start: unknown service '$name'"; return 1 ;;
  esac
  url=${url:-http://127.0.0.1:$port}
  svc_log "$name: starting on 127.0.0.1:$port (log: $TAXI_SERVICES_DIR/$name.log)"
  # setsid: the service leads its own process group, so stopping it also stops its children.
  PATH="$SVC_VENV/bin:$SVC_NODE/node_modules/.bin:$PATH" \
    setsid "${cmd[@]}" </dev/null >"$TAXI_SERVICES_DIR/$name.log" 2>&1 &
  echo "$!" >"$TAXI_SERVICES_DIR/$name.pid"
  SVC_STARTED+=("$name")
  wait_for_port 127.0.0.1 "$port" "${TAXI_SERVICE_TIMEOUT:-60}" "$name" || return 1
  if [[ -n "$health" ]]; then wait_for_http "$url$health" "${TAXI_SERVICE_TIMEOUT:-60}" "$name" || return 1; fi
  printf 'export %s=%q\n' "$var" "$url" >"$TAXI_SERVICES_DIR/$name.env"
  export "$var=$url"
  if ((${#extra[@]})); then   # a variable besides the endpoint: NAME VALUE
    printf 'export %s=%q\n' "${extra[0]}" "${extra[1]}" >>"$TAXI_SERVICES_DIR/$name.env"
    export "${extra[0]}=${extra[1]}"
  fi
}

# ---- The browser: found or installed, not started ----------------------------------------------
# Only the dashboard's browser test (worker/tests/dashboard_browser.rs) needs it, so `start` does
# not: the emulators run on any Linux or macOS with node and python. `.ci/test` calls
# browser_install; without a browser that test alone is skipped (and fails in CI, CI=true).
# The test reads TAXI_TEST_CHROMIUM (the browser) and TAXI_TEST_PLAYWRIGHT (a node_modules folder
# holding playwright-core); Playwright's own browser download is not used.
PLAYWRIGHT_CORE=playwright-core@1.65.1

find_chromium() { # prints the path of a Chromium or Chrome on this machine, if any
  local candidate
  for candidate in "${TAXI_TEST_CHROMIUM:-}" chromium chromium-browser google-chrome google-chrome-stable \
    "/Applications/Chromium.app/Contents/MacOS/Chromium" \
    "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome"; do
    [[ -n "$candidate" ]] || continue
    if [[ "$candidate" == /* && -x "$candidate" ]]; then echo "$candidate"; return 0; fi
    if command -v "$candidate" >/dev/null 2>&1; then command -v "$candidate"; return 0; fi
  done
  return 1
}

browser_install() { # find (or, with apt-get, install) Chromium and playwright-core; export their variables
  local chromium sudo=()
  if ! chromium=$(find_chromium); then
    if ! command -v apt-get >/dev/null 2>&1; then
      svc_log "no Chromium found and no apt-get to install one: the dashboard's browser test is skipped" \
        "(install Chromium or set TAXI_TEST_CHROMIUM to a Chromium or Chrome binary)"
      return 1
    fi
    [[ "$(id -u)" == 0 ]] || sudo=(sudo)
    svc_log "apt-get install chromium"
    "${sudo[@]}" apt-get update -qq >&2 &&
      DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq chromium >&2 ||
      { svc_log "error: could not install Debian's chromium"; return 1; }
    chromium=$(find_chromium) || { svc_log "error: chromium installed but not found on PATH"; return 1; }
  fi
  npm_install "$PLAYWRIGHT_CORE" || return 1
  mkdir -p "$TAXI_SERVICES_DIR"
  printf 'export TAXI_TEST_CHROMIUM=%q\nexport TAXI_TEST_PLAYWRIGHT=%q\n' \
    "$chromium" "$SVC_NODE/node_modules" >"$TAXI_SERVICES_DIR/browser.env"
  # shellcheck source=/dev/null
  source "$TAXI_SERVICES_DIR/browser.env"
}

# ---- Framework -------------------------------------------------------------------------------
SVC_STARTED=()   # services this shell started; services_stop_all stops exactly these

svc_log() { printf '[services] %s\n' "$*" >&2; }

npm_install() { # PACKAGE@VERSION into $SVC_NODE; skipped (no registry access) when that version is there
  local pkg=${1%@*} version=${1##*@} installed=""
  if [[ -f "$SVC_NODE/node_modules/$pkg/package.json" ]]; then
    installed=$(node -p 'require(process.argv[1]).version' "$SVC_NODE/node_modules/$pkg/package.json" 2>/dev/null) || installed=""
  fi
  if [[ -n "$installed" && "$installed" == "$version" ]]; then return 0; fi
  svc_log "npm install $1"
  npm install --prefix "$SVC_NODE" --no-audit --no-fund --loglevel=error "$1" >&2
}

pip_install() { # REQUIREMENT into the venv $SVC_VENV (Debian's system Python refuses pip installs);
  # skipped (no registry access) when the venv has that distribution (at that version when pinned)
  local dist=${1%%[[=]*} version=""
  [[ "$1" == *==* ]] && version=${1##*==}
  if [[ -x "$SVC_VENV/bin/python" ]] && "$SVC_VENV/bin/python" - "$dist" "$version" <<'PY' 2>/dev/null; then
import sys, importlib.metadata as md
try:
    found = md.version(sys.argv[1])
except md.PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if sys.argv[2] in ("", found) else 1)
PY
    return 0
  fi
  if [[ ! -x "$SVC_VENV/bin/pip" ]]; then
    if ! python3 -m venv "$SVC_VENV" >&2; then   # Debian ships venv separately
      [[ "$(id -u)" == 0 ]] || { svc_log "error: python3 -m venv failed: install python3-venv"; return 1; }
      apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2 &&
        python3 -m venv --clear "$SVC_VENV" >&2 || return 1
    fi
  fi
  svc_log "pip install $1"
  "$SVC_VENV/bin/pip" install --quiet --disable-pip-version-check "$1" >&2
}

osmem_binary() { # prints the path of the osmem-server binary bundled in the osmem_server wheel
  "$SVC_VENV/bin/python" -c 'import osmem_server; print(osmem_server.resolve_binary())' ||
    { svc_log "error: osmem-server binary not found in $SVC_VENV"; return 1; }
}

node_loopback_preload() { # prints the path of a Node preload that makes every server listen on 127.0.0.1
  local f="$TAXI_SERVICES_DIR/loopback.cjs"
  cat >"$f" <<'JS'
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (args[0] !== null && typeof args[0] === 'object') args[0] = { ...args[0], host: '127.0.0.1' };
  else if (typeof args[1] === 'string') args[1] = '127.0.0.1';
  else args.splice(1, 0, '127.0.0.1');
  return listen.apply(this, args);
};
JS
  echo "$f"
}

port_open() { # HOST PORT: does it accept a TCP connection? (bash /dev/tcp, no nc needed)
  # shellcheck disable=SC2016  # $0 and $1 expand in the inner bash
  timeout 1 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

free_port() { # a port nobody on 127.0.0.1 listens on now
  local port _
  for _ in {1..100}; do
    port=$((20000 + RANDOM % 40000))
    port_open 127.0.0.1 "$port" || { echo "$port"; return 0; }
  done
  svc_log "error: no free port found"; return 1
}

wait_for_port() { # HOST PORT TIMEOUT_SECONDS [NAME]: wait until it accepts connections
  local host=$1 port=$2 deadline=$((SECONDS + $3)) name=${4:-} pid=""
  [[ -n "$name" && -f "$TAXI_SERVICES_DIR/$name.pid" ]] && pid=$(<"$TAXI_SERVICES_DIR/$name.pid")
  until port_open "$host" "$port"; do
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      svc_log "${name:-$host:$port}: exited before listening on $host:$port"; svc_log_tail "$name"; return 1
    fi
    if ((SECONDS >= deadline)); then
      svc_log "${name:-$host:$port}: not listening on $host:$port after $3 s"; svc_log_tail "$name"; return 1
    fi
    sleep 0.2
  done
}

wait_for_http() { # URL TIMEOUT_SECONDS [NAME]: wait until GET URL answers 2xx
  local deadline=$((SECONDS + $2))
  command -v curl >/dev/null || { svc_log "${3:-$1}: no curl, not checking GET $1"; return 0; }
  until curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      svc_log "${3:-$1}: GET $1 did not succeed after $2 s"; svc_log_tail "${3:-}"; return 1
    fi
    sleep 0.2
  done
}

svc_log_tail() { # NAME: the last lines of its log, to stderr
  [[ -n "$1" && -f "$TAXI_SERVICES_DIR/$1.log" ]] || return 0
  svc_log "--- last 40 lines of $TAXI_SERVICES_DIR/$1.log ---"
  tail -n 40 "$TAXI_SERVICES_DIR/$1.log" >&2
}

service_running() { # NAME
  [[ -f "$TAXI_SERVICES_DIR/$1.pid" ]] && kill -0 "$(<"$TAXI_SERVICES_DIR/$1.pid")" 2>/dev/null
}

service_stop() { # NAME: SIGTERM its process group, SIGKILL after 5 s
  local pid_file="$TAXI_SERVICES_DIR/$1.pid" pid _
  [[ -f "$pid_file" ]] || return 0
  pid=$(<"$pid_file")
  if kill -0 "$pid" 2>/dev/null; then
    svc_log "$1: stopping (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in {1..25}; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pid_file" "$TAXI_SERVICES_DIR/$1.env"
}

services_start_all() { # install and start every registered service, exporting their endpoints
  local name
  mkdir -p "$TAXI_SERVICES_DIR"
  for name in "${TAXI_SERVICES[@]}"; do service_install "$name" || return 1; done
  for name in "${TAXI_SERVICES[@]}"; do service_start "$name" || return 1; done
}

services_stop_all() { # stop what this shell started (not services it found already running)
  local name
  for name in "${SVC_STARTED[@]}"; do service_stop "$name"; done
  SVC_STARTED=()
}

# ---- Command line (only when executed, not when sourced) -------------------------------------
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  case "${1:-}" in
    start)
      services_start_all || { services_stop_all; exit 1; }
      SVC_STARTED=()   # leave them running after this script exits
      for name in "${TAXI_SERVICES[@]}"; do cat "$TAXI_SERVICES_DIR/$name.env"; done ;;
    browser)
      browser_install
      cat "$TAXI_SERVICES_DIR/browser.env" ;;
    stop)
      for f in "$TAXI_SERVICES_DIR"/*.pid; do
        if [[ -e "$f" ]]; then service_stop "$(basename "$f" .pid)"; fi
      done ;;
    status)
      echo "registered services: ${TAXI_SERVICES[*]:-(none)}"
      for name in "${TAXI_SERVICES[@]}"; do
        if service_running "$name"; then echo "$name: running (pid $(<"$TAXI_SERVICES_DIR/$name.pid"))"
          cat "$TAXI_SERVICES_DIR/$name.env"
        else echo "$name: stopped"; fi
      done ;;
    *) echo "usage: bash $0 start|browser|stop|status   (start and browser print export lines: eval \"\$(bash $0 start)\")" >&2
       exit 2 ;;
  esac
fi

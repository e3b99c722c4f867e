# Shared by bench/setup-anchors.sh and bench/run.sh: where things live, and how to
# start, find and stop each server. Source it; don't run it.
#
# Environment (all optional):
#   BENCH_DIR   working directory for data, certificates and logs (/tmp/kith-bench)
#   KITH_BIN    kith release binary   ($CARGO_TARGET_DIR/release/kith)
#   BENCH_BIN   kith-bench binary     ($CARGO_TARGET_DIR/release/kith-bench)
#   SERVER_CPU  core the server is pinned to (0); LOADGEN_CPU for kith-bench (1)
#   KITH_PORT / EJABBERD_PORT / PROSODY_PORT  c2s ports (15222 / 25222 / 35222)
#   KITH_WS_PORT / EJABBERD_WS_PORT / PROSODY_WS_PORT  XMPP-over-WebSocket ports
#               (15280 / 25280 / 35280; HTTPS with TLS=on, HTTP with TLS=off)

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_DIR="${BENCH_DIR:-/tmp/kith-bench}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
KITH_BIN="${KITH_BIN:-$TARGET_DIR/release/kith}"
BENCH_BIN="${BENCH_BIN:-$TARGET_DIR/release/kith-bench}"
SERVER_CPU="${SERVER_CPU:-0}"
LOADGEN_CPU="${LOADGEN_CPU:-1}"
KITH_PORT="${KITH_PORT:-15222}"
EJABBERD_PORT="${EJABBERD_PORT:-25222}"
PROSODY_PORT="${PROSODY_PORT:-35222}"
KITH_WS_PORT="${KITH_WS_PORT:-15280}"
EJABBERD_WS_PORT="${EJABBERD_WS_PORT:-25280}"
PROSODY_WS_PORT="${PROSODY_WS_PORT:-35280}"
EJABBERD_NODE="kithbench@localhost"
BENCH_PASSWORD="${BENCH_PASSWORD:-bench-pass}"
# The machine caps a process at 20,000 open files: servers and kith-bench get that.
NOFILE="${NOFILE:-20000}"

log() { echo "[bench] $*" >&2; }

port_of() {
  case "$1" in
    kith) echo "$KITH_PORT" ;;
    ejabberd) echo "$EJABBERD_PORT" ;;
    prosody) echo "$PROSODY_PORT" ;;
    *) echo "unknown server $1" >&2; return 1 ;;
  esac
}

# ARCHIVE=on turns on every server's message archive for 1:1 chats (ejabberd's
# mod_mam `default: always`, Prosody's mod_mam with `default_archive_policy`,
# kith's `[archive] enabled`); off (the default) leaves 1:1 messages unarchived.
# kith still appends every message to the recipient's log without an archive:
# its log is also how it delivers (ejabberd and Prosody store a message only
# when its recipient is offline).
ARCHIVE="${ARCHIVE:-off}"
# PROSODY_ARCHIVE picks Prosody's archive storage when ARCHIVE=on: internal (the
# default, Prosody's own default) appends to a file per user and day, with no
# index and no full-text search; sql keeps it in SQLite through mod_storage_sql,
# indexed by user, time and id like kith's and ejabberd's (still no full-text
# search). Everything else Prosody stores stays internal either way.
PROSODY_ARCHIVE="${PROSODY_ARCHIVE:-internal}"
# PROSODY_GC picks the Lua collector's mode Prosody runs with: default (Prosody
# 0.12's own: incremental, a new cycle once the heap has grown 5 %, which trades
# CPU for memory, and its CPU per message swings twofold from run to run; what the
# figures use unless stated) or generational (Lua 5.4's
# generational mode with Prosody's thresholds): a knob that moves Prosody's CPU
# per message, stated with any figure that uses it.
PROSODY_GC="${PROSODY_GC:-default}"
# TLS=off runs the scenarios without TLS: kith-bench skips STARTTLS, ejabberd and
# Prosody stop requiring it on their c2s port (they still offer it), and kith-bench
# talks to kith's loopback-only `listen.c2s_plain` port (KITH_PLAIN_PORT), which
# offers no TLS; every server still does SCRAM-SHA-1. On (the default): STARTTLS
# required everywhere.
TLS="${TLS:-on}"
KITH_PLAIN_PORT="${KITH_PLAIN_PORT:-15224}"
# TRANSPORT=websocket runs the scenarios over XMPP over WebSocket (RFC 7395) at
# each server's /xmpp-websocket on its WS port (wss:// with TLS=on, ws:// with
# TLS=off); tcp (the default) uses the c2s ports. Every server listens on both
# either way, so the configurations stay the same.
TRANSPORT="${TRANSPORT:-tcp}"
# AUTH=sasl2 signs clients in with XEP-0388 SASL2 and Bind 2, AUTH=fast with
# XEP-0484 FAST tokens (the login scenario gets them first, unmeasured); kith
# only among the three servers. Default: classic (RFC 6120).
AUTH="${AUTH:-classic}"
ws_port_of() {
  case "$1" in
    kith) echo "$KITH_WS_PORT" ;;
    ejabberd) echo "$EJABBERD_WS_PORT" ;;
    prosody) echo "$PROSODY_WS_PORT" ;;
    *) echo "unknown server $1" >&2; return 1 ;;
  esac
}
render() { # template output port ws-port
  local mam_default=never mam_module="" mam_policy=false kith_archive=false
  case "$ARCHIVE" in
    on) mam_default=always mam_module='"mam";' mam_policy=true kith_archive=true ;;
    off) ;;
    *) log "ARCHIVE must be on or off, not $ARCHIVE"; return 1 ;;
  esac
  case "$PROSODY_ARCHIVE" in
    internal | sql) ;;
    *) log "PROSODY_ARCHIVE must be internal or sql, not $PROSODY_ARCHIVE"; return 1 ;;
  esac
  local prosody_gc=""
  case "$PROSODY_GC" in
    default) ;;
    generational) prosody_gc='gc = { mode = "generational" }' ;;
    *) log "PROSODY_GC must be default or generational, not $PROSODY_GC"; return 1 ;;
  esac
  local tls_required=true kith_plain="" kith_http="" kith_https="127.0.0.1:$4"
  local prosody_http="" prosody_https="$4"
  case "$TLS" in
    on) ;;
    off) tls_required=false kith_plain="127.0.0.1:$KITH_PLAIN_PORT" kith_http="127.0.0.1:$4"
      kith_https="" prosody_http="$4" prosody_https="" ;;
    *) log "TLS must be on or off, not $TLS"; return 1 ;;
  esac
  case "$TRANSPORT" in
    tcp | websocket) ;;
    *) log "TRANSPORT must be tcp or websocket, not $TRANSPORT"; return 1 ;;
  esac
  sed -e "s|@DIR@|$BENCH_DIR|g" -e "s|@PORT@|$3|g" -e "s|@MAM_DEFAULT@|$mam_default|g" \
    -e "s|@MAM_MODULE@|$mam_module|g" -e "s|@MAM_POLICY@|$mam_policy|g" \
    -e "s|@KITH_ARCHIVE@|$kith_archive|g" -e "s|@TLS_REQUIRED@|$tls_required|g" \
    -e "s|@KITH_PLAIN@|$kith_plain|g" -e "s|@WS_PORT@|$4|g" -e "s|@KITH_HTTP@|$kith_http|g" \
    -e "s|@KITH_HTTPS@|$kith_https|g" -e "s|@PROSODY_HTTP@|$prosody_http|g" \
    -e "s|@PROSODY_HTTPS@|$prosody_https|g" -e "s|@PROSODY_ARCHIVE@|$PROSODY_ARCHIVE|g" \
    -e "s|@PROSODY_GC@|$prosody_gc|g" "$1" >"$2"
}

wait_port() { # port seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "port $1 did not open within $2 s"
  return 1
}

ejabberd_args() {
  echo --config-dir "$BENCH_DIR/ejabberd" --config "$BENCH_DIR/ejabberd/ejabberd.yml" \
    --ctl-config "$BENCH_DIR/ejabberd/ejabberdctl.cfg" \
    --spool "$BENCH_DIR/ejabberd/spool" --logs "$BENCH_DIR/ejabberd/logs" --node "$EJABBERD_NODE"
}
# ejabberdctl run as root switches user with su, whose PAM session resets the
# open-files soft limit to 1024: run it as the ejabberd user directly instead.
ejabberdctl_() {
  # shellcheck disable=SC2046 # BENCH_DIR has no spaces (checked in setup).
  HOME=/var/lib/ejabberd setpriv --reuid=ejabberd --regid=ejabberd --init-groups \
    ejabberdctl $(ejabberd_args) "$@"
}

# Starts SERVER pinned to SERVER_CPU; prints the PIDs to measure (space-separated).
start_server() {
  local server="$1" port
  port="$(port_of "$server")"
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    log "port $port is already in use: stop whatever listens there first"
    return 1
  fi
  case "$server" in
    kith)
      render "$REPO/bench/kith/kith.toml" "$BENCH_DIR/kith/kith.toml" "$port" "$KITH_WS_PORT"
      # Every run starts from the database as provisioned, so figures don't depend
      # on how much earlier runs grew the inbox log.
      if [[ -d "$BENCH_DIR/kith/data.provisioned" && "${KITH_FRESH_DATA:-1}" == 1 ]]; then
        rm -rf "$BENCH_DIR/kith/data"
        cp -a "$BENCH_DIR/kith/data.provisioned" "$BENCH_DIR/kith/data"
      fi
      (ulimit -n "$NOFILE"; exec taskset -c "$SERVER_CPU" "$KITH_BIN" serve \
        --config "$BENCH_DIR/kith/kith.toml" >>"$BENCH_DIR/kith/kith.log" 2>&1) &
      echo $! >"$BENCH_DIR/kith/kith.pid"
      wait_port "$port" 30
      cat "$BENCH_DIR/kith/kith.pid"
      ;;
    ejabberd)
      render "$REPO/bench/ejabberd/ejabberd.yml" "$BENCH_DIR/ejabberd/ejabberd.yml" "$port" "$EJABBERD_WS_PORT"
      render "$REPO/bench/ejabberd/ejabberdctl.cfg" "$BENCH_DIR/ejabberd/ejabberdctl.cfg" "$port" "$EJABBERD_WS_PORT"
      chown ejabberd:ejabberd "$BENCH_DIR/ejabberd/ejabberd.yml" "$BENCH_DIR/ejabberd/ejabberdctl.cfg"
      # ejabberdctl starts beam.smp detached; the CPU affinity is inherited.
      # shellcheck disable=SC2046
      (ulimit -n "$NOFILE"; cd "$BENCH_DIR/ejabberd/spool"; HOME=/var/lib/ejabberd taskset -c "$SERVER_CPU" \
        setpriv --reuid=ejabberd --regid=ejabberd --init-groups ejabberdctl $(ejabberd_args) start)
      ejabberdctl_ started >/dev/null 2>&1 || true
      wait_port "$port" 60
      ejabberd_pids
      ;;
    prosody)
      render "$REPO/bench/prosody/prosody.cfg.lua" "$BENCH_DIR/prosody/prosody.cfg.lua" "$port" "$PROSODY_WS_PORT"
      touch "$BENCH_DIR/prosody/prosody.log"
      # A fresh archive each run, as kith's data is: the internal one's files
      # (per user and day) and the SQL one (PROSODY_ARCHIVE=sql).
      rm -rf "$BENCH_DIR/prosody/data/localhost/archive" "$BENCH_DIR/prosody/data/prosody.sqlite"*
      chown prosody:prosody "$BENCH_DIR/prosody/prosody.cfg.lua" "$BENCH_DIR/prosody/prosody.log"
      # Prosody refuses to run as root: drop to its user with setpriv (which execs,
      # so the PID is Prosody's own).
      (ulimit -n "$NOFILE"; exec taskset -c "$SERVER_CPU" setpriv --reuid=prosody --regid=prosody \
        --init-groups prosody --config "$BENCH_DIR/prosody/prosody.cfg.lua" -F \
        >>"$BENCH_DIR/prosody/stdout.log" 2>&1) &
      echo $! >"$BENCH_DIR/prosody/prosody.launch.pid"
      wait_port "$port" 30
      cat "$BENCH_DIR/prosody/prosody.launch.pid"
      ;;
  esac
}

# The ejabberd VM of our node and its helper children (erl_child_setup).
ejabberd_pids() {
  local beam
  beam="$(pgrep -f "beam.smp.*-sname $EJABBERD_NODE|beam.smp.*-name $EJABBERD_NODE" | head -1 || true)"
  if [[ -z "$beam" ]]; then
    beam="$(pgrep -f "beam.smp.*${EJABBERD_NODE%@*}" | head -1 || true)"
  fi
  [[ -n "$beam" ]] || { log "ejabberd VM not found"; return 1; }
  echo "$beam" $(pgrep -P "$beam" || true)
}

stop_server() {
  local server="$1" pid
  case "$server" in
    kith)
      pid="$(cat "$BENCH_DIR/kith/kith.pid" 2>/dev/null || true)"
      if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && { log "kith $pid did not stop; killing it"; kill -KILL "$pid"; }
      fi
      rm -f "$BENCH_DIR/kith/kith.pid"
      ;;
    ejabberd)
      ejabberdctl_ stop >/dev/null 2>&1 || true
      ejabberdctl_ stopped >/dev/null 2>&1 || true
      ;;
    prosody)
      pid="$(cat "$BENCH_DIR/prosody/prosody.launch.pid" 2>/dev/null || true)"
      if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && { log "prosody $pid did not stop; killing it"; kill -KILL "$pid"; }
      fi
      rm -f "$BENCH_DIR/prosody/prosody.launch.pid"
      ;;
  esac
}

# The server a script has running (start_current), stopped by stop_current (also
# as the script's EXIT trap).
current=""
# Starts SERVER as the current one, its PIDs in $pids. A server that did not start
# (e.g. its port is taken by another run) is logged and not made current:
# stopping it would kill whatever process the shared pid file names.
start_current() {
  if ! pids="$(start_server "$1")"; then
    log "$1 did not start; skipping it"
    return 1
  fi
  current="$1"
}
# `if`, not `&&`: under `set -e` a false test as a trap's last command made a
# finished run exit 1.
stop_current() {
  if [[ -n "$current" ]]; then stop_server "$current"; fi
  current=""
}

# Runs kith-bench against SERVER, pinned to LOADGEN_CPU.
bench() { # server pids... -- args...
  local server="$1"; shift
  local pid_args=()
  while [[ $# -gt 0 && "$1" != "--" ]]; do pid_args+=(--server-pid "$1"); shift; done
  shift || true
  local tls_args=(--ca "$BENCH_DIR/tls/ca.pem") port
  port="$(port_of "$server")"
  if [[ "$TLS" == off ]]; then
    tls_args=(--no-tls)
    [[ "$server" == kith ]] && port="$KITH_PLAIN_PORT"
  fi
  if [[ "$TRANSPORT" == websocket ]]; then
    local scheme=wss
    [[ "$TLS" == off ]] && scheme=ws
    tls_args+=(--websocket "$scheme://127.0.0.1:$(ws_port_of "$server")/xmpp-websocket")
  fi
  (ulimit -n "$NOFILE"; exec taskset -c "$LOADGEN_CPU" "$BENCH_BIN" --label "$server" \
    --target "127.0.0.1:$port" --domain localhost --password "$BENCH_PASSWORD" --auth "$AUTH" \
    "${tls_args[@]}" "${pid_args[@]}" --scram-cache "$BENCH_DIR/scram-cache-$server" "$@")
}

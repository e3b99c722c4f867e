#!/usr/bin/env bash
# The independent cross-check: Tsung (Debian's, an Erlang load tool no one here
# wrote) drives 1:1 chat against kith, ejabberd and Prosody in turn, each a fresh
# server pinned to SERVER_CPU with Tsung on LOADGEN_CPU, and the server's CPU per
# message and Tsung's own message latency are compared with kith-bench's.
#
#   bench/tsung.sh RATE SECS        e.g. bench/tsung.sh 2000 20
#
# USERS (200) users log in (STARTTLS, SASL PLAIN: Tsung has no SCRAM), then each
# sends a 64-byte message to a random one of them, on average every USERS/RATE s
# (TSUNG_PACING, below), for SECS s,
# stamped: the receiver's Tsung records its latency (xmpp_msg_latency). The
# server's CPU is read from /proc over the middle of the sending (from 3 s after
# every user is connected to 3 s before the sending's planned end) and divided by
# the messages Tsung sent in that time: Tsung paces each user by a pause after
# each message, so when busy it sends below the offered rate (`sent/s`, from its
# session times). Tsung reads one stamp per packet: its latency sample count is
# no loss count (kith-bench's is). Writes RESULTS/SERVER.json and a table with
# the CPU ratios. Run bench/setup-anchors.sh first.
# Environment: see bench/lib.sh (TLS=on only: Tsung's XMPP needs STARTTLS here),
# SERVERS, RESULTS, TSUNG_PACING.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RATE="${1:?usage: bench/tsung.sh RATE SECS}"
SECS="${2:?seconds of sending}"
USERS="${USERS:-200}"
SERVERS="${SERVERS:-kith ejabberd prosody}"
RESULTS="${RESULTS:-$BENCH_DIR/results/tsung-$(date +%Y%m%d-%H%M%S)}"
command -v tsung >/dev/null || { log "tsung is missing: run bench/setup-anchors.sh"; exit 1; }
[[ "$TLS" == on ]] || { log "bench/tsung.sh runs with TLS=on only"; exit 1; }
(( SECS >= 10 )) || { log "send for 10 s at least"; exit 1; }
mkdir -p "$RESULTS"
users_csv="$RESULTS/users.csv"
for i in $(seq "$USERS"); do echo "user$i,$BENCH_PASSWORD"; done >"$users_csv"
# Each user's interval between two messages, in seconds.
interval="$(python3 -c "print(round($USERS / $RATE, 6))")"
messages="$(python3 -c "print(int($SECS * $RATE / $USERS))")"
# TSUNG_PACING: poisson (the default) draws each pause from an exponential
# distribution with that mean, so the users' messages arrive independently;
# fixed pauses keep the users in step after the barrier — every user sends at
# once, every interval.
case "${TSUNG_PACING:-poisson}" in
  poisson) random=true ;;
  fixed) random=false ;;
  *) log "TSUNG_PACING must be poisson or fixed"; exit 1 ;;
esac

cpu_ticks() { # pids... -> utime + stime of all, in clock ticks
  local total=0 pid fields
  for pid in "$@"; do
    fields="$(cut -d' ' -f14,15 "/proc/$pid/stat" 2>/dev/null || echo "0 0")"
    total=$((total + ${fields% *} + ${fields#* }))
  done
  echo "$total"
}

trap stop_current EXIT INT TERM
log "Tsung chat: $USERS users, $RATE msg/s for $SECS s (ARCHIVE=$ARCHIVE, TLS=$TLS)"
for server in $SERVERS; do
  start_current "$server" || continue
  sleep 2
  # shellcheck disable=SC2086
  set -- $pids
  sed -e "s|@PORT@|$(port_of "$server")|g" -e "s|@USERS@|$USERS|g" \
    -e "s|@ARRIVAL_MS@|$((USERS * 10 + 5000))|g" -e "s|@ARRIVAL_RATE@|100|g" \
    -e "s|@USERS_CSV@|$users_csv|g" -e "s|@CA@|$BENCH_DIR/tls/ca.pem|g" \
    -e "s|@MESSAGES@|$messages|g" -e "s|@INTERVAL@|$interval|g" -e "s|@RANDOM@|$random|g" \
    "$REPO/bench/tsung/chat.xml" >"$RESULTS/$server.xml"
  rm -rf "$RESULTS/$server-log"
  mkdir -p "$RESULTS/$server-log"
  (ulimit -n "$NOFILE"; exec taskset -c "$LOADGEN_CPU" tsung -n -f "$RESULTS/$server.xml" \
    -l "$RESULTS/$server-log" start >"$RESULTS/$server-tsung.out" 2>&1) &
  tsung_pid=$!
  # The sending starts once every user is online (Tsung's counters are dumped
  # only every 10 s): wait for USERS connections to the server's port, then
  # measure the middle of the sending.
  port="$(port_of "$server")"
  started=""
  for _ in $(seq 600); do
    if (( $(ss -Htn state established "( sport = :$port )" | wc -l) >= USERS )); then started=1; break; fi
    sleep 0.1
  done
  [[ -n "$started" ]] || log "$server: $USERS users not connected within 60 s (see $RESULTS/$server-tsung.out)"
  sleep 3
  t0="$(date +%s.%N)"; c0="$(cpu_ticks "$@")"
  sleep $((SECS - 6))
  t1="$(date +%s.%N)"; c1="$(cpu_ticks "$@")"
  # Tsung stops by itself after the sending and 3 s more; a barrier that never
  # filled (a user that could not log in) would keep it waiting forever.
  for _ in $(seq 600); do kill -0 "$tsung_pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$tsung_pid" 2>/dev/null; then
    log "$server: tsung still running 60 s after the sending; stopping it"
    pkill -TERM -P "$tsung_pid" || true # its Erlang VM
    kill -TERM "$tsung_pid" 2>/dev/null || true
  fi
  wait "$tsung_pid" || log "$server: tsung exited with an error"
  stop_current
  python3 - "$server" "$RESULTS" "$t0" "$t1" "$c0" "$c1" "$(getconf CLK_TCK)" "$RATE" "$USERS" <<'PY'
import glob, json, sys
server, results, t0, t1, c0, c1, hz, rate, users = sys.argv[1:]
secs = float(t1) - float(t0)
cpu_s = (int(c1) - int(c0)) / int(hz)
logs = glob.glob(f"{results}/{server}-log/*/tsung.log")
stats = {}
for line in open(logs[0]) if logs else []:
    # "stats: NAME COUNT-IN-INTERVAL ..." sample lines: name, count, mean, stddev,
    # max, min, global mean, global count; counters: name, count, total.
    if line.startswith("stats: "):
        f = line.split()[1:]
        stats[f[0]] = f[1:]
def total(name):
    f = stats.get(name)
    return float(f[-1]) if f else 0.0
def whole_run(name):
    """A sample's count, mean and maximum over the whole run (the last dump's
    interval and everything before it), or None."""
    f = stats.get(name)
    if not f:
        return None
    n, mean, _sd, top, _low, before_mean, before_n = (float(x) for x in f)
    count = n + before_n
    return count, (n * mean + before_n * before_mean) / count if count else 0.0, top
def mean_ms(name):
    run = whole_run(name)
    return run[1] if run else 0.0
def latency():
    run = whole_run("xmpp_msg_latency")
    if not run or not run[0]:
        return {"latency_samples": 0, "latency_mean_ms": None, "latency_max_ms": None}
    count, mean, top = run
    return {"latency_samples": int(count), "latency_mean_ms": round(mean, 2), "latency_max_ms": top}
sent = total("request_noack") - 2 * int(users)
# Tsung paces each user by a pause after each message, so a busy Tsung sends
# slower than offered. The last user to log in opened the sending (the others
# waited for it) and has the shortest session: its login, the sending, and the
# 3 s pause before the close.
session = stats.get("session")
login_s = (sum(mean_ms(n) for n in ("connect", "xmpp_starttls", "tr_authenticate", "tr_roster")) / 1000
           + 0.6)  # and the three 0.2 s pauses
sending_s = float(session[4]) / 1000 - 3.0 - login_s if session else float("nan")
achieved = min(int(rate), sent / sending_s) if sending_s > 0 else int(rate)
out = {
    "server": server,
    "offered_per_s": int(rate),
    "window_s": round(secs, 2),
    "server_cpu_percent": round(100 * cpu_s / secs, 1),
    "sent_per_s": round(achieved),
    "server_cpu_us_per_msg": round(1e6 * cpu_s / (achieved * secs), 1),
    # Every request without an answer: a presence and a close per user, and
    # the messages.
    "sent": sent,
    # Stamped messages whose latency Tsung read (it reads one stamp per
    # packet: messages that arrive together count once, so this is no loss
    # count), their mean and the largest, in ms.
    **latency(),
    "connect_errors": {k: v for k, v in stats.items() if k.startswith("error_")},
    "raw": stats,
}
json.dump(out, open(f"{results}/{server}.json", "w"), indent=1)
print(json.dumps({k: out[k] for k in out if k != "raw"}))
PY
  sleep 2
done
python3 - "$RESULTS" $SERVERS <<'PY'
import json, os, sys
results, servers = sys.argv[1], sys.argv[2:]
runs = {s: json.load(open(f"{results}/{s}.json")) for s in servers if os.path.exists(f"{results}/{s}.json")}
print(f"{'server':10} {'msg/s':>7} {'sent/s':>7} {'CPU %':>6} {'CPU µs/msg':>11} {'sent':>8} {'latency mean / max ms':>22}")
for s, r in runs.items():
    print(f"{s:10} {r['offered_per_s']:7} {r['sent_per_s']:7} {r['server_cpu_percent']:6} {r['server_cpu_us_per_msg']:11} "
          f"{int(r['sent']):8} {str(r['latency_mean_ms']) + ' / ' + str(r['latency_max_ms']):>22}")
k = runs.get("kith")
for other in ("ejabberd", "prosody"):
    o = runs.get(other)
    if k and o and o["server_cpu_us_per_msg"]:
        print(f"kith/{other} CPU per message: {k['server_cpu_us_per_msg'] / o['server_cpu_us_per_msg']:.3f}")
PY

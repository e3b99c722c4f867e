#!/usr/bin/env bash
# Runs one scenario against kith, ejabberd and Prosody in turn, each a fresh server
# process pinned to core $SERVER_CPU with kith-bench on core $LOADGEN_CPU, then prints
# kith/ejabberd and kith/Prosody ratios from the JSON results.
#
#   bench/run.sh SCENARIO [extra kith-bench scenario arguments]
#   SCENARIO: login | idle | chat | offline | durable | group
#
# Run bench/setup-anchors.sh first. Environment: see bench/lib.sh; SERVERS picks
# the servers ("kith ejabberd prosody"); RESULTS the output directory; ARCHIVE=on
# archives 1:1 messages on every server (off by default); TLS=off runs without TLS
# on every server (on by default; see bench/lib.sh).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SCENARIO="${1:?usage: bench/run.sh login|idle|chat|offline|durable|group [args]}"
shift
SERVERS="${SERVERS:-kith ejabberd prosody}"
RESULTS="${RESULTS:-$BENCH_DIR/results/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$RESULTS"

case "$SCENARIO" in
  login) defaults=(--users 2000 --concurrency 100) ;;
  idle) defaults=(--checkpoints 1000,5000,10000,19000 --concurrency 100 --hold-secs 10) ;;
  chat) defaults=(--users 200 --step-secs 10 --drain-secs 3) ;;
  offline) defaults=(--messages 5000 --first 2101) ;;
  durable) defaults=(--pairs 10 --secs 10 --first 2201) ;;
  group) defaults=(--members 200 --senders 10 --rates 10,20,50,100,200,400 --step-secs 10 --drain-secs 3 --keep-going) ;;
  *) log "unknown scenario $SCENARIO"; exit 1 ;;
esac
# Extra arguments replace the defaults entirely when given.
if [[ $# -gt 0 ]]; then defaults=("$@"); fi

trap stop_current EXIT INT TERM

log "1:1 archiving on every server: ARCHIVE=$ARCHIVE (Prosody's in PROSODY_ARCHIVE=$PROSODY_ARCHIVE storage; kith logs every message for delivery either way); TLS=$TLS; Prosody's collector: PROSODY_GC=$PROSODY_GC"
for server in $SERVERS; do
  log "$SCENARIO on $server"
  start_current "$server" || continue
  sleep 2 # let the server finish starting before the baseline is read
  log "$server pids: $pids"
  # shellcheck disable=SC2086
  bench "$server" $pids -- "$SCENARIO" "${defaults[@]}" --json "$RESULTS/$server-$SCENARIO.json" \
    | tee "$RESULTS/$server-$SCENARIO.txt" || log "$server: kith-bench failed"
  stop_current
  sleep 2
done

python3 - "$RESULTS" "$SCENARIO" <<'EOF'
import json, os, sys
results, scenario = sys.argv[1], sys.argv[2]
def load(s):
    p = os.path.join(results, f"{s}-{scenario}.json")
    try:
        with open(p) as f: return json.load(f)["results"]
    except (OSError, KeyError, ValueError): return None

def metric(r):
    """(name, value, higher_is_better) per scenario."""
    if r is None: return []
    if scenario == "login":
        return [("sessions/s", r.get("sessions_per_s"), True),
                ("server CPU µs/login", r.get("server_cpu_us_per_login"), False)]
    if scenario == "idle":
        cps = r.get("checkpoints") or []
        last = cps[-1] if cps else {}
        return [(f"KiB/session at {last.get('sessions')}", (last.get("bytes_per_session") or 0) / 1024, False),
                ("server CPU ms/s while held", r.get("held_cpu_ms_per_s"), False)]
    if scenario == "chat":
        out = [("highest msg/s held", r.get("highest_rate_held"), True),
               ("highest msg/s with every step up to it held", r.get("highest_rate_held_throughout"), True)]
        held = [s for s in r.get("steps", []) if s.get("held")]
        if held:
            out.append(("server CPU µs/msg at highest held step", held[-1].get("server_cpu_us_per_msg"), False))
        return out
    if scenario == "offline":
        return [("s to deliver all", r.get("all_delivered_s") if r.get("lost") == 0 else None, False)]
    if scenario == "durable":
        if not r.get("sm_offered"): return [("acked msg/s", None, True)]
        return [("acked msg/s", r.get("acked_per_s"), True)]
    if scenario == "group":
        return [("delivered stanzas/s at highest held step", r.get("delivered_per_s_at_highest_held"), True),
                ("server CPU µs/delivered stanza at highest held step",
                 r.get("server_cpu_us_per_delivered_at_highest_held"), False),
                ("delivered stanzas/s at highest lossless step (any p99)", r.get("delivered_per_s_at_highest_lossless"), True),
                ("server CPU µs/delivered stanza at highest lossless step",
                 r.get("server_cpu_us_per_delivered_at_highest_lossless"), False)]
    return []

rows = {s: dict((m[0], m) for m in metric(load(s))) for s in ("kith", "ejabberd", "prosody")}
names = []
for s in rows.values():
    for n in s:
        if n not in names: names.append(n)
print(f"\n== {scenario}: ratios (kith / anchor; results in {results}) ==")
for n in names:
    k = rows["kith"].get(n, (n, None, True))
    line = [f"{n}: kith {k[1] if k[1] is not None else '-'}"]
    for a in ("ejabberd", "prosody"):
        v = rows[a].get(n, (n, None, True))
        if k[1] is not None and v[1]:
            ratio = k[1] / v[1]
            better = "better" if (ratio > 1) == k[2] else "worse"
            line.append(f"{a} {v[1]:.6g} → kith/{a} = {ratio:.2f} ({'higher' if k[2] else 'lower'} is better: kith {better})")
        else:
            line.append(f"{a} {v[1] if v[1] is not None else '-'}")
    print("  " + " | ".join(line))
EOF

#!/usr/bin/env bash
# Interleaved A/B of kith builds on the chat scenario (kith only, a fresh server
# per run), printing CPU µs per message, p99 and held/failed per step:
#
#   bench/ab.sh RATES ROUNDS OUTDIR BINARY...
#   e.g. bench/ab.sh 10000,15000,20000 2 /tmp/ab /tmp/kith-base /tmp/kith-new
#
# TLS is off unless TLS=on (the server's CPU per message is steadier without
# it). Environment as bench/lib.sh; USERS (200), STEP_SECS (10).
TLS="${TLS:-off}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RATES="${1:?usage: bench/ab.sh RATES ROUNDS OUTDIR BINARY...}"
ROUNDS="${2:?rounds}"
OUT="${3:?output directory}"
shift 3
[[ $# -gt 0 ]] || { log "name at least one kith binary"; exit 1; }
mkdir -p "$OUT"
for round in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    name="$(basename "$bin")"
    KITH_BIN="$bin"
    pids="$(start_server kith)"
    sleep 2
    bench kith $pids -- chat --users "${USERS:-200}" --rates "$RATES" \
      --step-secs "${STEP_SECS:-10}" --drain-secs 3 --json "$OUT/$name-$round.json" \
      > "$OUT/$name-$round.txt" 2>&1 || log "$name round $round: kith-bench failed"
    stop_server kith
    sleep 1
    python3 - "$OUT/$name-$round.json" "$name" "$round" <<'PY'
import json, sys
steps = json.load(open(sys.argv[1]))["results"]["steps"]
print(sys.argv[2], sys.argv[3], " | ".join(
    f"{s['offered_per_s']}: {s['server_cpu_us_per_msg']:.1f} µs p99 {s['p99_ms']:.0f} ms "
    f"{'held' if s['held'] else 'FAILED'}" for s in steps))
PY
  done
done

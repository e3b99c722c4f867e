#!/usr/bin/env bash
# Profiles kith under one chat step (kith only, TLS off unless TLS=on):
# `perf record -g` of the server from 4 s (PERF_AFTER) into the step to 1 s before its end,
# then a flat report by symbol and one by thread and binary.
#
#   bench/profile.sh RATE SECS OUT     e.g. bench/profile.sh 15000 12 /tmp/prof
#
# Writes OUT.data (perf), OUT.json/.txt (kith-bench), OUT.flat and OUT.threads.
# PERF_CALLGRAPH="--call-graph dwarf,16384" records whole call stacks (kith has
# no frame pointers): who calls malloc, say, at the cost of a large OUT.data.
# Needs `perf` (Debian: linux-perf). Environment as bench/lib.sh.
TLS="${TLS:-off}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RATE="${1:?usage: bench/profile.sh RATE SECS OUT}"
SECS="${2:?seconds}"
OUT="${3:?output prefix}"
AFTER="${PERF_AFTER:-4}"
(( SECS > AFTER + 1 )) || { log "a step of more than PERF_AFTER + 1 s, please"; exit 1; }
pids="$(start_server kith)"
trap 'stop_server kith' EXIT
sleep 2
# shellcheck disable=SC2086 # PERF_CALLGRAPH is several words
( sleep "$AFTER"; perf record -F 2000 ${PERF_CALLGRAPH:--g} -p "$pids" -o "$OUT.data" -- sleep $((SECS - AFTER - 1)) >/dev/null 2>&1 ) &
bench kith $pids -- chat --users "${USERS:-200}" --rates "$RATE" --step-secs "$SECS" \
  --drain-secs 2 --json "$OUT.json" > "$OUT.txt" 2>&1 || log "kith-bench failed"
wait
perf report -i "$OUT.data" --no-children --sort dso,sym --percent-limit 0.4 --stdio 2>/dev/null \
  | grep -v '^#' | grep '%' > "$OUT.flat" || true
perf report -i "$OUT.data" --no-children --sort comm,dso --stdio 2>/dev/null \
  | grep -v '^#' | grep '%' | grep -v -- '--' > "$OUT.threads" || true
log "profile: $OUT.flat, $OUT.threads; the step: $OUT.txt"

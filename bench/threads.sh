#!/usr/bin/env bash
# Server CPU per 1:1 message by thread (kith only, TLS off unless TLS=on): a
# fresh server serves one chat step of 17 s at RATE msg/s; each thread's CPU
# time (`/proc/<pid>/task/*/stat`, user and system) is read 5 s and 15 s into it,
# and the difference is divided by the messages of those 10 s.
#
#   bench/threads.sh RATE OUT     e.g. bench/threads.sh 12000 /tmp/th
#
# Writes OUT.txt (kith-bench) and prints µs per message per thread name (the
# runtime worker, the inbox-log writer, the checkpointer…), user and system
# time apart, and in all; with `perf` installed (and PERF not 0), also each
# thread's system calls per message and context switches per second over the
# same 10 s (`perf stat --per-thread`, OUT.stat).
# Steadier
# than a profile for comparing builds thread by thread; interleave runs of the
# builds compared (KITH_BIN=…): CPU time moves ±10 % between runs on a shared VM.
TLS="${TLS:-off}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RATE="${1:?usage: bench/threads.sh RATE OUT}"
OUT="${2:?output prefix}"
pids="$(start_server kith)"
trap 'stop_server kith' EXIT
sleep 2
# Per thread name: user and system clock ticks (`stat` fields 14 and 15).
snap() {
  for t in /proc/"$pids"/task/*; do
    echo "$(tr ' ' '_' <"$t/comm") $(awk '{print $14, $15}' "$t/stat")"
  done | awk '{u[$1] += $2; s[$1] += $3} END {for (k in u) print k, u[k], s[k]}' | sort
}
( sleep 5; snap >"$OUT.a"; sleep 10; snap >"$OUT.b" ) &
if [[ "${PERF:-1}" != 0 ]] && command -v perf >/dev/null; then
  ( sleep 5; perf stat --per-thread -e context-switches,raw_syscalls:sys_enter -p "$pids" \
      -o "$OUT.stat" -- sleep 10 >/dev/null 2>&1 ) &
fi
bench kith $pids -- chat --users "${USERS:-200}" --rates "$RATE" --step-secs 17 \
  --drain-secs 2 >"$OUT.txt" 2>&1 || log "kith-bench failed (see $OUT.txt)"
wait
grep -E "^ +$RATE " "$OUT.txt" || true
# Clock ticks (USER_HZ, 100/s) → µs, over 10 s of RATE messages a second.
join "$OUT.a" "$OUT.b" | awk -v rate="$RATE" -v hz="$(getconf CLK_TCK)" '
  { per = 1e6 / hz / (rate * 10); u = ($4 - $2) * per; s = ($5 - $3) * per
    tu += u; ts += s; printf "%-18s %6.1f µs/msg (user %.2f, system %.2f)\n", $1, u + s, u, s }
  END { printf "%-18s %6.1f µs/msg (user %.2f, system %.2f)\n", "all", tu + ts, tu, ts }'
if [[ -s "$OUT.stat" ]]; then
  # "comm-tid  count  event": summed per thread name.
  awk -v rate="$RATE" '
    $3 == "raw_syscalls:sys_enter" || $3 == "context-switches" {
      name = $1; sub(/-[0-9]+$/, "", name); gsub(/,/, "", $2); n[name, $3] += $2; names[name] = 1
    }
    END {
      for (k in names) printf "%-18s %6.2f syscalls/msg %8.0f switches/s\n", k,
        n[k, "raw_syscalls:sys_enter"] / (rate * 10), n[k, "context-switches"] / 10
    }' "$OUT.stat" | sort
fi

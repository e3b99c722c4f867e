#!/usr/bin/env bash
# Counts the instructions kith executes per 1:1 message, by thread, under
# valgrind's callgrind: the same workload always costs about the same count,
# where CPU time on this shared VM moves ±10 % between runs. Use it to compare
# two builds of a hot-path change (kith only, TLS off unless TLS=on):
#
#   bench/callgrind.sh RATE SECS OUT [USERS]   e.g. bench/callgrind.sh 200 10 /tmp/cg
#
# Two runs of the server under callgrind, each a fresh process that logs the
# users in and serves one chat step at RATE msg/s (keep RATE low: the server
# runs some 50× slower): a short step (4 s) and one SECS seconds longer. The
# difference of their counts is what SECS seconds of messages cost, without
# start-up, logins and shutdown. Writes OUT-short/OUT-long .txt (kith-bench)
# and .cg.* (callgrind, one file per thread) and prints instructions per message
# by thread (numbered in the order the process started them) and in all.
# Needs valgrind (Debian: valgrind). Environment as bench/lib.sh.
TLS="${TLS:-off}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RATE="${1:?usage: bench/callgrind.sh RATE SECS OUT [USERS]}"
SECS="${2:?seconds}"
OUT="${3:?output prefix}"
USERS="${4:-20}"
command -v valgrind >/dev/null || { log "valgrind is not installed"; exit 1; }
real_bin="$KITH_BIN"
wrapper="$(mktemp)"
trap 'stop_server kith; rm -f "$wrapper"' EXIT
for run in short long; do
  step=4
  [[ "$run" == long ]] && step=$((4 + SECS))
  rm -f "$OUT-$run".cg.*
  cat >"$wrapper" <<EOS
#!/bin/sh
exec valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$OUT-$run.cg.%p" \
  "$real_bin" "\$@"
EOS
  chmod +x "$wrapper"
  KITH_BIN="$wrapper"
  pids="$(start_server kith)"
  bench kith $pids -- chat --users "$USERS" --rates "$RATE" --step-secs "$step" \
    --drain-secs 2 >"$OUT-$run.txt" 2>&1 || log "kith-bench failed (see $OUT-$run.txt)"
  stop_server kith
  grep -E "^ +$RATE " "$OUT-$run.txt" || true
done
python3 - "$OUT" "$RATE" "$SECS" "$real_bin" <<'PY'
import glob, sys
out, rate, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# Threads are numbered in the order they started, which differs between runs:
# name them by what they run.
# Each file names only the functions its thread ran (or called).
ROLES = [("kith::main", "main"),
         ("multi_thread::worker::run", "runtime worker"),
         ("SqliteWriter::run", "inbox-log writer"),
         ("passive_checkpoint", "checkpointer"),
         ("sqlx", "sqlx workers")]
def counts(run):
    roles = {}
    for path in glob.glob(f"{out}-{run}.cg.*-*"):
        role, ir = "other", 0
        text = open(path, errors="replace").read()
        for line in text.splitlines():
            if line.startswith("totals:"):
                ir = int(line.split()[1])
        role = next((name for marker, name in ROLES if marker in text), "other")
        roles[role] = roles.get(role, 0) + ir
    return roles
short, long = counts("short"), counts("long")
messages = rate * secs
print(f"{messages} messages ({rate}/s for {secs} s more in the long run); {sys.argv[4]}")
total = 0
for role in sorted(set(short) | set(long)):
    diff = long.get(role, 0) - short.get(role, 0)
    total += diff
    print(f"  {role:>16}: {diff / messages:10,.0f} instructions/message")
print(f"  all threads: {total / messages:10,.0f} instructions/message")
PY

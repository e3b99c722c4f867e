#!/usr/bin/env bash
# Every scenario on kith, ejabberd and Prosody in one run: the same-run comparison
# BENCHMARKS.md's summary comes from. Each stage is one `bench/run.sh` (servers one
# after the other, each pinned to its core); its ratios go to OUT/summary.txt.
#
# Usage: bench/all.sh            (run bench/setup-anchors.sh first)
# Environment: KITH_BIN, BENCH_BIN, BENCH_DIR as for run.sh (see lib.sh);
#   OUT     output directory (default $BENCH_DIR/results/all-<time>)
#   STAGES  which stages, in order (default: all, as listed in the case below)
set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-${BENCH_DIR:-/tmp/kith-bench}/results/all-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"

stage() { # name scenario args...
  local name=$1; shift
  echo "=== $name $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)" | tee -a "$OUT/summary.txt"
  RESULTS="$OUT/$name" "$REPO/bench/run.sh" "$@" >"$OUT/$name.txt" 2>&1
  sed -n '/== .*ratios/,$p' "$OUT/$name.txt" | tee -a "$OUT/summary.txt"
}

for s in ${STAGES:-login chat chat-archive offline durable durable-archive group idle}; do
  case $s in
    login) stage login login ;;
    chat) stage chat chat --users 200 --step-secs 8 --drain-secs 3 \
            --rates 1000,2000,4000,6000,8000,10000,12000,14000,16000,20000,24000,32000,40000,48000,56000,64000,72000,80000,88000,96000,104000,112000,120000,128000,136000,144000 ;;
    chat-archive) ARCHIVE=on stage chat-archive chat --users 200 --step-secs 8 --drain-secs 3 \
            --rates 250,500,1000,1500,2000,3000,4000,6000,10000,16000,20000,24000,28000,32000 ;;
    offline) stage offline offline ;;
    durable) stage durable durable --pairs 10 --secs 10 --first 2201 ;;
    durable-archive) ARCHIVE=on stage durable-archive durable --pairs 10 --secs 10 --first 2201 ;;
    group) stage group group --members 200 --senders 10 --rates 10,20,50,100,150,200,250,300,400,500 \
            --step-secs 8 --drain-secs 3 --keep-going ;;
    idle)
      SERVERS="kith prosody" stage idle idle --checkpoints 1000,5000,19000 --concurrency 100 --hold-secs 5
      # ejabberd's accounts are slow to provision (see BENCHMARKS.md): 2,000 sessions.
      SERVERS="ejabberd" stage idle-ejabberd idle --checkpoints 1000,2000 --concurrency 100 --hold-secs 5 ;;
    *) echo "unknown stage $s" >&2; exit 2 ;;
  esac
done
echo "done $(date +%T)" >>"$OUT/summary.txt"

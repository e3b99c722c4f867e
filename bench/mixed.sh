#!/usr/bin/env bash
# Issue 8's "a 1,024-member group that mostly lives offline doesn't slow 1:1 chat
# down": 1:1 chat alone, then the same chat steps while a 1,024-member group (50
# members online, 974 offline) gets messages, on one fresh server process each
# (pinned to $SERVER_CPU, both load generators on $LOADGEN_CPU).
#
#   bench/mixed.sh                       (run bench/setup-anchors.sh first)
#
# Environment: as for run.sh (see lib.sh); SERVERS (default "kith"); RESULTS the
# output directory; CHAT_RATES (default 2000,8000,12000), CHAT_STEP_SECS (15);
# GROUP_RATE group messages/s (default 10), GROUP_MEMBERS (1024), GROUP_ONLINE (50).
# Chat uses accounts 1–200, the group accounts 1001 onwards.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SERVERS="${SERVERS:-kith}"
RESULTS="${RESULTS:-$BENCH_DIR/results/mixed-$(date +%Y%m%d-%H%M%S)}"
CHAT_RATES="${CHAT_RATES:-2000,8000,12000}"
CHAT_STEP_SECS="${CHAT_STEP_SECS:-15}"
GROUP_RATE="${GROUP_RATE:-10}"
GROUP_MEMBERS="${GROUP_MEMBERS:-1024}"
GROUP_ONLINE="${GROUP_ONLINE:-50}"
mkdir -p "$RESULTS"

group_pid=""
cleanup() {
  if [[ -n "$group_pid" ]]; then kill "$group_pid" 2>/dev/null || true; fi
  stop_current
}
trap cleanup EXIT INT TERM

chat() { # server pids label
  local server=$1 pids=$2 label=$3
  # shellcheck disable=SC2086
  bench "$server" $pids -- chat --users 200 --first 1 --rates "$CHAT_RATES" \
    --step-secs "$CHAT_STEP_SECS" --drain-secs 3 --keep-going \
    --json "$RESULTS/$server-chat-$label.json" | tee "$RESULTS/$server-chat-$label.txt"
}

steps=$(($(tr ',' '\n' <<<"$CHAT_RATES" | wc -l)))
# Long enough to outlast the chat run it accompanies (logins and judging included).
group_secs=$((steps * (CHAT_STEP_SECS + 3) + 40))

for server in $SERVERS; do
  start_current "$server" || continue
  sleep 2
  log "$server: chat alone"
  chat "$server" "$pids" alone || log "$server: chat alone failed"
  log "$server: chat with a $GROUP_MEMBERS-member group ($GROUP_ONLINE online) at $GROUP_RATE msg/s"
  # shellcheck disable=SC2086
  bench "$server" $pids -- group --members "$GROUP_MEMBERS" --online "$GROUP_ONLINE" \
    --senders 5 --first 1001 --rates "$GROUP_RATE" --step-secs "$group_secs" --drain-secs 3 \
    --json "$RESULTS/$server-group.json" >"$RESULTS/$server-group.txt" 2>&1 &
  group_pid=$!
  # Its members log in and join first (about a second for kith; its table
  # comes at the end).
  sleep 15
  chat "$server" "$pids" with-group || log "$server: chat with the group failed"
  wait "$group_pid" || log "$server: the group run failed"
  group_pid=""
  cat "$RESULTS/$server-group.txt"
  stop_current
  sleep 2
done
log "results in $RESULTS"

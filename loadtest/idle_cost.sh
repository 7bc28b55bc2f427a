#!/usr/bin/env bash
# What an idle `channel` process costs: Redis commands per second (from `INFO commandstats`) and
# wake-ups per second of each of its threads (voluntary context switches, from
# /proc/PID/task/*/status), for two builds side by side in the same window, so that the noise of
# a shared machine falls on both alike.
#
#   loadtest/idle_cost.sh BIN_A BIN_B [SECONDS]     # default 60 s, after 5 s of warm-up
#
# Each binary gets a private redis-server on a free 127.0.0.1 port (no persistence) and runs as
# `BIN serve --port P --redis-url redis://127.0.0.1:RP --jwt-secret S` with the defaults
# otherwise (shards = one per core), no client connected. The Redis statistics are reset after
# the warm-up (CONFIG RESETSTAT, not counted); the process counters are read before and after
# the window. Commands run by Lua scripts count in `INFO commandstats` beside the script's own
# EVALSHA, whose time includes theirs.
# Everything is stopped at the end.
set -euo pipefail

A=${1:?usage: idle_cost.sh BIN_A BIN_B [SECONDS]}
B=${2:?usage: idle_cost.sh BIN_A BIN_B [SECONDS]}
SECONDS_IDLE=${3:-60}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

. "$(dirname "$0")/lib.sh"

start() { # name bin -> sets RP_<name>, PID_<name>
  local name=$1 bin=$2 rp port
  rp=$(free_port)
  redis-server --bind 127.0.0.1 --port "$rp" --save '' --appendonly no --daemonize no \
    >"$WORK/redis-$name.log" 2>&1 &
  PIDS+=($!)
  until redis-cli -p "$rp" ping >/dev/null 2>&1; do sleep 0.05; done
  port=$(free_port)
  "$bin" serve --port "$port" --redis-url "redis://127.0.0.1:$rp" --jwt-secret idle-cost-secret-0123456789 \
    >"$WORK/channel-$name.log" 2>&1 &
  local pid=$!
  PIDS+=($pid)
  printf -v "RP_$name" %s "$rp"
  printf -v "PID_$name" %s "$pid"
}

# thread name -> voluntary context switches, one line per thread ("name count").
switches() {
  local pid=$1 t
  for t in /proc/"$pid"/task/*; do
    printf '%s %s\n' "$(tr ' ' _ <"$t/comm")" "$(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status")"
  done | sort
}

start a "$A"
start b "$B"
sleep 5
for name in a b; do
  rp_var=RP_$name; pid_var=PID_$name
  redis-cli -p "${!rp_var}" config resetstat >/dev/null
  switches "${!pid_var}" >"$WORK/before-$name"
done
sleep "$SECONDS_IDLE"
for name in a b; do
  rp_var=RP_$name; pid_var=PID_$name
  switches "${!pid_var}" >"$WORK/after-$name"
  redis-cli -p "${!rp_var}" info commandstats | tr -d '\r' >"$WORK/stats-$name"
done

for name in a b; do
  bin_var=$( [ "$name" = a ] && echo "$A" || echo "$B" )
  echo "== $name: $bin_var, ${SECONDS_IDLE} s idle"
  echo "-- Redis commands (calls, calls/s, usec in Redis; EVALSHA's includes its script's commands)"
  awk -F'[:=,]' -v s="$SECONDS_IDLE" '/^cmdstat_/ && !/^cmdstat_config/ {
      sub("cmdstat_", "", $1); printf "  %-16s %6d  %6.2f/s  %6d us\n", $1, $3, $3 / s, $5
      calls += $3
    } END { printf "  %-16s %6d  %6.2f/s\n", "all", calls, calls / s }' \
    "$WORK/stats-$name"
  echo "-- wake-ups per thread (voluntary context switches, /s)"
  join -a1 -a2 -e 0 -o 0,1.2,2.2 <(awk '{a[$1]+=$2} END {for (k in a) print k, a[k]}' "$WORK/before-$name" | sort) \
    <(awk '{a[$1]+=$2} END {for (k in a) print k, a[k]}' "$WORK/after-$name" | sort) |
    awk -v s="$SECONDS_IDLE" '{ d = $3 - $2; total += d; printf "  %-18s %6d  %6.2f/s\n", $1, d, d / s }
      END { printf "  %-18s %6d  %6.2f/s\n", "all", total, total / s }'
done

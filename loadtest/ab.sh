#!/usr/bin/env bash
# A/B of two `channel` binaries on the same scenarios, alternating A and B RUNS times, each run
# with a fresh private Redis and a fresh server (2 shards), and prints one line per run with the
# figures that decide a before/after question: fan-out deliveries/s, p50/p99 and server CPU per
# delivery; join-storm joins/s and join p99.
#
#   loadtest/ab.sh A_BINARY B_BINARY [RUNS] [LOADTEST_BINARY] > table.txt
#
# Scenarios: `fanout.toml --clients 1000 --rate 100 --duration 5 --no-step` and
# `join-storm.toml --clients 2000`. Everything runs on 127.0.0.1; the Redis port and the server
# port are chosen free; outputs go to $OUT (default a fresh directory under /work/ab-*).
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1
B=$2
RUNS=${3:-3}
LT=${4:-${CARGO_TARGET_DIR:-target}/release/loadtest}
OUT=${OUT:-/work/ab-$(date +%Y%m%d-%H%M%S)}
SECRET=ab-secret-ab-secret-ab-secret-0123
mkdir -p "$OUT"

. "$(dirname "$0")/lib.sh"


one() { # label binary run
  local label=$1 bin=$2 run=$3 rport sport pid dir
  rport=$(free_port); sport=$(free_port)
  redis-server --port "$rport" --save '' --appendonly no --daemonize yes --logfile "$OUT/redis-$rport.log"
  until redis-cli -p "$rport" ping >/dev/null 2>&1; do sleep 0.05; done
  "$bin" serve --port "$sport" --redis-url "redis://127.0.0.1:$rport" --jwt-secret "$SECRET" \
    --shards 2 >"$OUT/server-$label-$run.log" 2>&1 &
  pid=$!
  until curl -sf "http://127.0.0.1:$sport/healthz" >/dev/null 2>&1; do sleep 0.05; done
  local common="--url http://127.0.0.1:$sport --redis redis://127.0.0.1:$rport --server-pid $pid"
  dir=$OUT/$run/$label/fanout
  "$LT" run loadtest/scenarios/fanout.toml $common --out "$dir" --clients 1000 --rate 100 \
    --duration 5 --no-step >/dev/null 2>"$dir.err" || true
  local f=$dir/summary.json
  local fan="$(field "$f" window.deliveries_per_s) $(field "$f" window.latency.p50_ms) $(field "$f" window.latency.p99_ms) $(field "$f" window.server_cpu_us_per_delivery) $(field "$f" window.lost)"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  "$bin" serve --port "$sport" --redis-url "redis://127.0.0.1:$rport" --jwt-secret "$SECRET" \
    --shards 2 >>"$OUT/server-$label-$run.log" 2>&1 &
  pid=$!
  until curl -sf "http://127.0.0.1:$sport/healthz" >/dev/null 2>&1; do sleep 0.05; done
  common="--url http://127.0.0.1:$sport --redis redis://127.0.0.1:$rport --server-pid $pid"
  dir=$OUT/$run/$label/join-storm
  "$LT" run loadtest/scenarios/join-storm.toml $common --out "$dir" --clients 2000 \
    >/dev/null 2>"$dir.err" || true
  f=$dir/summary.json
  local join="$(field "$f" joins_per_s) $(field "$f" join_latency.p99_ms) $(field "$f" join_failures)"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  redis-cli -p "$rport" shutdown nosave >/dev/null 2>&1 || true
  echo "$run $label $fan $join"
}

mkdir -p "$OUT"/{1..9}/{A,B} 2>/dev/null || true
echo "# A=$A"
echo "# B=$B"
echo "# run label fanout_deliveries_per_s p50_ms p99_ms server_us_per_delivery lost joins_per_s join_p99_ms join_failures"
for run in $(seq 1 "$RUNS"); do
  mkdir -p "$OUT/$run/A" "$OUT/$run/B"
  if [ $((run % 2)) = 1 ]; then one A "$A" "$run"; one B "$B" "$run"; else one B "$B" "$run"; one A "$A" "$run"; fi
done

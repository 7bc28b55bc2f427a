#!/usr/bin/env bash
# A/B of join-storm alone, alternating A and B RUNS times, each run with a fresh private Redis
# and a fresh server (2 shards); one line per run. With TOPICS = CLIENTS every join is of a topic
# new to the process (the worst case for joins that wait for their SSUBSCRIBE, issue 14).
#   [SCENARIO=loadtest/scenarios/join-storm-since.toml] loadtest/ab_join.sh A_BINARY B_BINARY RUNS TOPICS CLIENTS LOADTEST_BINARY > table.txt
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1; B=$2; RUNS=$3; TOPICS=$4; CLIENTS=$5; LT=$6
OUT=${OUT:-/work/ab-join-$TOPICS-$(date +%Y%m%d-%H%M%S)}
SECRET=ab-secret-ab-secret-ab-secret-0123
mkdir -p "$OUT"
. "$(dirname "$0")/lib.sh"
one() {
  local label=$1 bin=$2 run=$3 rport sport pid dir
  rport=$(free_port); sport=$(free_port)
  redis-server --port "$rport" --save '' --appendonly no --daemonize yes --logfile "$OUT/redis-$rport.log"
  until redis-cli -p "$rport" ping >/dev/null 2>&1; do sleep 0.05; done
  "$bin" serve --port "$sport" --redis-url "redis://127.0.0.1:$rport" --jwt-secret "$SECRET" --shards 2 >"$OUT/server-$label-$run.log" 2>&1 &
  pid=$!
  until curl -sf "http://127.0.0.1:$sport/healthz" >/dev/null 2>&1; do sleep 0.05; done
  dir=$OUT/$run/$label
  mkdir -p "$dir"
  "$LT" run "${SCENARIO:-loadtest/scenarios/join-storm.toml}" --url "http://127.0.0.1:$sport" --redis "redis://127.0.0.1:$rport" --server-pid $pid --out "$dir" --clients "$CLIENTS" --topics "$TOPICS" >/dev/null 2>"$dir.err" || true
  local f=$dir/summary.json
  echo "$run $label $(field "$f" joins_per_s) $(field "$f" join_latency.p50_ms) $(field "$f" join_latency.p99_ms) $(field "$f" join_failures) $(field "$f" server_cpu_us_per_join)"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  redis-cli -p "$rport" shutdown nosave >/dev/null 2>&1 || true
}
echo "# A=$A B=$B topics=$TOPICS clients=$CLIENTS"
echo "# run label joins_per_s join_p50_ms join_p99_ms join_failures server_us_per_join"
for run in $(seq 1 "$RUNS"); do
  if [ $((run % 2)) = 1 ]; then one A "$A" "$run"; one B "$B" "$run"; else one B "$B" "$run"; one A "$A" "$run"; fi
done

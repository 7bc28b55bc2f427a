#!/usr/bin/env bash
# The cluster scenario (issue 13) side by side: for each run, on a fresh single Redis and on a
# fresh 3-master Redis Cluster (3 masters + 3 replicas, `redis-cli --cluster create`), the
# scenario `loadtest/scenarios/cluster.toml` (4 `channel` processes x 1 shard spawned by loadtest,
# 400 topics, each process serving a quarter) published through the function and through
# classic PUBLISH, alternating; one markdown row per run with the figures of issue 13's bars:
# what each process received against its quarter, the Redis CPU (each master's), delivery,
# latency, server CPU, and the join phase (joins/s: what confirming subscriptions costs).
#
#   loadtest/cluster-ab.sh CHANNEL_BINARY [RUNS] [LOADTEST_BINARY] > table.md
#
# REPLICAS=1 (default) replicas per cluster master; 0 for a cluster of 3 masters alone.
# DEPLOYMENTS="single cluster" (default) or just one of them (`single` runs before the server
# supports clusters); PATHS="function publish" (default); EXTRA="--rate 2000 …" more loadtest
# flags. Everything runs on 127.0.0.1 on free ports; Redis processes are started daemonized with
# pid files under $OUT and stopped after each run (and on exit). Outputs go to $OUT (default a
# fresh directory under /work/cluster-ab-*).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$1
RUNS=${2:-2}
LT=${3:-${CARGO_TARGET_DIR:-target}/release/loadtest}
OUT=${OUT:-/work/cluster-ab-$(date +%Y%m%d-%H%M%S)}
DEPLOYMENTS=${DEPLOYMENTS:-single cluster}
PATHS=${PATHS:-function publish}
EXTRA=${EXTRA:-}
mkdir -p "$OUT"

. "$(dirname "$0")/lib.sh"
trap stop_redis EXIT

# One markdown row from a summary.json.
row() { # run deployment path summary
  python3 - "$@" <<'EOF'
import json, sys
run, dep, path, f = sys.argv[1:5]
try:
    s = json.load(open(f))
except Exception as e:
    print(f"| {run} | {dep} | {path} | failed: {e} |"); sys.exit()
w = s.get("window") or {}
lat = w.get("latency") or {}
def n(v, fmt="{:.0f}"):
    return "-" if v is None else fmt.format(v)
procs = w.get("per_process") or []
ratios = [p.get("ratio_to_own_share") for p in procs if p.get("ratio_to_own_share") is not None]
masters = w.get("per_master") or []
cpus = " · ".join(n(m.get("cpu_percent"), "{:.1f}") for m in masters)
print(f"| {run} | {dep} | {path} | "
      f"{n(min(ratios) if ratios else None, '{:.2f}')}–{n(max(ratios) if ratios else None, '{:.2f}')} | "
      f"{n(w.get('redis_cpu_percent'), '{:.1f}')} | {cpus} | "
      f"{n(w.get('deliveries_per_s'))} | {w.get('lost', '-')} | "
      f"{n(lat.get('p50_ms'), '{:.2f}')} / {n(lat.get('p99_ms'), '{:.1f}')} | "
      f"{n(w.get('server_cpu_us_per_delivery'), '{:.1f}')} | "
      f"{n(s.get('joins_per_s'))} / {n((s.get('join_latency') or {}).get('p99_ms'), '{:.0f}')} |")
EOF
}

echo "| run | Redis | publish | received ÷ own quarter (min–max of 4) | Redis CPU % (sum) | per master % | deliveries/s | lost | p50 / p99 ms | server µs / delivery (4 processes) | joins/s / join p99 ms |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for run in $(seq 1 "$RUNS"); do
  for dep in $DEPLOYMENTS; do
    for path in $PATHS; do
      flags=$(deploy "$dep")
      dir=$OUT/$run/$dep-$path
      mkdir -p "$dir"
      # shellcheck disable=SC2086
      "$LT" run loadtest/scenarios/cluster.toml --spawn "$BIN" $flags --publish "$path" \
        --out "$dir" $EXTRA >"$dir/stdout.json" 2>"$dir/stderr.txt" || true
      row "$run" "$dep" "$path" "$dir/summary.json"
      stop_redis
    done
  done
done

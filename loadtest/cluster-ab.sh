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

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

stop_redis() {
  for f in "$OUT"/redis-*.pid; do
    [ -f "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
}
trap stop_redis EXIT

redis_node() { # port [more redis-server args]
  local port=$1; shift
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --dir "$OUT" --dbfilename "dump-$port.rdb" --logfile "$OUT/redis-$port.log" \
    --pidfile "$OUT/redis-$port.pid" "$@"
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
}

# Prints the loadtest flags that point at a fresh deployment of kind $1.
deploy() {
  case $1 in
    single)
      local p; p=$(free_port)
      redis_node "$p"
      echo "--redis redis://127.0.0.1:$p" ;;
    cluster)
      local ports=() p
      # 3 masters, each with REPLICAS replicas (default 1; 0 isolates what replication costs).
      for _ in $(seq 1 $((3 * (1 + ${REPLICAS:-1})))); do
        p=$(free_port)
        redis_node "$p" --cluster-enabled yes --cluster-config-file "nodes-$p.conf" \
          --cluster-port "$(free_port)" --cluster-node-timeout 1000
        ports+=("127.0.0.1:$p")
      done
      redis-cli --cluster create "${ports[@]}" --cluster-replicas "${REPLICAS:-1}" --cluster-yes \
        >"$OUT/cluster-create-${ports[0]#*:}.log" 2>&1
      for p in "${ports[@]}"; do
        until redis-cli -p "${p#*:}" cluster info | grep -q cluster_state:ok; do sleep 0.05; done
      done
      echo "--redis-cluster $(IFS=,; echo "${ports[*]}")" ;;
    *) echo "unknown deployment $1" >&2; exit 2 ;;
  esac
}

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

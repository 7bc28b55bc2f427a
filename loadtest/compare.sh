#!/usr/bin/env bash
# Reproduces the comparison table of docs/benchmarks.md: every scenario against `channel`
# (1 and 2 shards), the fan-out ceiling (`loadtest ceiling`, fanout/topics only) and Tangram's
# server (if `pip show tangram-core` works), back to back on this machine, RUNS times, medians.
#
#   loadtest/compare.sh [--small] [--runs N] [--out DIR] [--scenarios "fanout topics ..."]
#                       [--servers "channel1 channel2 ceiling tangram"]
#   loadtest/compare.sh --report DIR [--scenarios ...]   # only rebuild DIR/table.md
#
# Full size (the bars of issue 3; long, run it on a quiet machine):
#   fanout 5000 clients x 100 msgs/s · fanout-step 5000 clients · topics 5000 clients / 100 topics
#   x 2000 msgs/s · topics-step 5000 clients / 100 topics · upstream 1000 clients x 20000
#   pushes/s · join-storm 5000 · idle 15000. Tangram's idle alone takes over 10 minutes a run (it
#   joins ~20 clients/s and times many out): leave it out with --servers / --scenarios if needed.
#   Not in the default list, run with --scenarios: topics-step-fine (steps x1.19 from 1000/s) and
#   upstream-step (push rate x1.5 from 20000/s while p99 <= 10 ms).
# --small: fanout 1000 x 100/s for 5 s, topics 500 clients / 50 topics x 500/s for 5 s, one run.
#
# Each (run, server, scenario) gets a fresh server process (RSS and allocator state do not leak
# between scenarios); within a run the servers follow each other, so slow drift on the shared
# machine spreads over all of them. Everything talks over 127.0.0.1 only; a private Redis is
# started on a free port and stopped at the end. Outputs: DIR/<run>/<server>/<scenario>/ (summary,
# hgrm, svg, server log) and DIR/table.md (medians), also printed.
#
# Environment: CARGO_TARGET_DIR (default /work/target-perf), JWT_SECRET, SKIP_BUILD=1.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-perf}
RUNS=3
OUT=${TMPDIR:-/tmp}/channel-compare-$(date +%Y%m%d-%H%M%S)
SMALL=0
SCENARIOS=""
SERVERS="channel1 channel2 ceiling tangram"
REPORT_ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --small) SMALL=1; RUNS=1 ;;
    --runs) RUNS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --scenarios) SCENARIOS=$2; shift ;;
    --servers) SERVERS=$2; shift ;;
    --report) REPORT_ONLY=$2; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ $SMALL = 1 ]; then
  : "${SCENARIOS:=fanout topics}"
else
  : "${SCENARIOS:=fanout fanout-step topics topics-step upstream join-storm idle}"
fi
JWT_SECRET=${JWT_SECRET:-compare-secret-compare-secret-0123}
LT=$CARGO_TARGET_DIR/release/loadtest
CH=$CARGO_TARGET_DIR/release/channel

# Per-scenario overrides: full size, or --small.
args_for() {
  local s=$1
  if [ $SMALL = 1 ]; then
    case $s in
      fanout) echo "--clients 1000 --rate 100 --duration 5 --warmup 2" ;;
      fanout-step) echo "--clients 1000 --duration 5" ;;
      topics) echo "--clients 500 --topics 50 --rate 500 --duration 5 --warmup 2" ;;
      topics-step|topics-step-fine) echo "--clients 500 --topics 50" ;;
      upstream) echo "--clients 500 --rate 5000 --duration 5" ;;
      join-storm) echo "--clients 1000" ;;
      idle) echo "--clients 1000 --duration 3" ;;
    esac
  else
    case $s in
      fanout) echo "--clients 5000 --rate 100 --duration 10" ;;
      fanout-step) echo "--clients 5000" ;;
      topics) echo "--clients 5000 --topics 100 --rate 2000 --duration 10" ;;
      topics-step|topics-step-fine) echo "--clients 5000 --topics 100" ;;
      upstream) echo "--clients 1000 --rate 20000 --duration 10" ;;
      join-storm) echo "--clients 5000 --join-in-flight 200" ;;
      idle) echo "--clients 15000 --duration 10" ;;
    esac
  fi
}

. "$(dirname "$0")/lib.sh"

wait_port() { # port timeout_s
  local i=0
  while ! (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt $(($2 * 10)) ]; then return 1; fi
    sleep 0.1
  done
}

report() { # dir
python3 - "$1" "$SERVERS" "$SCENARIOS" <<'PY' | tee "$1/table.md"
import json, os, statistics, sys
out, servers, scenarios = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
runs = sorted(d for d in os.listdir(out) if d.isdigit())

def load(run, server, sc):
    p = os.path.join(out, run, server, sc, "summary.json")
    try:
        return json.load(open(p))
    except Exception:
        return None

def get(s, path):
    for k in path.split("."):
        if not isinstance(s, dict) or s.get(k) is None:
            return None
        s = s[k]
    return s

def med(server, sc, path):
    vals = [get(load(r, server, sc), path) for r in runs]
    vals = [v for v in vals if isinstance(v, (int, float))]
    return (statistics.median(vals), len(vals)) if vals else (None, 0)

cols = {
    "fanout": [("deliveries/s", "window.deliveries_per_s"), ("loss", "window.loss_ratio"),
               ("p50 ms", "window.latency.p50_ms"), ("p99 ms", "window.latency.p99_ms"),
               ("srv µs/deliv", "window.server_cpu_us_per_delivery"),
               ("load µs/deliv", "window.load_cpu_us_per_delivery"), ("dropped", "window.dropped")],
    "fanout-step": [("highest rate", "highest_sustainable_rate"), ("deliveries/s", "window.deliveries_per_s"),
                    ("p99 ms", "window.latency.p99_ms"), ("srv µs/deliv", "window.server_cpu_us_per_delivery")],
    "upstream": [("pushes/s", "window.deliveries_per_s"), ("loss", "window.loss_ratio"),
                 ("p50 ms", "window.latency.p50_ms"), ("p99 ms", "window.latency.p99_ms"),
                 ("srv µs/push", "window.server_cpu_us_per_delivery")],
    "join-storm": [("joins/s", "joins_per_s"), ("failed", "join_failures"),
                   ("p50 ms", "join_latency.p50_ms"), ("p99 ms", "join_latency.p99_ms"),
                   ("srv µs/join", "server_cpu_us_per_join")],
    "idle": [("joined", "joined"), ("failed", "join_failures"),
             ("RSS B/conn", "rss_per_connection_bytes"),
             ("RSS B/conn at the end", "rss_per_connection_end_bytes"),
             ("idle CPU %", "server_cpu_percent_idle")],
}
cols["topics"] = cols["fanout"]
cols["topics-step"] = cols["fanout-step"]
cols["topics-step-fine"] = cols["fanout-step"]
# What the ratio columns compare: at a fixed rate every server that keeps up delivers the same
# messages/s, so fanout/topics compare server CPU per delivery (server ÷ reference, lower is
# better); the others compare their headline figure (server ÷ reference).
ratio_key = {
    "fanout": ("srv CPU/deliv", "window.server_cpu_us_per_delivery"),
    "topics": ("srv CPU/deliv", "window.server_cpu_us_per_delivery"),
    "fanout-step": ("highest rate", "highest_sustainable_rate"),
    "topics-step": ("highest rate", "highest_sustainable_rate"),
    "topics-step-fine": ("highest rate", "highest_sustainable_rate"),
    "upstream": ("p99", "window.latency.p99_ms"),
    "join-storm": ("joins/s", "joins_per_s"),
    "idle": ("RSS/conn", "rss_per_connection_bytes"),
}

def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) < 10 and v != int(v):
        return f"{v:.3g}"
    return f"{v:,.0f}"

print(f"Medians of {len(runs)} run(s) per cell; ratio columns divide this server's median by the ceiling's / Tangram's.\n")
for sc in scenarios:
    c = cols.get(sc, cols["fanout"])
    print(f"### {sc}\n")
    rname, key = ratio_key.get(sc, (c[0][0], c[0][1]))
    print("| server | " + " | ".join(n for n, _ in c) + f" | {rname} ÷ ceiling | {rname} ÷ Tangram | runs |")
    print("|---" * (len(c) + 4) + "|")
    ceil = med("ceiling", sc, key)[0]
    tang = med("tangram", sc, key)[0]
    for server in servers:
        vals = [med(server, sc, p) for _, p in c]
        n = max(v[1] for v in vals)
        if n == 0:
            continue
        head = med(server, sc, key)[0]
        rc = f"{head / ceil:.2f}" if head is not None and ceil else "–"
        rt = f"{head / tang:.2f}" if head is not None and tang else "–"
        print(f"| {server} | " + " | ".join(fmt(v) for v, _ in vals) + f" | {rc} | {rt} | {n} |")
    print()
PY
}

if [ -n "$REPORT_ONLY" ]; then
  report "$REPORT_ONLY"
  exit 0
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -p channel -p loadtest >&2
fi
have_tangram=0
if pip show tangram-core >/dev/null 2>&1; then have_tangram=1; fi

mkdir -p "$OUT"
RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
  --pidfile "$OUT/redis.pid" --logfile "$OUT/redis.log" >/dev/null
REDIS=redis://127.0.0.1:$RP
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
  if [ -f "$OUT/redis.pid" ]; then kill "$(cat "$OUT/redis.pid")" 2>/dev/null || true; fi
}
trap cleanup EXIT
wait_port "$RP" 10

start_server() { # name port log → sets SERVER_PID
  local name=$1 port=$2 log=$3
  case $name in
    channel1) "$CH" serve --port "$port" --redis-url "$REDIS" --jwt-secret "$JWT_SECRET" --shards 1 >"$log" 2>&1 & ;;
    channel2) "$CH" serve --port "$port" --redis-url "$REDIS" --jwt-secret "$JWT_SECRET" --shards 2 >"$log" 2>&1 & ;;
    ceiling) "$LT" ceiling --port "$port" --redis "$REDIS" >"$log" 2>&1 & ;;
    tangram) python3 "$ROOT/loadtest/tangram_server.py" --port "$port" --redis-url "$REDIS" \
               --jwt-secret "$JWT_SECRET" >"$log" 2>&1 & ;;
  esac
  SERVER_PID=$!
  if ! wait_port "$port" 30; then
    echo "$name did not listen on $port; log:" >&2; cat "$log" >&2; return 1
  fi
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; runs=$RUNS small=$SMALL" | tee "$OUT/commands.txt"
for run in $(seq 1 "$RUNS"); do
  for server in $SERVERS; do
    if [ $server = tangram ] && [ $have_tangram = 0 ]; then continue; fi
    for s in $SCENARIOS; do
      case $s in fanout|fanout-step|topics|topics-step|topics-step-fine) ;; *) if [ $server = ceiling ]; then continue; fi ;; esac
      dir=$OUT/$run/$server/$s
      mkdir -p "$dir"
      port=$(free_port)
      start_server $server "$port" "$dir/server.log"
      cmd="$LT run $ROOT/loadtest/scenarios/$s.toml --url http://127.0.0.1:$port --redis $REDIS --server-pid $SERVER_PID --out $dir $(args_for $s)"
      echo "[$run/$RUNS] $server $s: $cmd" | tee -a "$OUT/commands.txt" >&2
      # A failed run (e.g. Tangram dropping every client) is recorded, not fatal.
      $cmd >/dev/null 2>"$dir/loadtest.log" || echo "  (loadtest exited with $?; see $dir/loadtest.log)" >&2
      tail -n 3 "$dir/loadtest.log" | sed 's/^/  /' >&2
      stop_server
    done
  done
done

report "$OUT"
echo "outputs in $OUT" >&2

#!/usr/bin/env bash
# CPU of idle Redis processes over 30 s: a single Redis against each node of a 3+3 cluster
# (the deployments of loadtest/cluster-ab.sh, from lib.sh), to isolate what the cluster itself
# costs a node.
#
#   loadtest/idle_redis_cpu.sh    # prints: port role CPU%
set -euo pipefail
. "$(dirname "$0")/lib.sh"
OUT=${OUT:-/work/idle-redis-cpu-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
trap stop_redis EXIT
single=$(deploy single)
cluster=$(deploy cluster)
ports="${single##*:} $(echo "${cluster#--redis-cluster }" | tr ',' '\n' | sed 's/.*://' | tr '\n' ' ')"
sleep 5
cpu() { redis-cli -p "$1" info cpu | awk -F: '/used_cpu_sys:|used_cpu_user:/{s+=$2} END{printf "%.4f", s}'; }
declare -A before
for p in $ports; do before[$p]=$(cpu "$p"); done
sleep 30
for p in $ports; do
  role=$(redis-cli -p "$p" role | head -1)
  [ "$p" = "${single##*:}" ] && role=single
  python3 -c "print('$p', '$role', '%.3f %%' % ((float('$(cpu "$p")')-float('${before[$p]}'))/30*100))"
done

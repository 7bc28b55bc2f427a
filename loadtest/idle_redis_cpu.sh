#!/usr/bin/env bash
# CPU of idle Redis processes over 30 s: a single Redis against each node of a 3+3 cluster
# (same flags as loadtest/cluster-ab.sh), to isolate what the cluster itself costs a node.
#
#   loadtest/idle_redis_cpu.sh    # prints: port role CPU%
set -euo pipefail
OUT=${OUT:-/work/idle-redis-cpu-$(date +%Y%m%d-%H%M%S)}; mkdir -p "$OUT"
fp() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
node() { local p=$1; shift; redis-server --port $p --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --dir $OUT --dbfilename dump-$p.rdb --logfile $OUT/r-$p.log --pidfile $OUT/r-$p.pid "$@"; until redis-cli -p $p ping >/dev/null 2>&1; do sleep 0.05; done; }
trap 'for f in $OUT/*.pid; do kill $(cat $f) 2>/dev/null || true; done' EXIT
S=$(fp); node $S
ports=()
for i in 1 2 3 4 5 6; do p=$(fp); node $p --cluster-enabled yes --cluster-config-file nodes-$p.conf --cluster-port $(fp) --cluster-node-timeout 1000; ports+=(127.0.0.1:$p); done
redis-cli --cluster create "${ports[@]}" --cluster-replicas 1 --cluster-yes > $OUT/create.log 2>&1
for p in "${ports[@]}"; do until redis-cli -p ${p#*:} cluster info | grep -q cluster_state:ok; do sleep 0.05; done; done
sleep 5
cpu() { redis-cli -p $1 info cpu | awk -F: '/used_cpu_sys:|used_cpu_user:/{s+=$2} END{printf "%.4f", s}'; }
all="$S ${ports[*]//127.0.0.1:/}"
declare -A a; for p in $all; do a[$p]=$(cpu $p); done
sleep 30
for p in $all; do b=$(cpu $p); role=$( [ $p = $S ] && echo single || redis-cli -p $p role | head -1); python3 -c "print('$p', '$role', '%.3f %%' % ((float('$b')-float('${a[$p]}'))/30*100))"; done

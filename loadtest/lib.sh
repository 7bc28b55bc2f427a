# Shared by the loadtest/*.sh scripts (sourced, not run): free ports, reading summary.json
# fields, and throw-away Redis deployments (a single Redis or a 3-master cluster) whose
# processes live under $OUT and are stopped by stop_redis.

# A port on 127.0.0.1 that was free a moment ago.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# field FILE a.b.c: that field of a JSON file, or `-`.
field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); v=d
for k in sys.argv[2].split('.'):
    v=v.get(k) if isinstance(v,dict) else None
print(v if v is not None else '-')" "$1" "$2"; }

# Stops every Redis started by redis_node under $OUT.
stop_redis() {
  for f in "$OUT"/redis-*.pid; do
    [ -f "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
}

# redis_node PORT [more redis-server args]: a daemonized redis-server without persistence,
# logging and keeping its pid under $OUT; returns once it answers PING.
redis_node() {
  local port=$1; shift
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --dir "$OUT" --dbfilename "dump-$port.rdb" --logfile "$OUT/redis-$port.log" \
    --pidfile "$OUT/redis-$port.pid" "$@"
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
}

# deploy single|cluster: starts a fresh deployment and prints the loadtest flags that point
# at it. A cluster has 3 masters with REPLICAS replicas each (default 1; 0 isolates what
# replication costs), `cluster-node-timeout 1000`.
deploy() {
  case $1 in
    single)
      local p; p=$(free_port)
      redis_node "$p"
      echo "--redis redis://127.0.0.1:$p" ;;
    cluster)
      local ports=() p
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

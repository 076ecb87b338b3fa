# Sourced by the measurement scripts (bench-cluster.sh, idle-cpu.sh, profile-writes.sh): starts a
# local 3-node cluster on 127.0.0.1 and stops it by pid when the calling script exits.
#
#   start_local_cluster BIN PORT SHARDS   starts the nodes (extra node flags: RINGKV_NODE_FLAGS),
#                                         sets `endpoints`, `pids` and `base` (data dirs, logs)
#   wait_for_leaders BIN                  until every shard and the metadata group have a leader
#                                         (`ringkv wait-ready`, at most 120 s)

start_local_cluster() {
  local bin="$1" port="$2" shards="$3" i
  base="$(mktemp -d /tmp/ringkv-local.XXXXXX)"
  local addrs=("127.0.0.1:$port" "127.0.0.1:$((port + 1))" "127.0.0.1:$((port + 2))")
  local peers="1=${addrs[0]},2=${addrs[1]},3=${addrs[2]}"
  endpoints="${addrs[0]},${addrs[1]},${addrs[2]}"
  pids=()
  trap stop_local_cluster EXIT INT TERM
  for i in 1 2 3; do
    # shellcheck disable=SC2086
    "$bin/ringkv" start --node-id "$i" --listen "${addrs[$((i - 1))]}" --data-dir "$base/node-$i" \
      --peers "$peers" --shards "$shards" --replication 3 ${RINGKV_NODE_FLAGS:-} >"$base/node-$i.log" 2>&1 &
    pids+=($!)
  done
}

stop_local_cluster() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$base"
}

wait_for_leaders() {
  local bin="$1" pid
  if ! "$bin/ringkv" --endpoints "$endpoints" --timeout-ms 5000 wait-ready --timeout 120; then
    for pid in "${pids[@]:0:3}"; do
      kill -0 "$pid" 2>/dev/null || echo "node with pid $pid exited" >&2
    done
    tail -n 5 "$base"/node-*.log >&2
    exit 1
  fi
}

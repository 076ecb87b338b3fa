#!/usr/bin/env bash
# Runs ringkv-bench against a fresh local 3-node cluster and stops it: starts three nodes on
# 127.0.0.1 (SHARDS shards x 3 replicas, default 16), waits until every shard has a leader, runs
# each workload given (one ringkv-bench argument string per workload, in order), and stops the
# nodes by pid. This is how the README's Performance figures are measured.
#
# Usage: scripts/bench-cluster.sh "ARGS" ["ARGS" ...]
#   e.g. scripts/bench-cluster.sh "--workload write --concurrency 256 --duration 8" \
#                                 "--workload ycsb-b --concurrency 256 --duration 8"
# Environment: RINGKV_SHARDS (default 16); RINGKV_BIN, the directory of the binaries (default
# ~/.cache/ringkv-target/release: cargo build --release -p ringkv-server -p ringkv-bench);
# RINGKV_BENCH_PORT, the first port (default 7579); RINGKV_NODE_FLAGS, extra flags for every node.
set -euo pipefail
shards="${RINGKV_SHARDS:-16}"
bin="${RINGKV_BIN:-$HOME/.cache/ringkv-target/release}"
[ $# -gt 0 ] || { echo "usage: $0 \"BENCH ARGS\" [\"BENCH ARGS\" ...]" >&2; exit 2; }
[ -x "$bin/ringkv" ] && [ -x "$bin/ringkv-bench" ] || { echo "error: ringkv and ringkv-bench not found in $bin" >&2; exit 1; }

port="${RINGKV_BENCH_PORT:-7579}"
base="$(mktemp -d /tmp/ringkv-bench.XXXXXX)"
addrs=("127.0.0.1:$port" "127.0.0.1:$((port + 1))" "127.0.0.1:$((port + 2))")
peers="1=${addrs[0]},2=${addrs[1]},3=${addrs[2]}"
endpoints="${addrs[0]},${addrs[1]},${addrs[2]}"
pids=()
stop() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$base"
}
trap stop EXIT INT TERM

for i in 1 2 3; do
  # shellcheck disable=SC2086
  "$bin/ringkv" start --node-id "$i" --listen "${addrs[$((i - 1))]}" --data-dir "$base/node-$i" \
    --peers "$peers" --shards "$shards" --replication 3 ${RINGKV_NODE_FLAGS:-} >"$base/node-$i.log" 2>&1 &
  pids+=($!)
done
ready=""
for _ in $(seq 1 240); do
  if status=$("$bin/ringkv" --endpoints "$endpoints" --timeout-ms 5000 status --output json 2>/dev/null) \
     && [ "$(grep -c '"shard_id"' <<<"$status")" = "$shards" ] && ! grep -q '"leader": null' <<<"$status"; then
    ready=yes
    break
  fi
  sleep 0.5
done
[ -n "$ready" ] || { echo "error: shards still without a leader after 120 s" >&2; tail -n 5 "$base"/node-*.log >&2; exit 1; }
# The leader balancer hands leaderships back to their preferred nodes within a few seconds.
sleep 4
for args in "$@"; do
  echo "== ringkv-bench $args"
  # shellcheck disable=SC2086
  "$bin/ringkv-bench" --endpoints "$endpoints" $args
done

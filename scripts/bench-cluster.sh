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
# shellcheck source=scripts/local-cluster.sh
source "$(dirname "$0")/local-cluster.sh"
start_local_cluster "$bin" "$port" "$shards"
wait_for_leaders "$bin"
# The leader balancer hands leaderships back to their preferred nodes within a few seconds.
sleep 4
for args in "$@"; do
  echo "== ringkv-bench $args"
  # shellcheck disable=SC2086
  "$bin/ringkv-bench" --endpoints "$endpoints" $args
done

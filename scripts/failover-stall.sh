#!/usr/bin/env bash
# Measures how long writes stall when a node is SIGKILLed: starts a local 3-node cluster (16
# shards x 3), runs `ringkv-bench --workload write --concurrency 32` for 16 s, SIGKILLs node 1 (which
# leads a third of the shards) 8 s in, and prints the per-second progress and the final latency
# line: the seconds with (almost) no writes and the max latency are the stall.
#
# Usage: scripts/failover-stall.sh   (RINGKV_BIN: directory of the release binaries, default
# ~/.cache/ringkv-target/release; RINGKV_NODE_FLAGS: extra flags for every node, e.g. --config F)
set -euo pipefail
bin="${RINGKV_BIN:-$HOME/.cache/ringkv-target/release}"
# shellcheck source=scripts/local-cluster.sh
source "$(dirname "$0")/local-cluster.sh"
start_local_cluster "$bin" 7979 16
wait_for_leaders "$bin"
# The leader balancer hands leaderships back to their preferred nodes within a few seconds.
sleep 4
"$bin/ringkv-bench" --endpoints "$endpoints" --workload write --concurrency 32 --duration 16 \
  --progress-interval 1 >"$base/bench.txt" 2>&1 &
bench=$!
pids+=($bench)
sleep 8
kill -KILL "${pids[0]}"
wait "$bench" || true
grep -E "^\[|^op |^write" "$base/bench.txt"

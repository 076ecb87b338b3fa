#!/usr/bin/env bash
# Profiles the write path: starts a local 3-node cluster (16 shards x 3 unless RINGKV_SHARDS), runs `ringkv-bench
# --workload write --concurrency 256`, records the three node processes with `perf` (DWARF call
# graphs) for a few seconds in the middle of the run, and writes a flame graph SVG of where the
# nodes' CPU goes, with the folded stacks beside it (OUT.folded) for grep and sums. Needs perf (apt-get install linux-perf) and inferno (cargo install inferno).
#
# Usage: scripts/profile-writes.sh OUT.svg   (RINGKV_BIN: directory of the release binaries,
# default ~/.cache/ringkv-target/release; RINGKV_PROFILE_SECONDS: recording time, default 6;
# RINGKV_SHARDS: shards in the cluster, default 16)
set -euo pipefail
out="${1:?usage: $0 OUT.svg}"
bin="${RINGKV_BIN:-$HOME/.cache/ringkv-target/release}"
seconds="${RINGKV_PROFILE_SECONDS:-6}"
shards="${RINGKV_SHARDS:-16}"
command -v perf >/dev/null || { echo "error: perf not found: apt-get install linux-perf" >&2; exit 1; }
command -v inferno-flamegraph >/dev/null || { echo "error: inferno not found: cargo install inferno" >&2; exit 1; }

# shellcheck source=scripts/local-cluster.sh
source "$(dirname "$0")/local-cluster.sh"
start_local_cluster "$bin" 7679 "$shards"
wait_for_leaders "$bin"
# The leader balancer hands leaderships back to their preferred nodes within a few seconds.
sleep 4
"$bin/ringkv-bench" --endpoints "$endpoints" --workload write --concurrency 256 \
  --duration $((seconds + 8)) >"$base/bench.txt" 2>&1 &
bench=$!
pids+=($bench)
sleep 5
node_pids="${pids[0]},${pids[1]},${pids[2]}"
perf record -o "$base/perf.data" -F 199 --call-graph dwarf,16384 -p "$node_pids" -- sleep "$seconds" \
  >/dev/null 2>&1
wait "$bench" || true
grep -E "^ops:" "$base/bench.txt" || true
perf script -i "$base/perf.data" 2>/dev/null | inferno-collapse-perf >"${out%.svg}.folded"
inferno-flamegraph --title "ringkv nodes, writes at concurrency 256 ($shards shards x 3)" \
  <"${out%.svg}.folded" >"$out"
echo "wrote $out and its folded stacks ${out%.svg}.folded"

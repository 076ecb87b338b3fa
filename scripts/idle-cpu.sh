#!/usr/bin/env bash
# Measures what an idle cluster costs: starts three nodes on 127.0.0.1 with SHARDS shards × 3
# replicas (default 1024), waits until every shard has a leader, lets it settle, then samples each
# node's CPU time (utime + stime from /proc/PID/stat) and resident memory over SECONDS (default 20)
# with no client at all. Prints one line per node and stops the nodes (by pid) on exit.
#
# Usage: scripts/idle-cpu.sh [SHARDS] [SECONDS]   (RINGKV_BIN: directory of the built binaries,
# default ~/.cache/ringkv-target/release; RINGKV_IDLE_PORT: first port, default 7479; extra node
# flags in RINGKV_NODE_FLAGS)
set -euo pipefail
shards="${1:-1024}"
seconds="${2:-20}"
bin="${RINGKV_BIN:-$HOME/.cache/ringkv-target/release}"
port="${RINGKV_IDLE_PORT:-7479}"
[ -x "$bin/ringkv" ] || { echo "error: $bin/ringkv not found: build with cargo build --release -p ringkv-server" >&2; exit 1; }

# shellcheck source=scripts/local-cluster.sh
source "$(dirname "$0")/local-cluster.sh"
start_local_cluster "$bin" "$port" "$shards"
wait_for_leaders "$bin"
# Let elections, the leader balancer and any quiescence settle.
sleep 10

ticks=$(getconf CLK_TCK)
cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
declare -A before
for pid in "${pids[@]}"; do before[$pid]=$(cpu "$pid"); done
sleep "$seconds"
echo "idle cluster: $shards shards x 3 replicas on 3 nodes, ${seconds}s sample"
"$bin/ringkv" --endpoints "$endpoints" --timeout-ms 5000 status --output json 2>/dev/null \
  | grep -o '"quiet_replicas": *[0-9]*' | tr -d ' ' | sed 's/^/  /' || true
for i in 0 1 2; do
  pid=${pids[$i]}
  used=$(( $(cpu "$pid") - before[$pid] ))
  rss_kb=$(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")
  awk -v n=$((i + 1)) -v u="$used" -v t="$ticks" -v s="$seconds" -v r="$rss_kb" \
    'BEGIN { printf "node %d: %.1f%% of one core, %d MiB resident\n", n, 100 * u / t / s, r / 1024 }'
done

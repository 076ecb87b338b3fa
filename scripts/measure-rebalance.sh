#!/usr/bin/env bash
# Measures a rebalance under load (README "Growing and shrinking a cluster"): a fresh local 3-node
# cluster (16 shards x 3 replicas) is loaded with DATA_MIB of 16 KiB values, then ringkv-bench runs a
# mixed load at concurrency 32 (100-byte values on the first FG_KEYS keys, so most of the loaded
# data stays as it is and moves) while, after BEFORE seconds, two nodes join; the controller moves replicas
# to them until the cluster is balanced. Prints ringkv-bench's progress lines (ops/s and p99 each
# second), when the nodes joined and when the cluster was balanced, and throughput and latency
# percentiles over every operation before, during and after the rebalance: the script marks the
# join and the balance with SIGUSR1 to ringkv-bench, which reports each phase. The rebalance ends
# at the first poll (every second) that sees five nodes, no move in progress and replica counts per
# node within one of each other. Stops every node it started, by pid.
#
# Usage: scripts/measure-rebalance.sh
# Environment: RINGKV_BIN (default ~/.cache/ringkv-target/release: cargo build --release -p
# ringkv-server -p ringkv-bench); DATA_MIB (default 1024); FG_KEYS (default 8192); BEFORE (seconds,
# default 30); DURATION (seconds of load, default 260); RINGKV_NODE_FLAGS (extra flags for every node, e.g.
# "--snapshot-rate-bytes-per-sec 0" to measure without the throttle).
set -euo pipefail
bin="${RINGKV_BIN:-$HOME/.cache/ringkv-target/release}"
data_mib="${DATA_MIB:-1024}"
before="${BEFORE:-30}"
duration="${DURATION:-260}"
fg_keys="${FG_KEYS:-8192}"
[ -x "$bin/ringkv" ] && [ -x "$bin/ringkv-bench" ] || { echo "error: ringkv and ringkv-bench not found in $bin" >&2; exit 1; }

port=7679
# shellcheck source=scripts/local-cluster.sh
source "$(dirname "$0")/local-cluster.sh"
start_local_cluster "$bin" "$port" 16
wait_for_leaders "$bin"
sleep 4

# The data that moves: DATA_MIB of 16 KiB values.
keys=$((data_mib * 64))
echo "== loading $data_mib MiB: $keys keys of 16 KiB (the preload of a one-second read run)"
loaded_at=$(date +%s)
"$bin/ringkv-bench" --endpoints "$endpoints" --workload read --keys "$keys" --value-size 16384 \
  --concurrency 32 --duration 1 --progress-interval 0 >/dev/null
echo "loaded in $(( $(date +%s) - loaded_at )) s"
"$bin/ringkv" --endpoints "$endpoints" node list

echo "== mixed load, concurrency 32, for $duration s; two nodes join after $before s"
"$bin/ringkv-bench" --endpoints "$endpoints" --workload mixed --keys "$fg_keys" --value-size 100 \
  --preload false --concurrency 32 --duration "$duration" --progress-interval 1 \
  2>"$base/progress.log" >"$base/report.txt" &
bench=$!
sleep "$before"
started=$(date +%s.%N)
kill -USR1 "$bench"  # phase 2: the rebalance
for n in 4 5; do
  # shellcheck disable=SC2086
  "$bin/ringkv" start --join "${endpoints%%,*}" --node-id "$n" --listen "127.0.0.1:$((port + n - 1))" \
    --data-dir "$base/node-$n" ${RINGKV_NODE_FLAGS:-} >"$base/node-$n.log" 2>&1 &
  pids+=($!)
done
echo "nodes 4 and 5 started at +${before} s"
# Settled: node 5 in the map, no move in progress, and the map unchanged for 15 s (the controller
# has nothing left to do); the rebalance ended at the map's last change.
# Balanced: five nodes up, no move in progress, replicas placed per node within one of each other.
balanced() {
  local status
  status=$("$bin/ringkv" --endpoints "$endpoints" --timeout-ms 5000 status 2>/dev/null) || return 1
  grep -q 'MOVES IN PROGRESS' <<<"$status" && return 1
  "$bin/ringkv" --endpoints "$endpoints" --timeout-ms 5000 node list --output json 2>/dev/null | python3 -c '
import json, sys
nodes = [n for n in json.load(sys.stdin)["nodes"] if n["state"] == "up"]
placed = [n["replicas_placed"] for n in nodes]
sys.exit(0 if len(nodes) == 5 and max(placed) - min(placed) <= 1 else 1)'
}
settled=""
while kill -0 "$bench" 2>/dev/null; do
  if balanced; then
    settled=$(date +%s.%N)
    kill -USR1 "$bench"  # phase 3: after
    break
  fi
  sleep 1
done
wait "$bench"
if [ -z "$settled" ]; then
  echo "error: the rebalance did not finish within the load's $duration s" >&2
  cat "$base/progress.log"
  exit 1
fi
took=$(echo "$settled - $started" | bc)
end=$(echo "$before + $took" | bc)
# The controller must have nothing left to do once balanced: the map stays as it is.
epoch_then=$("$bin/ringkv" --endpoints "$endpoints" status | head -n 1 | grep -o 'epoch [0-9]*')
sleep 15
epoch_later=$("$bin/ringkv" --endpoints "$endpoints" status | head -n 1 | grep -o 'epoch [0-9]*')
[ "$epoch_then" = "$epoch_later" ] || echo "note: the map changed after the balance ($epoch_then -> $epoch_later): leader moves or late decisions"

moved=$("$bin/ringkv" --endpoints "$endpoints" status --output json | grep -c '"text": "begin moving' || true)
# (the map keeps its last 100 decisions: enough for this run's moves)
# Each shard holds a sixteenth of the loaded keys that the load does not overwrite.
echo "== rebalance: $moved replica moves (about $((moved * (keys - fg_keys) / 64 / 16)) MiB of 16 KiB values) in $took s"
"$bin/ringkv" --endpoints "$endpoints" node list
cat "$base/progress.log"
cat "$base/report.txt"
# Progress lines: "[  12.0s] N ops, X ops/s, p50 A ms, p99 B ms, E errors"
awk -v before="$before" -v end="$end" '
  /ops\/s/ {
    t = $0; sub(/^\[ */, "", t); sub(/s\].*/, "", t); t += 0
    rate = $0; sub(/.* ops, /, "", rate); sub(/ ops\/s.*/, "", rate)
    q = $0; sub(/.*p99 /, "", q); sub(/ ms.*/, "", q)
    phase = (t <= before) ? "before" : (t <= end ? "during" : "after")
    n[phase]++; ops[phase] += rate; p99[phase, n[phase]] = q + 0
  }
  END {
    split("before during after", phases, " ")
    for (i = 1; i <= 3; i++) {
      ph = phases[i]; if (!n[ph]) continue
      # the median of the per-second p99s, and the worst
      m = n[ph]; for (j = 1; j <= m; j++) v[j] = p99[ph, j]
      for (a = 1; a <= m; a++) for (b = a + 1; b <= m; b++) if (v[b] < v[a]) { x = v[a]; v[a] = v[b]; v[b] = x }
      printf "%-7s %4d s  %7.0f ops/s  p99 median %6.2f ms  worst %6.2f ms\n", ph, m, ops[ph] / m, v[int((m + 1) / 2)], v[m]
    }
  }' "$base/progress.log"

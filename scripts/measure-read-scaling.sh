#!/usr/bin/env bash
# Measures read scaling with read replicas (README "Read replicas"): a fresh local cluster of 3
# voter nodes (16 shards x 3 replicas) and 2 read-replica nodes (`--role read-replica`: a learner
# of every shard each). ringkv-bench preloads KEYS keys, then runs a read-only load for DURATION
# seconds at concurrency 32 at each consistency level (linearizable at the leaders; replica and
# eventual spread over all five replicas of each shard). For each run it prints the bench's
# throughput and p99, and the CPU time the three voter nodes (which hold every leader) and the two
# read-replica nodes spent during the run, per read (utime + stime from /proc/PID/stat).
#
# Then write latency with a read-replica node stopped (SIGSTOP: a hung, slow replica) and killed,
# against with both alive: a write-only load of DURATION seconds each.
#
# Usage: scripts/measure-read-scaling.sh
# Environment: RINGKV_BIN (default ~/.cache/ringkv-target/release: cargo build --release -p
# ringkv-server -p ringkv-bench); KEYS (default 10000); DURATION (seconds per run, default 20).
set -euo pipefail
bin="${RINGKV_BIN:-$HOME/.cache/ringkv-target/release}"
keys="${KEYS:-10000}"
duration="${DURATION:-20}"
[ -x "$bin/ringkv" ] && [ -x "$bin/ringkv-bench" ] || { echo "error: ringkv and ringkv-bench not found in $bin" >&2; exit 1; }

port=7779
# shellcheck source=scripts/local-cluster.sh
source "$(dirname "$0")/local-cluster.sh"
start_local_cluster "$bin" "$port" 16
wait_for_leaders "$bin"
for n in 4 5; do
  "$bin/ringkv" start --join "${endpoints%%,*}" --node-id "$n" --role read-replica \
    --listen "127.0.0.1:$((port + n - 1))" --data-dir "$base/node-$n" >"$base/node-$n.log" 2>&1 &
  pids+=($!)
done
all_endpoints="$endpoints,127.0.0.1:$((port + 3)),127.0.0.1:$((port + 4))"

# Placed: every data shard lists read replicas on nodes 4 and 5, and no move is in progress.
placed() {
  "$bin/ringkv" --endpoints "$endpoints" --timeout-ms 5000 status --output json 2>/dev/null | python3 -c '
import json, sys
report = json.load(sys.stdin)
shards = [s for s in report["shards"] if s["shard_id"] != "meta"]
ok = all(sorted(r["node_id"] for r in s["read_replicas"]) == [4, 5] for s in shards)
sys.exit(0 if ok and not report.get("moves") else 1)'
}
for _ in $(seq 1 240); do placed && break; sleep 0.5; done
placed || { echo "error: read replicas not placed within 120 s" >&2; exit 1; }
echo "== 3 voter nodes + 2 read-replica nodes, read replicas placed"

# CPU seconds (user + system) of the given pids, summed.
cpu_seconds() {
  local total=0 pid ticks
  for pid in "$@"; do
    ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    total=$((total + ticks))
  done
  python3 -c "print($total / $(getconf CLK_TCK))"
}
voters=("${pids[@]:0:3}")
replicas=("${pids[@]:3:2}")

"$bin/ringkv-bench" --endpoints "$all_endpoints" --workload write --keys "$keys" --concurrency 32 \
  --duration 1 --progress-interval 0 >/dev/null
sleep 2
printf '%-14s %10s %9s %9s %22s %24s\n' level "reads/s" "p50 ms" "p99 ms" "voter CPU µs per read" "replica CPU µs per read"
for level in linearizable replica eventual; do
  v0=$(cpu_seconds "${voters[@]}"); r0=$(cpu_seconds "${replicas[@]}")
  "$bin/ringkv-bench" --endpoints "$all_endpoints" --workload read --keys "$keys" --preload false \
    --concurrency 32 --duration "$duration" --consistency "$level" --replica spread \
    --progress-interval 0 --output json >"$base/read-$level.json"
  v1=$(cpu_seconds "${voters[@]}"); r1=$(cpu_seconds "${replicas[@]}")
  python3 - "$base/read-$level.json" "$level" "$v0" "$v1" "$r0" "$r1" <<'EOF'
import json, sys
path, level, v0, v1, r0, r1 = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
report = json.load(open(path))
reads = report["latency"]["read"]
count = max(reads["count"], 1)
print(f'{level:<14} {reads["ops_per_sec"]:>10.0f} {reads["p50_us"] / 1000:>9.2f} {reads["p99_us"] / 1000:>9.2f}'
      f' {(v1 - v0) * 1e6 / count:>22.1f} {(r1 - r0) * 1e6 / count:>24.1f}'
      f'   (errors {report["errors"]})')
EOF
done

echo "== write latency (write-only, concurrency 32, $duration s each) with the read replicas ..."
write_run() {
  "$bin/ringkv-bench" --endpoints "$endpoints" --workload write --keys "$keys" --preload false \
    --concurrency 32 --duration "$duration" --progress-interval 0 --output json | python3 -c '
import json, sys
report = json.load(sys.stdin)
w = report["latency"]["write"]
print("  %-28s %8.0f writes/s  p50 %.2f ms  p99 %.2f ms  errors %d" % (sys.argv[1], w["ops_per_sec"], w["p50_us"] / 1000, w["p99_us"] / 1000, report["errors"]))' "$1"
}
write_run "both alive"
kill -STOP "${replicas[1]}"
write_run "node 5 stopped (SIGSTOP)"
kill -CONT "${replicas[1]}"
kill -KILL "${replicas[1]}"
write_run "node 5 killed"

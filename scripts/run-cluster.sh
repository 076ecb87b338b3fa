#!/usr/bin/env bash
# Builds ringkv (release), starts a local 3-node cluster on 127.0.0.1 (16 shards, 3 replicas each),
# waits until every shard has a leader, runs a short mixed workload, and keeps the cluster running
# until Ctrl-C, which stops all three nodes.
#
# Environment: RINGKV_DEMO_DIR (data dirs; default a new temp dir), RINGKV_DEMO_PORT (first port,
# default 7379), RINGKV_DEMO_SECONDS (workload duration, default 10), RINGKV_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
export CARGO_TARGET_DIR="${RINGKV_TARGET_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/ringkv-target}}"
echo "building ringkv (release; the first build compiles RocksDB and takes about 15 minutes on 2 cores)..."
cargo build --release --locked -p ringkv-server -p ringkv-bench --bins
bin="$CARGO_TARGET_DIR/release"

base="${RINGKV_DEMO_DIR:-$(mktemp -d /tmp/ringkv-demo.XXXXXX)}"
port="${RINGKV_DEMO_PORT:-7379}"
addrs=("127.0.0.1:$port" "127.0.0.1:$((port + 1))" "127.0.0.1:$((port + 2))")
peers="1=${addrs[0]},2=${addrs[1]},3=${addrs[2]}"
endpoints="${addrs[0]},${addrs[1]},${addrs[2]}"

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping nodes (pids ${pids[*]:-none})..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "stopped. data is kept in $base"
}
trap stop INT TERM EXIT

for i in 1 2 3; do
  mkdir -p "$base/node-$i"
  "$bin/ringkv" start --node-id "$i" --listen "${addrs[$((i - 1))]}" --data-dir "$base/node-$i" \
    --peers "$peers" --shards 16 --replication 3 >"$base/node-$i.log" 2>&1 &
  pids+=($!)
  echo "node $i: pid $!, address ${addrs[$((i - 1))]}, data dir $base/node-$i, log $base/node-$i.log"
done

echo "waiting for every shard to elect a leader..."
ready=""
for _ in $(seq 1 120); do
  if status=$("$bin/ringkv" --endpoints "$endpoints" --timeout-ms 2000 status --output json 2>/dev/null) \
     && [ "$(grep -c '"shard_id"' <<<"$status")" = 16 ] && ! grep -q '"leader": null' <<<"$status"; then
    ready=yes
    break
  fi
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "a node exited; its log:" >&2; tail -n 20 "$base"/node-*.log >&2; exit 1; }
  done
  sleep 0.5
done
[ -n "$ready" ] || { echo "error: shards still without a leader after 60 s; see $base/node-*.log" >&2; exit 1; }
"$bin/ringkv" --endpoints "$endpoints" status

seconds="${RINGKV_DEMO_SECONDS:-10}"
echo
echo "running a mixed workload (50% reads, 100-byte values, 10,000 keys, 32 clients) for ${seconds}s..."
"$bin/ringkv-bench" --endpoints "$endpoints" --workload mixed --read-ratio 0.5 --keys 10000 \
  --value-size 100 --concurrency 32 --duration "$seconds"

echo
echo "cluster is running: endpoints $endpoints, data in $base"
echo "try:  $bin/ringkv --endpoints $endpoints put hello world"
echo "      $bin/ringkv --endpoints $endpoints get hello"
echo "press Ctrl-C to stop all three nodes"
wait

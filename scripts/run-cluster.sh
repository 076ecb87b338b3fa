#!/usr/bin/env bash
# Builds ringkv (release), starts a local 3-node cluster on 127.0.0.1 (16 shards, 3 replicas each),
# waits until every shard has a leader, runs a short mixed workload, and keeps the cluster running
# until Ctrl-C, which stops all three nodes.
#
#   --debug   use the debug build (what .ci/run builds) instead of the release build
#   --exit    after the workload, also write and read a key with the CLI, check the replicas, and
#             stop the nodes; exit 1 if any of it failed (CI runs `run-cluster.sh --debug --exit`)
#
# Environment: RINGKV_DEMO_DIR (data dirs; default a new temp dir), RINGKV_DEMO_PORT (first port,
# default 7379), RINGKV_DEMO_SECONDS (workload duration, default 10), RINGKV_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
exit_after=""
for arg in "$@"; do
  case "$arg" in
    --debug) profile=debug ;;
    --exit) exit_after=yes ;;
    *) echo "error: unknown argument $arg (known: --debug, --exit)" >&2; exit 2 ;;
  esac
done

scripts/install-deps.sh
export CARGO_TARGET_DIR="${RINGKV_TARGET_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/ringkv-target}}"
echo "building ringkv ($profile; the first build compiles RocksDB and takes about 15 minutes on 2 cores)..."
if [ "$profile" = release ]; then
  cargo build --release --locked -p ringkv-server -p ringkv-bench --bins
else
  # Exactly what .ci/run builds, so nothing is compiled again.
  cargo build --workspace --bins --locked
fi
bin="$CARGO_TARGET_DIR/$profile"

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
  if [ -n "$exit_after" ] && [ -z "${RINGKV_DEMO_DIR:-}" ]; then
    rm -rf "$base"
    echo "stopped; deleted $base"
  else
    echo "stopped. data is kept in $base"
  fi
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
if ! "$bin/ringkv" --endpoints "$endpoints" --timeout-ms 2000 wait-ready --timeout 120; then
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || echo "node with pid $pid exited" >&2
  done
  echo "error: the cluster did not become ready; the nodes' last log lines:" >&2
  tail -n 20 "$base"/node-*.log >&2
  exit 1
fi
"$bin/ringkv" --endpoints "$endpoints" status

seconds="${RINGKV_DEMO_SECONDS:-10}"
echo
echo "running a mixed workload (50% reads, 100-byte values, 10,000 keys, 32 clients) for ${seconds}s..."
max_errors=()
[ -n "$exit_after" ] && max_errors=(--max-errors 0)
"$bin/ringkv-bench" --endpoints "$endpoints" --workload mixed --read-ratio 0.5 --keys 10000 \
  --value-size 100 --concurrency 32 --duration "$seconds" "${max_errors[@]}"

if [ -n "$exit_after" ]; then
  echo
  echo "writing and reading a key with the CLI, then checking every shard's replicas..."
  "$bin/ringkv" --endpoints "$endpoints" put hello world
  got=$("$bin/ringkv" --endpoints "$endpoints" get hello)
  [ "$got" = world ] || { echo "error: get hello printed '$got', not 'world'" >&2; exit 1; }
  "$bin/ringkv" --endpoints "$endpoints" check
  echo "the demo cluster worked: ready, workload without errors, CLI round trip, replicas identical"
  exit 0
fi

echo
echo "cluster is running: endpoints $endpoints, data in $base"
echo "try:  $bin/ringkv --endpoints $endpoints put hello world"
echo "      $bin/ringkv --endpoints $endpoints get hello"
echo "press Ctrl-C to stop all three nodes"
wait

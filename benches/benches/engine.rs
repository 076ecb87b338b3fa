//! Criterion micro-benchmarks of the storage engine on real RocksDB in a temp dir: log appends
//! made durable (fsync through the group-commit syncer), alone and from concurrent shards, and
//! state-machine applies of put batches.

use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use openraft::alias::EntryOf;
use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::type_config::TypeConfigExt;
use openraft::{Entry, EntryPayload};
use ringkv_engine::{Command, Engine, HashRange, LogStore, Proposal, ReplicaId, ShardId, TypeConfig};

fn entry(index: u64) -> EntryOf<TypeConfig> {
    Entry {
        log_id: openraft::testing::log_id::<TypeConfig>(1, ReplicaId(1), index),
        payload: EntryPayload::Normal(Proposal::internal(Command::Put {
            key: format!("bench:{}", index % 10_000).into_bytes(),
            value: vec![b'v'; 100],
        })),
    }
}

/// Appends `n` entries after `next` and waits until they are durable.
async fn append_durably(store: &mut LogStore, next: &AtomicU64, n: u64) {
    let first = next.fetch_add(n, Ordering::Relaxed);
    let (sender, receiver) = TypeConfig::oneshot();
    store
        .append((first..first + n).map(entry), IOFlushed::signal(sender))
        .await
        .expect("append");
    receiver.await.expect("callback").expect("durable");
}

fn log_append(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::open(dir.path()).expect("engine");

    let mut group = c.benchmark_group("log_append_with_fsync");
    for batch in [1u64, 16, 64] {
        let store = engine.log_store(ShardId(batch));
        let next = AtomicU64::new(1);
        group.throughput(Throughput::Elements(batch));
        group.bench_with_input(
            BenchmarkId::new("entries_per_append", batch),
            &batch,
            |b, &batch| {
                b.to_async(&runtime).iter(|| {
                    let mut store = store.clone();
                    let next = &next;
                    async move { append_durably(&mut store, next, batch).await }
                });
            },
        );
    }
    group.finish();

    // Group commit: one append from each of N shards at once; their fsyncs are shared.
    let mut group = c.benchmark_group("log_append_concurrent_shards");
    for shards in [1u64, 8, 32] {
        let stores: Vec<(LogStore, AtomicU64)> = (0..shards)
            .map(|s| {
                (
                    engine.log_store(ShardId(10_000 + shards * 100 + s)),
                    AtomicU64::new(1),
                )
            })
            .collect();
        group.throughput(Throughput::Elements(shards));
        group.bench_with_input(BenchmarkId::new("shards", shards), &shards, |b, _| {
            b.to_async(&runtime).iter(|| async {
                let appends = stores.iter().map(|(store, next)| {
                    let mut store = store.clone();
                    async move { append_durably(&mut store, next, 1).await }
                });
                futures::future::join_all(appends).await;
            });
        });
    }
    group.finish();
}

fn apply(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::open(dir.path()).expect("engine");
    let mut group = c.benchmark_group("apply_put_batch");
    for batch in [1u64, 64, 256] {
        let mut state_machine = engine
            .state_machine(
                ShardId(batch),
                HashRange {
                    start: 0,
                    end: u64::MAX,
                },
            )
            .expect("state machine");
        let next = AtomicU64::new(1);
        group.throughput(Throughput::Elements(batch));
        group.bench_with_input(BenchmarkId::new("entries", batch), &batch, |b, &batch| {
            b.iter(|| {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                let entries = (first..first + batch).map(|index| Ok((entry(index), None)));
                runtime
                    .block_on(state_machine.apply(futures::stream::iter(entries)))
                    .expect("apply");
            });
        });
    }
    group.finish();
}

criterion_group!(benches, log_append, apply);
criterion_main!(benches);

//! The ceiling a single-node ringkv is measured against: one plain RocksDB instance (default
//! options, on disk in a temp dir) making writes durable with one synced `WriteBatch` per round of
//! waiting writers, and nothing else — no Raft, no network, no request handling.
//!
//! With a closed loop of N writers that each wait for their write to be durable before sending the
//! next one (what `ringkv-bench --workload write --concurrency N` does), every writer is waiting
//! when a round starts, so each round is one batch of N puts written with `sync = true`: the
//! `writers` parameter here. Keys and values are shaped like `ringkv-bench`'s: `bench:0` ..
//! `bench:9999`, 100-byte values. Criterion reports the puts made durable per second.
//!
//! `cargo bench -p ringkv-bench --bench baseline`

use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rocksdb::{DB, Options, WriteBatch, WriteOptions};

fn synced_write_batch(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut options = Options::default();
    options.create_if_missing(true);
    let db = DB::open(&options, dir.path()).expect("open RocksDB");
    let mut synced = WriteOptions::default();
    synced.set_sync(true);
    let value = vec![b'v'; 100];
    let next = AtomicU64::new(0);

    let mut group = c.benchmark_group("rocksdb_synced_write_batch_per_round");
    for writers in [1u64, 32, 256] {
        group.throughput(Throughput::Elements(writers));
        group.bench_with_input(BenchmarkId::new("writers", writers), &writers, |b, &writers| {
            b.iter(|| {
                let first = next.fetch_add(writers, Ordering::Relaxed);
                let mut batch = WriteBatch::default();
                for i in first..first + writers {
                    batch.put(format!("bench:{}", i % 10_000), &value);
                }
                db.write_opt(batch, &synced).expect("synced write");
            });
        });
    }
    group.finish();
}

criterion_group!(benches, synced_write_batch);
criterion_main!(benches);

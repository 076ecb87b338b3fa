//! Criterion micro-benchmarks of routing: hashing a key (with and without a hash tag) and finding
//! its shard in maps of 16 and 1024 shards.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ringkv_map::{NodeInfo, ShardMap};
use ringkv_proto::{NodeId, key_hash};

fn hashing(c: &mut Criterion) {
    let mut group = c.benchmark_group("key_hash");
    let long = vec![b'k'; 1024];
    let cases: [(&str, &[u8]); 3] = [
        ("short_16B", b"user:1234567890a"),
        ("tagged", b"{user42}:orders:2026-11"),
        ("long_1KiB", &long),
    ];
    for (name, key) in cases {
        group.bench_with_input(BenchmarkId::from_parameter(name), key, |b, key| {
            b.iter(|| key_hash(black_box(key)))
        });
    }
    group.finish();
}

fn shard_lookup(c: &mut Criterion) {
    let nodes: BTreeMap<NodeId, NodeInfo> = (1..=5)
        .map(|id| {
            let info = NodeInfo {
                addr: format!("127.0.0.1:{}", 7000 + id),
                incarnation: id,
                state: Default::default(),
                role: Default::default(),
            };
            (NodeId(id), info)
        })
        .collect();
    let mut group = c.benchmark_group("shard_for_key");
    for shards in [16u32, 1024] {
        let map = ShardMap::bootstrap(1, &nodes, shards, 3).expect("map");
        let keys: Vec<String> = (0..1024).map(|i| format!("user:{i}")).collect();
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("shards", shards), &map, |b, map| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                map.shard_for_key(black_box(keys[i].as_bytes())).id
            })
        });
    }
    group.finish();
}

criterion_group!(benches, hashing, shard_lookup);
criterion_main!(benches);

//! Criterion micro-benchmarks of the batched streams' messages: encoding and decoding one `Kv`
//! command message of 1, 64 and 1,024 puts (16-byte keys, 100-byte values), and one Raft `Calls`
//! message of 1 and 64 appends (300-byte payloads), as `batch_stream` sends them. What a batch
//! costs per request here is the floor under the per-request cost of the streams.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use ringkv_proto::pb::{self, kv_command::Request};

fn kv_commands(count: usize) -> pb::KvCommands {
    let commands = (0..count)
        .map(|i| pb::KvCommand {
            id: i as u64,
            budget_ms: 2_000,
            request: Some(Request::Put(pb::PutRequest {
                route: Some(pb::RouteHeader {
                    shard_id: (i % 16) as u64 + 1,
                    map_epoch: 1,
                }),
                key: Bytes::from(format!("bench:{i:010}")),
                value: Bytes::from(vec![b'v'; 100]),
                request_id: Some(pb::RequestId {
                    client_id: 0x5eed,
                    seq: i as u64 + 1,
                    first_incomplete: 1,
                }),
            })),
        })
        .collect();
    pb::KvCommands { commands }
}

fn raft_calls(count: usize) -> pb::RaftCalls {
    let calls = (0..count)
        .map(|i| pb::RaftCall {
            id: i as u64,
            rpc: pb::RaftRpc::AppendEntries.into(),
            request: Some(pb::RaftRequest {
                shard_id: (i % 16) as u64 + 1,
                target_replica_id: 0x2_0000_0001,
                payload: Bytes::from(vec![7u8; 300]),
                header: Some(pb::RaftHeader {
                    cluster_id: 0xc1,
                    from_node: 1,
                    from_incarnation: 0x1111,
                    to_node: 2,
                    to_incarnation: 0x2222,
                }),
            }),
        })
        .collect();
    pb::RaftCalls { calls }
}

fn kv_messages(c: &mut Criterion) {
    let mut group = c.benchmark_group("kv_commands");
    for count in [1usize, 64, 1024] {
        let message = kv_commands(count);
        let encoded = message.encode_to_vec();
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(BenchmarkId::new("encode", count), &message, |b, message| {
            b.iter(|| black_box(message).encode_to_vec())
        });
        group.bench_with_input(BenchmarkId::new("decode", count), &encoded, |b, encoded| {
            b.iter(|| pb::KvCommands::decode(black_box(&encoded[..])).expect("decodes"))
        });
    }
    group.finish();
}

fn raft_messages(c: &mut Criterion) {
    let mut group = c.benchmark_group("raft_calls");
    for count in [1usize, 64] {
        let message = raft_calls(count);
        let encoded = message.encode_to_vec();
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(BenchmarkId::new("encode", count), &message, |b, message| {
            b.iter(|| black_box(message).encode_to_vec())
        });
        group.bench_with_input(BenchmarkId::new("decode", count), &encoded, |b, encoded| {
            b.iter(|| pb::RaftCalls::decode(black_box(&encoded[..])).expect("decodes"))
        });
    }
    group.finish();
}

criterion_group!(benches, kv_messages, raft_messages);
criterion_main!(benches);

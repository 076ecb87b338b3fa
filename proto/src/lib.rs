//! ringkv's wire contract, shared by server and client: the generated gRPC code (`pb`) and the
//! conversions between it and the shard map's types (`ToProto`, `FromProto`). The pure shared
//! types (ids, the routing hash, hash ranges, request limits) live in `ringkv-core`, and the shard
//! map and its transitions in `ringkv-map`; the ids are re-exported here for the generated code's
//! users.

mod wire;

/// Generated protobuf messages and tonic services for `ringkv.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("ringkv.v1");
}

pub use ringkv_core::{
    LimitError, LogIndex, NodeId, ReplicaId, ShardId, check_batch, check_key, check_scan, check_value, hash,
    hash_tag, key_hash, limits, prefix_hash,
};
pub use wire::{FromProto, ToProto};

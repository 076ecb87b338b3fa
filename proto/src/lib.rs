//! ringkv's wire contract, shared by server and client: the generated gRPC code, the shard map with
//! its protobuf form, and `batch_stream` (many requests on one gRPC stream, batched per message: the
//! client's Kv stream to each node, the Raft stream between nodes). The pure shared types (ids, the
//! routing hash, request limits) live in `ringkv-core` and are re-exported here, so client code
//! needs only this crate.

pub mod batch_stream;
pub mod shard_map;

/// Generated protobuf messages and tonic services for `ringkv.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("ringkv.v1");
}

pub use ringkv_core::{
    LimitError, LogIndex, NodeId, ReplicaId, ShardId, check_batch, check_key, check_scan, check_value, hash,
    hash_tag, key_hash, limits, prefix_hash,
};
pub use shard_map::{
    Arc, Decision, FIRST_FRESH_REPLICA_ID, MAX_READ_REPLICAS, MapChange, MapError, Move, MoveKind, MoveStep,
    NodeInfo, NodeRole, NodeState, PlacementStep, Replica, Shard, ShardMap, SplitOrigin,
};

//! ringkv's wire contract, shared by server and client: the generated gRPC code, the routing hash,
//! the shard map and the request limits. Everything here is pure (no I/O), so both sides agree on it
//! by construction.

pub mod hash;
pub mod limits;
pub mod shard_map;

/// Generated protobuf messages and tonic services for `ringkv.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("ringkv.v1");
}

pub use hash::{hash_tag, key_hash};
pub use limits::{LimitError, check_batch, check_key, check_value};
pub use shard_map::{Arc, MapError, NodeId, Replica, ReplicaId, Shard, ShardId, ShardMap};

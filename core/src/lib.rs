//! The small pure types every ringkv crate must agree on: the ids of nodes, shards and replicas,
//! the routing hash, hash ranges, and the request limits. No I/O and no gRPC, so the storage engine can depend
//! on it without building the network stack.

pub mod hash;
pub mod ids;
pub mod limits;
pub mod range;

pub use hash::{hash_tag, key_hash, prefix_hash};
pub use ids::{LogIndex, NodeId, ReplicaId, ShardId};
pub use limits::{LimitError, check_batch, check_key, check_scan, check_value};
pub use range::HashRange;

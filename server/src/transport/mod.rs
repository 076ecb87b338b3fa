//! Node-to-node Raft transport. Every shard group's openraft network goes through one
//! [`RaftTransport`], which carries the shard id and the sender's identity with each message: over
//! gRPC, all shards' traffic to one peer shares a single HTTP/2 connection; in tests,
//! [`MemoryNetwork`] calls the target node directly, through faults the test controls.

mod grpc;
mod memory;
mod network;
mod raft_transport;
mod throttle;

pub use grpc::{GrpcTransport, MAX_RAFT_MESSAGE_BYTES, SNAPSHOT_CHUNK_BYTES};
pub use memory::{MemoryEndpoint, MemoryNetwork};
pub use network::{RaftTimeouts, ShardNetworkFactory};
pub use raft_transport::{
    Pulse, QuiesceRequest, RaftHeader, RaftTransport, ReadIndexRequest, Target, TransportError,
};
pub use throttle::SnapshotThrottle;

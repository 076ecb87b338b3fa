//! Node-to-node Raft transport. Every shard group's openraft network goes through one
//! [`RaftTransport`], which carries the shard id with each message: over gRPC, all shards' traffic
//! to one peer shares a single HTTP/2 connection; in tests, [`MemoryTransport`] calls the target
//! node directly.

mod grpc;
mod memory;
mod network;
mod raft_transport;

pub use grpc::{GrpcTransport, MAX_RAFT_MESSAGE_BYTES};
pub use memory::MemoryTransport;
pub use network::ShardNetworkFactory;
pub use raft_transport::{RaftTransport, Target, TransportError};

//! The gRPC services a node serves on its one port: Kv for applications, Cluster for the shard map
//! and status, Raft for peers.

mod cluster;
mod kv;
mod kv_commands;
mod raft;

pub use cluster::ClusterService;
pub use kv::KvService;
pub use raft::RaftService;

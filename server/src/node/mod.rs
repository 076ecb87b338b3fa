//! A ringkv node: one engine, the shard map, and one openraft group per shard replica it hosts.
//!
//! - `bootstrap` — finding or forming the cluster when the data directory holds none;
//! - `slot` — what the services serve while the node starts;
//! - `host` — the `Node`: starting groups, failures, shutdown; `leadership` — handing leadership
//!   over before a graceful stop, and watched transfers;
//! - `requests` — serving client requests; `reads` — what a read waits for at each consistency
//!   level; `raft_rpc` — serving peers' Raft messages;
//! - `metadata` — the metadata group that stores the shard map, and following its changes;
//!   `reconcile` — starting and deleting replicas as the map places them; `moves` — moving a
//!   replica to another node, step by step; `audit` — removing learners the map does not place;
//! - `controller` — placement decisions, on the metadata leader; `placement` — its policy;
//! - `status` — what the node reports; `balancer` — keeping leaders spread;
//! - `quiesce` — idle shards stop their Raft timers; node-level liveness watches their leaders.

mod audit;
mod balancer;
pub mod bootstrap;
mod controller;
mod host;
mod leadership;
mod metadata;
mod moves;
pub mod placement;
mod quiesce;
mod raft_rpc;
mod reads;
mod reconcile;
mod requests;
pub mod slot;
mod splits;
mod status;

pub use host::{Applied, Node, ShardReplica};
pub use reads::ReadLevel;
pub use slot::NodeSlot;
pub use splits::SplitPolicy;

//! ringkv's node storage engine: one RocksDB instance per node holding, for every shard replica the
//! node hosts, its Raft log, its Raft state, its state machine and its request-id table.
//!
//! openraft sees each shard through two handles: a [`LogStore`] (log + vote) and a [`StateMachine`]
//! (data + applied state + snapshots). Both are views of the same node-wide [`Engine`]; all shards'
//! log appends share fsyncs through the engine's group-commit syncer.

pub mod codec;
mod error;
mod faults;
mod keys;
mod log_store;
mod progress;
mod retire;
mod rocks;
mod sessions;
mod snapshot;
mod split;
mod state_machine;
mod syncer;
pub mod types;

pub use error::Error;
pub use faults::{EngineOptions, KNOWN_BUGS, SyncEvent, SyncObserver, TestFaults};
pub use log_store::{LogStore, REPLICATION_PAYLOAD_BYTES};
pub use progress::AppliedBound;
pub use rocks::{DigestState, Engine, GroupCommitStats, HashRange, ScanPage};
pub use sessions::SESSION_TTL_MS;
pub use snapshot::SnapshotFile;
pub use split::ShardRange;
pub use state_machine::StateMachine;
pub use types::*;

//! ringkv-client: the embeddable async client. It fetches the shard map from any node, hashes
//! each key to its shard with the same function the servers use, and sends the request straight
//! to that shard's leader, following leader changes and map changes on its own. Every write
//! carries a request id, so retries after an ambiguous failure apply it at most once.
//!
//! ```no_run
//! # async fn example() -> Result<(), ringkv_client::Error> {
//! let client = ringkv_client::Client::connect(["127.0.0.1:7379"]).await?;
//! client.put("{user42}:name", "alice").await?;
//! let name = client.get("{user42}:name").await?;
//! # Ok(()) }
//! ```
//!
//! Layout: `client` (the API), `plan` (route, send, retry, merge), `classify` (what a failure
//! means), `pool` (connections), `commands` (the per-node request stream), `route` (the shard-map
//! cache), `request_ids`, `scan`, `check` (the replica check), `admin` (moves, decommission), `backoff`,
//! `error`, `types`.

mod admin;
mod backoff;
mod check;
mod classify;
mod client;
mod commands;
mod error;
mod plan;
mod pool;
mod request_ids;
mod route;
mod scan;
mod types;

pub use backoff::Backoff;
pub use check::{CheckReport, ReplicaDigest, ShardCheck};
pub use client::{Client, ClientConfig};
pub use error::{Error, ShardOutcome};
pub use ringkv_proto::{NodeId, NodeState, ReplicaId, ShardId, ShardMap};
pub use scan::{ScanCursor, ScanOptions, ScanPage};
pub use types::{BatchOp, BatchOutcome, CasOutcome, Expect, KeyValue, Versioned};

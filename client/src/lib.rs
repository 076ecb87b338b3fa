//! ringkv-client: the embeddable async client. It fetches the shard map from any node, hashes
//! each key to its shard with the same function the servers use, and sends the request straight
//! to that shard's leader (a read below linearizable to any of its replicas), following leader
//! changes and map changes on its own. Every write carries a request id, so retries after an
//! ambiguous failure apply it at most once. Reads take a consistency level per request
//! (`ReadOptions`); a `Session` carries read-your-writes across replicas and processes.
//!
//! ```no_run
//! # async fn example() -> Result<(), ringkv_client::Error> {
//! let client = ringkv_client::Client::connect(["127.0.0.1:7379"]).await?;
//! client.put("{user42}:name", "alice").await?;
//! let name = client.get("{user42}:name").await?;
//! # Ok(()) }
//! ```
//!
//! Operators use `AdminClient` (moves, splits, decommission, settings, node status, the replica
//! check) beside it.
//!
//! Layout: `client` (the API), `plan` (route, send, retry, merge), `classify` (what a failure
//! means), `pool` (connections), `commands` (the per-node request stream), `route` (the shard-map
//! cache), `request_ids`, `read` (consistency levels, sessions), `replicas` (which replica
//! serves a read), `scan`, `admin` (`AdminClient`), `check` (the replica check), `status` (a node's status),
//! `backoff`, `error`, `types`.

mod admin;
mod backoff;
pub mod batch_stream;
mod check;
mod classify;
mod client;
mod commands;
mod error;
mod plan;
mod pool;
mod read;
mod replicas;
mod request_ids;
mod route;
mod scan;
mod status;
mod types;

pub use admin::AdminClient;
pub use backoff::Backoff;
pub use check::{CheckReport, ReplicaDigest, ShardCheck};
pub use client::{Client, ClientConfig};
pub use error::{Error, ShardOutcome};
pub use read::{Consistency, ReadOptions, ReplicaSelection, Session};
pub use ringkv_map::{MAX_READ_REPLICAS, NodeState, ShardMap};
pub use ringkv_proto::{NodeId, ReplicaId, ShardId};
pub use scan::{ScanCursor, ScanOptions, ScanPage};
pub use status::{NodeStatus, ReplicaRole, ReplicaStatus};
pub use types::{BatchOp, BatchOutcome, CasOutcome, Expect, KeyValue, Served, Versioned};

//! ringkv-client: the embeddable async client. It fetches the shard map from any node, hashes
//! each key to its shard with the same function the servers use, and sends the request straight
//! to that shard's leader, following leader changes and map changes on its own.
//!
//! ```no_run
//! # async fn example() -> Result<(), ringkv_client::Error> {
//! let client = ringkv_client::Client::connect(["127.0.0.1:7379"]).await?;
//! client.put("{user42}:name", "alice").await?;
//! let name = client.get("{user42}:name").await?;
//! # Ok(()) }
//! ```

mod backoff;
mod client;
mod error;
mod route;
mod scan;

pub use backoff::Backoff;
pub use client::{BatchOp, BatchOutcome, CasOutcome, Client, ClientConfig, Expect, KeyValue, Versioned};
pub use error::Error;
pub use ringkv_proto::{ShardId, ShardMap};
pub use scan::{ScanCursor, ScanOptions, ScanPage};

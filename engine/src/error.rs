//! The engine's errors. Each says what happened, to what, and what to do. `is_fatal` separates
//! local faults (the node must stop serving: storage failed) from deterministic refusals.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "data directory {path} is already in use by another ringkv process (it holds the lock on {path}/ringkv.lock); \
         stop that process or choose another --data-dir"
    )]
    DataDirInUse { path: PathBuf },
    #[error("cannot open the storage engine in {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error(
        "corrupt {what}: {detail}; this node's data directory is damaged: replace the node from its peers"
    )]
    Corruption { what: String, detail: String },
    #[error("storage write failed: {0}")]
    Write(String),
    /// A read that failed for a passing reason (the store was busy); trying again may succeed.
    #[error("storage read failed: {0}; it may succeed if tried again")]
    Read(String),
    /// The disk failed a read.
    #[error("storage read failed on the disk: {0}; check this node's disk")]
    Io(String),
    #[error(
        "an fsync of the write-ahead log failed earlier ({0}), so this engine refuses every further write: \
         durability can no longer be promised; restart the node after checking the disk"
    )]
    Poisoned(String),
    /// A write of a replica that was removed from this node, by a task that outlived its group.
    #[error(
        "shard {shard}: this node's replica of the shard was removed, so its late writes are refused \
         (nothing to do: the map places the shard elsewhere)"
    )]
    Retired { shard: crate::types::ShardId },
    #[error("snapshot {path}: {message}")]
    Snapshot { path: PathBuf, message: String },
}

impl Error {
    /// True for local faults after which this node must stop serving the shard (or the node):
    /// corruption, failed disk reads and writes, a failed fsync. False for refusals that leave the
    /// engine healthy and for passing conditions.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            Error::DataDirInUse { .. } | Error::Read(_) | Error::Retired { .. }
        )
    }
}

impl From<Error> for io::Error {
    fn from(error: Error) -> io::Error {
        let kind = match &error {
            Error::Corruption { .. } => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, error)
    }
}

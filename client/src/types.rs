//! The values the client API takes and returns.

use std::collections::BTreeMap;

use bytes::Bytes;

use ringkv_proto::{NodeId, ReplicaId, ShardId};

/// A value with the version (log index) that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Bytes,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Bytes,
    pub value: Bytes,
    pub version: u64,
}

/// What a compare-and-swap expects the key to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Absent,
    Value(Bytes),
    Version(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasOutcome {
    pub succeeded: bool,
    /// On success, the version written (0 for a delete).
    pub version: u64,
    /// On failure, what the key held instead.
    pub current: Option<Versioned>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    Put { key: Bytes, value: Bytes },
    Delete { key: Bytes },
}

impl BatchOp {
    pub fn key(&self) -> &Bytes {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key } => key,
        }
    }
}

/// Which replica served a read, and the log index of the shard its answer is as new as (the
/// token a session keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub node_id: NodeId,
    pub replica_id: ReplicaId,
    pub index: u64,
}

/// The versions at which each shard's part of a batch applied, and the keys of each part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    pub versions: BTreeMap<ShardId, u64>,
    pub keys: BTreeMap<ShardId, Vec<Bytes>>,
}

pub(crate) fn versioned(value: ringkv_proto::pb::VersionedValue) -> Versioned {
    Versioned {
        value: value.value,
        version: value.version,
    }
}

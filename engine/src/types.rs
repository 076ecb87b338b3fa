//! The openraft type configuration every shard uses, and the commands its log carries.
//!
//! Commands are what a shard's state machine applies; results are what `apply` answers. A failed
//! compare-and-swap is a normal result, never an `Err`: an `Err` from `apply` stops the Raft group.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One shard replica's openraft node id. Unique per (shard, placement); never reused.
pub type ReplicaId = u64;
/// A shard (one arc of the hash ring, one Raft group).
pub type ShardId = u64;
/// A server process.
pub type NodeId = u64;
/// A position in a shard's Raft log.
pub type LogIndex = u64;

/// Where a replica lives: the openraft `Node` of every shard group. The address is metadata; the
/// replica id (the openraft node id) is what Raft reasons about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReplicaNode {
    pub node_id: NodeId,
    pub addr: String,
}

impl fmt::Display for ReplicaNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} at {}", self.node_id, self.addr)
    }
}

/// What a compare-and-swap compares against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    /// The key must not exist.
    Absent,
    /// The key must hold exactly this value.
    Value(Vec<u8>),
    /// The key must have been last written at this log index.
    Version(LogIndex),
}

/// One write inside an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchOp {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

/// A state-machine command, proposed by the shard leader and applied by every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Write `new_value` (delete the key when `None`) if the key matches `expect`.
    Cas {
        key: Vec<u8>,
        expect: Expect,
        new_value: Option<Vec<u8>>,
    },
    /// All operations take effect at the same log index, or none does.
    Batch {
        ops: Vec<BatchOp>,
    },
}

impl fmt::Display for Command {
    /// Never prints keys or values: logs must not leak user data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put { key, value } => {
                write!(f, "put({} key bytes, {} value bytes)", key.len(), value.len())
            }
            Command::Delete { key } => write!(f, "delete({} key bytes)", key.len()),
            Command::Cas { key, .. } => write!(f, "cas({} key bytes)", key.len()),
            Command::Batch { ops } => write!(f, "batch({} ops)", ops.len()),
        }
    }
}

/// A value as stored, with the log index that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub version: LogIndex,
}

/// What applying an entry produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Blank and membership entries.
    None,
    Put {
        version: LogIndex,
    },
    Delete {
        existed: bool,
    },
    /// On success `version` is the index written (the entry's index); on failure `current` is what
    /// the key held instead.
    Cas {
        succeeded: bool,
        version: LogIndex,
        current: Option<Versioned>,
    },
    Batch {
        version: LogIndex,
    },
}

openraft::declare_raft_types!(
    /// The openraft type configuration of every ringkv shard group.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = ReplicaId,
        Node = ReplicaNode,
);

/// A shard's Raft handle.
pub type ShardRaft = openraft::Raft<TypeConfig, crate::StateMachine>;

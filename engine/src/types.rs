//! The openraft type configuration every shard uses, and the proposals its log carries.
//!
//! A proposal is a command plus the envelope that makes retries safe: the request id of the client
//! write it carries (if any) and the proposing leader's clock. Results are what `apply` answers. A
//! failed compare-and-swap, or a retry refused as already finished, is a normal result, never an
//! `Err`: an `Err` from `apply` stops the Raft group.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use ringkv_core::{LogIndex, NodeId, ReplicaId, ShardId};

/// Where a replica lives: the openraft `Node` of every shard group. The address is metadata; the
/// replica id (the openraft node id) is what Raft reasons about. The incarnation is the one the
/// node had when the replica was placed on it: a node whose data directory was recreated since
/// has another, and refuses messages for this replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReplicaNode {
    pub node_id: NodeId,
    pub addr: String,
    pub incarnation: u64,
}

impl fmt::Display for ReplicaNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} at {}", self.node_id, self.addr)
    }
}

/// One client write, named so that its retries are applied at most once: a random client id and
/// the client's sequence number for the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId {
    pub client: u64,
    pub seq: u64,
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request {} of client {:016x}", self.seq, self.client)
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
    /// Replica check: every replica hashes its shard state (data and request-id table) as of
    /// this entry's index, so the digests of healthy replicas are equal.
    Digest,
    /// Split the shard at hash `at`: from this entry on the shard owns the hashes below `at`, and
    /// shard `child` owns the rest, with `replicas` as its voters. Every replica applying it
    /// creates the child's state in place (see `split.rs`); no data is copied. A split whose
    /// `at` is not inside the shard's range (one applied already) changes nothing.
    Split {
        at: u64,
        child: ShardId,
        replicas: Vec<(ReplicaId, ReplicaNode)>,
    },
}

impl Command {
    /// Whether applying the command changes the shard's data (and so needs a request id to be
    /// retried safely).
    pub fn is_write(&self) -> bool {
        !matches!(self, Command::Digest | Command::Split { .. })
    }
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
            Command::Digest => write!(f, "digest"),
            Command::Split { at, child, .. } => write!(f, "split(at {at:#018x}, child shard {child})"),
        }
    }
}

/// The log payload of a shard: a command in its envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The client write this proposal carries; `None` for internal commands and for clients that
    /// send no request id (those get no protection against applying a retry twice).
    pub request: Option<RequestId>,
    /// The lowest sequence number the client still waits for: its results below this may be
    /// forgotten. Meaningful only with `request`.
    pub client_floor: u64,
    /// The proposing leader's wall clock, in milliseconds since the Unix epoch. The state machine
    /// expires idle client sessions by the largest clock it has applied, so expiry is the same on
    /// every replica.
    pub proposed_at_ms: u64,
    pub command: Command,
}

impl Proposal {
    /// A proposal with no request id (internal commands, tests).
    pub fn internal(command: Command) -> Proposal {
        Proposal {
            request: None,
            client_floor: 0,
            proposed_at_ms: now_ms(),
            command,
        }
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.request {
            Some(request) => write!(f, "{} ({request})", self.command),
            None => write!(f, "{}", self.command),
        }
    }
}

/// Milliseconds since the Unix epoch by this machine's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
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
    /// Blank and membership entries, and digests.
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
    /// The request was not applied: its client had already finished it (its sequence number is
    /// below the client's floor), so this is a stale copy of it.
    Refused {
        reason: String,
    },
    /// Not applied: a key of the command lies outside the shard's range (a split moved it to
    /// another shard). Also the result of a split that was applied already.
    NotInShard,
}

openraft::declare_raft_types!(
    /// The openraft type configuration of every ringkv shard group.
    pub TypeConfig:
        D = Proposal,
        R = CommandResult,
        NodeId = ReplicaId,
        Node = ReplicaNode,
);

/// A shard's Raft handle.
pub type ShardRaft = openraft::Raft<TypeConfig, crate::StateMachine>;

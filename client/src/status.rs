//! A node's status as the client hands it to callers: its replicas, their Raft progress and lag,
//! and its counters. The generated protobuf types stay inside the crate.

use ringkv_proto::pb;
use ringkv_proto::{NodeId, ReplicaId, ShardId};

/// What a replica is doing in its Raft group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaRole {
    Leader,
    Follower,
    Candidate,
    /// A non-voting member: a read replica, or a move's new replica catching up.
    Learner,
    /// Its group has stopped (the node is stopping, or took it out of service).
    Shutdown,
    /// A role this client does not know (a newer node's).
    Other(String),
}

impl ReplicaRole {
    fn from_wire(role: &str) -> ReplicaRole {
        match role {
            "leader" => ReplicaRole::Leader,
            "follower" => ReplicaRole::Follower,
            "candidate" => ReplicaRole::Candidate,
            "learner" => ReplicaRole::Learner,
            "shutdown" => ReplicaRole::Shutdown,
            other => ReplicaRole::Other(other.to_owned()),
        }
    }
}

impl std::fmt::Display for ReplicaRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReplicaRole::Leader => "leader",
            ReplicaRole::Follower => "follower",
            ReplicaRole::Candidate => "candidate",
            ReplicaRole::Learner => "learner",
            ReplicaRole::Shutdown => "shutdown",
            ReplicaRole::Other(role) => role,
        })
    }
}

/// One shard replica on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub shard_id: ShardId,
    pub replica_id: ReplicaId,
    pub role: ReplicaRole,
    pub term: u64,
    /// The leader this replica knows, if any: its replica id and node.
    pub leader: Option<(ReplicaId, NodeId)>,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
    /// Why the node took the replica out of service, if it did.
    pub failure: Option<String>,
    /// Entries the leader had committed that this replica has not applied, as of the leader's
    /// last message (an estimate, for people).
    pub lag_entries: u64,
    /// Milliseconds since a leader's message showed a commit index the replica has applied (0
    /// before it heard from any leader); `None` when none it heard showed one it has applied.
    pub lag_ms: Option<u64>,
}

/// A node's view of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub addr: String,
    pub data_dir: String,
    pub replicas: Vec<ReplicaStatus>,
    /// Group commit since start: log appends, and the fsyncs that made them durable.
    pub log_appends: u64,
    pub log_fsyncs: u64,
    /// Kv command streams since start: requests received, and the messages that carried them.
    pub kv_commands: u64,
    pub kv_command_messages: u64,
    /// Raft `Calls` streams from peers since start: calls, and the messages that carried them.
    pub raft_calls: u64,
    pub raft_call_messages: u64,
    /// Replicas whose Raft timer is off because their shard is idle.
    pub quiet_replicas: u64,
    /// Bytes the node's storage holds on disk and in memtables.
    pub data_bytes: u64,
}

impl NodeStatus {
    pub(crate) fn from_proto(status: pb::StatusResponse) -> NodeStatus {
        NodeStatus {
            node_id: NodeId(status.node_id),
            addr: status.addr,
            data_dir: status.data_dir,
            replicas: status
                .replicas
                .into_iter()
                .map(|replica| ReplicaStatus {
                    shard_id: ShardId(replica.shard_id),
                    replica_id: ReplicaId(replica.replica_id),
                    role: ReplicaRole::from_wire(&replica.role),
                    term: replica.term,
                    leader: (replica.leader_node_id != 0).then_some((
                        ReplicaId(replica.leader_replica_id),
                        NodeId(replica.leader_node_id),
                    )),
                    last_log_index: replica.last_log_index,
                    committed_index: replica.committed_index,
                    applied_index: replica.applied_index,
                    snapshot_index: replica.snapshot_index,
                    purged_index: replica.purged_index,
                    failure: (!replica.failure.is_empty()).then_some(replica.failure),
                    lag_entries: replica.lag_entries,
                    lag_ms: (replica.lag_ms != u64::MAX).then_some(replica.lag_ms),
                })
                .collect(),
            log_appends: status.log_appends,
            log_fsyncs: status.log_fsyncs,
            kv_commands: status.kv_commands,
            kv_command_messages: status.kv_command_messages,
            raft_calls: status.raft_calls,
            raft_call_messages: status.raft_call_messages,
            quiet_replicas: status.quiet_replicas,
            data_bytes: status.data_bytes,
        }
    }

    /// The replica of `shard` on this node, if it has one.
    pub fn replica(&self, shard: ShardId) -> Option<&ReplicaStatus> {
        self.replicas.iter().find(|replica| replica.shard_id == shard)
    }
}

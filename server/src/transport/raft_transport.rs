//! The transport contract every shard's Raft network uses: where a message goes and who sends it
//! (`Target`, `RaftHeader`), how sending can fail (`TransportError`), and the `RaftTransport` trait.
//! Besides openraft's messages it carries ringkv's own two: a leader asking a peer to go quiet
//! (`QuiesceRequest`) and the node-level liveness `Pulse` (see `node::quiesce`).

use std::time::Duration;

use futures::future::BoxFuture;
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use ringkv_engine::{NodeId, ReplicaId, ShardId, SnapshotFile, TypeConfig};
use ringkv_proto::pb;

/// Who sends a Raft message and to whom. The receiver refuses a message of another cluster, one
/// addressed to another incarnation of itself, and one from a sender whose incarnation is not the
/// one its shard map records (see `Node::check_raft_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftHeader {
    pub cluster_id: u64,
    pub from_node: NodeId,
    pub from_incarnation: u64,
    pub to_node: NodeId,
    pub to_incarnation: u64,
}

impl RaftHeader {
    pub fn to_proto(self) -> pb::RaftHeader {
        pb::RaftHeader {
            cluster_id: self.cluster_id,
            from_node: self.from_node.0,
            from_incarnation: self.from_incarnation,
            to_node: self.to_node.0,
            to_incarnation: self.to_incarnation,
        }
    }

    pub fn from_proto(header: &pb::RaftHeader) -> RaftHeader {
        RaftHeader {
            cluster_id: header.cluster_id,
            from_node: NodeId(header.from_node),
            from_incarnation: header.from_incarnation,
            to_node: NodeId(header.to_node),
            to_incarnation: header.to_incarnation,
        }
    }
}

/// Where a Raft message goes: a replica of a shard, on the node at `addr`, with the header that
/// names sender and receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: String,
    pub shard_id: ShardId,
    pub replica_id: ReplicaId,
    pub header: RaftHeader,
}

/// A shard leader's request that a peer replica turn its Raft timer off: the shard is idle and the
/// peer follows this leader, in this term, and has applied this last entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuiesceRequest {
    pub term: u64,
    pub leader: ReplicaId,
    pub last_log_index: Option<u64>,
}

/// A replica's request for its shard leader's read index (replica-linearizable and bounded reads):
/// the leader confirms it still leads, as for its own linearizable reads, and answers the log
/// index a replica must apply before its state includes every write acknowledged before the
/// request arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexRequest {
    /// How long the leader may take to confirm it leads, in milliseconds.
    pub budget_ms: u64,
}

/// What a node tells each peer node about itself every heartbeat interval, and answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pulse {
    /// Random per process start: a new one means the node restarted.
    pub boot_id: u64,
    /// Grows whenever one of the node's replicas goes out of service.
    pub generation: u64,
}

#[derive(Debug, Error)]
pub enum TransportError {
    /// The peer could not be reached; openraft backs off before retrying.
    #[error("peer {addr} is unreachable: {message}")]
    Unreachable { addr: String, message: String },
    /// The peer was reached but the call did not finish in time or broke midway.
    #[error("call to peer {addr} failed: {message}")]
    Network { addr: String, message: String },
    /// The peer answered with an error (e.g. it does not host the shard, it refused our identity,
    /// or it is shutting down).
    #[error("peer {addr} refused: {message}")]
    Remote { addr: String, message: String },
}

/// Sends Raft messages for any shard to any node. Implementations must be cheap to share across
/// every shard group on the node.
pub trait RaftTransport: Send + Sync + 'static {
    fn append_entries(
        &self,
        target: &Target,
        rpc: AppendEntriesRequest<TypeConfig>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<AppendEntriesResponse<TypeConfig>, TransportError>>;

    fn vote(
        &self,
        target: &Target,
        rpc: VoteRequest<TypeConfig>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<VoteResponse<TypeConfig>, TransportError>>;

    /// Asks whether the target would vote for the candidate, without it changing any state.
    fn pre_vote(
        &self,
        target: &Target,
        rpc: VoteRequest<TypeConfig>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<VoteResponse<TypeConfig>, TransportError>>;

    fn transfer_leader(
        &self,
        target: &Target,
        rpc: TransferLeaderRequest<TypeConfig>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<TransferLeaderResponse<TypeConfig>, TransportError>>;

    /// Asks the target replica to go quiet; answers whether it did.
    fn quiesce(
        &self,
        target: &Target,
        request: QuiesceRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<bool, TransportError>>;

    /// Asks the target replica, which the caller believes leads its shard, for a read index.
    fn read_index(
        &self,
        target: &Target,
        request: ReadIndexRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<u64, TransportError>>;

    /// Sends this node's pulse to the target node (`target.shard_id` and `replica_id` are not
    /// used) and returns the target's.
    fn pulse(
        &self,
        target: &Target,
        pulse: Pulse,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Pulse, TransportError>>;

    /// Streams a snapshot to the target and waits for it to be installed. There is no overall
    /// deadline (a large shard takes as long as it takes); the transfer fails when nothing moves in
    /// either direction for `idle_timeout`.
    fn install_snapshot(
        &self,
        target: &Target,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotFile>,
        idle_timeout: Duration,
    ) -> BoxFuture<'static, Result<SnapshotResponse<TypeConfig>, TransportError>>;
}

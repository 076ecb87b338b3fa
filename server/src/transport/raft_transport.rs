//! The transport contract every shard's Raft network uses: where a message goes (`Target`), how
//! sending can fail (`TransportError`), and the `RaftTransport` trait itself.

use std::time::Duration;

use futures::future::BoxFuture;
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use thiserror::Error;

use ringkv_engine::{ReplicaId, ShardId, SnapshotFile, TypeConfig};

/// Where a Raft message goes: a replica of a shard, on the node at `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: String,
    pub shard_id: ShardId,
    pub replica_id: ReplicaId,
}

#[derive(Debug, Error)]
pub enum TransportError {
    /// The peer could not be reached; openraft backs off before retrying.
    #[error("peer {addr} is unreachable: {message}")]
    Unreachable { addr: String, message: String },
    /// The peer was reached but the call did not finish in time or broke midway.
    #[error("call to peer {addr} failed: {message}")]
    Network { addr: String, message: String },
    /// The peer answered with an error (e.g. it does not host the shard, or is shutting down).
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

    fn transfer_leader(
        &self,
        target: &Target,
        rpc: TransferLeaderRequest<TypeConfig>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<TransferLeaderResponse<TypeConfig>, TransportError>>;

    fn install_snapshot(
        &self,
        target: &Target,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotFile>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<SnapshotResponse<TypeConfig>, TransportError>>;
}

//! openraft's network for one shard group: a thin adapter that stamps the shard id, the target and
//! the sender's identity on every message and hands it to the node-wide [`RaftTransport`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};

use ringkv_engine::{ReplicaId, ReplicaNode, ShardId, SnapshotFile, TypeConfig};

use super::{RaftHeader, RaftTransport, Target, TransportError};
use crate::identity::LocalIdentity;

/// How long a Raft message may take, with the snapshot idle timeout.
#[derive(Debug, Clone, Copy)]
pub struct RaftTimeouts {
    /// Least time any Raft RPC gets. openraft gives replication and heartbeat RPCs the heartbeat
    /// interval (100 ms) as their timeout; on a machine starved of CPU a round trip (with the
    /// follower's fsync) takes longer, and RPCs cut at 100 ms are resent over and over: commits
    /// crawl and heartbeats stop renewing the leader's lease, with no fault at all. An answer is
    /// useful until an election timeout has passed, so that is the floor.
    pub rpc_floor: Duration,
    pub snapshot_idle: Duration,
}

/// Creates one `ShardNetwork` per peer replica of a shard.
#[derive(Clone)]
pub struct ShardNetworkFactory {
    shard_id: ShardId,
    transport: Arc<dyn RaftTransport>,
    local: LocalIdentity,
    timeouts: RaftTimeouts,
}

impl ShardNetworkFactory {
    pub fn new(
        shard_id: ShardId,
        transport: Arc<dyn RaftTransport>,
        local: LocalIdentity,
        timeouts: RaftTimeouts,
    ) -> Self {
        ShardNetworkFactory {
            shard_id,
            transport,
            local,
            timeouts,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for ShardNetworkFactory {
    type Network = ShardNetwork;

    async fn new_client(&mut self, target: ReplicaId, node: &ReplicaNode) -> ShardNetwork {
        // No connection is made here: the transport connects lazily and shares one connection
        // per peer node among all shards.
        ShardNetwork {
            target: Target {
                addr: node.addr.clone(),
                shard_id: self.shard_id,
                replica_id: target,
                header: RaftHeader {
                    cluster_id: self.local.cluster_id,
                    from_node: self.local.node_id,
                    from_incarnation: self.local.incarnation,
                    to_node: node.node_id,
                    to_incarnation: node.incarnation,
                },
            },
            transport: self.transport.clone(),
            timeouts: self.timeouts,
        }
    }
}

/// The link from one shard replica to one of its peers.
pub struct ShardNetwork {
    target: Target,
    transport: Arc<dyn RaftTransport>,
    timeouts: RaftTimeouts,
}

impl ShardNetwork {
    /// The time an RPC gets: openraft's, but never less than the floor.
    fn timeout(&self, option: &RPCOption) -> Duration {
        option.hard_ttl().max(self.timeouts.rpc_floor)
    }
}

fn rpc_error(error: TransportError) -> RPCError<TypeConfig> {
    match error {
        TransportError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&error)),
        TransportError::Network { .. } | TransportError::Remote { .. } => {
            RPCError::Network(NetworkError::new(&error))
        }
    }
}

impl RaftNetworkV2<TypeConfig> for ShardNetwork {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.transport
            .append_entries(&self.target, rpc, self.timeout(&option))
            .await
            .map_err(rpc_error)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.transport
            .vote(&self.target, rpc, self.timeout(&option))
            .await
            .map_err(rpc_error)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.transport
            .pre_vote(&self.target, rpc, self.timeout(&option))
            .await
            .map_err(rpc_error)
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.transport
            .transfer_leader(&self.target, rpc, self.timeout(&option))
            .await
            .map_err(rpc_error)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        // openraft's option carries one overall timeout; a large snapshot needs an idle timeout
        // instead (see `RaftTransport::install_snapshot`).
        let send = self
            .transport
            .install_snapshot(&self.target, vote, snapshot, self.timeouts.snapshot_idle);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = send => result.map_err(|error| match error {
                TransportError::Unreachable { .. } => StreamingError::Unreachable(Unreachable::new(&error)),
                _ => StreamingError::Network(NetworkError::new(&error)),
            }),
        }
    }
}

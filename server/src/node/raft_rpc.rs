//! Raft messages from peers, for any shard: each is checked against this node's identity and then
//! handed to the local replica it names, waking it first if it is quiet and the message is more
//! than a heartbeat (`quiesce`). Both transports (gRPC and the in-memory test network) come
//! through here, so both get the same checks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::alias::{SnapshotMetaOf, VoteOf};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use tracing::warn;

use ringkv_engine::{ReplicaId, ShardId, SnapshotFile, TypeConfig};

use super::host::{Node, ShardReplica};
use crate::transport::{Pulse, QuiesceRequest, RaftHeader};

/// A refused sender is logged at most this often, so a misconfigured peer cannot flood the log.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Node {
    /// Checks who sent a Raft message and to whom: the same cluster, this very incarnation of this
    /// node, and a sender whose incarnation is the one the shard map records. A node whose data
    /// directory was lost and recreated has a new incarnation, so it can neither receive votes or
    /// entries meant for the replicas it used to hold, nor send as them.
    pub fn check_raft_header(&self, header: &RaftHeader) -> Result<(), String> {
        let me = self.identity;
        let refusal = if header.cluster_id != me.cluster_id {
            Some(format!(
                "node {} refused a Raft message from node {} of cluster {:016x}: it belongs to cluster {:016x}. \
                 A node never takes part in another cluster's Raft groups; check --peers",
                me.node_id, header.from_node, header.cluster_id, me.cluster_id
            ))
        } else if header.to_node != me.node_id {
            Some(format!(
                "node {} refused a Raft message meant for node {}: check that --peers gives every node its own address",
                me.node_id, header.to_node
            ))
        } else if header.to_incarnation != me.incarnation {
            Some(format!(
                "node {} refused a Raft message from node {} addressed to its incarnation {:016x}: it is \
                 incarnation {:016x}, a data directory created after the cluster placed replicas on this \
                 node. It must not act for those replicas (it could vote with an empty log and erase \
                 committed writes)",
                me.node_id, header.from_node, header.to_incarnation, me.incarnation
            ))
        } else {
            let known = self
                .map
                .read()
                .expect("map lock")
                .nodes
                .get(&header.from_node)
                .map(|info| (info.incarnation, info.state));
            match known {
                None => Some(format!(
                    "node {} refused a Raft message from node {}, which its shard map does not list",
                    me.node_id, header.from_node
                )),
                Some((_, ringkv_map::NodeState::Removed)) => Some(format!(
                    "node {} refused a Raft message from node {}, which was removed from the cluster; \
                     to bring that machine back, start it with a new data directory as a new node",
                    me.node_id, header.from_node
                )),
                Some((incarnation, _)) if incarnation != header.from_incarnation => Some(format!(
                    "node {} refused a Raft message from node {} incarnation {:016x}: the cluster knows node {} \
                     as incarnation {incarnation:016x}. A node whose data directory was recreated must not \
                     rejoin as the replicas it used to hold",
                    me.node_id, header.from_node, header.from_incarnation, header.from_node
                )),
                Some(_) => None,
            }
        };
        match refusal {
            None => Ok(()),
            Some(message) => {
                self.log_refusal(header, &message);
                Err(message)
            }
        }
    }

    fn log_refusal(&self, header: &RaftHeader, message: &str) {
        let mut last = self.refusals_logged.lock().expect("refusal log lock");
        let now = Instant::now();
        let due = last
            .get(&header.from_node)
            .is_none_or(|at| now.duration_since(*at) >= REFUSAL_LOG_INTERVAL);
        if due {
            last.insert(header.from_node, now);
            warn!(from_node = %header.from_node, "{message}");
        }
    }

    pub(super) fn raft_target(
        &self,
        header: &RaftHeader,
        shard_id: ShardId,
        replica_id: ReplicaId,
    ) -> Result<Arc<ShardReplica>, String> {
        self.check_raft_header(header)?;
        let replica = match self.replica(shard_id) {
            Some(replica) if replica.replica_id == replica_id => replica,
            Some(replica) => {
                return Err(format!(
                    "node {} hosts replica {} of shard {shard_id}, not replica {replica_id}",
                    self.node_id(),
                    replica.replica_id
                ));
            }
            None => {
                return Err(format!(
                    "node {} hosts no replica of shard {shard_id}",
                    self.node_id()
                ));
            }
        };
        if let Some(failure) = replica.failure() {
            return Err(format!(
                "replica {replica_id} of shard {shard_id} on node {} is out of service: {failure}",
                self.node_id()
            ));
        }
        Ok(replica)
    }

    pub async fn raft_append(
        &self,
        header: &RaftHeader,
        shard_id: ShardId,
        replica_id: ReplicaId,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<TypeConfig>, String> {
        let replica = self.raft_target(header, shard_id, replica_id)?;
        if let Some(first) = rpc.entries.first() {
            self.below_floor(&replica, first.log_id.index, "log entries from")?;
        }
        self.wake_on_message(&replica, Some(rpc.vote.leader_id().term), !rpc.entries.is_empty());
        let arrived = Instant::now();
        let sent = super::reads::SentBounds::of(&rpc);
        let response = replica
            .raft
            .append_entries(rpc)
            .await
            .map_err(|e| e.to_string())?;
        // For status (how far behind the leader a read replica is), never for serving reads
        // (`reads`): the leader's commit index as this message showed it.
        let shown = if self.engine.test_faults().bounded_from_heartbeats() {
            sent.commit_shown(&response)
        } else {
            sent.commit_shown(&response).map(|_| sent.leader_commit)
        };
        if let Some(committed) = shown {
            replica.contact.record(committed, arrived);
        }
        Ok(response)
    }

    pub async fn raft_vote(
        &self,
        header: &RaftHeader,
        shard_id: ShardId,
        replica_id: ReplicaId,
        rpc: VoteRequest<TypeConfig>,
    ) -> Result<VoteResponse<TypeConfig>, String> {
        let replica = self.raft_target(header, shard_id, replica_id)?;
        self.wake_on_message(&replica, None, false);
        if !rpc.leadership_transfer {
            refuse_votes_after_restart(&replica)?;
        }
        replica.raft.vote(rpc).await.map_err(|e| e.to_string())
    }

    pub async fn raft_pre_vote(
        &self,
        header: &RaftHeader,
        shard_id: ShardId,
        replica_id: ReplicaId,
        rpc: VoteRequest<TypeConfig>,
    ) -> Result<VoteResponse<TypeConfig>, String> {
        let replica = self.raft_target(header, shard_id, replica_id)?;
        self.wake_on_message(&replica, None, false);
        refuse_votes_after_restart(&replica)?;
        replica.raft.pre_vote(rpc).await.map_err(|e| e.to_string())
    }

    pub async fn raft_transfer_leader(
        &self,
        header: &RaftHeader,
        shard_id: ShardId,
        replica_id: ReplicaId,
        rpc: TransferLeaderRequest<TypeConfig>,
    ) -> Result<TransferLeaderResponse<TypeConfig>, String> {
        let replica = self.raft_target(header, shard_id, replica_id)?;
        self.wake_on_message(&replica, None, false);
        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            // The sender's transfer watchdog hands the shard to another replica instead.
            return Err(format!(
                "node {} is stopping and takes no leadership",
                self.node_id()
            ));
        }
        replica
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(|e| e.to_string())
    }

    /// Installs a snapshot a leader streamed into `file` (a path from
    /// `Engine::incoming_snapshot_path`).
    pub async fn raft_install_snapshot(
        &self,
        header: &RaftHeader,
        shard_id: ShardId,
        replica_id: ReplicaId,
        vote: VoteOf<TypeConfig>,
        meta: SnapshotMetaOf<TypeConfig>,
        file: SnapshotFile,
    ) -> Result<SnapshotResponse<TypeConfig>, String> {
        let replica = self.raft_target(header, shard_id, replica_id)?;
        let index = meta.last_log_id.as_ref().map_or(0, |id| id.index);
        if replica.floor > index {
            self.below_floor(&replica, index, "a snapshot of")?;
        }
        self.wake_on_message(&replica, None, true);
        let snapshot = openraft::alias::SnapshotOf::<TypeConfig, SnapshotFile> { meta, snapshot: file };
        replica
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| e.to_string())
    }
}

impl Node {
    /// Refuses to give a replica that started empty under an arc a split shrank (`ShardReplica::floor`)
    /// state from at or before the split, until it has applied past it: entries from before the split
    /// were written for the wider arc and would apply differently under this one, and an older
    /// snapshot holds keys outside it. The leader retries; once it has purged its log past the split
    /// (every replica does soon after applying one), it sends a snapshot taken after it.
    fn below_floor(&self, replica: &ShardReplica, index: u64, what: &str) -> Result<(), String> {
        if replica.floor == 0 || index > replica.floor || self.engine.test_faults().accepts_below_floor() {
            return Ok(());
        }
        let applied = replica
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map_or(0, |id| id.index);
        if applied >= replica.floor {
            return Ok(());
        }
        Err(format!(
            "replica {} of shard {} takes no {what} index {index}: it starts from a snapshot taken at or          after the shard's last split (index {}), and has applied index {applied}",
            replica.replica_id, replica.shard_id, replica.floor
        ))
    }

    /// A shard leader asks the local replica to go quiet; answers whether it did.
    pub fn raft_quiesce(
        &self,
        header: &RaftHeader,
        shard_id: ShardId,
        replica_id: ReplicaId,
        request: QuiesceRequest,
    ) -> Result<bool, String> {
        let replica = self.raft_target(header, shard_id, replica_id)?;
        Ok(self.quiesce_follower(&replica, request))
    }

    /// A peer node's pulse: noted (its restart wakes what it concerns), and answered with ours.
    pub fn raft_pulse(&self, header: &RaftHeader, pulse: Pulse) -> Result<Pulse, String> {
        self.check_raft_header(header)?;
        self.observe_pulse(header.from_node, pulse);
        Ok(self.pulse())
    }
}

/// Refuses a vote while a replica that restarted with a committed vote may still be counted in a
/// leader's lease (see `ShardReplica::votes_from`).
fn refuse_votes_after_restart(replica: &ShardReplica) -> Result<(), String> {
    match replica.votes_from {
        Some(from) if Instant::now() < from => Err(format!(
            "replica {} of shard {} restarted less than a leader lease ago holding a committed vote; \
             it votes again in {} ms, once any lease it granted before the restart has run out",
            replica.replica_id,
            replica.shard_id,
            from.saturating_duration_since(Instant::now()).as_millis()
        )),
        _ => Ok(()),
    }
}

//! What a node reports about itself: the shard map with its leader hints, per-replica Raft state
//! for `ringkv status`, and replica-check digests.

use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;

use ringkv_engine::{DigestState, LogIndex, ShardId};
use ringkv_map::ShardMap;
use ringkv_proto::pb;

use super::host::Node;

impl Node {
    /// The shard map with leader hints from this node's replicas.
    pub fn shard_map(&self) -> ShardMap {
        let mut map = self.map.read().expect("map lock").clone();
        for replica in self.all_replicas() {
            let metrics = replica.raft.metrics().borrow_watched().clone();
            // A replica out of service keeps its last view, which may name itself: name no leader
            // rather than send clients to it.
            let in_service = replica.failure().is_none() && metrics.state != ServerState::Shutdown;
            let leader_replica = metrics.current_leader.filter(|_| in_service);
            let leader_node = leader_replica.and_then(|leader| map.replica_node(replica.shard_id, leader));
            if let Some(shard) = map.shard_mut(replica.shard_id) {
                shard.leader = leader_node;
            }
        }
        map
    }

    /// This node's view of its replicas, for `ringkv status`.
    pub fn status(&self) -> pb::StatusResponse {
        let map = self.map.read().expect("map lock").clone();
        let all_replicas = self.all_replicas();
        let quiet_replicas = all_replicas
            .iter()
            .filter(|replica| replica.quiet.quiet.load(std::sync::atomic::Ordering::Acquire))
            .count() as u64;
        let replicas = all_replicas
            .iter()
            .map(|replica| {
                let metrics = replica.raft.metrics().borrow_watched().clone();
                let role = match metrics.state {
                    ServerState::Leader => "leader",
                    ServerState::Follower => "follower",
                    ServerState::Candidate => "candidate",
                    ServerState::Learner => "learner",
                    ServerState::Shutdown => "shutdown",
                };
                let leader_replica_id = metrics.current_leader.map_or(0, |id| id.0);
                let applied = metrics.last_applied.map_or(0, |id| id.index);
                let (lag_entries, lag_ms) = if metrics.state == ServerState::Leader {
                    (0, 0)
                } else {
                    replica.contact.lag(applied)
                };
                let leader_node_id = metrics
                    .current_leader
                    .and_then(|leader| map.replica_node(replica.shard_id, leader))
                    .map_or(0, |node| node.0);
                pb::ReplicaStatus {
                    shard_id: replica.shard_id.0,
                    replica_id: replica.replica_id.0,
                    role: role.into(),
                    term: metrics.current_term,
                    leader_replica_id,
                    leader_node_id,
                    last_log_index: metrics.last_log_index.unwrap_or(0),
                    committed_index: metrics.local_committed.map_or(0, |id| id.index),
                    applied_index: metrics.last_applied.map_or(0, |id| id.index),
                    snapshot_index: metrics.snapshot.map_or(0, |id| id.index),
                    purged_index: metrics.purged.map_or(0, |id| id.index),
                    failure: replica.failure().unwrap_or_default(),
                    lag_entries,
                    lag_ms,
                }
            })
            .collect();
        let stats = self.engine.group_commit_stats();
        pb::StatusResponse {
            node_id: self.node_id().0,
            addr: self.addr.clone(),
            data_dir: self.engine.data_dir().display().to_string(),
            replicas,
            log_appends: stats.appends,
            log_fsyncs: stats.fsyncs,
            // Counted by the Kv service; `NodeSlot::status` fills them in.
            kv_commands: 0,
            kv_command_messages: 0,
            raft_calls: 0,
            raft_call_messages: 0,
            quiet_replicas,
            data_bytes: self.engine.approximate_bytes(),
        }
    }

    /// This node's replica-check digest of `shard_id` at `index`.
    pub fn replica_digest(&self, shard_id: ShardId, index: LogIndex) -> pb::ReplicaDigestResponse {
        use pb::replica_digest_response::State;
        let Some(replica) = self.replica(shard_id) else {
            return pb::ReplicaDigestResponse {
                state: State::Missing.into(),
                ..Default::default()
            };
        };
        let applied = replica
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map_or(0, |id| id.index);
        let (state, digest, keys) = match self.engine.digest(shard_id, index) {
            Some(DigestState::Done { digest, keys }) => (State::Done, digest, keys),
            Some(DigestState::Computing) => (State::Pending, 0, 0),
            Some(DigestState::Failed) => (State::Missing, 0, 0),
            // Not applied yet; or applied without computing it (restarted since, or the index came
            // inside a snapshot).
            None if applied < index && replica.failure().is_none() => (State::Pending, 0, 0),
            None => (State::Missing, 0, 0),
        };
        pb::ReplicaDigestResponse {
            state: state.into(),
            digest,
            keys,
            replica_id: replica.replica_id.0,
        }
    }
}

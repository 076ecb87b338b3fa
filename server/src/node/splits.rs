//! Splitting a shard, online, in place.
//!
//! Process overview (splitting shard P at hash `at` into P and a new shard C):
//! 1. **Begin.** `SplitShard` (an operator's `ringkv shard split`, or the split checker on P's
//!    leader when P grows past `split_size_bytes` or `split_writes_per_sec`) records the split in
//!    the map with one change: the child's id, `at` (the midpoint of P's arc) and one fresh
//!    replica id per voter of P, on the same nodes. A shard that is moving a replica, has
//!    learners joining or is splitting already takes no split (read replicas stay P's).
//! 2. The splitter, a task on the metadata group's leader, asks P's leader (`ChangeReplicas`,
//!    action `SPLIT`) to apply the split its map lists. P's leader proposes a `Split` command;
//!    every replica of P applies it at the same index (`engine/src/split.rs`): P's range ends
//!    before `at`, and C's state is created beside it on the same engine, its log starting
//!    after that index, with no data copied. From then on P answers requests for C's keys with
//!    `WrongShard` (nothing applied), and clients re-route.
//! 3. Once P's leader reports its range ends before `at`, the splitter records the split as
//!    finished: the map gives P the arc below `at` and lists C with the split's replicas.
//! 4. Each node's reconciler starts its replica of C once its own replica of P has applied the
//!    split (a replica that lags starts C later; one that was removed meanwhile gets C's state
//!    from C's leader as a snapshot). C's replicas elect a leader like any group's.
//!
//! A split is never rolled back: step 2 can always be retried once P has a leader, and a retry
//! after the command applied is answered as done. A split proposed twice changes nothing the
//! second time (its `at` is no longer inside P's range).

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;
use tracing::{info, warn};

use ringkv_engine::{Command, NodeId, Proposal, ReplicaNode, ShardId};
use ringkv_map::{MapChange, ShardMap};
use ringkv_proto::pb::ChangeReplicasAction;

use super::host::{Node, ShardReplica};
use super::moves::{ask_leader, record, unix_ms};
use crate::error::ServiceError;

/// How often the splitter looks for splits to drive, besides on every new map.
const SPLITTER_TICK: Duration = Duration::from_secs(1);
/// Pause after a split step that must wait (for a leader, a node).
const STEP_PAUSE: Duration = Duration::from_millis(300);
/// How often a shard leader checks its shards' sizes and write rates.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How often the trimmer looks for replicas holding log entries from before their last split,
/// and how long one snapshot-and-purge may take before it is tried again.
const TRIM_EVERY: Duration = Duration::from_secs(1);
const TRIM_BUDGET: Duration = Duration::from_secs(60);

impl Node {
    /// Serves `SplitShard`: records the split in the map (step 1).
    pub async fn begin_split(
        &self,
        shard_id: ShardId,
        reason: &str,
        budget: Duration,
    ) -> Result<ShardMap, ServiceError> {
        let change = MapChange::SplitShard {
            shard: shard_id,
            reason: reason.to_owned(),
        };
        self.request_map_change(&change, false, budget).await
    }

    /// `ChangeReplicas` action `SPLIT` on the shard's leader (step 2): proposes the split this
    /// node's map lists, unless the replica has applied it already, and waits for it to apply.
    pub(crate) async fn apply_listed_split(&self, replica: &ShardReplica) -> Result<(), ServiceError> {
        let shard_id = replica.shard_id;
        let (split, map_epoch) = {
            let map = self.map.read().expect("map lock");
            (map.split_of(shard_id).cloned(), map.epoch)
        };
        let Some(split) = split else {
            return Err(ServiceError::Unavailable {
                shard_id,
                outcome_unknown: false,
                reason: format!(
                    "not done: this node's shard map (epoch {map_epoch}) lists no split of shard {shard_id}; \
                     it is behind, or the split finished"
                ),
            });
        };
        if replica.range.get().end < split.at {
            return Ok(());
        }
        let replicas = split
            .replicas
            .iter()
            .map(|r| Ok((r.replica_id, self.replica_node_of(r.node_id)?)))
            .collect::<Result<Vec<_>, ServiceError>>()?;
        let proposal = Proposal::internal(Command::Split {
            at: split.at,
            child: split.child,
            replicas,
        });
        replica
            .raft
            .client_write(proposal)
            .await
            .map_err(|error| ServiceError::Unavailable {
                shard_id,
                outcome_unknown: true,
                reason: format!("proposing the split failed: {error}"),
            })?;
        info!(
            %shard_id, child_shard_id = %split.child, at = format_args!("{:#018x}", split.at),
            "split the shard: the child shard owns the upper part of its range"
        );
        Ok(())
    }

    /// The openraft node record of a replica on `node`, from the map.
    fn replica_node_of(&self, node: NodeId) -> Result<ReplicaNode, ServiceError> {
        let map = self.map.read().expect("map lock");
        let info = map.nodes.get(&node).ok_or_else(|| ServiceError::Unavailable {
            shard_id: ShardId::META,
            outcome_unknown: false,
            reason: format!(
                "node {node} is not in this node's shard map (epoch {})",
                map.epoch
            ),
        })?;
        Ok(ReplicaNode {
            node_id: node,
            addr: info.addr.clone(),
            incarnation: info.incarnation,
        })
    }

    /// Makes sure a learner about to be added to the shard `replica` leads starts from a
    /// snapshot taken under the shard's current range, never from older log entries: a replica
    /// replaying entries from before a split would apply them under the shrunk range and answer
    /// some differently from the replicas that applied them before it. So the leader must have
    /// applied every split its map records, then takes a snapshot and purges its log up to it.
    pub(crate) async fn prepare_learner_start(
        &self,
        replica: &ShardReplica,
        budget: Duration,
    ) -> Result<(), ServiceError> {
        let shard_id = replica.shard_id;
        let unavailable = |reason: String| ServiceError::Unavailable {
            shard_id,
            outcome_unknown: false,
            reason,
        };
        let arc = {
            let map = self.map.read().expect("map lock");
            map.shard(shard_id).map(|shard| shard.arc)
        };
        let range = replica.range.get();
        if arc.is_some_and(|arc| arc != range) {
            return Err(unavailable(format!(
                "not done: the leader's replica owns {:#018x}..={:#018x}, not the arc its map records; it has not \
                 applied a split yet",
                range.start, range.end
            )));
        }
        self.snapshot_and_purge(replica, budget).await
    }

    /// Takes a snapshot of what `replica` has applied and purges its log up to it, within
    /// `budget`: a replica that needs what came before then gets the snapshot.
    pub(crate) async fn snapshot_and_purge(
        &self,
        replica: &ShardReplica,
        budget: Duration,
    ) -> Result<(), ServiceError> {
        let shard_id = replica.shard_id;
        let unavailable = |reason: String| ServiceError::Unavailable {
            shard_id,
            outcome_unknown: false,
            reason,
        };
        let started = Instant::now();
        let metrics = replica.raft.metrics();
        let applied = metrics.borrow_watched().last_applied.map_or(0, |id| id.index);
        let snapshot_index = |replica: &ShardReplica| {
            replica
                .raft
                .metrics()
                .borrow_watched()
                .snapshot
                .map_or(0, |id| id.index)
        };
        if snapshot_index(replica) < applied {
            let _ = replica.raft.trigger().snapshot().await;
        }
        while snapshot_index(replica) < applied {
            if started.elapsed() > budget || self.stopping.load(std::sync::atomic::Ordering::Acquire) {
                return Err(unavailable(
                    "the snapshot is still being built (or the node is stopping)".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let upto = snapshot_index(replica);
        let purged = |replica: &ShardReplica| {
            replica
                .raft
                .metrics()
                .borrow_watched()
                .purged
                .map_or(0, |id| id.index)
        };
        if purged(replica) < upto {
            let _ = replica.raft.trigger().purge_log(upto).await;
        }
        while purged(replica) < upto {
            if started.elapsed() > budget || self.stopping.load(std::sync::atomic::Ordering::Acquire) {
                return Err(unavailable(
                    "the log before the snapshot is still being purged (or the node is stopping)".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// Runs the split log trimmer until the node is dropped: every replica that has applied a split
/// (as the parent; a child's log starts after it) snapshots and purges its log up to at least the
/// split's index, soon after. No leader then holds entries from before a split, so a replica that
/// starts empty under the narrowed arc is sent a snapshot taken after it: it refuses older
/// entries (`ShardReplica::floor`), and would wait for the leader's next snapshot otherwise.
pub(crate) fn spawn_split_log_trimmer(node: Weak<Node>) {
    let trimming: Arc<Mutex<std::collections::HashSet<ShardId>>> = Arc::default();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(TRIM_EVERY).await;
            let Some(node) = node.upgrade() else { return };
            if node.stopping.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            if node.engine.test_faults().split_log_trim_paused() {
                continue;
            }
            for replica in node.all_replicas() {
                let since = replica.range.since();
                let purged = replica
                    .raft
                    .metrics()
                    .borrow_watched()
                    .purged
                    .map_or(0, |id| id.index);
                if since <= purged
                    || replica.failure().is_some()
                    || !trimming.lock().expect("trimming lock").insert(replica.shard_id)
                {
                    continue;
                }
                let (node, trimming) = (Arc::downgrade(&node), trimming.clone());
                tokio::spawn(async move {
                    if let Some(node) = node.upgrade()
                        && let Err(error) = node.snapshot_and_purge(&replica, TRIM_BUDGET).await
                        && !node.stopping.load(std::sync::atomic::Ordering::Acquire)
                    {
                        warn!(
                            shard_id = %replica.shard_id, split_index = since, %error,
                            "cannot purge the log from before the shard's last split yet; retrying"
                        );
                    }
                    trimming.lock().expect("trimming lock").remove(&replica.shard_id);
                });
            }
        }
    });
}

/// Runs the splitter until the node is dropped: while this node leads the metadata group, it
/// drives every split the map lists (steps 2 and 3).
pub(crate) fn spawn_splitter(node: Weak<Node>) {
    let Some(mut epochs) = node.upgrade().map(|node| node.map_epoch.subscribe()) else {
        return;
    };
    let driving: Arc<Mutex<std::collections::HashSet<ShardId>>> = Arc::default();
    tokio::spawn(async move {
        loop {
            let _ = tokio::time::timeout(SPLITTER_TICK, epochs.changed()).await;
            let Some(node) = node.upgrade() else { return };
            if node.stopping.load(std::sync::atomic::Ordering::Acquire) || !node.leads_metadata() {
                continue;
            }
            for split in node.shard_map().splits {
                if !driving.lock().expect("driving lock").insert(split.parent) {
                    continue;
                }
                let (node, driving) = (Arc::downgrade(&node), driving.clone());
                tokio::spawn(async move {
                    drive(&node, split.parent).await;
                    driving.lock().expect("driving lock").remove(&split.parent);
                });
            }
        }
    });
}

/// Drives the split of `shard` until the map no longer lists it or this node stops leading the
/// metadata group (whose next leader takes over).
async fn drive(node: &Weak<Node>, shard: ShardId) {
    loop {
        let Some(node) = node.upgrade() else { return };
        if !node.leads_metadata() || node.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let map = node.shard_map();
        let Some(split) = map.split_of(shard).cloned() else {
            return;
        };
        let answer = ask_leader(
            &node,
            &map,
            shard,
            ChangeReplicasAction::ChangeReplicasSplit,
            None,
            None,
        )
        .await;
        let result = match answer {
            Ok(membership) if membership.range_end < split.at => {
                let index = membership.range_since;
                record(&node, &map, |m| m.finish_split(shard, index, unix_ms())).await
            }
            Ok(_) => Ok(false),
            Err(error) => Err(error),
        };
        match result {
            Ok(true) => {}
            Ok(false) => tokio::time::sleep(STEP_PAUSE).await,
            Err(error) => {
                warn!(%shard, child = %split.child, %error, "a split step failed; retrying");
                tokio::time::sleep(STEP_PAUSE).await;
            }
        }
    }
}

/// When a shard splits on its own: past a size, or past a write rate.
#[derive(Debug, Clone, Copy)]
pub struct SplitPolicy {
    /// Split a shard whose data takes more than this many bytes (0: never).
    pub size_bytes: u64,
    /// Split a shard applying more than this many entries per second over a check interval
    /// (0: never).
    pub writes_per_sec: u64,
}

/// Runs the split checker until the node is dropped: every `CHECK_EVERY`, each shard this node
/// leads that is not changing is measured, and one past the policy's size or write rate gets a
/// split recorded in the map (step 1).
pub(crate) fn spawn_split_checker(node: Weak<Node>, policy: SplitPolicy) {
    if policy.size_bytes == 0 && policy.writes_per_sec == 0 {
        return;
    }
    tokio::spawn(async move {
        // Last applied index of each shard at the previous check, for the write rate.
        let mut last: std::collections::HashMap<ShardId, (u64, Instant)> = Default::default();
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let Some(node) = node.upgrade() else { return };
            if node.stopping.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            let map = node.shard_map();
            for replica in node.all_replicas() {
                let shard_id = replica.shard_id;
                let metrics = replica.raft.metrics().borrow_watched().clone();
                let applied = metrics.last_applied.map_or(0, |id| id.index);
                let previous = last.insert(shard_id, (applied, Instant::now()));
                if shard_id.is_meta()
                    || metrics.state != openraft::ServerState::Leader
                    || map.is_changing(shard_id)
                    || map
                        .shard(shard_id)
                        .is_none_or(|shard| shard.learners.len() != map.read_replicas_of(shard_id).len())
                {
                    continue;
                }
                let rate = previous.map_or(0, |(before, at)| {
                    let seconds = at.elapsed().as_secs_f64().max(0.001);
                    (applied.saturating_sub(before) as f64 / seconds) as u64
                });
                let range = replica.range.get();
                let size = if policy.size_bytes > 0 {
                    node.engine
                        .run_blocking(move |engine| engine.approximate_range_bytes(range))
                        .await
                        .unwrap_or(0)
                } else {
                    0
                };
                let reason = if policy.size_bytes > 0 && size > policy.size_bytes {
                    format!(
                        "its data takes about {size} bytes, past split_size_bytes = {}",
                        policy.size_bytes
                    )
                } else if policy.writes_per_sec > 0 && rate > policy.writes_per_sec {
                    format!(
                        "it applies about {rate} entries per second, past split_writes_per_sec = {}",
                        policy.writes_per_sec
                    )
                } else {
                    continue;
                };
                match node.begin_split(shard_id, &reason, node.request_timeout).await {
                    Ok(_) => info!(%shard_id, %reason, "recorded a split of a shard this node leads"),
                    Err(error) => {
                        warn!(%shard_id, %reason, %error, "cannot record the split of a shard; retrying later")
                    }
                }
            }
        }
    });
}

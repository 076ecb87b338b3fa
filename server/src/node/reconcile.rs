//! The reconciler: makes the replicas this node runs match the ones the map places here.
//!
//! On every map the node adopts (and every few seconds, to retry what failed) it compares the
//! replicas the map gives this node with the Raft groups it runs:
//! - a replica the map places here and the node does not run is started: the target of a move
//!   starts empty and waits for its leader to send it the log or a snapshot;
//! - a replica the node runs and the map no longer places here (or places here under another
//!   replica id) is shut down and its state deleted;
//! - a replica whose range overlaps one the node runs waits: a split's child starts only once
//!   the node's replica of the parent has applied the split (see `engine/src/split.rs`).
//!
//! Deleting on the map's word is safe because the map drops a replica only after the shard's own
//! membership without it has committed (a move records `finish_move` after the membership change
//! returns, and a rollback after the learner was removed): by then the shard's quorum no longer
//! counts on it. The replica's own copy of the membership may lag (a removed replica is never told
//! it was removed), so it is not asked.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::{debug, info, warn};

use ringkv_engine::{ReplicaId, ShardId};
use ringkv_map::{NodeState, Shard};

use super::host::{Node, ShardReplica};

/// How often the reconciler runs with no new map: to retry a start or deletion that failed.
const RECONCILE_RETRY: Duration = Duration::from_secs(5);
/// How often it runs while a replica waits for an overlapping one to give up its range.
const OVERLAP_RETRY: Duration = Duration::from_millis(200);

/// Runs the reconciler until the node is dropped.
pub(crate) fn spawn_reconciler(node: Weak<Node>) {
    let Some(mut epochs) = node.upgrade().map(|node| node.map_epoch.subscribe()) else {
        return;
    };
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let Some(node) = node.upgrade() else { return };
            if node.stopping.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            // At start, and after a deletion failed: a replica no longer registered is found
            // only by its stored state.
            if first || node.leftovers.swap(false, std::sync::atomic::Ordering::AcqRel) {
                first = false;
                if !node.delete_leftovers().await {
                    node.leftovers.store(true, std::sync::atomic::Ordering::Release);
                }
            }
            let waiting = node.reconcile().await;
            drop(node);
            let retry = if waiting { OVERLAP_RETRY } else { RECONCILE_RETRY };
            let _ = tokio::time::timeout(retry, epochs.changed()).await;
        }
    });
}

impl Node {
    /// One pass of the reconciler (see the module header). Errors are logged; the next pass
    /// retries. Returns whether a replica waits for an overlapping one.
    pub(crate) async fn reconcile(self: &Arc<Self>) -> bool {
        let _placing = self.placing.lock().await;
        let map = self.map.read().expect("map lock").clone();
        let me = self.node_id();
        let removed = map
            .nodes
            .get(&me)
            .is_some_and(|info| info.state == NodeState::Removed);
        if removed
            && !self
                .removed_logged
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            warn!(
                node_id = %me,
                cluster_id = format_args!("{:016x}", map.cluster_id),
                "this node was removed from the cluster: it holds no replicas and its peers refuse its Raft \
                 messages. Stop it; to use the machine again, start it with a new data directory"
            );
        }
        let wanted: BTreeMap<ShardId, (&Shard, ReplicaId)> = map
            .groups()
            .filter_map(|shard| shard.replica_on(me).map(|r| (shard.id, (shard, r.replica_id))))
            .collect();
        for replica in self.all_replicas() {
            let keep = wanted
                .get(&replica.shard_id)
                .is_some_and(|(_, id)| *id == replica.replica_id);
            if keep {
                continue;
            }
            if let Err(error) = self.remove_replica(&replica, map.epoch).await {
                self.leftovers.store(true, std::sync::atomic::Ordering::Release);
                warn!(
                    shard_id = %replica.shard_id, replica_id = %replica.replica_id, %error,
                    "cannot delete a replica the map no longer places on this node; retrying in {} s",
                    RECONCILE_RETRY.as_secs()
                );
            }
        }
        let mut waiting = false;
        for (shard_id, (shard, replica_id)) in wanted {
            if self.replica(shard_id).is_some() {
                continue;
            }
            if let Some(other) = self.overlapping(shard).await {
                waiting = true;
                // State of a shard this node neither runs nor is given is left over (a replica
                // that moved away before it could start): it must go for this one to start.
                if self.replica(other).is_none()
                    && map.shard(other).is_none_or(|s| s.replica_on(me).is_none())
                {
                    self.leftovers.store(true, std::sync::atomic::Ordering::Release);
                }
                continue;
            }
            match self.open_replica(shard, replica_id).await {
                Ok(()) => info!(
                    %shard_id, %replica_id, epoch = map.epoch,
                    "started a replica the map places on this node"
                ),
                Err(error) => warn!(
                    %shard_id, %replica_id, error = format!("{error:#}"),
                    "cannot start a replica the map places on this node; retrying in {} s",
                    RECONCILE_RETRY.as_secs()
                ),
            }
        }
        waiting
    }

    /// A shard whose range overlaps the one `shard` would start with (its stored range, else its
    /// arc in the map), if any: a replica this node runs, or the stored state of one it does not
    /// run (one that failed to open, or is not started yet). Then `shard` must wait (module
    /// header): a parent replica that has not applied the split still owns the child's keys, and
    /// when it catches up (replaying its log, or installing a snapshot, which first clears its
    /// whole range) it would overwrite or delete what a child started beside it had written.
    pub(crate) async fn overlapping(&self, shard: &Shard) -> Option<ShardId> {
        let shard_id = shard.id;
        // The metadata group's keys live apart from every data shard's.
        if shard_id.is_meta() {
            return None;
        }
        let arc = shard.arc;
        let running: Vec<(ShardId, ringkv_engine::HashRange)> = self
            .all_replicas()
            .iter()
            .map(|replica| (replica.shard_id, replica.range.get()))
            .collect();
        let check_stored = !self.engine.test_faults().overlap_ignores_stored();
        let other = self
            .engine
            .run_blocking(move |engine| {
                let range = engine.range_of(shard_id).ok().flatten().unwrap_or(arc);
                let overlaps = |other: ShardId, theirs: &ringkv_engine::HashRange| {
                    other != shard_id && !other.is_meta() && theirs.overlaps(&range)
                };
                if let Some((other, _)) = running.iter().find(|(other, theirs)| overlaps(*other, theirs)) {
                    return Some(*other);
                }
                if !check_stored {
                    return None;
                }
                // A running replica's stored range can only be narrower than its live one.
                let stored = engine.stored_shards().ok()?;
                stored.into_iter().find(|&other| {
                    !running.iter().any(|(id, _)| *id == other)
                        && engine
                            .range_of(other)
                            .ok()
                            .flatten()
                            .is_some_and(|theirs| overlaps(other, &theirs))
                })
            })
            .await?;
        debug!(
            %shard_id, overlapping_shard_id = %other,
            "a replica waits to start until this node's replica of an overlapping shard gives up the range \
             (a split it has not applied yet)"
        );
        Some(other)
    }

    /// Deletes state stored for shards this node runs no replica of: a replica whose deletion a
    /// crash interrupted, or a move target rolled back while the node was down. Keeps the state of
    /// a replica the map places here that is not running yet: its own (it recorded itself as the
    /// owner, which it does before its first open can fail), or one a split created for it (which
    /// has no owner record until its first open). Returns whether it got through. The reconciler
    /// runs it at start and after a failed deletion; tests call it to run it at a chosen moment.
    pub async fn delete_leftovers(self: &Arc<Self>) -> bool {
        let _placing = self.placing.lock().await;
        let map = self.map.read().expect("map lock").clone();
        let running: Vec<ShardId> = self.all_replicas().iter().map(|r| r.shard_id).collect();
        let me = self.node_id();
        let result = self
            .engine
            .run_blocking(move |engine| -> Result<Vec<ShardId>, ringkv_engine::Error> {
                let mut deleted = Vec::new();
                for shard_id in engine.stored_shards()? {
                    if running.contains(&shard_id) {
                        continue;
                    }
                    let placed_here = map.shard(shard_id).and_then(|shard| shard.replica_on(me));
                    if placed_here.is_some_and(|r| {
                        engine.replica_owner(shard_id).ok().flatten() == Some(r.replica_id)
                            // A split created it for this replica, which has not recorded itself
                            // as the owner yet: its state (the child's half of the data) is kept.
                            || engine.split_born(shard_id, r.replica_id).unwrap_or(true)
                    }) {
                        // Its replica, not started yet: the reconciler starts it.
                        continue;
                    }
                    // Shards are never merged: the shard's arc in the map is the range its data
                    // had (a split keeps the child's half on this node as a replica of its own).
                    let Some(shard) = map.shard(shard_id) else {
                        continue;
                    };
                    let range = shard.arc;
                    engine.retire_replica(shard_id, range)?;
                    deleted.push(shard_id);
                }
                Ok(deleted)
            })
            .await;
        match result {
            Ok(deleted) => {
                if !deleted.is_empty() {
                    info!(shards = ?deleted, "deleted the leftover state of replicas no longer placed on this node");
                }
                true
            }
            Err(error) => {
                warn!(%error, "cannot delete the leftover state of replicas no longer placed on this node; retrying");
                false
            }
        }
    }

    /// Shuts `replica` down and deletes everything stored for it. Tasks of the group that outlive
    /// the shutdown (openraft's state-machine worker, a snapshot build) find their writes refused
    /// from the retirement on, so nothing of the replica is written after its deletion.
    async fn remove_replica(&self, replica: &Arc<ShardReplica>, epoch: u64) -> anyhow::Result<()> {
        self.replicas
            .write()
            .expect("replicas lock")
            .remove(&replica.shard_id);
        if let Err(error) = replica.raft.shutdown().await {
            warn!(shard_id = %replica.shard_id, %error, "a removed replica's group did not shut down cleanly");
        }
        let (shard_id, range) = (replica.shard_id, replica.range.get());
        self.engine
            .run_blocking(move |engine| engine.retire_replica(shard_id, range))
            .await?;
        info!(
            %shard_id, replica_id = %replica.replica_id, epoch,
            "removed a replica the map no longer places on this node and deleted its data"
        );
        Ok(())
    }
}

//! The membership audit: a group's leader removes learners its Raft membership holds and the map
//! does not place.
//!
//! A learner enters a group's membership only for a replica the map lists (a move's target or a
//! read replica, recorded in the map before the mover asks the leader to add it), and the mover
//! takes it out again when the map drops it. One path still leaves a learner behind: a mover on a
//! former metadata leader whose "add the learner" step reaches the group's leader after a
//! rollback removed that learner, while that leader's own map still lists the move (it lags), is
//! let through. Nothing then starts that replica and nothing removes it: the leader replicates to
//! a learner that never answers, for good, and the group's membership no longer matches the map.
//!
//! Process overview, on every node, every `AUDIT_INTERVAL`:
//! 1. For each group it leads with no membership change in flight, it lists the learners of the
//!    committed membership that its map does not place in that group.
//! 2. If there are any, it reads the map linearizably from the metadata group
//!    (`Node::current_map`), and adopts it. A learner that is wanted was recorded in the map
//!    before it was added, so a map read after the learner was seen in the membership lists it
//!    (among the group's learners or, once promoted, its voters). Replica ids are never reused, so
//!    a learner that map does not list is never wanted again.
//! 3. It removes the learners that map does not list either, under the node's lock for
//!    membership changes, if it still leads and they are still learners.
//!
//! A voter the map does not list is only reported: removing a voter changes the group's quorum,
//! which is the mover's alone to do.

use std::collections::BTreeSet;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::{ChangeMembers, ServerState};
use tracing::{debug, warn};

use ringkv_engine::{ReplicaId, ShardId};
use ringkv_map::ShardMap;

use super::host::Node;

/// How often a node audits the memberships of the groups it leads.
const AUDIT_INTERVAL: Duration = Duration::from_secs(5);
/// Budget of the linearizable map read and of each removal.
const AUDIT_BUDGET: Duration = Duration::from_secs(5);

/// Runs the audit until the node is dropped or stops.
pub(crate) fn spawn_membership_audit(node: Weak<Node>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(AUDIT_INTERVAL).await;
            let Some(node) = node.upgrade() else { return };
            if node.stopping.load(Ordering::Acquire) {
                return;
            }
            node.audit_memberships().await;
        }
    });
}

/// The replicas `map` places in group `shard_id`, voters and learners.
fn placed(map: &ShardMap, shard_id: ShardId) -> BTreeSet<ReplicaId> {
    map.groups()
        .filter(|group| group.id == shard_id)
        .flat_map(|group| group.voters.iter().chain(&group.learners))
        .map(|replica| replica.replica_id)
        .collect()
}

impl Node {
    /// One pass of the audit (see the module header).
    pub(crate) async fn audit_memberships(&self) {
        if self.engine.test_faults().keeps_unplaced_learners() {
            return;
        }
        let strays = self.stray_learners();
        if strays.is_empty() {
            return;
        }
        let map = match self.current_map(AUDIT_BUDGET).await {
            Ok(map) => map,
            Err(error) => {
                debug!(
                    %error, groups = ?strays.iter().map(|(shard, _)| *shard).collect::<Vec<_>>(),
                    "groups this node leads hold learners its shard map does not place; cannot read the \
                     current map to check them, retrying in {} s",
                    AUDIT_INTERVAL.as_secs()
                );
                return;
            }
        };
        for (shard_id, learners) in strays {
            let wanted = placed(&map, shard_id);
            let unplaced: BTreeSet<ReplicaId> = learners
                .into_iter()
                .filter(|learner| !wanted.contains(learner))
                .collect();
            if !unplaced.is_empty() {
                self.remove_unplaced_learners(shard_id, unplaced, map.epoch).await;
            }
        }
    }

    /// Step 1: for each group this node leads with no membership change in flight, the learners
    /// of its committed membership that this node's map does not place there.
    fn stray_learners(&self) -> Vec<(ShardId, BTreeSet<ReplicaId>)> {
        let map = self.map.read().expect("map lock").clone();
        let mut strays = Vec::new();
        for replica in self.all_replicas() {
            let metrics = replica.raft.metrics().borrow_watched().clone();
            if metrics.state != ServerState::Leader
                || metrics.membership_config.log_id() != metrics.committed_membership_config.log_id()
            {
                continue;
            }
            let wanted = placed(&map, replica.shard_id);
            let learners: BTreeSet<ReplicaId> = metrics
                .committed_membership_config
                .membership()
                .learner_ids()
                .filter(|learner| !wanted.contains(learner))
                .collect();
            let voters: Vec<ReplicaId> = metrics
                .committed_membership_config
                .membership()
                .voter_ids()
                .filter(|voter| !wanted.contains(voter))
                .collect();
            if !voters.is_empty() {
                debug!(
                    shard_id = %replica.shard_id, ?voters, epoch = map.epoch,
                    "voters of a group this node leads are not in its shard map (a move it has not adopted yet)"
                );
            }
            if !learners.is_empty() {
                strays.push((replica.shard_id, learners));
            }
        }
        strays
    }

    /// Step 3: removes `unplaced` from the learners of `shard_id`, which the map of `epoch`
    /// (read linearizably) does not place.
    async fn remove_unplaced_learners(&self, shard_id: ShardId, unplaced: BTreeSet<ReplicaId>, epoch: u64) {
        let Some(replica) = self.replica(shard_id) else {
            return;
        };
        let _changing = self.membership_changes.lock().await;
        let metrics = replica.raft.metrics().borrow_watched().clone();
        if metrics.state != ServerState::Leader {
            return;
        }
        let learners: BTreeSet<ReplicaId> = metrics
            .membership_config
            .membership()
            .learner_ids()
            .filter(|learner| unplaced.contains(learner))
            .collect();
        if learners.is_empty() {
            return;
        }
        self.wake(&replica, "removing learners the map does not place");
        let removal = replica
            .raft
            .change_membership(ChangeMembers::RemoveNodes(learners.clone()), false);
        match tokio::time::timeout(AUDIT_BUDGET, removal).await {
            Ok(Ok(_)) => warn!(
                %shard_id, ?learners, epoch,
                "removed learners that the shard map does not place: a membership step reached this leader \
                 after the map had moved past it (a mover on a former metadata leader)"
            ),
            Ok(Err(error)) => warn!(
                %shard_id, ?learners, %error,
                "cannot remove learners that the shard map does not place; retrying in {} s",
                AUDIT_INTERVAL.as_secs()
            ),
            Err(_) => warn!(
                %shard_id, ?learners,
                "removing learners that the shard map does not place did not finish within {} ms; \
                 retrying in {} s",
                AUDIT_BUDGET.as_millis(),
                AUDIT_INTERVAL.as_secs()
            ),
        }
    }
}

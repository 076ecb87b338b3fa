//! Moving shard leadership: handing every leadership over before a graceful stop, and the
//! transfer all moves go through.
//!
//! openraft's `transfer_leader` marks the leader as transferring (it refuses writes, pointing
//! clients at the target) and never clears that mark within its term: if the target does not take
//! over — it stopped, or refused — the shard would refuse writes for as long as that leader lasts.
//! So every transfer here is watched: a leader still leading the same term `STUCK_AFTER` later
//! hands over to another caught-up voter instead.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use tokio::time::Instant;
use tracing::{info, warn};

use ringkv_engine::{ReplicaId, ShardId};

use super::host::{Node, ShardReplica};

/// How long a transfer may take before it is considered stuck: well past an election.
const STUCK_AFTER: Duration = Duration::from_secs(3);
/// Transfers tried for one shard by a watchdog before it gives up (the balancer tries again
/// later anyway).
const WATCHDOG_TRIES: u32 = 3;

/// The other voters of the replica's shard with the log index each is known to hold, and the
/// leader's last index (nothing unless this replica leads).
fn voter_progress(replica: &ShardReplica) -> (Vec<(ReplicaId, Option<u64>)>, Option<u64>) {
    let metrics = replica.raft.metrics().borrow_watched().clone();
    if metrics.state != ServerState::Leader {
        return (Vec::new(), None);
    }
    let voters: Vec<ReplicaId> = metrics.membership_config.membership().voter_ids().collect();
    let progress = metrics
        .replication
        .as_ref()
        .into_iter()
        .flatten()
        .filter(|(id, _)| **id != replica.replica_id && voters.contains(id))
        .map(|(id, matched)| (*id, matched.as_ref().map(|m| m.index)))
        .collect();
    (progress, metrics.last_log_index)
}

/// The voters of the replica's shard, other than itself, that have replicated the leader's whole
/// log (empty unless this replica leads).
pub(crate) fn caught_up_voters(replica: &ShardReplica) -> Vec<ReplicaId> {
    let (progress, last) = voter_progress(replica);
    progress
        .into_iter()
        .filter(|(_, matched)| *matched == last)
        .map(|(id, _)| id)
        .collect()
}

/// The voter of the replica's shard, other than itself and `except`, that holds the most of the
/// leader's log (none unless this replica leads). A transfer target need not hold all of it: a
/// transferring leader takes no writes, so the target catches up and then campaigns.
pub(crate) fn most_caught_up_voter(replica: &ShardReplica, except: ReplicaId) -> Option<ReplicaId> {
    let (progress, _) = voter_progress(replica);
    progress
        .into_iter()
        .filter(|(id, _)| *id != except)
        .max_by_key(|(_, matched)| *matched)
        .map(|(id, _)| id)
}

/// Asks `replica` (a leader) to hand its shard to `to`, and watches: while it still leads the
/// same term `STUCK_AFTER` later, it hands over to another caught-up voter (or `to` again).
pub(crate) fn transfer_watched(replica: Arc<ShardReplica>, to: ReplicaId) {
    tokio::spawn(async move {
        let term = replica.raft.metrics().borrow_watched().current_term;
        let mut target = to;
        for _ in 0..WATCHDOG_TRIES {
            if replica.raft.trigger().transfer_leader(target).await.is_err() {
                return;
            }
            tokio::time::sleep(STUCK_AFTER).await;
            let metrics = replica.raft.metrics().borrow_watched().clone();
            if metrics.state != ServerState::Leader || metrics.current_term != term {
                return;
            }
            let others = caught_up_voters(&replica);
            let next = others
                .iter()
                .copied()
                .find(|id| *id != target)
                .or(others.first().copied());
            warn!(
                shard_id = %replica.shard_id,
                stuck_target = %target,
                next_target = ?next,
                "a leadership transfer did not take effect; handing over to another replica"
            );
            match next {
                Some(next) => target = next,
                None => return,
            }
        }
    });
}

impl Node {
    /// Hands every shard this node leads to another caught-up voter, and waits (at most
    /// `timeout`) until it leads none, so a graceful stop costs no election. From now on the node
    /// takes no leadership (it refuses transfers, its balancer stops). Returns how many shards it
    /// still led at the end.
    pub async fn hand_over_leadership(&self, timeout: Duration) -> usize {
        self.stopping.store(true, Ordering::Release);
        let deadline = Instant::now() + timeout;
        // When each shard's last transfer was asked for, and to whom.
        let mut asked: HashMap<ShardId, (ReplicaId, Instant)> = HashMap::new();
        loop {
            let mut leading = 0;
            for replica in self.all_replicas() {
                if replica.raft.metrics().borrow_watched().state != ServerState::Leader {
                    continue;
                }
                leading += 1;
                let previous = asked.get(&replica.shard_id).copied();
                if previous.is_some_and(|(_, at)| at.elapsed() < STUCK_AFTER) {
                    continue;
                }
                let others = caught_up_voters(&replica);
                let tried = previous.map(|(target, _)| target);
                let target = others
                    .iter()
                    .copied()
                    .find(|id| Some(*id) != tried)
                    .or(others.first().copied());
                if let Some(target) = target {
                    let _ = replica.raft.trigger().transfer_leader(target).await;
                    asked.insert(replica.shard_id, (target, Instant::now()));
                }
            }
            if leading == 0 || Instant::now() >= deadline {
                if leading > 0 {
                    warn!(
                        leading,
                        "stopping while still leading some shards: no caught-up replica took over in time"
                    );
                } else {
                    info!("every shard this node led is now led elsewhere");
                }
                return leading;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

//! Moving a replica of a shard from one node to another, online.
//!
//! Process overview (moving replica X of shard S, on node A, to node B):
//! 1. **Begin.** `MoveReplica` (an operator's `ringkv shard move`, later the controller) records
//!    the move in the map with one map change: a fresh replica id Y on B, listed among S's
//!    learners, and the move at step `CatchUp`.
//! 2. B's reconciler sees Y placed on B and starts an empty group for it.
//! 3. The mover, a task on the metadata group's leader, drives every move the map lists. It asks
//!    S's leader (`ChangeReplicas`) to add Y as a learner, then waits until Y holds the log the
//!    leader had when Y was added (sent as entries or as a snapshot).
//! 4. It records step `Promote`, then asks S's leader to make the voters `voters − X + Y`. openraft
//!    goes through the joint configuration and then the new one. If X leads, it first hands
//!    leadership to the voter holding most of the log (the leader balancer passes over X while
//!    the move lasts, so it does not hand it back).
//! 5. Once the new configuration has committed, it records the move as finished: Y replaces X
//!    among S's voters in the map. Clients that still go to A get `NotLeader` or an error and
//!    re-route.
//! 6. A's reconciler sees X gone from the map, shuts X down, and retires and deletes its data.
//!
//! Every step is idempotent and recorded before it is taken, so a mover that starts after a crash
//! (of A, of B, of the metadata leader) goes on from the recorded step, guided by S's committed
//! membership (never by a membership entry that a new leader may still replace): a change
//! already made is reported as done. S's leader checks each learner step against its own map
//! and refuses one the map does not call for, so a stale mover (a former metadata leader) cannot
//! add back a learner that a rollback removed, unless S's leader's own map lags too; a learner
//! left that way is removed by S's leader (`audit`). A move still at `CatchUp` `move_timeout` after
//! this mover took it over is rolled back, whether or not S's leader answers: step `RollBack` is
//! recorded, Y is removed from S's membership, and the move is dropped from the map (B then
//! deletes Y). A move at `Promote` is only ever finished: once the joint configuration may exist,
//! finishing is the way out of it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::ChangeMembers;
use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use tracing::{info, warn};

use ringkv_engine::{NodeId, ReplicaId, ReplicaNode, ShardId};
use ringkv_map::{MapChange, Move, MoveKind, MoveStep, Replica, ShardMap};
use ringkv_proto::pb::{self, ChangeReplicasAction};

use super::host::{Node, ShardReplica};
use super::leadership::{most_caught_up_voter, transfer_watched};
use crate::error::ServiceError;

/// How often the mover looks for moves to drive, besides on every new map.
const MOVER_TICK: Duration = Duration::from_secs(1);
/// Pause between two steps of a move that is waiting (for a catch-up, a leader, a node).
const STEP_PAUSE: Duration = Duration::from_millis(300);
/// Budget of one `ChangeReplicas` call and of one map change.
const STEP_BUDGET: Duration = Duration::from_secs(10);
/// How much longer than `STEP_BUDGET` the mover waits for a node's answer to arrive.
const ANSWER_GRACE: Duration = Duration::from_secs(2);

/// What the shard's leader reported about its membership.
#[derive(Debug)]
pub(crate) struct Membership {
    voters: BTreeSet<ReplicaId>,
    learners: BTreeSet<ReplicaId>,
    joint: bool,
    leader_last_index: u64,
    add_matched_index: u64,
    /// The last hash of the leader's range, and the log index it holds from (its last split's).
    pub range_end: u64,
    pub range_since: u64,
}

impl Membership {
    /// Whether the replica being added holds the leader's whole log as of the last look, within
    /// `CATCH_UP_SLACK` (the leader keeps appending under load, so "equal" may never be seen).
    fn caught_up(&self) -> bool {
        self.add_matched_index > 0
            && self.leader_last_index.saturating_sub(self.add_matched_index) <= CATCH_UP_SLACK
    }
}

impl From<pb::ChangeReplicasResponse> for Membership {
    fn from(response: pb::ChangeReplicasResponse) -> Self {
        Membership {
            voters: response.voters.into_iter().map(ReplicaId).collect(),
            learners: response.learners.into_iter().map(ReplicaId).collect(),
            joint: response.joint,
            leader_last_index: response.leader_last_index,
            add_matched_index: response.add_matched_index,
            range_end: response.range_end,
            range_since: response.range_since,
        }
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Node {
    /// Serves `ChangeReplicas` on the leader of the shard (see the proto for each action).
    pub async fn change_replicas(
        &self,
        shard_id: ShardId,
        action: ChangeReplicasAction,
        add: Option<Replica>,
        remove: ReplicaId,
        budget: Duration,
    ) -> Result<pb::ChangeReplicasResponse, ServiceError> {
        let not_leader = |node: &Node, replica: Option<&ShardReplica>| ServiceError::NotLeader {
            shard_id,
            leader: replica.and_then(|replica| node.leader_addr(replica)),
        };
        let Some(replica) = self.replica(shard_id) else {
            return Err(not_leader(self, None));
        };
        if replica.raft.metrics().borrow_watched().state != ServerState::Leader {
            return Err(not_leader(self, Some(&replica)));
        }
        // One membership step at a time on this node, each checked against the map it holds,
        // so a step the map has moved past (a stale mover's) never lands after the step that
        // replaced it.
        let _changing = self.membership_changes.lock().await;
        self.wake(&replica, "a membership change");
        let unavailable = |reason: String| ServiceError::Unavailable {
            shard_id,
            outcome_unknown: true,
            reason,
        };
        let raft_error =
            |what: &str, error: &dyn std::fmt::Display| unavailable(format!("{what} failed: {error}"));
        let needs_add = || {
            add.ok_or_else(|| ServiceError::InvalidArgument("this action names the replica to add".into()))
        };
        let membership = replica.raft.metrics().borrow_watched().membership_config.clone();
        let membership = membership.membership();
        let call = async {
            match action {
                ChangeReplicasAction::ChangeReplicasQuery => {}
                ChangeReplicasAction::ChangeReplicasSplit => self.apply_listed_split(&replica).await?,
                ChangeReplicasAction::ChangeReplicasAddLearner => {
                    let add = needs_add()?;
                    self.move_listed(shard_id, add.replica_id, MoveStep::CatchUp)?;
                    if membership.get_node(&add.replica_id).is_none() {
                        self.prepare_learner_start(&replica, budget).await?;
                        self.add_learner(&replica, add).await?;
                    }
                }
                ChangeReplicasAction::ChangeReplicasPromote => {
                    let add = needs_add()?;
                    let configs = membership.get_joint_config();
                    let last: BTreeSet<ReplicaId> = configs.last().cloned().unwrap_or_default();
                    // `Replica::NONE` as `add`: the change only removes a voter.
                    let adds = add != Replica::NONE;
                    let target: BTreeSet<ReplicaId> = if configs.len() > 1 {
                        // Interrupted half way: finish the change that was under way.
                        last
                    } else {
                        last.iter()
                            .copied()
                            .filter(|id| *id != remove)
                            .chain(adds.then_some(add.replica_id))
                            .collect()
                    };
                    let done = configs.len() == 1 && configs[0] == target;
                    if !done {
                        if replica.replica_id == remove || !target.contains(&replica.replica_id) {
                            // The leaving replica leads: hand over first, then the new leader
                            // makes the change.
                            let to = most_caught_up_voter(&replica, remove);
                            if let Some(to) = to {
                                transfer_watched(replica.clone(), to);
                            }
                            return Err(ServiceError::Unavailable {
                                shard_id,
                                outcome_unknown: false,
                                reason: format!(
                                    "replica {remove} leaves the shard's voters and leads it: handing leadership to \
                                     {}; the change is made by the next leader",
                                    to.map_or(
                                        "another voter (none is reachable yet)".to_string(),
                                        |to| format!("replica {to}")
                                    )
                                ),
                            });
                        }
                        if adds && membership.get_node(&add.replica_id).is_none() {
                            // The learner's addition was lost (a leader change before it
                            // committed): add it again; the joint configuration then waits for it.
                            self.prepare_learner_start(&replica, budget).await?;
                            self.add_learner(&replica, add).await?;
                        }
                        replica
                            .raft
                            .change_membership(ChangeMembers::ReplaceAllVoters(target.clone()), false)
                            .await
                            .map_err(|error| raft_error("the membership change", &error))?;
                        info!(%shard_id, voters = ?target, "changed the voters");
                    }
                }
                ChangeReplicasAction::ChangeReplicasRemoveLearner => {
                    let add = needs_add()?;
                    if self
                        .move_listed(shard_id, add.replica_id, MoveStep::CatchUp)
                        .is_ok()
                    {
                        return Err(self.map_behind(shard_id, add.replica_id, "rolled back"));
                    }
                    let is_voter = membership.voter_ids().any(|id| id == add.replica_id);
                    if is_voter {
                        return Err(ServiceError::InvalidArgument(format!(
                            "replica {} of shard {shard_id} is a voter, not a learner: it is not removed",
                            add.replica_id
                        )));
                    }
                    if membership.get_node(&add.replica_id).is_some() {
                        replica
                            .raft
                            .change_membership(
                                ChangeMembers::RemoveNodes(BTreeSet::from([add.replica_id])),
                                false,
                            )
                            .await
                            .map_err(|error| raft_error("removing the learner", &error))?;
                        info!(%shard_id, replica_id = %add.replica_id, "removed a learner");
                    }
                }
            }
            Ok::<(), ServiceError>(())
        };
        tokio::time::timeout(budget, call).await.unwrap_or_else(|_| {
            Err(unavailable(format!(
                "the membership step did not finish within {} ms; it may still take effect",
                budget.as_millis()
            )))
        })?;
        // Only what has committed: a membership entry that has not may still be replaced by a
        // new leader, and the mover deletes replicas on what it is told here.
        let metrics = replica.raft.metrics().borrow_watched().clone();
        let membership = metrics.committed_membership_config.membership();
        let add_matched_index = add
            .and_then(|add| {
                metrics
                    .replication
                    .as_ref()
                    .and_then(|peers| peers.get(&add.replica_id).cloned())
            })
            .flatten()
            .map_or(0, |matched| matched.index);
        Ok(pb::ChangeReplicasResponse {
            voters: membership.voter_ids().map(|id| id.0).collect(),
            learners: membership.learner_ids().map(|id| id.0).collect(),
            joint: membership.get_joint_config().len() > 1,
            leader_last_index: metrics.last_log_index.unwrap_or(0),
            add_matched_index,
            // The end first: the index is stored before the end, so it is at least as new.
            range_end: replica.range.get().end,
            range_since: replica.range.since(),
        })
    }

    /// Adds `add` as a learner of the shard `replica` leads, without waiting for it to catch up.
    async fn add_learner(&self, replica: &ShardReplica, add: Replica) -> Result<(), ServiceError> {
        let node = self.replica_node(add.node_id)?;
        replica
            .raft
            .add_learner(add.replica_id, node, false)
            .await
            .map_err(|error| ServiceError::Unavailable {
                shard_id: replica.shard_id,
                outcome_unknown: true,
                reason: format!("adding learner {} failed: {error}", add.replica_id),
            })?;
        info!(
            shard_id = %replica.shard_id, replica_id = %add.replica_id, node_id = %add.node_id,
            "added a learner"
        );
        Ok(())
    }

    /// Ok if this node's map lists the move of `shard` to `replica` at `step`; else says why not.
    fn move_listed(&self, shard: ShardId, replica: ReplicaId, step: MoveStep) -> Result<(), ServiceError> {
        let map = self.map.read().expect("map lock");
        match map.move_of(shard) {
            Some(moving) if moving.to.replica_id == replica && moving.step == step => Ok(()),
            _ => Err(self.map_behind(shard, replica, "added as a learner")),
        }
    }

    /// The refusal of a membership step this node's map does not call for (yet).
    fn map_behind(&self, shard: ShardId, replica: ReplicaId, what: &str) -> ServiceError {
        let map = self.map.read().expect("map lock");
        let listed = map
            .move_of(shard)
            .map_or("no move of the shard".to_string(), |moving| {
                format!(
                    "the move to replica {} at step {:?}",
                    moving.to.replica_id, moving.step
                )
            });
        ServiceError::Unavailable {
            shard_id: shard,
            outcome_unknown: false,
            reason: format!(
                "not done: replica {replica} is to be {what}, but this node's shard map (epoch {}) lists {listed}; \
                 a step the map has not reached yet, or has moved past",
                map.epoch
            ),
        }
    }

    /// The openraft node record of a replica on `node`, from the map.
    fn replica_node(&self, node: NodeId) -> Result<ReplicaNode, ServiceError> {
        let map = self.map.read().expect("map lock");
        let info = map.nodes.get(&node).ok_or_else(|| ServiceError::Unavailable {
            shard_id: ShardId::META,
            outcome_unknown: false,
            reason: format!(
                "node {node} is not in this node's shard map (epoch {}) yet; it joined moments ago",
                map.epoch
            ),
        })?;
        Ok(ReplicaNode {
            node_id: node,
            addr: info.addr.clone(),
            incarnation: info.incarnation,
        })
    }

    /// Serves `MoveReplica`: records the move in the map (step 1).
    pub async fn begin_move(
        &self,
        shard_id: ShardId,
        from: NodeId,
        to: NodeId,
        reason: &str,
        budget: Duration,
    ) -> Result<ShardMap, ServiceError> {
        let change = MapChange::MoveReplica {
            shard: shard_id,
            from,
            to,
            reason: reason.to_owned(),
        };
        self.request_map_change(&change, false, budget).await
    }
}

/// Runs the mover until the node is dropped: while this node leads the metadata group, one task
/// per move the map lists.
pub(crate) fn spawn_mover(node: Weak<Node>, move_timeout: Duration, hold_file: Option<PathBuf>) {
    let Some(mut epochs) = node.upgrade().map(|node| node.map_epoch.subscribe()) else {
        return;
    };
    let driving: Arc<Mutex<HashSet<ShardId>>> = Arc::default();
    tokio::spawn(async move {
        loop {
            let _ = tokio::time::timeout(MOVER_TICK, epochs.changed()).await;
            let Some(node) = node.upgrade() else { return };
            if node.stopping.load(std::sync::atomic::Ordering::Acquire) || !node.leads_metadata() {
                continue;
            }
            for moving in node.shard_map().moves {
                if !driving.lock().expect("driving lock").insert(moving.shard) {
                    continue;
                }
                let (node, driving, hold_file) = (Arc::downgrade(&node), driving.clone(), hold_file.clone());
                tokio::spawn(async move {
                    drive(&node, moving.shard, move_timeout, hold_file.as_deref()).await;
                    driving.lock().expect("driving lock").remove(&moving.shard);
                });
            }
        }
    });
}

impl Node {
    pub(crate) fn leads_metadata(&self) -> bool {
        self.replica(ShardId::META)
            .is_some_and(|replica| replica.raft.metrics().borrow_watched().state == ServerState::Leader)
    }
}

/// Drives the move of `shard` until the map no longer lists it or this node stops leading the
/// metadata group (whose next leader takes over).
async fn drive(node: &Weak<Node>, shard: ShardId, move_timeout: Duration, hold_file: Option<&Path>) {
    // Timed on this node's clock from when it took the move over: no comparison with the clock
    // of the node that began it. A new metadata leader gives a catch-up one more `move_timeout`.
    let driving_since = Instant::now();
    loop {
        let Some(node) = node.upgrade() else { return };
        if !node.leads_metadata() || node.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let map = node.shard_map();
        let Some(moving) = map.move_of(shard).cloned() else {
            return;
        };
        let timed_out = driving_since.elapsed() > move_timeout;
        match step(&node, &map, &moving, timed_out, hold_file).await {
            Ok(true) => {}
            Ok(false) => tokio::time::sleep(STEP_PAUSE).await,
            Err(error) => {
                warn!(
                    shard_id = %shard, from_node = %moving.from.node_id, to_node = %moving.to.node_id,
                    %error, "a replica move step failed; retrying"
                );
                tokio::time::sleep(STEP_PAUSE).await;
            }
        }
    }
}

/// Takes the next step of `moving`. Returns whether it changed something (so the next step can
/// follow at once) or must wait.
async fn step(
    node: &Arc<Node>,
    map: &ShardMap,
    moving: &Move,
    timed_out: bool,
    hold_file: Option<&Path>,
) -> Result<bool, ServiceError> {
    let shard = moving.shard;
    let (from, to) = (moving.from, moving.to);
    match (moving.kind, moving.step) {
        // A read replica leaves: remove the learner, then the move is done.
        (MoveKind::RemoveReadReplica, _) => {
            let membership = ask_leader(
                node,
                map,
                shard,
                ChangeReplicasAction::ChangeReplicasRemoveLearner,
                Some(from),
                None,
            )
            .await?;
            if membership.learners.contains(&from.replica_id) || membership.voters.contains(&from.replica_id)
            {
                return Ok(false);
            }
            return record(node, map, |m| m.finish_move(shard, unix_ms())).await;
        }
        // A read replica joins: added as a learner and caught up, it is one.
        (MoveKind::AddReadReplica, MoveStep::CatchUp) if !timed_out => {
            let membership = ask_leader(
                node,
                map,
                shard,
                ChangeReplicasAction::ChangeReplicasQuery,
                Some(to),
                None,
            )
            .await?;
            if !membership.learners.contains(&to.replica_id) {
                ask_leader(
                    node,
                    map,
                    shard,
                    ChangeReplicasAction::ChangeReplicasAddLearner,
                    Some(to),
                    None,
                )
                .await?;
                return Ok(false);
            }
            if !membership.caught_up() {
                return Ok(false);
            }
            return record(node, map, |m| m.finish_move(shard, unix_ms())).await;
        }
        _ => {}
    }
    match moving.step {
        // A move that only removes a voter has nothing to catch up.
        MoveStep::CatchUp if moving.removes_only() => {
            record(node, map, |m| m.set_move_step(shard, MoveStep::Promote)).await
        }
        MoveStep::CatchUp => {
            if timed_out {
                // Decided without asking the shard's leader, which may be unreachable: the learner
                // is promoted only at step `Promote`, so at `CatchUp` rolling back is always right.
                info!(%shard, to_node = %to.node_id, "a move did not catch up within move_timeout; rolling it back");
                return record(node, map, |m| m.set_move_step(shard, MoveStep::RollBack)).await;
            }
            let membership = ask_leader(
                node,
                map,
                shard,
                ChangeReplicasAction::ChangeReplicasQuery,
                Some(to),
                Some(from),
            )
            .await?;
            if membership.voters.contains(&to.replica_id) {
                // Promoted already (by a mover that crashed before recording it).
                return record(node, map, |m| m.set_move_step(shard, MoveStep::Promote)).await;
            }
            if !membership.learners.contains(&to.replica_id) {
                ask_leader(
                    node,
                    map,
                    shard,
                    ChangeReplicasAction::ChangeReplicasAddLearner,
                    Some(to),
                    Some(from),
                )
                .await?;
                return Ok(false);
            }
            if !membership.caught_up() {
                return Ok(false);
            }
            record(node, map, |m| m.set_move_step(shard, MoveStep::Promote)).await
        }
        MoveStep::Promote => {
            if hold_file.is_some_and(Path::exists) {
                // Tests only: hold the move at this step while the file exists.
                return Ok(false);
            }
            let membership = ask_leader(
                node,
                map,
                shard,
                ChangeReplicasAction::ChangeReplicasPromote,
                Some(to),
                Some(from),
            )
            .await?;
            let done = !membership.joint
                && (moving.removes_only() || membership.voters.contains(&to.replica_id))
                && !membership.voters.contains(&from.replica_id)
                && !membership.learners.contains(&from.replica_id);
            if !done {
                return Ok(false);
            }
            record(node, map, |m| m.finish_move(shard, unix_ms())).await
        }
        MoveStep::RollBack => {
            let membership = ask_leader(
                node,
                map,
                shard,
                ChangeReplicasAction::ChangeReplicasRemoveLearner,
                Some(to),
                Some(from),
            )
            .await?;
            if membership.voters.contains(&to.replica_id) || membership.learners.contains(&to.replica_id) {
                return Ok(false);
            }
            record(node, map, |m| {
                m.abort_move(shard, unix_ms(), "it did not catch up within move_timeout")
            })
            .await
        }
    }
}

/// A learner this many entries behind the leader's last index counts as caught up: the
/// membership change then waits for it to hold its part of the joint configuration's log anyway.
const CATCH_UP_SLACK: u64 = 64;

/// Writes the change `edit` makes to `map`. Returns whether it was written (false: the map moved
/// on meanwhile, and the caller looks again).
pub(crate) async fn record(
    node: &Arc<Node>,
    map: &ShardMap,
    edit: impl FnOnce(&mut ShardMap),
) -> Result<bool, ServiceError> {
    let mut proposed = map.clone();
    edit(&mut proposed);
    let (succeeded, _) = node.propose_map(map.epoch, proposed, STEP_BUDGET).await?;
    Ok(succeeded)
}

/// Sends `action` to the leader of `shard`, found by asking its voters (the map's, and a move's
/// target) in turn and following leader hints. `add` and `remove` name a move's replicas.
pub(crate) async fn ask_leader(
    node: &Arc<Node>,
    map: &ShardMap,
    shard: ShardId,
    action: ChangeReplicasAction,
    add: Option<Replica>,
    remove: Option<Replica>,
) -> Result<Membership, ServiceError> {
    let remove = remove.map_or(ReplicaId(0), |remove| remove.replica_id);
    let group = map
        .shard(shard)
        .ok_or_else(|| ServiceError::InvalidArgument(format!("shard {shard} is gone")))?;
    let mut candidates: Vec<NodeId> = group.voters.iter().map(|r| r.node_id).collect();
    candidates.extend(add.map(|add| add.node_id));
    let addrs: BTreeMap<NodeId, String> = map
        .nodes
        .iter()
        .map(|(id, info)| (*id, info.addr.clone()))
        .collect();
    let mut last = ServiceError::Unavailable {
        shard_id: shard,
        outcome_unknown: false,
        reason: "no replica of the shard answered".into(),
    };
    let mut tried = 0;
    while let Some(target) = candidates.first().copied() {
        candidates.remove(0);
        tried += 1;
        if tried > 6 {
            break;
        }
        let answer = if target == node.node_id() {
            node.change_replicas(shard, action, add, remove, STEP_BUDGET)
                .await
        } else {
            let Some(addr) = addrs.get(&target) else { continue };
            call_change_replicas(addr, shard, action, add, remove).await
        };
        match answer {
            Ok(response) => return Ok(response.into()),
            Err(ServiceError::NotLeader {
                leader: Some((leader, _)),
                ..
            }) if leader != target => {
                candidates.insert(0, leader);
                last = ServiceError::Unavailable {
                    shard_id: shard,
                    outcome_unknown: false,
                    reason: format!("node {target} does not lead the shard"),
                };
            }
            Err(error) => last = error,
        }
    }
    Err(last)
}

async fn call_change_replicas(
    addr: &str,
    shard: ShardId,
    action: ChangeReplicasAction,
    add: Option<Replica>,
    remove: ReplicaId,
) -> Result<pb::ChangeReplicasResponse, ServiceError> {
    let call = async {
        let mut client = super::metadata::connect(addr)
            .await
            .map_err(|error| ServiceError::Unavailable {
                shard_id: shard,
                outcome_unknown: false,
                reason: format!("cannot reach {addr}: {error}"),
            })?;
        let mut request = tonic::Request::new(pb::ChangeReplicasRequest {
            shard_id: shard.0,
            action: action.into(),
            add: add.map(|add| pb::Replica {
                replica_id: add.replica_id.0,
                node_id: add.node_id.0,
            }),
            remove_replica_id: remove.0,
        });
        // The node spends at most this, then answers; the wait below leaves room for the answer.
        request.set_timeout(STEP_BUDGET);
        client
            .change_replicas(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| crate::error::from_status(shard, &status))
    };
    tokio::time::timeout(STEP_BUDGET + ANSWER_GRACE, call)
        .await
        .unwrap_or_else(|_| {
            Err(ServiceError::Unavailable {
                shard_id: shard,
                outcome_unknown: true,
                reason: format!(
                    "{addr} did not answer within {} ms",
                    (STEP_BUDGET + ANSWER_GRACE).as_millis()
                ),
            })
        })
}

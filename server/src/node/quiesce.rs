//! Quiet idle shards, and node-level liveness in their place.
//!
//! openraft runs a timer per group (a tick every ~20 ms that drives heartbeats and the election
//! timeout), so a node hosting a thousand idle shard replicas burns CPU on timers and heartbeats
//! that say nothing new. A quiet replica has its tick off: no timer, no heartbeat, no election
//! timeout. Process overview:
//!
//! 1. **Going quiet.** The node's quiescer looks at the shards it leads every `QUIESCE_CHECK`. A
//!    leader whose shard served no request for `raft.quiesce_after_ms`, whose log is committed and
//!    applied to its last entry, whose membership is not joint, and whose every peer has that last
//!    entry, asks each peer to go quiet (`QuiesceRequest`: its term, its id, its last log index).
//! 2. A peer goes quiet only if it follows that leader in that term and has applied that very
//!    entry; then it turns its tick off and answers yes. When every peer said yes and nothing moved
//!    meanwhile, the leader turns its own tick off. A peer that said no keeps its timer; the leader
//!    keeps heartbeating and asks again later.
//! 3. **Waking.** A replica wakes (tick back on) when:
//!    - a client request reaches it while it leads: writes first renew the leader's lease with one
//!      heartbeat round (a quiet leader's lease has lapsed, and openraft refuses writes without it);
//!    - a Raft message reaches it that is not a heartbeat of the term it went quiet in: entries to
//!      append, a vote or pre-vote request, a leadership transfer, a snapshot, or any message of a
//!      newer term;
//!    - its leader's node is lost or restarted (below), or the node hosting a peer restarted (a
//!      quiet leader then heartbeats, so the restarted replica hears from it before it campaigns).
//! 4. **Node liveness.** Every node sends every peer node a `Pulse` every heartbeat interval, on
//!    the same connection as Raft traffic: its boot id (random per process start) and a generation
//!    that grows whenever one of its replicas goes out of service. A peer not heard from for
//!    `election_timeout_min` is lost: the quiet replicas it leads wake and elect, as they would have
//!    without quiescence. A peer whose boot id or generation changed restarted or lost a replica:
//!    every quiet replica sharing a shard with it wakes.
//!
//! Safety never depends on any of this: Raft's safety holds without timers, and a quiet leader's
//! lease lapses like any other, so it serves no read without a fresh quorum round. Only liveness
//! does: a quiet follower learns of a dead leader from node liveness instead of its own timer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;
use openraft::{LinearizerOption, ServerState};
use tracing::{debug, info};

use ringkv_engine::{NodeId, ReplicaId, ReplicaNode, ShardId};

use super::host::{Node, ShardReplica};
use crate::transport::{Pulse, QuiesceRequest, RaftHeader, Target};

/// How often the quiescer looks for idle shards to quiet.
const QUIESCE_CHECK: Duration = Duration::from_millis(500);

/// What this node knows of one peer's liveness.
#[derive(Debug)]
pub(crate) struct PeerLiveness {
    seen: Option<Pulse>,
    last_heard: Instant,
    lost: bool,
}

impl PeerLiveness {
    pub(crate) fn new(now: Instant) -> PeerLiveness {
        PeerLiveness {
            seen: None,
            last_heard: now,
            lost: false,
        }
    }
}

/// A replica's quiet state, beside its Raft group.
#[derive(Debug, Default)]
pub(crate) struct QuietState {
    /// Whether its tick is off.
    pub(crate) quiet: AtomicBool,
    /// The term it went quiet in: a heartbeat of that term does not wake it.
    pub(crate) term: AtomicU64,
    /// When a client request last reached it, in milliseconds since the node started.
    pub(crate) last_request_ms: AtomicU64,
    /// Set while the quiescer is asking its peers, so it asks once at a time.
    pub(crate) asking: AtomicBool,
}

impl Node {
    /// Milliseconds since this node started: the clock of `QuietState::last_request_ms`.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn pulse(&self) -> Pulse {
        Pulse {
            boot_id: self.boot_id,
            generation: self.generation.load(Ordering::Acquire),
        }
    }

    /// Turns the replica's timer back on if it is quiet. Returns whether it was.
    pub(crate) fn wake(&self, replica: &ShardReplica, why: &str) -> bool {
        if !replica.quiet.quiet.swap(false, Ordering::AcqRel) {
            return false;
        }
        replica.raft.runtime_config().tick(true);
        debug!(shard_id = %replica.shard_id, why, "shard replica woke");
        true
    }

    /// Records a client request for `replica`. If it leads quietly, wakes it and, with
    /// `renew_lease`, renews its lease (one heartbeat round, within `budget`): the lease lapsed
    /// while it was quiet, and openraft refuses writes without one. Reads need no renewal: their
    /// barrier makes the same round when the lease has lapsed.
    pub(crate) async fn activate(&self, replica: &ShardReplica, renew_lease: bool, budget: Duration) {
        replica
            .quiet
            .last_request_ms
            .store(self.now_ms(), Ordering::Release);
        if !replica.quiet.quiet.load(Ordering::Acquire) {
            return;
        }
        let leads = replica.raft.metrics().borrow_watched().state == ServerState::Leader;
        if !leads || !self.wake(replica, "client request") || !renew_lease {
            return;
        }
        // A failure here (no quorum) is the one the request itself meets and reports.
        let _ = tokio::time::timeout(
            budget,
            replica
                .raft
                .ensure_linearizable(LinearizerOption::new(None, true)),
        )
        .await;
    }

    /// A Raft message reached `replica`: wakes it unless the message is a heartbeat (no entries)
    /// of the term it went quiet in.
    pub(crate) fn wake_on_message(&self, replica: &ShardReplica, term: Option<u64>, has_entries: bool) {
        if !replica.quiet.quiet.load(Ordering::Acquire) {
            return;
        }
        let heartbeat_of_quiet_term =
            !has_entries && term == Some(replica.quiet.term.load(Ordering::Acquire));
        if !heartbeat_of_quiet_term {
            self.wake(replica, "Raft message");
        }
    }

    /// Step 2, on a peer: goes quiet if it follows the asking leader in its term and has applied
    /// its last entry.
    pub(crate) fn quiesce_follower(&self, replica: &ShardReplica, request: QuiesceRequest) -> bool {
        let metrics = replica.raft.metrics().borrow_watched().clone();
        let follows = matches!(metrics.state, ServerState::Follower | ServerState::Learner)
            && metrics.current_term == request.term
            && metrics.current_leader == Some(request.leader)
            && metrics.last_log_index == request.last_log_index
            && metrics.last_applied.as_ref().map(|id| id.index) == request.last_log_index;
        if !follows {
            return false;
        }
        replica.quiet.term.store(request.term, Ordering::Release);
        if !replica.quiet.quiet.swap(true, Ordering::AcqRel) {
            replica.raft.runtime_config().tick(false);
        }
        true
    }

    /// A peer's pulse (sent by it, or its answer to ours): wakes what its restart or a change of
    /// its generation concerns.
    pub(crate) fn observe_pulse(&self, peer: NodeId, pulse: Pulse) {
        let changed = {
            let mut peers = self.peers.lock().expect("peers lock");
            let liveness = peers
                .entry(peer)
                .or_insert_with(|| PeerLiveness::new(Instant::now()));
            let changed = liveness.seen.is_some_and(|seen| seen != pulse);
            if liveness.lost {
                info!(peer_node = %peer, "peer node reachable again");
            }
            liveness.seen = Some(pulse);
            liveness.last_heard = Instant::now();
            liveness.lost = false;
            changed
        };
        if changed {
            info!(peer_node = %peer, "peer node restarted or lost a replica: waking the quiet shards it shares");
            self.wake_shared_with(peer, true);
        }
    }

    /// Wakes quiet replicas led from `peer` and, with `leaders`, quiet leaders with a peer there.
    fn wake_shared_with(&self, peer: NodeId, leaders: bool) {
        for replica in self.all_replicas() {
            if !replica.quiet.quiet.load(Ordering::Acquire) {
                continue;
            }
            let metrics = replica.raft.metrics().borrow_watched().clone();
            let membership = metrics.membership_config.membership();
            let concerned = if metrics.state == ServerState::Leader {
                leaders
                    && membership
                        .nodes()
                        .any(|(id, node)| *id != replica.replica_id && node.node_id == peer)
            } else {
                metrics
                    .current_leader
                    .and_then(|leader| membership.get_node(&leader))
                    .is_none_or(|node| node.node_id == peer)
            };
            if concerned {
                self.wake(&replica, "peer node lost or restarted");
            }
        }
    }

    /// Step 1 for one leader: whether it is idle and fully replicated, and if so what to ask.
    fn quiesce_candidate(&self, replica: &ShardReplica, quiesce_after_ms: u64) -> Option<QuiesceRequest> {
        if replica.quiet.quiet.load(Ordering::Acquire)
            || replica.failure().is_some()
            || self
                .now_ms()
                .saturating_sub(replica.quiet.last_request_ms.load(Ordering::Acquire))
                < quiesce_after_ms
        {
            return None;
        }
        let metrics = replica.raft.metrics().borrow_watched().clone();
        let last = metrics.last_log_index;
        let settled = metrics.state == ServerState::Leader
            && metrics.membership_config.membership().get_joint_config().len() == 1
            && metrics.local_committed.as_ref().map(|id| id.index) == last
            && metrics.last_applied.as_ref().map(|id| id.index) == last
            && metrics.replication.as_ref().is_some_and(|peers| {
                peers.iter().all(|(id, matched)| {
                    *id == replica.replica_id || matched.as_ref().map(|m| m.index) == last
                })
            });
        settled.then_some(QuiesceRequest {
            term: metrics.current_term,
            leader: replica.replica_id,
            last_log_index: last,
        })
    }

    /// Steps 1 and 2 for one leader: asks every peer, then goes quiet itself if all agreed and
    /// nothing moved meanwhile.
    async fn quiesce_leader(self: Arc<Self>, replica: Arc<ShardReplica>, request: QuiesceRequest) {
        let asked_at = replica.quiet.last_request_ms.load(Ordering::Acquire);
        let peers: Vec<Target> = {
            let metrics = replica.raft.metrics().borrow_watched().clone();
            metrics
                .membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != replica.replica_id)
                .map(|(id, node)| self.raft_target_of(replica.shard_id, *id, node))
                .collect()
        };
        let asks = peers.iter().map(|target| {
            self.transport
                .quiesce(target, request, self.raft_timeouts.rpc_floor)
        });
        let answers = futures::future::join_all(asks).await;
        let all_agreed = answers.iter().all(|answer| matches!(answer, Ok(true)));
        if all_agreed
            && replica.quiet.last_request_ms.load(Ordering::Acquire) == asked_at
            && self
                .quiesce_candidate(&replica, 0)
                .is_some_and(|now| now.term == request.term && now.last_log_index == request.last_log_index)
        {
            replica.quiet.term.store(request.term, Ordering::Release);
            if !replica.quiet.quiet.swap(true, Ordering::AcqRel) {
                replica.raft.runtime_config().tick(false);
            }
            debug!(shard_id = %replica.shard_id, "shard went quiet");
        }
        replica.quiet.asking.store(false, Ordering::Release);
    }

    /// Where to send a pulse to each peer node of the shard map.
    /// How long `peer` has gone unheard (no pulse answered); `None` if this node never heard it.
    pub(crate) fn heard_from(&self, peer: NodeId) -> Option<Duration> {
        let peers = self.peers.lock().expect("peers lock");
        peers.get(&peer).map(|liveness| liveness.last_heard.elapsed())
    }

    fn peer_targets(&self) -> HashMap<NodeId, Target> {
        let map = self.map.read().expect("map lock");
        map.nodes
            .iter()
            .filter(|(node_id, info)| {
                **node_id != self.identity.node_id && info.state != ringkv_map::NodeState::Removed
            })
            .map(|(node_id, info)| {
                let node = ReplicaNode {
                    node_id: *node_id,
                    addr: info.addr.clone(),
                    incarnation: info.incarnation,
                };
                (*node_id, self.raft_target_of(ShardId(0), ReplicaId(0), &node))
            })
            .collect()
    }

    /// The header and address for a message to replica `replica_id` on `node`.
    pub(crate) fn raft_target_of(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        node: &ReplicaNode,
    ) -> Target {
        Target {
            addr: node.addr.clone(),
            shard_id,
            replica_id,
            header: RaftHeader {
                cluster_id: self.identity.cluster_id,
                from_node: self.identity.node_id,
                from_incarnation: self.identity.incarnation,
                to_node: node.node_id,
                to_incarnation: node.incarnation,
            },
        }
    }
}

/// Runs the quiescer until the node is dropped (no-op when `quiesce_after` is `None`).
pub(crate) fn spawn_quiescer(node: Weak<Node>, quiesce_after: Option<Duration>) {
    let Some(quiesce_after) = quiesce_after else {
        return;
    };
    let quiesce_after_ms = quiesce_after.as_millis() as u64;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(QUIESCE_CHECK).await;
            let Some(node) = node.upgrade() else { return };
            if node.stopping.load(Ordering::Acquire) {
                return;
            }
            for replica in node.all_replicas() {
                let Some(request) = node.quiesce_candidate(&replica, quiesce_after_ms) else {
                    continue;
                };
                if replica.quiet.asking.swap(true, Ordering::AcqRel) {
                    continue;
                }
                tokio::spawn(node.clone().quiesce_leader(replica, request));
            }
        }
    });
}

/// Runs node liveness (step 4) until the node is dropped: a pulse to every peer node every
/// `interval`, and the quiet replicas led from a peer not heard from for `lost_after` woken.
pub(crate) fn spawn_pulses(node: Weak<Node>, interval: Duration, lost_after: Duration) {
    tokio::spawn(async move {
        loop {
            let Some(strong) = node.upgrade() else { return };
            if strong.stopping.load(Ordering::Acquire) {
                return;
            }
            let peers: HashMap<NodeId, Target> = strong.peer_targets();
            for (peer, target) in peers {
                let (weak, pulse) = (node.clone(), strong.pulse());
                let send = strong.transport.pulse(&target, pulse, lost_after);
                tokio::spawn(async move {
                    if let Ok(answer) = send.await
                        && let Some(node) = weak.upgrade()
                    {
                        node.observe_pulse(peer, answer);
                    }
                });
            }
            let now = Instant::now();
            let lost: Vec<NodeId> = {
                let mut peers = strong.peers.lock().expect("peers lock");
                peers
                    .iter_mut()
                    .filter(|(_, liveness)| now.duration_since(liveness.last_heard) >= lost_after)
                    .map(|(peer, liveness)| {
                        if !liveness.lost {
                            liveness.lost = true;
                            info!(
                                peer_node = %peer,
                                silent_ms = now.duration_since(liveness.last_heard).as_millis() as u64,
                                "peer node lost: the quiet shards it leads wake and elect"
                            );
                        }
                        *peer
                    })
                    .collect()
            };
            for peer in lost {
                strong.wake_shared_with(peer, false);
            }
            drop(strong);
            tokio::time::sleep(interval).await;
        }
    });
}

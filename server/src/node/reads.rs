//! Reads at a consistency level chosen per request, and what each level waits for before the
//! replica reads its local state (ARCHITECTURE.md, "Consistency levels"):
//!
//! - `Linearizable`: this replica must lead; it confirms that it still does (lease or ReadIndex)
//!   and waits until it has applied the read index (`Node::linearizable_barrier`).
//! - `ReplicaLinearizable`: any replica asks the leader for its read index (`raft_read_index` on
//!   the leader's node), then waits until it has applied that far.
//! - `Session { min_index }`: waits, briefly, until the replica has applied the session's index
//!   (and, for a replica that started empty after a split, the split's index).
//! - `Bounded { max_staleness }`: serves if the leader answered a read-index request that this
//!   replica sent less than `max_staleness` ago (on this node's clock) with an index the replica
//!   has applied (`FreshnessProofs`): its state then holds every write acknowledged before that
//!   request left. Otherwise it asks now, and waits for the answer and to apply it within the
//!   bound. Heartbeats prove nothing: a replica far behind, or a leader deposed without knowing
//!   it, still sends or gets them. A replica that cannot show freshness refuses (`ReplicaBehind`).
//! - `Eventual`: reads at once.
//!
//! After the read, the response carries the replica's `AppliedBound`: an index at or above the
//! state the read saw, which a session keeps as its token for the shard.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::{LinearizableReadError, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use tokio::sync::oneshot;

use ringkv_engine::{LogIndex, ReplicaId, ShardId, TypeConfig};
use ringkv_proto::pb;

use super::host::{Node, ShardReplica};
use crate::error::ServiceError;
use crate::transport::{RaftHeader, ReadIndexRequest};

/// How long a session read waits for its replica to apply the session's index before answering
/// `ReplicaBehind`, so the client tries a fresher replica instead.
const SESSION_WAIT: Duration = Duration::from_millis(200);
/// Longest wait for the leader's read index on a bounded read: a replica cut off from its leader
/// says so quickly, and the client tries elsewhere within its deadline.
const BOUNDED_PROBE: Duration = Duration::from_millis(500);
/// Leader contacts and freshness proofs remembered per replica: enough that one at or below the
/// applied index is found while applying trails the leader's commits by a few messages.
const CONTACT_SAMPLES: usize = 32;
/// A contact is remembered at most this often (one per heartbeat-sized interval is plenty).
const CONTACT_EVERY: Duration = Duration::from_millis(5);

/// Longest wait for one read-index request to the leader (each read waits at most its own
/// budget for the answer).
const READ_INDEX_ROUND: Duration = Duration::from_secs(2);

/// Reads of one replica waiting for the leader's read index (see `batched_read_index`).
#[derive(Debug, Default)]
pub struct ReadIndexQueue {
    /// Whether a task is sending requests for the waiting reads.
    driving: bool,
    waiting: Vec<oneshot::Sender<Result<LogIndex, ServiceError>>>,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadLevel {
    Linearizable,
    ReplicaLinearizable,
    Session { min_index: LogIndex },
    Bounded { max_staleness: Duration },
    Eventual,
}

impl ReadLevel {
    /// The level a request asks for (absent: linearizable).
    pub fn from_wire(level: Option<&pb::ReadLevel>) -> Result<ReadLevel, ServiceError> {
        let Some(level) = level else {
            return Ok(ReadLevel::Linearizable);
        };
        let consistency = pb::Consistency::try_from(level.consistency).map_err(|_| {
            ServiceError::InvalidArgument(format!(
                "consistency level {} is unknown (this node knows 0 to 4)",
                level.consistency
            ))
        })?;
        Ok(match consistency {
            pb::Consistency::Linearizable => ReadLevel::Linearizable,
            pb::Consistency::ReplicaLinearizable => ReadLevel::ReplicaLinearizable,
            pb::Consistency::Session => ReadLevel::Session {
                min_index: level.min_index,
            },
            pb::Consistency::Bounded => {
                if level.max_staleness_ms == 0 {
                    return Err(ServiceError::InvalidArgument(
                        "a bounded-staleness read needs max_staleness_ms above 0".into(),
                    ));
                }
                ReadLevel::Bounded {
                    max_staleness: Duration::from_millis(level.max_staleness_ms),
                }
            }
            pb::Consistency::Eventual => ReadLevel::Eventual,
        })
    }
}

/// `(index, moment)` pairs, oldest first, each saying that the replica's state holds everything
/// as of `moment` once it has applied `index`. Used for two things of different strength:
/// `LeaderContact` (what leaders' messages showed: an estimate of lag, for status) and
/// `FreshnessProofs` (read indexes the leader gave: what bounded reads rest on).
#[derive(Debug, Default)]
pub struct LeaderContact {
    samples: Mutex<VecDeque<(LogIndex, Instant)>>,
}

/// Read indexes the leader answered to this replica's requests, each with the moment its request
/// left: every write acknowledged before that moment is at or below the index (the leader
/// confirmed with a quorum, or its lease, that it still led after the request arrived).
pub type FreshnessProofs = LeaderContact;

impl LeaderContact {
    /// Records that a message arriving at `at` showed `committed` committed.
    pub(crate) fn record(&self, committed: LogIndex, at: Instant) {
        let mut samples = self.samples.lock().expect("contact lock");
        if let Some(last) = samples.back_mut() {
            if committed < last.0 || at < last.1 {
                return;
            }
            if at.duration_since(last.1) < CONTACT_EVERY && committed == last.0 {
                last.1 = at;
                return;
            }
        }
        if samples.len() == CONTACT_SAMPLES {
            samples.pop_front();
        }
        samples.push_back((committed, at));
    }

    /// How far a replica that has applied `applied` trails its leader: the entries the leader's
    /// last message showed committed that it has not applied, and the milliseconds since its
    /// data was provably current (`fresh_as_of`); `(0, 0)` before any message.
    pub(crate) fn lag(&self, applied: LogIndex) -> (u64, u64) {
        let newest = self.samples.lock().expect("contact lock").back().copied();
        let Some((committed, _)) = newest else {
            return (0, 0);
        };
        let age = self
            .fresh_as_of(applied)
            .map_or(u64::MAX, |at| at.elapsed().as_millis() as u64);
        (committed.saturating_sub(applied), age)
    }

    /// The latest moment at which the leader's commit index was at most `applied`: the replica's
    /// state then held every write the leader had committed at that moment.
    pub(crate) fn fresh_as_of(&self, applied: LogIndex) -> Option<Instant> {
        let samples = self.samples.lock().expect("contact lock");
        samples
            .iter()
            .rev()
            .find(|(committed, _)| *committed <= applied)
            .map(|(_, at)| *at)
    }
}

/// What an AppendEntries said, kept while its entries go to openraft.
pub(crate) struct SentBounds {
    /// The last index the request covers (its last entry, or the entry before none).
    last: LogIndex,
    pub(crate) leader_commit: LogIndex,
}

impl SentBounds {
    pub(crate) fn of(request: &AppendEntriesRequest<TypeConfig>) -> SentBounds {
        let last = request
            .entries
            .last()
            .map(|entry| entry.log_id.index)
            .or(request.prev_log_id.as_ref().map(|id| id.index))
            .unwrap_or(0);
        SentBounds {
            last,
            leader_commit: request.leader_commit.as_ref().map_or(0, |id| id.index),
        }
    }

    /// The commit index the accepted request showed the replica, as far as the replica's log now
    /// matches the leader's. `None` when the replica refused it. This is what bounded reads once
    /// rested on (test switch `bounded_from_heartbeats`): a replica far behind, or a new learner
    /// that heartbeats reach with no previous log id, records a fresh moment for an index it
    /// already holds.
    pub(crate) fn commit_shown(&self, response: &AppendEntriesResponse<TypeConfig>) -> Option<LogIndex> {
        let matched = match response {
            AppendEntriesResponse::Success => self.last,
            AppendEntriesResponse::PartialSuccess(matched) => matched.as_ref().map_or(0, |id| id.index),
            _ => return None,
        };
        Some(self.leader_commit.min(matched))
    }
}

impl Node {
    /// Waits until `replica` may serve a read at `level` (see the module header), at most
    /// `budget`.
    pub async fn read_barrier(
        self: &Arc<Self>,
        replica: &Arc<ShardReplica>,
        level: ReadLevel,
        budget: Duration,
    ) -> Result<(), ServiceError> {
        match level {
            ReadLevel::Linearizable => self.linearizable_barrier(replica, budget).await,
            ReadLevel::Eventual => Ok(()),
            ReadLevel::ReplicaLinearizable => {
                if self.leads(replica) {
                    return self.linearizable_barrier(replica, budget).await;
                }
                let started = Instant::now();
                let index = self.batched_read_index(replica, budget).await?;
                self.wait_applied(replica, index, budget.saturating_sub(started.elapsed()))
                    .await
                    .map_err(|applied| ServiceError::Unavailable {
                        shard_id: replica.shard_id,
                        outcome_unknown: false,
                        reason: format!(
                            "its replica on node {} had applied index {applied} of the leader's read \
                             index {index} when the budget of {} ms ran out",
                            self.node_id(),
                            budget.as_millis()
                        ),
                    })
            }
            ReadLevel::Session { min_index } => self
                .wait_applied(
                    replica,
                    session_index(replica, min_index),
                    budget.min(SESSION_WAIT),
                )
                .await
                .map_err(|applied| ServiceError::ReplicaBehind {
                    shard_id: replica.shard_id,
                    applied_index: applied,
                    reason: format!(
                        "its replica on node {} has applied index {applied}, below the session's {min_index}",
                        self.node_id()
                    ),
                }),
            ReadLevel::Bounded { max_staleness } => {
                self.bounded_barrier(replica, max_staleness, budget).await
            }
        }
    }

    async fn bounded_barrier(
        self: &Arc<Self>,
        replica: &Arc<ShardReplica>,
        max_staleness: Duration,
        budget: Duration,
    ) -> Result<(), ServiceError> {
        if self.leads(replica) {
            // The leader's own state, once it has confirmed it leads: not stale at all.
            return self.linearizable_barrier(replica, budget).await;
        }
        let applied = applied_index(replica);
        if let Some(at) = replica.proofs.fresh_as_of(applied)
            && at.elapsed() <= max_staleness
        {
            // Under a steady stream of reads, ask again before the proof runs out, so reads
            // rarely wait for a round trip.
            if at.elapsed() > max_staleness / 2 {
                self.refresh_freshness(replica);
            }
            return Ok(());
        }
        if self.engine.test_faults().bounded_from_heartbeats()
            && let Some(at) = replica.contact.fresh_as_of(applied)
            && at.elapsed() <= max_staleness
        {
            return Ok(());
        }
        // Nothing recent enough: ask the leader. Its answer holds every write acknowledged
        // before the moment of asking, which is then how old the data is.
        let asked = Instant::now();
        let probe = budget.min(BOUNDED_PROBE).min(max_staleness);
        let behind = |reason: String| ServiceError::ReplicaBehind {
            shard_id: replica.shard_id,
            applied_index: applied_index(replica),
            reason,
        };
        let index = self.batched_read_index(replica, probe).await.map_err(|error| {
            behind(format!(
                "its replica on node {} cannot show its data is at most {} ms old: asking the leader \
                 for its read index failed ({error})",
                self.node_id(),
                max_staleness.as_millis()
            ))
        })?;
        let remaining = max_staleness
            .saturating_sub(asked.elapsed())
            .min(budget.saturating_sub(asked.elapsed()));
        self.wait_applied(replica, index, remaining)
            .await
            .map_err(|applied| {
                behind(format!(
                    "its replica on node {} had applied index {applied}, below the leader's {index}, \
                     when its data became older than {} ms",
                    self.node_id(),
                    max_staleness.as_millis()
                ))
            })
    }

    /// Asks the leader for a read index in the background, unless a request is in flight: its
    /// answer becomes a new freshness proof.
    fn refresh_freshness(self: &Arc<Self>, replica: &Arc<ShardReplica>) {
        if replica.read_index.lock().expect("read index queue lock").driving {
            return;
        }
        let (node, replica) = (self.clone(), replica.clone());
        tokio::spawn(async move {
            let _ = node.batched_read_index(&replica, READ_INDEX_ROUND).await;
        });
    }

    /// Whether `replica` leads its shard now, as far as it knows.
    fn leads(&self, replica: &ShardReplica) -> bool {
        replica.raft.metrics().borrow_watched().state == openraft::ServerState::Leader
    }

    /// The leader's read index for a read that arrived now, within `budget`. Concurrent reads of
    /// one replica share requests: a read joins the batch of the next request to leave, which
    /// leaves only after it joined, so the index it gets was given after the read arrived (every
    /// write acknowledged before then is at or below it). At most one request per replica is in
    /// flight; under load each carries every read that arrived while the previous one was out.
    async fn batched_read_index(
        self: &Arc<Self>,
        replica: &Arc<ShardReplica>,
        budget: Duration,
    ) -> Result<LogIndex, ServiceError> {
        let (sender, receiver) = oneshot::channel();
        let start_driver = {
            let mut queue = replica.read_index.lock().expect("read index queue lock");
            queue.waiting.push(sender);
            !std::mem::replace(&mut queue.driving, true)
        };
        if start_driver {
            let (node, replica) = (self.clone(), replica.clone());
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut queue = replica.read_index.lock().expect("read index queue lock");
                        if queue.waiting.is_empty() {
                            queue.driving = false;
                            return;
                        }
                        std::mem::take(&mut queue.waiting)
                    };
                    let sent = Instant::now();
                    let answer = node.leader_read_index(&replica, READ_INDEX_ROUND).await;
                    if let Ok(index) = answer {
                        replica.proofs.record(index, sent);
                    }
                    for waiter in batch {
                        let _ = waiter.send(answer.clone());
                    }
                }
            });
        }
        match tokio::time::timeout(budget, receiver).await {
            Ok(Ok(answer)) => answer,
            _ => Err(ServiceError::Unavailable {
                shard_id: replica.shard_id,
                outcome_unknown: false,
                reason: format!(
                    "its replica on node {} got no read index from the leader within {} ms",
                    self.node_id(),
                    budget.as_millis()
                ),
            }),
        }
    }

    /// Asks the shard's leader (as this replica knows it) for a read index, within `budget`.
    async fn leader_read_index(
        &self,
        replica: &ShardReplica,
        budget: Duration,
    ) -> Result<LogIndex, ServiceError> {
        let shard_id = replica.shard_id;
        let metrics = replica.raft.metrics().borrow_watched().clone();
        let unavailable = |reason: String| ServiceError::Unavailable {
            shard_id,
            outcome_unknown: false,
            reason,
        };
        let leader = metrics.current_leader.ok_or_else(|| {
            unavailable(format!(
                "its replica on node {} knows no leader to ask for a read index",
                self.node_id()
            ))
        })?;
        let node = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()
            .ok_or_else(|| unavailable(format!("leader replica {leader} is not in the membership")))?;
        let target = self.raft_target_of(shard_id, leader, &node);
        let request = ReadIndexRequest {
            budget_ms: budget.as_millis() as u64,
        };
        self.transport
            .read_index(&target, request, budget)
            .await
            .map_err(|error| {
                unavailable(format!(
                    "the leader on node {} did not give a read index: {error}",
                    node.node_id
                ))
            })
    }

    /// Waits until `replica` has applied `index`, at most `budget`; on timeout, what it had
    /// applied.
    async fn wait_applied(
        &self,
        replica: &ShardReplica,
        index: LogIndex,
        budget: Duration,
    ) -> Result<(), LogIndex> {
        if applied_index(replica) >= index {
            return Ok(());
        }
        let mut metrics = replica.raft.metrics();
        let reached = tokio::time::timeout(budget, async {
            loop {
                if metrics.borrow_watched().last_applied.map_or(0, |id| id.index) >= index {
                    return true;
                }
                if metrics.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        match reached {
            Ok(true) => Ok(()),
            _ => Err(applied_index(replica)),
        }
    }

    /// A replica of this node asks for a read index, believing the local replica leads: it
    /// confirms it does (as for its own linearizable reads) and answers the index a replica must
    /// apply to hold every write acknowledged so far.
    pub async fn raft_read_index(
        &self,
        header: &RaftHeader,
        shard_id: ShardId,
        replica_id: ReplicaId,
        request: ReadIndexRequest,
    ) -> Result<LogIndex, String> {
        let replica = self.raft_target(header, shard_id, replica_id)?;
        let budget = self.budget(Some(Duration::from_millis(request.budget_ms)));
        self.activate(&replica, false, budget).await;
        let linearizer = tokio::time::timeout(budget, replica.raft.get_read_linearizer(self.read_option()))
            .await
            .map_err(|_| {
                format!(
                    "leadership of shard {shard_id} not confirmed within {} ms",
                    budget.as_millis()
                )
            })?;
        match linearizer {
            Ok(linearizer) => Ok(linearizer.read_log_id().index()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => Err(format!(
                "replica {replica_id} of shard {shard_id} on node {} does not lead it",
                self.node_id()
            )),
            Err(error) => Err(format!("cannot confirm leadership of shard {shard_id}: {error}")),
        }
    }
}

/// The index a replica must have applied to serve a session read with token `min_index`: the
/// token, and for a replica that started empty under an arc a split shrank (a new learner of a
/// split child), that split's index too, since any state it applies later is at least that new.
/// A session that knows nothing of the shard (token 0) asks for nothing.
fn session_index(replica: &ShardReplica, min_index: LogIndex) -> LogIndex {
    if min_index == 0 {
        0
    } else {
        min_index.max(replica.floor)
    }
}

/// What openraft reports the replica has applied (its data is visible by then).
fn applied_index(replica: &ShardReplica) -> LogIndex {
    replica
        .raft
        .metrics()
        .borrow_watched()
        .last_applied
        .map_or(0, |id| id.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_freshest_contact_at_or_below_the_applied_index_counts() {
        let contact = LeaderContact::default();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(contact.fresh_as_of(100), None, "no contact yet");
        contact.record(10, at(0));
        contact.record(20, at(100));
        contact.record(30, at(200));
        // Applied 25: the leader had committed 20 at 100 ms, which the replica holds.
        assert_eq!(contact.fresh_as_of(25), Some(at(100)));
        assert_eq!(contact.fresh_as_of(30), Some(at(200)));
        assert_eq!(contact.fresh_as_of(9), None, "behind every contact");
        // Out-of-order and going-back samples are ignored; a repeat refreshes the moment.
        contact.record(25, at(300));
        contact.record(30, at(301));
        assert_eq!(contact.fresh_as_of(30), Some(at(301)));
        assert_eq!(contact.fresh_as_of(29), Some(at(100)));
        // Bounded memory: old samples go first.
        for i in 0..100 {
            contact.record(100 + i, at(1_000 + 10 * i));
        }
        assert_eq!(contact.fresh_as_of(30), None, "forgotten");
        assert_eq!(contact.fresh_as_of(199), Some(at(1_990)));
    }
}

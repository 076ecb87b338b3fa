//! Serving client requests on a node: which local replica serves a key, proposing writes, the
//! linearizable read barrier, reads of the local engine, and what each failure means to a client
//! (not applied, or outcome unknown).
//!
//! Every wait is bounded by the request's budget (the client's remaining deadline, sent as
//! `ringkv-budget-ms`, capped by the node's `request_timeout`).

use std::sync::Arc;
use std::time::Duration;

use openraft::LinearizerOption;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::{ClientWriteError, ForwardReason, LinearizableReadError, RaftError};
use tokio::sync::watch;
use tracing::debug;

use ringkv_engine::{
    CommandResult, Error as EngineError, HashRange, LogIndex, NodeId, Proposal, ReplicaNode, ScanPage,
    ShardId, Versioned,
};
use ringkv_proto::pb;

use super::host::{Applied, Node, ShardReplica, WriteOutcome};
use crate::error::ServiceError;

/// How long a proposal may stay unanswered before the node stops waiting for it, whatever the
/// budgets of the attempts that wait on it. Far above any request deadline: it only bounds the
/// memory of proposals nobody waits for any more.
const PROPOSAL_LIFETIME: Duration = Duration::from_secs(120);

impl Node {
    /// The budget of a request: what the client allows, capped by the node's own timeout.
    pub fn budget(&self, client_budget: Option<Duration>) -> Duration {
        client_budget.map_or(self.request_timeout, |budget| budget.min(self.request_timeout))
    }

    /// Finds the local replica that must serve a request for `key` routed by the client to
    /// `route`, or says why this node cannot serve it.
    ///
    /// Only the shard matters: a client whose map is older but names the right shard is served
    /// (the map also changes for reasons that move no key, and the shard's own Raft group decides
    /// who leads it).
    pub fn route(
        &self,
        route: Option<&pb::RouteHeader>,
        key: &[u8],
    ) -> Result<Arc<ShardReplica>, ServiceError> {
        ringkv_proto::check_key(key)?;
        let (shard_id, epoch) = {
            let map = self.map.read().expect("map lock");
            (map.shard_for_key(key).id, map.epoch)
        };
        if let Some(route) = route
            && route.shard_id != shard_id.0
        {
            return Err(ServiceError::WrongShard {
                shard_id,
                map_epoch: epoch,
            });
        }
        self.serving_replica(shard_id)
    }

    /// Finds the local replica of a shard named by id (scans), or says why it cannot be served.
    ///
    /// A client whose map is older than this node's is sent to refresh it: a scan walks the arc
    /// of the client's map, which a newer map may have cut.
    pub fn route_shard(&self, route: Option<&pb::RouteHeader>) -> Result<Arc<ShardReplica>, ServiceError> {
        let route =
            route.ok_or_else(|| ServiceError::InvalidArgument("request has no route header".into()))?;
        let shard_id = ShardId(route.shard_id);
        let (known, epoch) = {
            let map = self.map.read().expect("map lock");
            (map.shard(shard_id).is_some() && !shard_id.is_meta(), map.epoch)
        };
        if !known || (route.map_epoch != 0 && route.map_epoch < epoch) {
            return Err(ServiceError::WrongShard {
                shard_id,
                map_epoch: epoch,
            });
        }
        self.serving_replica(shard_id)
    }

    fn serving_replica(&self, shard_id: ShardId) -> Result<Arc<ShardReplica>, ServiceError> {
        let replica = self.replica(shard_id).ok_or(ServiceError::NotLeader {
            shard_id,
            leader: None,
        })?;
        if let Some(failure) = replica.failure() {
            return Err(ServiceError::Unavailable {
                shard_id,
                outcome_unknown: false,
                reason: format!(
                    "its replica on node {} is out of service ({failure}); try its other replicas",
                    self.node_id()
                ),
            });
        }
        Ok(replica)
    }

    /// Proposes `proposal` to the replica's group and waits (at most `budget`) for it to be
    /// applied. A proposal carrying a request id that is already in flight here is not proposed
    /// again: this attempt waits for the first one's outcome.
    pub async fn write(
        &self,
        replica: &Arc<ShardReplica>,
        proposal: Proposal,
        budget: Duration,
    ) -> Result<Applied, ServiceError> {
        let started = std::time::Instant::now();
        self.activate(replica, true, budget).await;
        let result = self
            .write_once(
                replica,
                proposal.clone(),
                budget.saturating_sub(started.elapsed()),
            )
            .await;
        if !matches!(result, Err(ServiceError::LeaseLapsed { .. })) {
            return result;
        }
        // The leader's lease lapsed (no quorum answered its messages in time: a starved machine, a
        // slow link) though nobody else leads, and openraft refused the entry before appending it.
        // Renew the lease with one quorum round within the budget and propose again; if the round
        // does not finish in time, nothing was appended: the refusal stands, as "not applied".
        let remaining = budget.saturating_sub(started.elapsed());
        let renewal = replica
            .raft
            .ensure_linearizable(LinearizerOption::new(None, true).with_wait_timeout(remaining));
        match tokio::time::timeout(remaining, renewal).await {
            Ok(Ok(_)) => {
                self.write_once(replica, proposal, budget.saturating_sub(started.elapsed()))
                    .await
            }
            _ => result,
        }
    }

    /// One proposal of `write`, waited for at most `budget`.
    async fn write_once(
        &self,
        replica: &Arc<ShardReplica>,
        proposal: Proposal,
        budget: Duration,
    ) -> Result<Applied, ServiceError> {
        let shard_id = replica.shard_id;
        let mut outcome = match proposal.request {
            Some(request) => {
                let key = (shard_id, request);
                let existing = self.inflight.lock().expect("inflight lock").get(&key).cloned();
                match existing {
                    // Joined only while this node still leads: a proposal left on a deposed
                    // leader may wait long, and this attempt is better off at the new leader.
                    Some(outcome) => match self.not_leading(replica) {
                        Some(not_leader) => return Err(not_leader),
                        None => outcome,
                    },
                    None => self.propose(replica, proposal, Some(key)),
                }
            }
            None => self.propose(replica, proposal, None),
        };
        let waited = tokio::time::timeout(budget, outcome.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(done)) => match done.clone().expect("waited for Some") {
                Ok(Applied {
                    result: CommandResult::Refused { reason },
                    ..
                }) => Err(ServiceError::Unavailable {
                    shard_id,
                    outcome_unknown: true,
                    reason,
                }),
                // Certainly not applied: a split gave the key to another shard.
                Ok(Applied {
                    result: CommandResult::NotInShard,
                    ..
                }) => Err(self.moved_by_split(shard_id)),
                other => other,
            },
            Ok(Err(_)) => Err(ServiceError::Unavailable {
                shard_id,
                outcome_unknown: true,
                reason: "the node stopped waiting for the write; it may or may not apply".into(),
            }),
            Err(_) => Err(ServiceError::Unavailable {
                shard_id,
                outcome_unknown: true,
                reason: format!(
                    "the write did not commit within {} ms (no quorum, or an overloaded shard); it may \
                     still apply, and a retry with the same request id is safe",
                    budget.as_millis()
                ),
            }),
        }
    }

    /// The answer to a request for a key a split took from `shard_id`: the client refreshes its
    /// map (which may not list the split's child for a moment yet) and tries again.
    pub(crate) fn moved_by_split(&self, shard_id: ShardId) -> ServiceError {
        ServiceError::WrongShard {
            shard_id,
            map_epoch: self.map.read().expect("map lock").epoch,
        }
    }

    /// `NotLeader` (with the leader this node knows, if any) when the replica does not lead now.
    fn not_leading(&self, replica: &ShardReplica) -> Option<ServiceError> {
        let metrics = replica.raft.metrics().borrow_watched().clone();
        if metrics.state == openraft::ServerState::Leader {
            return None;
        }
        let leader = metrics.current_leader.and_then(|leader| {
            let map = self.map.read().expect("map lock");
            let node = map.replica_node(replica.shard_id, leader)?;
            Some((node, map.node_addr(node)?.to_owned()))
        });
        Some(ServiceError::NotLeader {
            shard_id: replica.shard_id,
            leader,
        })
    }

    /// Starts a proposal in a task of its own, so it runs to its end even when the attempt that
    /// started it gives up; returns where its outcome will appear.
    fn propose(
        &self,
        replica: &Arc<ShardReplica>,
        proposal: Proposal,
        key: Option<(ShardId, ringkv_engine::RequestId)>,
    ) -> watch::Receiver<WriteOutcome> {
        let (sender, receiver) = watch::channel(None);
        if let Some(key) = key {
            self.inflight
                .lock()
                .expect("inflight lock")
                .insert(key, receiver.clone());
        }
        let replica = replica.clone();
        // The task removes its own entry when done; the map lives as long as the node.
        let inflight = Arc::downgrade(&self.inflight);
        let node_id = self.node_id();
        tokio::spawn(async move {
            let shard_id = replica.shard_id;
            let result =
                match tokio::time::timeout(PROPOSAL_LIFETIME, replica.raft.client_write(proposal)).await {
                    Ok(result) => write_outcome(node_id, shard_id, result),
                    Err(_) => Err(ServiceError::Unavailable {
                        shard_id,
                        outcome_unknown: true,
                        reason: "the write was not answered in time; it may or may not apply".into(),
                    }),
                };
            if let Some(key) = key
                && let Some(inflight) = inflight.upgrade()
            {
                inflight.lock().expect("inflight lock").remove(&key);
            }
            let _ = sender.send(Some(result));
        });
        receiver
    }

    /// Waits until a read of the replica's local state is linearizable: the leader knows it still
    /// leads, and its state machine has caught up to the read index.
    ///
    /// It knows it leads without asking anyone while its lease holds (a quorum acknowledged one of
    /// its messages sent less than `leader_lease` ago: until then those followers refuse to vote
    /// for anyone else); otherwise it asks (ReadIndex: a heartbeat round to a quorum). The lease
    /// assumes the nodes' monotonic clocks run at the same rate (not that they agree), as
    /// openraft's does; a follower restarting inside a lease is held to it by
    /// `ShardReplica::votes_from`.
    pub async fn linearizable_barrier(
        &self,
        replica: &ShardReplica,
        budget: Duration,
    ) -> Result<(), ServiceError> {
        let shard_id = replica.shard_id;
        self.activate(replica, false, budget).await;
        match tokio::time::timeout(budget, replica.raft.ensure_linearizable(self.read_option())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(forward)))) => {
                Err(ServiceError::NotLeader {
                    shard_id,
                    leader: leader_of(forward.leader_node),
                })
            }
            Ok(Err(error)) => Err(ServiceError::Unavailable {
                shard_id,
                outcome_unknown: false,
                reason: format!("cannot confirm leadership for a linearizable read: {error}"),
            }),
            Err(_) => Err(ServiceError::Unavailable {
                shard_id,
                outcome_unknown: false,
                reason: format!("leadership not confirmed within {} ms", budget.as_millis()),
            }),
        }
    }

    /// How a linearizable read confirms leadership: on the lease while it holds (None: the
    /// configured lease), or with a quorum round for every read (`raft.lease_reads = false`).
    pub(crate) fn read_option(&self) -> LinearizerOption {
        let max_age = (!self.lease_reads).then_some(Duration::ZERO);
        LinearizerOption::new(max_age, true)
    }

    /// Reads `key` from the local engine: here if the memtables or the block cache hold the
    /// answer (no I/O, and no hand-off to another thread, which costs more than such a read), off
    /// the runtime threads if it is on disk. A storage fault takes the replica, or the node, out
    /// of service.
    pub async fn read_key(
        &self,
        replica: &Arc<ShardReplica>,
        key: Vec<u8>,
    ) -> Result<Option<Versioned>, ServiceError> {
        let result = match self.engine.get_if_cached(&key) {
            Ok(Some(found)) => Ok(found),
            Ok(None) => self.engine.run_blocking(move |engine| engine.get(&key)).await,
            Err(error) => Err(error),
        };
        result.map_err(|error| self.storage_fault(replica, error))
    }

    /// A page of `range`, the replica's range (off the runtime threads).
    pub async fn scan(
        &self,
        replica: &Arc<ShardReplica>,
        range: HashRange,
        cursor: Vec<u8>,
        prefix: Vec<u8>,
        limit: usize,
    ) -> Result<ScanPage, ServiceError> {
        let result = self
            .engine
            .run_blocking(move |engine| engine.scan(range, &cursor, &prefix, limit))
            .await;
        result.map_err(|error| self.storage_fault(replica, error))
    }

    /// Proposes a replica-check digest on the shard this node leads; returns the log index at
    /// which every replica computes it.
    pub async fn propose_digest(&self, shard_id: ShardId) -> Result<LogIndex, ServiceError> {
        let replica = self.serving_replica(shard_id)?;
        self.activate(&replica, true, self.request_timeout).await;
        let proposal = Proposal::internal(ringkv_engine::Command::Digest);
        match tokio::time::timeout(self.request_timeout, replica.raft.client_write(proposal)).await {
            Ok(Ok(response)) => Ok(response.log_id.index),
            Ok(Err(error)) => Err(write_outcome(self.node_id(), shard_id, Err(error)).expect_err("an error")),
            Err(_) => Err(ServiceError::Unavailable {
                shard_id,
                outcome_unknown: true,
                reason: "the digest command did not commit in time".into(),
            }),
        }
    }

    /// Turns an engine error met while serving `replica` into the client's answer, taking the
    /// replica (corruption, a failed read) or the whole node (a failed write or fsync) out of
    /// service first when the error is a local fault.
    pub fn storage_fault(&self, replica: &Arc<ShardReplica>, error: EngineError) -> ServiceError {
        if error.is_fatal() {
            let reason = error.to_string();
            match error {
                EngineError::Poisoned(_) | EngineError::Write(_) => self.fail_all_replicas(&reason),
                _ => self.fail_replica(replica, &reason),
            }
            debug!(shard_id = %replica.shard_id, "request failed on a storage fault");
        }
        ServiceError::Unavailable {
            shard_id: replica.shard_id,
            outcome_unknown: false,
            reason: format!("storage fault on node {}: {error}", self.node_id()),
        }
    }
}

type ClientWriteResult = Result<
    openraft::raft::ClientWriteResponse<ringkv_engine::TypeConfig>,
    RaftError<ringkv_engine::TypeConfig, ClientWriteError<ringkv_engine::TypeConfig>>,
>;

/// What `client_write`'s result means to the client.
fn write_outcome(
    node_id: NodeId,
    shard_id: ShardId,
    result: ClientWriteResult,
) -> Result<Applied, ServiceError> {
    match result {
        Ok(response) => Ok(Applied {
            result: response.data,
            index: response.log_id.index,
        }),
        // Refused before its entry was appended, by a leader whose lease lapsed: certainly not
        // applied. Not `NotLeader`: this node still leads (`write` renews the lease and retries).
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))
            if forward.reason == ForwardReason::LeaseExpired =>
        {
            Err(ServiceError::LeaseLapsed { shard_id, node_id })
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            Err(ServiceError::NotLeader {
                shard_id,
                leader: leader_of(forward.leader_node),
            })
        }
        Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => Err(ServiceError::Unavailable {
            shard_id,
            outcome_unknown: true,
            reason:
                "the leader lost leadership before the write committed; it may or may not have been applied"
                    .into(),
        }),
        Err(error) => Err(ServiceError::Unavailable {
            shard_id,
            outcome_unknown: true,
            reason: format!("the shard's Raft group failed: {error}"),
        }),
    }
}

pub(crate) fn leader_of(node: Option<ReplicaNode>) -> Option<(NodeId, String)> {
    node.map(|node| (node.node_id, node.addr))
}

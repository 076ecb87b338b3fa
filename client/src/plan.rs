//! Request plans. A request is routed to its shard's leader, sent, and on a failed attempt the
//! plan acts on what the failure means (`classify`): follow a leader hint at once, refresh the
//! shard map, or back off with jitter, until success or the request's deadline. A batch across
//! shards is split per shard, each part run as its own plan, and the parts' typed outcomes merged.
//!
//! Every wait inside a request fits in what remains of its deadline: each attempt (connection
//! setup included), each map refresh, each backoff. An attempt tells the node its budget (the
//! command's `budget_ms`, or `ringkv-budget-ms` on a unary call) and waits a little longer than
//! that (`ANSWER_GRACE`) for the node's own answer, so the client usually learns whether a write
//! was proposed instead of timing out blind.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use tonic::metadata::MetadataValue;
use tracing::debug;

use ringkv_proto::ShardId;
use ringkv_proto::pb::{self, kv_command::Request as Command, kv_reply::Reply};

use crate::backoff::Backoff;
use crate::classify::{Attempt, Next, RequestKind, classify, final_error, next};
use crate::client::{Client, Inner};
use crate::error::{Error, ShardOutcome};
use crate::pool::NodeConnection;
use crate::read::ReplicaSelection;
use crate::request_ids::Ticket;
use crate::route::Route;
use crate::types::{BatchOp, BatchOutcome};

/// Longest time one attempt may take, so one stalled node cannot eat a whole deadline: after it,
/// the request is retried (a write with the same request id, which the node attaches to the
/// proposal already in flight).
const MAX_ATTEMPT: Duration = Duration::from_secs(2);
/// How much longer than the budget it gives the node the client waits for the node's answer; at
/// most a quarter of what remains, so short deadlines keep most of their time for the node.
const ANSWER_GRACE: Duration = Duration::from_millis(300);
/// An attempt needs at least this much of the deadline left to be worth sending: with less, the
/// node's answer races the client's wait, and a write whose answer is lost that way must be
/// reported as maybe applied. The last attempt's own answer stands instead.
const MIN_ATTEMPT: Duration = Duration::from_millis(50);
/// NotLeader hints followed in a row before backing off (hints can ping-pong during elections).
const MAX_HINT_HOPS: u32 = 3;
/// A write is retried for at most this long, whatever its deadline: half the time a shard keeps
/// an idle client's request ids (the engine's `SESSION_TTL_MS`), so every retry finds them.
pub(crate) const MAX_WRITE_RETRY_WINDOW: Duration = Duration::from_secs(5 * 60);
/// The metadata entry that tells the node its budget.
const BUDGET_HEADER: &str = "ringkv-budget-ms";

/// What to route a request by.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    Key(&'a [u8]),
    /// One shard's part of a batch: routed by its first key. When a newer map puts its keys in
    /// more than one shard (a split moved some), the part stops (`Stopped::Spans`) to be split
    /// again: no single shard could apply it.
    Part(&'a [bytes::Bytes]),
    Shard(ShardId),
    /// The shard owning a point of the hash ring (a scan's position).
    Hash(u64),
}

/// The time one attempt has: the node is told `budget`; the client waits `wait` for its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AttemptTime {
    pub budget: Duration,
    pub wait: Duration,
}

impl AttemptTime {
    /// Splits what remains of a deadline for one attempt (see `MAX_ATTEMPT`, `ANSWER_GRACE`).
    pub(crate) fn within(remaining: Duration) -> AttemptTime {
        let grace = ANSWER_GRACE.min(remaining / 4);
        let budget = (remaining - grace).min(MAX_ATTEMPT);
        AttemptTime {
            budget,
            wait: budget + grace,
        }
    }
}

/// Wraps an attempt's message: `grpc-timeout` is the client's wait (tonic enforces it on the
/// client side too), the budget header the node's.
pub(crate) fn request<T>(message: T, time: AttemptTime) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(time.wait);
    if let Ok(value) = MetadataValue::try_from(time.budget.as_millis().to_string()) {
        request.metadata_mut().insert(BUDGET_HEADER, value);
    }
    request
}

/// The result of a unary call, as an attempt's.
pub(crate) async fn unary<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Attempt> {
    call.await
        .map(tonic::Response::into_inner)
        .map_err(|status| classify(&status))
}

/// A node's answer of the wrong kind for the request (a broken or mismatched node).
pub(crate) fn unexpected_reply(request: &str, reply: &Reply) -> Attempt {
    let kind = match reply {
        Reply::Get(_) => "get",
        Reply::MultiGet(_) => "multi-get",
        Reply::Put(_) => "put",
        Reply::Delete(_) => "delete",
        Reply::Cas(_) => "compare-and-swap",
        Reply::Batch(_) => "batch",
        Reply::Error(_) => "error",
    };
    Attempt::Fatal(Error::Protocol(format!(
        "the node answered a {request} request with a {kind} reply"
    )))
}

pub(crate) struct Plan<'a> {
    pub inner: &'a Inner,
    pub target: Target<'a>,
    pub kind: RequestKind,
    pub deadline: Instant,
}

/// Why a plan stopped without a result.
pub(crate) enum Stopped {
    /// It failed: what the caller is told.
    Failed(Error),
    /// A batch part whose keys the map now puts in several shards (`Target::Part`). No attempt
    /// since the last that could have applied it was sent; earlier ones may have (the part is
    /// then re-sent, split, under the same request id, which the shards recognise).
    Spans,
}

impl Plan<'_> {
    /// Runs `send` against the shard's leader until it succeeds, fails for good, or the deadline
    /// passes (see the module header).
    pub(crate) async fn run<T, F, Fut>(&self, send: F) -> Result<T, Error>
    where
        F: Fn(NodeConnection, pb::RouteHeader, AttemptTime) -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        self.run_part(send).await.map_err(|stopped| match stopped {
            Stopped::Failed(error) => error,
            Stopped::Spans => Error::Protocol("a batch part was routed as a single request".into()),
        })
    }

    /// `run`, for a batch part: also stops when the part's keys no longer share a shard.
    pub(crate) async fn run_part<T, F, Fut>(&self, send: F) -> Result<T, Stopped>
    where
        F: Fn(NodeConnection, pb::RouteHeader, AttemptTime) -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        let inner = self.inner;
        let mut backoff = Backoff::no_leader();
        let mut attempts = 0u32;
        let mut hint_hops = 0u32;
        let mut maybe_applied = false;
        let mut last_error = String::from("no attempt made");
        loop {
            // Re-resolved on every attempt: a refreshed map may move the key to another shard.
            let (shard_id, route) = {
                let routes = inner.routes.lock().expect("route cache lock");
                let shard_id = match self.target {
                    Target::Key(key) => routes.shard_for_key(key),
                    Target::Part(keys) => {
                        let shard_id = routes.shard_for_key(&keys[0]);
                        if keys.iter().any(|key| routes.shard_for_key(key) != shard_id) {
                            return Err(Stopped::Spans);
                        }
                        shard_id
                    }
                    Target::Shard(id) => id,
                    Target::Hash(hash) => routes.shard_for_hash(hash),
                };
                (shard_id, routes.route_shard(shard_id, attempts))
            };
            let now = Instant::now();
            // The first attempt is always sent, however short the deadline.
            let too_late = self.deadline.saturating_duration_since(now) < MIN_ATTEMPT && attempts > 0;
            if now >= self.deadline || too_late {
                let ended = Error::Unavailable {
                    shard_id,
                    attempts,
                    last_error,
                };
                return Err(Stopped::Failed(final_error(
                    self.kind,
                    shard_id,
                    ended,
                    maybe_applied,
                )));
            }
            attempts += 1;
            let Some(route) = route else {
                last_error = format!("shard {shard_id} is not in the cached shard map");
                inner.refresh(false, self.deadline).await.ok();
                self.pause(&mut backoff).await;
                continue;
            };
            let attempt = match self.attempt(&route, now, &send).await {
                Ok(response) => return Ok(response),
                Err(attempt) => attempt,
            };
            debug!(shard_id = %shard_id, node = %route.node_id, attempt = attempts, outcome = ?attempt, "request attempt failed");
            maybe_applied |= attempt.may_have_applied();
            match (next(&attempt), attempt) {
                (Next::Fail, Attempt::Fatal(error)) => {
                    return Err(Stopped::Failed(final_error(
                        self.kind,
                        shard_id,
                        error,
                        maybe_applied,
                    )));
                }
                (
                    Next::FollowHint,
                    Attempt::NotLeader {
                        leader: Some((node, addr)),
                    },
                ) if hint_hops < MAX_HINT_HOPS => {
                    hint_hops += 1;
                    last_error = format!(
                        "node {} is not the leader; it named node {node} at {addr}",
                        route.node_id
                    );
                    let known = inner
                        .routes
                        .lock()
                        .expect("route cache lock")
                        .set_leader(shard_id, node);
                    if !known {
                        inner.refresh(true, self.deadline).await.ok();
                    }
                }
                (Next::Refresh, attempt) => {
                    last_error = "the cached shard map is stale".into();
                    let epoch = route.epoch;
                    let node_epoch = match attempt {
                        Attempt::WrongShard { node_epoch } => node_epoch,
                        _ => 0,
                    };
                    inner.refresh_to(node_epoch, self.deadline).await.ok();
                    let newer = inner.routes.lock().expect("route cache lock").map().epoch > epoch;
                    if !newer {
                        // The node knows of a change the map does not record yet (a split
                        // applied moments before the map lists its child): wait for it.
                        self.pause(&mut backoff).await;
                    }
                }
                (Next::BackOffBusy, Attempt::Busy(message)) => {
                    last_error = message;
                    let delay = Backoff::busy().next_delay().max(backoff.next_delay());
                    self.sleep(delay).await;
                }
                (_, attempt) => {
                    hint_hops = 0;
                    last_error = format!("node {} at {}: {}", route.node_id, route.addr, describe(&attempt));
                    inner
                        .routes
                        .lock()
                        .expect("route cache lock")
                        .clear_leader(shard_id, route.node_id);
                    // Another node may know a leader: refresh the map, then back off.
                    inner.refresh(false, self.deadline).await.ok();
                    self.pause(&mut backoff).await;
                }
            }
        }
    }

    /// Runs `send` against the shard's replicas in the order `selection` asks for, any of which
    /// may serve (a read below linearizable): a replica that fails, or answers that it is behind,
    /// is set aside for a while (`replicas::SKIP_FOR`) and the next is tried at once; when every
    /// replica has been tried, the plan backs off and starts over, until the deadline.
    pub(crate) async fn run_on_replicas<T, F, Fut>(
        &self,
        selection: ReplicaSelection,
        send: F,
    ) -> Result<T, Error>
    where
        F: Fn(NodeConnection, pb::RouteHeader, AttemptTime) -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        let inner = self.inner;
        let mut backoff = Backoff::no_leader();
        let mut attempts = 0u32;
        let mut tried: Vec<ringkv_proto::NodeId> = Vec::new();
        let mut last_error = String::from("no attempt made");
        loop {
            let now = Instant::now();
            let (shard_id, route) = {
                let routes = inner.routes.lock().expect("route cache lock");
                let shard_id = match self.target {
                    Target::Key(key) => routes.shard_for_key(key),
                    Target::Part(keys) => routes.shard_for_key(&keys[0]),
                    Target::Shard(id) => id,
                    Target::Hash(hash) => routes.shard_for_hash(hash),
                };
                let order = inner
                    .health
                    .order(shard_id, routes.replica_nodes(shard_id), selection, now);
                let next = order.into_iter().find(|node| !tried.contains(node));
                (shard_id, next.and_then(|node| routes.route_to(shard_id, node)))
            };
            let too_late = self.deadline.saturating_duration_since(now) < MIN_ATTEMPT && attempts > 0;
            if now >= self.deadline || too_late {
                return Err(Error::Unavailable {
                    shard_id,
                    attempts,
                    last_error,
                });
            }
            let Some(route) = route else {
                // Every replica tried (or none known): look at the map again, back off, start over.
                tried.clear();
                inner.refresh(false, self.deadline).await.ok();
                self.pause(&mut backoff).await;
                continue;
            };
            attempts += 1;
            tried.push(route.node_id);
            let attempt = match self.attempt(&route, now, &send).await {
                Ok(response) => {
                    // The round trips `Nearest` goes by (only reads that may go to any replica
                    // pay for the shared record).
                    inner.health.record_latency(route.node_id, now.elapsed());
                    return Ok(response);
                }
                Err(attempt) => attempt,
            };
            debug!(shard_id = %shard_id, node = %route.node_id, attempt = attempts, outcome = ?attempt, "replica read attempt failed");
            match attempt {
                Attempt::Fatal(error) => return Err(error),
                Attempt::WrongShard { node_epoch } => {
                    last_error = "the cached shard map is stale".into();
                    let epoch = route.epoch;
                    inner.refresh_to(node_epoch, self.deadline).await.ok();
                    tried.clear();
                    let newer = inner.routes.lock().expect("route cache lock").map().epoch > epoch;
                    if !newer {
                        self.pause(&mut backoff).await;
                    }
                }
                attempt => {
                    last_error = format!("node {} at {}: {}", route.node_id, route.addr, describe(&attempt));
                    inner.health.skip(shard_id, route.node_id, Instant::now());
                }
            }
        }
    }

    /// One attempt at `route`, begun at `now`, with what remains of the deadline (see
    /// `AttemptTime`).
    async fn attempt<T, F, Fut>(&self, route: &Route, now: Instant, send: &F) -> Result<T, Attempt>
    where
        F: Fn(NodeConnection, pb::RouteHeader, AttemptTime) -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        let time = AttemptTime::within(self.deadline - now);
        let header = pb::RouteHeader {
            shard_id: route.shard_id.0,
            map_epoch: route.epoch,
        };
        let node = self.inner.pool.node(&route.addr).map_err(Attempt::Unreachable)?;
        match tokio::time::timeout(time.wait, send(node, header, time)).await {
            Ok(result) => result,
            Err(_) => Err(Attempt::Ambiguous(format!(
                "no answer from node {} within {} ms",
                route.node_id,
                time.wait.as_millis()
            ))),
        }
    }

    async fn pause(&self, backoff: &mut Backoff) {
        self.sleep(backoff.next_delay()).await;
    }

    /// Sleeps `delay`, or until the deadline if that comes first.
    async fn sleep(&self, delay: Duration) {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(delay.min(remaining)).await;
    }
}

fn describe(attempt: &Attempt) -> String {
    match attempt {
        Attempt::Fatal(error) => error.to_string(),
        Attempt::NotLeader { .. } => "not the leader, and knows none".into(),
        Attempt::WrongShard { node_epoch } => {
            format!("the cached shard map is stale (the node's is epoch {node_epoch})")
        }
        Attempt::Busy(message)
        | Attempt::Behind(message)
        | Attempt::NotApplied(message)
        | Attempt::Unreachable(message)
        | Attempt::Ambiguous(message) => message.clone(),
    }
}

/// Applies `ops`, split by shard and sent concurrently, each part atomic within its shard and
/// carrying its own request id. Returns every part's version, or the typed outcome of each part.
pub(crate) async fn batch(
    client: &Client,
    ops: Vec<BatchOp>,
    deadline: Instant,
) -> Result<BatchOutcome, Error> {
    merge(run_parts(client, ops, None, deadline).await)
}

/// One shard's part of a batch: its shard, its keys, and how it ended.
pub(crate) type PartResult = (ShardId, Vec<bytes::Bytes>, Result<u64, Error>);

/// Splits `ops` per shard by the cached map and runs each part as its own plan, each under its
/// own request id, or under `ticket` when these ops are a part that had one. A part whose keys a
/// newer map spreads over several shards (a split since it was formed) is split again and its
/// pieces sent under the part's request id: the pieces of a part that an earlier attempt applied
/// are answered from the request-id tables (a split copies the parent's to the child), so nothing
/// applies twice. Returns each shard's outcome.
fn run_parts<'a>(
    client: &'a Client,
    ops: Vec<BatchOp>,
    ticket: Option<Arc<Ticket>>,
    deadline: Instant,
) -> futures::future::BoxFuture<'a, Vec<PartResult>> {
    Box::pin(async move {
        let inner: &Inner = &client.inner;
        let mut by_shard: BTreeMap<ShardId, Vec<BatchOp>> = BTreeMap::new();
        {
            let routes = inner.routes.lock().expect("route cache lock");
            for op in ops {
                by_shard
                    .entry(routes.shard_for_key(op.key()))
                    .or_default()
                    .push(op);
            }
        }
        let parts = join_all(by_shard.into_iter().map(|(shard_id, ops)| {
            let ticket = ticket.clone().unwrap_or_else(|| Arc::new(inner.ids.begin()));
            async move {
                let keys = || ops.iter().map(|op| op.key().clone()).collect();
                match run_part(client, &ops, ticket.seq, deadline).await {
                    Ok(version) => vec![(shard_id, keys(), Ok(version))],
                    Err(Stopped::Failed(error)) => vec![(shard_id, keys(), Err(error))],
                    Err(Stopped::Spans) => run_parts(client, ops, Some(ticket), deadline).await,
                }
            }
        }))
        .await;
        parts.into_iter().flatten().collect()
    })
}

/// Sends one shard's part of a batch under request id `seq`, until it applies, fails, or the map
/// spreads its keys over several shards.
async fn run_part(client: &Client, ops: &[BatchOp], seq: u64, deadline: Instant) -> Result<u64, Stopped> {
    let inner: &Inner = &client.inner;
    let keys: Vec<bytes::Bytes> = ops.iter().map(|op| op.key().clone()).collect();
    let wire: Vec<pb::BatchOp> = ops
        .iter()
        .map(|op| match op {
            BatchOp::Put { key, value } => pb::BatchOp {
                key: key.clone(),
                op: Some(pb::batch_op::Op::Put(value.clone())),
            },
            BatchOp::Delete { key } => pb::BatchOp {
                key: key.clone(),
                op: Some(pb::batch_op::Op::Delete(true)),
            },
        })
        .collect();
    let plan = Plan {
        inner,
        target: Target::Part(&keys),
        kind: RequestKind::Write,
        deadline,
    };
    let response = plan
        .run_part(|node, route, time| {
            let message = pb::BatchRequest {
                route: Some(route),
                ops: wire.clone(),
                request_id: Some(inner.ids.wire(seq)),
            };
            async move {
                let reply = node.commands.call(Command::Batch(message), time).await?;
                match reply {
                    Reply::Batch(response) => {
                        client.observe(&route, response.index);
                        Ok(response)
                    }
                    other => Err(unexpected_reply("batch", &other)),
                }
            }
        })
        .await?;
    Ok(response.version)
}

/// Merges the parts of a batch: every version when all applied; otherwise the part's own error
/// when there was one part, or `Error::Batch` with each part's outcome, whose overall error is an
/// unknown part's whenever any part's outcome is unknown.
pub(crate) fn merge(results: Vec<PartResult>) -> Result<BatchOutcome, Error> {
    let keys: BTreeMap<ShardId, Vec<bytes::Bytes>> = results
        .iter()
        .map(|(shard, keys, _)| (*shard, keys.clone()))
        .collect();
    if results.iter().all(|(_, _, result)| result.is_ok()) {
        let versions = results
            .into_iter()
            .map(|(shard, _, result)| (shard, result.expect("all ok")))
            .collect();
        return Ok(BatchOutcome { versions, keys });
    }
    if results.len() == 1 {
        let (_, _, result) = results.into_iter().next().expect("one part");
        return Err(result.expect_err("not all ok"));
    }
    let mut shards = BTreeMap::new();
    for (shard, _, result) in results {
        let outcome = match result {
            Ok(version) => ShardOutcome::Applied { version },
            Err(error) if error.may_have_applied() => ShardOutcome::Unknown(error),
            Err(error) => ShardOutcome::NotApplied(error),
        };
        shards.insert(shard, outcome);
    }
    let unknown = shards.values().find_map(|outcome| match outcome {
        ShardOutcome::Unknown(error) => Some(error.clone()),
        _ => None,
    });
    let not_applied = || {
        shards.values().find_map(|outcome| match outcome {
            ShardOutcome::NotApplied(error) => Some(error.clone()),
            _ => None,
        })
    };
    let error = unknown.or_else(not_applied).expect("some part failed");
    Err(Error::Batch {
        error: Box::new(error),
        shards,
        keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown(shard: u64) -> Error {
        Error::OutcomeUnknown {
            shard_id: ShardId(shard),
            reason: "leader lost".into(),
        }
    }

    fn not_applied(shard: u64) -> Error {
        Error::Unavailable {
            shard_id: ShardId(shard),
            attempts: 3,
            last_error: "no leader".into(),
        }
    }

    /// A batch's parts as (shard, result), and what the batch must end as: `None` = applied,
    /// `Some(true)` = unknown, `Some(false)` = not applied.
    type Case = (Vec<(u64, Result<u64, Error>)>, Option<bool>);

    #[test]
    fn a_batch_is_unknown_whenever_any_part_is_unknown() {
        let table: Vec<Case> = vec![
            (vec![(1, Ok(10)), (2, Ok(20))], None),
            (vec![(1, Err(not_applied(1)))], Some(false)),
            (vec![(1, Err(unknown(1)))], Some(true)),
            // The bug this guards against: a definite failure listed first hid an unknown part.
            (vec![(1, Err(not_applied(1))), (2, Err(unknown(2)))], Some(true)),
            (vec![(1, Err(unknown(1))), (2, Err(not_applied(2)))], Some(true)),
            (vec![(1, Ok(10)), (2, Err(not_applied(2)))], Some(false)),
            (
                vec![(1, Ok(10)), (2, Err(unknown(2))), (3, Err(not_applied(3)))],
                Some(true),
            ),
        ];
        for (parts, expected) in table {
            let described = format!("{parts:?}");
            let parts: Vec<PartResult> = parts
                .into_iter()
                .map(|(shard, result)| (ShardId(shard), Vec::new(), result))
                .collect();
            let n_parts = parts.len();
            let applied: Vec<ShardId> = parts
                .iter()
                .filter(|(_, _, result)| result.is_ok())
                .map(|(shard, _, _)| *shard)
                .collect();
            match (merge(parts), expected) {
                (Ok(outcome), None) => assert_eq!(outcome.versions.len(), n_parts, "{described}"),
                (Err(error), Some(unknown)) => {
                    let overall = match &error {
                        Error::Batch { error, shards, .. } => {
                            for shard in &applied {
                                assert!(
                                    matches!(shards[shard], ShardOutcome::Applied { .. }),
                                    "{described}: shard {shard} applied"
                                );
                            }
                            error.as_ref().clone()
                        }
                        other => other.clone(),
                    };
                    assert_eq!(
                        matches!(overall, Error::OutcomeUnknown { .. }),
                        unknown,
                        "{described}: overall {overall:?}"
                    );
                    // Some part applied or may have: the batch may have applied.
                    assert_eq!(
                        error.may_have_applied(),
                        unknown || !applied.is_empty(),
                        "{described}"
                    );
                    assert!(!error.is_retryable() || !error.may_have_applied(), "{described}");
                }
                (result, expected) => panic!("{described}: got {result:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn attempts_fit_in_what_remains_of_the_deadline() {
        for remaining_ms in [1, 10, 100, 500, 1_500, 3_000, 60_000] {
            let remaining = Duration::from_millis(remaining_ms);
            let time = AttemptTime::within(remaining);
            assert!(time.wait <= remaining, "{remaining:?}: {time:?}");
            assert!(
                time.budget < time.wait || remaining_ms < 4,
                "{remaining:?}: {time:?}"
            );
            assert!(time.budget <= MAX_ATTEMPT);
        }
        let time = AttemptTime::within(Duration::from_millis(1_500));
        assert_eq!(time.budget, Duration::from_millis(1_200));
        assert_eq!(time.wait, Duration::from_millis(1_500));
    }
}

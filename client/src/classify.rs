//! What a failed attempt means: whether the request may have taken effect, and what to do next.
//!
//! A write's attempt ends in one of three states, and they must never be confused:
//! - **not applied** — the node refused it before proposing (not the leader, wrong shard, busy,
//!   no leader known), or the request never left (the connection could not be opened: decided
//!   from tonic's typed `ConnectError`, never from error text);
//! - **maybe applied** — it was, or may have been, proposed: the node said so
//!   (`Unavailable{outcome_unknown}`), the node failed internally, the connection broke, or no
//!   answer came in time;
//! - **failed for good** — bad input or a protocol mismatch; nothing was applied.
//!
//! Reads change nothing, so every retryable outcome is simply retried. Writes are retried too,
//! with the same request id, which the shard applies at most once; when the deadline passes, a
//! write with any maybe-applied attempt is `OutcomeUnknown`, otherwise `Unavailable`.

use prost::Message;

use ringkv_proto::pb::{self, error_detail::Kind};
use ringkv_proto::{NodeId, ShardId};

use crate::error::Error;

/// How one failed attempt ended, from the client's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// Never worth retrying; nothing was applied.
    Fatal(Error),
    /// Not applied: the node does not lead the shard; it named the leader, if it knows one.
    NotLeader { leader: Option<(NodeId, String)> },
    /// Not applied: the client's shard map is stale; the node's map has this epoch.
    WrongShard { node_epoch: u64 },
    /// Not applied: the node is overloaded.
    Busy(String),
    /// Not applied: the node could not take the request now (no quorum for a read, shard
    /// unavailable before proposing, node starting, replica out of service).
    NotApplied(String),
    /// Not applied: a replica could not show its data was fresh enough for the read's level.
    Behind(String),
    /// Not applied: the request never left (the connection could not be opened).
    Unreachable(String),
    /// May have applied: proposed and unanswered, a node failure, a broken connection, or no
    /// answer in time.
    Ambiguous(String),
}

impl Attempt {
    /// Whether the request may have taken effect.
    pub(crate) fn may_have_applied(&self) -> bool {
        matches!(self, Attempt::Ambiguous(_))
    }
}

/// What the request plan does after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Give up now with the attempt's error.
    Fail,
    /// Retry at once at the node the answer named.
    FollowHint,
    /// Refresh the shard map, then retry at once.
    Refresh,
    /// Forget the leader hint, back off with jitter, then retry (another node first).
    BackOff,
    /// Back off harder (the node is busy), then retry.
    BackOffBusy,
}

/// The plan's reaction to an attempt. The same for reads and writes: a write may be retried after
/// a maybe-applied attempt because it carries a request id.
pub(crate) fn next(attempt: &Attempt) -> Next {
    match attempt {
        Attempt::Fatal(_) => Next::Fail,
        Attempt::NotLeader { leader: Some(_) } => Next::FollowHint,
        Attempt::WrongShard { .. } => Next::Refresh,
        Attempt::Busy(_) => Next::BackOffBusy,
        Attempt::NotLeader { leader: None }
        | Attempt::NotApplied(_)
        | Attempt::Behind(_)
        | Attempt::Unreachable(_)
        | Attempt::Ambiguous(_) => Next::BackOff,
    }
}

/// Reads and writes differ only in what a failure finally means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestKind {
    Read,
    Write,
}

/// The error a request finally fails with. `ended` is what ended it (a fatal attempt's error, or
/// `Unavailable` at the deadline); a write any of whose attempts may have applied fails with
/// `OutcomeUnknown` instead, whatever ended it, so a maybe-applied write is never reported as
/// certainly not applied.
pub(crate) fn final_error(kind: RequestKind, shard_id: ShardId, ended: Error, maybe_applied: bool) -> Error {
    match kind {
        RequestKind::Write if maybe_applied => Error::OutcomeUnknown {
            shard_id,
            reason: format!("an attempt may have been applied, and then: {ended}"),
        },
        _ => ended,
    }
}

/// Classifies a gRPC status answered (or synthesized by tonic) for one attempt.
pub(crate) fn classify(status: &tonic::Status) -> Attempt {
    let detail = pb::ErrorDetail::decode(status.details())
        .ok()
        .and_then(|detail| detail.kind);
    let message = status.message().to_owned();
    match detail {
        Some(Kind::NotLeader(not_leader)) => Attempt::NotLeader {
            leader: (not_leader.leader_node_id != 0)
                .then_some((NodeId(not_leader.leader_node_id), not_leader.leader_addr)),
        },
        Some(Kind::WrongShard(wrong)) => Attempt::WrongShard {
            node_epoch: wrong.map_epoch,
        },
        Some(Kind::Busy(_)) => Attempt::Busy(message),
        Some(Kind::Unavailable(unavailable)) if unavailable.outcome_unknown => Attempt::Ambiguous(message),
        Some(Kind::Unavailable(_)) => Attempt::NotApplied(message),
        Some(Kind::InvalidArgument(_)) => Attempt::Fatal(Error::InvalidArgument(message)),
        Some(Kind::ReplicaBehind(_)) => Attempt::Behind(message),
        None => classify_code(status, message),
    }
}

fn classify_code(status: &tonic::Status, message: String) -> Attempt {
    use tonic::Code;
    match status.code() {
        Code::InvalidArgument => Attempt::Fatal(Error::InvalidArgument(message)),
        // The request was refused before it was handled: it names a service or method this
        // node does not have, or broke a precondition it does not describe.
        Code::Unimplemented | Code::FailedPrecondition => {
            Attempt::Fatal(Error::Protocol(format!("{}: {message}", status.code())))
        }
        Code::PermissionDenied | Code::Unauthenticated => {
            Attempt::Fatal(Error::Protocol(format!("{}: {message}", status.code())))
        }
        // A connection that could not be opened carried nothing.
        Code::Unavailable if is_connect_failure(status) => Attempt::Unreachable(message),
        // Everything else may have reached the node and been proposed: a node failure
        // (Internal), a broken connection (Unavailable, Unknown), a deadline (DeadlineExceeded,
        // Cancelled), an answer too large to decode (OutOfRange, ResourceExhausted: the request
        // may have run), or anything unexpected.
        code => Attempt::Ambiguous(format!("{code}: {message}")),
    }
}

/// Whether a transport error happened while connecting, before any request bytes were sent:
/// tonic wraps such errors in its typed `ConnectError`, which this looks for in the status's
/// source chain.
fn is_connect_failure(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        source = error.source();
    }
    false
}

#[cfg(test)]
mod tests;

//! The client's errors. Each names the shard or endpoint involved and says whether the request
//! may have taken effect: `may_have_applied` is false when a failed write certainly changed
//! nothing, and `is_retryable` says whether sending the same request again later could succeed.

use std::collections::BTreeMap;

use thiserror::Error;

use ringkv_proto::ShardId;

/// How one shard's part of a multi-shard batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardOutcome {
    /// Applied, at this version (log index).
    Applied { version: u64 },
    /// Certainly not applied.
    NotApplied(Error),
    /// May or may not have applied.
    Unknown(Error),
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// The request is malformed or over a limit; nothing was written. Never retried.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The shard could not serve the request before its deadline. For a write: no attempt may
    /// have applied (every one was refused before it was proposed, or never reached a node).
    #[error("shard {shard_id} is unavailable: gave up after {attempts} attempts; last error: {last_error}")]
    Unavailable {
        shard_id: ShardId,
        attempts: u32,
        last_error: String,
    },
    /// A write may or may not have applied: an attempt was proposed (or may have been), and no
    /// later attempt settled it before the deadline (or one failed for good). Retries carried the
    /// same request id, so it applied at most once. Read the key to see whether it did.
    #[error(
        "outcome unknown for a write to shard {shard_id}: {reason}; it applied at most once; read the key to see whether it did"
    )]
    OutcomeUnknown { shard_id: ShardId, reason: String },
    /// None of the seed endpoints answered.
    #[error("no ringkv node answered at {}: {last_error}", seeds.join(", "))]
    NoSeedReachable { seeds: Vec<String>, last_error: String },
    /// A batch across shards did not fully apply. `error` is the overall answer: the unknown
    /// outcome of a part whenever any part's outcome is unknown, else a part's failure. `shards`
    /// says what happened to each shard's part, and `keys` which keys each part held.
    #[error("batch did not fully apply ({}): {error}", describe(shards))]
    Batch {
        error: Box<Error>,
        shards: BTreeMap<ShardId, ShardOutcome>,
        keys: BTreeMap<ShardId, Vec<bytes::Bytes>>,
    },
    /// A node's answer could not be understood, or the node does not implement the request.
    #[error("protocol error: {0}")]
    Protocol(String),
}

fn describe(shards: &BTreeMap<ShardId, ShardOutcome>) -> String {
    let list = |want: fn(&ShardOutcome) -> bool| -> String {
        let ids: Vec<String> = shards
            .iter()
            .filter(|(_, outcome)| want(outcome))
            .map(|(id, _)| id.to_string())
            .collect();
        ids.join(", ")
    };
    let mut parts = Vec::new();
    for (label, want) in [
        (
            "applied on shards",
            (|o| matches!(o, ShardOutcome::Applied { .. })) as fn(&ShardOutcome) -> bool,
        ),
        ("not applied on shards", |o| {
            matches!(o, ShardOutcome::NotApplied(_))
        }),
        ("outcome unknown on shards", |o| {
            matches!(o, ShardOutcome::Unknown(_))
        }),
    ] {
        let ids = list(want);
        if !ids.is_empty() {
            parts.push(format!("{label} {ids}"));
        }
    }
    parts.join("; ")
}

impl Error {
    /// Whether the same request may succeed if sent again later. A write that may have applied
    /// is not retryable: sent again, it would be a new request and could apply twice.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::NoSeedReachable { .. })
    }

    /// Whether a failed write may nonetheless have taken effect, in whole or (for a batch across
    /// shards) in part.
    pub fn may_have_applied(&self) -> bool {
        match self {
            Error::OutcomeUnknown { .. } => true,
            Error::Batch { shards, .. } => shards
                .values()
                .any(|outcome| !matches!(outcome, ShardOutcome::NotApplied(_))),
            _ => false,
        }
    }
}

impl From<ringkv_proto::LimitError> for Error {
    fn from(error: ringkv_proto::LimitError) -> Error {
        Error::InvalidArgument(error.to_string())
    }
}

//! The client's errors. Each names the shard or endpoint involved; `is_retryable` says whether
//! trying the same request again later could succeed.

use thiserror::Error;

use ringkv_proto::ShardId;

#[derive(Debug, Clone, Error)]
pub enum Error {
    /// The request is malformed or over a limit; nothing was written. Never retried.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The shard had no reachable leader until the request's deadline.
    #[error("shard {shard_id} is unavailable: gave up after {attempts} attempts; last error: {last_error}")]
    Unavailable {
        shard_id: ShardId,
        attempts: u32,
        last_error: String,
    },
    /// A write may or may not have been applied (its node failed or timed out
    /// after the write was proposed); read the key to find out.
    #[error(
        "outcome unknown for a write to shard {shard_id}: {reason}; read the key to see whether it applied"
    )]
    OutcomeUnknown { shard_id: ShardId, reason: String },
    /// None of the seed endpoints answered.
    #[error("no ringkv node answered at {}: {last_error}", seeds.join(", "))]
    NoSeedReachable { seeds: Vec<String>, last_error: String },
    /// Some shards of a multi-shard batch applied their part and others failed.
    #[error(
        "batch partly applied: shards {applied:?} applied their operations; shards failed: {}",
        failed.iter().map(|(shard, error)| format!("{shard} ({error})")).collect::<Vec<_>>().join(", ")
    )]
    PartialBatch {
        applied: Vec<ShardId>,
        failed: Vec<(ShardId, String)>,
    },
    /// A node answered with an internal error (a storage fault on that node).
    #[error("server error on shard {shard_id}: {message}")]
    Server { shard_id: ShardId, message: String },
    /// A node's answer could not be understood.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// Whether the same request may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::NoSeedReachable { .. } | Error::Server { .. }
        )
    }
}

impl From<ringkv_proto::LimitError> for Error {
    fn from(error: ringkv_proto::LimitError) -> Error {
        Error::InvalidArgument(error.to_string())
    }
}

//! The server's request errors and their one translation into gRPC statuses. This is the only file
//! in the workspace that builds a `tonic::Status` from an error: the typed `ErrorDetail` it attaches
//! is what clients act on; the message is for people.

use prost::Message;
use thiserror::Error;
use tonic::{Code, Status};

use ringkv_proto::pb::{self, error_detail::Kind};
use ringkv_proto::{NodeId, ShardId};

/// Why a client request was not served.
#[derive(Debug, Clone, Error)]
pub enum ServiceError {
    /// Bad input: names the limit or field. Nothing was written.
    #[error("{0}")]
    InvalidArgument(String),
    /// This node does not lead the shard; the request was not applied.
    #[error("shard {shard_id} is not led by this node{}", leader_text(.leader))]
    NotLeader {
        shard_id: ShardId,
        leader: Option<(NodeId, String)>,
    },
    /// The client routed with a map that disagrees with this node's.
    #[error("key belongs to shard {shard_id} under shard map epoch {map_epoch}; refresh the shard map")]
    WrongShard { shard_id: ShardId, map_epoch: u64 },
    /// The shard could not serve the request in time (no leader, no quorum, shutting down).
    #[error("shard {shard_id} is unavailable: {reason}")]
    Unavailable {
        shard_id: ShardId,
        outcome_unknown: bool,
        reason: String,
    },
    /// A replica cannot show its data is fresh enough for the read's level: nothing was read;
    /// another replica, or the leader, may serve it.
    #[error("shard {shard_id} cannot serve this read here: {reason}; try another replica or the leader")]
    ReplicaBehind {
        shard_id: ShardId,
        applied_index: u64,
        reason: String,
    },
    /// This node leads the shard, but its leader lease lapsed (no quorum answered its messages in
    /// time) and could not be renewed within the budget: the write was refused before it was
    /// appended, so it was certainly not applied. Sent to clients as `Unavailable`.
    #[error(
        "shard {shard_id} is unavailable: node {node_id} leads it but no quorum answered its heartbeats \
         in time, so its leader lease lapsed and it refused the write (not applied; retry). If this \
         persists, round trips between nodes may exceed raft.heartbeat_interval_ms: openraft gives up \
         on a heartbeat after that long"
    )]
    LeaseLapsed { shard_id: ShardId, node_id: NodeId },
    /// A fault on this node that is not a storage fault of a replica (those answer Unavailable
    /// once the replica is out of service). For a write, the outcome is unknown.
    #[error("internal error: {0}")]
    Internal(String),
}

fn leader_text(leader: &Option<(NodeId, String)>) -> String {
    match leader {
        Some((node, addr)) => format!("; its leader is node {node} at {addr}"),
        None => "; no leader is known yet, retry shortly".into(),
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Status {
        let message = error.to_string();
        let (code, kind) = match error {
            ServiceError::InvalidArgument(limit) => (
                Code::InvalidArgument,
                Some(Kind::InvalidArgument(pb::InvalidArgument { limit })),
            ),
            ServiceError::NotLeader { shard_id, leader } => {
                let (leader_node_id, leader_addr) = leader.unwrap_or_default();
                let detail = pb::NotLeader {
                    shard_id: shard_id.0,
                    leader_node_id: leader_node_id.0,
                    leader_addr,
                };
                (Code::FailedPrecondition, Some(Kind::NotLeader(detail)))
            }
            ServiceError::WrongShard { shard_id, map_epoch } => (
                Code::FailedPrecondition,
                Some(Kind::WrongShard(pb::WrongShard {
                    shard_id: shard_id.0,
                    map_epoch,
                })),
            ),
            ServiceError::Unavailable {
                shard_id,
                outcome_unknown,
                ..
            } => {
                let detail = pb::Unavailable {
                    shard_id: shard_id.0,
                    outcome_unknown,
                };
                (Code::Unavailable, Some(Kind::Unavailable(detail)))
            }
            ServiceError::LeaseLapsed { shard_id, .. } => {
                let detail = pb::Unavailable {
                    shard_id: shard_id.0,
                    outcome_unknown: false,
                };
                (Code::Unavailable, Some(Kind::Unavailable(detail)))
            }
            ServiceError::ReplicaBehind {
                shard_id,
                applied_index,
                ..
            } => {
                let detail = pb::ReplicaBehind {
                    shard_id: shard_id.0,
                    applied_index,
                };
                (Code::Unavailable, Some(Kind::ReplicaBehind(detail)))
            }
            ServiceError::Internal(_) => (Code::Internal, None),
        };
        match kind {
            Some(kind) => {
                let details = pb::ErrorDetail { kind: Some(kind) }.encode_to_vec();
                Status::with_details(code, message, details.into())
            }
            None => Status::new(code, message),
        }
    }
}

/// A peer node's refusal of a call made for `shard_id`, as the error the peer meant: refusals
/// that say nothing was done keep that meaning, anything else may have taken effect.
pub(crate) fn from_status(shard_id: ShardId, status: &Status) -> ServiceError {
    let reason = status.message().to_owned();
    let kind = pb::ErrorDetail::decode(status.details())
        .ok()
        .and_then(|detail| detail.kind);
    match kind {
        Some(Kind::InvalidArgument(_)) => ServiceError::InvalidArgument(reason),
        Some(Kind::NotLeader(hint)) => ServiceError::NotLeader {
            shard_id,
            leader: (hint.leader_node_id != 0).then_some((NodeId(hint.leader_node_id), hint.leader_addr)),
        },
        Some(Kind::ReplicaBehind(behind)) => ServiceError::ReplicaBehind {
            shard_id,
            applied_index: behind.applied_index,
            reason,
        },
        Some(Kind::Unavailable(unavailable)) => ServiceError::Unavailable {
            shard_id,
            outcome_unknown: unavailable.outcome_unknown,
            reason,
        },
        _ => ServiceError::Unavailable {
            shard_id,
            outcome_unknown: true,
            reason,
        },
    }
}

impl From<ringkv_proto::LimitError> for ServiceError {
    fn from(error: ringkv_proto::LimitError) -> ServiceError {
        ServiceError::InvalidArgument(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_carries_the_hint_as_typed_detail() {
        let status: Status = ServiceError::NotLeader {
            shard_id: ShardId(7),
            leader: Some((NodeId(2), "127.0.0.1:7380".into())),
        }
        .into();
        assert_eq!(status.code(), Code::FailedPrecondition);
        let detail = pb::ErrorDetail::decode(status.details()).unwrap();
        assert_eq!(
            detail.kind,
            Some(Kind::NotLeader(pb::NotLeader {
                shard_id: 7,
                leader_node_id: 2,
                leader_addr: "127.0.0.1:7380".into()
            }))
        );
        assert!(
            status.message().contains("node 2 at 127.0.0.1:7380"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn invalid_argument_names_the_limit() {
        let status: Status = ServiceError::from(ringkv_proto::check_key(b"").unwrap_err()).into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("empty"), "{}", status.message());
    }
}

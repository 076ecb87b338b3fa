//! The protobuf form of the shard map (what the metadata group stores and clients are sent) and
//! of the typed map changes nodes hand each other, both ways. Reading refuses, saying why, a
//! message that breaks the map's invariants (`ShardMap::validate`) or names an unknown value.

use std::collections::BTreeMap;

use ringkv_core::{HashRange, NodeId, ReplicaId, ShardId};
use ringkv_map::{
    Decision, MapChange, MapError, Move, MoveKind, MoveStep, NodeInfo, NodeRole, NodeState, Replica, Shard,
    ShardMap, Split, SplitOrigin,
};

use crate::pb;

/// A value with a protobuf form.
pub trait ToProto {
    type Proto;
    fn to_proto(&self) -> Self::Proto;
}

/// A value read from its protobuf form, refused with `Self::Error` when the message is invalid.
pub trait FromProto: Sized {
    type Proto;
    type Error;
    fn from_proto(proto: &Self::Proto) -> Result<Self, Self::Error>;
}

impl ToProto for ShardMap {
    type Proto = pb::ShardMap;

    fn to_proto(&self) -> pb::ShardMap {
        pb::ShardMap {
            meta: Some(shard_to_proto(&self.meta)),
            decisions: self
                .decisions
                .iter()
                .map(|decision| pb::Decision {
                    epoch: decision.epoch,
                    unix_ms: decision.unix_ms,
                    text: decision.text.clone(),
                })
                .collect(),
            cluster_id: self.cluster_id,
            epoch: self.epoch,
            nodes: self
                .nodes
                .iter()
                .map(|(&node_id, info)| pb::NodeInfo {
                    node_id: node_id.0,
                    addr: info.addr.clone(),
                    incarnation: info.incarnation,
                    state: match info.state {
                        NodeState::Up => pb::NodeState::Up,
                        NodeState::Decommissioning => pb::NodeState::Decommissioning,
                        NodeState::Removed => pb::NodeState::Removed,
                        NodeState::Down => pb::NodeState::Down,
                    }
                    .into(),
                    role: match info.role {
                        NodeRole::Voter => pb::NodeRole::Voter,
                        NodeRole::ReadReplica => pb::NodeRole::ReadReplica,
                    }
                    .into(),
                })
                .collect(),
            shards: self.shards.iter().map(shard_to_proto).collect(),
            next_replica_id: self.next_replica_id,
            moves: self.moves.iter().map(move_to_proto).collect(),
            splits: self.splits.iter().map(split_to_proto).collect(),
            read_replicas: self.read_replicas,
        }
    }
}

impl FromProto for ShardMap {
    type Proto = pb::ShardMap;
    type Error = MapError;

    /// Builds a map from its wire form, refusing one that breaks an invariant.
    fn from_proto(map: &pb::ShardMap) -> Result<ShardMap, MapError> {
        let mut nodes = BTreeMap::new();
        for node in &map.nodes {
            let state = match pb::NodeState::try_from(node.state) {
                Ok(pb::NodeState::Up) => NodeState::Up,
                Ok(pb::NodeState::Decommissioning) => NodeState::Decommissioning,
                Ok(pb::NodeState::Removed) => NodeState::Removed,
                Ok(pb::NodeState::Down) => NodeState::Down,
                Err(_) => {
                    return Err(MapError::Malformed(format!(
                        "node {} has an unknown state {}",
                        node.node_id, node.state
                    )));
                }
            };
            let role = match pb::NodeRole::try_from(node.role) {
                Ok(pb::NodeRole::Voter) => NodeRole::Voter,
                Ok(pb::NodeRole::ReadReplica) => NodeRole::ReadReplica,
                Err(_) => {
                    return Err(MapError::Malformed(format!(
                        "node {} has an unknown role {}",
                        node.node_id, node.role
                    )));
                }
            };
            let info = NodeInfo {
                addr: node.addr.clone(),
                incarnation: node.incarnation,
                state,
                role,
            };
            if nodes.insert(NodeId(node.node_id), info).is_some() {
                return Err(MapError::DuplicateNode(NodeId(node.node_id)));
            }
        }
        let mut shards: Vec<Shard> = map.shards.iter().map(shard_from_proto).collect();
        shards.sort_by_key(|shard| shard.arc.start);
        let meta = map
            .meta
            .as_ref()
            .map(shard_from_proto)
            .ok_or_else(|| MapError::Malformed("the map has no metadata group".into()))?;
        let map = ShardMap {
            cluster_id: map.cluster_id,
            epoch: map.epoch,
            nodes,
            shards,
            meta,
            decisions: map
                .decisions
                .iter()
                .map(|decision| Decision {
                    epoch: decision.epoch,
                    unix_ms: decision.unix_ms,
                    text: decision.text.clone(),
                })
                .collect(),
            next_replica_id: map.next_replica_id,
            moves: map.moves.iter().map(move_from_proto).collect::<Result<_, _>>()?,
            splits: map.splits.iter().map(split_from_proto).collect(),
            read_replicas: map.read_replicas,
        };
        map.validate()?;
        Ok(map)
    }
}

fn shard_to_proto(shard: &Shard) -> pb::ShardInfo {
    pb::ShardInfo {
        shard_id: shard.id.0,
        arc_start: shard.arc.start,
        arc_end: shard.arc.end,
        voters: shard.voters.iter().map(replica_to_proto).collect(),
        learners: shard.learners.iter().map(replica_to_proto).collect(),
        leader_node_id: shard.leader.map_or(0, |node| node.0),
        range_since: shard.range_since,
        split_parent: shard.origin.map_or(0, |origin| origin.parent.0),
        split_index: shard.origin.map_or(0, |origin| origin.index),
    }
}

fn shard_from_proto(shard: &pb::ShardInfo) -> Shard {
    Shard {
        id: ShardId(shard.shard_id),
        arc: HashRange {
            start: shard.arc_start,
            end: shard.arc_end,
        },
        voters: shard.voters.iter().map(replica_from_proto).collect(),
        learners: shard.learners.iter().map(replica_from_proto).collect(),
        leader: (shard.leader_node_id != 0).then_some(NodeId(shard.leader_node_id)),
        range_since: shard.range_since,
        origin: (shard.split_index != 0).then_some(SplitOrigin {
            parent: ShardId(shard.split_parent),
            index: shard.split_index,
        }),
    }
}

fn replica_to_proto(replica: &Replica) -> pb::Replica {
    pb::Replica {
        replica_id: replica.replica_id.0,
        node_id: replica.node_id.0,
    }
}

fn replica_from_proto(replica: &pb::Replica) -> Replica {
    Replica {
        replica_id: ReplicaId(replica.replica_id),
        node_id: NodeId(replica.node_id),
    }
}

fn move_to_proto(m: &Move) -> pb::Move {
    let step = match m.step {
        MoveStep::CatchUp => pb::MoveStep::CatchUp,
        MoveStep::Promote => pb::MoveStep::Promote,
        MoveStep::RollBack => pb::MoveStep::RollBack,
    };
    pb::Move {
        shard_id: m.shard.0,
        from: Some(replica_to_proto(&m.from)),
        to: Some(replica_to_proto(&m.to)),
        step: step.into(),
        started_unix_ms: m.started_unix_ms,
        reason: m.reason.clone(),
        kind: match m.kind {
            MoveKind::Voter => pb::MoveKind::Voter,
            MoveKind::AddReadReplica => pb::MoveKind::AddReadReplica,
            MoveKind::RemoveReadReplica => pb::MoveKind::RemoveReadReplica,
        }
        .into(),
    }
}

fn move_from_proto(m: &pb::Move) -> Result<Move, MapError> {
    let malformed = |what: &str| MapError::Malformed(format!("the move of shard {} {what}", m.shard_id));
    let step = match pb::MoveStep::try_from(m.step) {
        Ok(pb::MoveStep::CatchUp) => MoveStep::CatchUp,
        Ok(pb::MoveStep::Promote) => MoveStep::Promote,
        Ok(pb::MoveStep::RollBack) => MoveStep::RollBack,
        Err(_) => return Err(malformed(&format!("has an unknown step {}", m.step))),
    };
    let kind = match pb::MoveKind::try_from(m.kind) {
        Ok(pb::MoveKind::Voter) => MoveKind::Voter,
        Ok(pb::MoveKind::AddReadReplica) => MoveKind::AddReadReplica,
        Ok(pb::MoveKind::RemoveReadReplica) => MoveKind::RemoveReadReplica,
        Err(_) => return Err(malformed(&format!("has an unknown kind {}", m.kind))),
    };
    Ok(Move {
        shard: ShardId(m.shard_id),
        from: replica_from_proto(
            m.from
                .as_ref()
                .ok_or_else(|| malformed("has no source replica"))?,
        ),
        to: replica_from_proto(m.to.as_ref().ok_or_else(|| malformed("has no target replica"))?),
        step,
        started_unix_ms: m.started_unix_ms,
        reason: m.reason.clone(),
        kind,
    })
}

fn split_to_proto(split: &Split) -> pb::Split {
    pb::Split {
        parent_shard_id: split.parent.0,
        child_shard_id: split.child.0,
        at: split.at,
        replicas: split.replicas.iter().map(replica_to_proto).collect(),
        started_unix_ms: split.started_unix_ms,
        reason: split.reason.clone(),
    }
}

fn split_from_proto(split: &pb::Split) -> Split {
    Split {
        parent: ShardId(split.parent_shard_id),
        child: ShardId(split.child_shard_id),
        at: split.at,
        replicas: split.replicas.iter().map(replica_from_proto).collect(),
        started_unix_ms: split.started_unix_ms,
        reason: split.reason.clone(),
    }
}

impl ToProto for MapChange {
    type Proto = pb::MapChange;

    fn to_proto(&self) -> pb::MapChange {
        use pb::map_change::Change;
        let change = match self {
            MapChange::SetReadReplicas { count } => Change::SetReadReplicas(pb::SetReadReplicasRequest {
                read_replicas: *count,
            }),
            MapChange::MoveReplica {
                shard,
                from,
                to,
                reason,
            } => Change::MoveReplica(pb::MapChangeMove {
                shard_id: shard.0,
                from_node: from.0,
                to_node: to.0,
                reason: reason.clone(),
            }),
            MapChange::SplitShard { shard, reason } => Change::SplitShard(pb::MapChangeSplit {
                shard_id: shard.0,
                reason: reason.clone(),
            }),
            MapChange::DecommissionNode { node } => {
                Change::DecommissionNode(pb::DecommissionNodeRequest { node_id: node.0 })
            }
            MapChange::Join {
                node,
                addr,
                incarnation,
                role,
            } => Change::Join(pb::JoinRequest {
                node_id: node.map_or(0, |node| node.0),
                addr: addr.clone(),
                incarnation: *incarnation,
                role: match role {
                    NodeRole::Voter => pb::NodeRole::Voter,
                    NodeRole::ReadReplica => pb::NodeRole::ReadReplica,
                }
                .into(),
            }),
        };
        pb::MapChange { change: Some(change) }
    }
}

impl FromProto for MapChange {
    type Proto = pb::MapChange;
    type Error = String;

    /// Refuses, saying why, a change that is missing or names an unknown role.
    fn from_proto(change: &pb::MapChange) -> Result<MapChange, String> {
        use pb::map_change::Change;
        Ok(match change.change.as_ref().ok_or("the map change is empty")? {
            Change::SetReadReplicas(request) => MapChange::SetReadReplicas {
                count: request.read_replicas,
            },
            Change::MoveReplica(request) => MapChange::MoveReplica {
                shard: ShardId(request.shard_id),
                from: NodeId(request.from_node),
                to: NodeId(request.to_node),
                reason: request.reason.clone(),
            },
            Change::SplitShard(request) => MapChange::SplitShard {
                shard: ShardId(request.shard_id),
                reason: request.reason.clone(),
            },
            Change::DecommissionNode(request) => MapChange::DecommissionNode {
                node: NodeId(request.node_id),
            },
            Change::Join(request) => MapChange::Join {
                node: (request.node_id != 0).then_some(NodeId(request.node_id)),
                addr: request.addr.clone(),
                incarnation: request.incarnation,
                role: match pb::NodeRole::try_from(request.role) {
                    Ok(pb::NodeRole::Voter) => NodeRole::Voter,
                    Ok(pb::NodeRole::ReadReplica) => NodeRole::ReadReplica,
                    Err(_) => return Err(format!("node role {} is unknown", request.role)),
                },
            },
        })
    }
}

#[cfg(test)]
mod tests;

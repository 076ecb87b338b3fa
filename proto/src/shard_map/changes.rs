//! The changes an operator (or a node acting for one: a split checker, a joining node) may ask of
//! the map. Each is a typed request, validated against the map it is applied to on the metadata
//! leader: nothing outside the leader ever hands it a whole map. The leader's own controller,
//! mover and splitter change the map in place with the transitions of the other modules.

use ringkv_core::{NodeId, ShardId};

use super::{NodeRole, ShardMap};
use crate::pb;

/// Most read replicas a shard may be asked to keep: more than any cluster has nodes for.
pub const MAX_READ_REPLICAS: u32 = 64;

/// One requested change of the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapChange {
    /// Every data shard keeps at least this many read replicas (besides one on each
    /// read-replica node).
    SetReadReplicas { count: u32 },
    /// Move `shard`'s replica on node `from` to node `to`.
    MoveReplica {
        shard: ShardId,
        from: NodeId,
        to: NodeId,
        reason: String,
    },
    /// Split `shard` at the midpoint of its arc.
    SplitShard { shard: ShardId, reason: String },
    /// Move every replica off `node`, then remove it.
    DecommissionNode { node: NodeId },
    /// Record a node with an empty data directory (`node` `None`: assign the next id).
    Join {
        node: Option<NodeId>,
        addr: String,
        incarnation: u64,
        role: NodeRole,
    },
}

impl MapChange {
    /// What the change is, for errors and logs.
    pub fn describe(&self) -> String {
        match self {
            MapChange::SetReadReplicas { count } => format!("setting read_replicas to {count}"),
            MapChange::MoveReplica { shard, from, to, .. } => {
                format!("moving shard {shard}'s replica from node {from} to node {to}")
            }
            MapChange::SplitShard { shard, .. } => format!("splitting shard {shard}"),
            MapChange::DecommissionNode { node } => format!("decommissioning node {node}"),
            MapChange::Join { addr, .. } => format!("adding the node at {addr}"),
        }
    }

    /// Applies the change to `map` as the change to its next epoch, or refuses, saying why,
    /// leaving `map` as it was. A change the map already holds leaves it as it is (a retry).
    pub fn apply(&self, map: &mut ShardMap, now_unix_ms: u64) -> Result<(), String> {
        match self {
            MapChange::SetReadReplicas { count } => {
                if *count > MAX_READ_REPLICAS {
                    return Err(format!(
                        "read_replicas {count} is more than the most a shard may keep, {MAX_READ_REPLICAS}"
                    ));
                }
                if map.read_replicas != *count {
                    map.read_replicas = *count;
                    map.record_decision(
                        map.epoch + 1,
                        now_unix_ms,
                        format!("every data shard keeps at least {count} read replicas"),
                    );
                }
                Ok(())
            }
            MapChange::MoveReplica {
                shard,
                from,
                to,
                reason,
            } => map
                .begin_move(*shard, *from, *to, now_unix_ms, reason)
                .map(|_| ()),
            MapChange::SplitShard { shard, reason } => {
                map.begin_split(*shard, now_unix_ms, reason).map(|_| ())
            }
            MapChange::DecommissionNode { node } => map.decommission(*node, now_unix_ms),
            MapChange::Join {
                node,
                addr,
                incarnation,
                role,
            } => {
                let id = map.add_node(*node, addr, *incarnation, now_unix_ms)?;
                if let Some(info) = map.nodes.get_mut(&id) {
                    info.role = *role;
                }
                Ok(())
            }
        }
    }

    pub fn to_proto(&self) -> pb::MapChange {
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

    /// Refuses, saying why, a change that is missing or names an unknown role.
    pub fn from_proto(change: &pb::MapChange) -> Result<MapChange, String> {
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
mod tests {
    use super::*;

    fn map() -> ShardMap {
        ShardMap::bootstrap(9, &crate::shard_map::tests::nodes(4), 4, 3).expect("bootstrap")
    }

    /// Every change survives its wire form, and applies as the map's own transition does.
    #[test]
    fn changes_round_trip_and_apply_or_refuse_leaving_the_map_as_it_was() {
        let changes = [
            MapChange::SetReadReplicas { count: 2 },
            MapChange::SplitShard {
                shard: ShardId(1),
                reason: "test".into(),
            },
            MapChange::DecommissionNode { node: NodeId(4) },
            MapChange::Join {
                node: None,
                addr: "127.0.0.1:9000".into(),
                incarnation: 77,
                role: NodeRole::ReadReplica,
            },
        ];
        for change in &changes {
            assert_eq!(&MapChange::from_proto(&change.to_proto()).unwrap(), change);
            let mut map = map();
            change
                .apply(&mut map, 1)
                .unwrap_or_else(|e| panic!("{change:?}: {e}"));
            map.validate().unwrap();
            assert_ne!(map, self::map(), "{change:?} changed nothing");
        }
        let mut joined = map();
        changes[3].apply(&mut joined, 1).unwrap();
        assert_eq!(joined.nodes[&NodeId(5)].role, NodeRole::ReadReplica);
        // A retry of an applied setting changes nothing.
        let mut set = map();
        changes[0].apply(&mut set, 1).unwrap();
        let before = set.clone();
        changes[0].apply(&mut set, 2).unwrap();
        assert_eq!(set, before);

        // Refused, saying why, and the map is untouched.
        let refused = [
            (MapChange::SetReadReplicas { count: 65 }, "more than"),
            (
                MapChange::SplitShard {
                    shard: ShardId(99),
                    reason: "test".into(),
                },
                "does not exist",
            ),
            (
                MapChange::DecommissionNode { node: NodeId(9) },
                "not in the cluster",
            ),
            (
                MapChange::MoveReplica {
                    shard: ShardId(1),
                    from: NodeId(1),
                    to: NodeId(1),
                    reason: "test".into(),
                },
                "",
            ),
        ];
        for (change, says) in refused {
            let mut map = map();
            let error = change.apply(&mut map, 1).expect_err("refused");
            assert!(error.contains(says), "{change:?}: {error}");
            assert_eq!(map, self::map());
        }
        assert!(MapChange::from_proto(&pb::MapChange { change: None }).is_err());
    }
}

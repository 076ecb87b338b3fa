//! The changes an operator (or a node acting for one: a split checker, a joining node) may ask of
//! the map. Each is a typed request, validated against the map it is applied to on the metadata
//! leader: nothing outside the leader ever hands it a whole map. The leader's own controller,
//! mover and splitter change the map in place with the transitions of the other modules.

use ringkv_core::{NodeId, ShardId};

use super::{NodeRole, ShardMap};

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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> ShardMap {
        ShardMap::bootstrap(9, &crate::tests::nodes(4), 4, 3).expect("bootstrap")
    }

    /// Every change applies as the map's own transition does, or is refused leaving the map as
    /// it was.
    #[test]
    fn changes_apply_or_are_refused_leaving_the_map_as_it_was() {
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
    }
}

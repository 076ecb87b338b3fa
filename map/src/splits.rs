//! Shard splits as the map records them. A split of shard P at hash `at` is listed in
//! `ShardMap::splits` from the moment it begins until P's leader has applied the split command:
//! then the map gives P the arc `[P.start, at - 1]` and adds the child shard C with `[at, P.end]`,
//! whose replicas (fresh ids) sit on the nodes of P's voters. A split is never rolled back: the
//! command can always be applied once P has a leader.
//!
//! `server/src/node/splits.rs` begins and applies splits.

use ringkv_core::{ReplicaId, ShardId};

use super::{HashRange, Replica, Shard, ShardMap, SplitOrigin};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub parent: ShardId,
    pub child: ShardId,
    /// The first hash of the child's arc.
    pub at: u64,
    /// The child's replicas: one per voter of the parent, on the same node, in the same order.
    pub replicas: Vec<Replica>,
    /// Wall clock of the node that began it, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Why: an operator's request, or the size or write rate that triggered it.
    pub reason: String,
}

impl ShardMap {
    /// The split of `shard` in progress, if any.
    pub fn split_of(&self, shard: ShardId) -> Option<&Split> {
        self.splits.iter().find(|split| split.parent == shard)
    }

    /// Whether `shard` is moving a replica or splitting: it takes neither another move nor a
    /// split until that ends.
    pub fn is_changing(&self, shard: ShardId) -> bool {
        self.move_of(shard).is_some() || self.split_of(shard).is_some()
    }

    /// Records a new split of `shard` at its arc's midpoint, as the change to the next epoch.
    /// Refuses, saying why, a split that cannot be made.
    pub fn begin_split(&mut self, shard: ShardId, now_unix_ms: u64, reason: &str) -> Result<Split, String> {
        if shard.is_meta() {
            return Err("the metadata group is not split: it holds the map, not keys".into());
        }
        if let Some(moving) = self.move_of(shard) {
            return Err(format!(
                "shard {shard} is moving a replica from node {} to node {}; split it once the move ends",
                moving.from.node_id, moving.to.node_id
            ));
        }
        if self.split_of(shard).is_some() {
            return Err(format!("shard {shard} is already splitting; wait for it to end"));
        }
        let Some(group) = self.shard(shard) else {
            return Err(format!("shard {shard} does not exist"));
        };
        // Read replicas stay the parent's; the child gets its own from the controller later.
        let read_replicas = self.read_replicas_of(shard);
        let joining: Vec<_> = group
            .learners
            .iter()
            .filter(|learner| !read_replicas.contains(learner))
            .collect();
        if !joining.is_empty() {
            return Err(format!(
                "shard {shard} has learners {joining:?} joining it; split it once they have"
            ));
        }
        let arc = group.arc;
        if arc.end - arc.start < 1 {
            return Err(format!("shard {shard} covers a single hash: it cannot be split"));
        }
        let at = arc.start + (arc.end - arc.start) / 2 + 1;
        let child = self.next_shard_id();
        if child >= ShardId::META {
            return Err(format!(
                "no shard id is left below {}: the cluster has as many shards as it can have",
                ShardId::META
            ));
        }
        let voters = group.voters.clone();
        let replicas: Vec<Replica> = voters
            .iter()
            .enumerate()
            .map(|(offset, voter)| Replica {
                replica_id: ReplicaId(self.next_replica_id + offset as u64),
                node_id: voter.node_id,
            })
            .collect();
        self.next_replica_id += replicas.len() as u64;
        let begun = Split {
            parent: shard,
            child,
            at,
            replicas,
            started_unix_ms: now_unix_ms,
            reason: reason.to_owned(),
        };
        self.splits.push(begun.clone());
        self.record_decision(
            self.epoch + 1,
            now_unix_ms,
            format!(
                "begin splitting shard {shard} at hash {at:#018x}: shard {child} takes {at:#018x}..={:#018x}: {reason}",
                arc.end
            ),
        );
        Ok(begun)
    }

    /// Records the split of `shard` as applied at log index `split_index` of the parent: the parent's
    /// arc ends before `at` from that index on, and the child shard takes the rest with the
    /// split's replicas as its voters, its log starting after `split_index`.
    pub fn finish_split(&mut self, shard: ShardId, split_index: u64, now_unix_ms: u64) {
        let Some(index) = self.splits.iter().position(|split| split.parent == shard) else {
            return;
        };
        let done = self.splits.remove(index);
        let Some(parent) = self.shard_mut(shard) else {
            return;
        };
        let child_arc = HashRange {
            start: done.at,
            end: parent.arc.end,
        };
        parent.arc.end = done.at - 1;
        parent.range_since = split_index;
        let child = Shard {
            id: done.child,
            arc: child_arc,
            voters: done.replicas.clone(),
            learners: Vec::new(),
            leader: None,
            range_since: split_index,
            origin: Some(SplitOrigin {
                parent: shard,
                index: split_index,
            }),
        };
        let position = self.shards.partition_point(|s| s.arc.start < child_arc.start);
        self.shards.insert(position, child);
        self.record_decision(
            self.epoch + 1,
            now_unix_ms,
            format!(
                "split shard {shard}: shard {} now owns {:#018x}..={:#018x}",
                done.child, child_arc.start, child_arc.end
            ),
        );
    }

    /// The id the next new shard gets: above every shard id in use or promised to a split.
    fn next_shard_id(&self) -> ShardId {
        let highest = self
            .shards
            .iter()
            .map(|shard| shard.id)
            .chain(self.splits.iter().map(|split| split.child))
            .max()
            .unwrap_or(ShardId(0));
        ShardId(highest.0 + 1)
    }

    /// What is wrong with the splits in progress, if anything.
    pub(super) fn check_splits(&self) -> Option<String> {
        let mut parents = std::collections::BTreeSet::new();
        let mut ids: std::collections::BTreeSet<ReplicaId> = self
            .groups()
            .flat_map(|group| group.voters.iter().chain(&group.learners))
            .map(|r| r.replica_id)
            .collect();
        for split in &self.splits {
            if !parents.insert(split.parent) {
                return Some(format!("shard {} has two splits in progress", split.parent));
            }
            if let Some(taken) = split.replicas.iter().find(|r| !ids.insert(r.replica_id)) {
                return Some(format!(
                    "the split of shard {} reuses replica id {}",
                    split.parent, taken.replica_id
                ));
            }
            let Some(parent) = self.shards.iter().find(|s| s.id == split.parent) else {
                return Some(format!(
                    "a split names shard {}, which does not exist",
                    split.parent
                ));
            };
            if split.at <= parent.arc.start || split.at > parent.arc.end {
                return Some(format!(
                    "the split of shard {} at {:#018x} is outside its arc",
                    split.parent, split.at
                ));
            }
            if self.move_of(split.parent).is_some() {
                return Some(format!("shard {} is moving and splitting at once", split.parent));
            }
            if self.shard(split.child).is_some() || split.child >= ShardId::META || split.child.0 == 0 {
                return Some(format!(
                    "the split of shard {} creates shard {}, whose id is taken or invalid",
                    split.parent, split.child
                ));
            }
            let voter_nodes: Vec<_> = parent.voters.iter().map(|r| r.node_id).collect();
            let replica_nodes: Vec<_> = split.replicas.iter().map(|r| r.node_id).collect();
            if voter_nodes != replica_nodes {
                return Some(format!(
                    "the split of shard {} puts its child on nodes {replica_nodes:?}, not on the parent's voters {voter_nodes:?}",
                    split.parent
                ));
            }
            if split
                .replicas
                .iter()
                .any(|r| r.replica_id.0 >= self.next_replica_id)
            {
                return Some(format!(
                    "the split of shard {} uses replica ids not handed out yet",
                    split.parent
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FIRST_FRESH_REPLICA_ID;

    fn map() -> ShardMap {
        ShardMap::bootstrap(9, &crate::tests::nodes(4), 4, 3).expect("bootstrap")
    }

    #[test]
    fn a_split_halves_the_arc_and_puts_the_child_on_the_parents_nodes() {
        let mut map = map();
        let parent_before = map.shard(ShardId(2)).unwrap().clone();
        let split = map.begin_split(ShardId(2), 1, "test").expect("begin");
        assert_eq!(split.child, ShardId(5));
        assert_eq!(
            split.at,
            parent_before.arc.start + (parent_before.arc.end - parent_before.arc.start) / 2 + 1
        );
        let ids: Vec<u64> = split.replicas.iter().map(|r| r.replica_id.0).collect();
        assert_eq!(
            ids,
            (0..3).map(|i| FIRST_FRESH_REPLICA_ID + i).collect::<Vec<_>>()
        );
        map.validate().expect("valid with a split in progress");
        assert!(map.begin_split(ShardId(2), 2, "again").is_err(), "split twice");
        let (from, to) = {
            let group = map.shard(ShardId(2)).unwrap();
            let empty = map.nodes.keys().copied().find(|&n| group.replica_on(n).is_none());
            (group.voters[0].node_id, empty.unwrap())
        };
        assert!(
            map.begin_move(ShardId(2), from, to, 2, "test").is_err(),
            "a splitting shard took a move"
        );

        map.finish_split(ShardId(2), 40, 3);
        map.validate().expect("valid after the split");
        let parent = map.shard(ShardId(2)).unwrap();
        let child = map.shard(ShardId(5)).unwrap();
        // The arcs hold from the split's index; the child knows where it came from.
        assert_eq!((parent.range_since, child.range_since), (40, 40));
        assert_eq!(parent.origin, None);
        assert_eq!(
            child.origin,
            Some(SplitOrigin {
                parent: ShardId(2),
                index: 40
            })
        );
        assert_eq!(parent.arc.start, parent_before.arc.start);
        assert_eq!(parent.arc.end, split.at - 1);
        assert_eq!(child.arc.start, split.at);
        assert_eq!(child.arc.end, parent_before.arc.end);
        assert_eq!(child.voters, split.replicas);
        // Every hash of the old arc routes to exactly one of the two.
        assert_eq!(map.shard_for_hash(split.at - 1).id, ShardId(2));
        assert_eq!(map.shard_for_hash(split.at).id, ShardId(5));
        assert_eq!(map.shard_for_hash(parent_before.arc.end).id, ShardId(5));
        // The next split takes the next ids.
        let next = map.begin_split(ShardId(5), 4, "test").expect("split the child");
        assert_eq!(next.child, ShardId(6));
        assert_eq!(next.replicas[0].replica_id.0, FIRST_FRESH_REPLICA_ID + 3);
    }

    #[test]
    fn a_moving_shard_and_the_metadata_group_are_not_split() {
        let mut map = map();
        assert!(map.begin_split(ShardId::META, 1, "test").is_err());
        let group = map.shard(ShardId(1)).unwrap().clone();
        let empty = map
            .nodes
            .keys()
            .copied()
            .find(|&n| group.replica_on(n).is_none())
            .unwrap();
        map.begin_move(ShardId(1), group.voters[0].node_id, empty, 1, "test")
            .expect("move");
        let refused = map
            .begin_split(ShardId(1), 2, "test")
            .expect_err("split while moving");
        assert!(refused.contains("is moving"), "{refused}");
    }
}

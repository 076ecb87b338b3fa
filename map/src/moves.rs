//! Replica moves as the map records them. A move of shard S's replica `from` to a new replica `to`
//! on another node is listed in `ShardMap::moves` from the moment it begins (with `to` among S's
//! learners, so the target node starts it) until it ends: finished (`to` replaces `from` among the
//! voters) or rolled back (`to` is dropped). The steps in between are recorded too, so whoever
//! drives the move after a crash knows which way it may still go (ARCHITECTURE.md, "Moving a
//! replica").

use ringkv_core::{NodeId, ReplicaId, ShardId};

use super::{Replica, ShardMap};

/// Replica ids handed out after bootstrap count up from here. Bootstrap ids of data shards sit far
/// below (shard id in the high 32 bits, and shard ids stay small), those of the metadata group
/// far above (its shard id is `u32::MAX`).
pub const FIRST_FRESH_REPLICA_ID: u64 = 1 << 63;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveStep {
    /// `to` is being added as a learner and caught up; the move can still be rolled back.
    CatchUp,
    /// The membership change swapping `from` for `to` is under way: it is only ever finished.
    Promote,
    /// `to` is being removed again; the move ends as if it had never begun.
    RollBack,
}

/// What a move changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MoveKind {
    /// `to` replaces the voter `from` (or, with one of them `Replica::NONE`, a voter is added or
    /// removed).
    #[default]
    Voter,
    /// `to` becomes a read replica: added as a learner, caught up, and left a learner.
    AddReadReplica,
    /// The read replica `from` leaves the shard's learners.
    RemoveReadReplica,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub shard: ShardId,
    pub from: Replica,
    pub to: Replica,
    pub step: MoveStep,
    /// Wall clock of the node that began it, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Why the move was made.
    pub reason: String,
    pub kind: MoveKind,
}

impl Move {
    /// Whether the move only adds `to` as a voter: no replica leaves.
    pub fn adds_only(&self) -> bool {
        self.from == Replica::NONE
    }

    /// Whether the move only removes `from`: no replica joins.
    pub fn removes_only(&self) -> bool {
        self.to == Replica::NONE
    }
}

impl ShardMap {
    /// The move of `shard` in progress, if any.
    pub fn move_of(&self, shard: ShardId) -> Option<&Move> {
        self.moves.iter().find(|m| m.shard == shard)
    }

    /// The voter the leader balancer hands `shard`'s leadership to: its first voter, passing over
    /// one that a move in progress takes away (that one hands leadership off before it goes).
    pub fn preferred_leader(&self, shard: ShardId) -> Option<Replica> {
        let leaving = self.move_of(shard).map(|moving| moving.from.replica_id);
        self.shard(shard)?
            .voters
            .iter()
            .find(|voter| Some(voter.replica_id) != leaving)
            .copied()
    }

    /// Records a new move of `shard`'s voter on `from_node` to a fresh replica on `to_node`, as
    /// the change to the next epoch. Refuses, saying why, a move that cannot be made.
    pub fn begin_move(
        &mut self,
        shard: ShardId,
        from_node: NodeId,
        to_node: NodeId,
        now_unix_ms: u64,
        reason: &str,
    ) -> Result<Move, String> {
        if self.split_of(shard).is_some() {
            return Err(format!(
                "shard {shard} is splitting; move its replicas once the split ends"
            ));
        }
        if let Some(existing) = self.move_of(shard) {
            return Err(format!(
                "shard {shard} is already moving a replica from node {} to node {}; wait for it to end",
                existing.from.node_id, existing.to.node_id
            ));
        }
        match self.nodes.get(&to_node) {
            None => return Err(format!("node {to_node} is not in the cluster")),
            Some(info) if info.state != super::NodeState::Up => {
                return Err(format!("node {to_node} is {}: it takes no replicas", info.state));
            }
            Some(_) => {}
        }
        let next_id = ReplicaId(self.next_replica_id);
        let Some(group) = self.shard_mut(shard) else {
            return Err(format!("shard {shard} does not exist"));
        };
        let Some(from) = group.voters.iter().copied().find(|r| r.node_id == from_node) else {
            return Err(format!("shard {shard} has no voter on node {from_node}"));
        };
        if group.replica_on(to_node).is_some() {
            return Err(format!("shard {shard} already has a replica on node {to_node}"));
        }
        let to = Replica {
            replica_id: next_id,
            node_id: to_node,
        };
        group.learners.push(to);
        self.next_replica_id += 1;
        let begun = Move {
            shard,
            from,
            to,
            step: MoveStep::CatchUp,
            started_unix_ms: now_unix_ms,
            reason: reason.to_owned(),
            kind: MoveKind::Voter,
        };
        self.moves.push(begun.clone());
        self.record_decision(
            self.epoch + 1,
            now_unix_ms,
            format!(
                "begin moving shard {shard} replica {} on node {from_node} to replica {} on node {to_node}: {reason}",
                from.replica_id, to.replica_id
            ),
        );
        Ok(begun)
    }

    /// Records a move of `shard` that only adds a voter, a fresh replica on `to_node` (the
    /// metadata group growing), as the change to the next epoch. It goes through the steps of
    /// any move, with no replica leaving.
    pub fn begin_add_voter(
        &mut self,
        shard: ShardId,
        to_node: NodeId,
        now_unix_ms: u64,
        reason: &str,
    ) -> Result<Move, String> {
        self.begin_adding(shard, to_node, MoveKind::Voter, now_unix_ms, reason)
    }

    /// Records a move that adds a fresh learner of `shard` on `to_node`, of `kind`: a voter to
    /// be (promoted through the steps of any move) or a read replica (left a learner).
    fn begin_adding(
        &mut self,
        shard: ShardId,
        to_node: NodeId,
        kind: MoveKind,
        now_unix_ms: u64,
        reason: &str,
    ) -> Result<Move, String> {
        if self.is_changing(shard) {
            return Err(format!(
                "shard {shard} is moving a replica or splitting; wait for it to end"
            ));
        }
        if self.nodes.get(&to_node).map(|info| info.state) != Some(super::NodeState::Up) {
            return Err(format!("node {to_node} is not up: it takes no replicas"));
        }
        let to = Replica {
            replica_id: ReplicaId(self.next_replica_id),
            node_id: to_node,
        };
        let group = self
            .shard_mut(shard)
            .ok_or_else(|| format!("shard {shard} does not exist"))?;
        if group.replica_on(to_node).is_some() {
            return Err(format!("shard {shard} already has a replica on node {to_node}"));
        }
        group.learners.push(to);
        self.next_replica_id += 1;
        let begun = Move {
            shard,
            from: Replica::NONE,
            to,
            step: MoveStep::CatchUp,
            started_unix_ms: now_unix_ms,
            reason: reason.to_owned(),
            kind,
        };
        self.moves.push(begun.clone());
        let what = match kind {
            MoveKind::Voter => "a voter",
            _ => "a read replica",
        };
        self.record_decision(
            self.epoch + 1,
            now_unix_ms,
            format!(
                "begin adding {what} to shard {shard}: replica {} on node {to_node}: {reason}",
                to.replica_id
            ),
        );
        Ok(begun)
    }

    /// Records a move of `shard` that only removes its voter on `from_node` (the metadata group
    /// shrinking), as the change to the next epoch. Refused if it would leave fewer than three
    /// voters, or fewer than two.
    pub fn begin_remove_voter(
        &mut self,
        shard: ShardId,
        from_node: NodeId,
        now_unix_ms: u64,
        reason: &str,
    ) -> Result<Move, String> {
        if self.is_changing(shard) {
            return Err(format!(
                "shard {shard} is moving a replica or splitting; wait for it to end"
            ));
        }
        let group = self
            .shard(shard)
            .ok_or_else(|| format!("shard {shard} does not exist"))?;
        let from = group
            .voters
            .iter()
            .copied()
            .find(|r| r.node_id == from_node)
            .ok_or_else(|| format!("shard {shard} has no voter on node {from_node}"))?;
        if group.voters.len() <= 3 {
            return Err(format!(
                "shard {shard} has {} voters; it keeps at least three",
                group.voters.len()
            ));
        }
        let begun = Move {
            shard,
            from,
            to: Replica::NONE,
            step: MoveStep::CatchUp,
            started_unix_ms: now_unix_ms,
            reason: reason.to_owned(),
            kind: MoveKind::Voter,
        };
        self.moves.push(begun.clone());
        self.record_decision(
            self.epoch + 1,
            now_unix_ms,
            format!(
                "begin removing shard {shard}'s voter on node {from_node} (replica {}): {reason}",
                from.replica_id
            ),
        );
        Ok(begun)
    }

    /// Records a move of `shard` that adds a read replica, a fresh learner on `to_node`, as the
    /// change to the next epoch.
    pub fn begin_add_read_replica(
        &mut self,
        shard: ShardId,
        to_node: NodeId,
        now_unix_ms: u64,
        reason: &str,
    ) -> Result<Move, String> {
        self.begin_adding(shard, to_node, MoveKind::AddReadReplica, now_unix_ms, reason)
    }

    /// Records a move of `shard` that removes its read replica on `from_node`, as the change to
    /// the next epoch.
    pub fn begin_remove_read_replica(
        &mut self,
        shard: ShardId,
        from_node: NodeId,
        now_unix_ms: u64,
        reason: &str,
    ) -> Result<Move, String> {
        if self.is_changing(shard) {
            return Err(format!(
                "shard {shard} is moving a replica or splitting; wait for it to end"
            ));
        }
        let from = self
            .read_replicas_of(shard)
            .into_iter()
            .find(|r| r.node_id == from_node)
            .ok_or_else(|| format!("shard {shard} has no read replica on node {from_node}"))?;
        let begun = Move {
            shard,
            from,
            to: Replica::NONE,
            step: MoveStep::CatchUp,
            started_unix_ms: now_unix_ms,
            reason: reason.to_owned(),
            kind: MoveKind::RemoveReadReplica,
        };
        self.moves.push(begun.clone());
        self.record_decision(
            self.epoch + 1,
            now_unix_ms,
            format!(
                "begin removing shard {shard}'s read replica on node {from_node} (replica {}): {reason}",
                from.replica_id
            ),
        );
        Ok(begun)
    }

    /// `shard`'s read replicas: its learners that no move in progress is adding as a voter or
    /// a read replica.
    pub fn read_replicas_of(&self, shard: ShardId) -> Vec<Replica> {
        let adding = self
            .move_of(shard)
            .filter(|m| m.kind != MoveKind::RemoveReadReplica)
            .map(|m| m.to.replica_id);
        self.shard(shard).map_or_else(Vec::new, |group| {
            group
                .learners
                .iter()
                .filter(|r| Some(r.replica_id) != adding)
                .copied()
                .collect()
        })
    }

    /// Records the next step of the move of `shard`.
    pub fn set_move_step(&mut self, shard: ShardId, step: MoveStep) {
        if let Some(moving) = self.moves.iter_mut().find(|m| m.shard == shard) {
            moving.step = step;
        }
    }

    /// Records the move of `shard` as finished: `to` takes `from`'s place among the voters.
    pub fn finish_move(&mut self, shard: ShardId, now_unix_ms: u64) {
        let Some(index) = self.moves.iter().position(|m| m.shard == shard) else {
            return;
        };
        let done = self.moves.remove(index);
        if done.kind != MoveKind::Voter {
            if let Some(group) = self.shard_mut(shard)
                && done.kind == MoveKind::RemoveReadReplica
            {
                group.learners.retain(|r| r.replica_id != done.from.replica_id);
            }
            let text = match done.kind {
                MoveKind::AddReadReplica => format!(
                    "added read replica {} on node {} to shard {shard}",
                    done.to.replica_id, done.to.node_id
                ),
                _ => format!(
                    "removed read replica {} on node {} from shard {shard}",
                    done.from.replica_id, done.from.node_id
                ),
            };
            self.record_decision(self.epoch + 1, now_unix_ms, text);
            return;
        }
        if let Some(group) = self.shard_mut(shard) {
            group.learners.retain(|r| r.replica_id != done.to.replica_id);
            if done.adds_only() {
                group.voters.push(done.to);
            } else if done.removes_only() {
                group.voters.retain(|r| r.replica_id != done.from.replica_id);
            } else {
                for voter in &mut group.voters {
                    if voter.replica_id == done.from.replica_id {
                        *voter = done.to;
                    }
                }
            }
            if group.leader == Some(done.from.node_id) {
                group.leader = None;
            }
        }
        let text = if done.adds_only() {
            format!(
                "added replica {} on node {} to shard {shard}'s voters",
                done.to.replica_id, done.to.node_id
            )
        } else if done.removes_only() {
            format!(
                "removed replica {} on node {} from shard {shard}'s voters",
                done.from.replica_id, done.from.node_id
            )
        } else {
            format!(
                "moved shard {shard} from node {} to node {} (replica {} replaced {})",
                done.from.node_id, done.to.node_id, done.to.replica_id, done.from.replica_id
            )
        };
        self.record_decision(self.epoch + 1, now_unix_ms, text);
    }

    /// Records the move of `shard` as rolled back: `to` is no longer a replica.
    pub fn abort_move(&mut self, shard: ShardId, now_unix_ms: u64, why: &str) {
        let Some(index) = self.moves.iter().position(|m| m.shard == shard) else {
            return;
        };
        let aborted = self.moves.remove(index);
        if let Some(group) = self.shard_mut(shard) {
            group.learners.retain(|r| r.replica_id != aborted.to.replica_id);
        }
        self.record_decision(
            self.epoch + 1,
            now_unix_ms,
            format!(
                "rolled back the move of shard {shard} from node {} to node {}: {why}",
                aborted.from.node_id, aborted.to.node_id
            ),
        );
    }

    /// What is wrong with the moves and the replica id allocator, if anything.
    pub(super) fn check_moves(&self) -> Option<String> {
        let mut moving = std::collections::BTreeSet::new();
        for m in &self.moves {
            if !moving.insert(m.shard) {
                return Some(format!("shard {} has two moves in progress", m.shard));
            }
            let Some(group) = self.shard(m.shard) else {
                return Some(format!("a move names shard {}, which does not exist", m.shard));
            };
            if !m.removes_only() && !group.learners.contains(&m.to) {
                return Some(format!(
                    "the move of shard {} names replica {} as its target, which is not a learner of the shard",
                    m.shard, m.to.replica_id
                ));
            }
            // `from` is a voter (a learner, for a read replica's removal) until the move finishes.
            let sources = match m.kind {
                MoveKind::RemoveReadReplica => &group.learners,
                _ => &group.voters,
            };
            if !m.adds_only() && !sources.contains(&m.from) {
                return Some(format!(
                    "the move of shard {} names replica {} as its source, which is not a voter of the shard",
                    m.shard, m.from.replica_id
                ));
            }
        }
        if self.next_replica_id < FIRST_FRESH_REPLICA_ID {
            return Some(format!(
                "the next replica id {} is below {FIRST_FRESH_REPLICA_ID}",
                self.next_replica_id
            ));
        }
        let meta_zone = ShardId::META.0 << 32;
        for group in self.groups() {
            for replica in group.voters.iter().chain(&group.learners) {
                let id = replica.replica_id.0;
                if (FIRST_FRESH_REPLICA_ID..meta_zone).contains(&id) && id >= self.next_replica_id {
                    return Some(format!(
                        "replica id {id} is not below the next replica id {}: it could be handed out again",
                        self.next_replica_id
                    ));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn four_nodes_three_replicas() -> ShardMap {
        ShardMap::bootstrap(9, &crate::tests::nodes(4), 4, 3).expect("bootstrap")
    }

    /// A node of the cluster that holds no replica of `shard`, and one of its voters.
    fn nodes_for_a_move(map: &ShardMap, shard: ShardId) -> (NodeId, NodeId) {
        let group = map.shard(shard).expect("shard");
        let empty = map.nodes.keys().copied().find(|&n| group.replica_on(n).is_none());
        (group.voters[0].node_id, empty.expect("a node without a replica"))
    }

    #[test]
    fn a_voter_that_a_move_takes_away_is_not_the_preferred_leader() {
        let mut map = four_nodes_three_replicas();
        let first = map.shard(ShardId(2)).unwrap().voters[0];
        let second = map.shard(ShardId(2)).unwrap().voters[1];
        assert_eq!(map.preferred_leader(ShardId(2)), Some(first));
        // Moving the first voter away: leadership goes to (and stays with) the next one.
        let (from, to) = nodes_for_a_move(&map, ShardId(2));
        assert_eq!(from, first.node_id);
        let begun = map.begin_move(ShardId(2), from, to, 1, "test").expect("begin");
        assert_eq!(map.preferred_leader(ShardId(2)), Some(second));
        // Once finished, the new replica takes the first voter's place.
        map.finish_move(ShardId(2), 2);
        assert_eq!(map.preferred_leader(ShardId(2)), Some(begun.to));
    }

    #[test]
    fn a_finished_move_replaces_the_voter_with_a_fresh_replica() {
        let mut map = four_nodes_three_replicas();
        let (from, to) = nodes_for_a_move(&map, ShardId(2));
        let begun = map.begin_move(ShardId(2), from, to, 1, "test").expect("begin");
        assert_eq!(begun.to.replica_id, ReplicaId(FIRST_FRESH_REPLICA_ID));
        assert_eq!(map.shard(ShardId(2)).unwrap().learners, vec![begun.to]);
        map.validate().expect("a map with a move in progress is valid");

        map.set_move_step(ShardId(2), MoveStep::Promote);
        assert_eq!(map.move_of(ShardId(2)).unwrap().step, MoveStep::Promote);
        map.finish_move(ShardId(2), 2);
        let group = map.shard(ShardId(2)).unwrap();
        assert!(group.learners.is_empty());
        assert_eq!(group.replica_on(to), Some(begun.to));
        assert_eq!(group.replica_on(from), None);
        assert!(map.moves.is_empty());
        map.validate().expect("valid after the move");

        // The next move gets the next id: ids are never handed out twice.
        let (from, to) = nodes_for_a_move(&map, ShardId(3));
        let second = map.begin_move(ShardId(3), from, to, 3, "test").expect("begin");
        assert_eq!(second.to.replica_id, ReplicaId(FIRST_FRESH_REPLICA_ID + 1));
        map.abort_move(ShardId(3), 4, "it did not catch up");
        assert_eq!(map.shard(ShardId(3)).unwrap().replica_on(to), None);
        assert_eq!(map.next_replica_id, FIRST_FRESH_REPLICA_ID + 2);
        assert!(map.decisions.iter().any(|d| d.text.contains("rolled back")));
    }

    #[test]
    fn impossible_moves_are_refused_with_the_reason() {
        let mut map = four_nodes_three_replicas();
        let (from, to) = nodes_for_a_move(&map, ShardId(1));
        let other_voter = map.shard(ShardId(1)).unwrap().voters[1].node_id;
        let refused = |result: Result<Move, String>| result.expect_err("refused");
        assert!(refused(map.begin_move(ShardId(77), from, to, 0, "")).contains("does not exist"));
        assert!(refused(map.begin_move(ShardId(1), to, from, 0, "")).contains("no voter on node"));
        assert!(refused(map.begin_move(ShardId(1), from, NodeId(9), 0, "")).contains("not in the cluster"));
        assert!(
            refused(map.begin_move(ShardId(1), from, other_voter, 0, "")).contains("already has a replica")
        );
        let unchanged = map.clone();
        map.begin_move(ShardId(1), from, to, 0, "").expect("begin");
        assert!(refused(map.begin_move(ShardId(1), other_voter, to, 0, "")).contains("already moving"));
        assert_ne!(map, unchanged);

        // A map whose allocator could hand out an id in use is malformed.
        let mut reused = map.clone();
        reused.next_replica_id = FIRST_FRESH_REPLICA_ID;
        assert!(reused.validate().is_err());
    }
}

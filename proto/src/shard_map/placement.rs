//! Where replicas should be: the controller's choices, as pure functions of the map.
//!
//! The controller (on the metadata leader) asks `next_placement_step` for one step at a time and
//! records it as a map change. In priority order:
//! 1. move replicas off nodes that are not up (decommissioning, or down: unheard for longer than
//!    the dead-node timeout);
//! 2. give the metadata group as many voters as the up nodes call for (`meta_voter_count`: 5 from
//!    five up nodes on, else 3), adding one on the up node with the fewest replicas, or removing
//!    one (on a node that is not up first);
//! 3. mark a decommissioning node removed once it holds no replica and no move names it;
//! 4. balance replica counts over the up nodes: from the fullest to the emptiest while they differ
//!    by more than one (each such move is needed, so the number of moves is the minimum);
//! 5. balance preferred leaders (a shard's first voter, whom the leader balancer hands leadership
//!    to) by reordering voters, no data moves: from a node with the most to one with at least two
//!    fewer, directly or along a chain of shards whose nodes each give one and take one (a node's
//!    shards may all share their other voters with nodes as full as it is);
//! 6. place read replicas (learners): one of every shard on each up read-replica node, at least
//!    `read_replicas` per shard (the rest on voter nodes holding no replica of the shard). Read
//!    replicas on nodes that are not up are removed first, right after step 1.
//!
//! Voters go only to nodes with the voter role (`up_nodes`).
//!
//! Counts are taken as the map will be once the moves in progress finish, so steps taken while
//! moves run never overshoot. Data shards are balanced; the metadata group is drained and sized.

use std::collections::{BTreeMap, BTreeSet};

use ringkv_core::{NodeId, ShardId};

use super::{MoveKind, NodeRole, NodeState, Shard, ShardMap, meta_voter_count};

/// One change the controller makes to the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementStep {
    /// Begin moving `shard`'s voter on `from` to `to`.
    Move {
        shard: ShardId,
        from: NodeId,
        to: NodeId,
        reason: String,
    },
    /// For each `(shard, node)`, make `node`'s voter the first of `shard`'s voters: its
    /// preferred leader. Several at once when one node passes a leadership on to the next.
    PreferLeaders {
        changes: Vec<(ShardId, NodeId)>,
        reason: String,
    },
    /// Mark a decommissioning node that holds nothing as removed.
    Remove { node: NodeId, reason: String },
    /// Begin adding a voter to `shard` on `node` (the metadata group growing).
    AddVoter {
        shard: ShardId,
        node: NodeId,
        reason: String,
    },
    /// Begin removing `shard`'s voter on `node` (the metadata group shrinking).
    RemoveVoter {
        shard: ShardId,
        node: NodeId,
        reason: String,
    },
    /// Begin adding a read replica (a learner) of `shard` on `node`.
    AddReadReplica {
        shard: ShardId,
        node: NodeId,
        reason: String,
    },
    /// Begin removing `shard`'s read replica on `node`.
    RemoveReadReplica {
        shard: ShardId,
        node: NodeId,
        reason: String,
    },
}

impl ShardMap {
    /// The nodes that take voters: up, with the voter role.
    pub fn up_nodes(&self) -> Vec<NodeId> {
        self.up_nodes_with(NodeRole::Voter)
    }

    /// The up nodes with the read-replica role.
    pub fn up_read_replica_nodes(&self) -> Vec<NodeId> {
        self.up_nodes_with(NodeRole::ReadReplica)
    }

    fn up_nodes_with(&self, role: NodeRole) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, info)| info.state == NodeState::Up && info.role == role)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The step that brings one shard's read replicas towards what the map calls for, if any:
    /// none on a node that is not up (`drain` only looks at those); one on every up read-replica
    /// node; at least `read_replicas` in all, the extra ones on voter nodes holding no replica of
    /// the shard (the emptiest first); none on voter nodes beyond that.
    fn read_replica_step(&self, drain: bool) -> Option<PlacementStep> {
        let rr_nodes = self.up_read_replica_nodes();
        let voter_nodes = self.up_nodes();
        for shard in &self.shards {
            if self.is_changing(shard.id) {
                continue;
            }
            let replicas = self.read_replicas_of(shard.id);
            for replica in &replicas {
                let state = self.nodes.get(&replica.node_id).map(|info| info.state);
                if state != Some(NodeState::Up) {
                    return Some(PlacementStep::RemoveReadReplica {
                        shard: shard.id,
                        node: replica.node_id,
                        reason: format!(
                            "node {} is {}",
                            replica.node_id,
                            state.map_or("unknown".to_owned(), |s| s.to_string())
                        ),
                    });
                }
            }
            if drain {
                continue;
            }
            if let Some(node) = rr_nodes.iter().find(|node| shard.replica_on(**node).is_none()) {
                return Some(PlacementStep::AddReadReplica {
                    shard: shard.id,
                    node: *node,
                    reason: format!("node {node} is a read-replica node: it holds one of every shard"),
                });
            }
            let on_voter_nodes: Vec<NodeId> = replicas
                .iter()
                .map(|r| r.node_id)
                .filter(|node| voter_nodes.contains(node))
                .collect();
            let wanted = self.read_replicas as usize;
            if replicas.len() < wanted {
                let held = |node: NodeId| {
                    self.shards
                        .iter()
                        .filter(|s| s.replica_on(node).is_some())
                        .count()
                };
                let target = voter_nodes
                    .iter()
                    .filter(|node| shard.replica_on(**node).is_none())
                    .min_by_key(|node| (held(**node), **node));
                if let Some(node) = target {
                    return Some(PlacementStep::AddReadReplica {
                        shard: shard.id,
                        node: *node,
                        reason: format!(
                            "shard {} has {} read replicas; read_replicas is {wanted}",
                            shard.id,
                            replicas.len()
                        ),
                    });
                }
            }
            if replicas.len() > wanted.max(rr_nodes.len())
                && let Some(node) = on_voter_nodes.last()
            {
                return Some(PlacementStep::RemoveReadReplica {
                    shard: shard.id,
                    node: *node,
                    reason: format!(
                        "shard {} has {} read replicas; read_replicas is {wanted}",
                        shard.id,
                        replicas.len()
                    ),
                });
            }
        }
        None
    }

    /// Whether `node` is still joining (as `ringkv node list` shows it): up, and holding fewer
    /// data-shard voters than its share when the voters are spread evenly over the up nodes (the
    /// count rounded down, which every node reaches once the cluster is balanced). A new node
    /// joins until the controller has moved its share to it; so does one that came back empty.
    pub fn is_joining(&self, node: NodeId) -> bool {
        if self
            .nodes
            .get(&node)
            .is_none_or(|info| info.state != NodeState::Up || info.role != NodeRole::Voter)
        {
            return false;
        }
        let up = self.up_nodes().len().max(1);
        let voters: usize = self.shards.iter().map(|shard| shard.voters.len()).sum();
        let held = self
            .shards
            .iter()
            .filter(|shard| shard.voters.iter().any(|voter| voter.node_id == node))
            .count();
        held < voters / up
    }

    /// The nodes holding `group`'s replicas once its move in progress, if any, has finished.
    fn planned_nodes(&self, group: &Shard) -> BTreeSet<NodeId> {
        let mut nodes: BTreeSet<NodeId> = group.voters.iter().map(|r| r.node_id).collect();
        if let Some(moving) = self.move_of(group.id)
            && moving.kind == MoveKind::Voter
        {
            nodes.remove(&moving.from.node_id);
            nodes.insert(moving.to.node_id);
        }
        nodes
    }

    /// Data-shard replicas per up node, as placed once the moves in progress finish.
    pub fn replica_counts(&self) -> BTreeMap<NodeId, usize> {
        let mut counts: BTreeMap<NodeId, usize> = self.up_nodes().into_iter().map(|n| (n, 0)).collect();
        for shard in &self.shards {
            for node in self.planned_nodes(shard) {
                if let Some(count) = counts.get_mut(&node) {
                    *count += 1;
                }
            }
        }
        counts
    }

    /// The controller's next step (see the module header), with at most `max_moves` moves in
    /// progress. `None` when the placement is as it should be, or only waits on moves.
    pub fn next_placement_step(&self, max_moves: usize) -> Option<PlacementStep> {
        let counts = self.replica_counts();
        let may_move = self.moves.len() < max_moves;
        // 1. Drain nodes that are not up.
        if may_move {
            for group in self.groups() {
                if self.is_changing(group.id) {
                    continue;
                }
                for voter in &group.voters {
                    let state = self.nodes.get(&voter.node_id).map(|info| info.state);
                    if state == Some(NodeState::Up) {
                        continue;
                    }
                    let target = counts
                        .iter()
                        .filter(|(node, _)| group.replica_on(**node).is_none())
                        .min_by_key(|(node, count)| (**count, **node))
                        .map(|(node, _)| *node);
                    if let Some(to) = target {
                        let state = state.map_or("unknown".to_owned(), |s| s.to_string());
                        return Some(PlacementStep::Move {
                            shard: group.id,
                            from: voter.node_id,
                            to,
                            reason: format!("node {} is {state}", voter.node_id),
                        });
                    }
                }
            }
        }
        // 1b. Drop read replicas on nodes that are not up.
        if may_move && let Some(step) = self.read_replica_step(true) {
            return Some(step);
        }
        // 2. Size the metadata group.
        if may_move && !self.is_changing(ShardId::META) {
            let up = self.up_nodes();
            let want = meta_voter_count(up.len());
            let voters = &self.meta.voters;
            if voters.len() > want && voters.len() > 3 {
                let not_up = voters.iter().find(|v| !up.contains(&v.node_id));
                let fullest = voters
                    .iter()
                    .max_by_key(|v| (counts.get(&v.node_id).copied().unwrap_or(0), v.node_id));
                if let Some(victim) = not_up.or(fullest) {
                    return Some(PlacementStep::RemoveVoter {
                        shard: ShardId::META,
                        node: victim.node_id,
                        reason: format!(
                            "the metadata group has {} voters; {} up nodes call for {want}",
                            voters.len(),
                            up.len()
                        ),
                    });
                }
            }
            if voters.len() < want {
                let target = counts
                    .iter()
                    .filter(|(node, _)| self.meta.replica_on(**node).is_none())
                    .min_by_key(|(node, count)| (**count, **node))
                    .map(|(node, _)| *node);
                if let Some(node) = target {
                    return Some(PlacementStep::AddVoter {
                        shard: ShardId::META,
                        node,
                        reason: format!(
                            "the metadata group has {} voters; {} up nodes call for {want}",
                            voters.len(),
                            up.len()
                        ),
                    });
                }
            }
        }
        // 3. Remove emptied decommissioning nodes.
        for (node, info) in &self.nodes {
            let holds = self.groups().any(|g| g.replica_on(*node).is_some());
            let named = self
                .moves
                .iter()
                .any(|m| m.from.node_id == *node || m.to.node_id == *node);
            if info.state == NodeState::Decommissioning && !holds && !named {
                return Some(PlacementStep::Remove {
                    node: *node,
                    reason: format!("node {node} is decommissioned: it holds no replica"),
                });
            }
        }
        // 4. Balance replica counts.
        if may_move
            && let Some((full, full_count, empty, empty_count)) = extremes(&counts)
            && full_count > empty_count + 1
        {
            let candidate = self.shards.iter().find(|shard| {
                !self.is_changing(shard.id)
                    && shard.voters.iter().any(|v| v.node_id == full)
                    && shard.replica_on(empty).is_none()
            });
            if let Some(shard) = candidate {
                return Some(PlacementStep::Move {
                    shard: shard.id,
                    from: full,
                    to: empty,
                    reason: format!(
                        "balance replicas: node {full} has {full_count}, node {empty} has {empty_count}"
                    ),
                });
            }
        }
        // 5. Balance preferred leaders.
        if let Some((changes, reason)) = self.leader_chain() {
            return Some(PlacementStep::PreferLeaders { changes, reason });
        }
        // 6. Place read replicas.
        if may_move {
            return self.read_replica_step(false);
        }
        None
    }

    /// Records `step` as the change to the next epoch.
    pub fn apply_placement_step(&mut self, step: &PlacementStep, now_unix_ms: u64) -> Result<(), String> {
        match step {
            PlacementStep::Move {
                shard,
                from,
                to,
                reason,
            } => self.begin_move(*shard, *from, *to, now_unix_ms, reason).map(drop),
            PlacementStep::PreferLeaders { changes, reason } => {
                for (shard, node) in changes {
                    let group = self
                        .shard_mut(*shard)
                        .ok_or_else(|| format!("shard {shard} does not exist"))?;
                    let index = group
                        .voters
                        .iter()
                        .position(|v| v.node_id == *node)
                        .ok_or_else(|| format!("shard {shard} has no voter on node {node}"))?;
                    let preferred = group.voters.remove(index);
                    group.voters.insert(0, preferred);
                    self.record_decision(
                        self.epoch + 1,
                        now_unix_ms,
                        format!("prefer node {node} as leader of shard {shard}: {reason}"),
                    );
                }
                Ok(())
            }
            PlacementStep::AddVoter { shard, node, reason } => {
                self.begin_add_voter(*shard, *node, now_unix_ms, reason).map(drop)
            }
            PlacementStep::RemoveVoter { shard, node, reason } => self
                .begin_remove_voter(*shard, *node, now_unix_ms, reason)
                .map(drop),
            PlacementStep::AddReadReplica { shard, node, reason } => self
                .begin_add_read_replica(*shard, *node, now_unix_ms, reason)
                .map(drop),
            PlacementStep::RemoveReadReplica { shard, node, reason } => self
                .begin_remove_read_replica(*shard, *node, now_unix_ms, reason)
                .map(drop),
            PlacementStep::Remove { node, reason } => {
                let info = self
                    .nodes
                    .get_mut(node)
                    .ok_or_else(|| format!("node {node} is not in the cluster"))?;
                info.state = NodeState::Removed;
                self.record_decision(
                    self.epoch + 1,
                    now_unix_ms,
                    format!("removed node {node}: {reason}"),
                );
                Ok(())
            }
        }
    }

    /// Adds a node with an empty data directory, as the change to the next epoch; `node` `None`
    /// assigns the next id after every id the map has held. Returns its id; a node already added
    /// with this incarnation is answered as when it was added, and the map is left as it is.
    /// Refuses, saying why, an id held by another data directory or an address another node uses.
    pub fn add_node(
        &mut self,
        node: Option<NodeId>,
        addr: &str,
        incarnation: u64,
        now_unix_ms: u64,
    ) -> Result<NodeId, String> {
        if incarnation == 0 {
            return Err("a joining node needs a nonzero incarnation".into());
        }
        // Asked again by a node already added (its answer was lost): the same answer.
        if let Some((id, _)) = self
            .nodes
            .iter()
            .find(|(_, info)| info.incarnation == incarnation)
            && node.is_none_or(|node| node == *id)
        {
            return Ok(*id);
        }
        if let Some(id) = node
            && let Some(info) = self.nodes.get(&id)
        {
            return Err(format!(
                "node {id} is already a member of this cluster with another data directory (incarnation \
                 {:016x}); start the new node with another --node-id, or without one to get an id assigned",
                info.incarnation
            ));
        }
        if let Some((other, _)) = self
            .nodes
            .iter()
            .find(|(_, info)| info.addr == addr && info.state != NodeState::Removed)
        {
            return Err(format!("node {other} already uses the address {addr}"));
        }
        let id = match node {
            Some(id) => id,
            None => NodeId(self.nodes.keys().last().map_or(1, |last| last.0 + 1)),
        };
        if id.0 == 0 || id.0 > u64::from(u32::MAX) {
            return Err(format!("node id {id} is out of range: use 1 to {}", u32::MAX));
        }
        self.nodes.insert(
            id,
            super::NodeInfo {
                addr: addr.to_owned(),
                incarnation,
                state: NodeState::Up,
                role: Default::default(),
            },
        );
        self.record_decision(self.epoch + 1, now_unix_ms, format!("node {id} joined at {addr}"));
        Ok(id)
    }

    /// Sets `node`'s state (up or down, as the controller hears it), recording `reason`.
    pub fn set_node_state(&mut self, node: NodeId, state: NodeState, reason: &str, now_unix_ms: u64) {
        if let Some(info) = self.nodes.get_mut(&node) {
            info.state = state;
            self.record_decision(
                self.epoch + 1,
                now_unix_ms,
                format!("node {node} is {state}: {reason}"),
            );
        }
    }

    /// Marks `node` decommissioning, as the change to the next epoch: a live node being retired,
    /// or a dead one known to be gone for good. Refuses, saying why, when the node is neither up
    /// nor down, or the nodes left could not hold every shard's replicas.
    pub fn decommission(&mut self, node: NodeId, now_unix_ms: u64) -> Result<(), String> {
        let Some(info) = self.nodes.get(&node) else {
            return Err(format!("node {node} is not in the cluster"));
        };
        if !matches!(info.state, NodeState::Up | NodeState::Down) {
            return Err(format!("node {node} is {} already", info.state));
        }
        let left = self.up_nodes().iter().filter(|n| **n != node).count();
        // The metadata group shrinks to what the nodes left call for; data shards keep theirs.
        if let Some(widest) = self.shards.iter().max_by_key(|g| g.voters.len())
            && widest.voters.len() > left
        {
            return Err(format!(
                "decommissioning node {node} would leave {left} nodes up, fewer than the {} replicas of shard {}; \
                 add a node first",
                widest.voters.len(),
                widest.id
            ));
        }
        self.nodes.get_mut(&node).expect("checked above").state = NodeState::Decommissioning;
        self.record_decision(
            self.epoch + 1,
            now_unix_ms,
            format!("decommission node {node}: requested by an operator"),
        );
        Ok(())
    }
}

/// The fullest node (lowest id among equals) and the emptiest (lowest id among equals).
fn extremes(counts: &BTreeMap<NodeId, usize>) -> Option<(NodeId, usize, NodeId, usize)> {
    let (full, full_count) = counts
        .iter()
        .max_by_key(|(node, count)| (**count, std::cmp::Reverse(**node)))?;
    let (empty, empty_count) = counts.iter().min_by_key(|(node, count)| (**count, **node))?;
    Some((*full, *full_count, *empty, *empty_count))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::NodeInfo;

    fn cluster(nodes: u64, shards: u32) -> ShardMap {
        ShardMap::bootstrap(9, &crate::shard_map::tests::nodes(nodes), shards, 3).expect("bootstrap")
    }

    /// Plays the controller: takes every step, finishing each move at once. Returns the moves made.
    fn settle(map: &mut ShardMap) -> usize {
        let mut moves = 0;
        for _ in 0..1_000 {
            let Some(step) = map.next_placement_step(1) else {
                return moves;
            };
            map.apply_placement_step(&step, 0)
                .expect("a step the map accepts");
            match step {
                PlacementStep::Move { shard, .. } => {
                    moves += 1;
                    map.finish_move(shard, 0);
                }
                PlacementStep::AddVoter { shard, .. }
                | PlacementStep::RemoveVoter { shard, .. }
                | PlacementStep::AddReadReplica { shard, .. }
                | PlacementStep::RemoveReadReplica { shard, .. } => {
                    map.finish_move(shard, 0);
                }
                _ => {}
            }
            map.epoch += 1;
            map.validate().expect("valid after each step");
        }
        panic!("the placement never settled");
    }

    fn spread(counts: &BTreeMap<NodeId, usize>) -> usize {
        counts.values().max().unwrap() - counts.values().min().unwrap()
    }

    #[test]
    fn a_bootstrapped_cluster_needs_no_step() {
        assert_eq!(cluster(5, 16).next_placement_step(2), None);
    }

    #[test]
    fn new_nodes_fill_with_the_minimum_number_of_moves() {
        // Three nodes hold 16 shards × 3 replicas; two empty nodes join.
        let mut map = cluster(3, 16);
        for id in [4, 5] {
            let info = NodeInfo {
                addr: format!("127.0.0.1:{}", 7000 + id),
                incarnation: 100 + id,
                state: NodeState::Up,
                role: Default::default(),
            };
            map.nodes.insert(NodeId(id), info);
        }
        let moves = settle(&mut map);
        let counts = map.replica_counts();
        assert!(spread(&counts) <= 1, "replicas per node: {counts:?}");
        assert!(
            spread(&map.preferred_leader_counts()) <= 1,
            "leaders: {:?}",
            map.preferred_leader_counts()
        );
        // 48 replicas over 5 nodes: the two new ones need 9 each at least (48 / 5 rounded down).
        assert_eq!(moves, 18, "moves made (the minimum is 18)");
    }

    /// Plays the controller as it runs: up to two moves at once, finishing in an order `seed`
    /// picks, and a node that may join while moves run. Returns once nothing is left to do.
    fn settle_concurrently(map: &mut ShardMap, seed: u64, mut join_after: Option<(usize, NodeId)>) {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for step_count in 0..1_000 {
            if let Some((after, node)) = join_after
                && step_count >= after
            {
                map.add_node(
                    Some(node),
                    &format!("127.0.0.1:{}", 7000 + node.0),
                    100 + node.0,
                    0,
                )
                .expect("added");
                map.epoch += 1;
                join_after = None;
            }
            // Either take the next step, or finish one of the moves in progress.
            let step = map.next_placement_step(2);
            let finish = !map.moves.is_empty() && (step.is_none() || next() % 2 == 0);
            if finish {
                let shard = map.moves[(next() % map.moves.len() as u64) as usize].shard;
                map.finish_move(shard, 0);
            } else if let Some(step) = step {
                map.apply_placement_step(&step, 0)
                    .expect("a step the map accepts");
            } else if join_after.is_none() {
                return;
            }
            map.epoch += 1;
            map.validate().expect("valid after each step");
        }
        panic!("the placement never settled (seed {seed})");
    }

    #[test]
    fn growing_balances_replicas_and_leaders_whatever_order_moves_finish_in() {
        for seed in 0..500 {
            for shards in [4, 8, 16] {
                let mut map = cluster(3, shards);
                map.add_node(Some(NodeId(4)), "127.0.0.1:7004", 104, 0)
                    .expect("added");
                let join_5_after = (seed % 7) as usize;
                settle_concurrently(&mut map, seed, Some((join_5_after, NodeId(5))));
                let counts = map.replica_counts();
                assert!(
                    spread(&counts) <= 1,
                    "seed {seed}, {shards} shards: replicas {counts:?}"
                );
                let leaders = map.preferred_leader_counts();
                assert!(
                    spread(&leaders) <= 1,
                    "seed {seed}, {shards} shards: preferred leaders {leaders:?}"
                );
            }
        }
    }

    #[test]
    fn read_replicas_go_to_read_replica_nodes_and_voter_nodes_as_the_setting_asks() {
        let mut map = cluster(3, 4);
        for id in [4, 5] {
            map.add_node(Some(NodeId(id)), &format!("127.0.0.1:{}", 7000 + id), 100 + id, 0)
                .expect("added");
            map.nodes.get_mut(&NodeId(id)).expect("added").role = NodeRole::ReadReplica;
        }
        settle(&mut map);
        let on = |map: &ShardMap, shard: &Shard| -> BTreeSet<NodeId> {
            map.read_replicas_of(shard.id).iter().map(|r| r.node_id).collect()
        };
        for shard in &map.shards {
            assert_eq!(
                on(&map, shard),
                BTreeSet::from([NodeId(4), NodeId(5)]),
                "shard {}",
                shard.id
            );
            assert!(
                shard.voters.iter().all(|v| v.node_id.0 <= 3),
                "no voter on a read-replica node: {shard:?}"
            );
        }
        assert!(
            map.meta.voters.iter().all(|v| v.node_id.0 <= 3),
            "nor a metadata voter"
        );
        assert_eq!(map.replica_counts().len(), 3, "read-replica nodes hold no voters");

        // A fourth voter node, and read_replicas 3: one more per shard, on a voter node holding
        // no replica of the shard (node 4 is the only one).
        map.add_node(Some(NodeId(6)), "127.0.0.1:7006", 106, 0)
            .expect("added");
        map.read_replicas = 3;
        settle(&mut map);
        for shard in &map.shards {
            let nodes = on(&map, shard);
            assert_eq!(nodes.len(), 3, "shard {}: {nodes:?}", shard.id);
            let extra: Vec<&NodeId> = nodes.iter().filter(|n| n.0 != 4 && n.0 != 5).collect();
            assert!(
                extra
                    .iter()
                    .all(|n| shard.voters.iter().all(|v| v.node_id != **n)),
                "the extra read replica is not on a node voting in the shard: {shard:?}"
            );
        }
        // Read-replica node 5 goes down: its read replicas are removed; lowering the setting
        // removes the extra ones on voter nodes.
        map.read_replicas = 0;
        map.nodes.get_mut(&NodeId(5)).expect("node 5").state = NodeState::Down;
        settle(&mut map);
        for shard in &map.shards {
            assert_eq!(on(&map, shard), BTreeSet::from([NodeId(4)]), "shard {}", shard.id);
        }
        map.validate().expect("valid");
    }

    #[test]
    fn a_new_node_is_joining_until_it_holds_its_share() {
        // 8 shards × 3 voters over 4 up nodes: a share of 6.
        let mut map = cluster(3, 8);
        map.add_node(Some(NodeId(4)), "127.0.0.1:7004", 104, 0)
            .expect("added");
        assert!(map.is_joining(NodeId(4)), "an empty new node is joining");
        assert!(!map.is_joining(NodeId(1)), "a full old node is not");
        let mut steps = 0;
        while let Some(step) = map.next_placement_step(1) {
            map.apply_placement_step(&step, 0)
                .expect("a step the map accepts");
            if let PlacementStep::Move { shard, .. } = step {
                map.finish_move(shard, 0);
            }
            map.epoch += 1;
            let held = map
                .shards
                .iter()
                .filter(|s| s.voters.iter().any(|v| v.node_id == NodeId(4)))
                .count();
            assert_eq!(map.is_joining(NodeId(4)), held < 6, "node 4 holds {held}");
            steps += 1;
            assert!(steps < 100, "the placement never settled");
        }
        assert!(
            map.nodes.keys().all(|node| !map.is_joining(*node)),
            "balanced: nobody joins"
        );
        // Down and removed nodes are not joining, whatever they hold.
        map.nodes.get_mut(&NodeId(4)).expect("node 4").state = NodeState::Down;
        assert!(!map.is_joining(NodeId(4)));
    }

    #[test]
    fn the_metadata_group_grows_to_five_voters_and_shrinks_back_to_three() {
        let mut map = cluster(3, 4);
        for id in [4, 5] {
            map.add_node(Some(NodeId(id)), &format!("127.0.0.1:{}", 7000 + id), 100 + id, 0)
                .expect("added");
        }
        settle(&mut map);
        let meta_nodes =
            |map: &ShardMap| -> BTreeSet<NodeId> { map.meta.voters.iter().map(|v| v.node_id).collect() };
        assert_eq!(
            meta_nodes(&map).len(),
            5,
            "five voters on five nodes: {:?}",
            map.meta.voters
        );
        assert!(
            map.decisions
                .iter()
                .any(|d| d.text.starts_with("begin adding a voter to shard meta"))
        );
        map.decommission(NodeId(5), 0).expect("decommission");
        settle(&mut map);
        let nodes = meta_nodes(&map);
        assert_eq!(
            nodes.len(),
            3,
            "three voters once four nodes are up: {:?}",
            map.meta.voters
        );
        assert!(!nodes.contains(&NodeId(5)));
        assert_eq!(map.nodes[&NodeId(5)].state, NodeState::Removed);
    }

    #[test]
    fn a_joining_node_gets_the_next_id_and_asking_again_changes_nothing() {
        let mut map = cluster(3, 4);
        assert_eq!(map.add_node(None, "127.0.0.1:9004", 404, 0), Ok(NodeId(4)));
        assert_eq!(map.nodes[&NodeId(4)].state, NodeState::Up);
        // The same data directory asking again (its answer was lost) gets the same answer, and
        // the map stays as it is.
        let joined = map.clone();
        assert_eq!(map.add_node(None, "127.0.0.1:9004", 404, 0), Ok(NodeId(4)));
        assert_eq!(map, joined);
        let taken = map
            .add_node(Some(NodeId(2)), "127.0.0.1:9009", 909, 0)
            .unwrap_err();
        assert!(taken.contains("node 2 is already a member"), "{taken}");
        let address = map.add_node(None, "127.0.0.1:9004", 505, 0).unwrap_err();
        assert!(address.contains("already uses the address"), "{address}");
        // Ids are never reused: after node 4 is removed, the next node is 5.
        map.nodes.get_mut(&NodeId(4)).unwrap().state = NodeState::Removed;
        assert_eq!(map.add_node(None, "127.0.0.1:9004", 606, 0), Ok(NodeId(5)));
        map.validate().expect("valid");
    }

    #[test]
    fn a_down_node_is_replaced_then_can_be_removed_for_good() {
        let mut map = cluster(4, 8);
        map.set_node_state(NodeId(3), NodeState::Down, "test", 0);
        map.epoch += 1;
        settle(&mut map);
        assert!(map.groups().all(|g| g.replica_on(NodeId(3)).is_none()));
        assert_eq!(
            map.nodes[&NodeId(3)].state,
            NodeState::Down,
            "down stays down until heard"
        );
        // `ringkv node remove`: a down node may be decommissioned; it is removed at once.
        map.decommission(NodeId(3), 0)
            .expect("a down node can be removed");
        map.epoch += 1;
        settle(&mut map);
        assert_eq!(map.nodes[&NodeId(3)].state, NodeState::Removed);
    }

    #[test]
    fn a_decommissioned_node_is_drained_then_removed() {
        let mut map = cluster(4, 8);
        let refused = cluster(3, 8)
            .decommission(NodeId(1), 0)
            .expect_err("3 nodes, 3 replicas");
        assert!(refused.contains("fewer than the 3 replicas"), "{refused}");
        map.decommission(NodeId(2), 0).expect("decommission");
        assert_eq!(
            map.decommission(NodeId(2), 0).unwrap_err(),
            "node 2 is decommissioning already"
        );
        map.epoch += 1;
        settle(&mut map);
        assert_eq!(map.nodes[&NodeId(2)].state, NodeState::Removed);
        assert!(map.groups().all(|g| g.replica_on(NodeId(2)).is_none()));
        let counts = map.replica_counts();
        assert_eq!(counts.len(), 3);
        assert!(
            counts.values().all(|&c| c == 8),
            "every shard on every remaining node: {counts:?}"
        );
    }
}

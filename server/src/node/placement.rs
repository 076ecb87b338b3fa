//! Where replicas should be: the controller's placement policy (`controller` runs it), as pure
//! functions of the map; the map's own transitions (`ringkv_map`) carry each step out.
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

use std::collections::BTreeMap;

use ringkv_engine::{NodeId, ShardId};
use ringkv_map::{NodeState, ShardMap, meta_voter_count};

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

/// The placement policy, on the map it reads.
pub trait Placement {
    /// The controller's next step (see the module header), with at most `max_moves` moves in
    /// progress. `None` when the placement is as it should be, or only waits on moves.
    fn next_placement_step(&self, max_moves: usize) -> Option<PlacementStep>;

    /// Records `step` as the change to the next epoch.
    fn apply_placement_step(&mut self, step: &PlacementStep, now_unix_ms: u64) -> Result<(), String>;
}

impl Placement for ShardMap {
    fn next_placement_step(&self, max_moves: usize) -> Option<PlacementStep> {
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
        if may_move && let Some(step) = read_replica_step(self, true) {
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
        if let Some((changes, reason)) = leader_chain(self) {
            return Some(PlacementStep::PreferLeaders { changes, reason });
        }
        // 6. Place read replicas.
        if may_move {
            return read_replica_step(self, false);
        }
        None
    }

    fn apply_placement_step(&mut self, step: &PlacementStep, now_unix_ms: u64) -> Result<(), String> {
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
}

/// The step that brings one shard's read replicas towards what the map calls for, if any:
/// none on a node that is not up (`drain` only looks at those); one on every up read-replica
/// node; at least `read_replicas` in all, the extra ones on voter nodes holding no replica of
/// the shard (the emptiest first); none on voter nodes beyond that.
fn read_replica_step(map: &ShardMap, drain: bool) -> Option<PlacementStep> {
    let rr_nodes = map.up_read_replica_nodes();
    let voter_nodes = map.up_nodes();
    for shard in &map.shards {
        if map.is_changing(shard.id) {
            continue;
        }
        let replicas = map.read_replicas_of(shard.id);
        for replica in &replicas {
            let state = map.nodes.get(&replica.node_id).map(|info| info.state);
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
        let wanted = map.read_replicas as usize;
        if replicas.len() < wanted {
            let held = |node: NodeId| map.shards.iter().filter(|s| s.replica_on(node).is_some()).count();
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

/// A chain of preferred-leader changes that moves one preferred leadership from a node with
/// `c` to one with at most `c - 2`, each node in between giving one and taking one, so no
/// count but those two changes. A shard led by `a` with a voter on `b` is an edge `a → b`;
/// the chain is the shortest path from the fullest node that has one. Every chain lowers the
/// sum of squared counts, so the controller never cycles; and when no chain exists, no
/// choice of first voters spreads the counts more evenly (the counts differ by at most one
/// whenever some choice allows that). `None` when balanced.
fn leader_chain(map: &ShardMap) -> Option<(Vec<(ShardId, NodeId)>, String)> {
    let counts = map.preferred_leader_counts();
    let fewest = *counts.values().min()?;
    let mut sources: Vec<(NodeId, usize)> = counts
        .iter()
        .filter(|(_, count)| **count >= fewest + 2)
        .map(|(node, count)| (*node, *count))
        .collect();
    sources.sort_by_key(|(node, count)| (std::cmp::Reverse(*count), *node));
    for (source, source_count) in sources {
        // Breadth-first from `source`: `reached[b] = (a, shard)` for the edge it came by.
        let mut reached: BTreeMap<NodeId, (NodeId, ShardId)> = BTreeMap::new();
        let mut frontier = vec![source];
        let mut target = None;
        'search: while !frontier.is_empty() {
            let mut next = Vec::new();
            for from in frontier {
                for shard in &map.shards {
                    if map.is_changing(shard.id) || shard.voters.first().map(|v| v.node_id) != Some(from) {
                        continue;
                    }
                    for voter in &shard.voters[1..] {
                        let to = voter.node_id;
                        let Some(&to_count) = counts.get(&to) else {
                            continue;
                        };
                        if to == source || reached.contains_key(&to) {
                            continue;
                        }
                        reached.insert(to, (from, shard.id));
                        if to_count + 2 <= source_count {
                            target = Some(to);
                            break 'search;
                        }
                        next.push(to);
                    }
                }
            }
            frontier = next;
        }
        let Some(target) = target else { continue };
        let mut changes = Vec::new();
        let mut at = target;
        while at != source {
            let (from, shard) = reached[&at];
            changes.push((shard, at));
            at = from;
        }
        changes.reverse();
        let through = if changes.len() > 1 {
            let middle: Vec<String> = changes[..changes.len() - 1]
                .iter()
                .map(|(_, node)| node.to_string())
                .collect();
            format!(" (through node {})", middle.join(", "))
        } else {
            String::new()
        };
        let reason = format!(
            "balance leaders: node {source} is preferred leader of {source_count} shards, node {target} of {}{through}",
            counts[&target]
        );
        return Some((changes, reason));
    }
    None
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
mod tests;

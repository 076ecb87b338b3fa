//! Balancing preferred leaders: a shard's first voter is the one the leader balancer hands
//! leadership to, so spreading first voters evenly spreads leaders, with no data moved.

use std::collections::BTreeMap;

use ringkv_core::{NodeId, ShardId};

use super::ShardMap;

impl ShardMap {
    /// Preferred leaders (first voters) of data shards per up node.
    pub fn preferred_leader_counts(&self) -> BTreeMap<NodeId, usize> {
        let mut counts: BTreeMap<NodeId, usize> = self.up_nodes().into_iter().map(|n| (n, 0)).collect();
        for shard in &self.shards {
            if let Some(count) = shard.voters.first().and_then(|v| counts.get_mut(&v.node_id)) {
                *count += 1;
            }
        }
        counts
    }

    /// A chain of preferred-leader changes that moves one preferred leadership from a node with
    /// `c` to one with at most `c - 2`, each node in between giving one and taking one, so no
    /// count but those two changes. A shard led by `a` with a voter on `b` is an edge `a → b`;
    /// the chain is the shortest path from the fullest node that has one. Every chain lowers the
    /// sum of squared counts, so the controller never cycles; and when no chain exists, no
    /// choice of first voters spreads the counts more evenly (the counts differ by at most one
    /// whenever some choice allows that). `None` when balanced.
    pub(super) fn leader_chain(&self) -> Option<(Vec<(ShardId, NodeId)>, String)> {
        let counts = self.preferred_leader_counts();
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
                    for shard in &self.shards {
                        if self.is_changing(shard.id) || shard.voters.first().map(|v| v.node_id) != Some(from)
                        {
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
}

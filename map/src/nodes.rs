//! The nodes of the map: which are up and take voters or read replicas, which are still joining,
//! how many replicas and preferred leaderships each holds, and the transitions of a node's life
//! in the cluster (joining, going down or up, being decommissioned).

use std::collections::{BTreeMap, BTreeSet};

use ringkv_core::NodeId;

use super::{MoveKind, NodeRole, NodeState, Shard, ShardMap};

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
    pub fn planned_nodes(&self, group: &Shard) -> BTreeSet<NodeId> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(nodes: u64, shards: u32) -> ShardMap {
        ShardMap::bootstrap(9, &crate::tests::nodes(nodes), shards, 3).expect("bootstrap")
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
}

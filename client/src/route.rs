//! The route cache: the client's copy of the shard map, with per-shard leader hints.
//!
//! Invariants:
//! - `map` is the newest map this client has seen: it is replaced only by a map whose epoch is at
//!   least its own (an older map from a lagging node never wins).
//! - Every map comes from one cluster: a map with another cluster id (an endpoint of another
//!   cluster) is refused, never adopted.
//! - A leader hint always names a node in `map.nodes`; a hint for an unknown node is not stored
//!   (the map is stale, and the caller refreshes it).
//! - A hint is dropped when its node fails a request at the transport level or says it is not the
//!   leader without naming another, so the next attempt tries the other voters.

use ringkv_map::ShardMap;
use ringkv_proto::{NodeId, ShardId};

use crate::error::Error;

/// Where one attempt of a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub shard_id: ShardId,
    pub epoch: u64,
    pub node_id: NodeId,
    pub addr: String,
}

pub(crate) struct RouteCache {
    map: ShardMap,
}

impl RouteCache {
    pub(crate) fn new(map: ShardMap) -> Self {
        RouteCache { map }
    }

    pub(crate) fn map(&self) -> &ShardMap {
        &self.map
    }

    /// The node to try for `shard_id` on the `attempt`-th try: the hinted leader, or else the
    /// voters in turn.
    pub(crate) fn route_shard(&self, shard_id: ShardId, attempt: u32) -> Option<Route> {
        let shard = self.map.shard(shard_id)?;
        let node_id = match shard.leader {
            Some(leader) => leader,
            None => {
                shard
                    .voters
                    .get(attempt as usize % shard.voters.len().max(1))?
                    .node_id
            }
        };
        self.route_to(shard_id, node_id)
    }

    /// The nodes holding `shard_id`'s replicas, voters and read replicas (learners).
    pub(crate) fn replica_nodes(&self, shard_id: ShardId) -> Vec<NodeId> {
        let Some(shard) = self.map.shard(shard_id) else {
            return Vec::new();
        };
        let mut nodes: Vec<NodeId> = shard
            .voters
            .iter()
            .chain(&shard.learners)
            .map(|replica| replica.node_id)
            .collect();
        nodes.dedup();
        nodes
    }

    /// Where an attempt at `node`'s replica of `shard_id` goes; `None` when the map does not
    /// know the node.
    pub(crate) fn route_to(&self, shard_id: ShardId, node_id: NodeId) -> Option<Route> {
        let addr = self.map.node_addr(node_id)?.to_owned();
        Some(Route {
            shard_id,
            epoch: self.map.epoch,
            node_id,
            addr,
        })
    }

    pub(crate) fn shard_for_key(&self, key: &[u8]) -> ShardId {
        self.map.shard_for_key(key).id
    }

    pub(crate) fn shard_for_hash(&self, hash: u64) -> ShardId {
        self.map.shard_for_hash(hash).id
    }

    /// Records that `node` leads `shard_id`. Returns false (storing nothing) when the map does not
    /// know the node or the shard: the map is stale.
    pub(crate) fn set_leader(&mut self, shard_id: ShardId, node: NodeId) -> bool {
        if !self.map.nodes.contains_key(&node) {
            return false;
        }
        match self.map.shard_mut(shard_id) {
            Some(shard) => {
                shard.leader = Some(node);
                true
            }
            None => false,
        }
    }

    /// Forgets `node` as the leader of `shard_id`, if it is the current hint.
    pub(crate) fn clear_leader(&mut self, shard_id: ShardId, node: NodeId) {
        if let Some(shard) = self.map.shard_mut(shard_id)
            && shard.leader == Some(node)
        {
            shard.leader = None;
        }
    }

    /// Adopts `map` unless it is older than the cached one (then keeps the cached one). Leader
    /// hints come with the new map. A map of another cluster is refused.
    pub(crate) fn replace(&mut self, map: ShardMap) -> Result<(), Error> {
        if map.cluster_id != self.map.cluster_id {
            return Err(Error::Protocol(format!(
                "a node answered with the shard map of cluster {:016x}, but this client is connected to \
                 cluster {:016x}: the endpoints belong to different clusters",
                map.cluster_id, self.map.cluster_id
            )));
        }
        if map.epoch >= self.map.epoch {
            self.map = map;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ringkv_map::NodeInfo;

    use super::*;

    fn map(epoch: u64) -> ShardMap {
        let nodes: BTreeMap<NodeId, NodeInfo> = (1..=3)
            .map(|id| {
                let info = NodeInfo {
                    addr: format!("127.0.0.1:{}", 7000 + id),
                    incarnation: id,
                    state: Default::default(),
                    role: Default::default(),
                };
                (NodeId(id), info)
            })
            .collect();
        let mut map = ShardMap::bootstrap(7, &nodes, 4, 3).unwrap();
        map.epoch = epoch;
        map
    }

    #[test]
    fn routes_follow_hints_and_rotate_voters_without_one() {
        let mut cache = RouteCache::new(map(1));
        let voters: Vec<NodeId> = cache
            .map()
            .shard(ShardId(2))
            .unwrap()
            .voters
            .iter()
            .map(|v| v.node_id)
            .collect();
        // No hint: successive attempts walk the voters.
        let tried: Vec<NodeId> = (0..3)
            .map(|attempt| cache.route_shard(ShardId(2), attempt).unwrap().node_id)
            .collect();
        assert_eq!(tried, voters);

        // Table of (action, expected node for attempt 0).
        enum Action {
            Hint(u64),
            Clear(u64),
        }
        let steps = [
            (Action::Hint(3), 3),
            (Action::Clear(1), 3),           // clearing another node leaves the hint
            (Action::Clear(3), voters[0].0), // clearing the hinted node falls back to the voters
            (Action::Hint(2), 2),
            (Action::Hint(9), 2), // unknown node: not stored
        ];
        let shard = ShardId(2);
        for (action, expected) in steps {
            match action {
                Action::Hint(node) => {
                    let stored = cache.set_leader(shard, NodeId(node));
                    assert_eq!(stored, node != 9);
                }
                Action::Clear(node) => cache.clear_leader(shard, NodeId(node)),
            }
            let route = cache.route_shard(shard, 0).unwrap();
            assert_eq!(route.node_id, NodeId(expected));
            assert_eq!(route.addr, format!("127.0.0.1:{}", 7000 + expected));
        }
        assert!(cache.route_shard(ShardId(99), 0).is_none(), "unknown shard");
    }

    #[test]
    fn an_older_map_never_replaces_a_newer_one() {
        let mut cache = RouteCache::new(map(5));
        cache.replace(map(4)).unwrap();
        assert_eq!(cache.map().epoch, 5, "an older map is ignored");
        let mut newer = map(5);
        newer.shard_mut(ShardId(1)).unwrap().leader = Some(NodeId(2));
        cache.replace(newer).unwrap();
        assert_eq!(
            cache.route_shard(ShardId(1), 0).unwrap().node_id,
            NodeId(2),
            "same epoch brings fresh leader hints"
        );
        cache.replace(map(6)).unwrap();
        assert_eq!(cache.map().epoch, 6);

        let mut foreign = map(9);
        foreign.cluster_id = 8;
        let error = cache.replace(foreign).unwrap_err();
        assert!(error.to_string().contains("different clusters"), "{error}");
        assert_eq!(cache.map().epoch, 6, "a map of another cluster is never adopted");
    }
}

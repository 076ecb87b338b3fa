//! ringkv-map: the shard map (how the 64-bit hash ring is cut into shards and which nodes hold
//! each shard) and its validated transitions: moves (`moves`), splits (`splits`), nodes joining,
//! leaving and going down (`nodes`), and the typed changes an operator asks for (`changes`).
//! Pure data: no I/O, no async, no wire format (the protobuf form is in `ringkv-proto`). The
//! controller's placement policy, which decides which transition to take next, lives beside the
//! controller in the server.
//!
//! Invariants, kept by every constructor and checked by `validate`:
//! - shards are sorted by arc start, their arcs are contiguous, and together they cover the whole ring
//!   exactly once (first starts at 0, last ends at `u64::MAX`);
//! - every replica names a node in `nodes`; a node holds at most one replica of a shard;
//! - replica ids are unique across the whole map (they are openraft node ids, never reused);
//! - the metadata group (`meta`, shard id `ShardId::META`) spans the whole ring, has voters on
//!   known nodes, and is not one of `shards`: no key routes to it.
//!
//! The map belongs to one cluster (`cluster_id`, random at bootstrap) and records each node's
//! incarnation: the random id its data directory got when it was created. A node whose data
//! directory was replaced has a new incarnation, so its peers can tell it is not the node that
//! held the replicas the map lists.
//!
//! The leader of a shard is only a hint, refreshed by whoever serves the map; it is not part of the
//! epoch, which increases only when arcs or replicas change.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64;

pub use ringkv_core::{HashRange, NodeId, ReplicaId, ShardId};

mod changes;
mod moves;
mod nodes;
mod splits;

pub use changes::{MAX_READ_REPLICAS, MapChange};
pub use moves::{FIRST_FRESH_REPLICA_ID, Move, MoveKind, MoveStep};
pub use splits::Split;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Replica {
    pub replica_id: ReplicaId,
    pub node_id: NodeId,
}

impl Replica {
    /// No replica: the source of a move that only adds a voter, or the target of one that only
    /// removes one (the metadata group growing or shrinking). Replica and node ids start at 1.
    pub const NONE: Replica = Replica {
        replica_id: ReplicaId(0),
        node_id: NodeId(0),
    };
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub id: ShardId,
    pub arc: HashRange,
    pub voters: Vec<Replica>,
    pub learners: Vec<Replica>,
    /// Node believed to lead the shard, if known.
    pub leader: Option<NodeId>,
    /// The log index from which `arc` holds: the index of the shard's last split, as the parent
    /// or as the child it created (0: never split). A replica that starts empty must start from a
    /// snapshot taken at or after it: replayed under the arc, older entries would apply
    /// differently from how they applied under the wider arc they were written for.
    pub range_since: u64,
    /// The shard this one was split off, if it was.
    pub origin: Option<SplitOrigin>,
}

/// Where a shard created by a split came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitOrigin {
    pub parent: ShardId,
    /// The log index at which the parent applied the split: the child's log starts after it, and
    /// its state then held everything the parent had applied of the child's keys.
    pub index: u64,
}

impl Shard {
    /// The replica of this shard on `node`, voter or learner.
    pub fn replica_on(&self, node: NodeId) -> Option<Replica> {
        self.voters
            .iter()
            .chain(&self.learners)
            .copied()
            .find(|r| r.node_id == node)
    }
}

/// A node as the map knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub addr: String,
    /// Random id of the node's data directory, fixed when it was created; never 0.
    pub incarnation: u64,
    pub state: NodeState,
    pub role: NodeRole,
}

/// What replicas a node takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeRole {
    /// Voters, and read replicas when `read_replicas` asks for them.
    #[default]
    Voter,
    /// Only read replicas (learners): one of every data shard.
    ReadReplica,
}

impl std::fmt::Display for NodeRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeRole::Voter => "voter",
            NodeRole::ReadReplica => "read-replica",
        })
    }
}

/// Where a node is in its life in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeState {
    /// A member that takes replicas.
    #[default]
    Up,
    /// Being emptied: the controller moves its replicas away, then marks it removed.
    Decommissioning,
    /// No longer a member: it holds no replicas, and its Raft messages are refused.
    Removed,
    /// Unheard for longer than the dead-node timeout: its replicas are re-created elsewhere. Up
    /// again once heard from.
    Down,
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeState::Up => "up",
            NodeState::Decommissioning => "decommissioning",
            NodeState::Removed => "removed",
            NodeState::Down => "down",
        })
    }
}

/// One decision taken about the map, with its reason (shown by `ringkv status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The epoch of the map the decision produced.
    pub epoch: u64,
    /// Wall clock of the node that took it, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    pub text: String,
}

/// How many decisions a map keeps: the oldest go first.
pub const MAX_DECISIONS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    /// The cluster this map belongs to; random at bootstrap, never 0.
    pub cluster_id: u64,
    /// Rises by one on every change of the map; leader hints do not count.
    pub epoch: u64,
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Sorted by `arc.start`.
    pub shards: Vec<Shard>,
    /// The metadata group, which stores this map.
    pub meta: Shard,
    /// The most recent decisions, oldest first; at most `MAX_DECISIONS`.
    pub decisions: Vec<Decision>,
    /// The next fresh replica id (see `FIRST_FRESH_REPLICA_ID`); ids are never reused.
    pub next_replica_id: u64,
    /// Replica moves in progress, at most one per shard.
    pub moves: Vec<Move>,
    /// Shard splits in progress, at most one per shard (and never with a move).
    pub splits: Vec<Split>,
    /// Read replicas every data shard keeps at least, besides one per up read-replica node.
    pub read_replicas: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MapError {
    #[error("a cluster needs at least one node")]
    NoNodes,
    #[error("a cluster needs at least one shard")]
    NoShards,
    #[error("replication factor {replication} is impossible with {nodes} nodes: it must be 1 to {nodes}")]
    BadReplication { replication: usize, nodes: usize },
    #[error("node id {0} is listed twice")]
    DuplicateNode(NodeId),
    #[error("node id {0} is invalid: node ids must be 1 to {max}", max = u32::MAX)]
    BadNodeId(NodeId),
    #[error("shard map is malformed: {0}")]
    Malformed(String),
}

/// Replica ids given at bootstrap: the shard id in the high half, the node id in the low half.
/// Unique because node ids fit in 32 bits; replicas added later take fresh ids from the map's
/// allocator (`FIRST_FRESH_REPLICA_ID`).
pub fn bootstrap_replica_id(shard: ShardId, node: NodeId) -> ReplicaId {
    ReplicaId((shard.0 << 32) | node.0)
}

/// How many voters the metadata group gets in a cluster of `nodes` nodes: 5 from 5 nodes on,
/// else 3, or every node when there are fewer.
pub fn meta_voter_count(nodes: usize) -> usize {
    if nodes >= 5 { 5 } else { nodes.min(3) }
}

impl ShardMap {
    /// The map a new cluster starts with: `n_shards` equal arcs, each on `replication` nodes chosen
    /// by rendezvous hashing and then balanced so every node holds as many replicas as any other
    /// (within one). Deterministic: every node computes the same map from the same inputs.
    pub fn bootstrap(
        cluster_id: u64,
        nodes: &BTreeMap<NodeId, NodeInfo>,
        n_shards: u32,
        replication: usize,
    ) -> Result<ShardMap, MapError> {
        if nodes.is_empty() {
            return Err(MapError::NoNodes);
        }
        if n_shards == 0 {
            return Err(MapError::NoShards);
        }
        if replication == 0 || replication > nodes.len() {
            return Err(MapError::BadReplication {
                replication,
                nodes: nodes.len(),
            });
        }
        if let Some(&bad) = nodes.keys().find(|id| id.0 == 0 || id.0 > u64::from(u32::MAX)) {
            return Err(MapError::BadNodeId(bad));
        }
        let mut load: BTreeMap<NodeId, usize> = nodes.keys().map(|&id| (id, 0)).collect();
        let mut leads: BTreeMap<NodeId, usize> = nodes.keys().map(|&id| (id, 0)).collect();
        let mut shards = Vec::with_capacity(n_shards as usize);
        for index in 0..u64::from(n_shards) {
            let shard_id = ShardId(index + 1);
            let arc = equal_arc(index, u64::from(n_shards));
            // Least-loaded nodes first; among equals, the rendezvous order of (shard, node).
            let mut ranked: Vec<NodeId> = nodes.keys().copied().collect();
            ranked.sort_by_key(|&node| (load[&node], std::cmp::Reverse(rendezvous(shard_id, node))));
            let mut chosen: Vec<NodeId> = ranked.into_iter().take(replication).collect();
            // The first voter is the preferred leader: the chosen node that leads fewest shards so
            // far, so leaders also start out spread evenly over nodes.
            chosen.sort_by_key(|&node| (leads[&node], std::cmp::Reverse(rendezvous(shard_id, node))));
            *leads.get_mut(&chosen[0]).expect("chosen from nodes") += 1;
            for &node in &chosen {
                *load.get_mut(&node).expect("chosen from nodes") += 1;
            }
            let voters = chosen
                .iter()
                .map(|&node_id| Replica {
                    replica_id: bootstrap_replica_id(shard_id, node_id),
                    node_id,
                })
                .collect();
            shards.push(Shard {
                id: shard_id,
                arc,
                voters,
                learners: Vec::new(),
                leader: None,
                range_since: 0,
                origin: None,
            });
        }
        // The metadata group is light (a write per map change): the lowest-numbered nodes.
        let meta = Shard {
            id: ShardId::META,
            arc: HashRange {
                start: 0,
                end: u64::MAX,
            },
            voters: nodes
                .keys()
                .take(meta_voter_count(nodes.len()))
                .map(|&node_id| Replica {
                    replica_id: bootstrap_replica_id(ShardId::META, node_id),
                    node_id,
                })
                .collect(),
            learners: Vec::new(),
            leader: None,
            range_since: 0,
            origin: None,
        };
        let map = ShardMap {
            cluster_id,
            epoch: 1,
            nodes: nodes.clone(),
            shards,
            meta,
            decisions: Vec::new(),
            next_replica_id: FIRST_FRESH_REPLICA_ID,
            moves: Vec::new(),
            splits: Vec::new(),
            read_replicas: 0,
        };
        map.validate()?;
        Ok(map)
    }

    /// Every Raft group of the map: the data shards, then the metadata group.
    pub fn groups(&self) -> impl Iterator<Item = &Shard> {
        self.shards.iter().chain(std::iter::once(&self.meta))
    }

    /// Appends a decision, forgetting the oldest beyond `MAX_DECISIONS`.
    pub fn record_decision(&mut self, epoch: u64, unix_ms: u64, text: String) {
        self.decisions.push(Decision { epoch, unix_ms, text });
        let excess = self.decisions.len().saturating_sub(MAX_DECISIONS);
        self.decisions.drain(..excess);
    }

    /// The shard whose arc holds `hash`.
    pub fn shard_for_hash(&self, hash: u64) -> &Shard {
        let index = self.shards.partition_point(|shard| shard.arc.start <= hash) - 1;
        &self.shards[index]
    }

    /// The shard that owns `key`.
    pub fn shard_for_key(&self, key: &[u8]) -> &Shard {
        self.shard_for_hash(ringkv_core::key_hash(key))
    }

    /// A data shard or, for `ShardId::META`, the metadata group.
    pub fn shard(&self, id: ShardId) -> Option<&Shard> {
        if id.is_meta() {
            return Some(&self.meta);
        }
        self.shards.iter().find(|shard| shard.id == id)
    }

    pub fn shard_mut(&mut self, id: ShardId) -> Option<&mut Shard> {
        if id.is_meta() {
            return Some(&mut self.meta);
        }
        self.shards.iter_mut().find(|shard| shard.id == id)
    }

    pub fn node_addr(&self, node: NodeId) -> Option<&str> {
        self.nodes.get(&node).map(|info| info.addr.as_str())
    }

    /// The node hosting `replica` of `shard`, if the map lists it.
    pub fn replica_node(&self, shard: ShardId, replica: ReplicaId) -> Option<NodeId> {
        let shard = self.shard(shard)?;
        shard
            .voters
            .iter()
            .chain(&shard.learners)
            .find(|r| r.replica_id == replica)
            .map(|r| r.node_id)
    }

    /// Checks the invariants in this module's header.
    pub fn validate(&self) -> Result<(), MapError> {
        let malformed = |what: String| Err(MapError::Malformed(what));
        if self.cluster_id == 0 {
            return malformed("cluster id is 0".into());
        }
        if self.nodes.is_empty() {
            return Err(MapError::NoNodes);
        }
        if let Some((id, _)) = self.nodes.iter().find(|(_, info)| info.incarnation == 0) {
            return malformed(format!("node {id} has incarnation 0"));
        }
        let Some(first) = self.shards.first() else {
            return Err(MapError::NoShards);
        };
        if first.arc.start != 0 {
            return malformed(format!(
                "first shard {} starts at {} instead of 0",
                first.id, first.arc.start
            ));
        }
        let last = self.shards.last().expect("non-empty");
        if last.arc.end != u64::MAX {
            return malformed(format!(
                "last shard {} ends at {} instead of u64::MAX",
                last.id, last.arc.end
            ));
        }
        if self.meta.id != ShardId::META
            || self.meta.arc.start != 0
            || self.meta.arc.end != u64::MAX
            || self.meta.voters.is_empty()
        {
            return malformed(format!(
                "the metadata group must be shard {} spanning the whole ring with at least one voter; \
                 the map has shard {} over {}..={} with {} voters",
                ShardId::META,
                self.meta.id,
                self.meta.arc.start,
                self.meta.arc.end,
                self.meta.voters.len()
            ));
        }
        let mut replica_ids = BTreeSet::new();
        if let Some(problem) = check_replicas(&self.meta, &self.nodes, &mut replica_ids) {
            return malformed(problem);
        }
        let mut shard_ids = BTreeSet::new();
        for (index, shard) in self.shards.iter().enumerate() {
            if !shard_ids.insert(shard.id) {
                return malformed(format!("shard id {} is used twice", shard.id));
            }
            if shard.id.0 == 0 || shard.id >= ShardId::META {
                return malformed(format!(
                    "shard id {} is outside 1 to {} (0 means no shard, {} is the metadata group)",
                    shard.id,
                    ShardId::META.0 - 1,
                    ShardId::META
                ));
            }
            if shard.arc.start > shard.arc.end {
                return malformed(format!("shard {} has an empty arc", shard.id));
            }
            if let Some(next) = self.shards.get(index + 1)
                && shard.arc.end.checked_add(1) != Some(next.arc.start)
            {
                return malformed(format!("shards {} and {} are not contiguous", shard.id, next.id));
            }
            if shard.voters.is_empty() {
                return malformed(format!("shard {} has no voters", shard.id));
            }
            if let Some(problem) = check_replicas(shard, &self.nodes, &mut replica_ids) {
                return malformed(problem);
            }
        }
        if let Some(problem) = self.check_moves() {
            return malformed(problem);
        }
        if let Some(problem) = self.check_splits() {
            return malformed(problem);
        }
        for group in self.groups() {
            for replica in group.voters.iter().chain(&group.learners) {
                if self.nodes[&replica.node_id].state == NodeState::Removed {
                    return malformed(format!(
                        "shard {} has a replica on node {}, which is removed",
                        group.id, replica.node_id
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What is wrong with the replicas of `shard`, if anything: each on a known node, at most one per
/// node, and ids unused elsewhere in the map (`seen` collects them).
fn check_replicas(
    shard: &Shard,
    nodes: &BTreeMap<NodeId, NodeInfo>,
    seen: &mut BTreeSet<ReplicaId>,
) -> Option<String> {
    let mut shard_nodes = BTreeSet::new();
    for replica in shard.voters.iter().chain(&shard.learners) {
        if !nodes.contains_key(&replica.node_id) {
            return Some(format!(
                "shard {} has a replica on unknown node {}",
                shard.id, replica.node_id
            ));
        }
        if !shard_nodes.insert(replica.node_id) {
            return Some(format!(
                "shard {} has two replicas on node {}",
                shard.id, replica.node_id
            ));
        }
        if !seen.insert(replica.replica_id) {
            return Some(format!("replica id {} is used twice", replica.replica_id));
        }
    }
    None
}

/// The `index`-th of `n` equal arcs of the ring.
fn equal_arc(index: u64, n: u64) -> HashRange {
    let boundary = |i: u64| ((u128::from(i) << 64) / u128::from(n)) as u64;
    let start = boundary(index);
    let end = if index + 1 == n {
        u64::MAX
    } else {
        boundary(index + 1) - 1
    };
    HashRange { start, end }
}

/// Rendezvous (highest random weight) score of placing `shard` on `node`.
fn rendezvous(shard: ShardId, node: NodeId) -> u64 {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&shard.0.to_be_bytes());
    bytes[8..].copy_from_slice(&node.0.to_be_bytes());
    xxh3_64(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nodes 1..=n, up, at 127.0.0.1:7001.. (shared with the submodules' tests).
    pub(super) fn nodes(n: u64) -> BTreeMap<NodeId, NodeInfo> {
        (1..=n)
            .map(|id| {
                let info = NodeInfo {
                    addr: format!("127.0.0.1:{}", 7000 + id),
                    incarnation: 100 + id,
                    state: Default::default(),
                    role: Default::default(),
                };
                (NodeId(id), info)
            })
            .collect()
    }

    fn bootstrap(
        nodes: &BTreeMap<NodeId, NodeInfo>,
        n_shards: u32,
        replication: usize,
    ) -> Result<ShardMap, MapError> {
        ShardMap::bootstrap(42, nodes, n_shards, replication)
    }

    #[test]
    fn bootstrap_covers_the_ring_with_equal_arcs() {
        let map = bootstrap(&nodes(3), 16, 3).unwrap();
        assert_eq!(map.shards.len(), 16);
        assert_eq!(map.shards[0].arc.start, 0);
        assert_eq!(map.shards[15].arc.end, u64::MAX);
        let width = map.shards[0].arc.end - map.shards[0].arc.start;
        for shard in &map.shards {
            assert_eq!(
                shard.arc.end - shard.arc.start,
                width,
                "shard {} arc width",
                shard.id
            );
        }
        for hash in [
            0,
            1,
            u64::MAX / 16,
            u64::MAX / 16 + 1,
            u64::MAX / 2,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert!(map.shard_for_hash(hash).arc.contains(hash), "hash {hash}");
        }
    }

    #[test]
    fn bootstrap_balances_replicas_and_preferred_leaders() {
        for (n_nodes, n_shards, replication) in [(3, 16, 3), (5, 16, 3), (4, 10, 2), (1, 4, 1), (7, 64, 3)] {
            let map = bootstrap(&nodes(n_nodes), n_shards, replication).unwrap();
            let mut replicas: BTreeMap<NodeId, usize> = BTreeMap::new();
            let mut first_voters: BTreeMap<NodeId, usize> = BTreeMap::new();
            for shard in &map.shards {
                assert_eq!(shard.voters.len(), replication);
                *first_voters.entry(shard.voters[0].node_id).or_default() += 1;
                for voter in &shard.voters {
                    *replicas.entry(voter.node_id).or_default() += 1;
                }
            }
            let (min, max) = (replicas.values().min().unwrap(), replicas.values().max().unwrap());
            assert!(
                max - min <= 1,
                "{n_nodes} nodes, {n_shards} shards: replica counts {replicas:?}"
            );
            assert_eq!(replicas.len() as u64, n_nodes, "every node holds replicas");
            let max_first = first_voters.values().max().unwrap();
            let fair = (n_shards as usize).div_ceil(n_nodes as usize);
            assert!(*max_first <= fair + 1, "preferred leaders {first_voters:?}");
        }
    }

    #[test]
    fn bootstrap_is_deterministic() {
        let a = bootstrap(&nodes(5), 16, 3).unwrap();
        let b = bootstrap(&nodes(5), 16, 3).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn bootstrap_refuses_impossible_clusters() {
        assert_eq!(bootstrap(&BTreeMap::new(), 16, 1), Err(MapError::NoNodes));
        assert_eq!(bootstrap(&nodes(3), 0, 1), Err(MapError::NoShards));
        assert_eq!(
            bootstrap(&nodes(2), 16, 3),
            Err(MapError::BadReplication {
                replication: 3,
                nodes: 2
            })
        );
        let mut zero = nodes(2);
        zero.insert(
            NodeId(0),
            NodeInfo {
                addr: "127.0.0.1:1".into(),
                incarnation: 1,
                state: Default::default(),
                role: Default::default(),
            },
        );
        assert_eq!(bootstrap(&zero, 4, 1), Err(MapError::BadNodeId(NodeId(0))));
    }

    #[test]
    fn bootstrap_places_the_metadata_group_on_up_to_five_nodes() {
        for (n_nodes, voters) in [(1, 1), (2, 2), (3, 3), (4, 3), (5, 5), (7, 5)] {
            let map = bootstrap(&nodes(n_nodes), 8, 1).unwrap();
            assert_eq!(map.meta.id, ShardId::META);
            let on: Vec<u64> = map.meta.voters.iter().map(|v| v.node_id.0).collect();
            assert_eq!(on, (1..=voters).collect::<Vec<_>>(), "{n_nodes} nodes");
            assert_eq!(map.shard(ShardId::META), Some(&map.meta));
            assert!(
                map.shards.iter().all(|shard| !shard.id.is_meta()),
                "no key routes to the metadata group"
            );
        }
    }

    #[test]
    fn a_map_keeps_only_its_most_recent_decisions() {
        let mut map = bootstrap(&nodes(3), 4, 3).unwrap();
        for epoch in 2..(MAX_DECISIONS as u64 + 12) {
            map.record_decision(epoch, 0, format!("decision {epoch}"));
        }
        assert_eq!(map.decisions.len(), MAX_DECISIONS);
        assert_eq!(map.decisions.last().unwrap().epoch, MAX_DECISIONS as u64 + 11);
        assert_eq!(map.decisions.first().unwrap().epoch, 12);
    }
}

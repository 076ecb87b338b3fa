//! Who a node is, and which cluster it belongs to, as its data directory records them.
//!
//! - The node record (node id and incarnation) is written first, when the data directory is
//!   created. The incarnation is random: a data directory recreated after a disk loss gets a new
//!   one, so the cluster can tell the new directory from the one that held its replicas.
//! - The cluster record (the parameters the cluster was created with) and the shard map (with the
//!   cluster id and every node's incarnation) are written when the node creates or joins the
//!   cluster (see `node::bootstrap`). The stored map is then replaced by every newer map the node
//!   adopts from the metadata group (see `node::metadata`).
//!
//! Every Raft message carries the sender's and the intended receiver's identity, and the receiver
//! checks them (`Node::check_raft_header`).

use ringkv_proto::FromProto;
use ringkv_proto::ToProto;
use std::collections::BTreeMap;

use anyhow::{Context, bail};
use prost::Message;
use serde::{Deserialize, Serialize};

use ringkv_engine::{Engine, NodeId};
use ringkv_map::{NodeInfo, ShardMap};
use ringkv_proto::pb;

use crate::config::NodeConfig;

/// Meta-CF names of the node-level records.
const META_NODE: &str = "node_identity";
const META_CLUSTER: &str = "cluster_params";
const META_SHARD_MAP: &str = "shard_map";
/// Written by builds before node identities existed; a directory holding it is refused.
const META_LEGACY_NODE_ID: &str = "node_id";

/// This node as the cluster knows it; stamped on every Raft message it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalIdentity {
    pub cluster_id: u64,
    pub node_id: NodeId,
    pub incarnation: u64,
}

/// The node record: written once, when the data directory is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: NodeId,
    pub incarnation: u64,
}

/// The settings a cluster is created with. Every node of a new cluster must be started with the
/// same; a node of an existing cluster refuses to start with others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapParams {
    pub shards: u32,
    pub replication: u32,
    pub peers: BTreeMap<NodeId, String>,
}

impl BootstrapParams {
    pub fn from_config(config: &NodeConfig) -> anyhow::Result<BootstrapParams> {
        Ok(BootstrapParams {
            shards: config.shards,
            replication: config.replication_factor()? as u32,
            peers: config.bootstrap_nodes()?,
        })
    }

    pub fn to_proto(&self) -> pb::BootstrapParams {
        pb::BootstrapParams {
            shards: self.shards,
            replication: self.replication,
            peers: self
                .peers
                .iter()
                .map(|(node, addr)| pb::NodeInfo {
                    node_id: node.0,
                    addr: addr.clone(),
                    incarnation: 0,
                    state: 0,
                    role: Default::default(),
                })
                .collect(),
        }
    }

    pub fn from_proto(params: &pb::BootstrapParams) -> BootstrapParams {
        BootstrapParams {
            shards: params.shards,
            replication: params.replication,
            peers: params
                .peers
                .iter()
                .map(|peer| (NodeId(peer.node_id), peer.addr.clone()))
                .collect(),
        }
    }

    /// How `other` (the settings of `whose`, e.g. "the cluster in this data directory" or "node 2
    /// at 127.0.0.1:7380") differs from these, one sentence per setting, naming the flags.
    pub fn differences(&self, other: &BootstrapParams, whose: &str) -> Vec<String> {
        let mut differences = Vec::new();
        if self.shards != other.shards {
            differences.push(format!(
                "this node was started with --shards {}, but {whose} has --shards {}",
                self.shards, other.shards
            ));
        }
        if self.replication != other.replication {
            differences.push(format!(
                "this node was started with --replication {}, but {whose} has --replication {}",
                self.replication, other.replication
            ));
        }
        for (node, addr) in &self.peers {
            match other.peers.get(node) {
                None => differences.push(format!(
                    "this node's --peers lists node {node} at {addr}, which {whose} does not have"
                )),
                Some(other_addr) if other_addr != addr => differences.push(format!(
                    "this node's --peers puts node {node} at {addr}, but {whose} has it at {other_addr}"
                )),
                Some(_) => {}
            }
        }
        for (node, addr) in &other.peers {
            if !self.peers.contains_key(node) {
                differences.push(format!(
                    "{whose} has node {node} at {addr}, which this node's --peers does not list"
                ));
            }
        }
        differences
    }

    /// The nodes of a cluster created with these settings, with their incarnations.
    pub fn nodes(&self, incarnations: &BTreeMap<NodeId, u64>) -> BTreeMap<NodeId, NodeInfo> {
        self.peers
            .iter()
            .map(|(&node, addr)| {
                let info = NodeInfo {
                    addr: addr.clone(),
                    incarnation: incarnations.get(&node).copied().unwrap_or(0),
                    state: Default::default(),
                    role: Default::default(),
                };
                (node, info)
            })
            .collect()
    }
}

/// What a data directory records about identity.
#[derive(Debug, Clone)]
pub enum Stored {
    /// A new data directory: nothing recorded yet.
    Fresh,
    /// The node record exists but the node has not joined a cluster yet (it was stopped while the
    /// cluster was forming).
    Waiting(NodeRecord),
    /// A member of a cluster.
    Member {
        node: NodeRecord,
        params: BootstrapParams,
        map: Box<ShardMap>,
    },
}

pub fn load(engine: &Engine) -> anyhow::Result<Stored> {
    let dir = engine.data_dir().display().to_string();
    if engine.get_meta(META_LEGACY_NODE_ID)?.is_some() {
        bail!(
            "data directory {dir} was written by an older ringkv whose storage format this version \
             cannot read; start this node with a new, empty --data-dir"
        );
    }
    let node: Option<NodeRecord> = engine
        .get_meta(META_NODE)?
        .map(|bytes| postcard::from_bytes(&bytes))
        .transpose()
        .with_context(|| format!("the node record in {dir} is damaged"))?;
    let params: Option<BootstrapParams> = engine
        .get_meta(META_CLUSTER)?
        .map(|bytes| postcard::from_bytes(&bytes))
        .transpose()
        .with_context(|| format!("the cluster record in {dir} is damaged"))?;
    let map = engine
        .get_meta(META_SHARD_MAP)?
        .map(|bytes| -> anyhow::Result<ShardMap> {
            let wire = pb::ShardMap::decode(bytes.as_slice())?;
            Ok(ShardMap::from_proto(&wire)?)
        })
        .transpose()
        .with_context(|| format!("the shard map stored in {dir} is damaged"))?;
    Ok(match (node, params, map) {
        (None, None, None) => Stored::Fresh,
        (Some(node), None, None) => Stored::Waiting(node),
        (Some(node), Some(params), Some(map)) => Stored::Member {
            node,
            params,
            map: Box::new(map),
        },
        _ => bail!(
            "data directory {dir} holds part of a node's records but not all of them (damaged, or \
             written by another program); start this node with a new, empty --data-dir"
        ),
    })
}

/// Creates the node record of a new data directory, with a fresh random incarnation. Durable on
/// return.
pub fn create_node(engine: &Engine, node_id: NodeId) -> anyhow::Result<NodeRecord> {
    let record = NodeRecord {
        node_id,
        incarnation: random_nonzero(),
    };
    save_node(engine, record)?;
    Ok(record)
}

/// Writes the node record (a joining node's, whose id the cluster may have assigned). Durable on
/// return.
pub fn save_node(engine: &Engine, record: NodeRecord) -> anyhow::Result<()> {
    engine.put_meta(META_NODE, &postcard::to_stdvec(&record)?)?;
    Ok(())
}

/// Records that this node belongs to the cluster of `map`, created with `params`. Durable on
/// return.
pub fn save_cluster(engine: &Engine, params: &BootstrapParams, map: &ShardMap) -> anyhow::Result<()> {
    let map = map.to_proto().encode_to_vec();
    let params = postcard::to_stdvec(params)?;
    engine.put_metas(&[(META_SHARD_MAP, &map), (META_CLUSTER, &params)])?;
    Ok(())
}

/// Stores `map` as the last map this node adopted. Durable on return.
pub fn save_map(engine: &Engine, map: &ShardMap) -> anyhow::Result<()> {
    engine.put_meta(META_SHARD_MAP, &map.to_proto().encode_to_vec())?;
    Ok(())
}

/// A random u64 other than 0 (0 means "none" on the wire).
pub fn random_nonzero() -> u64 {
    loop {
        let value: u64 = rand::random();
        if value != 0 {
            return value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(shards: u32, replication: u32, peers: &[(u64, &str)]) -> BootstrapParams {
        BootstrapParams {
            shards,
            replication,
            peers: peers
                .iter()
                .map(|(node, addr)| (NodeId(*node), addr.to_string()))
                .collect(),
        }
    }

    #[test]
    fn differences_name_every_flag_that_differs() {
        let mine = params(16, 3, &[(1, "a:1"), (2, "a:2"), (3, "a:3")]);
        assert!(mine.differences(&mine.clone(), "node 2").is_empty());
        let theirs = params(8, 1, &[(1, "a:1"), (2, "b:2"), (4, "a:4")]);
        let differences = mine.differences(&theirs, "node 2");
        let text = differences.join("\n");
        assert!(
            text.contains("--shards 16") && text.contains("--shards 8"),
            "{text}"
        );
        assert!(
            text.contains("--replication 3") && text.contains("--replication 1"),
            "{text}"
        );
        assert!(text.contains("node 2 at a:2") && text.contains("b:2"), "{text}");
        assert!(
            text.contains("node 3 at a:3, which node 2 does not have"),
            "{text}"
        );
        assert!(
            text.contains("node 4 at a:4, which this node's --peers does not list"),
            "{text}"
        );
        assert_eq!(differences.len(), 5);
    }
}

//! What the gRPC services serve while a node starts and after it stops: from the moment it
//! listens, who it is (so peers forming the cluster can ask), and once its Raft groups run, the
//! node itself. Requests that need the node before then are refused as "starting", and after the
//! node stopped as "stopped", which clients retry elsewhere. Taking the node out when it stops
//! matters: a client connection that outlives the server (one that did not close in time) must not
//! keep the node, and so its storage, alive.

use ringkv_proto::ToProto;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use ringkv_engine::ShardId;
use ringkv_map::ShardMap;
use ringkv_proto::pb;

use super::host::Node;
use crate::error::ServiceError;
use crate::identity::{BootstrapParams, NodeRecord};

pub struct NodeSlot {
    record: NodeRecord,
    params: BootstrapParams,
    /// The cluster's map once this node belongs to one (before its groups start).
    map: RwLock<Option<ShardMap>>,
    /// The node while it runs. A std lock: held only to clone or swap the handle.
    node: RwLock<Option<Arc<Node>>>,
    /// Set when the node stops; it never comes back in this slot.
    stopped: AtomicBool,
    /// Kv command stream traffic since start (see `count_commands`).
    kv_commands: AtomicU64,
    kv_command_messages: AtomicU64,
    /// Raft stream traffic from peers since start (see `count_raft_calls`).
    raft_calls: AtomicU64,
    raft_call_messages: AtomicU64,
}

impl NodeSlot {
    pub fn new(record: NodeRecord, params: BootstrapParams, map: Option<ShardMap>) -> Arc<NodeSlot> {
        Arc::new(NodeSlot {
            record,
            params,
            map: RwLock::new(map),
            node: RwLock::new(None),
            stopped: AtomicBool::new(false),
            kv_commands: AtomicU64::new(0),
            kv_command_messages: AtomicU64::new(0),
            raft_calls: AtomicU64::new(0),
            raft_call_messages: AtomicU64::new(0),
        })
    }

    /// Counts one message of a Kv command stream carrying `commands` requests.
    pub fn count_commands(&self, commands: usize) {
        self.kv_commands.fetch_add(commands as u64, Ordering::Relaxed);
        self.kv_command_messages.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one message of a peer's Raft `Calls` stream carrying `calls` calls.
    pub fn count_raft_calls(&self, calls: usize) {
        self.raft_calls.fetch_add(calls as u64, Ordering::Relaxed);
        self.raft_call_messages.fetch_add(1, Ordering::Relaxed);
    }

    /// The node's status, with the Kv and Raft stream counters.
    pub fn status(&self) -> Result<pb::StatusResponse, ServiceError> {
        let mut status = self.require()?.status();
        status.kv_commands = self.kv_commands.load(Ordering::Relaxed);
        status.kv_command_messages = self.kv_command_messages.load(Ordering::Relaxed);
        status.raft_calls = self.raft_calls.load(Ordering::Relaxed);
        status.raft_call_messages = self.raft_call_messages.load(Ordering::Relaxed);
        Ok(status)
    }

    /// Records that this node now belongs to the cluster of `map` (it is stored durably first).
    pub fn set_map(&self, map: ShardMap) {
        *self.map.write().expect("slot map lock") = Some(map);
    }

    pub fn set_node(&self, node: Arc<Node>) {
        if !self.stopped.load(Ordering::Acquire) {
            *self.node.write().expect("slot node lock") = Some(node);
        }
    }

    /// Takes the node out: from now on requests are refused as "stopped".
    pub fn clear_node(&self) {
        self.stopped.store(true, Ordering::Release);
        self.node.write().expect("slot node lock").take();
    }

    pub fn node(&self) -> Option<Arc<Node>> {
        self.node.read().expect("slot node lock").clone()
    }

    /// The node, or the answer to give while it is starting or after it stopped.
    pub fn require(&self) -> Result<Arc<Node>, ServiceError> {
        self.node().ok_or_else(|| {
            let reason = if self.stopped.load(Ordering::Acquire) {
                format!("node {} has stopped; try another node", self.record.node_id)
            } else {
                format!(
                    "node {} is starting (its cluster is forming, or its shard groups are opening); try another node",
                    self.record.node_id
                )
            };
            ServiceError::Unavailable {
                shard_id: ShardId(0),
                outcome_unknown: false,
                reason,
            }
        })
    }

    /// This node's answer to a peer's Hello.
    pub fn hello(&self) -> pb::HelloResponse {
        let map = match self.node() {
            Some(node) => Some(node.shard_map()),
            None => self.map.read().expect("slot map lock").clone(),
        };
        pb::HelloResponse {
            node_id: self.record.node_id.0,
            incarnation: self.record.incarnation,
            params: Some(self.params.to_proto()),
            map: map.map(|map| map.to_proto()),
        }
    }
}

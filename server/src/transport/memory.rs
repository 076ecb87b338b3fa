//! An in-process network for tests: Raft messages are delivered by calling the target node
//! directly, with no sockets and no encoding, through faults a test controls.
//!
//! One [`MemoryNetwork`] connects every node of a test cluster; each node sends through its own
//! [`MemoryEndpoint`], so the network knows the sender of every message. Faults, all off at first:
//! - a link `from → to` can be cut (messages fail at once as unreachable), one way or both;
//! - a node's outgoing messages can be held: they wait, in flight, until released;
//! - as over gRPC, the sender gives up on a message (held, delayed or slow to answer) after the
//!   timeout openraft gave it, while the target may still act on it;
//! - messages can be lost (a request that never arrives, or a reply that never returns: the sender
//!   cannot tell which) with a probability, and delayed by a random time, which reorders them;
//! - every message and reply can take a fixed latency on top (a slow link, a distant zone).
//!
//! Random choices come from one generator seeded by the test, so a failing seed replays the same
//! fault decisions (the threads' interleaving still varies from run to run). A node that stopped
//! is unreachable. A node is "killed" by stopping its Raft groups and dropping it, which is not a
//! SIGKILL: whatever its engine had written but not synced is still in RocksDB's memtable and files
//! (the process tests cover real kills).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use ringkv_engine::{NodeId, ShardId, SnapshotFile, TypeConfig};

use super::{Pulse, QuiesceRequest, RaftTransport, ReadIndexRequest, Target, TransportError};
use crate::node::Node;

/// The faults in force. Changed only through `MemoryNetwork`'s methods.
#[derive(Debug, Clone, Default)]
struct Faults {
    /// Links `(from, to)` on which messages fail at once.
    cut: HashSet<(NodeId, NodeId)>,
    /// Nodes whose outgoing messages wait until released.
    held: HashSet<NodeId>,
    /// Probability that a message (request or reply) is lost.
    loss: f64,
    /// Largest random delay added to a request and to its reply.
    max_delay: Duration,
    /// Fixed delay added to a request and to its reply.
    latency: Duration,
}

pub struct MemoryNetwork {
    /// Nodes by address. Weak, so a stopped node disappears instead of being kept alive here.
    nodes: RwLock<HashMap<String, Weak<Node>>>,
    faults: Mutex<Faults>,
    /// Bumped on every change of the faults, so held messages re-check them.
    changed: watch::Sender<u64>,
    rng: Mutex<StdRng>,
    /// Messages that reached a node for some shard group (everything but pulses).
    shard_messages: AtomicU64,
}

impl MemoryNetwork {
    /// A network with no faults, whose random choices follow `seed`.
    pub fn new(seed: u64) -> Arc<MemoryNetwork> {
        Arc::new(MemoryNetwork {
            nodes: RwLock::new(HashMap::new()),
            faults: Mutex::new(Faults::default()),
            changed: watch::Sender::new(0),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            shard_messages: AtomicU64::new(0),
        })
    }

    /// The transport a node with id `from` sends through.
    pub fn endpoint(self: &Arc<Self>, from: NodeId) -> Arc<MemoryEndpoint> {
        Arc::new(MemoryEndpoint {
            network: self.clone(),
            from,
        })
    }

    /// Makes a started node reachable at its address.
    pub fn register(&self, node: &Arc<Node>) {
        self.nodes
            .write()
            .expect("nodes lock")
            .insert(node.addr().to_owned(), Arc::downgrade(node));
    }

    fn update(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.faults.lock().expect("faults lock"));
        self.changed.send_modify(|version| *version += 1);
    }

    /// Cuts the link `from → to` (one way).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.update(|faults| {
            faults.cut.insert((from, to));
        });
    }

    /// Cuts every link between a node of `a` and a node of `b`, both ways.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        self.update(|faults| {
            for &x in a {
                for &y in b {
                    faults.cut.insert((x, y));
                    faults.cut.insert((y, x));
                }
            }
        });
    }

    /// Restores the link between `a` and `b`, both ways.
    pub fn reconnect(&self, a: NodeId, b: NodeId) {
        self.update(|faults| {
            faults.cut.remove(&(a, b));
            faults.cut.remove(&(b, a));
        });
    }

    /// Holds `node`'s outgoing messages in flight until `release`.
    pub fn hold(&self, node: NodeId) {
        self.update(|faults| {
            faults.held.insert(node);
        });
    }

    pub fn release(&self, node: NodeId) {
        self.update(|faults| {
            faults.held.remove(&node);
        });
    }

    /// Loses each message (request or reply) with probability `loss`, 0 to 1.
    pub fn set_loss(&self, loss: f64) {
        self.update(|faults| faults.loss = loss.clamp(0.0, 1.0));
    }

    /// Delays each request and each reply by a random time up to `max_delay`.
    pub fn set_delay(&self, max_delay: Duration) {
        self.update(|faults| faults.max_delay = max_delay);
    }

    /// Delays each request and each reply by `latency` (plus any random delay): a round trip takes
    /// at least twice that.
    pub fn set_latency(&self, latency: Duration) {
        self.update(|faults| faults.latency = latency);
    }

    /// Removes every fault: all links open, nothing held, lost or delayed.
    pub fn heal(&self) {
        self.update(|faults| *faults = Faults::default());
    }

    /// How many messages for shard groups (Raft messages and quiesce requests; not node pulses)
    /// have reached a node so far.
    pub fn shard_messages(&self) -> u64 {
        self.shard_messages.load(Ordering::Relaxed)
    }

    /// A uniformly random number in `[0, 1)` from the seeded generator.
    fn roll(&self) -> f64 {
        self.rng.lock().expect("rng lock").random::<f64>()
    }

    fn random_delay(&self, max: Duration) -> Duration {
        if max.is_zero() {
            return Duration::ZERO;
        }
        let micros = self
            .rng
            .lock()
            .expect("rng lock")
            .random_range(0..=max.as_micros() as u64);
        Duration::from_micros(micros)
    }

    /// Delivers one message `from → target` through the faults in force: `call` runs on the
    /// target node when (and if) the request arrives. Like the gRPC transport, the sender gives
    /// up after `timeout` (the request may still take effect on the target).
    async fn deliver<T, F, Fut>(
        &self,
        from: NodeId,
        target: &Target,
        timeout: Duration,
        call: F,
    ) -> Result<T, TransportError>
    where
        F: FnOnce(Arc<Node>) -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        tokio::time::timeout(timeout, self.deliver_untimed(from, target, call))
            .await
            .map_err(|_| TransportError::Network {
                addr: target.addr.clone(),
                message: format!("no reply within {} ms", timeout.as_millis()),
            })?
    }

    async fn deliver_untimed<T, F, Fut>(
        &self,
        from: NodeId,
        target: &Target,
        call: F,
    ) -> Result<T, TransportError>
    where
        F: FnOnce(Arc<Node>) -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let to = target.header.to_node;
        let unreachable = |message: &str| TransportError::Unreachable {
            addr: target.addr.clone(),
            message: message.into(),
        };
        let lost = |message: &str| TransportError::Network {
            addr: target.addr.clone(),
            message: message.into(),
        };
        // Wait while held; fail at once when cut.
        let mut changes = self.changed.subscribe();
        let faults = loop {
            let faults = self.faults.lock().expect("faults lock").clone();
            if faults.cut.contains(&(from, to)) {
                return Err(unreachable("link cut by the test network"));
            }
            if !faults.held.contains(&from) {
                break faults;
            }
            if changes.changed().await.is_err() {
                return Err(unreachable("test network dropped"));
            }
        };
        tokio::time::sleep(faults.latency + self.random_delay(faults.max_delay)).await;
        if self.roll() < faults.loss {
            return Err(lost("request lost by the test network"));
        }
        let node = self
            .nodes
            .read()
            .expect("nodes lock")
            .get(&target.addr)
            .and_then(Weak::upgrade)
            .ok_or_else(|| unreachable("no node is running at this address"))?;
        // Pulses are addressed to shard 0, which no shard has (shard ids start at 1).
        if target.shard_id != ShardId(0) {
            self.shard_messages.fetch_add(1, Ordering::Relaxed);
        }
        let result = call(node).await.map_err(|message| TransportError::Remote {
            addr: target.addr.clone(),
            message,
        });
        // The reply crosses the network too (it may be lost after the request took effect).
        let faults = self.faults.lock().expect("faults lock").clone();
        tokio::time::sleep(faults.latency + self.random_delay(faults.max_delay)).await;
        if faults.cut.contains(&(to, from)) || self.roll() < faults.loss {
            return Err(lost("reply lost by the test network"));
        }
        result
    }
}

/// One node's view of the [`MemoryNetwork`]: every message it sends is from `from`.
pub struct MemoryEndpoint {
    network: Arc<MemoryNetwork>,
    from: NodeId,
}

impl RaftTransport for MemoryEndpoint {
    fn append_entries(
        &self,
        target: &Target,
        rpc: AppendEntriesRequest<TypeConfig>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<AppendEntriesResponse<TypeConfig>, TransportError>> {
        let (network, from, target) = (self.network.clone(), self.from, target.clone());
        Box::pin(async move {
            network
                .deliver(from, &target, timeout, |node| async move {
                    node.raft_append(&target.header, target.shard_id, target.replica_id, rpc)
                        .await
                })
                .await
        })
    }

    fn vote(
        &self,
        target: &Target,
        rpc: VoteRequest<TypeConfig>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<VoteResponse<TypeConfig>, TransportError>> {
        let (network, from, target) = (self.network.clone(), self.from, target.clone());
        Box::pin(async move {
            network
                .deliver(from, &target, timeout, |node| async move {
                    node.raft_vote(&target.header, target.shard_id, target.replica_id, rpc)
                        .await
                })
                .await
        })
    }

    fn pre_vote(
        &self,
        target: &Target,
        rpc: VoteRequest<TypeConfig>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<VoteResponse<TypeConfig>, TransportError>> {
        let (network, from, target) = (self.network.clone(), self.from, target.clone());
        Box::pin(async move {
            network
                .deliver(from, &target, timeout, |node| async move {
                    node.raft_pre_vote(&target.header, target.shard_id, target.replica_id, rpc)
                        .await
                })
                .await
        })
    }

    fn transfer_leader(
        &self,
        target: &Target,
        rpc: TransferLeaderRequest<TypeConfig>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<TransferLeaderResponse<TypeConfig>, TransportError>> {
        let (network, from, target) = (self.network.clone(), self.from, target.clone());
        Box::pin(async move {
            network
                .deliver(from, &target, timeout, |node| async move {
                    node.raft_transfer_leader(&target.header, target.shard_id, target.replica_id, rpc)
                        .await
                })
                .await
        })
    }

    fn quiesce(
        &self,
        target: &Target,
        request: QuiesceRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<bool, TransportError>> {
        let (network, from, target) = (self.network.clone(), self.from, target.clone());
        Box::pin(async move {
            network
                .deliver(from, &target, timeout, |node| async move {
                    node.raft_quiesce(&target.header, target.shard_id, target.replica_id, request)
                })
                .await
        })
    }

    fn read_index(
        &self,
        target: &Target,
        request: ReadIndexRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<u64, TransportError>> {
        let (network, from, target) = (self.network.clone(), self.from, target.clone());
        Box::pin(async move {
            network
                .deliver(from, &target, timeout, |node| async move {
                    node.raft_read_index(&target.header, target.shard_id, target.replica_id, request)
                        .await
                })
                .await
        })
    }

    fn pulse(
        &self,
        target: &Target,
        pulse: Pulse,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Pulse, TransportError>> {
        let (network, from, target) = (self.network.clone(), self.from, target.clone());
        Box::pin(async move {
            network
                .deliver(from, &target, timeout, |node| async move {
                    node.raft_pulse(&target.header, pulse)
                })
                .await
        })
    }

    fn install_snapshot(
        &self,
        target: &Target,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotFile>,
        idle_timeout: Duration,
    ) -> BoxFuture<'static, Result<SnapshotResponse<TypeConfig>, TransportError>> {
        let (network, from, target) = (self.network.clone(), self.from, target.clone());
        Box::pin(async move {
            network
                .deliver(from, &target, idle_timeout, |node| async move {
                    // Each node has its own data dir: copy the file as the gRPC transport would
                    // stream it.
                    let path = node
                        .engine()
                        .incoming_snapshot_path(target.shard_id)
                        .map_err(|e| e.to_string())?;
                    tokio::fs::copy(&snapshot.snapshot.path, &path)
                        .await
                        .map_err(|e| e.to_string())?;
                    node.raft_install_snapshot(
                        &target.header,
                        target.shard_id,
                        target.replica_id,
                        vote,
                        snapshot.meta,
                        SnapshotFile { path },
                    )
                    .await
                })
                .await
        })
    }
}

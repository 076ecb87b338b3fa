//! The `Node`: one engine, the shard map, and one openraft group per shard replica hosted here.
//! Starting the groups, taking a faulty replica out of service, handing leaderships over before a
//! graceful stop, and shutting down.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::{InitializeError, RaftError};
use openraft::storage::RaftLogReader;
use tokio::sync::watch;
use tracing::{error, info, warn};

use ringkv_engine::{
    AppliedBound, CommandResult, Engine, NodeId, ReplicaId, ReplicaNode, RequestId, ShardId, ShardRaft,
    ShardRange,
};
use ringkv_map::bootstrap_replica_id;
use ringkv_map::{Shard, ShardMap};

use super::audit::spawn_membership_audit;
use super::balancer::spawn_leader_balancer;
use super::controller::spawn_controller;
use super::metadata::spawn_map_follower;
use super::moves::spawn_mover;
use super::quiesce::{PeerLiveness, QuietState, spawn_pulses, spawn_quiescer};
use super::reads::{FreshnessProofs, LeaderContact, ReadIndexQueue};
use super::reconcile::spawn_reconciler;
use super::splits::{spawn_split_checker, spawn_split_log_trimmer, spawn_splitter};
use crate::config::NodeConfig;
use crate::error::ServiceError;
use crate::identity::{BootstrapParams, LocalIdentity};
use crate::transport::{RaftTimeouts, RaftTransport, ShardNetworkFactory};

/// One shard replica hosted on this node.
pub struct ShardReplica {
    pub shard_id: ShardId,
    pub replica_id: ReplicaId,
    /// The hashes the replica owns as of its last apply: a split shrinks it.
    pub range: ShardRange,
    /// A replica that started with no state and an arc that a split shrank holds from this log
    /// index: until it has applied that far, it takes no log entry at or below it and no snapshot
    /// older than it (it must start from a snapshot taken after the split; see `raft_rpc`). 0: no
    /// such limit.
    pub(crate) floor: ringkv_engine::LogIndex,
    pub raft: ShardRaft,
    /// Until then the replica grants no vote or pre-vote, except in a leadership transfer, and
    /// does not stand for election on its own timer (openraft's `elect(false)`). Set when
    /// it restarts holding a committed vote: before the restart it may have acknowledged a
    /// leader, which counts on that acknowledgement for its lease (serving reads without asking
    /// anyone) for up to `election_timeout_max`. openraft forgets that lease at a restart, so a
    /// replica voting at once could elect a second leader while the first still reads locally.
    pub(crate) votes_from: Option<Instant>,
    /// Why this node took the replica out of service, if it did. Never cleared: a failed replica
    /// comes back only with a restart of the node (after its disk is checked).
    failure: Mutex<Option<String>>,
    /// Whether its Raft timer is off because the shard is idle (see `quiesce`).
    pub(crate) quiet: QuietState,
    /// At or above the index of any state a read of the replica has seen (a session's token).
    pub applied_bound: AppliedBound,
    /// When leaders last told it commit indexes (its lag, for status; see `reads`).
    pub(crate) contact: LeaderContact,
    /// Read indexes the leader gave it, with when it asked (bounded-staleness reads).
    pub(crate) proofs: FreshnessProofs,
    /// Reads waiting for the leader's read index (replica-linearizable, bounded probes).
    pub(crate) read_index: Mutex<ReadIndexQueue>,
}

impl ShardReplica {
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("failure lock").clone()
    }
}

/// The outcome of a write in flight, shared by every attempt of the same request (see
/// `Node::write`): `None` until the proposal finishes.
pub(crate) type WriteOutcome = Option<Result<Applied, ServiceError>>;

/// A write's result, and the log index at which it applied.
#[derive(Debug, Clone)]
pub struct Applied {
    pub result: CommandResult,
    pub index: ringkv_engine::LogIndex,
}

/// Writes in flight on this node, by shard and request id.
pub(crate) type Inflight = HashMap<(ShardId, RequestId), watch::Receiver<WriteOutcome>>;

pub struct Node {
    pub(crate) identity: LocalIdentity,
    pub(crate) addr: String,
    pub(crate) engine: Engine,
    pub(crate) request_timeout: Duration,
    /// A snapshot transfer (either way) fails when nothing moves for this long.
    pub(crate) snapshot_idle_timeout: Duration,
    pub(crate) params: BootstrapParams,
    /// The newest shard map this node has adopted from the metadata group (see `metadata`); leader
    /// hints are filled in from local Raft metrics when served. A std lock: never held across an
    /// await.
    pub(crate) map: RwLock<ShardMap>,
    /// The epoch of `map`, for `WatchMap` streams to wait on.
    pub(crate) map_epoch: watch::Sender<u64>,
    /// Held while adopting a map, so two adoptions never interleave their store and swap.
    pub(crate) adopting: tokio::sync::Mutex<()>,
    /// Raft groups of the replicas hosted here, by shard.
    pub(crate) replicas: RwLock<HashMap<ShardId, Arc<ShardReplica>>>,
    /// Writes proposed here and not finished, by request id: a retry of one waits for the same
    /// proposal instead of proposing it again. A std lock: held only to look up or insert.
    pub(crate) inflight: Arc<Mutex<Inflight>>,
    /// Set when a graceful stop begins: the balancer stops moving leaderships here.
    pub(crate) stopping: AtomicBool,
    /// When each refused sender was last logged (see `check_raft_header`).
    pub(crate) refusals_logged: Mutex<HashMap<NodeId, std::time::Instant>>,
    /// Sends this node's own messages (quiesce requests, pulses); the groups hold it too.
    pub(crate) transport: Arc<dyn RaftTransport>,
    pub(crate) raft_timeouts: RaftTimeouts,
    /// The openraft configuration every group here runs with.
    pub(crate) raft_config: Arc<openraft::Config>,
    /// How long a leader may serve reads on its lease (see `ShardReplica::votes_from`).
    pub(crate) leader_lease: Duration,
    /// Whether linearizable reads may rest on the leader's lease (`raft.lease_reads`).
    pub(crate) lease_reads: bool,
    /// Held while starting or removing replicas, so two never race for the same shard.
    pub(crate) placing: tokio::sync::Mutex<()>,
    /// Set once the node has logged that the map marks it removed.
    pub(crate) removed_logged: AtomicBool,
    /// Held by a `ChangeReplicas` step from its check against the map to its end.
    pub(crate) membership_changes: tokio::sync::Mutex<()>,
    /// Set when deleting a replica's state failed: the reconciler looks for leftover state again.
    pub(crate) leftovers: AtomicBool,
    /// When the node started: the clock of request times (`QuietState`).
    pub(crate) started: Instant,
    /// Random per process start, sent in every pulse: peers see a restart as a new one.
    pub(crate) boot_id: u64,
    /// Grows whenever a replica here goes out of service; sent in every pulse.
    pub(crate) generation: AtomicU64,
    /// What this node knows of each peer node's liveness. A std lock: never held across an await.
    pub(crate) peers: Mutex<HashMap<NodeId, PeerLiveness>>,
}

impl Node {
    /// Starts one Raft group per replica this node hosts in `map` (the metadata group's too),
    /// initializing new groups.
    /// The caller has formed or joined the cluster (`bootstrap::join_or_form`).
    pub async fn start(
        config: &NodeConfig,
        engine: Engine,
        identity: LocalIdentity,
        params: BootstrapParams,
        map: ShardMap,
        transport: Arc<dyn RaftTransport>,
    ) -> anyhow::Result<Arc<Node>> {
        let raft_config = Arc::new(config.openraft_config()?);
        let node = Arc::new(Node {
            identity,
            addr: config.advertised_addr().to_owned(),
            engine: engine.clone(),
            request_timeout: config.request_timeout(),
            snapshot_idle_timeout: config.snapshot_idle_timeout(),
            params,
            map: RwLock::new(map.clone()),
            map_epoch: watch::Sender::new(map.epoch),
            adopting: tokio::sync::Mutex::new(()),
            replicas: RwLock::new(HashMap::new()),
            inflight: Arc::new(Mutex::new(HashMap::new())),
            stopping: AtomicBool::new(false),
            refusals_logged: Mutex::new(HashMap::new()),
            transport: transport.clone(),
            raft_timeouts: config.raft_timeouts(),
            raft_config,
            leader_lease: config.leader_lease(),
            lease_reads: config.raft.lease_reads,
            placing: tokio::sync::Mutex::new(()),
            removed_logged: AtomicBool::new(false),
            leftovers: AtomicBool::new(false),
            membership_changes: tokio::sync::Mutex::new(()),
            started: Instant::now(),
            boot_id: rand::random(),
            generation: AtomicU64::new(0),
            peers: Mutex::new(HashMap::new()),
        });
        for shard in map.groups() {
            if let Some(local) = shard.replica_on(identity.node_id) {
                // The reconciler starts one that must wait (see `reconcile`).
                if node.overlapping(shard).await.is_none() {
                    node.open_replica(shard, local.replica_id).await?;
                }
            }
        }
        spawn_leader_balancer(Arc::downgrade(&node));
        spawn_map_follower(Arc::downgrade(&node));
        spawn_reconciler(Arc::downgrade(&node));
        spawn_membership_audit(Arc::downgrade(&node));
        spawn_controller(Arc::downgrade(&node), config.dead_node_timeout());
        spawn_mover(
            Arc::downgrade(&node),
            config.move_timeout(),
            config.test_move_hold_file.clone(),
        );
        spawn_splitter(Arc::downgrade(&node));
        spawn_split_log_trimmer(Arc::downgrade(&node));
        spawn_split_checker(Arc::downgrade(&node), config.split_policy());
        spawn_quiescer(Arc::downgrade(&node), config.quiesce_after());
        spawn_pulses(
            Arc::downgrade(&node),
            Duration::from_millis(config.raft.heartbeat_interval_ms),
            Duration::from_millis(config.raft.election_timeout_min_ms),
        );
        info!(
            node_id = %identity.node_id,
            cluster_id = format_args!("{:016x}", identity.cluster_id),
            incarnation = format_args!("{:016x}", identity.incarnation),
            addr = %node.addr,
            data_dir = %config.data_dir.display(),
            replicas = node.replicas.read().expect("replicas lock").len(),
            "node started"
        );
        Ok(node)
    }

    /// Starts the Raft group of `replica`, this node's replica of `shard`, and registers it.
    ///
    /// State stored here for another replica of the shard (one that moved away and whose
    /// deletion a crash interrupted) is deleted first: a new replica starts from nothing. A group
    /// with no state is initialized only when it is one of the shard's first replicas and the
    /// shard's membership never changed (every replica still has its bootstrap id): then every
    /// first replica initializes it with the same voters. Any other new replica (the target of a
    /// move) waits, empty, for its leader to send it the log or a snapshot.
    pub(crate) async fn open_replica(
        self: &Arc<Self>,
        shard: &Shard,
        replica_id: ReplicaId,
    ) -> anyhow::Result<()> {
        let engine = &self.engine;
        let identity = self.identity;
        let range = shard.arc;
        let shard_id = shard.id;
        engine
            .run_blocking(move |engine| -> anyhow::Result<()> {
                match engine.replica_owner(shard_id)? {
                    Some(owner) if owner == replica_id => return Ok(()),
                    Some(owner) => {
                        info!(
                            %shard_id, old_replica_id = %owner, %replica_id,
                            "deleting the state of an earlier replica of this shard before starting the new one"
                        );
                        engine.retire_replica(shard_id, range)?;
                    }
                    // State with no owner record was made for a replica not started yet: by a
                    // split (for the replicas it names), or before owners were recorded, when
                    // every replica had its bootstrap id.
                    None if replica_id != bootstrap_replica_id(shard_id, identity.node_id)
                        && !engine.split_born(shard_id, replica_id)?
                        && engine.has_replica_state(shard_id)? =>
                    {
                        info!(
                            %shard_id, %replica_id,
                            "deleting state of this shard that no replica owns before starting a new replica"
                        );
                        engine.retire_replica(shard_id, range)?;
                    }
                    None => {}
                }
                engine.set_replica_owner(shard_id, replica_id)?;
                Ok(())
            })
            .await
            .with_context(|| format!("cannot prepare the storage of shard {shard_id} replica {replica_id}"))?;
        let mut log_store = engine.log_store(shard.id);
        let had_committed_vote = log_store
            .read_vote()
            .await
            .with_context(|| format!("cannot read the vote of shard {}", shard.id))?
            .is_some_and(|vote| vote.is_committed());
        let votes_from = had_committed_vote.then(|| Instant::now() + self.leader_lease);
        // Opening may finish an interrupted snapshot install: a long RocksDB job.
        let state_machine = engine
            .run_blocking(move |engine| engine.state_machine(shard_id, range))
            .await?;
        let range = state_machine.range();
        let applied_bound = state_machine.applied_bound();
        // Opened with nothing applied, it owns the arc the map gives: one that holds only from
        // the shard's last split on.
        let floor = if applied_bound.get() == 0 {
            shard.range_since
        } else {
            0
        };
        let network =
            ShardNetworkFactory::new(shard.id, self.transport.clone(), identity, self.raft_timeouts);
        let raft = ShardRaft::new(
            replica_id,
            self.raft_config.clone(),
            network,
            log_store,
            state_machine,
        )
        .await
        .with_context(|| format!("cannot start the Raft group of shard {}", shard.id))?;
        let first_replicas = shard
            .voters
            .iter()
            .chain(&shard.learners)
            .all(|r| r.replica_id == bootstrap_replica_id(shard.id, r.node_id));
        if !raft.is_initialized().await? && first_replicas {
            let map = self.map.read().expect("map lock").clone();
            let members: BTreeMap<ReplicaId, ReplicaNode> = shard
                .voters
                .iter()
                .map(|voter| {
                    let info = map.nodes.get(&voter.node_id);
                    let replica_node = ReplicaNode {
                        node_id: voter.node_id,
                        addr: info.map(|i| i.addr.clone()).unwrap_or_default(),
                        incarnation: info.map_or(0, |i| i.incarnation),
                    };
                    (voter.replica_id, replica_node)
                })
                .collect();
            match raft.initialize(members).await {
                Ok(()) => {}
                // A peer that started first may already have replicated the group's first
                // entries here: the group exists, which is all initialization is for.
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(error) => {
                    return Err(error)
                        .with_context(|| format!("cannot initialize the Raft group of shard {}", shard.id));
                }
            }
            if shard.voters.first().map(|v| v.node_id) == Some(identity.node_id) {
                // Best effort: the preferred leader campaigns first. Losing is harmless.
                let _ = raft.trigger().elect(true).await;
            }
        }
        if let Some(from) = votes_from {
            // Its own candidacy is a vote too: no election timer of its own until then.
            raft.runtime_config().elect(false);
            let raft = raft.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(from.into()).await;
                raft.runtime_config().elect(true);
            });
        }
        let replica = Arc::new(ShardReplica {
            shard_id: shard.id,
            replica_id,
            range,
            floor,
            raft,
            votes_from,
            failure: Mutex::new(None),
            quiet: QuietState::default(),
            applied_bound,
            contact: LeaderContact::default(),
            proofs: FreshnessProofs::default(),
            read_index: Mutex::new(ReadIndexQueue::default()),
        });
        {
            // Checked under the lock `shutdown` drains the replicas with: a group that finishes
            // starting after the node began stopping must not outlive it, or it keeps the
            // storage (and the data directory's lock) open after the node is gone.
            let mut replicas = self.replicas.write().expect("replicas lock");
            if !self.stopping.load(Ordering::Acquire) {
                spawn_failure_watch(Arc::downgrade(self), replica.clone());
                replicas.insert(shard.id, replica);
                return Ok(());
            }
        }
        info!(%shard_id, %replica_id, "the node is stopping: stopping the shard group it just started");
        let _ = replica.raft.shutdown().await;
        anyhow::bail!(
            "node {} is stopping; shard {shard_id} replica {replica_id} was not started",
            identity.node_id
        )
    }

    pub fn node_id(&self) -> NodeId {
        self.identity.node_id
    }

    pub fn identity(&self) -> LocalIdentity {
        self.identity
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn params(&self) -> &BootstrapParams {
        &self.params
    }

    pub fn snapshot_idle_timeout(&self) -> Duration {
        self.snapshot_idle_timeout
    }

    pub fn replica(&self, shard_id: ShardId) -> Option<Arc<ShardReplica>> {
        self.replicas
            .read()
            .expect("replicas lock")
            .get(&shard_id)
            .cloned()
    }

    pub(crate) fn all_replicas(&self) -> Vec<Arc<ShardReplica>> {
        let mut replicas: Vec<_> = self
            .replicas
            .read()
            .expect("replicas lock")
            .values()
            .cloned()
            .collect();
        replicas.sort_by_key(|replica| replica.shard_id);
        replicas
    }

    /// Takes `replica` out of service after a storage fault: it stops voting, leading and
    /// serving (its Raft group shuts down, so the other replicas elect a leader without it) until
    /// the node restarts. Logs the reason once.
    pub fn fail_replica(&self, replica: &Arc<ShardReplica>, reason: &str) {
        {
            let mut failure = replica.failure.lock().expect("failure lock");
            if failure.is_some() {
                return;
            }
            *failure = Some(reason.to_owned());
        }
        // Peers learn of it from the next pulse and wake the quiet shards they share with us.
        self.generation.fetch_add(1, Ordering::AcqRel);
        error!(
            shard_id = %replica.shard_id,
            replica_id = %replica.replica_id,
            data_dir = %self.engine.data_dir().display(),
            %reason,
            "storage fault: shard replica taken out of service; its other replicas keep serving. \
             Check this node's disk, then restart the node (or replace it)"
        );
        let replica = replica.clone();
        tokio::spawn(async move {
            let _ = replica.raft.shutdown().await;
        });
    }

    /// Takes every replica out of service: the fault concerns the whole engine (a failed fsync,
    /// a failed write).
    pub fn fail_all_replicas(&self, reason: &str) {
        for replica in self.all_replicas() {
            self.fail_replica(&replica, reason);
        }
    }

    /// Stops every shard group. The engine closes when the last handle drops.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        // Drained under the lock `open_replica` registers with, after `stopping` is set: every
        // group is either taken here or shut down by the `open_replica` that started it.
        let replicas: Vec<_> = self
            .replicas
            .write()
            .expect("replicas lock")
            .drain()
            .map(|(_, replica)| replica)
            .collect();
        for replica in replicas {
            if let Err(error) = replica.raft.shutdown().await {
                warn!(shard_id = %replica.shard_id, %error, "shard group did not shut down cleanly");
            }
        }
    }
}

/// Watches a replica's Raft group: openraft stops a group for good on a storage error (a
/// corrupt log entry, a failed apply); when that happens the replica is marked failed with the
/// reason, so status shows it and requests go elsewhere.
///
/// It watches the server metrics (role, leader, membership), which change rarely, and not the
/// full metrics, which a leader updates on every tick (the time since its last quorum
/// acknowledgement): with a thousand shards that would wake this task thousands of times a
/// second. The server metrics' sender goes away when the group's core stops, and the full
/// metrics then hold why.
fn spawn_failure_watch(node: std::sync::Weak<Node>, replica: Arc<ShardReplica>) {
    let mut server_metrics = replica.raft.server_metrics();
    tokio::spawn(async move {
        // Errs only when the core has stopped (its sender dropped).
        while server_metrics.changed().await.is_ok() {}
        let fatal = replica
            .raft
            .metrics()
            .borrow_watched()
            .running_state
            .clone()
            .err();
        let Some(fatal) = fatal else { return };
        let Some(node) = node.upgrade() else { return };
        if !node.stopping.load(Ordering::Acquire) && !matches!(fatal, openraft::errors::Fatal::Stopped) {
            node.fail_replica(&replica, &format!("its Raft group stopped: {fatal}"));
        }
    });
}

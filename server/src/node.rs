//! A ringkv node: one engine, the shard map, and one openraft group per shard replica it hosts.
//!
//! Process overview of `Node::start`:
//! 1. Open the engine (fails at once if another process holds the data dir).
//! 2. Load the shard map from the engine, or on first start compute the bootstrap map from the
//!    configured peers (every node computes the same map) and store it.
//! 3. Start a Raft group for every shard with a replica on this node; on first start each voter
//!    initializes its group with the same membership, which openraft accepts from every voter.
//! 4. Nudge the preferred leader (first voter) of each shard to campaign, so leaders start out
//!    spread over nodes instead of wherever the first timeout fires.
//! 5. Keep them spread: a background balancer hands leadership of a shard back to its preferred
//!    node whenever that node is caught up (after a restart, for example).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use anyhow::{Context, bail};
use openraft::alias::{SnapshotMetaOf, VoteOf};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::{ClientWriteError, InitializeError, LinearizableReadError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{ReadPolicy, ServerState};
use prost::Message;
use tracing::{info, warn};

use ringkv_engine::{
    Command, CommandResult, Engine, HashRange, ReplicaId, ReplicaNode, ShardRaft, SnapshotFile, TypeConfig,
};
use ringkv_proto::pb;
use ringkv_proto::{NodeId, ShardId, ShardMap};

use crate::config::NodeConfig;
use crate::error::ServiceError;
use crate::transport::{RaftTransport, ShardNetworkFactory};

/// How often the leader balancer looks for shards led away from their preferred node. Long
/// enough that a transfer (an election round) settles before the next look.
const BALANCE_INTERVAL: Duration = Duration::from_secs(3);

/// Meta-CF names of the node-level records.
const META_SHARD_MAP: &str = "shard_map";
const META_NODE_ID: &str = "node_id";

/// One shard replica hosted on this node.
pub struct ShardReplica {
    pub shard_id: ShardId,
    pub replica_id: ReplicaId,
    pub range: HashRange,
    pub raft: ShardRaft,
}

pub struct Node {
    node_id: NodeId,
    addr: String,
    engine: Engine,
    request_timeout: Duration,
    /// The cluster's shard map. Arcs and replicas change only through Raft (not yet: see
    /// ARCHITECTURE.md); leader hints are filled in from local Raft metrics when served.
    /// A std lock: never held across an await.
    map: RwLock<ShardMap>,
    /// Raft groups of the replicas hosted here, by shard.
    replicas: RwLock<HashMap<ShardId, Arc<ShardReplica>>>,
}

impl Node {
    /// Opens the node's storage and starts its shard groups. Does not serve gRPC: see `server`.
    pub async fn start(config: &NodeConfig, transport: Arc<dyn RaftTransport>) -> anyhow::Result<Arc<Node>> {
        config.validate()?;
        let raft_config = Arc::new(config.openraft_config()?);
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
        let engine = Engine::open(&config.data_dir)?;

        match engine.get_meta(META_NODE_ID)? {
            Some(stored) => {
                let stored = u64::from_be_bytes(
                    stored
                        .as_slice()
                        .try_into()
                        .context("node id record is corrupt")?,
                );
                if stored != config.node_id {
                    bail!(
                        "data directory {} belongs to node {stored}, but this node was started as node {}; \
                         use --node-id {stored} or another --data-dir",
                        config.data_dir.display(),
                        config.node_id
                    );
                }
            }
            None => engine.put_meta(META_NODE_ID, &config.node_id.to_be_bytes())?,
        }

        let map = match engine.get_meta(META_SHARD_MAP)? {
            Some(bytes) => {
                let wire = pb::ShardMap::decode(bytes.as_slice()).context("stored shard map is corrupt")?;
                let map = ShardMap::from_proto(&wire).context("stored shard map is invalid")?;
                let configured = config.bootstrap_nodes()?;
                if configured.len() > 1 && configured != map.nodes {
                    warn!(
                        stored = ?map.nodes, configured = ?configured,
                        "configured peers differ from the cluster this data directory belongs to; using the stored shard map"
                    );
                }
                map
            }
            None => {
                let nodes = config.bootstrap_nodes()?;
                let map = ShardMap::bootstrap(&nodes, config.shards, config.replication_factor()?)?;
                engine.put_meta(META_SHARD_MAP, &map.to_proto().encode_to_vec())?;
                info!(
                    shards = map.shards.len(),
                    nodes = nodes.len(),
                    "created a new cluster shard map"
                );
                map
            }
        };
        if !map.nodes.contains_key(&config.node_id) {
            bail!(
                "node {} is not a member of the cluster stored in {}",
                config.node_id,
                config.data_dir.display()
            );
        }

        let node = Arc::new(Node {
            node_id: config.node_id,
            addr: config.advertised_addr().to_owned(),
            engine: engine.clone(),
            request_timeout: config.request_timeout(),
            map: RwLock::new(map.clone()),
            replicas: RwLock::new(HashMap::new()),
        });

        for shard in &map.shards {
            let Some(local) = shard.replica_on(config.node_id) else {
                continue;
            };
            let range = HashRange {
                start: shard.arc.start,
                end: shard.arc.end,
            };
            let log_store = engine.log_store(shard.id);
            let state_machine = engine.state_machine(shard.id, range)?;
            let network = ShardNetworkFactory::new(shard.id, transport.clone());
            let raft = ShardRaft::new(
                local.replica_id,
                raft_config.clone(),
                network,
                log_store,
                state_machine,
            )
            .await
            .with_context(|| format!("cannot start the Raft group of shard {}", shard.id))?;
            if !raft.is_initialized().await? {
                let members: BTreeMap<ReplicaId, ReplicaNode> = shard
                    .voters
                    .iter()
                    .map(|voter| {
                        let addr = map.node_addr(voter.node_id).unwrap_or_default().to_owned();
                        (
                            voter.replica_id,
                            ReplicaNode {
                                node_id: voter.node_id,
                                addr,
                            },
                        )
                    })
                    .collect();
                match raft.initialize(members).await {
                    Ok(()) => {}
                    // A peer that started first may already have replicated the group's first
                    // entries here: the group exists, which is all initialization is for.
                    Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                    Err(error) => {
                        return Err(error).with_context(|| {
                            format!("cannot initialize the Raft group of shard {}", shard.id)
                        });
                    }
                }
                if shard.voters.first().map(|v| v.node_id) == Some(config.node_id) {
                    // Best effort: the preferred leader campaigns first. Losing is harmless.
                    let _ = raft.trigger().elect(false).await;
                }
            }
            let replica = Arc::new(ShardReplica {
                shard_id: shard.id,
                replica_id: local.replica_id,
                range,
                raft,
            });
            node.replicas
                .write()
                .expect("replicas lock")
                .insert(shard.id, replica);
        }
        spawn_leader_balancer(Arc::downgrade(&node));
        info!(
            node_id = config.node_id,
            addr = %node.addr,
            data_dir = %config.data_dir.display(),
            replicas = node.replicas.read().expect("replicas lock").len(),
            "node started"
        );
        Ok(node)
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn replica(&self, shard_id: ShardId) -> Option<Arc<ShardReplica>> {
        self.replicas
            .read()
            .expect("replicas lock")
            .get(&shard_id)
            .cloned()
    }

    fn all_replicas(&self) -> Vec<Arc<ShardReplica>> {
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

    /// The shard map with leader hints from this node's replicas.
    pub fn shard_map(&self) -> ShardMap {
        let mut map = self.map.read().expect("map lock").clone();
        for replica in self.all_replicas() {
            let leader_replica = replica.raft.metrics().borrow_watched().current_leader;
            if let Some(shard) = map.shard_mut(replica.shard_id) {
                shard.leader = leader_replica.and_then(|leader| {
                    shard
                        .voters
                        .iter()
                        .chain(&shard.learners)
                        .find(|r| r.replica_id == leader)
                        .map(|r| r.node_id)
                });
            }
        }
        map
    }

    /// Finds the local replica that must serve a request for `key` routed by the client to
    /// `route`, or says why this node cannot serve it.
    pub fn route(
        &self,
        route: Option<&pb::RouteHeader>,
        key: &[u8],
    ) -> Result<Arc<ShardReplica>, ServiceError> {
        ringkv_proto::check_key(key)?;
        let (shard_id, epoch) = {
            let map = self.map.read().expect("map lock");
            (map.shard_for_key(key).id, map.epoch)
        };
        if let Some(route) = route
            && (route.shard_id != shard_id || (route.map_epoch != 0 && route.map_epoch != epoch))
        {
            return Err(ServiceError::WrongShard {
                shard_id,
                map_epoch: epoch,
            });
        }
        self.replica(shard_id).ok_or(ServiceError::NotLeader {
            shard_id,
            leader: None,
        })
    }

    /// Finds the local replica of a shard named by id (scans), or says why it cannot be served.
    pub fn route_shard(&self, route: Option<&pb::RouteHeader>) -> Result<Arc<ShardReplica>, ServiceError> {
        let route =
            route.ok_or_else(|| ServiceError::InvalidArgument("request has no route header".into()))?;
        let epoch = self.map.read().expect("map lock").epoch;
        if self.map.read().expect("map lock").shard(route.shard_id).is_none()
            || (route.map_epoch != 0 && route.map_epoch != epoch)
        {
            return Err(ServiceError::WrongShard {
                shard_id: route.shard_id,
                map_epoch: epoch,
            });
        }
        self.replica(route.shard_id).ok_or(ServiceError::NotLeader {
            shard_id: route.shard_id,
            leader: None,
        })
    }

    /// Proposes `command` to the replica's group and waits for it to be applied.
    pub async fn write(
        &self,
        replica: &ShardReplica,
        command: Command,
    ) -> Result<CommandResult, ServiceError> {
        let shard_id = replica.shard_id;
        match tokio::time::timeout(self.request_timeout, replica.raft.client_write(command)).await {
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
                Err(ServiceError::NotLeader { shard_id, leader: leader_of(forward.leader_node) })
            }
            Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => Err(ServiceError::Unavailable {
                shard_id,
                outcome_unknown: true,
                reason: "the leader lost leadership before the write committed; it may or may not have been applied"
                    .into(),
            }),
            Ok(Err(error)) => Err(ServiceError::Unavailable {
                shard_id,
                outcome_unknown: true,
                reason: format!("the shard's Raft group failed: {error}"),
            }),
            Err(_) => Err(ServiceError::Unavailable {
                shard_id,
                outcome_unknown: true,
                reason: format!(
                    "the write did not commit within {} ms (no quorum?); it may still be applied",
                    self.request_timeout.as_millis()
                ),
            }),
        }
    }

    /// Waits until a read of the replica's local state is linearizable (ReadIndex: the leader
    /// confirms its leadership with a quorum and the state machine catches up to the read index).
    pub async fn linearizable_barrier(&self, replica: &ShardReplica) -> Result<(), ServiceError> {
        let shard_id = replica.shard_id;
        match tokio::time::timeout(
            self.request_timeout,
            replica.raft.ensure_linearizable(ReadPolicy::ReadIndex),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(forward)))) => {
                Err(ServiceError::NotLeader {
                    shard_id,
                    leader: leader_of(forward.leader_node),
                })
            }
            Ok(Err(error)) => Err(ServiceError::Unavailable {
                shard_id,
                outcome_unknown: false,
                reason: format!("cannot confirm leadership for a linearizable read: {error}"),
            }),
            Err(_) => Err(ServiceError::Unavailable {
                shard_id,
                outcome_unknown: false,
                reason: format!(
                    "leadership not confirmed within {} ms",
                    self.request_timeout.as_millis()
                ),
            }),
        }
    }

    /// This node's view of its replicas, for `ringkv status`.
    pub fn status(&self) -> pb::StatusResponse {
        let map = self.map.read().expect("map lock").clone();
        let replicas = self
            .all_replicas()
            .iter()
            .map(|replica| {
                let metrics = replica.raft.metrics().borrow_watched().clone();
                let role = match metrics.state {
                    ServerState::Leader => "leader",
                    ServerState::Follower => "follower",
                    ServerState::Candidate => "candidate",
                    ServerState::Learner => "learner",
                    ServerState::Shutdown => "shutdown",
                };
                let leader_replica_id = metrics.current_leader.unwrap_or(0);
                let leader_node_id = map
                    .shard(replica.shard_id)
                    .and_then(|shard| {
                        shard
                            .voters
                            .iter()
                            .chain(&shard.learners)
                            .find(|r| r.replica_id == leader_replica_id)
                    })
                    .map_or(0, |r| r.node_id);
                pb::ReplicaStatus {
                    shard_id: replica.shard_id,
                    replica_id: replica.replica_id,
                    role: role.into(),
                    term: metrics.current_term,
                    leader_replica_id,
                    leader_node_id,
                    last_log_index: metrics.last_log_index.unwrap_or(0),
                    committed_index: metrics.local_committed.map_or(0, |id| id.index),
                    applied_index: metrics.last_applied.map_or(0, |id| id.index),
                    snapshot_index: metrics.snapshot.map_or(0, |id| id.index),
                    purged_index: metrics.purged.map_or(0, |id| id.index),
                }
            })
            .collect();
        let stats = self.engine.group_commit_stats();
        pb::StatusResponse {
            node_id: self.node_id,
            addr: self.addr.clone(),
            data_dir: self.engine.data_dir().display().to_string(),
            replicas,
            log_appends: stats.appends,
            log_fsyncs: stats.fsyncs,
        }
    }

    fn raft_target(&self, shard_id: ShardId, replica_id: ReplicaId) -> Result<Arc<ShardReplica>, String> {
        match self.replica(shard_id) {
            Some(replica) if replica.replica_id == replica_id => Ok(replica),
            Some(replica) => Err(format!(
                "node {} hosts replica {} of shard {shard_id}, not replica {replica_id}",
                self.node_id, replica.replica_id
            )),
            None => Err(format!(
                "node {} hosts no replica of shard {shard_id}",
                self.node_id
            )),
        }
    }

    pub async fn raft_append(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<TypeConfig>, String> {
        let replica = self.raft_target(shard_id, replica_id)?;
        replica.raft.append_entries(rpc).await.map_err(|e| e.to_string())
    }

    pub async fn raft_vote(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        rpc: VoteRequest<TypeConfig>,
    ) -> Result<VoteResponse<TypeConfig>, String> {
        let replica = self.raft_target(shard_id, replica_id)?;
        replica.raft.vote(rpc).await.map_err(|e| e.to_string())
    }

    pub async fn raft_transfer_leader(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        rpc: TransferLeaderRequest<TypeConfig>,
    ) -> Result<TransferLeaderResponse<TypeConfig>, String> {
        let replica = self.raft_target(shard_id, replica_id)?;
        replica
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(|e| e.to_string())
    }

    /// Installs a snapshot a leader streamed into `file` (a path from
    /// `Engine::incoming_snapshot_path`).
    pub async fn raft_install_snapshot(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        vote: VoteOf<TypeConfig>,
        meta: SnapshotMetaOf<TypeConfig>,
        file: SnapshotFile,
    ) -> Result<SnapshotResponse<TypeConfig>, String> {
        let replica = self.raft_target(shard_id, replica_id)?;
        let snapshot = openraft::alias::SnapshotOf::<TypeConfig, SnapshotFile> { meta, snapshot: file };
        replica
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| e.to_string())
    }

    /// Stops every shard group. The engine closes when the last handle drops.
    pub async fn shutdown(&self) {
        for replica in self.all_replicas() {
            if let Err(error) = replica.raft.shutdown().await {
                warn!(shard_id = replica.shard_id, %error, "shard group did not shut down cleanly");
            }
        }
        self.replicas.write().expect("replicas lock").clear();
    }
}

/// Every `BALANCE_INTERVAL`, for each shard this node leads although another node is its preferred
/// leader (first voter), transfers leadership there if that replica has replicated the whole log.
/// A replica that is down or behind is left alone, so balancing never costs availability. Stops
/// when the node is dropped.
fn spawn_leader_balancer(node: Weak<Node>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(BALANCE_INTERVAL).await;
            let Some(node) = node.upgrade() else { return };
            let map = node.map.read().expect("map lock").clone();
            for replica in node.all_replicas() {
                let metrics = replica.raft.metrics().borrow_watched().clone();
                if metrics.state != ServerState::Leader {
                    continue;
                }
                let Some(preferred) = map
                    .shard(replica.shard_id)
                    .and_then(|shard| shard.voters.first().copied())
                else {
                    continue;
                };
                if preferred.replica_id == replica.replica_id {
                    continue;
                }
                let caught_up = metrics
                    .replication
                    .as_ref()
                    .and_then(|progress| progress.get(&preferred.replica_id).cloned().flatten())
                    .is_some_and(|matched| Some(matched.index) == metrics.last_log_index);
                if caught_up {
                    info!(
                        shard_id = replica.shard_id,
                        to_node = preferred.node_id,
                        "handing shard leadership back to its preferred node"
                    );
                    let _ = replica.raft.trigger().transfer_leader(preferred.replica_id).await;
                }
            }
        }
    });
}

fn leader_of(node: Option<ReplicaNode>) -> Option<(NodeId, String)> {
    node.map(|node| (node.node_id, node.addr))
}

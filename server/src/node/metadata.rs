//! The metadata group and how every node follows the shard map it stores.
//!
//! Process overview:
//! 1. The metadata group is a Raft group like a shard's, with the reserved id `ShardId::META`, on
//!    the nodes the map lists in `meta` (the lowest-numbered three, or five from five nodes on). Its
//!    state machine keeps its keys in a column family of its own (`meta_kv`).
//! 2. It stores one key, `map`: the encoded shard map, without leader hints. Its leader writes the
//!    bootstrap map there once, with a compare-and-swap on "absent" (`seed`), so however many
//!    leaders try, one map is stored.
//! 3. Every change is made on the metadata leader: a compare-and-swap on the version of `map` that
//!    was read, after checking that its epoch is the one the change was made from; the new map gets
//!    the next epoch. Two changes made from the same map can never both apply; the second is made
//!    again on the map that won. The leader's controller, mover and splitter change the map in
//!    place; every other change is a typed request (`MapChange`: an operator's, a split checker's,
//!    a joining node's) that any node hands to the leader (`ChangeMap`), which validates it against
//!    its map. No request carries a whole map.
//! 4. A node hosting a metadata replica follows its own replica: whenever it applies an entry, the
//!    node reads `map` and adopts it if its epoch is newer. Other nodes follow one of those through
//!    `WatchMap`, moving to the next when the stream breaks or falls silent. So does a node whose
//!    own metadata replica has known no leader for `LEADERLESS_FALLBACK`: a replica cut off from
//!    the group (removed from it while its node was down, or on a node the cluster removed) never
//!    hears of a change again, and the node must still learn the map that says so. A cut-off
//!    replica may also keep believing in its old leader for good (a learner never campaigns, and
//!    a failed pre-vote leaves the old leader in place), so a node whose metadata replica does not
//!    lead also asks another metadata node for its map every `REMOTE_PROBE` (`probe_remote`).
//! 5. Adopting stores the map in the node's `meta` column family before serving it, so a node
//!    restarts with the last map it served and opens its groups before the metadata group has a
//!    leader.

use ringkv_proto::FromProto;
use ringkv_proto::ToProto;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::{debug, info, warn};

use ringkv_engine::{Command, CommandResult, Expect, LogIndex, NodeId, Proposal, ShardId};
use ringkv_map::{MapChange, ShardMap};
use ringkv_proto::limits::MAX_MESSAGE_BYTES;
use ringkv_proto::pb::{self, cluster_client::ClusterClient};

use super::host::{Node, ShardReplica};
use super::moves::unix_ms;
use crate::error::ServiceError;
use crate::identity;

/// The metadata group's one key.
pub const MAP_KEY: &[u8] = b"map";
/// A `WatchMap` stream sends the current map this often while nothing changes.
const WATCH_KEEPALIVE: Duration = Duration::from_secs(3);
/// A follower drops a stream that sent nothing for this long (three keep-alives missed).
const WATCH_SILENCE: Duration = Duration::from_secs(10);
/// How long to connect to a metadata node before trying the next one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before following again after a stream broke or the local replica stopped.
const FOLLOW_RETRY: Duration = Duration::from_millis(500);
/// How often a metadata leader checks whether `map` is stored yet, until it is.
const SEED_RETRY: Duration = Duration::from_millis(300);
/// A node following its own metadata replica also reads `map` this often, whatever it applied.
const LOCAL_POLL: Duration = Duration::from_secs(10);
/// How long a node's own metadata replica may know no leader before the node follows the map
/// through another metadata node instead (step 4).
const LEADERLESS_FALLBACK: Duration = Duration::from_secs(3);
/// How often a node whose own metadata replica does not lead asks another metadata node for its
/// map, and how long it waits for the answer (step 4).
const REMOTE_PROBE: Duration = Duration::from_secs(10);

impl Node {
    /// This node's copy of the map, as stored in its metadata replica, with the version (log index)
    /// that wrote it. `None` while the group has not stored one yet.
    async fn stored_map(&self) -> Result<Option<(ShardMap, LogIndex)>, ServiceError> {
        let stored = self
            .engine
            .run_blocking(|engine| engine.get_meta_kv(MAP_KEY))
            .await
            .map_err(|error| ServiceError::Internal(format!("cannot read the stored shard map: {error}")))?;
        let Some(stored) = stored else { return Ok(None) };
        let map = pb::ShardMap::decode(stored.value.as_slice())
            .map_err(|error| error.to_string())
            .and_then(|wire| ShardMap::from_proto(&wire).map_err(|error| error.to_string()))
            .map_err(|error| {
                ServiceError::Internal(format!(
                    "the shard map stored in the metadata group is damaged: {error}"
                ))
            })?;
        Ok(Some((map, stored.version)))
    }

    /// On the metadata leader: the map as the group stores it now, after confirming leadership
    /// (a linearizable read). `NotLeader` on any other node.
    pub async fn confirmed_map(&self, budget: Duration) -> Result<ShardMap, ServiceError> {
        let leader = match self.replica(ShardId::META) {
            Some(replica) if replica.raft.metrics().borrow_watched().state == ServerState::Leader => replica,
            _ => {
                return Err(ServiceError::NotLeader {
                    shard_id: ShardId::META,
                    leader: self.meta_leader_hint(),
                });
            }
        };
        self.linearizable_barrier(&leader, budget).await?;
        match self.stored_map().await? {
            Some((map, _)) => Ok(map),
            None => Err(ServiceError::Unavailable {
                shard_id: ShardId::META,
                outcome_unknown: false,
                reason: "the metadata group has not stored its first map yet; retry shortly".into(),
            }),
        }
    }

    /// The map as the metadata group stores it now (`confirmed_map`), from this node if it leads
    /// the group, else from the metadata nodes in turn (the leader it knows of first), within
    /// `budget`. Adopts it too.
    pub(crate) async fn current_map(&self, budget: Duration) -> Result<ShardMap, ServiceError> {
        let started = Instant::now();
        let mut last = match self.confirmed_map(budget).await {
            Ok(map) => {
                self.adopt_map(map.clone())
                    .await
                    .map_err(|error| ServiceError::Internal(format!("{error:#}")))?;
                return Ok(map);
            }
            Err(error) => error,
        };
        let mut targets: Vec<String> = self
            .meta_leader_hint()
            .into_iter()
            .map(|(_, addr)| addr)
            .collect();
        targets.extend(remote_meta_nodes(self).into_iter().map(|(_, addr)| addr));
        targets.dedup();
        for addr in targets {
            let remaining = budget.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                break;
            }
            let answer = tokio::time::timeout(remaining, async {
                let mut client = connect(&addr).await.map_err(Status::unavailable)?;
                let mut request = tonic::Request::new(pb::GetShardMapRequest { linearizable: true });
                request.set_timeout(remaining);
                client.get_shard_map(request).await
            })
            .await;
            let wire = match answer {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) => {
                    last = forwarded_error(&addr, &status);
                    continue;
                }
                Err(_) => break,
            };
            let map = ShardMap::from_proto(&wire).map_err(|error| {
                ServiceError::Internal(format!(
                    "metadata node {addr} sent a malformed shard map: {error}"
                ))
            })?;
            self.adopt_map(map.clone())
                .await
                .map_err(|error| ServiceError::Internal(format!("{error:#}")))?;
            return Ok(map);
        }
        Err(last)
    }

    /// Makes `map` this node's map if it is newer than the one it has: stored durably first, then
    /// served, then announced to `WatchMap` streams. Returns whether it was adopted.
    pub(crate) async fn adopt_map(&self, mut map: ShardMap) -> anyhow::Result<bool> {
        let _one_at_a_time = self.adopting.lock().await;
        let current = self.map.read().expect("map lock").epoch;
        if map.cluster_id != self.identity.cluster_id || map.epoch <= current {
            return Ok(false);
        }
        for group in map.shards.iter_mut().chain(std::iter::once(&mut map.meta)) {
            group.leader = None;
        }
        let saved = map.clone();
        self.engine
            .run_blocking(move |engine| identity::save_map(engine, &saved))
            .await
            .context("cannot store the new shard map")?;
        info!(from_epoch = current, epoch = map.epoch, "adopted a new shard map");
        *self.map.write().expect("map lock") = map.clone();
        self.map_epoch.send_replace(map.epoch);
        Ok(true)
    }

    /// On the metadata leader: replaces the map with `proposed` if the map is still at
    /// `expect_epoch` (see the module header). Returns whether it did, and the map as it stands
    /// after: the new one, or the one that refused the change. `NotLeader` on any other node.
    pub(crate) async fn propose_map(
        &self,
        expect_epoch: u64,
        mut proposed: ShardMap,
        budget: Duration,
    ) -> Result<(bool, ShardMap), ServiceError> {
        let started = std::time::Instant::now();
        let leader = match self.replica(ShardId::META) {
            Some(replica) if replica.raft.metrics().borrow_watched().state == ServerState::Leader => replica,
            _ => {
                return Err(ServiceError::NotLeader {
                    shard_id: ShardId::META,
                    leader: self.meta_leader_hint(),
                });
            }
        };
        self.linearizable_barrier(&leader, budget).await?;
        let Some((current, version)) = self.stored_map().await? else {
            return Err(ServiceError::Unavailable {
                shard_id: ShardId::META,
                outcome_unknown: false,
                reason: "the metadata group has not stored its first map yet; retry shortly".into(),
            });
        };
        if current.epoch != expect_epoch {
            return Ok((false, current));
        }
        proposed.epoch = expect_epoch + 1;
        for group in proposed
            .shards
            .iter_mut()
            .chain(std::iter::once(&mut proposed.meta))
        {
            group.leader = None;
        }
        let command = Command::Cas {
            key: MAP_KEY.to_vec(),
            expect: Expect::Version(version),
            new_value: Some(proposed.to_proto().encode_to_vec()),
        };
        let remaining = budget.saturating_sub(started.elapsed());
        match self
            .write(&leader, Proposal::internal(command), remaining)
            .await?
            .result
        {
            CommandResult::Cas { succeeded: true, .. } => {
                if let Err(error) = self.adopt_map(proposed.clone()).await {
                    warn!(%error, "the new shard map is committed but this node could not adopt it yet");
                }
                info!(epoch = proposed.epoch, "shard map changed");
                Ok((true, proposed))
            }
            CommandResult::Cas { succeeded: false, .. } => {
                // Another change landed between the read and the swap: report the map that won.
                let current = self.stored_map().await?.map(|(map, _)| map).unwrap_or(current);
                Ok((false, current))
            }
            other => Err(ServiceError::Internal(format!(
                "the metadata group answered a map change with {other:?}"
            ))),
        }
    }

    /// Applies `edit` to this node's map and proposes the result; when another change lands first,
    /// applies `edit` again to the map that won, within `budget`. `edit` refuses, saying why, a
    /// change that does not (or no longer) make sense: answered as `InvalidArgument`, nothing
    /// written. A map `edit` leaves as it was is not proposed (the change is already there).
    /// Returns what `edit` returned and the map after. `what` names the change in errors.
    pub(crate) async fn change_map<T>(
        &self,
        what: &str,
        budget: Duration,
        mut edit: impl FnMut(&mut ShardMap) -> Result<T, String>,
    ) -> Result<(T, ShardMap), ServiceError> {
        let started = std::time::Instant::now();
        let mut map = self.shard_map();
        loop {
            let mut proposed = map.clone();
            let answer = edit(&mut proposed).map_err(ServiceError::InvalidArgument)?;
            if proposed == map {
                return Ok((answer, map));
            }
            let remaining = budget.saturating_sub(started.elapsed());
            let (succeeded, current) = self.propose_map(map.epoch, proposed, remaining).await?;
            if succeeded {
                return Ok((answer, current));
            }
            if started.elapsed() >= budget {
                return Err(ServiceError::Unavailable {
                    shard_id: ShardId::META,
                    outcome_unknown: false,
                    reason: format!("the map kept changing while {what} was being recorded; retry"),
                });
            }
            map = current;
        }
    }

    /// Records `change` in the map: on the metadata leader, validated against its map (refused
    /// as `InvalidArgument`, nothing written, when it does not apply); on any other node, handed
    /// to the leader. A metadata follower hands it to its leader once (`forwarded` then set); a
    /// node without a metadata replica asks the metadata nodes in turn. Returns the map after.
    pub async fn request_map_change(
        &self,
        change: &MapChange,
        forwarded: bool,
        budget: Duration,
    ) -> Result<ShardMap, ServiceError> {
        match self.replica(ShardId::META) {
            Some(replica) if replica.raft.metrics().borrow_watched().state == ServerState::Leader => {
                let ((), map) = self
                    .change_map(&change.describe(), budget, |map| change.apply(map, unix_ms()))
                    .await?;
                Ok(map)
            }
            // A metadata replica that does not lead hands the change to its leader, once.
            Some(replica) => match self.leader_addr(&replica) {
                Some((node, addr)) if !forwarded && node != self.node_id() => {
                    forward_change(&addr, change, true, budget).await
                }
                _ => Err(ServiceError::NotLeader {
                    shard_id: ShardId::META,
                    leader: self.meta_leader_hint(),
                }),
            },
            // A node without one hands it to the metadata nodes in turn, until one answers.
            None if !forwarded => self.forward_to_meta_nodes(change, budget).await,
            None => Err(ServiceError::NotLeader {
                shard_id: ShardId::META,
                leader: None,
            }),
        }
    }

    /// `request_map_change` on a node hosting no metadata replica: asks each metadata node in
    /// turn, within the budget, and returns the first answer that is not "unreachable".
    async fn forward_to_meta_nodes(
        &self,
        change: &MapChange,
        budget: Duration,
    ) -> Result<ShardMap, ServiceError> {
        let started = std::time::Instant::now();
        let targets: Vec<String> = {
            let map = self.map.read().expect("map lock");
            map.meta
                .voters
                .iter()
                .filter_map(|voter| map.node_addr(voter.node_id).map(str::to_owned))
                .collect()
        };
        let mut last = ServiceError::Unavailable {
            shard_id: ShardId::META,
            outcome_unknown: false,
            reason: "this node's map lists no metadata nodes".into(),
        };
        for addr in targets {
            let remaining = budget.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                break;
            }
            match forward_change(&addr, change, false, remaining).await {
                Err(
                    error @ ServiceError::Unavailable {
                        outcome_unknown: false,
                        ..
                    },
                ) => last = error,
                answer => return answer,
            }
        }
        Err(last)
    }

    /// The node and address of the replica's leader, if it knows one.
    pub(super) fn leader_addr(&self, replica: &ShardReplica) -> Option<(NodeId, String)> {
        let leader = replica.raft.metrics().borrow_watched().current_leader?;
        let map = self.map.read().expect("map lock");
        let node = map.replica_node(replica.shard_id, leader)?;
        Some((node, map.node_addr(node)?.to_owned()))
    }

    fn meta_leader_hint(&self) -> Option<(NodeId, String)> {
        self.replica(ShardId::META)
            .and_then(|replica| self.leader_addr(&replica))
    }

    /// Serves `WatchMap`: this node's map whenever its epoch passes `from_epoch`, then every newer
    /// one, and the current one every `WATCH_KEEPALIVE`. Ends when the node stops or the watcher
    /// goes away.
    pub fn watch_map(self: &Arc<Self>, from_epoch: u64) -> ReceiverStream<Result<pb::ShardMap, Status>> {
        let (sender, receiver) = mpsc::channel(4);
        let mut epochs = self.map_epoch.subscribe();
        let node = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut sent = from_epoch;
            loop {
                let Some(map) = node.upgrade().map(|node| node.shard_map()) else {
                    return;
                };
                let newer = map.epoch > sent;
                sent = sent.max(map.epoch);
                if newer && sender.send(Ok(map.to_proto())).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = epochs.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(WATCH_KEEPALIVE) => {
                        if sender.send(Ok(map.to_proto())).await.is_err() {
                            return;
                        }
                    }
                    () = sender.closed() => return,
                }
            }
        });
        ReceiverStream::new(receiver)
    }
}

/// Hands a map change to the node at `addr`: the metadata leader (`forwarded`), or a metadata
/// node that hands it on to its leader.
async fn forward_change(
    addr: &str,
    change: &MapChange,
    forwarded: bool,
    budget: Duration,
) -> Result<ShardMap, ServiceError> {
    let unavailable = |reason: String| ServiceError::Unavailable {
        shard_id: ShardId::META,
        outcome_unknown: true,
        reason,
    };
    let call = async {
        let mut client = connect(addr).await.map_err(|error| ServiceError::Unavailable {
            shard_id: ShardId::META,
            outcome_unknown: false,
            reason: format!("cannot reach metadata node {addr}: {error}"),
        })?;
        let mut request = tonic::Request::new(pb::ChangeMapRequest {
            change: Some(change.to_proto()),
            forwarded,
        });
        request.set_timeout(budget);
        let response = client
            .change_map(request)
            .await
            .map_err(|status| forwarded_error(addr, &status))?
            .into_inner();
        response
            .map
            .ok_or_else(|| unavailable(format!("metadata node {addr} sent no map")))
            .and_then(|wire| {
                ShardMap::from_proto(&wire)
                    .map_err(|error| unavailable(format!("metadata node {addr} sent a bad map: {error}")))
            })
    };
    tokio::time::timeout(budget, call).await.unwrap_or_else(|_| {
        Err(unavailable(format!(
            "metadata node {addr} did not answer within {} ms; the change may still apply",
            budget.as_millis()
        )))
    })
}

/// What a metadata node's refusal means here. Refusals that say nothing was written (a node that
/// does not lead, bad input) keep that meaning; anything else may have been written.
fn forwarded_error(addr: &str, status: &Status) -> ServiceError {
    use pb::error_detail::Kind;
    let reason = format!("metadata node {addr} answered: {}", status.message());
    let kind = pb::ErrorDetail::decode(status.details())
        .ok()
        .and_then(|detail| detail.kind);
    let not_written = match kind {
        Some(Kind::InvalidArgument(_)) => return ServiceError::InvalidArgument(reason),
        Some(Kind::NotLeader(_)) => true,
        Some(Kind::Unavailable(unavailable)) => !unavailable.outcome_unknown,
        _ => false,
    };
    ServiceError::Unavailable {
        shard_id: ShardId::META,
        outcome_unknown: !not_written,
        reason,
    }
}

pub(super) async fn connect(addr: &str) -> Result<ClusterClient<tonic::transport::Channel>, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|error| error.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|error| error.to_string())?;
    Ok(ClusterClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
}

/// Keeps the node's map following the metadata group until the node is dropped (see the module
/// header, steps 2, 4 and 5).
pub(crate) fn spawn_map_follower(node: Weak<Node>) {
    tokio::spawn(async move {
        let mut attempt = 0usize;
        // Whether the local replica last stopped following for want of a leader.
        let mut leaderless = false;
        loop {
            let Some(strong) = node.upgrade() else { return };
            if strong.stopping.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            let local = strong
                .replica(ShardId::META)
                .filter(|replica| replica.failure().is_none())
                .filter(|replica| !leaderless || knows_leader(replica));
            drop(strong);
            match local {
                Some(replica) => leaderless = follow_local(&node, replica).await == Stopped::Leaderless,
                None => {
                    follow_remote(&node, attempt).await;
                    attempt += 1;
                }
            }
            tokio::time::sleep(FOLLOW_RETRY).await;
        }
    });
}

fn knows_leader(replica: &ShardReplica) -> bool {
    replica.raft.metrics().borrow_watched().current_leader.is_some()
}

/// Why `follow_local` stopped.
#[derive(PartialEq, Eq)]
enum Stopped {
    /// The group stopped, or the node went away.
    Gone,
    /// The replica knew no leader for `LEADERLESS_FALLBACK`.
    Leaderless,
}

/// Follows this node's own metadata replica until its group stops or it knows no leader for
/// `LEADERLESS_FALLBACK`; seeds the map when it leads and none is stored.
async fn follow_local(node: &Weak<Node>, replica: Arc<ShardReplica>) -> Stopped {
    let mut metrics = replica.raft.metrics();
    let mut read_at = None;
    let mut seeded = false;
    let mut leaderless_since: Option<Instant> = None;
    // The first probe comes soon after start: a node restarting after its removal learns of it.
    let mut next_probe = Instant::now() + LEADERLESS_FALLBACK;
    let mut probes = 0usize;
    loop {
        if Instant::now() >= next_probe {
            next_probe = Instant::now() + REMOTE_PROBE;
            if metrics.borrow_watched().state != ServerState::Leader {
                probe_remote(node, probes).await;
                probes += 1;
            }
        }
        if metrics.borrow_watched().current_leader.is_some() {
            leaderless_since = None;
        } else if leaderless_since.get_or_insert_with(Instant::now).elapsed() > LEADERLESS_FALLBACK {
            debug!(
                "this node's metadata replica knows no leader; following the map through another metadata node"
            );
            return Stopped::Leaderless;
        }
        let applied = metrics.borrow_watched().last_applied.map(|id| id.index);
        if applied != read_at || !seeded {
            let Some(node) = node.upgrade() else {
                return Stopped::Gone;
            };
            match node.stored_map().await {
                Ok(Some((map, _))) => {
                    seeded = true;
                    read_at = applied;
                    if let Err(error) = node.adopt_map(map).await {
                        warn!(%error, "cannot adopt the shard map of the metadata group; retrying");
                        read_at = None;
                    }
                }
                Ok(None) => seed(&node, &replica).await,
                Err(error) => warn!(%error, "cannot read the shard map of the metadata group; retrying"),
            }
        }
        let pause = match (seeded, leaderless_since) {
            (false, _) => SEED_RETRY,
            // Wakes to check the leaderless time even when the metrics stay as they are.
            (true, Some(_)) => LEADERLESS_FALLBACK / 2,
            (true, None) => LOCAL_POLL,
        }
        .min(next_probe.saturating_duration_since(Instant::now()));
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return Stopped::Gone },
            () = tokio::time::sleep(pause) => read_at = None,
        }
    }
}

/// Stores this node's (bootstrap) map in the metadata group if this replica leads and none is
/// stored: a compare-and-swap on "absent", so at most one map is ever seeded.
async fn seed(node: &Node, replica: &Arc<ShardReplica>) {
    if replica.raft.metrics().borrow_watched().state != ServerState::Leader {
        return;
    }
    let map = node.map.read().expect("map lock").clone();
    let command = Command::Cas {
        key: MAP_KEY.to_vec(),
        expect: Expect::Absent,
        new_value: Some(map.to_proto().encode_to_vec()),
    };
    match node
        .write(replica, Proposal::internal(command), SEED_RETRY * 10)
        .await
        .map(|applied| applied.result)
    {
        Ok(CommandResult::Cas { succeeded, .. }) => {
            info!(
                epoch = map.epoch,
                stored = succeeded,
                "seeded the metadata group with the shard map"
            );
        }
        Ok(other) => warn!(?other, "unexpected answer to seeding the metadata group"),
        Err(error) => debug!(%error, "could not seed the metadata group yet; retrying"),
    }
}

/// The metadata voters other than this node, with their addresses, in the order of `map.meta`.
fn remote_meta_nodes(node: &Node) -> Vec<(NodeId, String)> {
    let map = node.map.read().expect("map lock");
    map.meta
        .voters
        .iter()
        .filter(|voter| voter.node_id != node.node_id())
        .filter_map(|voter| Some((voter.node_id, map.node_addr(voter.node_id)?.to_owned())))
        .collect()
}

/// Asks one of the other metadata nodes (the `attempt`-th, in turn) for its map once, and adopts
/// it if it is newer (step 4). Failures are left to the next probe.
async fn probe_remote(node: &Weak<Node>, attempt: usize) {
    let targets = match node.upgrade() {
        Some(node) => remote_meta_nodes(&node),
        None => return,
    };
    let Some((target_node, addr)) = targets.get(attempt % targets.len().max(1)).cloned() else {
        return;
    };
    let answer = tokio::time::timeout(REMOTE_PROBE, async {
        let mut client = connect(&addr).await?;
        client
            .get_shard_map(pb::GetShardMapRequest { linearizable: false })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| status.message().to_owned())
    })
    .await;
    let wire = match answer {
        Ok(Ok(wire)) => wire,
        Ok(Err(error)) => {
            debug!(%target_node, %addr, %error, "cannot ask a metadata node for its shard map");
            return;
        }
        Err(_) => {
            debug!(%target_node, %addr, "a metadata node did not answer for its shard map in time");
            return;
        }
    };
    let Some(node) = node.upgrade() else { return };
    match ShardMap::from_proto(&wire) {
        Ok(map) => match node.adopt_map(map).await {
            Ok(true) => info!(
                %target_node,
                "learned a newer shard map from another metadata node than from this node's own metadata replica"
            ),
            Ok(false) => {}
            Err(error) => warn!(%error, "cannot adopt the shard map a metadata node sent"),
        },
        Err(error) => warn!(%target_node, %error, "a metadata node sent a malformed shard map"),
    }
}

/// Follows the map through `WatchMap` on one of the metadata group's nodes (the `attempt`-th, in
/// turn), until the stream breaks or falls silent.
async fn follow_remote(node: &Weak<Node>, attempt: usize) {
    let (target, from_epoch) = {
        let Some(node) = node.upgrade() else { return };
        let targets = remote_meta_nodes(&node);
        if targets.is_empty() {
            return;
        }
        let epoch = node.map.read().expect("map lock").epoch;
        (targets[attempt % targets.len()].clone(), epoch)
    };
    let (target_node, addr) = target;
    let mut stream = match connect(&addr).await {
        Ok(mut client) => match client.watch_map(pb::WatchMapRequest { from_epoch }).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                debug!(%target_node, %addr, error = %status.message(), "cannot watch the shard map there");
                return;
            }
        },
        Err(error) => {
            debug!(%target_node, %addr, %error, "cannot reach a metadata node to watch the shard map");
            return;
        }
    };
    loop {
        let message = match tokio::time::timeout(WATCH_SILENCE, stream.message()).await {
            Ok(Ok(Some(message))) => message,
            Ok(Ok(None)) => return,
            Ok(Err(status)) => {
                debug!(%target_node, error = %status.message(), "the shard map watch broke");
                return;
            }
            Err(_) => {
                debug!(%target_node, "the shard map watch fell silent");
                return;
            }
        };
        let Some(node) = node.upgrade() else { return };
        match ShardMap::from_proto(&message) {
            Ok(map) => {
                if let Err(error) = node.adopt_map(map).await {
                    warn!(%error, "cannot adopt the shard map a metadata node sent");
                    return;
                }
            }
            Err(error) => {
                warn!(%target_node, %error, "a metadata node sent a malformed shard map");
                return;
            }
        }
        // A node that now hosts a metadata replica that knows its leader follows that instead.
        if node
            .replica(ShardId::META)
            .is_some_and(|replica| knows_leader(&replica))
        {
            return;
        }
    }
}

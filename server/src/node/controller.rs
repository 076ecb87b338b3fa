//! The controller: placement decisions in one place, on the metadata group's leader (TiKV PD
//! style). Every 2 s, and on every map change, it first marks nodes down that it has not heard
//! from for `dead_node_timeout` (and up again when they answer), then asks the map for its next
//! placement step
//! (`Placement::next_placement_step`, `placement.rs`: drain decommissioning nodes, remove emptied ones, balance
//! replicas, then preferred leaders) and records it as one map change, with its reason in the
//! map's decision log. Moves it begins are carried out by the mover (`moves`), like an
//! operator's. A controller that loses the metadata leadership stops; the next leader's takes
//! over from the map.

use super::placement::Placement;
use std::sync::Weak;
use std::time::Duration;

use tracing::{info, warn};

use ringkv_engine::NodeId;
use ringkv_map::{MapChange, NodeRole, NodeState, ShardMap};
use ringkv_proto::pb;

use super::host::Node;
use super::moves::unix_ms;
use crate::error::ServiceError;

/// How often the controller looks, besides on every map change.
const CONTROLLER_TICK: Duration = Duration::from_secs(2);
/// Moves in progress at once, cluster-wide.
pub(crate) const MAX_CONCURRENT_MOVES: usize = 2;
/// Budget of one map change.
const CHANGE_BUDGET: Duration = Duration::from_secs(10);

/// Runs the controller until the node is dropped.
pub(crate) fn spawn_controller(node: Weak<Node>, dead_node_timeout: Duration) {
    let Some(mut epochs) = node.upgrade().map(|node| node.map_epoch.subscribe()) else {
        return;
    };
    tokio::spawn(async move {
        loop {
            let _ = tokio::time::timeout(CONTROLLER_TICK, epochs.changed()).await;
            let Some(node) = node.upgrade() else { return };
            if node.stopping.load(std::sync::atomic::Ordering::Acquire) || !node.leads_metadata() {
                continue;
            }
            let map = node.shard_map();
            if let Some(liveness) = liveness_change(&node, &map, dead_node_timeout) {
                record_liveness(&node, &map, liveness).await;
                continue;
            }
            let Some(step) = map.next_placement_step(MAX_CONCURRENT_MOVES) else {
                continue;
            };
            let mut proposed = map.clone();
            if let Err(error) = proposed.apply_placement_step(&step, unix_ms()) {
                warn!(?step, %error, "the controller's placement step does not apply to the map");
                continue;
            }
            match node.propose_map(map.epoch, proposed, CHANGE_BUDGET).await {
                Ok((true, changed)) => info!(
                    epoch = changed.epoch,
                    ?step,
                    "controller: placement step recorded"
                ),
                // Another change landed first: look again at the new map.
                Ok((false, _)) => {}
                Err(error) => warn!(?step, %error, "controller: cannot record a placement step; retrying"),
            }
        }
    });
}

/// A node heard again within this long after being marked down is marked up.
const HEARD_AGAIN: Duration = Duration::from_secs(3);

/// A node whose state should change with what this (the metadata leader) node hears of it: an up
/// node unheard for longer than `dead_node_timeout` goes down, a down node heard again comes up.
fn liveness_change(
    node: &Node,
    map: &ShardMap,
    dead_node_timeout: Duration,
) -> Option<(NodeId, NodeState, String)> {
    for (&peer, info) in &map.nodes {
        if peer == node.node_id() {
            continue;
        }
        let heard = node.heard_from(peer);
        // Never heard since this node started: silent all that time.
        let silent = heard.unwrap_or_else(|| node.started.elapsed());
        match info.state {
            NodeState::Up if silent > dead_node_timeout => {
                let reason = format!(
                    "unheard for {} s (dead_node_timeout {} s): its replicas are re-created on other nodes",
                    silent.as_secs(),
                    dead_node_timeout.as_secs()
                );
                return Some((peer, NodeState::Down, reason));
            }
            NodeState::Down if heard.is_some_and(|silent| silent < HEARD_AGAIN) => {
                let reason =
                    "heard from again; its old replicas were replaced, so it starts empty".to_owned();
                return Some((peer, NodeState::Up, reason));
            }
            _ => {}
        }
    }
    None
}

async fn record_liveness(node: &Node, map: &ShardMap, (peer, state, reason): (NodeId, NodeState, String)) {
    let mut proposed = map.clone();
    proposed.set_node_state(peer, state, &reason, unix_ms());
    match node.propose_map(map.epoch, proposed, CHANGE_BUDGET).await {
        Ok((true, changed)) => {
            info!(epoch = changed.epoch, node_id = %peer, %state, %reason, "controller: node state changed")
        }
        Ok((false, _)) => {}
        Err(error) => {
            warn!(node_id = %peer, %state, %error, "controller: cannot record a node's state; retrying")
        }
    }
}

impl Node {
    /// Serves `Join`: records a node with an empty data directory in the map (see
    /// `ShardMap::add_node`). Returns its id and the map that has it.
    pub async fn join_node(
        &self,
        node: Option<NodeId>,
        addr: &str,
        incarnation: u64,
        role: pb::NodeRole,
        budget: Duration,
    ) -> Result<(NodeId, ShardMap), ServiceError> {
        let role = match role {
            pb::NodeRole::Voter => NodeRole::Voter,
            pb::NodeRole::ReadReplica => NodeRole::ReadReplica,
        };
        let change = MapChange::Join {
            node,
            addr: addr.to_owned(),
            incarnation,
            role,
        };
        let map = self.request_map_change(&change, false, budget).await?;
        let id = map
            .nodes
            .iter()
            .find(|(_, info)| info.incarnation == incarnation)
            .map(|(id, _)| *id)
            .ok_or_else(|| {
                ServiceError::Internal(format!(
                    "the map recorded the join of the node at {addr}, but lists no node of its incarnation"
                ))
            })?;
        info!(node_id = %id, %addr, "a node is a member of the cluster");
        Ok((id, map))
    }

    /// Serves `DecommissionNode`: marks the node decommissioning in the map (the controller then
    /// drains it).
    pub async fn decommission_node(
        &self,
        target: NodeId,
        budget: Duration,
    ) -> Result<ShardMap, ServiceError> {
        let map = self
            .request_map_change(&MapChange::DecommissionNode { node: target }, false, budget)
            .await?;
        info!(node_id = %target, "node marked decommissioning");
        Ok(map)
    }
}

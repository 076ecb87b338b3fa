//! Choosing the replica a read goes to when any replica may serve it: the order the selection
//! asks for (nearest by measured latency, round robin, or one node first), with replicas that
//! failed or were behind moments ago moved to the back for `SKIP_FOR`, never dropped for good.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ringkv_proto::{NodeId, ShardId};

use crate::read::ReplicaSelection;

/// How long a replica that failed a read, or was behind, goes to the back of the order.
pub(crate) const SKIP_FOR: Duration = Duration::from_secs(2);
/// Weight of a new latency sample in the moving average.
const LATENCY_WEIGHT: f64 = 0.2;

#[derive(Debug, Default)]
pub(crate) struct ReplicaHealth {
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    /// Moving average of successful round trips per node, in microseconds.
    latency: HashMap<NodeId, f64>,
    /// Until when a shard's replica on a node goes to the back.
    skipped: HashMap<(ShardId, NodeId), Instant>,
    /// Round-robin position.
    turn: usize,
}

impl ReplicaHealth {
    /// `candidates` (the nodes holding the shard's replicas) in the order to try them.
    pub(crate) fn order(
        &self,
        shard_id: ShardId,
        mut candidates: Vec<NodeId>,
        selection: ReplicaSelection,
        now: Instant,
    ) -> Vec<NodeId> {
        let mut state = self.state.lock().expect("replica health lock");
        state.skipped.retain(|_, until| *until > now);
        let latency = |node: &NodeId| state.latency.get(node).copied().unwrap_or(0.0);
        match selection {
            ReplicaSelection::Spread => {
                if !candidates.is_empty() {
                    let turn = state.turn % candidates.len();
                    candidates.rotate_left(turn);
                }
                state.turn = state.turn.wrapping_add(1);
            }
            ReplicaSelection::Nearest | ReplicaSelection::Leader => {
                candidates.sort_by(|a, b| latency(a).total_cmp(&latency(b)));
            }
            ReplicaSelection::Node(first) => {
                candidates.sort_by(|a, b| latency(a).total_cmp(&latency(b)));
                if let Some(position) = candidates.iter().position(|node| *node == first) {
                    let node = candidates.remove(position);
                    candidates.insert(0, node);
                }
            }
        }
        // Skipped replicas last, in the same order among themselves.
        candidates.sort_by_key(|node| state.skipped.contains_key(&(shard_id, *node)));
        candidates
    }

    /// A read of `shard_id` failed at `node`, or the replica was behind.
    pub(crate) fn skip(&self, shard_id: ShardId, node: NodeId, now: Instant) {
        let mut state = self.state.lock().expect("replica health lock");
        state.skipped.insert((shard_id, node), now + SKIP_FOR);
    }

    /// A request to `node` was answered after `took`.
    pub(crate) fn record_latency(&self, node: NodeId, took: Duration) {
        let mut state = self.state.lock().expect("replica health lock");
        let sample = took.as_micros() as f64;
        let average = state.latency.entry(node).or_insert(sample);
        *average += LATENCY_WEIGHT * (sample - *average);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARD: ShardId = ShardId(3);

    fn nodes(ids: &[u64]) -> Vec<NodeId> {
        ids.iter().map(|id| NodeId(*id)).collect()
    }

    #[test]
    fn nearest_goes_by_measured_latency_and_skipped_replicas_go_last_for_a_while() {
        let health = ReplicaHealth::default();
        let now = Instant::now();
        health.record_latency(NodeId(1), Duration::from_millis(9));
        health.record_latency(NodeId(2), Duration::from_millis(1));
        health.record_latency(NodeId(3), Duration::from_millis(4));
        let order = |at| health.order(SHARD, nodes(&[1, 2, 3]), ReplicaSelection::Nearest, at);
        assert_eq!(order(now), nodes(&[2, 3, 1]));
        health.skip(SHARD, NodeId(2), now);
        assert_eq!(order(now), nodes(&[3, 1, 2]), "skipped: tried last");
        assert_eq!(
            health.order(ShardId(4), nodes(&[1, 2, 3]), ReplicaSelection::Nearest, now),
            nodes(&[2, 3, 1]),
            "only for that shard"
        );
        assert_eq!(order(now + SKIP_FOR), nodes(&[2, 3, 1]), "and only for a while");
    }

    #[test]
    fn spread_takes_turns_and_a_named_node_goes_first() {
        let health = ReplicaHealth::default();
        let now = Instant::now();
        let firsts: Vec<NodeId> = (0..6)
            .map(|_| health.order(SHARD, nodes(&[1, 2, 3]), ReplicaSelection::Spread, now)[0])
            .collect();
        assert_eq!(firsts, nodes(&[1, 2, 3, 1, 2, 3]));
        let order = health.order(SHARD, nodes(&[1, 2, 3]), ReplicaSelection::Node(NodeId(3)), now);
        assert_eq!(order[0], NodeId(3));
        // A named node that holds no replica changes nothing.
        let order = health.order(SHARD, nodes(&[1, 2]), ReplicaSelection::Node(NodeId(3)), now);
        assert_eq!(order.len(), 2);
    }
}

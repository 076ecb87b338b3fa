//! The leader balancer: every node hands leadership of a shard back to the shard's preferred node
//! (its first voter, unless a move takes that one away; the controller spreads them evenly) whenever that replica has the whole log, so
//! leaders stay spread after elections and restarts. A preferred replica that is down or behind is
//! left alone, so balancing never costs availability; a node that is stopping balances nothing.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use tracing::info;

use super::host::Node;
use super::leadership::{caught_up_voters, transfer_watched};

/// How often the balancer looks for shards led away from their preferred node. Long enough that
/// a transfer (an election round) settles before the next look.
const BALANCE_INTERVAL: Duration = Duration::from_secs(3);

/// Runs the balancer until the node is dropped.
pub(crate) fn spawn_leader_balancer(node: Weak<Node>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(BALANCE_INTERVAL).await;
            let Some(node) = node.upgrade() else { return };
            if node.stopping.load(Ordering::Acquire) {
                return;
            }
            let map = node.map.read().expect("map lock").clone();
            for replica in node.all_replicas() {
                let metrics = replica.raft.metrics().borrow_watched().clone();
                if metrics.state != ServerState::Leader {
                    continue;
                }
                let Some(preferred) = map.preferred_leader(replica.shard_id) else {
                    continue;
                };
                if preferred.replica_id == replica.replica_id {
                    continue;
                }
                if caught_up_voters(&replica).contains(&preferred.replica_id) {
                    info!(
                        shard_id = %replica.shard_id,
                        to_node = %preferred.node_id,
                        "handing shard leadership back to its preferred node"
                    );
                    transfer_watched(replica.clone(), preferred.replica_id);
                }
            }
        }
    });
}

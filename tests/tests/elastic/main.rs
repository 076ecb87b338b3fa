//! The elastic cluster against real `ringkv` processes: the shard map as replicated metadata,
//! replicas moving between nodes, decommissioning a node, and splitting shards.
//! Every test ends with the replica check, which covers the metadata group too.

mod dead_node;
mod decommission;
mod grow;
mod metadata;
mod moves;
mod read_replicas;
mod split;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ringkv_proto::ShardId;
use ringkv_proto::pb::{self, ReplicaStatus};
use ringkv_tests::ProcessCluster;

/// The replicas the node at `addr` runs, by its own status.
async fn running_replicas(addr: &str) -> anyhow::Result<Vec<ReplicaStatus>> {
    let status = pb::cluster_client::ClusterClient::connect(format!("http://{addr}"))
        .await
        .with_context(|| format!("cannot connect to {addr}"))?
        .status(pb::StatusRequest {})
        .await?
        .into_inner();
    Ok(status.replicas)
}

/// Waits until the replicas the node at `addr` runs satisfy `done`; fails after `timeout` with
/// `what` and the replica ids it last saw.
async fn wait_replicas(
    addr: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&[ReplicaStatus]) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let replicas = running_replicas(addr).await?;
        if done(&replicas) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let ids: Vec<u64> = replicas.iter().map(|r| r.replica_id).collect();
            bail!("{what}: not within {timeout:?}; the node runs replicas {ids:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `ringkv node list --output json` against the node at `addr`: the CLI binary, as a user runs it.
fn node_list(addr: &str) -> anyhow::Result<serde_json::Value> {
    let out = std::process::Command::new(ringkv_tests::process_cluster::ringkv_binary())
        .args(["--endpoints", addr, "node", "list", "--output", "json"])
        .output()?;
    serde_json::from_slice(&out.stdout).with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The node leading the metadata group, by the running nodes' own status.
async fn meta_leader(cluster: &ProcessCluster) -> anyhow::Result<u64> {
    for node in cluster.nodes.iter().filter(|n| n.is_running()) {
        let Ok(replicas) = running_replicas(&node.addr).await else {
            continue;
        };
        if replicas
            .iter()
            .any(|r| r.shard_id == ShardId::META.0 && r.role == "leader")
        {
            return Ok(node.node_id);
        }
    }
    bail!("no node leads the metadata group")
}

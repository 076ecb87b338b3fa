//! A learner in a group's Raft membership that the shard map does not place (what a mover on a
//! former metadata leader leaves when its "add the learner" step reaches a leader whose map lags,
//! after a rollback removed that learner) is removed by the group's leader (`node::audit`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use openraft::async_runtime::watch::WatchReceiver;
use ringkv_engine::{NodeId, ReplicaId, ReplicaNode, ShardId};
use ringkv_server::transport::MemoryNetwork;
use ringkv_tests::local_cluster::TransportKind;
use ringkv_tests::{LocalCluster, assert_replicas_identical};

const SHARD: ShardId = ShardId(1);

/// The learners of `shard`'s committed membership on its leader `node`.
fn committed_learners(cluster: &LocalCluster, node: u64) -> anyhow::Result<BTreeSet<ReplicaId>> {
    let replica = cluster
        .running(node)
        .node
        .replica(SHARD)
        .with_context(|| format!("node {node} runs no replica of shard {SHARD}"))?;
    let metrics = replica.raft.metrics().borrow_watched().clone();
    Ok(metrics
        .committed_membership_config
        .membership()
        .learner_ids()
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_the_map_does_not_place_is_removed_from_its_group() -> anyhow::Result<()> {
    let cluster = LocalCluster::start(3, 1, TransportKind::Memory(MemoryNetwork::new(41)), |_| {}).await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let client = cluster.client().await?;
    client.put("before", "1").await?;
    let leader = cluster.leader_of(1, SHARD)?;
    let epoch = cluster.running(leader).node.shard_map().epoch;

    // The stale step, made on the leader directly: a replica id no map has listed, on node 3
    // (which runs another replica of the shard, so nothing ever starts this one).
    let stray = ReplicaId((SHARD.0 << 32) | 0xdead);
    let info = cluster.running(leader).node.shard_map().nodes[&NodeId(3)].clone();
    let replica = cluster
        .running(leader)
        .node
        .replica(SHARD)
        .context("the leader's replica")?;
    replica
        .raft
        .add_learner(
            stray,
            ReplicaNode {
                node_id: NodeId(3),
                addr: info.addr.clone(),
                incarnation: info.incarnation,
            },
            false,
        )
        .await?;
    assert!(
        committed_learners(&cluster, leader)?.contains(&stray),
        "the stray learner was not added"
    );

    // The leader's audit reads the map, finds the learner unplaced, and removes it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed_learners(&cluster, leader)?.contains(&stray) {
        if Instant::now() > deadline {
            bail!(
                "shard {SHARD}'s leader (node {leader}) still holds learner {stray}, which its map does not place, \
                 30 s after it was added"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Nothing else changed: the map, and a shard that serves writes with identical replicas.
    assert_eq!(cluster.running(leader).node.shard_map().epoch, epoch);
    client.put("after", "2").await?;
    assert_replicas_identical(&client).await?;
    cluster.shutdown().await;
    Ok(())
}

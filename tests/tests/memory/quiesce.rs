//! Quiet idle shards (`node::quiesce`): a shard that serves nothing stops its Raft timers and
//! heartbeats, wakes for the next request, and still elects a new leader when its leader's node
//! dies or is cut off, because node-level liveness watches the leader in its place.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ringkv_engine::{NodeId, ShardId};
use ringkv_server::transport::MemoryNetwork;
use ringkv_tests::local_cluster::TransportKind;
use ringkv_tests::{LocalCluster, assert_replicas_identical};

const SHARDS: u32 = 8;
/// Raft groups on every node: the shards and the metadata group (3 nodes: each hosts one of its
/// replicas), which goes quiet too while the map does not change.
const GROUPS: u64 = SHARDS as u64 + 1;

async fn quiet_cluster(seed: u64) -> anyhow::Result<(LocalCluster, std::sync::Arc<MemoryNetwork>)> {
    let network = MemoryNetwork::new(seed);
    let cluster = LocalCluster::start(3, SHARDS, TransportKind::Memory(network.clone()), |config| {
        config.raft.quiesce_after_ms = 500;
    })
    .await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    Ok((cluster, network))
}

/// Waits until every running node reports all its replicas quiet.
async fn wait_all_quiet(cluster: &LocalCluster, nodes: &[u64], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let quiet: Vec<u64> = nodes
            .iter()
            .map(|&n| cluster.running(n).node.status().quiet_replicas)
            .collect();
        if quiet.iter().all(|&q| q == GROUPS) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("replicas quiet per node after {timeout:?}: {quiet:?} (of {GROUPS} each)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A key of each shard, found through node 1's map.
fn key_per_shard(cluster: &LocalCluster) -> Vec<(ShardId, Vec<u8>)> {
    (1..=SHARDS)
        .map(|shard| {
            let key = cluster
                .keys_of_shard(1, ShardId(u64::from(shard)), &format!("quiet-{shard}-"), 1)
                .pop()
                .expect("a key of every shard");
            (ShardId(u64::from(shard)), key)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_shards_go_quiet_send_nothing_and_wake_for_requests() -> anyhow::Result<()> {
    let (cluster, network) = quiet_cluster(21).await?;
    let client = cluster.client().await?;
    let keys = key_per_shard(&cluster);
    for (_, key) in &keys {
        client.put(key, "before").await?;
    }

    wait_all_quiet(&cluster, &[1, 2, 3], Duration::from_secs(30)).await?;
    // Quiet: no Raft message for any shard (heartbeats would be 10 per second per follower per
    // shard: about 300 in this window); only node pulses flow.
    let before = network.shard_messages();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = network.shard_messages() - before;
    assert_eq!(sent, 0, "{sent} shard messages while every shard was quiet");

    // Every shard wakes for a write and a linearizable read, and answers them.
    for (shard, key) in &keys {
        client
            .put(key, "after")
            .await
            .with_context(|| format!("write to quiet shard {shard}"))?;
        let value = client.get(key).await?.context("the key just written")?;
        assert_eq!(&value.value[..], b"after", "shard {shard}");
    }
    // And goes quiet again once idle.
    wait_all_quiet(&cluster, &[1, 2, 3], Duration::from_secs(30)).await?;
    assert_replicas_identical(&client).await?;
    cluster.shutdown().await;
    Ok(())
}

/// The node leading shard 1, per node `asker`'s view.
fn leader_of_shard_1(cluster: &LocalCluster, asker: u64) -> anyhow::Result<u64> {
    cluster.leader_of(asker, ShardId(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quiet_shards_elect_new_leaders_when_their_leader_node_dies() -> anyhow::Result<()> {
    let (mut cluster, _network) = quiet_cluster(22).await?;
    let client = cluster.client_with_timeout(Duration::from_secs(20)).await?;
    let keys = key_per_shard(&cluster);
    for (_, key) in &keys {
        client.put(key, "before").await?;
    }
    wait_all_quiet(&cluster, &[1, 2, 3], Duration::from_secs(30)).await?;

    // Its followers' timers are off: only node liveness can tell them the leader is gone.
    let dead = leader_of_shard_1(&cluster, 1)?;
    cluster.kill_node(dead).await;
    for (shard, key) in &keys {
        client
            .put(key, "after")
            .await
            .with_context(|| format!("write to shard {shard} after node {dead} died"))?;
    }
    for (shard, key) in &keys {
        let value = client.get(key).await?.context("the key just written")?;
        assert_eq!(&value.value[..], b"after", "shard {shard}");
    }
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quiet_shards_elect_new_leaders_when_their_leader_node_is_cut_off() -> anyhow::Result<()> {
    let (cluster, network) = quiet_cluster(23).await?;
    let keys = key_per_shard(&cluster);
    {
        let client = cluster.client().await?;
        for (_, key) in &keys {
            client.put(key, "before").await?;
        }
    }
    wait_all_quiet(&cluster, &[1, 2, 3], Duration::from_secs(30)).await?;

    // The node stays up but loses its peers: the two others wake the shards it led and elect.
    let cut = leader_of_shard_1(&cluster, 1)?;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != cut).collect();
    network.partition(&[NodeId(cut)], &[NodeId(others[0]), NodeId(others[1])]);
    // Clients reach only the majority side's nodes.
    let mut config =
        ringkv_client::ClientConfig::new(others.iter().map(|&n| cluster.running(n).local_addr.to_string()));
    config.request_timeout = Duration::from_secs(20);
    let majority = ringkv_client::Client::with_config(config).await?;
    for (shard, key) in &keys {
        majority
            .put(key, "after")
            .await
            .with_context(|| format!("write to shard {shard} with node {cut} cut off"))?;
    }
    network.heal();
    let client = cluster.client().await?;
    for (shard, key) in &keys {
        let value = client.get(key).await?.context("the key just written")?;
        assert_eq!(&value.value[..], b"after", "shard {shard}");
    }
    cluster.wait_caught_up(Duration::from_secs(30)).await?;
    assert_replicas_identical(&client).await?;
    cluster.shutdown().await;
    Ok(())
}

//! Writes to a leader whose lease lapsed while nobody else leads.
//!
//! openraft refuses a write on a leader whose lease has lapsed (no quorum answered one of its
//! messages sent within `election_timeout_max`), before appending it. That happens without any
//! other leader: on a machine too starved to answer heartbeats in time, on a link slower than the
//! heartbeat interval (openraft gives up on a heartbeat after one interval), or after an idle spell
//! with heartbeats off. The node renews the lease with one quorum round and proposes again; if the
//! round fails, it answers that the write was not applied and why. It never answers "not the
//! leader, no leader known" about a shard it leads, which sent clients to refresh their map and
//! back off for nothing.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::async_runtime::watch::WatchReceiver;
use ringkv_client::Client;
use ringkv_engine::{Command, Proposal, ShardId};
use ringkv_server::error::ServiceError;
use ringkv_server::transport::MemoryNetwork;
use ringkv_tests::LocalCluster;
use ringkv_tests::local_cluster::TransportKind;

const SHARD: ShardId = ShardId(1);

/// A 3-node cluster of one shard with quiescence off (the leader keeps its timers), the node
/// leading it, a key of the shard holding "before" on every replica, and a client.
async fn one_shard_with_a_key(
    network: &Arc<MemoryNetwork>,
    prefix: &str,
) -> anyhow::Result<(LocalCluster, u64, Vec<u8>, Client)> {
    let cluster = LocalCluster::start(3, 1, TransportKind::Memory(network.clone()), |config| {
        config.raft.quiesce_after_ms = 0;
    })
    .await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let leader = cluster.leader_of(1, SHARD)?;
    let key = cluster
        .keys_of_shard(leader, SHARD, prefix, 1)
        .pop()
        .context("a key of the shard")?;
    let client = cluster.client().await?;
    client.put(&key, "before").await?;
    cluster.wait_caught_up(Duration::from_secs(30)).await?;
    Ok((cluster, leader, key, client))
}

fn put(key: &[u8], value: &str) -> Proposal {
    Proposal::internal(Command::Put {
        key: key.to_vec(),
        value: value.as_bytes().to_vec(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_renews_its_lapsed_lease_and_takes_the_write() -> anyhow::Result<()> {
    let network = MemoryNetwork::new(21);
    let (cluster, leader, key, client) = one_shard_with_a_key(&network, "lapsed-").await?;

    // No heartbeats from the leader and no elections anywhere: after an idle lease (1.2 s) the
    // leader still leads, with a lapsed lease.
    for node in [1, 2, 3] {
        let replica = cluster.running(node).node.replica(SHARD).context("hosted")?;
        replica.raft.runtime_config().heartbeat(false);
        replica.raft.runtime_config().elect(false);
    }
    tokio::time::sleep(Duration::from_millis(2_000)).await;

    let node = cluster.running(leader).node.clone();
    let replica = node.replica(SHARD).context("the leader hosts the shard")?;
    let written = node
        .write(&replica, put(&key, "after"), Duration::from_secs(10))
        .await;
    assert!(
        written.is_ok(),
        "the leader refused a write for its lapsed lease instead of renewing it: {written:?}"
    );
    assert_eq!(
        client.get(&key).await?.context("the key")?.value,
        b"after".to_vec()
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_heartbeats_time_out_answers_not_applied_not_not_leader() -> anyhow::Result<()> {
    let network = MemoryNetwork::new(22);
    let (cluster, leader, key, client) = one_shard_with_a_key(&network, "slow-").await?;

    // Round trips of at least 140 ms against a 100 ms heartbeat interval: every heartbeat reaches
    // its follower (whose election timer it resets), and the leader gives up on every answer. An
    // idle lease later the lease has lapsed, and nothing renews it.
    network.set_latency(Duration::from_millis(70));
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    let node = cluster.running(leader).node.clone();
    let replica = node.replica(SHARD).context("the leader hosts the shard")?;
    let leads = replica.raft.metrics().borrow_watched().current_leader == Some(replica.replica_id);
    let written = node
        .write(&replica, put(&key, "refused"), Duration::from_secs(3))
        .await;
    match &written {
        Err(error @ ServiceError::LeaseLapsed { .. })
            if error.to_string().contains("not applied")
                && error.to_string().contains("heartbeat_interval_ms") => {}
        other => panic!(
            "expected 'not applied: leader lease lapsed' from node {leader} (still the leader: {leads}), got {other:?}"
        ),
    }

    // Not applied, as answered: with the link healed the key still holds the old value.
    network.heal();
    cluster.wait_caught_up(Duration::from_secs(30)).await?;
    assert_eq!(
        client.get(&key).await?.context("the key")?.value,
        b"before".to_vec()
    );
    cluster.shutdown().await;
    Ok(())
}

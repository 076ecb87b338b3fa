//! The shard map lives in the metadata group: a change made through any node reaches every node
//! (those hosting a metadata replica and those following one through `WatchMap`), a change made
//! from a stale map is refused and changes nothing, and the map survives a SIGKILL of the metadata
//! leader, including on the killed node once it restarts.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ringkv_proto::ShardMap;
use ringkv_proto::pb::{self, cluster_client::ClusterClient};
use ringkv_tests::{ProcessCluster, assert_replicas_identical};

use crate::meta_leader;

/// How long a map change may take to reach a node.
const SPREAD_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a change may keep failing while the metadata group elects a leader.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(30);

async fn cluster_client(addr: &str) -> anyhow::Result<ClusterClient<tonic::transport::Channel>> {
    ClusterClient::connect(format!("http://{addr}"))
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

async fn map_of(addr: &str) -> anyhow::Result<ShardMap> {
    let wire = cluster_client(addr)
        .await?
        .get_shard_map(pb::GetShardMapRequest {})
        .await?
        .into_inner();
    Ok(ShardMap::from_proto(&wire)?)
}

/// One `ProposeMap` call: whether it applied, and the map it answered with.
async fn propose(addr: &str, expect_epoch: u64, map: &ShardMap) -> anyhow::Result<(bool, ShardMap)> {
    let mut request = tonic::Request::new(pb::ProposeMapRequest {
        expect_epoch,
        map: Some(map.to_proto()),
        forwarded: false,
    });
    request.set_timeout(Duration::from_secs(5));
    let response = cluster_client(addr)
        .await?
        .propose_map(request)
        .await?
        .into_inner();
    let map = ShardMap::from_proto(&response.map.context("ProposeMap answered no map")?)?;
    Ok((response.succeeded, map))
}

fn decisions(map: &ShardMap) -> Vec<&str> {
    map.decisions.iter().map(|d| d.text.as_str()).collect()
}

/// Adds the decision `text` to the map at `from` through the node at `addr`, retrying while the
/// metadata group has no leader. An error may mean the change applied anyway, so a retry that is
/// refused as stale counts as done when the map that refused it carries the decision.
async fn record(addr: &str, from: &ShardMap, text: &str) -> anyhow::Result<ShardMap> {
    let mut changed = from.clone();
    changed.record_decision(from.epoch + 1, 0, text.to_owned());
    let deadline = Instant::now() + PROPOSE_TIMEOUT;
    let mut last_error = String::new();
    while Instant::now() < deadline {
        match propose(addr, from.epoch, &changed).await {
            Ok((true, map)) => return Ok(map),
            Ok((false, map)) if decisions(&map).contains(&text) => return Ok(map),
            Ok((false, map)) => bail!(
                "the change was refused: the map moved to epoch {} (decisions {:?})",
                map.epoch,
                decisions(&map)
            ),
            Err(error) => last_error = format!("{error:#}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the change did not apply within {PROPOSE_TIMEOUT:?}: {last_error}")
}

/// Waits until the node at `addr` serves `expected` (compared without leader hints).
async fn wait_for_map(node_id: u64, addr: &str, expected: &ShardMap) -> anyhow::Result<()> {
    let deadline = Instant::now() + SPREAD_TIMEOUT;
    let mut seen = String::from("no answer");
    while Instant::now() < deadline {
        match map_of(addr).await {
            Ok(map) => {
                if map.epoch == expected.epoch {
                    assert_eq!(
                        without_hints(map),
                        without_hints(expected.clone()),
                        "node {node_id} serves another map at epoch {}",
                        expected.epoch
                    );
                    return Ok(());
                }
                assert!(
                    map.epoch < expected.epoch,
                    "node {node_id} serves epoch {} beyond {}",
                    map.epoch,
                    expected.epoch
                );
                seen = format!("epoch {}", map.epoch);
            }
            Err(error) => seen = format!("{error:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "node {node_id} did not serve epoch {} within {SPREAD_TIMEOUT:?}: {seen}",
        expected.epoch
    )
}

fn without_hints(mut map: ShardMap) -> ShardMap {
    for shard in map.shards.iter_mut() {
        shard.leader = None;
    }
    map.meta.leader = None;
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_is_replicated_metadata_that_survives_its_leaders_death() -> anyhow::Result<()> {
    // Four nodes: the metadata group is on nodes 1-3, so node 4 follows it through WatchMap.
    let mut cluster = ProcessCluster::start(4, 4, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let addr = |cluster: &ProcessCluster, node: u64| cluster.node(node).addr.clone();
    let bootstrap = map_of(&addr(&cluster, 1)).await?;
    assert_eq!(bootstrap.epoch, 1);
    let meta_nodes: Vec<u64> = bootstrap.meta.voters.iter().map(|v| v.node_id.0).collect();
    assert_eq!(meta_nodes, vec![1, 2, 3]);

    // A change made through node 4, which hosts no metadata replica, is handed to the leader.
    let first = record(&addr(&cluster, 4), &bootstrap, "test: first change").await?;
    assert_eq!(first.epoch, 2);
    assert_eq!(decisions(&first), vec!["test: first change"]);
    for node in 1..=4 {
        wait_for_map(node, &addr(&cluster, node), &first).await?;
    }

    // A change made from the bootstrap map is refused, told the map that won, and changes nothing.
    let mut stale = bootstrap.clone();
    stale.record_decision(2, 0, "test: made from a stale map".into());
    let (succeeded, current) = propose(&addr(&cluster, 2), bootstrap.epoch, &stale).await?;
    assert!(!succeeded, "a change made from epoch 1 applied over epoch 2");
    assert_eq!(without_hints(current), without_hints(first.clone()));
    for node in 1..=4 {
        let map = map_of(&addr(&cluster, node)).await?;
        assert_eq!(
            without_hints(map),
            without_hints(first.clone()),
            "node {node} after the stale change"
        );
    }

    // SIGKILL the metadata leader: a new one takes the next change, and every live node sees it.
    let leader = meta_leader(&cluster).await?;
    cluster.kill(leader);
    let survivor = if leader == 1 { 2 } else { 1 };
    let second = record(&addr(&cluster, survivor), &first, "test: after the leader died").await?;
    assert_eq!(second.epoch, 3);
    assert_eq!(
        decisions(&second),
        vec!["test: first change", "test: after the leader died"]
    );
    for node in (1..=4).filter(|&node| node != leader) {
        wait_for_map(node, &addr(&cluster, node), &second).await?;
    }

    // The killed node restarts from its stored map (epoch 2) and catches up to epoch 3.
    cluster.start_node(leader)?;
    wait_for_map(leader, &addr(&cluster, leader), &second).await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;

    let client = cluster.client().await?;
    client.put("after", "the map changed").await?;
    assert_eq!(
        client.get("after").await?.map(|v| v.value),
        Some(b"the map changed".to_vec().into())
    );
    assert_replicas_identical(&client).await
}

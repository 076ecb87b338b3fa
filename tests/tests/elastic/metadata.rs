//! The shard map lives in the metadata group: a change made through any node reaches every node
//! (those hosting a metadata replica and those following one through `WatchMap`), no request
//! carries a whole map and a typed change that does not apply is refused and changes nothing, and
//! the map survives a SIGKILL of the metadata leader, including on the killed node once it
//! restarts.

use ringkv_proto::FromProto;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ringkv_map::ShardMap;
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
        .get_shard_map(pb::GetShardMapRequest { linearizable: false })
        .await?
        .into_inner();
    Ok(ShardMap::from_proto(&wire)?)
}

/// `SetReadReplicas` through the node at `addr`, retrying while the metadata group has no leader
/// (a retry of a change that applied changes nothing). Returns the map it answered with.
async fn set_read_replicas(addr: &str, count: u32) -> anyhow::Result<ShardMap> {
    let deadline = Instant::now() + PROPOSE_TIMEOUT;
    let mut last_error = String::new();
    while Instant::now() < deadline {
        let mut request = tonic::Request::new(pb::SetReadReplicasRequest { read_replicas: count });
        request.set_timeout(Duration::from_secs(5));
        match cluster_client(addr).await?.set_read_replicas(request).await {
            Ok(response) => {
                let map = response
                    .into_inner()
                    .map
                    .context("SetReadReplicas answered no map")?;
                return Ok(ShardMap::from_proto(&map)?);
            }
            Err(status) => last_error = status.message().to_owned(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the change did not apply within {PROPOSE_TIMEOUT:?}: {last_error}")
}

/// Waits until the node at `addr` serves a map at least as new as `changed` that keeps its
/// `read_replicas` (the controller goes on changing the map after it).
async fn wait_for_map(node_id: u64, addr: &str, changed: &ShardMap) -> anyhow::Result<()> {
    let deadline = Instant::now() + SPREAD_TIMEOUT;
    let mut seen = String::from("no answer");
    while Instant::now() < deadline {
        match map_of(addr).await {
            Ok(map) if map.epoch >= changed.epoch => {
                assert_eq!(
                    map.read_replicas, changed.read_replicas,
                    "node {node_id} serves epoch {} with another setting",
                    map.epoch
                );
                if map.epoch == changed.epoch {
                    assert_eq!(without_hints(map), without_hints(changed.clone()));
                }
                return Ok(());
            }
            Ok(map) => seen = format!("epoch {}", map.epoch),
            Err(error) => seen = format!("{error:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "node {node_id} did not serve epoch {} within {SPREAD_TIMEOUT:?}: {seen}",
        changed.epoch
    )
}

fn decisions(map: &ShardMap) -> Vec<&str> {
    map.decisions.iter().map(|d| d.text.as_str()).collect()
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
    let first = set_read_replicas(&addr(&cluster, 4), 1).await?;
    assert_eq!((first.epoch, first.read_replicas), (2, 1));
    assert_eq!(
        decisions(&first),
        vec!["every data shard keeps at least 1 read replicas"]
    );
    for node in 1..=4 {
        wait_for_map(node, &addr(&cluster, node), &first).await?;
    }

    // No request carries a map: a change is typed, and one that does not apply is refused,
    // saying why, and changes nothing.
    let refused = cluster_client(&addr(&cluster, 2))
        .await?
        .set_read_replicas(pb::SetReadReplicasRequest { read_replicas: 1000 })
        .await
        .expect_err("read_replicas 1000 was accepted");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("at most") || refused.message().contains("more than"),
        "{refused:?}"
    );
    let empty = cluster_client(&addr(&cluster, 4))
        .await?
        .change_map(pb::ChangeMapRequest {
            change: None,
            forwarded: false,
        })
        .await
        .expect_err("an empty change was accepted");
    assert_eq!(empty.code(), tonic::Code::InvalidArgument, "{empty:?}");
    let after = map_of(&addr(&cluster, 2)).await?;
    assert_eq!(after.read_replicas, 1);
    assert!(
        !decisions(&after).iter().any(|d| d.contains("1000")),
        "the refused change is in the map: {:?}",
        decisions(&after)
    );

    // SIGKILL the metadata leader: a new one takes the next change, and every live node sees it.
    let leader = meta_leader(&cluster).await?;
    cluster.kill(leader);
    let survivor = if leader == 1 { 2 } else { 1 };
    let second = set_read_replicas(&addr(&cluster, survivor), 0).await?;
    assert_eq!(second.read_replicas, 0);
    assert!(second.epoch > first.epoch);
    for node in (1..=4).filter(|&node| node != leader) {
        wait_for_map(node, &addr(&cluster, node), &second).await?;
    }

    // The killed node restarts from its stored map and catches up.
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

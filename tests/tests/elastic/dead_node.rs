//! A node killed and kept down past `dead_node_timeout` (5 s here): the controller marks it down
//! and re-creates its replicas on the other nodes, under load, until every shard has three
//! replicas again. When the node comes back it is marked up, deletes the replicas it held (their
//! ids are no longer members of any group, so they cannot vote or lead), and is filled again.

use ringkv_server::node::placement::Placement;
use std::time::{Duration, Instant};

use anyhow::bail;
use ringkv_client::{Client, NodeId, NodeState, ReplicaId, ShardMap};
use ringkv_tests::process_cluster::ringkv_binary;
use ringkv_tests::{ProcessCluster, assert_replicas_identical};

use crate::moves::Load;
use crate::{running_replicas, wait_replicas};

const SETTLE_TIMEOUT: Duration = Duration::from_secs(180);

/// Waits until the map satisfies `done`, failing after `SETTLE_TIMEOUT` with what it last saw.
async fn wait_map(
    cluster: &ProcessCluster,
    client: &Client,
    what: &str,
    done: impl Fn(&ShardMap) -> bool,
) -> anyhow::Result<ShardMap> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        if client.refresh_shard_map().await.is_ok() {
            let map = client.shard_map().await;
            if done(&map) {
                return Ok(map);
            }
            if Instant::now() > deadline {
                bail!(
                    "{what}: not within {SETTLE_TIMEOUT:?}; counts {:?}, moves {:?}, last decisions {:?}\n{}",
                    map.replica_counts(),
                    map.moves,
                    map.decisions
                        .iter()
                        .rev()
                        .take(5)
                        .map(|d| &d.text)
                        .collect::<Vec<_>>(),
                    cluster.log_tails(20)
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The ids of the replicas the client's map places on `node`.
async fn replica_ids_on(client: &Client, node: NodeId) -> Vec<ReplicaId> {
    client
        .shard_map()
        .await
        .groups()
        .filter_map(|group| group.replica_on(node).map(|r| r.replica_id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_replaced_and_comes_back_empty() -> anyhow::Result<()> {
    // Four nodes, eight shards of three replicas: six replicas per node.
    let mut cluster = ProcessCluster::start(4, 8, &["--dead-node-timeout-ms", "5000"])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    let load = Load::start(&cluster).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let dead = NodeId(4);
    let old_replicas = replica_ids_on(&client, dead).await;
    assert_eq!(old_replicas.len(), 6);
    cluster.kill(dead.0);

    // Every shard is back to three replicas, on the three live nodes.
    let map = wait_map(
        &cluster,
        &client,
        "node 4's replicas re-created elsewhere",
        |map| {
            map.nodes[&dead].state == NodeState::Down
                && map.moves.is_empty()
                && map.groups().all(|g| g.replica_on(dead).is_none())
        },
    )
    .await?;
    for shard in &map.shards {
        assert_eq!(
            shard.voters.len(),
            3,
            "shard {} has {} voters",
            shard.id,
            shard.voters.len()
        );
    }
    assert_eq!(
        map.replica_counts().values().copied().collect::<Vec<_>>(),
        vec![8, 8, 8]
    );

    // The dead node comes back: it is marked up, deletes its old replicas, and is filled again.
    cluster.start_node(dead.0)?;
    wait_map(&cluster, &client, "node 4 up and balanced again", |map| {
        let counts = map.replica_counts();
        map.nodes[&dead].state == NodeState::Up
            && map.moves.is_empty()
            && counts.values().max() == Some(&6)
            && counts.values().min() == Some(&6)
    })
    .await?;
    wait_replicas(
        &cluster.node(4).addr,
        SETTLE_TIMEOUT,
        "node 4 deletes its old replicas",
        |replicas| {
            replicas
                .iter()
                .all(|r| !old_replicas.contains(&ReplicaId(r.replica_id)))
        },
    )
    .await?;

    let (acknowledged, errors) = load.stop_and_verify(&client).await?;
    assert!(acknowledged > 0, "the load wrote nothing");
    assert!(errors.is_empty(), "callers saw errors: {errors:?}");
    assert_replicas_identical(&client).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_dead_node_is_replaced_at_once_and_the_metadata_group_shrinks() -> anyhow::Result<()> {
    // Five nodes (the metadata group has five voters), eight shards; dead_node_timeout stays at
    // its 10-minute default, so only `ringkv node remove` can bring the replacement forward.
    let mut cluster = ProcessCluster::start(5, 8, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    wait_map(
        &cluster,
        &client,
        "the metadata group grows to five voters",
        |map| map.meta.voters.len() == 5 && map.moves.is_empty(),
    )
    .await?;
    let load = Load::start(&cluster).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let dead = NodeId(5);
    let old_replicas = replica_ids_on(&client, dead).await;
    assert!(!old_replicas.is_empty(), "node 5 holds no replica to replace");
    cluster.kill(dead.0);

    let started = Instant::now();
    let out = ProcessCluster::run_to_exit(
        {
            let mut command = std::process::Command::new(ringkv_binary());
            command.args([
                "--endpoints",
                &cluster.node(1).addr,
                "node",
                "remove",
                "5",
                "--wait",
                "180",
            ]);
            command
        },
        Duration::from_secs(200),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("removed: node 5"),
        "`ringkv node remove 5 --wait 180` did not report the node removed: {stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.log_tails(20)
    );
    // Far sooner than dead_node_timeout: the removal did not wait for it.
    assert!(started.elapsed() < Duration::from_secs(300));

    // Node 5 is marked removed once it holds no replica; the metadata group's shrink from four
    // voters to three, and balancing, may still follow. Wait for the controller to be done.
    let map = wait_map(
        &cluster,
        &client,
        "the controller settles after the removal",
        |map| map.moves.is_empty() && map.next_placement_step(usize::MAX).is_none(),
    )
    .await?;
    assert_eq!(map.nodes[&dead].state, NodeState::Removed);
    for group in map.groups() {
        assert!(
            group.replica_on(dead).is_none(),
            "shard {} keeps a replica on node 5",
            group.id
        );
    }
    for shard in &map.shards {
        assert_eq!(
            shard.voters.len(),
            3,
            "shard {} has voters {:?}",
            shard.id,
            shard.voters
        );
    }
    // Four nodes left: the metadata group is back to three voters.
    assert_eq!(map.meta.voters.len(), 3, "metadata voters {:?}", map.meta.voters);
    let counts = map.replica_counts();
    let (min, max) = (counts.values().min(), counts.values().max());
    assert!(
        counts.len() == 4 && max.zip(min).is_some_and(|(max, min)| max - min <= 1),
        "replicas per node {counts:?}"
    );

    // The dead machine comes back with its old data directory: its peers refuse it, it starts no
    // replica, and the map keeps it removed.
    cluster.start_node(dead.0)?;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        // Refused connections while it starts are expected.
        match running_replicas(&cluster.node(5).addr).await {
            Ok(replicas) if replicas.is_empty() => break,
            Ok(_) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            last => bail!(
                "the removed node still runs replicas or does not answer: {last:?}\n{}",
                cluster.log_tails(20)
            ),
        }
    }
    let log = std::fs::read_to_string(&cluster.node(5).log_path)?;
    assert!(
        log.contains("this node was removed from the cluster"),
        "node 5 was not told it is removed"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    client.refresh_shard_map().await?;
    let after = client.shard_map().await;
    assert_eq!(after.nodes[&dead].state, NodeState::Removed);
    assert!(after.groups().all(|g| g.replica_on(dead).is_none()));

    let (acknowledged, errors) = load.stop_and_verify(&client).await?;
    assert!(acknowledged > 0, "the load wrote nothing");
    assert!(errors.is_empty(), "callers saw errors: {errors:?}");
    assert_replicas_identical(&client).await
}

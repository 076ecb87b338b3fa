//! Decommissioning a node under load: the controller moves every replica off it, marks it
//! removed, and the remaining nodes hold every acknowledged write once it is gone.

use std::time::Duration;

use anyhow::{Context, bail};
use ringkv_client::{Error, NodeId, NodeState};
use ringkv_tests::{ProcessCluster, assert_replicas_identical};

use crate::moves::Load;
use crate::{node_list, wait_replicas};

/// How long draining a node of 8 replicas may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decommissioned_node_is_drained_under_load_and_the_rest_hold_every_write() -> anyhow::Result<()> {
    // Four nodes, eight shards of three replicas: six replicas per node.
    let mut cluster = ProcessCluster::start(4, 8, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    let load = Load::start(&cluster).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let leaving = NodeId(4);
    let map = ringkv_tests::admin(&client).decommission_node(leaving).await?;
    assert_eq!(map.nodes[&leaving].state, NodeState::Decommissioning);
    // With node 4 leaving, node 3 cannot leave too: two nodes cannot hold three replicas.
    match ringkv_tests::admin(&client).decommission_node(NodeId(3)).await {
        Err(Error::InvalidArgument(reason)) => {
            assert!(reason.contains("fewer than the 3 replicas"), "{reason}")
        }
        other => bail!("decommissioning a second node was not refused: {other:?}"),
    }

    let Some(map) = ringkv_tests::admin(&client)
        .wait_for_node_state(leaving, NodeState::Removed, DRAIN_TIMEOUT)
        .await?
    else {
        bail!(
            "node 4 was not removed within {DRAIN_TIMEOUT:?}\n{}",
            cluster.log_tails(30)
        );
    };
    assert!(
        map.groups().all(|group| group.replica_on(leaving).is_none()),
        "the map still places replicas on the removed node"
    );
    let counts = map.replica_counts();
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![8, 8, 8],
        "every shard on each remaining node"
    );
    let decisions: Vec<&str> = map.decisions.iter().map(|d| d.text.as_str()).collect();
    assert!(
        decisions.iter().any(|d| d.starts_with("removed node 4")),
        "the removal is in the decision log: {decisions:?}"
    );

    // The node deletes its replicas once the map no longer places them there.
    wait_replicas(
        &cluster.node(4).addr,
        DRAIN_TIMEOUT,
        "node 4 deletes its replicas",
        |replicas| replicas.is_empty(),
    )
    .await?;

    // `ringkv node list` shows it removed.
    let listed = node_list(&cluster.node(1).addr)?;
    let states: Vec<&str> = listed["nodes"]
        .as_array()
        .context("nodes")?
        .iter()
        .map(|n| n["state"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(states, vec!["up", "up", "up", "removed"], "{listed}");

    // The removed node goes away for good; every acknowledged write is on the other three.
    cluster.kill(4);
    let (acknowledged, errors) = load.stop_and_verify(&client).await?;
    assert!(acknowledged > 0, "the load wrote nothing");
    assert!(
        errors.is_empty(),
        "callers saw errors during the drain: {errors:?}"
    );
    assert_replicas_identical(&client).await
}

//! Read replicas: nodes started with `--role read-replica` join a running cluster and are given
//! one non-voting replica (an openraft learner) of every data shard, never a voter; reads below
//! linearizable are served there; `ringkv status` shows each one's lag; and with a read-replica
//! node dead, writes go on.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use ringkv_client::{Consistency, NodeId, ReadOptions, ReplicaSelection};
use ringkv_tests::process_cluster::ringkv_binary;
use ringkv_tests::{ProcessCluster, assert_replicas_identical};

use super::{node_list, wait_replicas};

const SHARDS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_replica_nodes_hold_a_learner_of_every_shard_and_serve_reads() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3, SHARDS as u32, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    for i in 0..40 {
        client.put(format!("rr-{i}"), format!("v{i}")).await?;
    }
    cluster.add_joining_node_with(4, false, &["--role", "read-replica"])?;
    cluster.add_joining_node_with(5, false, &["--role", "read-replica"])?;

    // The controller gives every data shard a read replica on each read-replica node.
    let deadline = Instant::now() + Duration::from_secs(180);
    let map = loop {
        client.refresh_shard_map().await.ok();
        let map = client.shard_map().await;
        let placed = map.shards.iter().all(|shard| {
            let nodes: BTreeSet<u64> = map
                .read_replicas_of(shard.id)
                .iter()
                .map(|r| r.node_id.0)
                .collect();
            nodes == BTreeSet::from([4, 5])
        });
        if placed && map.moves.is_empty() {
            break map;
        }
        if Instant::now() > deadline {
            bail!(
                "read replicas not placed within 180 s: moves {:?}\n{}",
                map.moves,
                cluster.log_tails(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Never a voter, of a data shard or of the metadata group.
    for group in map.groups() {
        assert!(
            group.voters.iter().all(|v| v.node_id.0 <= 3),
            "a voter on a read-replica node: {group:?}"
        );
    }
    // Each read-replica node runs its learners, and nothing else.
    for node in [4, 5] {
        wait_replicas(
            &cluster.node(node).addr,
            Duration::from_secs(60),
            &format!("node {node} runs one learner of every shard"),
            |replicas| replicas.len() == SHARDS && replicas.iter().all(|r| r.role == "learner"),
        )
        .await?;
    }
    let listed = node_list(&cluster.node(1).addr)?;
    let roles: Vec<(u64, String)> = listed["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["node_id"].as_u64().unwrap_or(0),
                n["role"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        roles.contains(&(4, "read-replica".into())) && roles.contains(&(1, "voter".into())),
        "`ringkv node list` shows roles: {roles:?}"
    );

    // A write, then a replica-linearizable read at a read replica sees it, served there; an
    // eventual read there sees an older write.
    client.put("rr-fresh", "fresh").await?;
    for (consistency, key, expected) in [
        (Consistency::ReplicaLinearizable, "rr-fresh", "fresh"),
        (Consistency::Eventual, "rr-7", "v7"),
        (Consistency::Bounded(Duration::from_secs(5)), "rr-8", "v8"),
    ] {
        let options = ReadOptions::new(consistency).with_selection(ReplicaSelection::Node(NodeId(4)));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (value, served) = client.get_served(key, options).await?;
            if served == NodeId(4) {
                assert_eq!(
                    value.map(|v| v.value),
                    Some(Bytes::from(expected)),
                    "{consistency}"
                );
                break;
            }
            // A replica that refused moments ago (still catching up) is tried last for a while.
            assert!(
                Instant::now() < deadline,
                "node 4 never served a {consistency} read"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    // `ringkv status` lists each shard's read replicas with their lag.
    let out = Command::new(ringkv_binary())
        .args(["--endpoints", &cluster.node(1).addr, "status", "--output", "json"])
        .output()?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let shards = report["shards"].as_array().cloned().unwrap_or_default();
    assert_eq!(shards.len(), SHARDS + 1, "data shards and meta");
    for shard in shards.iter().take(SHARDS) {
        let replicas = shard["read_replicas"].as_array().cloned().unwrap_or_default();
        let nodes: BTreeSet<u64> = replicas.iter().filter_map(|r| r["node_id"].as_u64()).collect();
        assert_eq!(nodes, BTreeSet::from([4, 5]), "{shard}");
        for replica in &replicas {
            assert!(
                replica["lag_entries"].as_u64().is_some(),
                "lag in entries: {replica}"
            );
            assert!(
                replica["applied_index"].as_u64().is_some(),
                "applied index: {replica}"
            );
        }
    }
    assert_replicas_identical(&client).await?;

    // A shard with read replicas splits; the child gets read replicas of its own.
    let parent = map.shards[0].id;
    let split = ringkv_tests::admin(&client).split_shard(parent).await?;
    let child = split
        .split_of(parent)
        .map(|s| s.child)
        .expect("the split is recorded");
    ringkv_tests::admin(&client)
        .wait_for_split(parent, Duration::from_secs(60))
        .await?
        .ok_or_else(|| anyhow::anyhow!("shard {parent} did not split within 60 s"))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        client.refresh_shard_map().await.ok();
        let map = client.shard_map().await;
        let nodes: BTreeSet<u64> = map.read_replicas_of(child).iter().map(|r| r.node_id.0).collect();
        if nodes == BTreeSet::from([4, 5]) && map.moves.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the split child {child} has read replicas on {nodes:?}, not nodes 4 and 5, after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for i in 0..40 {
        let key = format!("rr-{i}");
        let options = ReadOptions::new(Consistency::ReplicaLinearizable)
            .with_selection(ReplicaSelection::Node(NodeId(5)));
        assert_eq!(
            client.get_with(&key, options).await?.map(|v| v.value),
            Some(Bytes::from(format!("v{i}"))),
            "{key} after the split"
        );
    }
    assert_replicas_identical(&client).await?;

    // A dead read replica takes no part in any quorum: writes go on.
    cluster.kill(5);
    for i in 0..40 {
        client.put(format!("rr-after-{i}"), "x").await?;
    }
    Ok(())
}

//! Corruption found while serving takes the replica out of service instead of answering
//! `Internal` forever: the shard's leader reads a damaged block, stops its replica (which stops
//! voting and leading, so the other replicas elect a leader), logs why, and shows it in status;
//! clients' reads are retried elsewhere and every one succeeds with the right value.

use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;

use ringkv_engine::{NodeId, ShardId};
use ringkv_tests::LocalCluster;
use ringkv_tests::local_cluster::TransportKind;

fn value(i: usize) -> String {
    // Incompressible enough that the data fills real blocks on disk.
    (0..100)
        .map(|j| char::from(b'a' + ((i * 31 + j * 17 + (i * j) % 7) % 26) as u8))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_reads_corrupt_data_is_taken_out_of_service() -> anyhow::Result<()> {
    const N_KEYS: usize = 2_000;
    let mut cluster = LocalCluster::start(3, 1, TransportKind::Grpc, |_| {}).await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let client = cluster.client().await?;
    for i in 0..N_KEYS {
        client.put(format!("key-{i}"), value(i)).await?;
    }
    cluster.wait_caught_up(Duration::from_secs(30)).await?;

    // The shard's preferred leader gets a damaged data file, then leads again.
    let map = client.shard_map().await;
    let victim = map.shard(ShardId(1)).expect("shard 1").voters[0].node_id.0;
    let engine = cluster.running(victim).node.engine().clone();
    engine.flush()?;
    let file = engine.data_files()?.into_iter().next().expect("a data file");
    drop(engine);
    cluster.stop_node(victim).await;
    let mut bytes = std::fs::read(&file)?;
    let at = bytes.len() / 4;
    for byte in &mut bytes[at - 64..at + 64] {
        *byte ^= 0x5a;
    }
    std::fs::write(&file, bytes)?;
    cluster.start_node(victim).await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;

    // Every read succeeds: the ones the damaged leader cannot serve are retried elsewhere.
    for i in 0..N_KEYS {
        let stored = client.get(format!("key-{i}")).await?;
        assert_eq!(stored.map(|v| v.value), Some(value(i).into()), "key-{i}");
    }
    let replica = cluster.running(victim).node.status().replicas.remove(0);
    assert!(
        replica.failure.contains("corrupt"),
        "node {victim}'s replica is out of service, saying why: {replica:?}"
    );
    let leaders: Vec<u64> = [1, 2, 3]
        .into_iter()
        .filter(|&node| {
            cluster
                .running(node)
                .node
                .status()
                .replicas
                .iter()
                .any(|r| r.shard_id == 1 && r.role == "leader")
        })
        .collect();
    assert!(
        !leaders.is_empty() && !leaders.contains(&victim),
        "another node leads the shard (nodes whose replica is leader: {leaders:?})"
    );
    // The damaged node no longer names itself (or anyone) as the shard's leader to clients.
    let advertised = cluster
        .running(victim)
        .node
        .shard_map()
        .shard(ShardId(1))
        .and_then(|s| s.leader);
    assert_eq!(advertised, None, "node {victim}'s shard map");
    client.put("after", "still-writable").await?;

    // The replica check reports the failed replica as unchecked; the others agree.
    let check = ringkv_tests::admin(&client)
        .check_shard(ShardId(1), Duration::from_secs(20))
        .await?;
    assert!(!check.divergent(), "{check:?}");
    for replica in &check.replicas {
        assert_eq!(
            replica.digest.is_ok(),
            replica.node_id != NodeId(victim),
            "{check:?}"
        );
    }
    cluster.shutdown().await;
    Ok(())
}

/// openraft stops a group for good when its storage fails (here: every apply, by a test switch);
/// the node notices the stopped group and takes the replica out of service, saying why, instead of
/// leaving a replica that looks alive but never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_stopped_by_a_storage_error_is_taken_out_of_service() -> anyhow::Result<()> {
    let cluster = LocalCluster::start_with(
        3,
        1,
        TransportKind::Grpc,
        ringkv_engine::EngineOptions::default(),
        |_| {},
    )
    .await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let client = cluster.client_with_timeout(Duration::from_secs(3)).await?;
    client.put("before", "applied").await?;

    // Every node's engine shares the switch: the next entry fails to apply on every replica that
    // learns it is committed (the leader at least), and openraft stops those groups.
    cluster
        .engine_options
        .faults
        .fail_apply
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let write = client.put("after", "never applied").await;
    assert!(write.is_err(), "a write whose apply failed: {write:?}");

    // Every stopped group's replica is marked, and only those.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let replicas: Vec<(bool, String)> = [1, 2, 3]
            .into_iter()
            .map(|node| {
                let node = &cluster.running(node).node;
                let replica = node.replica(ShardId(1)).expect("every node hosts the shard");
                let stopped = replica.raft.metrics().borrow_watched().running_state.is_err();
                (stopped, node.status().replicas[0].failure.clone())
            })
            .collect();
        let marked =
            |failure: &str| failure.contains("its Raft group stopped") && failure.contains("fail_apply");
        let consistent = replicas
            .iter()
            .all(|(stopped, failure)| *stopped == marked(failure));
        if consistent && replicas.iter().any(|(stopped, _)| *stopped) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "every replica whose group stopped is out of service, saying why, and no other \
             (stopped, failure): {replicas:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.shutdown().await;
    Ok(())
}

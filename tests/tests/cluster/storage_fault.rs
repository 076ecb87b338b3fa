//! Corruption found while serving takes the replica out of service instead of answering
//! `Internal` forever: the shard's leader reads a damaged block, stops its replica (which stops
//! voting and leading, so the other replicas elect a leader), logs why, and shows it in status;
//! clients' reads are retried elsewhere and every one succeeds with the right value.

use std::time::Duration;

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
    let check = client.check_shard(ShardId(1), Duration::from_secs(20)).await?;
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

//! Raft over the in-memory transport: the same nodes (real RocksDB, real Kv gRPC for clients) with
//! peer traffic delivered by direct calls. Writes survive the loss of a shard's leader.

mod commit_jump;
mod identity;
mod lapsed_lease;
mod lease;
mod membership_audit;
mod quiesce;
mod read_levels;
mod splits;
mod stale_reads;

use std::time::Duration;

use ringkv_server::transport::MemoryNetwork;
use ringkv_tests::local_cluster::TransportKind;
use ringkv_tests::{LocalCluster, assert_replicas_identical};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_runs_over_the_in_memory_transport_and_survives_a_leader_stop() -> anyhow::Result<()> {
    let mut cluster = LocalCluster::start(3, 4, TransportKind::Memory(MemoryNetwork::new(1)), |_| {}).await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let client = cluster.client().await?;
    for i in 0..200 {
        client.put(format!("k{i}"), format!("v{i}")).await?;
    }

    // Stop whichever node leads shard 1; the other two elect a new leader and keep serving.
    let map = client.shard_map().await;
    let leader = map
        .shard(ringkv_proto::ShardId(1))
        .and_then(|s| s.leader)
        .expect("shard 1 has a leader")
        .0;
    cluster.kill_node(leader).await;
    for i in 200..400 {
        client.put(format!("k{i}"), format!("v{i}")).await?;
    }
    for i in 0..400 {
        let value = client
            .get(format!("k{i}"))
            .await?
            .unwrap_or_else(|| panic!("k{i} missing"));
        assert_eq!(value.value, format!("v{i}").as_bytes());
    }

    // The stopped node comes back and catches up from the log.
    cluster.start_node(leader).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = cluster.running(leader).node.status();
        let others: Vec<_> = [1, 2, 3]
            .into_iter()
            .filter(|&id| id != leader)
            .flat_map(|id| cluster.running(id).node.status().replicas)
            .filter(|r| r.role == "leader")
            .collect();
        let caught_up = others.iter().all(|l| {
            status
                .replicas
                .iter()
                .any(|r| r.shard_id == l.shard_id && r.applied_index >= l.committed_index)
        });
        // Four shards and the metadata group, each with one leader.
        if caught_up && others.len() + status.replicas.iter().filter(|r| r.role == "leader").count() == 5 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "restarted node did not catch up: {:?}",
            status.replicas
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let engine = cluster.running(leader).node.engine().clone();
    for i in 0..400 {
        assert_eq!(
            engine.get(format!("k{i}").as_bytes())?.map(|v| v.value),
            Some(format!("v{i}").into_bytes())
        );
    }
    assert_replicas_identical(&client).await?;
    cluster.shutdown().await;
    Ok(())
}

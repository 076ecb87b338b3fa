//! A node that was down while the leaders snapshotted and purged their logs catches up by
//! installing a snapshot, and then holds every key with its value.

use std::time::{Duration, Instant};

use ringkv_tests::local_cluster::TransportKind;
use ringkv_tests::{LocalCluster, assert_replicas_identical};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lagging_node_catches_up_by_snapshot_after_log_purge() -> anyhow::Result<()> {
    const N_KEYS: usize = 2_000;
    let mut cluster = LocalCluster::start(3, 4, TransportKind::Grpc, |config| {
        config.raft.snapshot_after_logs = 200;
        config.raft.logs_to_keep_after_snapshot = 0;
    })
    .await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let client = cluster.client().await?;
    client.put("before", "down").await?;

    let applied_before: Vec<u64> = cluster
        .running(3)
        .node
        .status()
        .replicas
        .iter()
        .map(|r| r.applied_index)
        .collect();
    cluster.stop_node(3).await;

    for i in 0..N_KEYS {
        client.put(format!("key-{i}"), format!("value-{i}")).await?;
    }

    // Every shard's leader has purged its log past anything node 3 had applied, so node 3 cannot
    // catch up from the log.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut purged: Vec<u64> = Vec::new();
        for node_id in [1, 2] {
            for replica in cluster.running(node_id).node.status().replicas {
                if replica.role == "leader" {
                    purged.push(replica.purged_index);
                }
            }
        }
        let max_applied_before = applied_before.iter().copied().max().unwrap_or(0);
        if purged.len() == 4 && purged.iter().all(|&p| p > max_applied_before) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leaders never purged past node 3's log: purged {purged:?}, node 3 had {applied_before:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // What the leaders have committed; no writes happen while node 3 catches up.
    let committed: Vec<(u64, u64)> = [1, 2]
        .iter()
        .flat_map(|&id| cluster.running(id).node.status().replicas)
        .filter(|r| r.role == "leader")
        .map(|r| (r.shard_id, r.committed_index))
        .collect();
    cluster.start_node(3).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = cluster.running(3).node.status();
        let installed_snapshots = status.replicas.iter().all(|r| r.snapshot_index > 0);
        let caught_up = committed.iter().all(|(shard, index)| {
            status
                .replicas
                .iter()
                .any(|r| r.shard_id == *shard && r.applied_index >= *index)
        });
        if installed_snapshots && caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 did not catch up by snapshot; leaders committed {committed:?}, node 3: {:?}",
            status.replicas
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Node 3's own engine (not the leader's) holds every key.
    let engine = cluster.running(3).node.engine().clone();
    assert_eq!(
        engine.get(b"before")?.expect("written before the outage").value,
        b"down"
    );
    for i in 0..N_KEYS {
        let value = engine.get(format!("key-{i}").as_bytes())?;
        assert_eq!(
            value.map(|v| v.value),
            Some(format!("value-{i}").into_bytes()),
            "key-{i} on node 3"
        );
    }
    assert_replicas_identical(&client).await?;
    cluster.shutdown().await;
    Ok(())
}

//! Catching up: a node that was down while the leaders snapshotted and purged their logs catches
//! up by installing a snapshot; a node far behind on large batches catches up from the log. Either
//! way it then holds every key with its value, and the replicas are identical.

use std::time::{Duration, Instant};

use ringkv_tests::local_cluster::TransportKind;
use ringkv_tests::{LocalCluster, assert_replicas_identical};

/// The data shards' replicas in a node's status: the metadata group, written only when the map
/// changes, never purges its log here.
fn data_replicas(status: ringkv_proto::pb::StatusResponse) -> Vec<ringkv_proto::pb::ReplicaStatus> {
    status
        .replicas
        .into_iter()
        .filter(|r| r.shard_id != ringkv_proto::ShardId::META.0)
        .collect()
}

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

    let applied_before: Vec<u64> = data_replicas(cluster.running(3).node.status())
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
            for replica in data_replicas(cluster.running(node_id).node.status()) {
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
        .flat_map(|&id| data_replicas(cluster.running(id).node.status()))
        .filter(|r| r.role == "leader")
        .map(|r| (r.shard_id, r.committed_index))
        .collect();
    cluster.start_node(3).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = cluster.running(3).node.status();
        let installed_snapshots = data_replicas(status.clone()).iter().all(|r| r.snapshot_index > 0);
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

/// A follower far behind on large batches catches up from the log: replication payloads are
/// bounded in bytes (one 7 MiB batch per message here), so none exceeds the transport's 64 MiB
/// message limit. Bounded by entry count alone, a payload of these batches would, and the shard
/// would stop replicating to that follower for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_far_behind_on_large_batches_catches_up_from_the_log() -> anyhow::Result<()> {
    const BATCHES: usize = 12;
    const VALUES_PER_BATCH: usize = 7;
    let mut cluster = LocalCluster::start(3, 1, TransportKind::Grpc, |config| {
        // No snapshots: node 3 must catch up entry by entry.
        config.raft.snapshot_after_logs = 1_000_000;
    })
    .await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let client = cluster.client().await?;
    cluster.stop_node(3).await;

    let value = bytes::Bytes::from(vec![b'x'; 1 << 20]);
    for batch in 0..BATCHES {
        let ops = (0..VALUES_PER_BATCH)
            .map(|i| ringkv_client::BatchOp::Put {
                key: format!("{{big}}-{batch}-{i}").into(),
                value: value.clone(),
            })
            .collect();
        client.batch(ops).await?;
    }
    let committed: u64 = [1, 2]
        .iter()
        .flat_map(|&id| cluster.running(id).node.status().replicas)
        .filter(|r| r.role == "leader")
        .map(|r| r.committed_index)
        .max()
        .expect("a leader");
    cluster.start_node(3).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = cluster.running(3).node.status();
        let applied = status.replicas.first().map_or(0, |r| r.applied_index);
        if applied >= committed {
            assert_eq!(
                status.replicas[0].snapshot_index, 0,
                "caught up from the log, not a snapshot"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 applied {applied} of {committed}: replication to it stalled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let engine = cluster.running(3).node.engine().clone();
    for batch in 0..BATCHES {
        for i in 0..VALUES_PER_BATCH {
            let stored = engine.get(format!("{{big}}-{batch}-{i}").as_bytes())?;
            assert_eq!(
                stored.map(|v| v.value.len()),
                Some(1 << 20),
                "{{big}}-{batch}-{i} on node 3"
            );
        }
    }
    assert_replicas_identical(&client).await?;
    cluster.shutdown().await;
    Ok(())
}

/// Peak resident memory (VmHWM) and current resident memory (VmRSS) of a process, in KiB.
fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// A follower catches up by snapshot on a shard of more than 1 GiB while its resident memory
/// stays under 300 MiB: the snapshot streams to a file in chunks and installs in bounded batches.
///
/// Writes about 3 GiB to disk and takes minutes, so it is not part of `.ci/run`. Run it against a
/// release build:
///
/// ```sh
/// cargo build --release -p ringkv-server
/// RINGKV_BIN=~/.cache/ringkv-target/release/ringkv \
///   cargo test -p ringkv-tests --test snapshot -- --ignored --nocapture
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "writes ~3 GiB and takes minutes; run by hand (see the doc comment)"]
async fn a_follower_installs_a_1_gib_snapshot_in_bounded_memory() -> anyhow::Result<()> {
    use std::sync::Arc;

    use ringkv_tests::ProcessCluster;

    const VALUE_BYTES: usize = 1 << 20;
    const VALUES_PER_BATCH: usize = 7;
    const BATCHES: usize = 150; // 150 × 7 MiB = 1050 MiB
    const LIMIT_KIB: u64 = 300 * 1024;
    let mut cluster = ProcessCluster::start(
        3,
        1,
        &[
            "--snapshot-after-logs",
            "20",
            "--logs-to-keep-after-snapshot",
            "0",
        ],
    )?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    cluster.kill(3);
    let client = Arc::new(cluster.client_with_timeout(Duration::from_secs(60)).await?);

    // Incompressible values, so the shard is 1 GiB on disk as well as in the snapshot.
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..4 {
        let client = client.clone();
        writers.spawn(async move {
            let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ writer as u64;
            for batch in (writer..BATCHES).step_by(4) {
                let ops = (0..VALUES_PER_BATCH)
                    .map(|i| {
                        let value: Vec<u8> = (0..VALUE_BYTES / 8)
                            .flat_map(|_| {
                                state ^= state << 13;
                                state ^= state >> 7;
                                state ^= state << 17;
                                state.to_le_bytes()
                            })
                            .collect();
                        ringkv_client::BatchOp::Put {
                            key: format!("{{big}}-{batch}-{i}").into(),
                            value: value.into(),
                        }
                    })
                    .collect();
                client.batch(ops).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = writers.join_next().await {
        result??;
    }
    eprintln!(
        "wrote {} MiB in {:.1?}",
        BATCHES * VALUES_PER_BATCH,
        started.elapsed()
    );

    // openraft purges in batches of 256 entries, and 150 batches are fewer: small writes take the
    // log past that. Then wait for the leader to snapshot (1 GiB takes a while) and purge: node 3
    // can only catch up by snapshot.
    for i in 0..300 {
        client.put(format!("{{big}}-tail-{i}"), "tail").await?;
    }
    let leader = cluster.busiest_leader().await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let committed = loop {
        let status = ringkv_tests::admin(&client)
            .node_status(&cluster.node(leader).addr)
            .await?;
        let replica = &status.replicas[0];
        if replica.purged_index > 0 {
            break replica.committed_index;
        }
        assert!(
            Instant::now() < deadline,
            "the leader did not purge its log within 300 s: {replica:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    cluster.start_node(3)?;
    let pid = cluster.node(3).pid().expect("node 3 runs");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    let mut peak_rss = 0;
    loop {
        if let Some((_, rss)) = memory_kib(pid) {
            peak_rss = peak_rss.max(rss);
        }
        let applied = ringkv_tests::admin(&client)
            .node_status(&cluster.node(3).addr)
            .await
            .ok()
            .and_then(|s| s.replicas.first().map(|r| (r.applied_index, r.snapshot_index)));
        if let Some((applied, snapshot)) = applied
            && applied >= committed
        {
            assert!(snapshot > 0, "node 3 caught up by installing a snapshot");
            break;
        }
        assert!(Instant::now() < deadline, "node 3 did not catch up in 600 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (high_water, rss) = memory_kib(pid).expect("node 3 runs");
    eprintln!(
        "node 3 installed a {} MiB snapshot in {:.1?}: peak resident memory {} MiB (kernel high-water mark {} \
         MiB), {} MiB now",
        BATCHES * VALUES_PER_BATCH,
        started.elapsed(),
        peak_rss / 1024,
        high_water / 1024,
        rss / 1024
    );
    assert!(
        high_water < LIMIT_KIB,
        "node 3's resident memory peaked at {} MiB, over 300 MiB",
        high_water / 1024
    );
    ringkv_tests::assert_replicas_identical(&client).await?;
    Ok(())
}

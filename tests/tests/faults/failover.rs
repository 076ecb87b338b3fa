//! Failover with no loss: concurrent clients read and write while the node leading the most shards
//! is SIGKILLed. Writes resume on the surviving majority; writes caught by the kill are retried
//! with their request ids, so callers see no `OutcomeUnknown`; the killed node catches up after a
//! restart; every acknowledged write is present; the recorded history is linearizable per key; and
//! every shard's replicas end identical.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringkv_tests::linearizability::{self, History};
use ringkv_tests::workload::{WorkerReport, run_worker};
use ringkv_tests::{ProcessCluster, assert_replicas_identical};

const N_WORKERS: usize = 6;
const N_KEYS: usize = 8;

/// One key per shard, to probe that every shard takes writes.
fn key_per_shard(map: &ringkv_map::ShardMap) -> BTreeMap<u64, String> {
    let mut keys = BTreeMap::new();
    for i in 0.. {
        let key = format!("probe-{i}");
        keys.entry(map.shard_for_key(key.as_bytes()).id.0).or_insert(key);
        if keys.len() == map.shards.len() || i > 100_000 {
            break;
        }
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_the_busiest_leader_loses_nothing_and_stays_linearizable() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3, 16, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let observer = cluster.client().await?;
    let probes = key_per_shard(&observer.shard_map().await);
    assert_eq!(probes.len(), 16);

    let history = History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for worker_id in 0..N_WORKERS {
        let client = cluster.client().await?;
        let (history, stop) = (history.clone(), stop.clone());
        workers.spawn(async move { run_worker(worker_id, client, history, stop, "lin", N_KEYS, 7).await });
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let victim = cluster.busiest_leader().await?;
    cluster.kill(victim);
    let killed_at = Instant::now();

    // Every shard takes writes again on the surviving majority, within a bound well above the
    // election timeout (0.6–1.2 s) plus client backoff.
    for (shard, key) in &probes {
        loop {
            if observer.put(key, "probe").await.is_ok() {
                break;
            }
            assert!(
                killed_at.elapsed() < Duration::from_secs(30),
                "shard {shard} took no write within 30 s of killing node {victim}\n{}",
                cluster.log_tails(20)
            );
        }
    }
    let resumed_after = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Restart the killed node; it catches up with what the leaders have committed.
    cluster.start_node(victim)?;
    let mut committed: BTreeMap<u64, u64> = BTreeMap::new();
    for node in cluster.nodes.iter().filter(|n| n.node_id != victim) {
        for replica in ringkv_tests::admin(&observer)
            .node_status(&node.addr)
            .await?
            .replicas
        {
            if replica.role == ringkv_client::ReplicaRole::Leader {
                committed.insert(replica.shard_id.0, replica.committed_index);
            }
        }
    }
    assert_eq!(
        committed.len(),
        17,
        "every shard and the metadata group has a leader on a surviving node: {committed:?}"
    );
    let restart_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let behind: Vec<(u64, u64, u64)> = match ringkv_tests::admin(&observer)
            .node_status(&cluster.node(victim).addr)
            .await
        {
            Ok(status) => committed
                .iter()
                .filter_map(|(&shard, &index)| {
                    let applied = status
                        .replicas
                        .iter()
                        .find(|r| r.shard_id.0 == shard)
                        .map_or(0, |r| r.applied_index);
                    (applied < index).then_some((shard, applied, index))
                })
                .collect(),
            Err(_) => vec![(0, 0, 0)],
        };
        if behind.is_empty() {
            break;
        }
        assert!(
            Instant::now() < restart_deadline,
            "restarted node {victim} has not caught up (shard, applied, committed): {behind:?}\n{}",
            cluster.log_tails(20)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    stop.store(true, Ordering::Relaxed);
    let mut report = WorkerReport::default();
    while let Some(result) = workers.join_next().await {
        report.merge(result?);
    }

    // Writes caught by the kill were retried with their request ids: no caller was left not
    // knowing whether its write applied.
    assert_eq!(
        report.unknown, 0,
        "callers saw writes with unknown outcome: {:?}",
        report.error_samples
    );

    // Every acknowledged write is present with its value.
    let reader = cluster.client().await?;
    for (key, value) in &report.acknowledged {
        let stored = reader.get(key).await?;
        assert_eq!(
            stored.map(|v| v.value),
            Some(Bytes::from(value.clone())),
            "acknowledged write {key} lost"
        );
    }

    let operations = history.operations();
    assert!(
        report.completed > 100,
        "the workload ran: {} completed operations",
        report.completed
    );
    linearizability::assert_linearizable(&operations, 50_000_000);
    assert_replicas_identical(&reader).await?;
    eprintln!(
        "failover: killed node {victim}; all shards took writes again after {resumed_after:?}; \
         {} operations checked ({} certainly not applied and left out, {} unknown), {} acknowledged \
         own-key writes verified; replicas identical",
        operations.len(),
        report.not_applied,
        report.unknown,
        report.acknowledged.len()
    );
    Ok(())
}

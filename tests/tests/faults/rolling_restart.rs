//! A rolling restart with SIGTERM: each node in turn hands the shards it leads to another node,
//! exits, restarts and catches up, while clients keep reading and writing. Callers see no error at
//! all; the history stays linearizable, every acknowledged write is present, and the replicas end
//! identical.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringkv_tests::linearizability::{self, History, Verdict};
use ringkv_tests::workload::{WorkerReport, run_worker};
use ringkv_tests::{ProcessCluster, assert_replicas_identical};

/// Waits until every shard `node_id` hosts has caught up with its leader elsewhere (or leads it
/// again: the balancer hands a caught-up preferred node its shards back).
async fn wait_rejoined(cluster: &ProcessCluster, node_id: u64) -> anyhow::Result<()> {
    let client = cluster.client().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut committed = std::collections::BTreeMap::new();
        for node in cluster.nodes.iter().filter(|n| n.node_id != node_id) {
            if let Ok(status) = ringkv_tests::admin(&client).node_status(&node.addr).await {
                for replica in status
                    .replicas
                    .iter()
                    .filter(|r| r.role == ringkv_client::ReplicaRole::Leader)
                {
                    committed.insert(replica.shard_id, replica.committed_index);
                }
            }
        }
        if let Ok(status) = ringkv_tests::admin(&client)
            .node_status(&cluster.node(node_id).addr)
            .await
        {
            let caught_up = status.replicas.iter().all(|r| {
                r.role == ringkv_client::ReplicaRole::Leader
                    || committed
                        .get(&r.shard_id)
                        .is_some_and(|&index| r.applied_index >= index)
            });
            if caught_up && !status.replicas.is_empty() {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {node_id} did not catch up after its restart\n{}",
            cluster.log_tails(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_with_sigterm_returns_no_error_to_callers() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3, 8, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let history = History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for worker_id in 0..4 {
        let client = cluster.client().await?;
        let (history, stop) = (history.clone(), stop.clone());
        workers.spawn(async move { run_worker(worker_id, client, history, stop, "roll", 8, 11).await });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    for node_id in [1, 2, 3] {
        let started = Instant::now();
        assert!(
            cluster.terminate(node_id, Duration::from_secs(30)),
            "node {node_id} did not exit cleanly on SIGTERM within 30 s\n{}",
            cluster.log_tails(20)
        );
        eprintln!("node {node_id} stopped on SIGTERM in {:.1?}", started.elapsed());
        // It handed every shard it led to another node before exiting: no shard waited for an
        // election. (The node logs how many it still led when it stopped.)
        let log = std::fs::read_to_string(&cluster.node(node_id).log_path)?;
        let stopping = log
            .lines()
            .rfind(|line| line.contains("leaderships handed over"))
            .unwrap_or_default();
        assert!(
            stopping.contains("still_leading=0"),
            "node {node_id} stopped while still leading shards: {stopping:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.start_node(node_id)?;
        wait_rejoined(&cluster, node_id).await?;
    }
    cluster.wait_ready(Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut report = WorkerReport::default();
    while let Some(result) = workers.join_next().await {
        report.merge(result?);
    }

    assert!(
        report.unknown == 0 && report.not_applied == 0,
        "callers saw {} errors with unknown outcome and {} certain failures: {:?}",
        report.unknown,
        report.not_applied,
        report.error_samples
    );
    assert!(
        report.completed > 100,
        "the workload ran: {} operations",
        report.completed
    );
    let client = cluster.client().await?;
    for (key, value) in &report.acknowledged {
        assert_eq!(
            client.get(key).await?.map(|v| v.value),
            Some(Bytes::from(value.clone())),
            "{key}"
        );
    }
    match linearizability::check(&history.operations(), 50_000_000) {
        Verdict::Linearizable => {}
        verdict => panic!("not linearizable: {verdict:?}"),
    }
    assert_replicas_identical(&client).await?;
    eprintln!(
        "rolling restart: {} operations, no error; {} acknowledged writes present; replicas identical",
        report.completed,
        report.acknowledged.len()
    );
    Ok(())
}

//! Splitting shards under load, by an operator's request and by size: clients keep working
//! through it (a linearizable history, no caller left not knowing whether a write applied), a
//! scan running across the split returns every key exactly once, and the replicas of parents and
//! children end identical.

use ringkv_server::node::placement::Placement;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use bytes::Bytes;
use ringkv_client::{Client, ScanOptions, ShardId, ShardMap};
use ringkv_tests::linearizability::{self, History, Verdict};
use ringkv_tests::workload::{WorkerReport, run_worker};
use ringkv_tests::{ProcessCluster, assert_replicas_identical};

use super::wait_replicas;

const WORKERS: usize = 4;
const KEYS: usize = 16;
/// Keys written before the splits and never after: every scan must return each exactly once.
const SCANNED_KEYS: usize = 400;

/// Every key with `prefix`, by scanning the whole keyspace page by page; fails on a key seen twice.
async fn scan_all(client: &Client, prefix: &str) -> anyhow::Result<BTreeMap<Bytes, Bytes>> {
    let mut found = BTreeMap::new();
    let mut cursor = None;
    for _ in 0..10_000 {
        let page = client
            .scan(ScanOptions {
                prefix: Bytes::copy_from_slice(prefix.as_bytes()),
                limit: 37,
                cursor,
                read: None,
            })
            .await?;
        for entry in page.entries {
            if let Some(previous) = found.insert(entry.key.clone(), entry.value) {
                bail!(
                    "the scan returned {:?} twice (first with {previous:?})",
                    entry.key
                );
            }
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(found),
        }
    }
    bail!("the scan did not end within 10,000 pages")
}

async fn wait_split(client: &Client, shard: ShardId) -> anyhow::Result<ShardMap> {
    match ringkv_tests::admin(client)
        .wait_for_split(shard, Duration::from_secs(90))
        .await?
    {
        Some(map) => Ok(map),
        None => bail!("the split of shard {shard} did not finish within 90 s"),
    }
}

/// Waits until every node runs a replica of every shard of `map` it is given.
async fn wait_all_replicas_running(cluster: &ProcessCluster, map: &ShardMap) -> anyhow::Result<()> {
    for node in &cluster.nodes {
        let wanted: Vec<u64> = map
            .groups()
            .filter_map(|shard| shard.replica_on(ringkv_client::NodeId(node.node_id)))
            .map(|replica| replica.replica_id.0)
            .collect();
        wait_replicas(
            &node.addr,
            Duration::from_secs(60),
            "every replica the map places runs",
            |running| {
                wanted
                    .iter()
                    .all(|id| running.iter().any(|r| r.replica_id == *id))
            },
        )
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splitting_shards_under_load_keeps_the_history_linearizable_and_scans_exact() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3, 4, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    let mut expected = BTreeMap::new();
    for i in 0..SCANNED_KEYS {
        let (key, value) = (format!("scan-{i:04}"), format!("value-{i}"));
        client.put(&key, &value).await?;
        expected.insert(Bytes::from(key), Bytes::from(value));
    }

    let history = History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for worker_id in 0..WORKERS {
        let worker = cluster.client().await?;
        let (history, stop) = (history.clone(), stop.clone());
        workers.spawn(async move { run_worker(worker_id, worker, history, stop, "split", KEYS, 23).await });
    }
    // Scans run all along, each checked whole.
    let scanner = {
        let (client, stop, expected) = (cluster.client().await?, stop.clone(), expected.clone());
        tokio::spawn(async move {
            let mut scans = 0;
            while !stop.load(Ordering::Relaxed) {
                let found = scan_all(&client, "scan-").await?;
                ensure!(
                    found == expected,
                    "a scan returned {} keys, not the {} written",
                    found.len(),
                    expected.len()
                );
                scans += 1;
            }
            anyhow::Ok(scans)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Split shard 1, then the shard split off it (a child's log starts at the split's index).
    let parent = ShardId(1);
    let arc = client.shard_map().await.shard(parent).expect("shard 1").arc;
    let begun = ringkv_tests::admin(&client).split_shard(parent).await?;
    let child = begun.split_of(parent).expect("the split is recorded").child;
    let map = wait_split(&client, parent).await?;
    let (parent_arc, child_arc) = (
        map.shard(parent).expect("parent").arc,
        map.shard(child).expect("child").arc,
    );
    assert_eq!((parent_arc.start, child_arc.end), (arc.start, arc.end));
    assert_eq!(parent_arc.end + 1, child_arc.start);
    let voters = |shard: ShardId| -> Vec<u64> {
        let mut nodes: Vec<u64> = map
            .shard(shard)
            .unwrap()
            .voters
            .iter()
            .map(|r| r.node_id.0)
            .collect();
        nodes.sort();
        nodes
    };
    assert_eq!(
        voters(child),
        voters(parent),
        "the child's replicas sit on the parent's nodes"
    );
    wait_all_replicas_running(&cluster, &map).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let begun = ringkv_tests::admin(&client).split_shard(child).await?;
    let grandchild = begun.split_of(child).expect("the split is recorded").child;
    let map = wait_split(&client, child).await?;
    assert!(map.shard(grandchild).is_some());
    wait_all_replicas_running(&cluster, &map).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    stop.store(true, Ordering::Relaxed);
    let scans = scanner.await??;
    assert!(scans >= 2, "scans ran through the splits: {scans}");
    let mut report = WorkerReport::default();
    while let Some(result) = workers.join_next().await {
        report.merge(result?);
    }
    eprintln!(
        "split under load: {} operations, {scans} full scans, {} shards now",
        report.completed,
        map.shards.len()
    );
    assert_eq!(
        report.unknown, 0,
        "callers saw writes with unknown outcome: {:?}",
        report.error_samples
    );
    for (key, value) in &report.acknowledged {
        let stored = client.get(key).await?;
        assert_eq!(
            stored.map(|v| v.value),
            Some(Bytes::from(value.clone())),
            "acknowledged write {key} lost"
        );
    }
    assert!(
        report.completed > 100,
        "the workload ran: {} operations",
        report.completed
    );
    let operations = history.operations();
    match linearizability::check(&operations, 50_000_000) {
        Verdict::Linearizable => {}
        other => panic!(
            "history of {} operations is not shown linearizable: {other:?}",
            operations.len()
        ),
    }
    assert_eq!(scan_all(&client, "scan-").await?, expected);
    // A restart of every node finds parents and children as they were.
    for node in 1..=3 {
        cluster.kill(node);
        cluster.start_node(node)?;
    }
    cluster.wait_ready(Duration::from_secs(60)).await?;
    assert_eq!(scan_all(&client, "scan-").await?, expected);
    assert_replicas_identical(&client).await
}

/// A replica of a shard that has split moves to another node: the new replica must start from a
/// snapshot under the shard's current range, never replay entries from before the split (which
/// it would answer differently from the replicas that applied them before it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_a_split_shard_moves_and_matches_the_others() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(4, 2, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    // Writes with request ids on both halves of shard 1, before the split.
    let map = client.shard_map().await;
    let arc = map.shard(ShardId(1)).expect("shard 1").arc;
    let mut written = 0;
    for i in 0..2_000 {
        let key = format!("before-{i}");
        if arc.contains(ringkv_proto::key_hash(key.as_bytes())) {
            client.put(&key, "v").await?;
            written += 1;
        }
        if written == 200 {
            break;
        }
    }
    let begun = ringkv_tests::admin(&client).split_shard(ShardId(1)).await?;
    let child = begun.split_of(ShardId(1)).expect("the split is recorded").child;
    let decisions_before = begun.decisions.len();
    wait_split(&client, ShardId(1)).await?;
    // Three shards of three replicas on four nodes: the controller moves one of the split shards'
    // replicas to the node that has none of them.
    let deadline = Instant::now() + Duration::from_secs(120);
    let map = loop {
        client.refresh_shard_map().await?;
        let map = client.shard_map().await;
        if map.moves.is_empty() && map.next_placement_step(usize::MAX).is_none() {
            break map;
        }
        ensure!(
            Instant::now() < deadline,
            "the controller did not settle within 120 s: {:?}",
            map.moves
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let moved: Vec<&str> = map.decisions[decisions_before.min(map.decisions.len())..]
        .iter()
        .map(|d| d.text.as_str())
        .filter(|text| {
            text.starts_with(&format!("begin moving shard {} replica", ShardId(1)))
                || text.starts_with(&format!("begin moving shard {child} replica"))
        })
        .collect();
    ensure!(
        !moved.is_empty(),
        "no replica of a split shard moved: {:?}",
        map.decisions
    );
    eprintln!("moves of split shards: {moved:?}");
    wait_all_replicas_running(&cluster, &map).await?;
    for i in 0..written {
        let key = format!("before-{i}");
        if map.shard_for_key(key.as_bytes()).id == ShardId(1) {
            assert_eq!(
                client.get(&key).await?.map(|v| v.value),
                Some(Bytes::from("v")),
                "{key}"
            );
        }
    }
    assert_replicas_identical(&client).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_past_split_size_bytes_split_on_their_own() -> anyhow::Result<()> {
    // Two shards of about 400 KB each against a limit of 250 KB: both split, their halves not.
    let cluster = ProcessCluster::start(3, 2, &["--split-size-bytes", "250000"])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    let mut expected = BTreeMap::new();
    let filler = "x".repeat(2000);
    for i in 0..SCANNED_KEYS {
        let key = format!("big-{i:04}");
        let value = format!("{i}-{filler}");
        client.put(&key, &value).await?;
        expected.insert(Bytes::from(key), Bytes::from(value));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let map = loop {
        client.refresh_shard_map().await?;
        let map = client.shard_map().await;
        if map.shards.len() >= 4 && map.splits.is_empty() {
            break map;
        }
        if Instant::now() > deadline {
            bail!(
                "the shards did not split on size within 120 s: {} shards, splits {:?}\n{}",
                map.shards.len(),
                map.splits,
                cluster.log_tails(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let by_size = map
        .decisions
        .iter()
        .filter(|d| d.text.contains("begin splitting") && d.text.contains("split_size_bytes"))
        .count();
    assert!(by_size >= 2, "splits decided on size: {:?}", map.decisions);
    wait_all_replicas_running(&cluster, &map).await?;
    assert_eq!(scan_all(&client, "big-").await?, expected);
    for (key, value) in &expected {
        assert_eq!(client.get(key).await?.map(|v| v.value).as_ref(), Some(value));
    }
    assert_replicas_identical(&client).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_written_past_split_writes_per_sec_splits_on_its_own() -> anyhow::Result<()> {
    // One shard, written by 8 concurrent writers well past 20 writes per second: it splits, and
    // its halves (each written at half the rate, still past it) may split again.
    let cluster = ProcessCluster::start(3, 1, &["--split-writes-per-sec", "20", "--split-size-bytes", "0"])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..8 {
        let (client, stop) = (cluster.client().await?, stop.clone());
        writers.spawn(async move {
            let mut written = BTreeMap::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (key, value) = (format!("rate-{writer}-{}", n % 50), format!("{n}"));
                client.put(&key, &value).await?;
                written.insert(Bytes::from(key), Bytes::from(value));
                n += 1;
            }
            anyhow::Ok(written)
        });
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let map = loop {
        client.refresh_shard_map().await?;
        let map = client.shard_map().await;
        if map.shards.len() >= 2 && map.splits.is_empty() {
            break map;
        }
        if Instant::now() > deadline {
            stop.store(true, Ordering::Relaxed);
            bail!(
                "the shard did not split on its write rate within 90 s\n{}",
                cluster.log_tails(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let mut expected = BTreeMap::new();
    while let Some(written) = writers.join_next().await {
        expected.extend(written??);
    }
    assert!(
        map.decisions
            .iter()
            .any(|d| d.text.contains("begin splitting") && d.text.contains("split_writes_per_sec")),
        "a split decided on write rate: {:?}",
        map.decisions
    );
    wait_all_replicas_running(&cluster, &client.shard_map().await).await?;
    assert_eq!(scan_all(&client, "rate-").await?, expected);
    assert_replicas_identical(&client).await
}

//! Growing a running cluster from 3 to 5 nodes under a concurrent read/write load: the two new
//! nodes join (`ringkv start --join`, one with its id given, one assigned; `ringkv node list` shows
//! a new node joining), the controller moves replicas to them until replica and preferred-leader
//! counts per node differ by at most one, with no more moves than the minimum (reported), the
//! metadata group grows to five voters, and the history stays linearizable with no caller left not
//! knowing whether a write applied.

use ringkv_server::node::placement::Placement;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use ringkv_client::{NodeId, ShardMap};
use ringkv_tests::linearizability::{self, History};
use ringkv_tests::workload::{WorkerReport, run_worker};
use ringkv_tests::{ProcessCluster, assert_replicas_identical};

use crate::node_list;

const WORKERS: usize = 4;
const KEYS: usize = 8;
const SHARDS: u32 = 8;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(240);

fn spread(counts: &BTreeMap<NodeId, usize>) -> usize {
    counts.values().max().unwrap_or(&0) - counts.values().min().unwrap_or(&0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_from_three_to_five_nodes_under_load_balances_with_the_fewest_moves() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3, SHARDS, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client().await?;

    let history = History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for worker_id in 0..WORKERS {
        let worker = cluster.client().await?;
        let (history, stop) = (history.clone(), stop.clone());
        workers.spawn(async move { run_worker(worker_id, worker, history, stop, "grow", KEYS, 11).await });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let before = client.shard_map().await;
    let decisions_before = before.decisions.len();
    // Node 4 joins with its id given; once it is in the map, node 5 joins without one and gets
    // the next id.
    cluster.add_joining_node(4, false)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client.shard_map().await.nodes.contains_key(&NodeId(4)) {
        assert!(
            Instant::now() < deadline,
            "node 4 did not join\n{}",
            cluster.log_tails(20)
        );
        let _ = client.refresh_shard_map().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.add_joining_node(5, true)?;
    // Node 4 has just joined: `ringkv node list` shows it joining (no replica has finished moving
    // to it yet; it needs at least four, two moves at a time).
    let mut listed = None;
    for _ in 0..10 {
        // A failed call (a node busy starting) is retried like a map without node 4.
        let list = node_list(&cluster.node(1).addr).unwrap_or_default();
        let node_4 = list["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["node_id"] == 4).cloned());
        if node_4.is_some() {
            listed = node_4;
            break;
        }
        // The node answering may not have followed the map to node 4's join yet.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listed = listed.ok_or_else(|| anyhow::anyhow!("`ringkv node list` never listed node 4"))?;
    assert_eq!(
        listed["state"], "joining",
        "node 4 right after it joined: {listed}"
    );

    // 24 replicas on 3 nodes (8 each) spread over 5 (5, 5, 5, 5, 4): the new nodes need at least
    // 4 + 5 = 9 replicas, so 9 moves is the minimum.
    let minimum_moves = 9;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let map: ShardMap = loop {
        if client.refresh_shard_map().await.is_ok() {
            let map = client.shard_map().await;
            let settled = map.node_addr(NodeId(5)) == Some(cluster.node(5).addr.as_str())
                && map.moves.is_empty()
                && map.next_placement_step(usize::MAX).is_none();
            if settled {
                break map;
            }
            if Instant::now() > deadline {
                bail!(
                    "not balanced within {SETTLE_TIMEOUT:?}: nodes {:?}, counts {:?}, moves {:?}\n{}",
                    map.nodes.keys().collect::<Vec<_>>(),
                    map.replica_counts(),
                    map.moves,
                    cluster.log_tails(20)
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let counts = map.replica_counts();
    assert_eq!(counts.len(), 5, "five up nodes: {counts:?}");
    // Five nodes: the metadata group has grown to five voters, one per node.
    let meta_nodes: std::collections::BTreeSet<u64> = map.meta.voters.iter().map(|v| v.node_id.0).collect();
    assert_eq!(meta_nodes.len(), 5, "metadata voters: {:?}", map.meta.voters);
    assert!(spread(&counts) <= 1, "replicas per node: {counts:?}");
    let leaders = map.preferred_leader_counts();
    assert!(spread(&leaders) <= 1, "preferred leaders per node: {leaders:?}");
    let moves = map.decisions[decisions_before.min(map.decisions.len())..]
        .iter()
        .filter(|d| d.text.starts_with("begin moving"))
        .count();
    eprintln!("grow 3 -> 5: {moves} replicas moved, minimum {minimum_moves}; replicas per node {counts:?}");
    assert!(
        moves * 10 <= minimum_moves * 11,
        "{moves} moves, more than 10% over the minimum of {minimum_moves}"
    );

    // Leaders follow the preferred ones: per node, actual leaders of data shards within one.
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let mut led: BTreeMap<u64, usize> = (1..=5).map(|n| (n, 0)).collect();
    for (shard, leader) in cluster.leaders().await? {
        if shard != ringkv_client::ShardId::META.0
            && let Some(leader) = leader
        {
            *led.entry(leader).or_default() += 1;
        }
    }
    let (most, fewest) = (led.values().max().unwrap(), led.values().min().unwrap());
    assert!(most - fewest <= 1, "shard leaders per node: {led:?}");

    stop.store(true, Ordering::Relaxed);
    let mut report = WorkerReport::default();
    while let Some(result) = workers.join_next().await {
        report.merge(result?);
    }
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
    let operations = history.operations();
    assert!(
        report.completed > 100,
        "the workload ran: {} operations",
        report.completed
    );
    linearizability::assert_linearizable(&operations, 50_000_000);
    assert_replicas_identical(&client).await
}

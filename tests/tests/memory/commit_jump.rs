//! A shard's commit index jumps by more than 5,000 entries at once, and every replica still ends
//! with identical data (the bug this guards against: applies past 4,096 entries of a jump were
//! silently skipped).
//!
//! How the jump is made, on three nodes with real RocksDB and Raft over the in-memory network:
//! 1. Cut every link. The shard's leader L keeps its lease for a while and appends a burst of
//!    6,000 proposals it cannot commit.
//! 2. Crash L, restore the links L–F and L–C only (F–C stays cut, so neither F nor C can win an
//!    election without L), and restart L.
//! 3. L has the longest log and wins a new term. Raft commits entries of an earlier term only with
//!    an entry of the current one, so L's commit index moves from before the burst to past it in
//!    one step, and L applies the whole burst as one committed range.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use openraft::async_runtime::watch::WatchReceiver;
use ringkv_engine::{Command, EngineOptions, NodeId, Proposal, ShardId};
use ringkv_server::transport::MemoryNetwork;
use ringkv_tests::local_cluster::TransportKind;
use ringkv_tests::{LocalCluster, assert_replicas_identical};

const BURST: u64 = 6_000;
const SHARD: ShardId = ShardId(1);

/// Runs the scenario; returns what went wrong, if anything.
async fn commit_jump(engine_options: EngineOptions) -> anyhow::Result<()> {
    let network = MemoryNetwork::new(5);
    let mut cluster = LocalCluster::start_with(
        3,
        1,
        TransportKind::Memory(network.clone()),
        engine_options,
        |config| {
            // Long leases and elections: the burst is appended well within L's lease, and nothing
            // here races an election timer.
            config.raft.heartbeat_interval_ms = 200;
            config.raft.election_timeout_min_ms = 2_000;
            config.raft.election_timeout_max_ms = 4_000;
            // No snapshots: every replica gets the burst through its log.
            config.raft.snapshot_after_logs = 1_000_000;
        },
    )
    .await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let leader = cluster.leader_of(1, SHARD)?;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != leader).collect();

    // 1. Cut every link, then propose the burst on the leader directly.
    let all: Vec<NodeId> = [1, 2, 3].map(NodeId).to_vec();
    for &a in &all {
        for &b in &all {
            if a != b {
                network.cut(a, b);
            }
        }
    }
    let replica = cluster
        .running(leader)
        .node
        .replica(SHARD)
        .context("the leader hosts the shard")?;
    let committed_before = replica
        .raft
        .metrics()
        .borrow_watched()
        .local_committed
        .map_or(0, |id| id.index);
    // Keys the shard owns (proposed on its group directly, a key of another shard would land in
    // that shard's range; see `LocalCluster::keys_of_shard`).
    let burst_keys = cluster.keys_of_shard(leader, SHARD, "jump-", BURST as usize);
    let mut proposals = tokio::task::JoinSet::new();
    for key in burst_keys.clone() {
        let raft = replica.raft.clone();
        proposals.spawn(async move {
            let command = Command::Put {
                key,
                value: b"value".to_vec(),
            };
            let _ = raft.client_write(Proposal::internal(command)).await;
        });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = replica.raft.metrics().borrow_watched().clone();
        let appended = metrics.last_log_index.unwrap_or(0);
        if appended >= committed_before + BURST {
            break;
        }
        if Instant::now() > deadline {
            bail!("the leader appended only up to {appended} (committed {committed_before}) in 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let committed_now = replica
        .raft
        .metrics()
        .borrow_watched()
        .local_committed
        .map_or(0, |id| id.index);
    assert!(
        committed_now < committed_before + 10,
        "isolated, the leader committed nothing of the burst ({committed_before} -> {committed_now})"
    );
    drop(replica);

    // 2. Crash the leader; reconnect it to both others, who stay cut from each other; restart it.
    cluster.kill_node(leader).await;
    proposals.shutdown().await;
    for &other in &others {
        network.reconnect(NodeId(leader), NodeId(other));
    }
    cluster.start_node(leader).await?;

    // 3. It wins a new term and commits the burst in one step.
    let replica = cluster.running(leader).node.replica(SHARD).context("restarted")?;
    let mut metrics = replica.raft.metrics();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut largest_step = 0u64;
    let mut last_committed = committed_before;
    loop {
        let committed = metrics.borrow_watched().local_committed.map_or(0, |id| id.index);
        largest_step = largest_step.max(committed.saturating_sub(last_committed));
        last_committed = last_committed.max(committed);
        if committed > committed_before + BURST {
            break;
        }
        if Instant::now() > deadline {
            let statuses: Vec<_> = [1u64, 2, 3]
                .iter()
                .map(|n| cluster.running(*n).node.status().replicas)
                .collect();
            bail!(
                "the restarted leader committed only up to {committed} (burst ended at {}); replicas: {statuses:?}",
                committed_before + BURST
            );
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), metrics.changed()).await;
    }
    assert!(
        largest_step > 5_000,
        "the commit index jumped by {largest_step} entries at most; this test needs more than 5,000"
    );
    drop(replica);

    // Heal everything, let every replica catch up, and compare.
    network.heal();
    cluster.wait_for_leaders(Duration::from_secs(60), false).await?;
    cluster.wait_caught_up(Duration::from_secs(30)).await?;
    for node in [1, 2, 3] {
        let engine = cluster.running(node).node.engine().clone();
        let missing: Vec<String> = burst_keys
            .iter()
            .filter(|key| engine.get(key).ok().flatten().is_none())
            .map(|key| String::from_utf8_lossy(key).into_owned())
            .collect();
        if !missing.is_empty() {
            bail!(
                "node {node} misses {} committed burst keys, the first {} and the last {}",
                missing.len(),
                missing[0],
                missing[missing.len() - 1]
            );
        }
    }
    let client = cluster.client().await?;
    assert_replicas_identical(&client).await?;
    eprintln!(
        "commit jump: the leader's commit index moved by {largest_step} entries in one step; replicas identical"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_jump_of_more_than_5000_entries_is_applied_whole_on_every_replica() -> anyhow::Result<()> {
    commit_jump(EngineOptions::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_commit_jump_test_catches_the_old_4096_entry_read_cap() {
    // With the old bug switched back on (log reads stop at 4,096 entries), the same scenario must
    // fail: the leader skips the burst's tail (or, with debug assertions, its apply worker stops).
    let options = EngineOptions::default();
    options
        .faults
        .log_read_cap
        .store(4096, std::sync::atomic::Ordering::Relaxed);
    let error = match tokio::time::timeout(Duration::from_secs(240), commit_jump(options)).await {
        Ok(Ok(())) => panic!("the scenario passed with the 4096-entry cap on: it would not catch the bug"),
        Ok(Err(error)) => format!("{error:#}"),
        Err(_) => "the scenario timed out".into(),
    };
    // It must fail where the lost applies show: keys missing on a replica, replicas that differ,
    // or a replica that never finished applying.
    assert!(
        ["misses", "replica check failed", "still behind"]
            .iter()
            .any(|sign| error.contains(sign)),
        "the scenario failed, but not by finding the skipped applies: {error}"
    );
    eprintln!("with the cap on, the commit-jump test fails as it should: {error}");
}

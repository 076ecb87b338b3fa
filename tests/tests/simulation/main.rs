//! Seeded fault injection in one process: three nodes with real engines (RocksDB in temp dirs) and
//! real Raft, talking over the in-memory network, go through a random schedule of partitions (one
//! way and both ways), holds, message loss, delay and reordering, node crashes and restarts, and
//! (in some seeds) a leader that appends a burst of thousands of entries it cannot commit and
//! then wins a new term. Concurrent clients read and write all along over real gRPC. In odd seeds
//! idle shards go quiet after 300 ms (`node::quiesce`), so quiet replicas meet the same faults.
//!
//! After the schedule everything heals and each seed must show: every acknowledged write present,
//! a linearizable history (operations recorded exactly as their results say: done, certainly not
//! applied, or maybe applied), and identical replicas (the replica check).
//!
//! Environment:
//! - `RINGKV_SIM_SEEDS=N` runs seeds 0..N (default 100);
//! - `RINGKV_SIM_SEED=S` runs seed S alone (a failure prints its seed);
//! - `RINGKV_SIM_BUG=log-read-cap` switches the old 4096-entry log read cap back on in every
//!   engine, to show the suite catches it (the burst seeds fail).
//!
//! The schedule and every random choice of the network follow the seed; thread interleavings do
//! not, so a seed replays the same faults but not always the same history.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use openraft::EntryPayload;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::storage::RaftLogReader;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_engine::{Command, EngineOptions, NodeId, Proposal, ShardId};
use ringkv_server::transport::MemoryNetwork;
use ringkv_tests::linearizability::{self, History, Verdict};
use ringkv_tests::local_cluster::TransportKind;
use ringkv_tests::workload::{WorkerReport, run_worker};
use ringkv_tests::{LocalCluster, assert_replicas_identical};

const NODES: u64 = 3;
const SHARDS: u32 = 2;
const WORKERS: usize = 3;
const KEYS: usize = 4;
const STEPS: usize = 6;
/// Entries a burst step appends on an isolated leader: more than the old 4096-entry read cap.
const BURST: u64 = 5_000;
/// One seed in this many runs a burst step.
const BURST_EVERY: u64 = 8;
/// Test functions the seeds are spread over, so two can run at once.
const PARTS: u64 = 4;

fn seeds(part: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("RINGKV_SIM_SEED") {
        let seed: u64 = seed.parse().expect("RINGKV_SIM_SEED is a number");
        return if seed % PARTS == part {
            vec![seed]
        } else {
            Vec::new()
        };
    }
    let count: u64 = std::env::var("RINGKV_SIM_SEEDS")
        .ok()
        .map(|n| n.parse().expect("RINGKV_SIM_SEEDS is a number"))
        .unwrap_or(100);
    (0..count).filter(|seed| seed % PARTS == part).collect()
}

fn engine_options() -> EngineOptions {
    let options = EngineOptions::default();
    match std::env::var("RINGKV_SIM_BUG").as_deref() {
        Ok("log-read-cap") => options.faults.log_read_cap.store(4096, Ordering::Relaxed),
        Ok(other) => panic!("unknown RINGKV_SIM_BUG {other:?}; the one known is log-read-cap"),
        Err(_) => {}
    }
    options
}

/// Runs every seed of `part`; fails listing each failed seed and how to replay it.
async fn run_part(part: u64) {
    let mut failures = Vec::new();
    for seed in seeds(part) {
        let started = Instant::now();
        match tokio::time::timeout(Duration::from_secs(300), run_seed(seed)).await {
            Ok(Ok(summary)) => eprintln!("seed {seed}: ok in {:.1?}: {summary}", started.elapsed()),
            Ok(Err(error)) => {
                eprintln!("seed {seed}: FAILED after {:.1?}: {error:#}", started.elapsed());
                failures.push(format!("seed {seed}: {error:#}"));
            }
            Err(_) => {
                eprintln!("seed {seed}: FAILED: did not finish within 300 s");
                failures.push(format!("seed {seed}: did not finish within 300 s"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} seeds failed; replay one with RINGKV_SIM_SEED=<seed> cargo test -p ringkv-tests --test simulation -- --nocapture\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seeds_part_0() {
    run_part(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seeds_part_1() {
    run_part(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seeds_part_2() {
    run_part(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seeds_part_3() {
    run_part(3).await;
}

/// One seed: start, fault, heal, check. Returns a one-line summary.
async fn run_seed(seed: u64) -> anyhow::Result<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let burst = seed % BURST_EVERY == 3;
    let network = MemoryNetwork::new(seed);
    let snapshots = rng.random_bool(0.5);
    let mut cluster = LocalCluster::start_with(
        NODES as usize,
        SHARDS,
        TransportKind::Memory(network.clone()),
        engine_options(),
        |config| {
            // Burst seeds need a leader lease long enough to append the burst; the others elect
            // fast, so a seed spends its time in faults rather than waiting.
            let (heartbeat, election) = if burst { (200, 2_000) } else { (50, 400) };
            config.raft.heartbeat_interval_ms = heartbeat;
            config.raft.election_timeout_min_ms = election;
            config.raft.election_timeout_max_ms = election * 2;
            // Heartbeat suppression must leave a follower hearing from its leader within the
            // shortest election timeout (50 + 200 + 10 < 400; 200 + 400 + 40 < 2,000).
            config.raft.heartbeat_min_interval_ms = if burst { 400 } else { 200 };
            // Odd seeds let idle shards go quiet soon, so schedules cover quiet shards waking for
            // requests, Raft messages and lost or restarted peers; even seeds never quiesce. Burst
            // seeds need the isolated leader's lease, which a quiet leader lets lapse.
            config.raft.quiesce_after_ms = if seed % 2 == 1 && !burst { 300 } else { 0 };
            if snapshots {
                config.raft.snapshot_after_logs = 100;
                config.raft.logs_to_keep_after_snapshot = 10;
            }
        },
    )
    .await?;
    cluster.wait_for_leaders(Duration::from_secs(60), false).await?;

    let history = History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for worker_id in 0..WORKERS {
        let client = cluster.client_with_timeout(Duration::from_secs(4)).await?;
        let (history, stop) = (history.clone(), stop.clone());
        workers.spawn(async move { run_worker(worker_id, client, history, stop, "sim", KEYS, seed).await });
    }

    let mut faults = Vec::new();
    let mut down: BTreeSet<u64> = BTreeSet::new();
    let burst_step = burst.then(|| rng.random_range(0..STEPS));
    // The burst's keys, once the burst is known committed: every replica must end up holding them.
    let mut burst_keys: Vec<Vec<u8>> = Vec::new();
    for step in 0..STEPS {
        if Some(step) == burst_step {
            let (summary, committed) = isolated_burst(&mut cluster, &network, &mut down).await?;
            faults.push(summary);
            burst_keys = committed;
            continue;
        }
        let fault = random_fault(&mut rng, &mut cluster, &network, &mut down).await?;
        faults.push(fault);
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..600))).await;
        // Most faults end with their step; crashed nodes come back a step or two later.
        if rng.random_bool(0.7) {
            network.heal();
        }
        if !down.is_empty() && rng.random_bool(0.5) {
            let node = *down.iter().next().expect("non-empty");
            cluster.start_node(node).await?;
            down.remove(&node);
        }
    }

    // Heal everything and let the cluster settle under load.
    network.heal();
    for node in std::mem::take(&mut down) {
        cluster.start_node(node).await?;
    }
    cluster
        .wait_for_leaders(Duration::from_secs(60), false)
        .await
        .context("no leader after healing")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut report = WorkerReport::default();
    while let Some(result) = workers.join_next().await {
        report.merge(result?);
    }
    cluster.wait_caught_up(Duration::from_secs(30)).await?;

    let client = cluster.client().await?;
    for (key, value) in &report.acknowledged {
        let stored = client.get(key).await?.map(|v| v.value);
        if stored.as_deref() != Some(value.as_bytes()) {
            bail!("acknowledged write {key} = {value} lost: the key holds {stored:?}");
        }
    }
    let operations = history.operations();
    match linearizability::check(&operations, 20_000_000) {
        Verdict::Linearizable => {}
        verdict => bail!(
            "history of {} operations not shown linearizable: {verdict:?}",
            operations.len()
        ),
    }
    assert_replicas_identical(&client).await?;
    for node in 1..=NODES {
        let engine = cluster.running(node).node.engine().clone();
        let missing = burst_keys
            .iter()
            .filter(|key| engine.get(key).ok().flatten().is_none())
            .count();
        if missing > 0 {
            bail!(
                "node {node} misses {missing} of the {} committed burst keys",
                burst_keys.len()
            );
        }
    }
    let summary = format!(
        "{} operations ({} unknown, {} not applied), {} own writes verified, replicas identical; faults: {}",
        operations.len(),
        report.unknown,
        report.not_applied,
        report.acknowledged.len(),
        faults.join(", ")
    );
    cluster.shutdown().await;
    Ok(summary)
}

/// Injects one random fault; returns what it did.
async fn random_fault(
    rng: &mut StdRng,
    cluster: &mut LocalCluster,
    network: &MemoryNetwork,
    down: &mut BTreeSet<u64>,
) -> anyhow::Result<String> {
    let node = rng.random_range(1..=NODES);
    let other = (node % NODES) + 1;
    let rest: Vec<NodeId> = (1..=NODES).filter(|&n| n != node).map(NodeId).collect();
    Ok(match rng.random_range(0..7) {
        0 => {
            network.partition(&[NodeId(node)], &rest);
            format!("isolate {node}")
        }
        1 => {
            network.cut(NodeId(node), NodeId(other));
            format!("cut {node}->{other}")
        }
        2 => {
            let loss = rng.random_range(0.05..0.35);
            network.set_loss(loss);
            format!("loss {loss:.2}")
        }
        3 => {
            let delay = Duration::from_millis(rng.random_range(1..25));
            network.set_delay(delay);
            format!("delay {delay:?}")
        }
        4 => {
            network.hold(NodeId(node));
            format!("hold {node}")
        }
        5 if down.is_empty() => {
            cluster.kill_node(node).await;
            down.insert(node);
            format!("crash {node}")
        }
        _ => {
            // Partition the other two from each other, and lose some messages too.
            network.partition(&[NodeId(other)], &[NodeId((other % NODES) + 1)]);
            network.set_loss(0.1);
            format!("split {other}|{} with loss", (other % NODES) + 1)
        }
    })
}

/// The commit-jump scenario (see `tests/memory/commit_jump.rs`) inside a seed: the leader of
/// shard 1, cut off from everyone, appends `BURST` entries; it crashes; it comes back connected to
/// both others while they stay cut from each other, so it wins a new term and commits the burst in
/// one step. Returns what happened and, when the burst committed, the keys it wrote (read back from
/// the isolated leader's log, since client writes reaching that leader are in its log too).
async fn isolated_burst(
    cluster: &mut LocalCluster,
    network: &MemoryNetwork,
    down: &mut BTreeSet<u64>,
) -> anyhow::Result<(String, Vec<Vec<u8>>)> {
    network.heal();
    for node in std::mem::take(down) {
        cluster.start_node(node).await?;
    }
    cluster.wait_for_leaders(Duration::from_secs(60), false).await?;
    let shard = ShardId(1);
    let Some(leader) = (1..=NODES).find(|&n| {
        cluster
            .running(n)
            .node
            .replica(shard)
            .is_some_and(|r| r.raft.metrics().borrow_watched().state == openraft::ServerState::Leader)
    }) else {
        return Ok(("burst skipped (no leader)".into(), Vec::new()));
    };
    let all: Vec<NodeId> = (1..=NODES).map(NodeId).collect();
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
        .replica(shard)
        .context("leader hosts the shard")?;
    let committed = replica
        .raft
        .metrics()
        .borrow_watched()
        .local_committed
        .map_or(0, |id| id.index);
    // Keys the shard owns: proposed on its Raft group directly, bypassing the node's routing,
    // a key of another shard would be written into that shard's range by this shard's applies,
    // and the replica check of the other shard would see them half applied on one replica.
    let burst_keys = cluster.keys_of_shard(leader, shard, "burst-", BURST as usize);
    let mut proposals = tokio::task::JoinSet::new();
    for key in burst_keys {
        let raft = replica.raft.clone();
        proposals.spawn(async move {
            let command = Command::Put {
                key,
                value: b"b".to_vec(),
            };
            let _ = raft.client_write(Proposal::internal(command)).await;
        });
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let appended = loop {
        let last = replica
            .raft
            .metrics()
            .borrow_watched()
            .last_log_index
            .unwrap_or(0);
        if last >= committed + BURST || Instant::now() > deadline {
            break last.saturating_sub(committed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(replica);
    // What the leader appended, as its log holds it; a clean stop keeps all of it.
    let last = committed + appended;
    let appended_entries = cluster
        .running(leader)
        .node
        .engine()
        .log_store(shard)
        .try_get_log_entries(committed + 1..=last)
        .await
        .context("read the burst back from the leader's log")?;
    let keys: Vec<Vec<u8>> = appended_entries
        .iter()
        .filter_map(|entry| match &entry.payload {
            EntryPayload::Normal(Proposal {
                command: Command::Put { key, .. },
                ..
            }) if key.starts_with(b"burst-") => Some(key.clone()),
            _ => None,
        })
        .collect();
    cluster.kill_node(leader).await;
    proposals.shutdown().await;
    for &other in all.iter().filter(|n| n.0 != leader) {
        network.reconnect(NodeId(leader), other);
    }
    cluster.start_node(leader).await?;
    // Give it the election it is the only one able to win, then heal.
    let deadline = Instant::now() + Duration::from_secs(30);
    let replica = cluster.running(leader).node.replica(shard).context("restarted")?;
    let mut burst_committed = false;
    while Instant::now() < deadline {
        let metrics = replica.raft.metrics().borrow_watched().clone();
        if metrics.local_committed.map_or(0, |id| id.index) >= last {
            burst_committed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    network.heal();
    let outcome = if burst_committed {
        "committed"
    } else {
        "not known committed"
    };
    let summary = format!(
        "burst of {appended} entries ({} burst keys{}) on isolated leader {leader}, {outcome}",
        keys.len(),
        if appended > 4096 {
            ", past the old 4096 cap"
        } else {
            ""
        }
    );
    Ok((summary, if burst_committed { keys } else { Vec::new() }))
}

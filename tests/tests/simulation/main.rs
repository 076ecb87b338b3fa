//! Seeded fault injection in one process: three nodes with real engines (RocksDB in temp dirs) and
//! real Raft, talking over the in-memory network, go through a random schedule of partitions (one
//! way and both ways), holds, message loss, delay and reordering, node crashes and restarts, shard
//! splits, and (in some seeds) a leader that appends a burst of thousands of entries it cannot
//! commit and then wins a new term. In one seed in four a read-replica node joins first (a learner
//! of every shard, which the faults reach like any node, and which one fault cuts off right after
//! it applied a split, for two seconds after its new replica of the child started empty, so reads
//! at every level meet that replica), and in one in five the trimmer that
//! purges the log from before a split pauses until the end (as in the moments after a split), so
//! replicas added meanwhile meet a leader that still holds that log. In odd seeds idle shards go
//! quiet after 300 ms (`node::quiesce`), so quiet replicas meet the same faults.
//!
//! Concurrent clients work all along over real gRPC: reads, puts, compare-and-swaps and deletes
//! on shared keys (`run_worker`), and on keys of their own, puts, batches whose keys land on any
//! shards and on both sides of split points, and reads at every consistency level through a
//! session (`run_level_worker`).
//!
//! Membership seeds run four nodes, and their schedules also move replicas (`MoveReplica` to a
//! random node, as an operator would; the controller then balances the nodes again with moves of
//! its own) and split shards (`SplitShard` of a random shard), so moves and splits meet crashes,
//! partitions and loss at every step; half of them keep a read replica of every shard too, and one
//! fault pauses the split log trimmer, writes a batch across the coming split point, splits the
//! shard, moves a replica of the parent, and crashes the leader that added it (another leader,
//! holding the log from before the split, must start the new replica).
//!
//! After the schedule everything heals and each seed must show: every acknowledged write present,
//! a linearizable history (operations recorded exactly as their results say: done, certainly not
//! applied, or maybe applied; replica-linearizable reads included), every read below it holding
//! its level's guarantee (`ringkv_tests::levels`: session, bounded staleness, eventual), no valid
//! request refused as bad input, and identical replicas (the replica check, request-id tables
//! included).
//!
//! Environment:
//! - `RINGKV_SIM_SEEDS=N` runs seeds 0..N (default 100);
//! - `RINGKV_SIM_SEED=S` runs seed S alone (a failure prints its seed);
//! - `RINGKV_SIM_MEMBERSHIP_SEEDS=N` runs membership seeds 0..N (default 16), and
//!   `RINGKV_SIM_MEMBERSHIP_SEED=S` membership seed S alone;
//! - `RINGKV_SIM_BUG=NAME` switches a known bug back on in every engine (`ringkv_engine::KNOWN_BUGS`),
//!   to show the suite catches it: `log-read-cap` (the burst seeds fail), `accept-below-floor`
//!   (membership seeds whose split-move-crash fault finds the pre-split log: replicas differ),
//!   `bounded-from-heartbeats` (bounded reads older than their bound).
//!
//! The schedule and every random choice of the network follow the seed; thread interleavings do
//! not, so a seed replays the same faults but not always the same history.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use openraft::EntryPayload;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::storage::RaftLogReader;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_client::{BatchOp, Client, ClientConfig, Consistency, ReadOptions, ReplicaSelection, Session};
use ringkv_engine::{Command, EngineOptions, NodeId, Proposal, ShardId};
use ringkv_server::node::placement::Placement;
use ringkv_server::transport::MemoryNetwork;
use ringkv_tests::levels::{Level, LevelHistory, PutOutcome};
use ringkv_tests::linearizability::{self, History, Verdict};
use ringkv_tests::local_cluster::TransportKind;
use ringkv_tests::workload::{LevelReport, WorkerReport, run_level_worker, run_worker};
use ringkv_tests::{LocalCluster, assert_replicas_identical};

/// Nodes of a seed; membership seeds have one more, so a replica has somewhere to move.
const NODES: u64 = 3;
const MEMBERSHIP_NODES: u64 = 4;
/// Membership seeds draw their schedule from `seed ^ MEMBERSHIP_SALT`, so they differ from the
/// plain seed of the same number.
const MEMBERSHIP_SALT: u64 = 0x6d65_6d62;
const SHARDS: u32 = 2;
const WORKERS: usize = 3;
const KEYS: usize = 4;
/// Level workers (puts, batches, reads at every level, each with its own session) and their keys.
const LEVEL_WORKERS: usize = 2;
const LEVEL_KEYS: usize = 16;
/// One plain seed in this many has a read-replica node join first; one in `TRIM_PAUSE_EVERY`
/// pauses the split log trimmer until the faults end.
const READ_REPLICA_EVERY: u64 = 4;
const TRIM_PAUSE_EVERY: u64 = 5;
const STEPS: usize = 6;
/// How long the read-replica node stays cut off with an empty replica of a split's child, and how
/// long the fault waits for that replica to start.
const EMPTY_CHILD_EXPOSED: Duration = Duration::from_secs(2);
const EMPTY_CHILD_WAIT: Duration = Duration::from_secs(10);
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
    if let Ok(bug) = std::env::var("RINGKV_SIM_BUG") {
        options
            .faults
            .enable_bug(&bug)
            .expect("RINGKV_SIM_BUG names a known bug");
    }
    options
}

/// Runs every seed of `part`; fails listing each failed seed and how to replay it.
async fn run_part(part: u64) {
    run_seeds(seeds(part), false).await;
}

fn membership_seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("RINGKV_SIM_MEMBERSHIP_SEED") {
        return vec![seed.parse().expect("RINGKV_SIM_MEMBERSHIP_SEED is a number")];
    }
    if std::env::var("RINGKV_SIM_SEED").is_ok() {
        return Vec::new();
    }
    let count: u64 = std::env::var("RINGKV_SIM_MEMBERSHIP_SEEDS")
        .ok()
        .map(|n| n.parse().expect("RINGKV_SIM_MEMBERSHIP_SEEDS is a number"))
        .unwrap_or(16);
    (0..count).collect()
}

async fn run_seeds(seeds: Vec<u64>, membership: bool) {
    let kind = if membership { "membership seed" } else { "seed" };
    let replay = if membership {
        "RINGKV_SIM_MEMBERSHIP_SEED"
    } else {
        "RINGKV_SIM_SEED"
    };
    let mut failures = Vec::new();
    for seed in seeds {
        let started = Instant::now();
        match tokio::time::timeout(Duration::from_secs(300), run_seed(seed, membership)).await {
            Ok(Ok(summary)) => eprintln!("{kind} {seed}: ok in {:.1?}: {summary}", started.elapsed()),
            Ok(Err(error)) => {
                eprintln!("{kind} {seed}: FAILED after {:.1?}: {error:#}", started.elapsed());
                failures.push(format!("{kind} {seed}: {error:#}"));
            }
            Err(_) => {
                eprintln!("{kind} {seed}: FAILED: did not finish within 300 s");
                failures.push(format!("{kind} {seed}: did not finish within 300 s"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} seeds failed; replay one with {replay}=<seed> cargo test -p ringkv-tests --test simulation -- --nocapture\n{}",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_seeds_move_replicas_through_the_faults() {
    run_seeds(membership_seeds(), true).await;
}

/// One seed: start, fault, heal, check. Returns a one-line summary.
async fn run_seed(seed: u64, membership: bool) -> anyhow::Result<String> {
    let salted = if membership { seed ^ MEMBERSHIP_SALT } else { seed };
    let mut rng = StdRng::seed_from_u64(salted);
    // The burst scenario assumes three nodes.
    let burst = !membership && seed % BURST_EVERY == 3;
    let read_replica_node = !membership && !burst && seed % READ_REPLICA_EVERY == 1;
    let pause_trim = seed % TRIM_PAUSE_EVERY == 2;
    let voters = if membership { MEMBERSHIP_NODES } else { NODES };
    let nodes = voters + u64::from(read_replica_node);
    let network = MemoryNetwork::new(salted);
    let snapshots = rng.random_bool(0.5);
    let mut cluster = LocalCluster::start_with(
        voters as usize,
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
    let mut setup = Vec::new();
    if read_replica_node {
        cluster.join_node("read-replica", |_| {}).await?;
        setup.push("read-replica node 4".to_string());
    }
    if membership && rng.random_bool(0.5) {
        let client = cluster.client().await?;
        ringkv_tests::admin(&client).set_read_replicas(1).await?;
        setup.push("read_replicas 1".to_string());
    }
    let faults_switches = cluster.engine_options.faults.clone();
    if pause_trim {
        faults_switches
            .pause_split_log_trim
            .store(true, Ordering::Relaxed);
        setup.push("split log trim paused".to_string());
    }

    let history = History::new();
    let levels = LevelHistory::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for worker_id in 0..WORKERS {
        let client = cluster.client_with_timeout(Duration::from_secs(4)).await?;
        let (history, stop) = (history.clone(), stop.clone());
        workers.spawn(async move { run_worker(worker_id, client, history, stop, "sim", KEYS, seed).await });
    }
    let mut level_workers = tokio::task::JoinSet::new();
    for worker_id in 0..LEVEL_WORKERS {
        // Maps refreshed often, so new replicas (a child's read replica) are read soon after
        // they are placed.
        let mut config = ClientConfig::new(cluster.endpoints());
        config.request_timeout = Duration::from_secs(4);
        config.map_refresh_interval = Duration::from_millis(300);
        let client = Client::with_config(config).await?.with_session(Session::new());
        let (history, levels, stop) = (history.clone(), levels.clone(), stop.clone());
        level_workers.spawn(async move {
            run_level_worker(worker_id, client, history, levels, stop, "sim", LEVEL_KEYS, seed).await
        });
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
        let fault = random_fault(
            &mut rng,
            &mut cluster,
            &network,
            &levels,
            &mut down,
            nodes,
            membership,
        )
        .await?;
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
    faults_switches
        .pause_split_log_trim
        .store(false, Ordering::Relaxed);
    for node in std::mem::take(&mut down) {
        cluster.start_node(node).await?;
    }
    if membership {
        moves_settled(&cluster, nodes).await?;
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
    let mut level_report = LevelReport::default();
    while let Some(result) = level_workers.join_next().await {
        let one = result?;
        level_report.completed += one.completed;
        level_report.batches_across_shards += one.batches_across_shards;
        level_report.refused_as_invalid.extend(one.refused_as_invalid);
    }
    if !level_report.refused_as_invalid.is_empty() {
        bail!(
            "valid requests were refused as bad input: {}",
            level_report.refused_as_invalid.join("; ")
        );
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
    let violations = levels.check();
    if !violations.is_empty() {
        bail!(
            "reads below linearizable broke their level's guarantee:\n  {}",
            violations.join("\n  ")
        );
    }
    let (session_reads, bounded_reads, eventual_reads) = levels.counts();
    assert_replicas_identical(&client).await?;
    for node in 1..=nodes {
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
        "{} operations ({} unknown, {} not applied), {} own writes verified, {session_reads} session, \
         {bounded_reads} bounded and {eventual_reads} eventual reads checked, {} batches across shards, \
         replicas identical; setup: [{}]; faults: {}",
        operations.len(),
        report.unknown,
        report.not_applied,
        report.acknowledged.len(),
        level_report.batches_across_shards,
        setup.join(", "),
        faults.join(", ")
    );
    cluster.shutdown().await;
    Ok(summary)
}

/// Waits until no move is in progress or pending (the controller has nothing left to do), every
/// node runs exactly the replicas the map places on it, and every group's Raft membership is the
/// map's voters and read replicas (no learner left over).
async fn moves_settled(cluster: &LocalCluster, nodes: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let map = cluster.running(1).node.shard_map();
        let placed_everywhere = (1..=nodes).all(|n| {
            let running = cluster.running(n).node.status().replicas;
            let placed = map.groups().filter(|g| g.replica_on(NodeId(n)).is_some()).count();
            running.len() == placed
                && running.iter().all(|r| {
                    map.shard(ShardId(r.shard_id))
                        .and_then(|g| g.replica_on(NodeId(n)))
                        .is_some_and(|p| p.replica_id.0 == r.replica_id)
                })
        });
        let settled =
            map.moves.is_empty() && map.splits.is_empty() && map.next_placement_step(usize::MAX).is_none();
        if settled && placed_everywhere {
            // The map and Raft agree: every group's leader has exactly the map's voters.
            let mut disagree = Vec::new();
            for group in map.groups() {
                let leader = (1..=nodes).find_map(|n| {
                    let replica = cluster.running(n).node.replica(group.id)?;
                    let metrics = replica.raft.metrics().borrow_watched().clone();
                    (metrics.state == openraft::ServerState::Leader).then_some(metrics)
                });
                let Some(metrics) = leader else { continue };
                let membership = metrics.membership_config.membership();
                let voters: BTreeSet<u64> = membership.voter_ids().map(|id| id.0).collect();
                let learners: BTreeSet<u64> = membership.learner_ids().map(|id| id.0).collect();
                let mapped: BTreeSet<u64> = group.voters.iter().map(|v| v.replica_id.0).collect();
                // With no move left, the map's learners are read replicas, which stay learners.
                let mapped_learners: BTreeSet<u64> = group.learners.iter().map(|l| l.replica_id.0).collect();
                if voters != mapped || learners != mapped_learners {
                    disagree.push(format!(
                        "shard {}: map voters {mapped:?} learners {mapped_learners:?}, Raft voters {voters:?} \
                         learners {learners:?}",
                        group.id
                    ));
                }
            }
            if disagree.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the map and Raft membership disagree: {}", disagree.join("; "));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        if Instant::now() > deadline {
            bail!(
                "moves did not settle within 120 s after healing: moves {:?}, splits {:?}, next step {:?}, every node runs its placed replicas: {placed_everywhere}",
                map.moves,
                map.splits,
                map.next_placement_step(usize::MAX)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asks the cluster to move a random replica of a random shard to a random node without one.
async fn random_move(rng: &mut StdRng, cluster: &LocalCluster, nodes: u64) -> anyhow::Result<String> {
    let client = cluster.client_with_timeout(Duration::from_secs(2)).await?;
    let _ = client.refresh_shard_map().await;
    let map = client.shard_map().await;
    let shard = &map.shards[rng.random_range(0..map.shards.len())];
    let from = shard.voters[rng.random_range(0..shard.voters.len())].node_id;
    let targets: Vec<NodeId> = (1..=nodes)
        .map(NodeId)
        .filter(|n| shard.replica_on(*n).is_none())
        .collect();
    if targets.is_empty() {
        // Every node holds a replica of it already: a move of it is under way.
        return Ok(format!("no move ({} is moving)", shard.id));
    }
    let to = targets[rng.random_range(0..targets.len())];
    Ok(
        match ringkv_tests::admin(&client)
            .move_replica(shard.id, from, to)
            .await
        {
            Ok(_) => format!("move {} {from}->{to}", shard.id),
            Err(ringkv_client::Error::InvalidArgument(_)) => {
                format!("move {} {from}->{to} refused", shard.id)
            }
            Err(_) => format!("move {} {from}->{to} unanswered", shard.id),
        },
    )
}

/// Splits a random shard, moves a replica of the parent to a node without one, and crashes the
/// parent's leader once it has added the new replica: another replica, which may still hold the
/// log from before the split, has to start it. The split log trimmer pauses until the seed heals
/// (as in the moments after a split), and the parent first takes a batch with a key on each side
/// of the split point: a new replica that replayed the log from before the split under the
/// narrowed arc would refuse that batch whole, and differ from the others at the replica check.
async fn split_move_and_crash(
    rng: &mut StdRng,
    cluster: &mut LocalCluster,
    network: &MemoryNetwork,
    down: &mut BTreeSet<u64>,
    nodes: u64,
) -> anyhow::Result<String> {
    if !down.is_empty() {
        return Ok("no split-move-crash (a node is down)".into());
    }
    cluster
        .engine_options
        .faults
        .pause_split_log_trim
        .store(true, Ordering::Relaxed);
    let client = cluster.client_with_timeout(Duration::from_secs(2)).await?;
    let admin = ringkv_tests::admin(&client);
    let _ = admin.refresh_shard_map().await;
    let map = admin.shard_map().await;
    let parent = &map.shards[rng.random_range(0..map.shards.len())];
    let shard = parent.id;
    let straddling = straddling_batch(parent.arc, rng.random());
    // Its outcome does not matter: whatever applied must be on every replica.
    let _ = client.batch(straddling).await;
    if admin.split_shard(shard).await.is_err() {
        return Ok(format!("split {shard} refused or unanswered"));
    }
    let Ok(Some(map)) = admin.wait_for_split(shard, Duration::from_secs(5)).await else {
        return Ok(format!("split {shard} (unfinished)"));
    };
    // The new replica of the parent: the controller's own move if it balances one onto a node
    // (often right after a split), else one asked for here. Its node is cut off from the others
    // until the leader that adds it has crashed, so that leader sends it nothing.
    let others = |node: NodeId| -> Vec<NodeId> { (1..=nodes).map(NodeId).filter(|&n| n != node).collect() };
    let cut_off = |node: NodeId| network.partition(&[node], &others(node));
    let mut map = map;
    let mut asked = None;
    let mut cut = None;
    let deadline = Instant::now() + Duration::from_secs(3);
    let (learner, to, what) = loop {
        let give_up = |why: &str| {
            if let Some(node) = cut {
                reconnect(network, node, &others(node));
            }
            Ok(format!("split {shard} ({why})"))
        };
        let Some(group) = map.shard(shard) else {
            return give_up("shard gone");
        };
        if let Some(moving) = map.move_of(shard) {
            if moving.to == ringkv_map::Replica::NONE {
                return give_up("a replica of it is leaving");
            }
            let what = asked.unwrap_or_else(|| {
                format!(
                    "the controller's move {}->{}",
                    moving.from.node_id, moving.to.node_id
                )
            });
            cut_off(moving.to.node_id);
            break (moving.to.replica_id, moving.to.node_id, what);
        }
        let targets: Vec<NodeId> = (1..=nodes)
            .map(NodeId)
            .filter(|n| group.replica_on(*n).is_none())
            .collect();
        if asked.is_none() && !targets.is_empty() {
            let from = group.voters[rng.random_range(0..group.voters.len())].node_id;
            let to = targets[rng.random_range(0..targets.len())];
            asked = Some(format!("move {from}->{to}"));
            cut_off(to);
            cut = Some(to);
            match admin.move_replica(shard, from, to).await {
                Ok(moving) => map = moving,
                Err(_) => {
                    reconnect(network, to, &others(to));
                    return Ok(format!("split {shard}, move {from}->{to} refused or unanswered"));
                }
            }
            continue;
        }
        if Instant::now() > deadline {
            return give_up("no move of the parent began");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = admin.refresh_shard_map().await;
        map = admin.shard_map().await;
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let leader = (1..=nodes).filter(|&n| cluster.is_running(n)).find(|&n| {
            cluster.running(n).node.replica(shard).is_some_and(|replica| {
                let metrics = replica.raft.metrics().borrow_watched().clone();
                metrics.state == openraft::ServerState::Leader
                    && metrics
                        .committed_membership_config
                        .membership()
                        .learner_ids()
                        .any(|id| id == learner)
            })
        });
        if let Some(leader) = leader {
            cluster.kill_node(leader).await;
            down.insert(leader);
            reconnect(network, to, &others(to));
            return Ok(format!("split {shard}, {what}, crash its leader {leader}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reconnect(network, to, &others(to));
    Ok(format!("split {shard}, {what} (learner not added in time)"))
}

/// Keys of a handoff session.
const HANDOFF_KEYS: usize = 8;
/// Session ids of handoff sessions, apart from the level workers'.
static HANDOFF_SESSIONS: AtomicUsize = AtomicUsize::new(1_000);

/// A session that writes keys a coming split moves to the child, then does nothing with the
/// child until it reads them back there: so the child's replicas see only the token it carries
/// over from the parent (`Session::token_in`), which must still hold them to its writes. Its puts
/// and reads go to the level checker under a session id of its own.
struct Handoff {
    client: Client,
    session: usize,
    keys: Vec<String>,
}

impl Handoff {
    /// Writes `HANDOFF_KEYS` keys of the half of `arc` a split gives the child.
    async fn write(
        cluster: &LocalCluster,
        levels: &LevelHistory,
        arc: ringkv_core::HashRange,
    ) -> anyhow::Result<Handoff> {
        let mut config = ClientConfig::new(cluster.endpoints());
        config.request_timeout = Duration::from_secs(2);
        config.map_refresh_interval = Duration::from_millis(300);
        let client = Client::with_config(config).await?.with_session(Session::new());
        let session = HANDOFF_SESSIONS.fetch_add(1, Ordering::Relaxed);
        let at = arc.start + (arc.end - arc.start) / 2 + 1;
        let keys: Vec<String> = (0u64..)
            .map(|i| format!("sim-handoff-{session}-{i}"))
            .filter(|key| {
                let hash = ringkv_core::key_hash(key.as_bytes());
                arc.contains(hash) && hash >= at
            })
            .take(HANDOFF_KEYS)
            .collect();
        for key in &keys {
            let value = format!("{key}-written");
            let invoked = levels.now();
            let outcome = match client.put(key, &value).await {
                Ok(version) => PutOutcome::Acknowledged { version },
                Err(error) if error.may_have_applied() => PutOutcome::MaybeApplied,
                Err(_) => PutOutcome::NotApplied,
            };
            levels.put(session, key.as_bytes(), value.as_bytes(), invoked, outcome);
        }
        Ok(Handoff {
            client,
            session,
            keys,
        })
    }

    /// Reads every key back at session level from `node`'s replica, twice.
    async fn read_at(&self, node: NodeId, levels: &LevelHistory) {
        let _ = self.client.refresh_shard_map().await;
        let options = ReadOptions::new(Consistency::Session).with_selection(ReplicaSelection::Node(node));
        for key in self.keys.iter().chain(&self.keys) {
            let invoked = levels.now();
            if let Ok((found, served)) = self.client.get_traced(key, options).await {
                levels.read(
                    self.session,
                    key.as_bytes(),
                    Level::Session,
                    invoked,
                    found.map(|v| (v.value.to_vec(), v.version)),
                    (served.node_id.0, served.replica_id.0),
                );
            }
        }
    }
}

/// Restores every link between `node` and `others`.
fn reconnect(network: &MemoryNetwork, node: NodeId, others: &[NodeId]) {
    for &other in others {
        network.reconnect(node, other);
    }
}

/// Two puts, one on each side of the point where a split of `arc` cuts it (its midpoint, as
/// `ShardMap::begin_split` places it), under keys unique to `tag`.
fn straddling_batch(arc: ringkv_core::HashRange, tag: u64) -> Vec<BatchOp> {
    let at = arc.start + (arc.end - arc.start) / 2 + 1;
    let key_where = |below: bool| {
        (0u64..)
            .map(|i| format!("sim-straddle-{tag:x}-{i}"))
            .find(|key| {
                let hash = ringkv_core::key_hash(key.as_bytes());
                arc.contains(hash) && (hash < at) == below
            })
            .expect("an arc wide enough to split holds keys on both sides")
    };
    [key_where(true), key_where(false)]
        .into_iter()
        .map(|key| BatchOp::Put {
            value: Bytes::from(format!("{key}-value")),
            key: Bytes::from(key),
        })
        .collect()
}

/// Splits a random shard and, once the read-replica node (4) has applied the split, cuts that node
/// off: the replica of the child the controller then gives it starts empty and stays so, while
/// clients still reach it. The cut lasts until that replica has run for `EMPTY_CHILD_EXPOSED`
/// (at most `EMPTY_CHILD_WAIT` after the cut), so reads at every level meet it.
async fn split_then_isolate_reader(
    rng: &mut StdRng,
    cluster: &LocalCluster,
    network: &MemoryNetwork,
    levels: &LevelHistory,
) -> anyhow::Result<String> {
    let client = cluster.client_with_timeout(Duration::from_secs(2)).await?;
    let admin = ringkv_tests::admin(&client);
    let _ = admin.refresh_shard_map().await;
    let map = admin.shard_map().await;
    let parent = &map.shards[rng.random_range(0..map.shards.len())];
    let shard = parent.id;
    let handoff = Handoff::write(cluster, levels, parent.arc).await?;
    let Ok(begun) = admin.split_shard(shard).await else {
        return Ok(format!("split {shard} refused or unanswered"));
    };
    let Some(at) = begun.split_of(shard).map(|split| split.at) else {
        return Ok(format!("split {shard} (over already)"));
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let applied = loop {
        let applied = cluster.is_running(4)
            && cluster
                .running(4)
                .node
                .replica(shard)
                .is_some_and(|replica| replica.range.get().end < at);
        if applied || Instant::now() > deadline {
            break applied;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let all: Vec<NodeId> = (1..=3).map(NodeId).collect();
    network.partition(&[NodeId(4)], &all);
    let child = begun.split_of(shard).map(|split| split.child);
    let deadline = Instant::now() + EMPTY_CHILD_WAIT;
    let started = loop {
        let started = cluster.is_running(4)
            && child.is_some_and(|child| cluster.running(4).node.replica(child).is_some());
        if started || Instant::now() > deadline {
            break started;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if started {
        handoff.read_at(NodeId(4), levels).await;
        tokio::time::sleep(EMPTY_CHILD_EXPOSED).await;
    }
    Ok(format!(
        "split {shard}, then isolate 4{}{}",
        if applied {
            ""
        } else {
            " (before it applied the split)"
        },
        if started {
            ", which ran an empty replica of the child"
        } else {
            ""
        }
    ))
}

/// Asks the cluster to split a random shard.
async fn random_split(rng: &mut StdRng, cluster: &LocalCluster) -> anyhow::Result<String> {
    let client = cluster.client_with_timeout(Duration::from_secs(2)).await?;
    let _ = client.refresh_shard_map().await;
    let map = client.shard_map().await;
    let shard = map.shards[rng.random_range(0..map.shards.len())].id;
    Ok(match ringkv_tests::admin(&client).split_shard(shard).await {
        Ok(_) => format!("split {shard}"),
        Err(ringkv_client::Error::InvalidArgument(_)) => format!("split {shard} refused"),
        Err(_) => format!("split {shard} unanswered"),
    })
}

/// Injects one random fault (or, in membership seeds, a move or a split too); returns what it did.
async fn random_fault(
    rng: &mut StdRng,
    cluster: &mut LocalCluster,
    network: &MemoryNetwork,
    levels: &LevelHistory,
    down: &mut BTreeSet<u64>,
    nodes: u64,
    membership: bool,
) -> anyhow::Result<String> {
    let node = rng.random_range(1..=nodes);
    let other = (node % nodes) + 1;
    let rest: Vec<NodeId> = (1..=nodes).filter(|&n| n != node).map(NodeId).collect();
    // Plain seeds with a read-replica node (node 4) also cut it off while a shard splits, so its
    // new replica of the child stays empty while clients can still reach it; membership seeds
    // also split a shard, move a replica of the parent, and crash the leader that added it.
    let read_replica_node = !membership && nodes == 4;
    let kinds = if membership {
        14
    } else if read_replica_node {
        9
    } else {
        8
    };
    Ok(match rng.random_range(0..kinds) {
        8 if read_replica_node => split_then_isolate_reader(rng, cluster, network, levels).await?,
        12 | 13 if membership => split_move_and_crash(rng, cluster, network, down, nodes).await?,
        7 if !membership => {
            let split = random_split(rng, cluster).await?;
            let fault = Box::pin(random_fault(rng, cluster, network, levels, down, nodes, false)).await?;
            format!("{split} + {fault}")
        }
        10.. => {
            let split = random_split(rng, cluster).await?;
            // And a fault on top, so the split meets it.
            let fault = Box::pin(random_fault(rng, cluster, network, levels, down, nodes, false)).await?;
            format!("{split} + {fault}")
        }
        7.. => {
            let moved = random_move(rng, cluster, nodes).await?;
            // And a fault on top, so the move meets it.
            let fault = Box::pin(random_fault(rng, cluster, network, levels, down, nodes, false)).await?;
            format!("{moved} + {fault}")
        }
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
            network.partition(&[NodeId(other)], &[NodeId((other % nodes) + 1)]);
            network.set_loss(0.1);
            format!("split {other}|{} with loss", (other % nodes) + 1)
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

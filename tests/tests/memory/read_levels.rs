//! Reads below linearizable, served by replicas other than the leader. The in-memory transport's
//! faults make a replica lag (its leader's messages cut) or cut it off; the client reaches every
//! node over real gRPC, and reads at a chosen node first (`ReplicaSelection::Node`) to aim at the
//! replica under test.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use ringkv_client::{Client, Consistency, NodeId as ClientNodeId, ReadOptions, ReplicaSelection, Session};
use ringkv_engine::{NodeId, ShardId};
use ringkv_server::node::ReadLevel;
use ringkv_server::transport::MemoryNetwork;
use ringkv_tests::linearizability::{self, History};
use ringkv_tests::local_cluster::TransportKind;
use ringkv_tests::workload::{WorkerReport, run_worker};
use ringkv_tests::{LocalCluster, assert_replicas_identical};

const SHARD: ShardId = ShardId(1);

/// A 3-node, 1-shard cluster over `network`; returns it with the shard's leader and the two
/// other nodes.
async fn one_shard(network: &Arc<MemoryNetwork>) -> anyhow::Result<(LocalCluster, u64, u64, u64)> {
    let cluster = LocalCluster::start(3, 1, TransportKind::Memory(network.clone()), |_| {}).await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let leader = cluster.leader_of(1, SHARD)?;
    let others: Vec<u64> = (1..=3).filter(|&n| n != leader).collect();
    Ok((cluster, leader, others[0], others[1]))
}

fn at(consistency: Consistency, node: u64) -> ReadOptions {
    ReadOptions::new(consistency).with_selection(ReplicaSelection::Node(ClientNodeId(node)))
}

/// Reads `key` at `options` until `node` serves it (a replica that refused a read moments ago is
/// tried last for a while), within 30 s; returns the value it served.
async fn read_served_by(
    client: &Client,
    key: &[u8],
    options: ReadOptions,
    node: u64,
) -> anyhow::Result<Bytes> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (value, served) = client.get_served(key, options).await?;
        if served.0 == node {
            return value.map(|v| v.value).context("the key exists");
        }
        if Instant::now() > deadline {
            bail!(
                "node {node} did not serve a read at {:?} within 30 s",
                options.consistency
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_reads_its_own_write_through_a_lagging_replica() -> anyhow::Result<()> {
    let network = MemoryNetwork::new(21);
    let (cluster, leader, lagging, _) = one_shard(&network).await?;
    let key = cluster.keys_of_shard(leader, SHARD, "session-", 1).remove(0);
    let client = cluster.client().await?;
    client.put(&key, "v1").await?;
    cluster.wait_caught_up(Duration::from_secs(30)).await?;

    // The lagging replica stops hearing from its leader; the write commits without it.
    network.cut(NodeId(leader), NodeId(lagging));
    let session = Session::new();
    let writer = client.with_session(session.clone());
    writer.put(&key, "v2").await?;

    // Without the session, the lagging replica answers what it has: it really lags.
    let (stale, served) = client
        .get_served(&key, at(Consistency::Eventual, lagging))
        .await?;
    assert_eq!(served.0, lagging);
    assert_eq!(
        stale.map(|v| v.value),
        Some(Bytes::from("v1")),
        "the replica lags"
    );

    // The session read, asked at the lagging replica first, returns the session's write: the
    // replica waits briefly, says it is behind, and the client reads at another replica.
    let (value, served) = writer.get_served(&key, at(Consistency::Session, lagging)).await?;
    assert_eq!(
        value.map(|v| v.value),
        Some(Bytes::from("v2")),
        "read your writes"
    );
    assert_ne!(
        served.0, lagging,
        "the lagging replica cannot have served the write"
    );

    // Another process holding the session (passed as text) reads the write too.
    let elsewhere = cluster
        .client()
        .await?
        .with_session(Session::decode(&session.encode())?);
    let (value, _) = elsewhere
        .get_served(&key, at(Consistency::Session, lagging))
        .await?;
    assert_eq!(value.map(|v| v.value), Some(Bytes::from("v2")));

    // Healed, the replica catches up and serves the session itself.
    network.heal();
    let value = read_served_by(&writer, &key, at(Consistency::Session, lagging), lagging).await?;
    assert_eq!(value, Bytes::from("v2"));
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_never_reads_back_in_time_across_replicas() -> anyhow::Result<()> {
    let network = MemoryNetwork::new(22);
    let (cluster, leader, lagging, _) = one_shard(&network).await?;
    let key = cluster.keys_of_shard(leader, SHARD, "monotonic-", 1).remove(0);
    let client = cluster.client().await?;
    client.put(&key, "0").await?;
    cluster.wait_caught_up(Duration::from_secs(30)).await?;

    // A writer outside the session overwrites the key with a growing counter.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, key, stop) = (client.clone(), key.clone(), stop.clone());
        tokio::spawn(async move {
            // Every attempt writes a larger number, so the key only ever grows, whatever a
            // failed put did (a failure may still have applied). Returns the acknowledged puts.
            let (mut next, mut acknowledged) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) && next < 100_000 {
                next += 1;
                if client.put(&key, next.to_string()).await.is_ok() {
                    acknowledged += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            acknowledged
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One replica falls behind and stays behind for a while, then catches up again.
    network.cut(NodeId(leader), NodeId(lagging));

    let reader = cluster.client().await?.with_session(Session::new());
    let spread = ReadOptions::new(Consistency::Session).with_selection(ReplicaSelection::Spread);
    let mut last: u64 = 0;
    let mut served_by = std::collections::BTreeSet::new();
    for read in 0..300 {
        if read == 200 {
            network.heal();
        }
        let (value, served) = reader.get_served(&key, spread).await?;
        let seen: u64 = std::str::from_utf8(&value.context("the key exists")?.value)?.parse()?;
        assert!(
            seen >= last,
            "read {read} at node {} went back in time: {seen} after {last}",
            served.0
        );
        last = seen;
        served_by.insert(served.0);
    }
    stop.store(true, Ordering::Relaxed);
    let acknowledged = writer.await?;
    assert!(
        last > 0 && acknowledged > 0,
        "the writer ran: {acknowledged} acknowledged writes"
    );
    assert!(
        served_by.len() >= 2,
        "reads were spread over replicas: {served_by:?}"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_cut_off_past_the_bound_refuses_and_the_read_is_served_elsewhere() -> anyhow::Result<()> {
    let network = MemoryNetwork::new(23);
    let (cluster, leader, cut, other) = one_shard(&network).await?;
    let key = cluster.keys_of_shard(leader, SHARD, "bounded-", 1).remove(0);
    let client = cluster.client().await?;
    client.put(&key, "v1").await?;
    cluster.wait_caught_up(Duration::from_secs(30)).await?;
    let bound = Duration::from_millis(800);
    let bounded = at(Consistency::Bounded(bound), cut);

    // Within the bound, the replica answers itself.
    let value = read_served_by(&client, &key, bounded, cut).await?;
    assert_eq!(value, Bytes::from("v1"));

    // Cut off from the leader (and everyone) for longer than the bound.
    network.partition(&[NodeId(cut)], &[NodeId(leader), NodeId(other)]);
    client.put(&key, "v2").await?;
    tokio::time::sleep(bound * 2).await;
    let node = cluster.running(cut).node.clone();
    let replica = node.replica(SHARD).context("the cut node hosts the shard")?;
    let refused = node
        .read_barrier(
            &replica,
            ReadLevel::Bounded { max_staleness: bound },
            Duration::from_secs(2),
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(ringkv_server::error::ServiceError::ReplicaBehind { .. })
        ),
        "the cut-off replica must refuse with ReplicaBehind: {refused:?}"
    );
    // An eventual read there still answers, with what it has.
    let (stale, served) = client.get_served(&key, at(Consistency::Eventual, cut)).await?;
    assert_eq!((served.0, stale.map(|v| v.value)), (cut, Some(Bytes::from("v1"))));
    // The client's bounded read succeeds elsewhere, and sees the new value.
    let (value, served) = client.get_served(&key, bounded).await?;
    assert_ne!(served.0, cut, "the cut-off replica served a bounded read");
    assert_eq!(value.map(|v| v.value), Some(Bytes::from("v2")));

    // Healed, it answers within the bound again.
    network.heal();
    let value = read_served_by(&client, &key, bounded, cut).await?;
    assert_eq!(value, Bytes::from("v2"));
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eventual_reads_are_answered_while_the_shard_has_no_leader() -> anyhow::Result<()> {
    let network = MemoryNetwork::new(24);
    let (cluster, leader, _, _) = one_shard(&network).await?;
    let keys = cluster.keys_of_shard(leader, SHARD, "eventual-", 5);
    let client = cluster.client().await?;
    for (i, key) in keys.iter().enumerate() {
        client.put(key, format!("v{i}")).await?;
    }
    cluster.wait_caught_up(Duration::from_secs(30)).await?;

    // Every node cut from every other: no majority anywhere, so no leader can serve.
    let nodes: Vec<NodeId> = (1..=3).map(NodeId).collect();
    for (i, a) in nodes.iter().enumerate() {
        network.partition(&[*a], &nodes[i + 1..]);
    }
    // A linearizable read fails once the old leader's lease has run out.
    let short = cluster.client_with_timeout(Duration::from_secs(1)).await?;
    let cut_at = Instant::now();
    while short.get(&keys[0]).await.is_ok() {
        assert!(
            cut_at.elapsed() < Duration::from_secs(30),
            "linearizable reads still served 30 s after the shard lost its majority"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Eventual reads at every replica answer, with the committed values.
    for node in 1..=3 {
        for (i, key) in keys.iter().enumerate() {
            let (value, served) = short.get_served(key, at(Consistency::Eventual, node)).await?;
            assert_eq!(served.0, node, "eventual read of {i} served at node {node}");
            assert_eq!(value.map(|v| v.value), Some(Bytes::from(format!("v{i}"))));
        }
    }
    network.heal();
    cluster.wait_for_leaders(Duration::from_secs(60), false).await?;
    assert_replicas_identical(&client).await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_linearizable_reads_stay_linearizable_through_partitions_and_kills() -> anyhow::Result<()> {
    let network = MemoryNetwork::new(25);
    let mut cluster = LocalCluster::start(3, 4, TransportKind::Memory(network.clone()), |_| {}).await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    // A replica-linearizable read is served by the replica asked, leader or not.
    let probe = cluster.client().await?;
    let leader = cluster.leader_of(1, SHARD)?;
    let follower = (1..=3).find(|&n| n != leader).expect("a follower");
    let key = cluster.keys_of_shard(leader, SHARD, "rlin-probe-", 1).remove(0);
    probe.put(&key, "probe").await?;
    let value = read_served_by(
        &probe,
        &key,
        at(Consistency::ReplicaLinearizable, follower),
        follower,
    )
    .await?;
    assert_eq!(
        value,
        Bytes::from("probe"),
        "the follower's read saw the write just acknowledged"
    );
    let history = History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    // Every read goes to the replicas in turn, leader or not, at replica-linearizable.
    let reads = ReadOptions::new(Consistency::ReplicaLinearizable).with_selection(ReplicaSelection::Spread);
    for worker_id in 0..6 {
        let client = cluster.client().await?.with_read_options(reads);
        let (history, stop) = (history.clone(), stop.clone());
        workers.spawn(async move { run_worker(worker_id, client, history, stop, "rlin", 6, 31).await });
    }
    let phase = Duration::from_secs(3);
    tokio::time::sleep(phase).await;
    // Each node in turn cut off from the others (its replicas keep being asked for reads), then
    // a node killed and restarted.
    for victim in 1..=3u64 {
        let others: Vec<NodeId> = (1..=3).filter(|&n| n != victim).map(NodeId).collect();
        network.partition(&[NodeId(victim)], &others);
        tokio::time::sleep(phase).await;
        network.heal();
        tokio::time::sleep(phase).await;
    }
    cluster.kill_node(2).await;
    tokio::time::sleep(phase).await;
    cluster.start_node(2).await?;
    tokio::time::sleep(phase).await;
    stop.store(true, Ordering::Relaxed);
    let mut report = WorkerReport::default();
    while let Some(result) = workers.join_next().await {
        report.merge(result?);
    }
    let operations = history.operations();
    assert!(
        report.completed > 100,
        "the workload ran: {} operations",
        report.completed
    );
    linearizability::assert_linearizable(&operations, 50_000_000);
    let client = cluster.client().await?;
    cluster.wait_for_leaders(Duration::from_secs(60), false).await?;
    assert_replicas_identical(&client).await?;
    eprintln!(
        "replica-linearizable: {} operations checked ({} reads and writes not applied left out)",
        operations.len(),
        report.not_applied
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_lease_reads_every_linearizable_read_asks_a_quorum() -> anyhow::Result<()> {
    let network = MemoryNetwork::new(26);
    let cluster = LocalCluster::start(3, 1, TransportKind::Memory(network.clone()), |config| {
        config.raft.lease_reads = false;
    })
    .await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let leader = cluster.leader_of(1, SHARD)?;
    let key = cluster.keys_of_shard(leader, SHARD, "no-lease-", 1).remove(0);
    let client = cluster.client().await?;
    client.put(&key, "v").await?;
    // Each read confirms leadership with a round of messages to the followers (ReadIndex); the
    // lease would answer from the leader alone.
    let reads = 50;
    let before = network.shard_messages();
    for _ in 0..reads {
        assert_eq!(client.get(&key).await?.map(|v| v.value), Some(Bytes::from("v")));
    }
    let sent = network.shard_messages() - before;
    assert!(
        sent >= reads,
        "{reads} linearizable reads without the lease sent only {sent} Raft messages"
    );
    cluster.shutdown().await;
    Ok(())
}

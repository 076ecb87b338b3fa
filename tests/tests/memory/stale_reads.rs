//! Reads below linearizable that must not return old data: a bounded-staleness read on a replica
//! that hears from a leader but lags far behind it (a new read replica whose snapshot is still on
//! its way), or that hears only from a deposed leader; and a session read of a key a split moved
//! to a child shard whose replica has nothing yet. Each test aims its reads at the replica under
//! test (`ReplicaSelection::Node`) and checks what the client gets, from whichever replica.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use openraft::async_runtime::watch::WatchReceiver;
use ringkv_client::{Consistency, NodeId as ClientNodeId, ReadOptions, ReplicaSelection, Session};
use ringkv_engine::{Command, NodeId, Proposal, ShardId};
use ringkv_map::ShardMap;
use ringkv_server::transport::MemoryNetwork;
use ringkv_tests::LocalCluster;
use ringkv_tests::local_cluster::TransportKind;

const PARENT: ShardId = ShardId(1);
const CHILD: ShardId = ShardId(2);

fn at(consistency: Consistency, node: u64) -> ReadOptions {
    ReadOptions::new(consistency).with_selection(ReplicaSelection::Node(ClientNodeId(node)))
}

async fn wait_map(
    cluster: &LocalCluster,
    what: &str,
    done: impl Fn(&ShardMap) -> bool,
) -> anyhow::Result<ShardMap> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let map = cluster.running(1).node.shard_map();
        if done(&map) {
            return Ok(map);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within 60 s; moves {:?}", map.moves);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The voter node (1 to 3) whose replica of `shard` leads in a term above `above`.
fn leader_above(cluster: &LocalCluster, shard: ShardId, above: u64) -> Option<(u64, u64)> {
    (1..=3).filter(|&n| cluster.is_running(n)).find_map(|n| {
        let replica = cluster.running(n).node.replica(shard)?;
        let metrics = replica.raft.metrics().borrow_watched().clone();
        (metrics.state == openraft::ServerState::Leader && metrics.current_term > above)
            .then_some((n, metrics.current_term))
    })
}

/// A read replica joins while snapshots crawl (1 KB/s; Raft over gRPC, whose snapshot streams
/// are throttled), so its replica stays empty for minutes while its leader's heartbeats reach it.
/// Before the fix each heartbeat (which carries no previous log id for a replica that matched
/// nothing) counted as a fresh look at the leader's commit index, capped at the replica's empty
/// log: the empty replica answered a bounded read "not found".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bounded_read_is_not_served_by_a_read_replica_still_waiting_for_its_snapshot() -> anyhow::Result<()>
{
    let mut cluster = LocalCluster::start(3, 1, TransportKind::Grpc, |config| {
        config.snapshot_rate_bytes_per_sec = 1024;
    })
    .await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let client = cluster.client().await?;
    let value = "x".repeat(1000);
    for i in 0..100 {
        client.put(format!("k{i}"), &value).await?;
    }
    let reader = cluster.join_node("read-replica", |_| {}).await?;
    wait_map(&cluster, "node 4 is given a read replica", |map| {
        map.shard(PARENT)
            .is_some_and(|s| s.replica_on(NodeId(reader)).is_some())
    })
    .await?;
    // Heartbeats reach it: the leader lists it as a learner and has sent it something.
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster
        .running(reader)
        .node
        .replica(PARENT)
        .is_none_or(|r| r.raft.metrics().borrow_watched().current_leader.is_none())
    {
        if Instant::now() > deadline {
            bail!("node 4's read replica heard from no leader within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let applied = |cluster: &LocalCluster| {
        cluster
            .running(reader)
            .node
            .replica(PARENT)
            .and_then(|r| r.raft.metrics().borrow_watched().last_applied.map(|id| id.index))
            .unwrap_or(0)
    };
    // The client must know node 4 holds a replica, or it never asks it.
    client.refresh_shard_map().await?;
    let bounded = at(Consistency::Bounded(Duration::from_secs(2)), reader);
    let mut served_by_reader = 0;
    for i in 0..20 {
        assert_eq!(
            applied(&cluster),
            0,
            "the snapshot arrived; the test needs it slower"
        );
        let key = format!("k{}", i * 5);
        let (found, served) = client.get_served(&key, bounded).await?;
        assert!(
            found.as_ref().is_some_and(|v| v.value == value.as_bytes()),
            "a bounded read of {key}, written before node 4 joined, served by node {}, found {:?}",
            served.0,
            found.map(|v| v.value.len())
        );
        if served.0 == reader {
            served_by_reader += 1;
        }
    }
    assert_eq!(served_by_reader, 0, "the empty replica served bounded reads");
    cluster.shutdown().await;
    Ok(())
}

/// The leader of the shard and the read replica are cut off from the other two voters; those
/// elect a new leader and commit a new value. The deposed leader still heartbeats the read
/// replica in its old term. Before the fix the read replica counted those heartbeats as fresh
/// and served the old value to bounded reads for as long as the partition lasted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_replica_that_hears_only_a_deposed_leader_serves_no_bounded_read() -> anyhow::Result<()> {
    let network = MemoryNetwork::new(32);
    // Never quiet: a quiet leader sends no heartbeats at all, deposed or not.
    let mut cluster = LocalCluster::start(3, 1, TransportKind::Memory(network.clone()), |config| {
        config.raft.quiesce_after_ms = 0;
    })
    .await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let client = cluster.client().await?;
    let key = b"deposed".to_vec();
    client.put(&key, "old").await?;
    let reader = cluster
        .join_node("read-replica", |config| config.raft.quiesce_after_ms = 0)
        .await?;
    wait_map(&cluster, "node 4's read replica is in place", |map| {
        map.moves.is_empty()
            && map
                .shard(PARENT)
                .is_some_and(|s| s.replica_on(NodeId(reader)).is_some())
    })
    .await?;
    cluster.wait_caught_up(Duration::from_secs(30)).await?;
    client.refresh_shard_map().await?;
    let (old_leader, old_term) = leader_above(&cluster, PARENT, 0).context("a leader")?;
    let majority: Vec<NodeId> = (1..=3).filter(|&n| n != old_leader).map(NodeId).collect();
    network.partition(&[NodeId(old_leader), NodeId(reader)], &majority);

    // The majority elects a leader and commits a new value.
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_leader = loop {
        if let Some((node, _)) = leader_above(&cluster, PARENT, old_term)
            && node != old_leader
        {
            break node;
        }
        if Instant::now() > deadline {
            bail!("the majority elected no leader within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Through the majority's leader (a client would keep asking the deposed one, which cannot
    // commit); leadership may still move between the two while they settle.
    let mut leader = new_leader;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let raft = cluster
            .running(leader)
            .node
            .replica(PARENT)
            .context("leader")?
            .raft
            .clone();
        let written = raft
            .client_write(Proposal::internal(Command::Put {
                key: key.clone(),
                value: b"new".to_vec(),
            }))
            .await;
        if written.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the majority did not commit the new value within 30 s: {written:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some((node, _)) = leader_above(&cluster, PARENT, old_term)
            && node != old_leader
        {
            leader = node;
        }
    }
    let still_leads = cluster
        .running(old_leader)
        .node
        .replica(PARENT)
        .is_some_and(|r| r.raft.metrics().borrow_watched().state == openraft::ServerState::Leader);
    assert!(
        still_leads,
        "the deposed leader must still believe it leads for this test"
    );

    // Well past the bound, a bounded read must see the new value, from whichever replica.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bounded = at(Consistency::Bounded(Duration::from_secs(1)), reader);
    for _ in 0..5 {
        let (found, served) = client.get_served(&key, bounded).await?;
        assert_eq!(
            found.map(|v| v.value.to_vec()),
            Some(b"new".to_vec()),
            "a bounded read (1 s) served by node {} three seconds after the new value committed",
            served.0
        );
    }
    network.heal();
    cluster.shutdown().await;
    Ok(())
}

/// A session writes a key in shard 1; shard 1 splits and the key now lives in the child. A
/// read-replica node joins, cut off: its replica of the child holds nothing. Before the fix the
/// session's token for the child was 0, so that replica served the session "not found".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_reads_its_write_after_a_split_moved_the_key_to_a_child() -> anyhow::Result<()> {
    let network = MemoryNetwork::new(33);
    let mut cluster = LocalCluster::start(3, 1, TransportKind::Memory(network.clone()), |_| {}).await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let client = cluster.client().await?;
    // A key the child will own: the split cuts the whole ring at 2^63.
    let key = (0..)
        .map(|i| format!("moved-{i}"))
        .find(|k| ringkv_core::key_hash(k.as_bytes()) >= 1 << 63)
        .context("a key")?;
    let session = Session::new();
    let writer = client.with_session(session.clone());
    writer.put(&key, "mine").await?;
    ringkv_tests::admin(&client).split_shard(PARENT).await?;
    ringkv_tests::admin(&client)
        .wait_for_split(PARENT, Duration::from_secs(60))
        .await?
        .context("the split did not finish within 60 s")?;

    let voters: Vec<NodeId> = (1..=3).map(NodeId).collect();
    network.partition(&[NodeId(4)], &voters);
    let reader = cluster.join_node("read-replica", |_| {}).await?;
    wait_map(&cluster, "the child's read replica is placed", |map| {
        map.shard(CHILD)
            .is_some_and(|s| s.replica_on(NodeId(reader)).is_some())
    })
    .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.running(reader).node.replica(CHILD).is_none() {
        if Instant::now() > deadline {
            bail!("node 4 did not start its replica of the child within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.refresh_shard_map().await?;
    let reading = client.with_session(session.clone());
    for _ in 0..5 {
        let (found, served) = reading.get_served(&key, at(Consistency::Session, reader)).await?;
        assert_eq!(
            found.map(|v| v.value.to_vec()),
            Some(b"mine".to_vec()),
            "the session's own write, read after the split, served by node {}",
            served.0
        );
    }
    network.heal();
    cluster.shutdown().await;
    Ok(())
}

//! Lease reads stay linearizable when a follower restarts inside the leader's lease.
//!
//! A leader serves linearizable reads without a heartbeat round while its lease holds: a quorum
//! acknowledged it recently, and those followers refuse to vote for anyone else until the lease
//! has run out. openraft forgets a follower's lease when the follower restarts, so without the
//! node's restart rule (`ShardReplica::votes_from`) this happens:
//! 1. Leader L is cut from follower C; follower F still acknowledges L, keeping L's lease fresh.
//! 2. F restarts, cut from L. L's lease now rests on F's last acknowledgement and still holds.
//! 3. C campaigns; the restarted F, remembering no lease, votes for it. C leads and commits a
//!    write of the key with F.
//! 4. L, inside its lease, reads the key locally and answers the old value: a stale read.
//!
//! The second test is the same hazard with F itself as the candidate: its election timer, which
//! openraft restarts without the lease, fires before L's lease has run out, and C (whose own view
//! of L's lease has long expired) votes for it.

use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use ringkv_engine::{Command, EngineOptions, NodeId, Proposal, ShardId};
use ringkv_server::transport::MemoryNetwork;
use ringkv_tests::local_cluster::TransportKind;
use ringkv_tests::{LocalCluster, assert_replicas_identical};

const SHARD: ShardId = ShardId(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_restarted_inside_a_lease_cannot_help_elect_a_leader_behind_a_lease_read()
-> anyhow::Result<()> {
    let network = MemoryNetwork::new(11);
    let mut cluster = LocalCluster::start_with(
        3,
        1,
        TransportKind::Memory(network.clone()),
        EngineOptions::default(),
        |config| {
            // A 6 s lease: the scenario runs well inside it even on a starved machine.
            config.raft.heartbeat_interval_ms = 200;
            config.raft.election_timeout_min_ms = 3_000;
            config.raft.election_timeout_max_ms = 6_000;
        },
    )
    .await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let leader = cluster.leader_of(1, SHARD)?;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != leader).collect();
    let (follower, candidate) = (others[0], others[1]);
    let key = cluster
        .keys_of_shard(leader, SHARD, "lease-", 1)
        .pop()
        .context("a key of the shard")?;
    let client = cluster.client().await?;
    client.put(&key, "old").await?;
    cluster.wait_caught_up(Duration::from_secs(30)).await?;

    // 1. Cut L from C; F keeps acknowledging L.
    network.cut(NodeId(leader), NodeId(candidate));
    network.cut(NodeId(candidate), NodeId(leader));
    tokio::time::sleep(Duration::from_millis(600)).await;
    // 2. F restarts, cut from L.
    network.cut(NodeId(leader), NodeId(follower));
    network.cut(NodeId(follower), NodeId(leader));
    cluster.kill_node(follower).await;
    cluster.start_node(follower).await?;
    let restarted = Instant::now();

    // 3. C campaigns, now and again, for 2 s (well inside L's lease of 6 s from F's last
    //    acknowledgement); if it wins, it writes the key.
    let candidate_replica = cluster
        .running(candidate)
        .node
        .replica(SHARD)
        .context("C hosts the shard")?;
    let mut new_leader_wrote = false;
    while restarted.elapsed() < Duration::from_secs(2) {
        let _ = candidate_replica.raft.trigger().elect(false).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if candidate_replica.raft.metrics().borrow_watched().state == ServerState::Leader {
            let command = Command::Put {
                key: key.clone(),
                value: b"new".to_vec(),
            };
            let written = tokio::time::timeout(
                Duration::from_secs(2),
                candidate_replica.raft.client_write(Proposal::internal(command)),
            )
            .await;
            new_leader_wrote = matches!(written, Ok(Ok(_)));
            break;
        }
    }

    // 4. A linearizable read on L: it may fail (L cannot confirm it leads), or answer "old" only if
    //    no other leader has committed "new".
    let node = cluster.running(leader).node.clone();
    let leader_replica = node.replica(SHARD).context("L hosts the shard")?;
    let read = match node
        .linearizable_barrier(&leader_replica, Duration::from_secs(1))
        .await
    {
        Ok(()) => Some(
            node.read_key(&leader_replica, key.clone())
                .await?
                .map(|v| v.value),
        ),
        Err(_) => None,
    };
    assert!(
        !(new_leader_wrote && read == Some(Some(b"old".to_vec()))),
        "stale read: node {candidate} was elected with the vote of node {follower}, restarted {} ms \
         before, and committed \"new\", while node {leader} still served \"old\" under its lease",
        restarted.elapsed().as_millis()
    );
    assert!(
        !new_leader_wrote,
        "node {candidate} was elected while node {leader}'s lease held, with the vote of node \
         {follower} restarted inside that lease"
    );

    // Healed, the shard elects a leader and every replica converges.
    network.heal();
    cluster.wait_for_leaders(Duration::from_secs(60), false).await?;
    client.put(&key, "after").await?;
    cluster.wait_caught_up(Duration::from_secs(30)).await?;
    assert_replicas_identical(&client).await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_restarted_inside_a_lease_does_not_stand_for_election_until_it_ends() -> anyhow::Result<()>
{
    let network = MemoryNetwork::new(12);
    let mut cluster = LocalCluster::start_with(
        3,
        1,
        TransportKind::Memory(network.clone()),
        EngineOptions::default(),
        |config| {
            // A 6 s lease, and election timers from 1 s: without the rule, the restarted follower
            // campaigns 1–6 s after its start, mostly inside the lease.
            config.raft.heartbeat_interval_ms = 200;
            config.raft.election_timeout_min_ms = 1_000;
            config.raft.election_timeout_max_ms = 6_000;
        },
    )
    .await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let leader = cluster.leader_of(1, SHARD)?;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != leader).collect();
    let (follower, other) = (others[0], others[1]);
    let key = cluster
        .keys_of_shard(leader, SHARD, "lease-", 1)
        .pop()
        .context("a key of the shard")?;
    let client = cluster.client().await?;
    client.put(&key, "old").await?;
    cluster.wait_caught_up(Duration::from_secs(30)).await?;

    // 1. Cut L from C for longer than a lease, so C no longer honours L's; F keeps L's lease fresh
    //    and refuses C's campaigns.
    network.cut(NodeId(leader), NodeId(other));
    network.cut(NodeId(other), NodeId(leader));
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    // 2. F restarts, cut from L: L's lease rests on F's last acknowledgement, for 6 s.
    network.cut(NodeId(leader), NodeId(follower));
    network.cut(NodeId(follower), NodeId(leader));
    cluster.kill_node(follower).await;
    let killed = Instant::now();
    cluster.start_node(follower).await?;

    // 3. Until L's lease ends, F must not lead (it would need its own vote, given inside the lease).
    let follower_replica = cluster
        .running(follower)
        .node
        .replica(SHARD)
        .context("F hosts the shard")?;
    while killed.elapsed() < Duration::from_millis(5_500) {
        let state = follower_replica.raft.metrics().borrow_watched().state;
        assert_ne!(
            state,
            ServerState::Leader,
            "node {follower} was elected {} ms after it was killed, inside the 6 s lease its last \
             acknowledgement gave leader {leader}",
            killed.elapsed().as_millis()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Healed, the shard elects a leader and every replica converges.
    network.heal();
    cluster.wait_for_leaders(Duration::from_secs(60), false).await?;
    client.put(&key, "after").await?;
    cluster.wait_caught_up(Duration::from_secs(30)).await?;
    assert_replicas_identical(&client).await?;
    cluster.shutdown().await;
    Ok(())
}

//! Moving a replica online: under a write load, and with the metadata leader, the receiving node
//! or the giving node SIGKILLed in the middle of the move. Each move finishes (or, had it not
//! caught up in time, would roll back), every acknowledged write reads back, the giving node
//! deletes its replica, and the replica check passes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ringkv_client::{Client, NodeId, ShardId, ShardMap};
use ringkv_map::MoveStep;
use ringkv_proto::pb;
use ringkv_tests::process_cluster::ringkv_binary;
use ringkv_tests::{ProcessCluster, assert_replicas_identical};

use crate::{meta_leader, running_replicas};

/// How long a move may take, node restarts included.
const MOVE_TIMEOUT: Duration = Duration::from_secs(90);
const WRITERS: usize = 4;

/// What one writer saw: the writes acknowledged, and the errors returned (a write that failed may
/// or may not have applied, so nothing is claimed of its key).
#[derive(Default)]
struct Written {
    acknowledged: BTreeMap<String, String>,
    errors: Vec<String>,
}

/// Writes `w{writer}-{i}` = `i` in a loop until told to stop.
async fn write_until(client: Client, writer: usize, stop: Arc<AtomicBool>) -> Written {
    let mut written = Written::default();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (key, value) = (format!("w{writer}-{i}"), i.to_string());
        match client.put(&key, &value).await {
            Ok(_) => {
                written.acknowledged.insert(key, value);
            }
            Err(error) => written.errors.push(format!("{key}: {error}")),
        }
        i += 1;
    }
    written
}

pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    writers: tokio::task::JoinSet<Written>,
}

impl Load {
    pub(crate) async fn start(cluster: &ProcessCluster) -> anyhow::Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = tokio::task::JoinSet::new();
        for writer in 0..WRITERS {
            let client = cluster.client().await?;
            writers.spawn(write_until(client, writer, stop.clone()));
        }
        Ok(Load { stop, writers })
    }

    /// Stops the writers and checks that every acknowledged write reads back. Returns how many
    /// were acknowledged, and the errors callers saw.
    pub(crate) async fn stop_and_verify(mut self, client: &Client) -> anyhow::Result<(usize, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut acknowledged = BTreeMap::new();
        let mut errors = Vec::new();
        while let Some(written) = self.writers.join_next().await {
            let written = written?;
            acknowledged.extend(written.acknowledged);
            errors.extend(written.errors);
        }
        for (key, value) in &acknowledged {
            let read = client.get(key).await?.map(|v| v.value);
            assert_eq!(
                read.as_deref(),
                Some(value.as_bytes()),
                "acknowledged write {key} = {value} did not survive the move"
            );
        }
        Ok((acknowledged.len(), errors))
    }
}

/// The shard's voter nodes in `map`.
fn voter_nodes(map: &ShardMap, shard: ShardId) -> Vec<u64> {
    map.shard(shard)
        .map(|s| s.voters.iter().map(|v| v.node_id.0).collect())
        .unwrap_or_default()
}

/// A move that keeps replica counts balanced (from a node with one replica more than the target),
/// so the controller has no reason to move anything back; off a shard's preferred leader if one
/// fits (so leadership must move too).
fn pick_move(map: &ShardMap) -> (ShardId, NodeId, NodeId) {
    let counts = map.replica_counts();
    for shard in &map.shards {
        for from in &shard.voters {
            for (to, to_count) in &counts {
                if shard.replica_on(*to).is_none() && counts[&from.node_id] == to_count + 1 {
                    return (shard.id, from.node_id, *to);
                }
            }
        }
    }
    panic!("no balanced move in {counts:?}");
}

/// Whether the node at `addr` runs a replica of `shard`.
async fn hosts(addr: &str, shard: ShardId) -> anyhow::Result<bool> {
    Ok(running_replicas(addr)
        .await?
        .iter()
        .any(|r| r.shard_id == shard.0))
}

/// Waits until the move of `shard` has ended as a finished move to `to`, and the nodes agree:
/// `to` runs the shard, `from` no longer does.
async fn wait_moved(
    cluster: &ProcessCluster,
    client: &Client,
    shard: ShardId,
    from: NodeId,
    to: NodeId,
) -> anyhow::Result<()> {
    let Some(map) = ringkv_tests::admin(client)
        .wait_for_move(shard, MOVE_TIMEOUT)
        .await?
    else {
        bail!(
            "the move of shard {shard} did not end within {MOVE_TIMEOUT:?}\n{}",
            cluster.log_tails(40)
        );
    };
    let voters = voter_nodes(&map, shard);
    assert!(
        voters.contains(&to.0) && !voters.contains(&from.0),
        "the move of shard {shard} from node {from} to node {to} ended with voters {voters:?}: {:?}",
        map.decisions.iter().map(|d| &d.text).collect::<Vec<_>>()
    );
    assert!(map.moves.is_empty(), "moves left in the map: {:?}", map.moves);
    let deadline = Instant::now() + MOVE_TIMEOUT;
    loop {
        // A node restarted by the test may not be listening yet: ask again.
        let on_to = hosts(&cluster.node(to.0).addr, shard)
            .await
            .map_err(|e| format!("{e:#}"));
        let on_from = hosts(&cluster.node(from.0).addr, shard)
            .await
            .map_err(|e| format!("{e:#}"));
        if on_to == Ok(true) && on_from == Ok(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "after the move of shard {shard}: node {to} runs it: {on_to:?}; node {from} still runs it: {on_from:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_moves_to_another_node_under_load_and_nothing_is_lost() -> anyhow::Result<()> {
    // Five nodes, four shards of three replicas: 3, 3, 2, 2, 2 replicas per node.
    let cluster = ProcessCluster::start(5, 4, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    let load = Load::start(&cluster).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (shard, from, to) = pick_move(&client.shard_map().await);
    a_learner_the_map_does_not_list_is_refused(&cluster, shard, to).await?;
    let begun = ringkv_tests::admin(&client).move_replica(shard, from, to).await?;
    let moving = begun.move_of(shard).context("the move is recorded")?;
    assert_eq!(moving.to.node_id, to);
    assert!(
        ringkv_tests::admin(&client)
            .move_replica(shard, from, to)
            .await
            .is_err(),
        "a second move of a moving shard was accepted"
    );
    wait_moved(&cluster, &client, shard, from, to).await?;

    // With every node up, a move is invisible to callers: leadership and membership changes are
    // retried within the request's deadline.
    let (acknowledged, errors) = load.stop_and_verify(&client).await?;
    assert!(acknowledged > 0, "the load wrote nothing");
    assert!(
        errors.is_empty(),
        "callers saw errors during the move: {errors:?}"
    );
    assert_replicas_identical(&client).await
}

/// Sends one `ChangeReplicas` step for `shard` to each node until its leader answers; goes round
/// again (for at most a minute) while no node leads it, as during an election on a loaded machine.
async fn change_replicas(
    cluster: &ProcessCluster,
    shard: ShardId,
    action: pb::ChangeReplicasAction,
    add: pb::Replica,
) -> anyhow::Result<Result<pb::ChangeReplicasResponse, tonic::Status>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        for node in &cluster.nodes {
            let mut client =
                pb::cluster_client::ClusterClient::connect(format!("http://{}", node.addr)).await?;
            let request = pb::ChangeReplicasRequest {
                shard_id: shard.0,
                action: action.into(),
                add: Some(add),
                remove_replica_id: 0,
            };
            match client.change_replicas(request).await {
                Ok(response) => return Ok(Ok(response.into_inner())),
                Err(status) if status.message().contains("is not led by this node") => {
                    last = Some(status);
                }
                Err(status) => return Ok(Err(status)),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("no node led shard {shard} within a minute: {last:?}")
}

/// A learner step no move in the map calls for (what a stale mover, a former metadata leader,
/// would send) is refused by the shard's leader and changes nothing.
async fn a_learner_the_map_does_not_list_is_refused(
    cluster: &ProcessCluster,
    shard: ShardId,
    to: NodeId,
) -> anyhow::Result<()> {
    let stray = pb::Replica {
        replica_id: u64::MAX - 1,
        node_id: to.0,
    };
    let refused = change_replicas(
        cluster,
        shard,
        pb::ChangeReplicasAction::ChangeReplicasAddLearner,
        stray,
    )
    .await?
    .expect_err("a learner the map does not list was added");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("lists no move of the shard"),
        "{refused:?}"
    );
    let membership = change_replicas(
        cluster,
        shard,
        pb::ChangeReplicasAction::ChangeReplicasQuery,
        stray,
    )
    .await?
    .map_err(|status| anyhow::anyhow!("query: {status:?}"))?;
    assert!(
        membership.learners.is_empty() && !membership.voters.contains(&stray.replica_id),
        "the refused learner is in the membership: {membership:?}"
    );
    Ok(())
}

/// Where in the move the kill lands.
#[derive(Clone, Copy, Debug, PartialEq)]
enum KillAt {
    /// Right after the move is recorded: the new replica is being added and caught up.
    CatchUp,
    /// Once step `Promote` is recorded, before the membership change (a test-only hold file keeps
    /// the move there until the kill).
    Promote,
}

/// Moves a replica and SIGKILLs the node `victim` picks (from the move's source, its target and the
/// metadata leader) at `at`, restarts it a few seconds later, and checks that the move finished
/// and nothing was lost.
async fn move_with_a_kill(at: KillAt, victim: impl Fn(NodeId, NodeId, u64) -> u64) -> anyhow::Result<()> {
    let hold = tempfile::NamedTempFile::new()?.into_temp_path();
    let hold_path = hold.to_str().context("temp path")?.to_owned();
    let extra: Vec<&str> = match at {
        KillAt::CatchUp => vec![],
        KillAt::Promote => vec!["--test-move-hold-file", &hold_path],
    };
    let mut cluster = ProcessCluster::start(5, 4, &extra)?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    // Data to copy: the new replica takes a moment to catch up.
    for i in 0..2_000 {
        client.put(format!("pre-{i}"), "x".repeat(200)).await?;
    }
    let load = Load::start(&cluster).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (shard, from, to) = pick_move(&client.shard_map().await);
    let killed = victim(from, to, meta_leader(&cluster).await?);
    ringkv_tests::admin(&client).move_replica(shard, from, to).await?;
    if at == KillAt::Promote {
        let deadline = Instant::now() + MOVE_TIMEOUT;
        loop {
            client.refresh_shard_map().await?;
            let step = client.shard_map().await.move_of(shard).map(|m| m.step);
            match step {
                Some(MoveStep::Promote) => {
                    // `ringkv status` shows the move and its step.
                    let out = std::process::Command::new(ringkv_binary())
                        .args([
                            "--endpoints",
                            &cluster.node(killed).addr,
                            "status",
                            "--output",
                            "json",
                        ])
                        .output()?;
                    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
                        .with_context(|| format!("status json: {}", String::from_utf8_lossy(&out.stderr)))?;
                    let shown = &report["moves"][0];
                    assert_eq!(shown["shard_id"], shard.0, "{report}");
                    assert_eq!(shown["to_node"], to.0, "{report}");
                    assert_eq!(shown["step"], "Promote", "{report}");
                    break;
                }
                Some(_) => {}
                None => bail!("the move ended before the test saw its Promote step"),
            }
            assert!(Instant::now() < deadline, "the move never reached Promote");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    cluster.kill(killed);
    hold.close()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.start_node(killed)?;

    wait_moved(&cluster, &client, shard, from, to).await?;
    // A SIGKILL costs an election (about 2 s), well inside the callers' deadline: no errors.
    let (acknowledged, errors) = load.stop_and_verify(&client).await?;
    assert!(acknowledged > 0, "the load wrote nothing");
    assert!(errors.is_empty(), "callers saw errors: {errors:?}");
    for i in (0..2_000).step_by(97) {
        assert!(
            client.get(format!("pre-{i}")).await?.is_some(),
            "pre-{i} was lost"
        );
    }
    cluster.wait_ready(Duration::from_secs(60)).await?;
    assert_replicas_identical(&client).await
}

fn metadata_leader(_: NodeId, _: NodeId, meta_leader: u64) -> u64 {
    meta_leader
}

fn receiving_node(_: NodeId, to: NodeId, _: u64) -> u64 {
    to.0
}

fn giving_node(from: NodeId, _: NodeId, _: u64) -> u64 {
    from.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_catching_up_survives_a_sigkill_of_the_metadata_leader() -> anyhow::Result<()> {
    move_with_a_kill(KillAt::CatchUp, metadata_leader).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_catching_up_survives_a_sigkill_of_the_receiving_node() -> anyhow::Result<()> {
    move_with_a_kill(KillAt::CatchUp, receiving_node).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_catching_up_survives_a_sigkill_of_the_giving_node() -> anyhow::Result<()> {
    move_with_a_kill(KillAt::CatchUp, giving_node).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_promoting_survives_a_sigkill_of_the_metadata_leader() -> anyhow::Result<()> {
    move_with_a_kill(KillAt::Promote, metadata_leader).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_promoting_survives_a_sigkill_of_the_receiving_node() -> anyhow::Result<()> {
    move_with_a_kill(KillAt::Promote, receiving_node).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_promoting_survives_a_sigkill_of_the_giving_node() -> anyhow::Result<()> {
    move_with_a_kill(KillAt::Promote, giving_node).await
}

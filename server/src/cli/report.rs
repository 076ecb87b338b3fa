//! What `ringkv status` and `ringkv check` print: a table for people, or JSON.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use ringkv_client::{AdminClient, ClientConfig, ReplicaRole};
use ringkv_engine::ShardId;

use super::args::Output;

/// `ringkv status`: every node's replicas and every shard's placement, leader and progress.
pub(super) async fn status(client: &AdminClient, output: Output) -> anyhow::Result<()> {
    client.refresh_shard_map().await?;
    let map = client.shard_map().await;
    let mut nodes = Vec::new();
    let mut applied: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut lag: BTreeMap<(u64, u64), (u64, u64)> = BTreeMap::new();
    let mut failed: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (&node_id, info) in &map.nodes {
        let (node_id, addr) = (node_id.0, &info.addr);
        match tokio::time::timeout(Duration::from_secs(3), client.node_status(addr)).await {
            Ok(Ok(status)) => {
                for replica in &status.replicas {
                    let shard = replica.shard_id.0;
                    applied.insert((shard, node_id), replica.applied_index);
                    lag.insert(
                        (shard, node_id),
                        (replica.lag_entries, replica.lag_ms.unwrap_or(u64::MAX)),
                    );
                    if let Some(failure) = &replica.failure {
                        failed
                            .entry(shard)
                            .or_default()
                            .push(format!("node {node_id}: {failure}"));
                    }
                }
                let leaders = status
                    .replicas
                    .iter()
                    .filter(|r| r.role == ReplicaRole::Leader)
                    .count();
                nodes.push(serde_json::json!({
                    "node_id": node_id, "addr": addr, "state": "up",
                    "replicas": status.replicas.len(), "leaders": leaders,
                    "log_appends": status.log_appends, "log_fsyncs": status.log_fsyncs,
                    "kv_commands": status.kv_commands, "kv_command_messages": status.kv_command_messages,
                    "raft_calls": status.raft_calls, "raft_call_messages": status.raft_call_messages,
                    "quiet_replicas": status.quiet_replicas,
                }));
            }
            Ok(Err(error)) => nodes.push(serde_json::json!({
                "node_id": node_id, "addr": addr, "state": "unreachable", "error": error.to_string(),
            })),
            Err(_) => nodes.push(serde_json::json!({
                "node_id": node_id, "addr": addr, "state": "unreachable", "error": "no answer within 3 s",
            })),
        }
    }
    let applied_all = applied.clone();
    // The metadata group is listed last, as shard `meta`.
    let shards: Vec<serde_json::Value> = map
        .groups()
        .map(|shard| {
            let voters: Vec<u64> = shard.voters.iter().map(|v| v.node_id.0).collect();
            let applied: serde_json::Map<String, serde_json::Value> = voters
                .iter()
                .filter_map(|node| {
                    applied
                        .get(&(shard.id.0, *node))
                        .map(|index| (node.to_string(), (*index).into()))
                })
                .collect();
            serde_json::json!({
                "shard_id": shard_label(shard.id),
                "arc_start": format!("{:016x}", shard.arc.start),
                "arc_end": format!("{:016x}", shard.arc.end),
                "voters": voters,
                "learners": shard.learners.iter().map(|l| l.node_id.0).collect::<Vec<_>>(),
                "leader": shard.leader.map(|node| node.0),
                "applied_index": applied,
                // Read replicas and how far each trails the leader (entries, and how old its
                // data looks, by the leader's messages; null when it has heard from no leader it caught
                // up with).
                "read_replicas": map.read_replicas_of(shard.id).iter().map(|r| {
                    let (entries, ms) = lag.get(&(shard.id.0, r.node_id.0)).copied().unwrap_or((0, u64::MAX));
                    serde_json::json!({
                        "node_id": r.node_id.0,
                        "applied_index": applied_of(&applied_all, shard.id.0, r.node_id.0),
                        "lag_entries": entries,
                        "lag_ms": (ms != u64::MAX).then_some(ms),
                    })
                }).collect::<Vec<_>>(),
                "failed_replicas": failed.get(&shard.id.0).cloned().unwrap_or_default(),
            })
        })
        .collect();
    let moves: Vec<serde_json::Value> = map
        .moves
        .iter()
        .map(|m| {
            serde_json::json!({
                "shard_id": shard_label(m.shard),
                "from_node": m.from.node_id.0, "from_replica": m.from.replica_id.0,
                "to_node": m.to.node_id.0, "to_replica": m.to.replica_id.0,
                "step": format!("{:?}", m.step), "started_unix_ms": m.started_unix_ms,
                "reason": m.reason,
            })
        })
        .collect();
    let splits: Vec<serde_json::Value> = map
        .splits
        .iter()
        .map(|s| {
            serde_json::json!({
                "shard_id": s.parent.0, "child_shard_id": s.child.0, "at": format!("{:#018x}", s.at),
                "child_replicas": s.replicas.iter().map(|r| serde_json::json!({
                    "node": r.node_id.0, "replica": r.replica_id.0,
                })).collect::<Vec<_>>(),
                "started_unix_ms": s.started_unix_ms, "reason": s.reason,
            })
        })
        .collect();
    let decisions: Vec<serde_json::Value> = map
        .decisions
        .iter()
        .map(|d| serde_json::json!({"epoch": d.epoch, "unix_ms": d.unix_ms, "text": d.text}))
        .collect();
    if output == Output::Json {
        let report = serde_json::json!({
            "cluster_id": format!("{:016x}", map.cluster_id),
            "epoch": map.epoch,
            "nodes": nodes,
            "shards": shards,
            "moves": moves,
            "splits": splits,
            "decisions": decisions,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("cluster {:016x}, shard map epoch {}", map.cluster_id, map.epoch);
    println!(
        "{:<6} {:<22} {:<12} {:>8} {:>8} {:>6} {:>12} {:>10} {:>12} {:>10} {:>12} {:>10}",
        "NODE",
        "ADDRESS",
        "STATE",
        "REPLICAS",
        "LEADERS",
        "QUIET",
        "LOG_APPENDS",
        "FSYNCS",
        "KV_REQUESTS",
        "KV_MSGS",
        "RAFT_CALLS",
        "RAFT_MSGS"
    );
    for node in &nodes {
        println!(
            "{:<6} {:<22} {:<12} {:>8} {:>8} {:>6} {:>12} {:>10} {:>12} {:>10} {:>12} {:>10}",
            node["node_id"].to_string(),
            node["addr"].as_str().unwrap_or(""),
            node["state"].as_str().unwrap_or(""),
            node.get("replicas").map_or("-".into(), |v| v.to_string()),
            node.get("leaders").map_or("-".into(), |v| v.to_string()),
            node.get("quiet_replicas").map_or("-".into(), |v| v.to_string()),
            node.get("log_appends").map_or("-".into(), |v| v.to_string()),
            node.get("log_fsyncs").map_or("-".into(), |v| v.to_string()),
            node.get("kv_commands").map_or("-".into(), |v| v.to_string()),
            node.get("kv_command_messages")
                .map_or("-".into(), |v| v.to_string()),
            node.get("raft_calls").map_or("-".into(), |v| v.to_string()),
            node.get("raft_call_messages")
                .map_or("-".into(), |v| v.to_string()),
        );
    }
    println!();
    println!(
        "{:<6} {:<35} {:<12} {:<7} APPLIED (node:index); READ REPLICAS (node:entries behind/ms old)",
        "SHARD", "ARC", "VOTERS", "LEADER"
    );
    for shard in &shards {
        let voters: Vec<String> = shard["voters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v.to_string())
            .collect();
        let applied: Vec<String> = shard["applied_index"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(node, index)| format!("{node}:{index}"))
            .collect();
        let leader = shard["leader"]
            .as_u64()
            .map_or("none".to_string(), |l| l.to_string());
        println!(
            "{:<6} {:<35} {:<12} {:<7} {}",
            shard["shard_id"]
                .as_str()
                .map_or_else(|| shard["shard_id"].to_string(), str::to_string),
            format!(
                "{}-{}",
                shard["arc_start"].as_str().unwrap_or(""),
                shard["arc_end"].as_str().unwrap_or("")
            ),
            voters.join(","),
            leader,
            applied.join(" ") + &read_replicas_text(&shard["read_replicas"])
        );
    }
    for (shard_id, reasons) in &failed {
        println!(
            "shard {shard_id}: replica out of service on {}",
            reasons.join("; ")
        );
    }
    if !map.moves.is_empty() {
        println!();
        println!("MOVES IN PROGRESS");
        for m in &map.moves {
            let what = if m.adds_only() {
                format!("adding replica {} on node {}", m.to.replica_id, m.to.node_id)
            } else if m.removes_only() {
                format!(
                    "removing replica {} on node {}",
                    m.from.replica_id, m.from.node_id
                )
            } else {
                format!(
                    "node {} -> node {} (replica {} -> {})",
                    m.from.node_id, m.to.node_id, m.from.replica_id, m.to.replica_id
                )
            };
            println!("shard {}: {what}, step {:?}: {}", m.shard, m.step, m.reason);
        }
    }
    if !map.splits.is_empty() {
        println!();
        println!("SPLITS IN PROGRESS");
        for s in &map.splits {
            println!(
                "shard {} at {:#018x}: shard {} takes the upper half: {}",
                s.parent, s.at, s.child, s.reason
            );
        }
    }
    if !map.decisions.is_empty() {
        println!();
        println!("RECENT DECISIONS (newest last)");
        for d in map.decisions.iter().rev().take(STATUS_DECISIONS).rev() {
            println!("epoch {:>5}: {}", d.epoch, d.text);
        }
    }
    Ok(())
}

/// How many of the map's decisions the status table shows (JSON shows them all).
const STATUS_DECISIONS: usize = 10;

/// `ringkv check`: the replica check of every shard. Exit 0 when every shard's replicas agree, 1
/// when some differ, 2 when some replica could not be checked.
pub(super) async fn check(
    client: &AdminClient,
    output: Output,
    per_shard: Duration,
) -> anyhow::Result<ExitCode> {
    let report = client.check_replicas(per_shard).await?;
    let divergent = report.divergent().len();
    let unchecked = report
        .shards
        .iter()
        .filter(|shard| !shard.consistent() && !shard.divergent())
        .count();
    if output == Output::Json {
        let shards: Vec<serde_json::Value> = report
            .shards
            .iter()
            .map(|shard| {
                let replicas: Vec<serde_json::Value> = shard
                    .replicas
                    .iter()
                    .map(|replica| match &replica.digest {
                        Ok((digest, keys)) => serde_json::json!({
                            "node_id": replica.node_id.0, "replica_id": replica.replica_id.0,
                            "digest": format!("{digest:016x}"), "records": keys,
                        }),
                        Err(problem) => serde_json::json!({
                            "node_id": replica.node_id.0, "replica_id": replica.replica_id.0, "error": problem,
                        }),
                    })
                    .collect();
                serde_json::json!({
                    "shard_id": shard_label(shard.shard_id), "index": shard.index,
                    "consistent": shard.consistent(), "divergent": shard.divergent(),
                    "replicas": replicas,
                })
            })
            .collect();
        let summary = serde_json::json!({
            "consistent": report.consistent(), "divergent_shards": divergent,
            "unchecked_shards": unchecked, "shards": shards,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        for shard in &report.shards {
            if shard.consistent() {
                continue;
            }
            let what = if shard.divergent() {
                "REPLICAS DIFFER"
            } else {
                "NOT CHECKED"
            };
            println!("shard {} at index {}: {what}", shard.shard_id, shard.index);
            for replica in &shard.replicas {
                match &replica.digest {
                    Ok((digest, keys)) => println!(
                        "  node {} replica {}: digest {digest:016x} over {keys} records",
                        replica.node_id, replica.replica_id
                    ),
                    Err(problem) => println!(
                        "  node {} replica {}: {problem}",
                        replica.node_id, replica.replica_id
                    ),
                }
            }
        }
        let data_shards = report
            .shards
            .iter()
            .filter(|shard| !shard.shard_id.is_meta())
            .count();
        println!(
            "{data_shards} shards and the metadata group checked: {} consistent, {divergent} with replicas that differ, {unchecked} not fully checked",
            report.shards.len() - divergent - unchecked
        );
    }
    Ok(match (divergent, unchecked) {
        (0, 0) => ExitCode::SUCCESS,
        (0, _) => ExitCode::from(2),
        _ => ExitCode::from(1),
    })
}

/// A shard's id in JSON output: its number, or `"meta"` for the metadata group.
fn shard_label(shard_id: ShardId) -> serde_json::Value {
    if shard_id.is_meta() {
        "meta".into()
    } else {
        shard_id.0.into()
    }
}

/// `ringkv wait-ready`: exit 0 once every group of the map (the shards and the metadata group)
/// has a leader that its node reports, and no replica is out of service; 1 after `timeout`,
/// saying what is still missing. Scripts wait on it instead of reading `status` output.
pub(super) async fn wait_ready(config: ClientConfig, timeout: Duration) -> anyhow::Result<ExitCode> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut client = None;
    loop {
        if client.is_none() {
            client = AdminClient::with_config(config.clone()).await.ok();
        }
        let missing = match &client {
            None => format!("no node answers at {}", config.endpoints.join(", ")),
            Some(client) => match readiness(client).await {
                Ok(Ok(summary)) => {
                    println!("ready: {summary}");
                    return Ok(ExitCode::SUCCESS);
                }
                Ok(Err(what)) => what,
                Err(error) => format!("the shard map could not be fetched: {error}"),
            },
        };
        if tokio::time::Instant::now() >= deadline {
            eprintln!("not ready after {} s: {missing}", timeout.as_secs());
            return Ok(ExitCode::from(1));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One look at the cluster for `wait_ready`: what is ready, or what is missing.
async fn readiness(client: &AdminClient) -> anyhow::Result<Result<String, String>> {
    client.refresh_shard_map().await?;
    let map = client.shard_map().await;
    let mut led = std::collections::BTreeSet::new();
    let mut problems = Vec::new();
    for (&node_id, info) in &map.nodes {
        if info.state != ringkv_client::NodeState::Up {
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(3), client.node_status(&info.addr)).await {
            Ok(Ok(status)) => {
                for replica in &status.replicas {
                    if replica.role == ReplicaRole::Leader {
                        led.insert(replica.shard_id);
                    }
                    if let Some(failure) = &replica.failure {
                        problems.push(format!(
                            "shard {} is out of service on node {node_id}: {failure}",
                            replica.shard_id
                        ));
                    }
                }
            }
            Ok(Err(error)) => {
                problems.push(format!("node {node_id} ({}) does not answer: {error}", info.addr))
            }
            Err(_) => problems.push(format!(
                "node {node_id} ({}) does not answer within 3 s",
                info.addr
            )),
        }
    }
    let leaderless: Vec<String> = map
        .groups()
        .filter(|group| !led.contains(&group.id))
        .map(|group| group.id.to_string())
        .collect();
    if !leaderless.is_empty() {
        problems.insert(0, format!("no leader yet for shards {}", leaderless.join(", ")));
    }
    if !problems.is_empty() {
        return Ok(Err(problems.join("; ")));
    }
    Ok(Ok(format!(
        "{} shards and the metadata group have a leader (map epoch {})",
        map.shards.len(),
        map.epoch
    )))
}

/// `ringkv node list`: every node of the map with its state (`down` for an up node that does not
/// answer), replica and leader counts and data size.
pub(super) async fn node_list(client: &AdminClient, output: Output) -> anyhow::Result<()> {
    client.refresh_shard_map().await?;
    let map = client.shard_map().await;
    let mut rows = Vec::new();
    for (node_id, info) in &map.nodes {
        let status = match info.state {
            ringkv_client::NodeState::Removed => None,
            _ => tokio::time::timeout(Duration::from_secs(3), client.node_status(&info.addr))
                .await
                .ok()
                .and_then(Result::ok),
        };
        let state = match (&status, info.state) {
            (None, ringkv_client::NodeState::Up) => "down".to_owned(),
            (Some(_), ringkv_client::NodeState::Up) if map.is_joining(*node_id) => "joining".to_owned(),
            (_, state) => state.to_string(),
        };
        let placed = map.groups().filter(|g| g.replica_on(*node_id).is_some()).count();
        rows.push(serde_json::json!({
            "node_id": node_id.0, "addr": info.addr, "state": state,
            "role": info.role.to_string(),
            "replicas_placed": placed,
            "replicas_running": status.as_ref().map(|s| s.replicas.len()),
            "leaders": status.as_ref().map(|s| s.replicas.iter().filter(|r| r.role == ReplicaRole::Leader).count()),
            "data_bytes": status.as_ref().map(|s| s.data_bytes),
        }));
    }
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "epoch": map.epoch, "nodes": rows }))?
        );
        return Ok(());
    }
    println!(
        "{:<6} {:<22} {:<16} {:>8} {:>8} {:>8} {:>12}",
        "NODE", "ADDRESS", "STATE", "PLACED", "RUNNING", "LEADERS", "DATA"
    );
    let or_dash = |value: &serde_json::Value| {
        if value.is_null() {
            "-".to_owned()
        } else {
            value.to_string()
        }
    };
    for row in &rows {
        let data = row["data_bytes"].as_u64().map_or("-".to_owned(), |bytes| {
            format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
        });
        println!(
            "{:<6} {:<22} {:<16} {:>8} {:>8} {:>8} {:>12}",
            row["node_id"].to_string(),
            row["addr"].as_str().unwrap_or(""),
            row["state"].as_str().unwrap_or(""),
            row["replicas_placed"].to_string(),
            or_dash(&row["replicas_running"]),
            or_dash(&row["leaders"]),
            data
        );
    }
    Ok(())
}

fn applied_of(applied: &BTreeMap<(u64, u64), u64>, shard: u64, node: u64) -> Option<u64> {
    applied.get(&(shard, node)).copied()
}

/// `; 4:0/12ms 5:3/80ms` for a shard's read replicas, or nothing without any.
fn read_replicas_text(replicas: &serde_json::Value) -> String {
    let parts: Vec<String> = replicas
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let ms = r["lag_ms"].as_u64().map_or("?".to_string(), |ms| ms.to_string());
            format!("{}:{}/{ms}ms", r["node_id"], r["lag_entries"])
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("; {}", parts.join(" "))
    }
}

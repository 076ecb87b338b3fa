//! What `ringkv status` and `ringkv check` print: a table for people, or JSON.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use ringkv_client::Client;

use super::args::Output;

/// `ringkv status`: every node's replicas and every shard's placement, leader and progress.
pub(super) async fn status(client: &Client, output: Output) -> anyhow::Result<()> {
    client.refresh_shard_map().await?;
    let map = client.shard_map().await;
    let mut nodes = Vec::new();
    let mut applied: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut failed: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (&node_id, info) in &map.nodes {
        let (node_id, addr) = (node_id.0, &info.addr);
        match tokio::time::timeout(Duration::from_secs(3), client.node_status(addr)).await {
            Ok(Ok(status)) => {
                for replica in &status.replicas {
                    applied.insert((replica.shard_id, node_id), replica.applied_index);
                    if !replica.failure.is_empty() {
                        failed
                            .entry(replica.shard_id)
                            .or_default()
                            .push(format!("node {node_id}: {}", replica.failure));
                    }
                }
                let leaders = status.replicas.iter().filter(|r| r.role == "leader").count();
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
    let shards: Vec<serde_json::Value> = map
        .shards
        .iter()
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
                "shard_id": shard.id.0,
                "arc_start": format!("{:016x}", shard.arc.start),
                "arc_end": format!("{:016x}", shard.arc.end),
                "voters": voters,
                "learners": shard.learners.iter().map(|l| l.node_id.0).collect::<Vec<_>>(),
                "leader": shard.leader.map(|node| node.0),
                "applied_index": applied,
                "failed_replicas": failed.get(&shard.id.0).cloned().unwrap_or_default(),
            })
        })
        .collect();
    if output == Output::Json {
        let report = serde_json::json!({
            "cluster_id": format!("{:016x}", map.cluster_id),
            "epoch": map.epoch,
            "nodes": nodes,
            "shards": shards,
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
        "{:<6} {:<35} {:<12} {:<7} APPLIED (node:index)",
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
            shard["shard_id"].to_string(),
            format!(
                "{}-{}",
                shard["arc_start"].as_str().unwrap_or(""),
                shard["arc_end"].as_str().unwrap_or("")
            ),
            voters.join(","),
            leader,
            applied.join(" ")
        );
    }
    for (shard_id, reasons) in &failed {
        println!(
            "shard {shard_id}: replica out of service on {}",
            reasons.join("; ")
        );
    }
    Ok(())
}

/// `ringkv check`: the replica check of every shard. Exit 0 when every shard's replicas agree, 1
/// when some differ, 2 when some replica could not be checked.
pub(super) async fn check(client: &Client, output: Output, per_shard: Duration) -> anyhow::Result<ExitCode> {
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
                    "shard_id": shard.shard_id.0, "index": shard.index,
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
        println!(
            "{} shards checked: {} consistent, {divergent} with replicas that differ, {unchecked} not fully checked",
            report.shards.len(),
            report.shards.len() - divergent - unchecked
        );
    }
    Ok(match (divergent, unchecked) {
        (0, 0) => ExitCode::SUCCESS,
        (0, _) => ExitCode::from(2),
        _ => ExitCode::from(1),
    })
}

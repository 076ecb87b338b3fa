//! A node that lost its disk cannot come back as the replicas it held. The scenario from the
//! review: voters A, B, C; C is down; A and B commit writes; A's disk is replaced and A restarts
//! empty with the same flags. Before, A recreated its replicas with empty logs, and C (returning
//! with a shorter log) could win A's vote and erase the writes. Now A refuses to start and says
//! what happened and what to do; B and C keep every committed write; and A, with its original data
//! directory restored, rejoins. Nodes restarted with settings other than their cluster's refuse to
//! start, naming the difference.

use std::time::Duration;

use ringkv_tests::{ProcessCluster, assert_replicas_identical};

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_disk_refuses_to_rejoin_and_committed_writes_survive() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3, 4, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    for i in 0..50 {
        client.put(format!("before-{i}"), "v").await?;
    }

    // C (node 3) goes down; A and B (nodes 1 and 2) commit more.
    cluster.kill(3);
    for i in 0..50 {
        client.put(format!("while-3-down-{i}"), "v").await?;
    }

    // A's disk is replaced: its data directory is moved away, and A starts with the same flags.
    cluster.kill(1);
    let original = cluster.node(1).data_dir.clone();
    let saved = original.with_extension("saved");
    std::fs::rename(&original, &saved)?;
    let output = ProcessCluster::run_to_exit(cluster.start_command(1), Duration::from_secs(60))?;
    let message = stderr(&output);
    assert!(!output.status.success(), "node 1 must refuse to start: {message}");
    for words in [
        "node 1 refuses to start",
        "is new",
        "already a member",
        "vote with an empty log",
        "Restore node 1's original data directory",
    ] {
        assert!(message.contains(words), "{words:?} missing from: {message}");
    }

    // B and C form the majority: every committed write is there, and the cluster takes writes.
    cluster.start_node(3)?;
    let survivors = ringkv_client::Client::with_config({
        let mut config =
            ringkv_client::ClientConfig::new([cluster.node(2).addr.clone(), cluster.node(3).addr.clone()]);
        config.request_timeout = Duration::from_secs(20);
        config
    })
    .await?;
    for key in (0..50).flat_map(|i| [format!("before-{i}"), format!("while-3-down-{i}")]) {
        assert!(survivors.get(&key).await?.is_some(), "{key} lost");
    }
    survivors.put("after", "v").await?;

    // Restoring A's data directory is the way back: it rejoins as itself and catches up.
    std::fs::remove_dir_all(&original)?;
    std::fs::rename(&saved, &original)?;
    cluster.start_node(1)?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    assert!(client.get("after").await?.is_some());
    assert_replicas_identical(&client).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_with_other_cluster_settings_refuses_naming_them() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3, 4, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    cluster.kill(2);
    let other_peers = cluster.peers().replace(&cluster.node(3).addr, "127.0.0.1:1");
    // (--shards, --peers, other flags, what the refusal must say)
    type Case<'a> = (Option<u32>, Option<&'a str>, Vec<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        (
            Some(8),
            None,
            vec![],
            "--shards 8, but the cluster in this data directory has --shards 4",
        ),
        (
            None,
            None,
            vec!["--replication", "2"],
            "--replication 2, but the cluster in this data directory has --replication 3",
        ),
        (
            None,
            Some(&other_peers),
            vec![],
            "puts node 3 at 127.0.0.1:1, but the cluster in this data directory has it at",
        ),
    ];
    for (shards, peers, extra, expected) in cases {
        let command = cluster.start_command_with(2, shards, peers, &extra);
        let output = ProcessCluster::run_to_exit(command, Duration::from_secs(30))?;
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{message}");
        assert!(message.contains("node 2 refuses to start"), "{message}");
        assert!(message.contains(expected), "{expected:?} missing from: {message}");
    }
    // With its own settings it starts, and nothing was changed by the refusals.
    cluster.start_node(2)?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    client.put("still", "fine").await?;
    assert_replicas_identical(&client).await?;
    Ok(())
}

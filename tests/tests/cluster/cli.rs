//! The `ringkv` command line against a running cluster: each command's output and exit code.

use std::process::{Command, Output};
use std::time::Duration;

use ringkv_tests::ProcessCluster;
use ringkv_tests::process_cluster::ringkv_binary;

fn ringkv(endpoint: &str, args: &[&str]) -> Output {
    Command::new(ringkv_binary())
        .args(["--endpoints", endpoint])
        .args(args)
        .output()
        .expect("run ringkv")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_print_results_and_exit_codes() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3, 16, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let endpoint = cluster.nodes[1].addr.clone();

    tokio::task::spawn_blocking(move || {
        let out = ringkv(&endpoint, &["put", "greeting", "hello"]);
        assert!(out.status.success(), "put: {}", stderr(&out));

        let out = ringkv(&endpoint, &["get", "greeting"]);
        assert!(out.status.success(), "get: {}", stderr(&out));
        assert_eq!(stdout(&out).trim(), "hello");

        let out = ringkv(&endpoint, &["get", "no-such-key"]);
        assert_eq!(out.status.code(), Some(1), "a missing key exits 1");
        assert_eq!(stderr(&out).trim(), "key not found: no-such-key");

        let out = ringkv(&endpoint, &["cas", "greeting", "--expect", "wrong", "bye"]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "a failed cas exits 1: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains("cas failed"), "{}", stderr(&out));
        assert_eq!(
            stdout(&ringkv(&endpoint, &["get", "greeting"])).trim(),
            "hello",
            "unchanged"
        );

        let out = ringkv(&endpoint, &["cas", "greeting", "--expect", "hello", "bye"]);
        assert!(out.status.success(), "cas: {}", stderr(&out));
        assert_eq!(stdout(&ringkv(&endpoint, &["get", "greeting"])).trim(), "bye");

        for i in 0..5 {
            assert!(
                ringkv(&endpoint, &["put", &format!("user:{i}"), &format!("u{i}")])
                    .status
                    .success()
            );
        }
        let out = ringkv(&endpoint, &["scan", "--prefix", "user:"]);
        assert!(out.status.success(), "scan: {}", stderr(&out));
        let mut lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
        lines.sort();
        let expected: Vec<String> = (0..5).map(|i| format!("user:{i}\tu{i}")).collect();
        assert_eq!(lines, expected);
        let out = ringkv(&endpoint, &["scan", "--prefix", "user:", "--limit", "2"]);
        assert_eq!(stdout(&out).lines().count(), 2, "limit is honoured");

        let out = ringkv(&endpoint, &["del", "greeting"]);
        assert!(out.status.success(), "del: {}", stderr(&out));
        let out = ringkv(&endpoint, &["del", "greeting"]);
        assert_eq!(out.status.code(), Some(1), "deleting a missing key exits 1");
        assert_eq!(ringkv(&endpoint, &["get", "greeting"]).status.code(), Some(1));

        let out = ringkv(&endpoint, &["status", "--output", "json"]);
        assert!(out.status.success(), "status: {}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
        let shards = report["shards"].as_array().expect("shards");
        // 16 shards, then the metadata group.
        assert_eq!(shards.len(), 17);
        assert_eq!(shards[16]["shard_id"], "meta", "{}", shards[16]);
        for shard in shards {
            assert_eq!(shard["voters"].as_array().map(Vec::len), Some(3), "{shard}");
            assert!(
                shard["leader"].as_u64().is_some(),
                "every shard has a leader: {shard}"
            );
        }
        assert_eq!(report["nodes"].as_array().map(Vec::len), Some(3));

        let out = ringkv(&endpoint, &["status"]);
        assert!(out.status.success());
        assert!(stdout(&out).contains("SHARD"), "table output: {}", stdout(&out));

        let out = ringkv(&endpoint, &["check"]);
        assert!(out.status.success(), "check: {}", stderr(&out));
        assert!(
            stdout(&out).contains("16 shards and the metadata group checked: 17 consistent"),
            "check: {}",
            stdout(&out)
        );
        let out = ringkv(&endpoint, &["check", "--output", "json"]);
        assert!(out.status.success(), "check: {}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check json");
        assert_eq!(report["consistent"], serde_json::Value::Bool(true), "{report}");
        assert_eq!(
            report["shards"].as_array().map(Vec::len),
            Some(17),
            "16 shards and meta"
        );

        // Reads at each level, at each node's replica; a session carried between commands.
        let out = ringkv(&endpoint, &["put", "levels", "one", "--session", "new"]);
        assert!(out.status.success(), "put: {}", stderr(&out));
        let session = stderr(&out)
            .lines()
            .find_map(|line| line.strip_prefix("session: ").map(str::to_owned))
            .expect("put --session prints the session");
        for node in ["1", "2", "3"] {
            for level in ["eventual", "bounded=2s", "replica", "linearizable"] {
                let out = ringkv(
                    &endpoint,
                    &["get", "levels", "--consistency", level, "--replica", node],
                );
                assert!(
                    out.status.success(),
                    "get at {level} from node {node}: {}",
                    stderr(&out)
                );
                // A fresh write may not have reached every replica yet: eventual may miss it.
                if level != "eventual" {
                    assert_eq!(stdout(&out).trim(), "one", "{level} at node {node}");
                }
            }
            let out = ringkv(
                &endpoint,
                &[
                    "get",
                    "levels",
                    "--consistency",
                    "session",
                    "--session",
                    &session,
                    "--replica",
                    node,
                ],
            );
            assert!(
                out.status.success(),
                "session get at node {node}: {}",
                stderr(&out)
            );
            assert_eq!(
                stdout(&out).trim(),
                "one",
                "the session reads its write at node {node}"
            );
        }
        let out = ringkv(
            &endpoint,
            &["scan", "--prefix", "levels", "--consistency", "eventual"],
        );
        assert!(out.status.success(), "scan: {}", stderr(&out));
        let out = ringkv(&endpoint, &["get", "levels", "--consistency", "strong"]);
        assert_eq!(out.status.code(), Some(2), "an unknown level is an error");
        assert!(
            stderr(&out).contains("not a consistency level"),
            "{}",
            stderr(&out)
        );

        let out = ringkv("127.0.0.1:1", &["--timeout-ms", "2000", "get", "x"]);
        assert_eq!(out.status.code(), Some(2), "an unreachable cluster is an error");
        let message = stderr(&out);
        assert_eq!(message.trim().lines().count(), 1, "one-line error: {message}");
        assert!(message.contains("127.0.0.1:1"), "names the endpoint: {message}");
    })
    .await?;
    Ok(())
}

//! `ringkv-bench` against a running cluster of real processes: every workload runs without an
//! error and does the operations its mix names, and the open loop starts exactly the scheduled
//! number of operations, and SIGUSR1 splits the report into phases.

use std::process::Command;
use std::time::Duration;

use ringkv_tests::ProcessCluster;
use ringkv_tests::process_cluster::workspace_binary;
use serde_json::Value;

/// Runs `ringkv-bench` to completion and returns its JSON report.
fn bench(endpoints: &str, args: &[&str]) -> Value {
    let mut command = Command::new(workspace_binary("ringkv-bench"));
    command
        .args([
            "--endpoints",
            endpoints,
            "--output",
            "json",
            "--progress-interval",
            "0",
        ])
        .args(["--keys", "200", "--value-size", "16"])
        .args(args);
    // A run is 1-3 s plus a 200-key preload; a starved machine gets a generous bound.
    let output = ProcessCluster::run_to_exit(command, Duration::from_secs(120)).expect("ringkv-bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "ringkv-bench {args:?} failed: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{args:?}: JSON report: {e}: {stderr}"))
}

fn count(report: &Value, op: &str) -> u64 {
    report["latency"][op]["count"]
        .as_u64()
        .expect("a count per operation")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_runs_its_mix_without_errors() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3, 16, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let endpoints = cluster.endpoints().join(",");

    tokio::task::spawn_blocking(move || {
        // Each workload with the operations it must do; every other operation must not appear.
        let expected: [(&str, &[&str]); 9] = [
            ("write", &["write"]),
            ("read", &["read"]),
            ("mixed", &["read", "write"]),
            ("ycsb-a", &["read", "write"]),
            ("ycsb-b", &["read", "write"]),
            ("ycsb-c", &["read"]),
            ("ycsb-d", &["read", "insert"]),
            ("ycsb-e", &["scan", "insert"]),
            ("ycsb-f", &["read", "rmw"]),
        ];
        for (workload, ops) in expected {
            // ycsb-d and ycsb-e insert 5% of the time: 3 s, so a starved machine still does some.
            let duration = if workload == "ycsb-d" || workload == "ycsb-e" {
                "3"
            } else {
                "1"
            };
            let report = bench(
                &endpoints,
                &[
                    "--workload",
                    workload,
                    "--concurrency",
                    "8",
                    "--duration",
                    duration,
                ],
            );
            assert_eq!(report["errors"], 0, "{workload}: {report}");
            for op in ["read", "write", "insert", "scan", "rmw"] {
                if ops.contains(&op) {
                    assert!(count(&report, op) > 0, "{workload} did no {op}: {report}");
                } else {
                    assert_eq!(count(&report, op), 0, "{workload} did a {op}: {report}");
                }
            }
        }

        // Reads at every level, spread over the replicas, without errors.
        for level in ["eventual", "bounded=500ms", "session", "replica"] {
            let report = bench(
                &endpoints,
                &[
                    "--workload",
                    "mixed",
                    "--consistency",
                    level,
                    "--concurrency",
                    "8",
                    "--duration",
                    "1",
                ],
            );
            assert_eq!(report["errors"], 0, "{level}: {report}");
            assert!(count(&report, "read") > 0, "{level} did no read: {report}");
        }

        // Open loop: 200 ops/s for 1 s is 200 operations started, however fast the cluster.
        let report = bench(
            &endpoints,
            &[
                "--workload",
                "ycsb-b",
                "--rate",
                "200",
                "--concurrency",
                "16",
                "--duration",
                "1",
            ],
        );
        assert_eq!(report["errors"], 0, "{report}");
        assert_eq!(report["ops"], 200, "open loop: {report}");
        assert_eq!(report["rate"], 200);

        // SIGUSR1 splits the run into phases that together hold every operation, back to back.
        let mut child = Command::new(workspace_binary("ringkv-bench"))
            .args([
                "--endpoints",
                &endpoints,
                "--output",
                "json",
                "--progress-interval",
                "1",
            ])
            .args([
                "--workload",
                "write",
                "--keys",
                "200",
                "--value-size",
                "16",
                "--preload",
                "false",
            ])
            .args(["--rate", "100", "--concurrency", "8", "--duration", "4"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ringkv-bench starts");
        // Its first progress line comes after it listens for the signal.
        let mut stderr = std::io::BufReader::new(child.stderr.take().expect("piped"));
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut stderr, &mut line).expect("stderr") > 0
            && !line.starts_with('[')
        {
            line.clear();
        }
        let signalled = Command::new("kill")
            .args(["-USR1", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(signalled.success());
        std::io::copy(&mut stderr, &mut std::io::sink()).expect("stderr drains");
        let output = child.wait_with_output().expect("ringkv-bench ends");
        assert!(output.status.success(), "ringkv-bench with a phase mark failed");
        let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
        let phases = report["phases"].as_array().expect("phases");
        assert_eq!(phases.len(), 2, "{report}");
        assert_eq!(phases[0]["from_s"], 0.0);
        assert_eq!(phases[0]["to_s"], phases[1]["from_s"], "{report}");
        assert_eq!(phases[1]["to_s"], report["duration_s"], "{report}");
        let in_phases: u64 = phases.iter().map(|p| p["count"].as_u64().expect("count")).sum();
        assert_eq!(in_phases, 400, "every operation in one phase: {report}");
        assert_eq!(report["ops"], 400, "{report}");
    })
    .await?;
    Ok(())
}

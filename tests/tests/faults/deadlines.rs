//! Deadlines are promises: with two of three nodes stopped, and then with two of three frozen
//! (SIGSTOP: their sockets accept connections that are never answered), every client call returns
//! within its deadline plus `MARGIN`, whatever it ends with. The margin covers only the time between
//! the client noticing its deadline and the call returning, on a busy machine: every wait inside a
//! call (attempts, map refreshes, backoff, connection setup) fits in the deadline itself.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringkv_client::{BatchOp, Client, ClientConfig, Expect, ScanOptions};
use ringkv_tests::{ProcessCluster, assert_replicas_identical};

const DEADLINE: Duration = Duration::from_millis(1_500);
/// The stated margin over the deadline.
const MARGIN: Duration = Duration::from_millis(500);

/// One key per shard.
fn keys(client_map: &ringkv_map::ShardMap) -> Vec<String> {
    let mut by_shard = std::collections::BTreeMap::new();
    for i in 0..10_000 {
        let key = format!("deadline-{i}");
        by_shard
            .entry(client_map.shard_for_key(key.as_bytes()).id)
            .or_insert(key);
    }
    by_shard.into_values().collect()
}

/// Times `call`; records a violation when it takes longer than the deadline plus the margin.
async fn timed<T>(what: String, violations: &mut Vec<String>, call: impl Future<Output = T>) {
    let started = Instant::now();
    let _ = call.await;
    let took = started.elapsed();
    if took > DEADLINE + MARGIN {
        violations.push(format!("{what} took {took:?}"));
    }
    let mut slowest = SLOWEST.lock().expect("slowest lock");
    if took > slowest.1 {
        *slowest = (what, took);
    }
}

/// The slowest call so far, for the test's report.
static SLOWEST: std::sync::Mutex<(String, Duration)> = std::sync::Mutex::new((String::new(), Duration::ZERO));

/// Every kind of call against every shard, with a `DEADLINE` client.
async fn every_call(client: &Client, keys: &[String], label: &str) -> Vec<String> {
    let mut violations = Vec::new();
    for key in keys {
        timed(format!("{label}: get {key}"), &mut violations, client.get(key)).await;
        timed(
            format!("{label}: put {key}"),
            &mut violations,
            client.put(key, "v"),
        )
        .await;
        timed(
            format!("{label}: cas {key}"),
            &mut violations,
            client.compare_and_swap(key, Expect::Absent, Some(b"v")),
        )
        .await;
        timed(
            format!("{label}: delete {key}"),
            &mut violations,
            client.delete(key),
        )
        .await;
    }
    let ops: Vec<BatchOp> = keys
        .iter()
        .map(|key| BatchOp::Put {
            key: Bytes::from(key.clone()),
            value: Bytes::from_static(b"b"),
        })
        .collect();
    timed(
        format!("{label}: batch over every shard"),
        &mut violations,
        client.batch(ops),
    )
    .await;
    timed(
        format!("{label}: scan"),
        &mut violations,
        client.scan(ScanOptions {
            limit: 10,
            ..Default::default()
        }),
    )
    .await;
    let connecting = async {
        let mut config = ClientConfig::new(keys.iter().map(|_| "127.0.0.1:1".to_owned()));
        config.request_timeout = DEADLINE;
        Client::with_config(config).await
    };
    timed(
        format!("{label}: connect to unreachable seeds"),
        &mut violations,
        connecting,
    )
    .await;
    violations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_return_by_their_deadline_with_nodes_stopped_or_frozen() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3, 4, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let patient = cluster.client().await?;
    let keys = keys(&patient.shard_map().await);
    let impatient = |cluster: &ProcessCluster| {
        let mut config = ClientConfig::new(cluster.endpoints());
        config.request_timeout = DEADLINE;
        Client::with_config(config)
    };

    // Two of three nodes stopped.
    let client = impatient(&cluster).await?;
    cluster.kill(2);
    cluster.kill(3);
    let mut violations = every_call(&client, &keys, "two nodes stopped").await;
    // A client whose seeds include the stopped nodes still connects by its deadline.
    timed(
        "connect with stopped seeds".into(),
        &mut violations,
        impatient(&cluster),
    )
    .await;
    cluster.start_node(2)?;
    cluster.start_node(3)?;
    cluster.wait_ready(Duration::from_secs(60)).await?;

    // Two of three nodes frozen: connections open but nothing answers.
    let client = impatient(&cluster).await?;
    cluster.pause(2);
    cluster.pause(3);
    violations.extend(every_call(&client, &keys, "two nodes frozen").await);
    timed(
        "connect with frozen seeds".into(),
        &mut violations,
        impatient(&cluster),
    )
    .await;
    cluster.resume(2);
    cluster.resume(3);

    let slowest = SLOWEST.lock().expect("slowest lock").clone();
    eprintln!(
        "deadlines: the slowest call was {} at {:?} (deadline {DEADLINE:?})",
        slowest.0, slowest.1
    );
    assert!(
        violations.is_empty(),
        "calls that overran their {DEADLINE:?} deadline by more than {MARGIN:?}:\n{}",
        violations.join("\n")
    );
    cluster.wait_ready(Duration::from_secs(60)).await?;
    patient.put("after", "ok").await?;
    assert_replicas_identical(&patient).await?;
    Ok(())
}

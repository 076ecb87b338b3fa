//! With a majority of nodes down a shard cannot commit, and the client says exactly what it knows:
//! a write the surviving node proposed but cannot commit ends as `OutcomeUnknown`; a write no node
//! would propose ends as `Unavailable` at the deadline, naming the shard, and never appears. When
//! the nodes return, the cluster serves again with its data intact.
//!
//! The nodes run with long election timeouts (3–6 s), so node 1's leader lease — which lets it
//! accept writes for a while after losing its quorum — lasts long enough to be tested without
//! racing the clock, and then expires long before the later steps.

use std::time::{Duration, Instant};

use ringkv_client::{Client, ClientConfig, Error};
use ringkv_tests::{ProcessCluster, assert_replicas_identical};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_majority_requests_fail_at_the_deadline_saying_whether_they_applied() -> anyhow::Result<()>
{
    let config = tempfile::NamedTempFile::new()?;
    std::fs::write(
        config.path(),
        "[raft]\nheartbeat_interval_ms = 300\nelection_timeout_min_ms = 3000\nelection_timeout_max_ms = 6000\n",
    )?;
    let config_path = config.path().display().to_string();
    let mut cluster = ProcessCluster::start(3, 4, &["--config", &config_path])?;
    cluster.wait_ready(Duration::from_secs(90)).await?;
    let client = cluster.client().await?;
    client.put("kept", "before").await?;

    // Leaders sit on their preferred nodes (wait_ready waits for that). Pick a key whose shard node
    // 1 leads and one whose shard another node leads.
    let map = client.shard_map().await;
    let led_by = |key: &str| map.shard_for_key(key.as_bytes()).voters[0].node_id.0;
    let find = |want_node_1: bool, skip: usize| {
        (0..10_000)
            .map(|i| format!("key-{i}"))
            .filter(|k| (led_by(k) == 1) == want_node_1)
            .nth(skip)
            .expect("some key")
    };
    let (proposed, refused_by_1, elsewhere) = (find(true, 0), find(true, 1), find(false, 0));
    let mut config = ClientConfig::new([cluster.node(1).addr.clone()]);
    config.request_timeout = Duration::from_secs(3);
    let impatient = Client::with_config(config).await?;

    cluster.kill(2);
    cluster.kill(3);
    let killed_at = Instant::now();

    // 1. Node 1 still leads its shard (its lease lasts about 6 s after its last quorum) and
    //    proposes the write, which cannot commit without a majority: its outcome is unknown.
    let shard = map.shard_for_key(proposed.as_bytes()).id;
    let error = impatient
        .put(&proposed, "maybe")
        .await
        .expect_err("no majority, no acknowledgement");
    assert!(
        killed_at.elapsed() < Duration::from_secs(5),
        "the proposal was made within node 1's lease"
    );
    assert!(
        matches!(&error, Error::OutcomeUnknown { shard_id, .. } if *shard_id == shard),
        "a proposed write that cannot commit has an unknown outcome: {error:?}"
    );
    assert!(error.may_have_applied() && !error.is_retryable());

    // 2. A shard whose leader died has no leader: the write is never proposed, and the client
    //    keeps trying until its deadline, then names the shard and says nothing was applied.
    let shard = map.shard_for_key(elsewhere.as_bytes()).id;
    let started = Instant::now();
    let error = impatient
        .put(&elsewhere, "never")
        .await
        .expect_err("no majority, no write");
    let waited = started.elapsed();
    match &error {
        Error::Unavailable {
            shard_id, attempts, ..
        } => {
            assert_eq!(*shard_id, shard, "{error}");
            assert!(*attempts > 1, "it retried before giving up: {error}");
        }
        other => panic!("expected Unavailable naming shard {shard}, got {other:?}"),
    }
    assert!(error.to_string().contains(&format!("shard {shard}")), "{error}");
    assert!(!error.may_have_applied() && error.is_retryable());
    assert!(
        waited >= Duration::from_millis(2_900),
        "gave up before the deadline: {waited:?}"
    );

    // 3. Reads need a quorum too.
    let error = impatient
        .get(&proposed)
        .await
        .expect_err("no quorum, no linearizable read");
    assert!(matches!(error, Error::Unavailable { .. }), "{error}");

    // 4. Once node 1's lease has run out it proposes nothing either: a certain failure.
    let lease_over = killed_at + Duration::from_secs(8);
    tokio::time::sleep_until(lease_over.into()).await;
    let error = impatient
        .put(&refused_by_1, "never")
        .await
        .expect_err("no lease, no proposal");
    assert!(
        matches!(error, Error::Unavailable { .. }) && !error.may_have_applied(),
        "a write refused before proposing is certainly not applied: {error:?}"
    );

    cluster.start_node(2)?;
    cluster.start_node(3)?;
    cluster.wait_ready(Duration::from_secs(90)).await?;
    assert_eq!(client.get("kept").await?.map(|v| v.value), Some("before".into()));
    for key in [&elsewhere, &refused_by_1] {
        assert_eq!(
            client.get(key).await?,
            None,
            "{key}: a write reported as not applied never appears"
        );
    }
    // The proposed write may have committed once the majority returned: either is fine.
    let maybe = client.get(&proposed).await?.map(|v| v.value);
    assert!(maybe.is_none() || maybe == Some("maybe".into()), "{maybe:?}");
    client.put("after", "back").await?;
    assert_replicas_identical(&client).await?;
    Ok(())
}

//! With a majority of nodes down a shard cannot commit: the client keeps trying until the
//! request's deadline and then says which shard was unavailable. When the nodes return, the
//! cluster serves again with its data intact.

use std::time::{Duration, Instant};

use ringkv_client::{Client, ClientConfig, Error};
use ringkv_tests::ProcessCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_majority_requests_fail_at_the_deadline_naming_the_shard() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3, 4, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    client.put("kept", "before").await?;

    // Leaders sit on their preferred nodes (wait_ready waits for that). Pick a key whose shard node
    // 1 leads and one whose shard another node leads.
    let map = client.shard_map().await;
    let led_by = |key: &str| map.shard_for_key(key.as_bytes()).voters[0].node_id;
    let find = |want_node_1: bool| {
        (0..10_000)
            .map(|i| format!("key-{i}"))
            .find(|k| (led_by(k) == 1) == want_node_1)
            .expect("some key")
    };
    let (on_node_1, elsewhere) = (find(true), find(false));

    cluster.kill(2);
    cluster.kill(3);
    let mut config = ClientConfig::new([cluster.node(1).addr.clone()]);
    config.request_timeout = Duration::from_secs(3);
    let impatient = Client::with_config(config).await?;

    // A shard whose leader died has no leader: the write is never proposed, and the client keeps
    // trying until its deadline, then names the shard.
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
    assert!(
        waited >= Duration::from_secs(3),
        "gave up before the deadline: {waited:?}"
    );
    assert!(error.is_retryable());

    // Reads need a quorum too: a read of node 1's own shard also fails at the deadline.
    let shard = map.shard_for_key(on_node_1.as_bytes()).id;
    let error = impatient
        .get(&on_node_1)
        .await
        .expect_err("no quorum, no linearizable read");
    assert!(
        matches!(error, Error::Unavailable { shard_id, .. } if shard_id == shard),
        "{error}"
    );

    // Node 1 still believes it leads its shard and accepts the write, which cannot commit now but
    // could later: the client must say the outcome is unknown, not that it failed or succeeded.
    let error = impatient
        .put(&on_node_1, "maybe")
        .await
        .expect_err("no majority, no acknowledgement");
    assert!(
        matches!(&error, Error::OutcomeUnknown { shard_id, .. } if *shard_id == shard)
            || matches!(&error, Error::Unavailable { shard_id, .. } if *shard_id == shard),
        "{error}"
    );

    cluster.start_node(2)?;
    cluster.start_node(3)?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    assert_eq!(client.get("kept").await?.map(|v| v.value), Some("before".into()));
    assert_eq!(
        client.get(&elsewhere).await?,
        None,
        "a write that was never proposed never appears"
    );
    client.put("after", "back").await?;
    Ok(())
}

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

    cluster.kill(2);
    cluster.kill(3);
    let mut config = ClientConfig::new([cluster.node(1).addr.clone()]);
    config.request_timeout = Duration::from_secs(3);
    let impatient = Client::with_config(config).await?;
    let shard = impatient.shard_map().await.shard_for_key(b"lost").id;
    let started = Instant::now();
    let error = impatient
        .put("lost", "never")
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

    cluster.start_node(2)?;
    cluster.start_node(3)?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    assert_eq!(client.get("kept").await?.map(|v| v.value), Some("before".into()));
    client.put("after", "back").await?;
    Ok(())
}

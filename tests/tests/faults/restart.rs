//! All three processes SIGKILLed at once and restarted: every acknowledged write is there, both
//! when the kill comes after every write returned and when it comes while writes are in flight;
//! and every shard's replicas end identical.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ringkv_client::Client;
use ringkv_tests::{ProcessCluster, assert_replicas_identical};

const CONCURRENCY: usize = 32;

/// Writes `key-{i}` for `i` in `keys` from `CONCURRENCY` tasks until done or `stop`; returns the
/// writes acknowledged. Keys divisible by 3 are written twice, so the value that must survive is
/// the last one acknowledged.
async fn write_keys(
    client: Arc<Client>,
    keys: std::ops::Range<usize>,
    stop: Arc<AtomicBool>,
) -> BTreeMap<String, String> {
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..CONCURRENCY {
        let (client, stop) = (client.clone(), stop.clone());
        let keys = keys.clone();
        tasks.spawn(async move {
            let mut acknowledged = BTreeMap::new();
            for i in keys.skip(worker).step_by(CONCURRENCY) {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (key, value) = (format!("key-{i}"), format!("value-{i}"));
                if client.put(&key, &value).await.is_err() {
                    // Only in-flight writes cut by the kill fail; they are not acknowledged.
                    break;
                }
                acknowledged.insert(key.clone(), value.clone());
                if i % 3 == 0 {
                    let second = format!("{value}-second");
                    if client.put(&key, &second).await.is_err() {
                        // The second write may or may not have applied: the key holds either.
                        acknowledged.remove(&key);
                        break;
                    }
                    acknowledged.insert(key, second);
                }
            }
            acknowledged
        });
    }
    let mut acknowledged = BTreeMap::new();
    while let Some(result) = tasks.join_next().await {
        acknowledged.extend(result.expect("writer task"));
    }
    acknowledged
}

async fn assert_present(
    client: &Client,
    acknowledged: &BTreeMap<String, String>,
    when: &str,
) -> anyhow::Result<()> {
    for (key, value) in acknowledged {
        let stored = client.get(key).await?;
        assert_eq!(
            stored.map(|v| v.value),
            Some(value.as_bytes().to_vec().into()),
            "{key} ({when})"
        );
    }
    Ok(())
}

async fn restart_all(cluster: &mut ProcessCluster) -> anyhow::Result<()> {
    for node_id in [1, 2, 3] {
        cluster.kill(node_id);
    }
    for node_id in [1, 2, 3] {
        cluster.start_node(node_id)?;
    }
    cluster.wait_ready(Duration::from_secs(60)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_cluster_sigkill_and_restart_keeps_every_acknowledged_write() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3, 16, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;

    // 1. Every write has returned; the kill comes with no grace period: the last
    //    acknowledgements are milliseconds old.
    let client = Arc::new(cluster.client().await?);
    let never = Arc::new(AtomicBool::new(false));
    let first = write_keys(client.clone(), 0..2_000, never).await;
    assert_eq!(first.len(), 2_000, "every write was acknowledged");
    drop(client);
    restart_all(&mut cluster).await?;
    let client = cluster.client().await?;
    assert_present(&client, &first, "after a kill with no write in flight").await?;

    // 2. The kill comes while 32 writers are mid-flight.
    let writer_client = Arc::new(cluster.client().await?);
    let stop = Arc::new(AtomicBool::new(false));
    let writers = tokio::spawn(write_keys(writer_client.clone(), 10_000..1_000_000, stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    for node_id in [1, 2, 3] {
        cluster.kill(node_id);
    }
    let second = writers.await?;
    stop.store(true, Ordering::Relaxed);
    assert!(
        second.len() > 50,
        "writes were flowing when the cluster was killed: {}",
        second.len()
    );
    drop(writer_client);
    for node_id in [1, 2, 3] {
        cluster.start_node(node_id)?;
    }
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    assert_present(&client, &first, "after a kill with writes in flight").await?;
    assert_present(&client, &second, "written while the kill came").await?;

    // And the cluster still takes writes, and its replicas agree.
    client.put("after-restart", "ok").await?;
    assert!(client.get("after-restart").await?.is_some());
    assert_replicas_identical(&client).await?;
    eprintln!(
        "restart: {} writes acknowledged before a quiet kill, {} before a kill mid-flight; all present",
        first.len(),
        second.len()
    );
    Ok(())
}

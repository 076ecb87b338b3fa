//! All three processes SIGKILLed at once and restarted: every acknowledged write is there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ringkv_tests::ProcessCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_cluster_sigkill_and_restart_keeps_every_acknowledged_write() -> anyhow::Result<()> {
    const N_KEYS: usize = 2_000;
    const CONCURRENCY: usize = 32;
    let mut cluster = ProcessCluster::start(3, 16, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = Arc::new(cluster.client().await?);

    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..CONCURRENCY {
        let client = client.clone();
        tasks.spawn(async move {
            let mut acknowledged = BTreeMap::new();
            for i in (worker..N_KEYS).step_by(CONCURRENCY) {
                let (key, value) = (format!("key-{i}"), format!("value-{i}"));
                client.put(&key, &value).await?;
                // Overwrite some keys, so the surviving value must be the last one acknowledged.
                if i % 3 == 0 {
                    client.put(&key, format!("{value}-second")).await?;
                    acknowledged.insert(key, format!("{value}-second"));
                } else {
                    acknowledged.insert(key, value);
                }
            }
            anyhow::Ok(acknowledged)
        });
    }
    let mut acknowledged = BTreeMap::new();
    while let Some(result) = tasks.join_next().await {
        acknowledged.extend(result??);
    }
    assert_eq!(acknowledged.len(), N_KEYS);

    // No grace period: the last acknowledgements are milliseconds old.
    for node_id in [1, 2, 3] {
        cluster.kill(node_id);
    }
    drop(client);
    for node_id in [1, 2, 3] {
        cluster.start_node(node_id)?;
    }
    cluster.wait_ready(Duration::from_secs(60)).await?;

    let client = cluster.client().await?;
    for (key, value) in &acknowledged {
        let stored = client.get(key).await?;
        assert_eq!(
            stored.map(|v| v.value),
            Some(value.as_bytes().to_vec().into()),
            "{key} after restart"
        );
    }
    // And the cluster still takes writes.
    client.put("after-restart", "ok").await?;
    assert!(client.get("after-restart").await?.is_some());
    Ok(())
}

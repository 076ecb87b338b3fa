//! 10,000 keys written through the client land on all 16 shards and all read back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ringkv_engine::ShardId;
use ringkv_tests::ProcessCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_keys_spread_over_every_shard_and_read_back() -> anyhow::Result<()> {
    const N_KEYS: usize = 10_000;
    const CONCURRENCY: usize = 64;
    let cluster = ProcessCluster::start(3, 16, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = Arc::new(cluster.client().await?);

    // Which shard each key belongs to, by the map the client routes with.
    let map = client.shard_map().await;
    assert_eq!(map.shards.len(), 16);
    let mut keys_per_shard: BTreeMap<u64, usize> = BTreeMap::new();
    for i in 0..N_KEYS {
        *keys_per_shard
            .entry(map.shard_for_key(format!("key-{i}").as_bytes()).id.0)
            .or_default() += 1;
    }
    assert_eq!(
        keys_per_shard.len(),
        16,
        "every shard owns some of the keys: {keys_per_shard:?}"
    );

    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..CONCURRENCY {
        let client = client.clone();
        tasks.spawn(async move {
            for i in (worker..N_KEYS).step_by(CONCURRENCY) {
                client.put(format!("key-{i}"), format!("value-{i}")).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }

    // Every shard's Raft log applied at least one entry per key it owns: the writes really went
    // to the shards the map says, on every replica.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut behind = Vec::new();
        for node in &cluster.nodes {
            let status = ringkv_tests::admin(&client).node_status(&node.addr).await?;
            // Every shard, and the metadata group (3 nodes: all of them are its voters).
            assert_eq!(
                status.replicas.len(),
                17,
                "node {} hosts every shard and the metadata group",
                node.node_id
            );
            for replica in status.replicas.iter().filter(|r| r.shard_id != ShardId::META) {
                if (replica.applied_index as usize) < keys_per_shard[&replica.shard_id.0] {
                    behind.push((node.node_id, replica.shard_id.0, replica.applied_index));
                }
            }
        }
        if behind.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas that never applied their keys: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..CONCURRENCY {
        let client = client.clone();
        tasks.spawn(async move {
            for i in (worker..N_KEYS).step_by(CONCURRENCY) {
                let value = client.get(format!("key-{i}")).await?;
                let value = value.unwrap_or_else(|| panic!("key-{i} is missing"));
                assert_eq!(value.value, format!("value-{i}").as_bytes(), "key-{i}");
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_settle_evenly_on_their_preferred_nodes() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3, 16, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    let map = client.shard_map().await;
    let preferred: BTreeMap<u64, u64> = map.groups().map(|s| (s.id.0, s.voters[0].node_id.0)).collect();

    // Whoever won the first elections, the balancer hands each shard to its preferred node.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        let leaders = cluster.leaders().await?;
        let misplaced: Vec<_> = leaders
            .iter()
            .filter(|(shard, leader)| **leader != Some(preferred[*shard]))
            .map(|(shard, leader)| (*shard, *leader))
            .collect();
        if misplaced.is_empty() {
            let mut per_node: BTreeMap<u64, usize> = BTreeMap::new();
            for leader in leaders.values().flatten() {
                *per_node.entry(*leader).or_default() += 1;
            }
            let (min, max) = (per_node.values().min().copied(), per_node.values().max().copied());
            assert_eq!(per_node.len(), 3, "every node leads some shards: {per_node:?}");
            assert!(
                max.unwrap() - min.unwrap() <= 1,
                "leaders spread evenly: {per_node:?}"
            );
            return Ok(());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "shards still led away from their preferred node (shard, leader): {misplaced:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

//! A prefix scan whose prefix fixes the hash tag (`{tag}:`) reads the one shard holding those
//! keys: it answers while other shards have lost their quorum, where a scan over the keyspace
//! cannot.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use ringkv_client::{NodeId, ScanOptions};
use ringkv_tests::ProcessCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_of_a_hash_tag_needs_only_the_shard_holding_it() -> anyhow::Result<()> {
    // Four nodes, eight shards of three replicas: with nodes 3 and 4 gone, the shards on nodes 1
    // and 2 keep a quorum and the others do not.
    let mut cluster = ProcessCluster::start(4, 8, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client_with_timeout(Duration::from_secs(3)).await?;
    let map = client.shard_map().await;
    let survives = |hash: u64| {
        let voters: BTreeSet<NodeId> = map
            .shard_for_hash(hash)
            .voters
            .iter()
            .map(|v| v.node_id)
            .collect();
        voters.contains(&NodeId(1)) && voters.contains(&NodeId(2))
    };
    assert!(
        map.shards.iter().any(|s| !survives(s.arc.start)),
        "some shard must lose its quorum for this test to mean anything"
    );
    let tag = (0..1_000)
        .map(|n| format!("{{user{n}}}:"))
        .find(|tag| ringkv_proto::prefix_hash(tag.as_bytes()).is_some_and(survives))
        .context("no tag on a shard of nodes 1 and 2")?;
    let mut written = BTreeSet::new();
    for n in 0..10 {
        let key = format!("{tag}item{n}");
        client.put(&key, "v").await?;
        written.insert(Bytes::from(key));
    }
    // Other keys on every shard, some starting like the tag but without closing it.
    for n in 0..50 {
        client.put(format!("other{n}"), "v").await?;
    }

    cluster.kill(3);
    cluster.kill(4);
    let tagged = ScanOptions {
        prefix: Bytes::from(tag.clone()),
        limit: 1_000,
        cursor: None,
        read: None,
    };
    // The tag's shard may need an election first (its leader may have been on node 3 or 4).
    let deadline = Instant::now() + Duration::from_secs(60);
    let page = loop {
        match client.scan(tagged.clone()).await {
            Ok(page) => break page,
            Err(error) if Instant::now() < deadline => {
                tracing::debug!(%error, "tagged scan not answered yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => bail!(
                "the tagged scan never answered: {error}\n{}",
                cluster.log_tails(20)
            ),
        }
    };
    let keys: BTreeSet<Bytes> = page.entries.into_iter().map(|e| e.key).collect();
    assert_eq!(keys, written, "the scan of {tag} returns its keys, once each");
    assert!(page.next_cursor.is_none(), "a tagged scan ends at its shard");

    // The same keys by a prefix that does not close the tag: every shard is asked, and some have
    // no quorum.
    let open = ScanOptions {
        prefix: Bytes::from(tag.trim_end_matches(['}', ':']).to_owned()),
        limit: 1_000,
        cursor: None,
        read: None,
    };
    assert!(
        client.scan(open).await.is_err(),
        "a scan over every shard answered while some shards have no quorum"
    );
    Ok(())
}

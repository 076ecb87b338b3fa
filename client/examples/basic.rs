//! A tour of ringkv-client against a running cluster:
//! `cargo run -p ringkv-client --example basic -- 127.0.0.1:7379`.
//! Writes, reads, compare-and-swap, an atomic batch under one hash tag, and a prefix scan.

use bytes::Bytes;
use ringkv_client::{BatchOp, Client, Expect, ScanOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7379".into());
    let client = Client::connect([endpoint.clone()]).await?;
    let map = client.shard_map().await;
    println!(
        "connected to {endpoint}: {} nodes, {} shards",
        map.nodes.len(),
        map.shards.len()
    );

    let version = client.put("{user42}:name", "alice").await?;
    println!("put {{user42}}:name = alice (version {version})");
    let name = client.get("{user42}:name").await?.expect("just written");
    println!(
        "get {{user42}}:name -> {} (version {})",
        String::from_utf8_lossy(&name.value),
        name.version
    );

    // Compare-and-swap on the version just read: succeeds once, then fails with the current value.
    let swapped = client
        .compare_and_swap("{user42}:name", Expect::Version(name.version), Some(b"bob"))
        .await?;
    println!(
        "cas on version {} -> succeeded: {}",
        name.version, swapped.succeeded
    );
    let again = client
        .compare_and_swap("{user42}:name", Expect::Version(name.version), Some(b"carol"))
        .await?;
    let current = again.current.expect("the key exists");
    println!(
        "cas on the same version again -> succeeded: {}, key holds {}",
        again.succeeded,
        String::from_utf8_lossy(&current.value)
    );

    // Keys with one hash tag share a shard, so this batch is atomic.
    let ops = vec![
        BatchOp::Put {
            key: Bytes::from_static(b"{user42}:cart"),
            value: Bytes::from_static(b"book"),
        },
        BatchOp::Put {
            key: Bytes::from_static(b"{user42}:orders"),
            value: Bytes::from_static(b"1"),
        },
    ];
    let outcome = client.batch(ops).await?;
    println!(
        "atomic batch applied at {:?} (shard -> version)",
        outcome.versions
    );

    let page = client
        .scan(ScanOptions {
            prefix: Bytes::from_static(b"{user42}"),
            limit: 10,
            cursor: None,
            read: None,
        })
        .await?;
    for entry in &page.entries {
        println!(
            "scan: {} = {}",
            String::from_utf8_lossy(&entry.key),
            String::from_utf8_lossy(&entry.value)
        );
    }

    let existed = client.delete("{user42}:cart").await?;
    println!("delete {{user42}}:cart -> existed: {existed}");
    Ok(())
}

//! Checks every fault test ends with: the replicas of every shard hold identical data.

use std::time::Duration;

use anyhow::bail;
use ringkv_client::Client;

/// Runs the replica check (`ringkv check`) on every shard and fails, naming the shard and each
/// replica's digest, if any shard's replicas differ or could not all be checked.
pub async fn assert_replicas_identical(client: &Client) -> anyhow::Result<()> {
    let report = crate::admin(client)
        .check_replicas(Duration::from_secs(20))
        .await?;
    let bad: Vec<String> = report
        .shards
        .iter()
        .filter(|shard| !shard.consistent())
        .map(|shard| {
            let what = if shard.divergent() {
                "replicas DIFFER"
            } else {
                "not fully checked"
            };
            format!(
                "shard {} at index {}: {what}: {:?}",
                shard.shard_id, shard.index, shard.replicas
            )
        })
        .collect();
    if !bad.is_empty() {
        bail!("replica check failed:\n{}", bad.join("\n"));
    }
    Ok(())
}

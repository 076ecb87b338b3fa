//! The replica check: are the replicas of every shard (and of the metadata group) identical?
//!
//! For each shard, the leader proposes a digest command; every replica, when it applies that
//! command, hashes its shard state (data and request-id table) as of that same log index, in the
//! background. The check then asks each replica's node for its digest at that index and compares.
//! A replica that cannot have one (it restarted, or skipped the index by installing a snapshot) is
//! asked again after a new digest command, a few times.

use std::time::{Duration, Instant};

use ringkv_proto::pb::{self, replica_digest_response::State};
use ringkv_proto::{NodeId, ReplicaId, ShardId};

use crate::admin::AdminClient;
use crate::classify::RequestKind;
use crate::error::Error;
use crate::plan::{Plan, Target, request, unary};
use crate::pool::cluster;

/// Digest commands proposed per shard before a replica without a digest is reported as such.
const ROUNDS: usize = 3;
/// Pause between polls of a replica still computing.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// One replica's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaDigest {
    pub node_id: NodeId,
    pub replica_id: ReplicaId,
    /// The digest and the number of records hashed, or why there is none.
    pub digest: Result<(u64, u64), String>,
}

/// One shard's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardCheck {
    pub shard_id: ShardId,
    /// The log index the digests describe.
    pub index: u64,
    pub replicas: Vec<ReplicaDigest>,
}

impl ShardCheck {
    /// Every replica has a digest, and they are all equal.
    pub fn consistent(&self) -> bool {
        let mut digests = self.replicas.iter().map(|r| r.digest.as_ref().ok());
        match digests.next() {
            Some(Some(first)) => digests.all(|d| d == Some(first)),
            _ => false,
        }
    }

    /// Two replicas have different digests: a divergence.
    pub fn divergent(&self) -> bool {
        let digests: Vec<_> = self
            .replicas
            .iter()
            .filter_map(|r| r.digest.as_ref().ok())
            .collect();
        digests.windows(2).any(|pair| pair[0] != pair[1])
    }
}

/// The result of checking every shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub shards: Vec<ShardCheck>,
}

impl CheckReport {
    /// Every replica of every shard has a digest, and each shard's are equal.
    pub fn consistent(&self) -> bool {
        self.shards.iter().all(ShardCheck::consistent)
    }

    pub fn divergent(&self) -> Vec<&ShardCheck> {
        self.shards.iter().filter(|s| s.divergent()).collect()
    }
}

impl AdminClient {
    /// Checks every shard's replicas (see the module header). Each shard gets `per_shard` to finish.
    pub async fn check_replicas(&self, per_shard: Duration) -> Result<CheckReport, Error> {
        self.refresh_shard_map().await?;
        // The metadata group too: its replicas hold the map and must agree like any shard's.
        let shard_ids: Vec<ShardId> = self.shard_map().await.groups().map(|s| s.id).collect();
        let mut shards = Vec::with_capacity(shard_ids.len());
        for shard_id in shard_ids {
            // A shard that cannot be checked (no leader, say) is reported as such; the others
            // are still checked.
            let check = match self.check_shard(shard_id, per_shard).await {
                Ok(check) => check,
                Err(error) => self.unchecked(shard_id, &error).await,
            };
            shards.push(check);
        }
        Ok(CheckReport { shards })
    }

    /// A shard whose check could not start: every replica carries the reason.
    async fn unchecked(&self, shard_id: ShardId, error: &Error) -> ShardCheck {
        let map = self.shard_map().await;
        let replicas = map
            .shard(shard_id)
            .map(|shard| {
                shard
                    .voters
                    .iter()
                    .chain(&shard.learners)
                    .map(|replica| ReplicaDigest {
                        node_id: replica.node_id,
                        replica_id: replica.replica_id,
                        digest: Err(format!("no digest command could be proposed: {error}")),
                    })
                    .collect()
            })
            .unwrap_or_default();
        ShardCheck {
            shard_id,
            index: 0,
            replicas,
        }
    }

    /// Checks one shard's replicas, within `timeout`.
    pub async fn check_shard(&self, shard_id: ShardId, timeout: Duration) -> Result<ShardCheck, Error> {
        let deadline = Instant::now() + timeout;
        let mut check = ShardCheck {
            shard_id,
            index: 0,
            replicas: Vec::new(),
        };
        for _ in 0..ROUNDS {
            check.index = self.propose_digest(shard_id, deadline).await?;
            check.replicas = self.collect_digests(shard_id, check.index, deadline).await;
            let missing = check
                .replicas
                .iter()
                .any(|r| r.digest.as_ref().is_err_and(|why| why.starts_with("no digest")));
            if !missing || Instant::now() >= deadline {
                break;
            }
        }
        Ok(check)
    }

    async fn propose_digest(&self, shard_id: ShardId, deadline: Instant) -> Result<u64, Error> {
        let plan = Plan {
            inner: &self.client().inner,
            target: Target::Shard(shard_id),
            kind: RequestKind::Read,
            deadline,
        };
        let response = plan
            .run(|node, _route, time| {
                let message = pb::CheckShardRequest { shard_id: shard_id.0 };
                async move { unary(cluster(node.channel).check_shard(request(message, time))).await }
            })
            .await?;
        Ok(response.index)
    }

    /// Every replica's digest at `index`, waiting (by `deadline`) for those still computing.
    async fn collect_digests(&self, shard_id: ShardId, index: u64, deadline: Instant) -> Vec<ReplicaDigest> {
        let map = self.shard_map().await;
        let Some(shard) = map.shard(shard_id) else {
            return Vec::new();
        };
        let replicas: Vec<_> = shard.voters.iter().chain(&shard.learners).copied().collect();
        let mut results = Vec::with_capacity(replicas.len());
        for replica in replicas {
            let addr = map.node_addr(replica.node_id).unwrap_or_default().to_owned();
            let digest = self.poll_digest(&addr, shard_id, index, deadline).await;
            results.push(ReplicaDigest {
                node_id: replica.node_id,
                replica_id: replica.replica_id,
                digest,
            });
        }
        results
    }

    async fn poll_digest(
        &self,
        addr: &str,
        shard_id: ShardId,
        index: u64,
        deadline: Instant,
    ) -> Result<(u64, u64), String> {
        let mut last = String::from("no answer before the check's deadline");
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(last);
            }
            let mut client = self.client().inner.pool.cluster(addr)?;
            let message = pb::ReplicaDigestRequest {
                shard_id: shard_id.0,
                index,
            };
            let mut call = tonic::Request::new(message);
            call.set_timeout(remaining);
            match tokio::time::timeout(remaining, client.replica_digest(call)).await {
                Ok(Ok(response)) => {
                    let response = response.into_inner();
                    match response.state() {
                        State::Done => return Ok((response.digest, response.keys)),
                        State::Missing => {
                            return Err(format!(
                                "no digest at index {index} (the replica restarted or skipped that index \
                                 by installing a snapshot)"
                            ));
                        }
                        State::Pending => last = format!("still computing the digest at index {index}"),
                    }
                }
                Ok(Err(status)) => last = format!("node at {addr} answered: {}", status.message()),
                Err(_) => last = format!("node at {addr} did not answer"),
            }
            tokio::time::sleep(POLL_INTERVAL.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }
}

//! The `Client` and its request plans. Every request goes through `Client::call`: route to the
//! shard's leader, send, and on a typed error act on it — retry at a hinted leader at once, refresh
//! the map, or back off with jitter — until success or the request's deadline.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use prost::Message;
use tokio::sync::Mutex as AsyncMutex;
use tonic::transport::{Channel, Endpoint};
use tracing::debug;

use ringkv_proto::pb::{self, cluster_client::ClusterClient, error_detail::Kind, kv_client::KvClient};
use ringkv_proto::{ShardId, ShardMap, check_batch, check_key, check_value, limits::MAX_MESSAGE_BYTES};

use crate::backoff::Backoff;
use crate::error::Error;
use crate::route::RouteCache;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Nodes to fetch the shard map from at first; any one that answers is enough.
    pub endpoints: Vec<String>,
    /// How long one request may take, retries included.
    pub request_timeout: Duration,
    /// How long connecting to a node may take.
    pub connect_timeout: Duration,
    /// How often the shard map is refreshed in the background, besides refreshes on errors.
    pub map_refresh_interval: Duration,
}

impl ClientConfig {
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> ClientConfig {
        ClientConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..ClientConfig::default()
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            endpoints: vec!["127.0.0.1:7379".into()],
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            map_refresh_interval: Duration::from_secs(30),
        }
    }
}

/// A value with the version (log index) that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Bytes,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Bytes,
    pub value: Bytes,
    pub version: u64,
}

/// What a compare-and-swap expects the key to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Absent,
    Value(Bytes),
    Version(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasOutcome {
    pub succeeded: bool,
    /// On success, the version written (0 for a delete).
    pub version: u64,
    /// On failure, what the key held instead.
    pub current: Option<Versioned>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    Put { key: Bytes, value: Bytes },
    Delete { key: Bytes },
}

impl BatchOp {
    fn key(&self) -> &Bytes {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key } => key,
        }
    }
}

/// Per-shard versions of a batch that was split across shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    pub versions: BTreeMap<ShardId, u64>,
}

/// Whether a request may be sent again after an attempt whose fate is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Reads: repeating them changes nothing.
    Always,
    /// Every write. Even a put is not safe to repeat: if the first attempt commits after all, the
    /// key takes the value twice, and a write by another client in between is undone — a history
    /// the failover test caught as non-linearizable. Such a write fails with `OutcomeUnknown`.
    OnlyIfNotApplied,
}

/// What to route a request by.
#[derive(Debug, Clone)]
pub(crate) enum Target<'a> {
    Key(&'a [u8]),
    Shard(ShardId),
}

/// Cheap to clone; clones share connections and the route cache.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: ClientConfig,
    /// A std lock: held only to read or update the cache, never across an await.
    routes: Mutex<RouteCache>,
    /// One channel per node address; HTTP/2 multiplexes all requests to a node over it.
    channels: Mutex<HashMap<String, Channel>>,
    /// One map refresh at a time; the others wait for it and reuse its result.
    refreshing: AsyncMutex<Instant>,
}

/// A refresh within this long of the previous one is skipped.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(50);
/// Longest wait for one read attempt, so one stalled node cannot eat a whole deadline.
const MAX_ATTEMPT: Duration = Duration::from_secs(2);
/// How much longer than the deadline it gives a node the client waits for the node's answer.
const ANSWER_GRACE: Duration = Duration::from_millis(500);
/// NotLeader hints followed in a row before backing off (hints can ping-pong during elections).
const MAX_HINT_HOPS: u32 = 3;

impl Client {
    pub async fn connect<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Result<Client, Error> {
        Client::with_config(ClientConfig::new(endpoints)).await
    }

    pub async fn with_config(config: ClientConfig) -> Result<Client, Error> {
        let channels = Mutex::new(HashMap::new());
        let mut last_error = String::from("no endpoints given");
        let mut fetched = None;
        for endpoint in &config.endpoints {
            match fetch_map(&channels, &config, endpoint).await {
                Ok(map) => {
                    fetched = Some(map);
                    break;
                }
                Err(error) => last_error = error,
            }
        }
        let Some(map) = fetched else {
            return Err(Error::NoSeedReachable {
                seeds: config.endpoints.clone(),
                last_error,
            });
        };
        let inner = Arc::new(Inner {
            config,
            routes: Mutex::new(RouteCache::new(map)),
            channels,
            refreshing: AsyncMutex::new(Instant::now()),
        });
        spawn_refresher(Arc::downgrade(&inner));
        Ok(Client { inner })
    }

    /// The cached shard map, with leader hints.
    pub async fn shard_map(&self) -> ShardMap {
        self.inner.routes.lock().expect("route cache lock").map().clone()
    }

    /// Fetches the shard map from any reachable node now.
    pub async fn refresh_shard_map(&self) -> Result<(), Error> {
        self.inner.refresh(true).await
    }

    /// A node's view of its replicas (for `ringkv status`).
    pub async fn node_status(&self, addr: &str) -> Result<pb::StatusResponse, Error> {
        let channel =
            channel(&self.inner.channels, &self.inner.config, addr).map_err(|e| Error::NoSeedReachable {
                seeds: vec![addr.into()],
                last_error: e,
            })?;
        let mut client = ClusterClient::new(channel);
        let status = tokio::time::timeout(MAX_ATTEMPT, client.status(pb::StatusRequest {})).await;
        match status {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(Error::NoSeedReachable {
                seeds: vec![addr.into()],
                last_error: status.message().into(),
            }),
            Err(_) => Err(Error::NoSeedReachable {
                seeds: vec![addr.into()],
                last_error: "no answer".into(),
            }),
        }
    }

    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Versioned>, Error> {
        let key = Bytes::copy_from_slice(key.as_ref());
        check_key(&key)?;
        let response = self
            .call(Target::Key(&key), Retry::Always, |mut kv, route, budget| {
                let request = pb::GetRequest {
                    route: Some(route),
                    key: key.clone(),
                    consistency: 0,
                };
                async move { kv.get(with_deadline(request, budget)).await }
            })
            .await?;
        Ok(response.value.map(versioned))
    }

    /// Sets `key` to `value`; returns the version written.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64, Error> {
        let key = Bytes::copy_from_slice(key.as_ref());
        let value = Bytes::copy_from_slice(value.as_ref());
        check_key(&key)?;
        check_value(&value)?;
        let response = self
            .call(
                Target::Key(&key),
                Retry::OnlyIfNotApplied,
                |mut kv, route, budget| {
                    let request = pb::PutRequest {
                        route: Some(route),
                        key: key.clone(),
                        value: value.clone(),
                    };
                    async move { kv.put(with_deadline(request, budget)).await }
                },
            )
            .await?;
        Ok(response.version)
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool, Error> {
        let key = Bytes::copy_from_slice(key.as_ref());
        check_key(&key)?;
        let response = self
            .call(
                Target::Key(&key),
                Retry::OnlyIfNotApplied,
                |mut kv, route, budget| {
                    let request = pb::DeleteRequest {
                        route: Some(route),
                        key: key.clone(),
                    };
                    async move { kv.delete(with_deadline(request, budget)).await }
                },
            )
            .await?;
        Ok(response.existed)
    }

    /// Writes `new_value` (deletes the key when `None`) if the key matches `expect`.
    pub async fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        expect: Expect,
        new_value: Option<&[u8]>,
    ) -> Result<CasOutcome, Error> {
        let key = Bytes::copy_from_slice(key.as_ref());
        check_key(&key)?;
        if let Some(value) = new_value {
            check_value(value)?;
        }
        let expect = match expect {
            Expect::Absent => pb::cas_request::Expect::ExpectAbsent(true),
            Expect::Value(value) => pb::cas_request::Expect::ExpectValue(value),
            Expect::Version(version) => pb::cas_request::Expect::ExpectVersion(version),
        };
        let new_value = new_value.map(Bytes::copy_from_slice);
        let response = self
            .call(
                Target::Key(&key),
                Retry::OnlyIfNotApplied,
                |mut kv, route, budget| {
                    let request = pb::CasRequest {
                        route: Some(route),
                        key: key.clone(),
                        expect: Some(expect.clone()),
                        new_value: new_value.clone().unwrap_or_default(),
                        delete: new_value.is_none(),
                    };
                    async move { kv.compare_and_swap(with_deadline(request, budget)).await }
                },
            )
            .await?;
        Ok(CasOutcome {
            succeeded: response.succeeded,
            version: response.version,
            current: response.current.map(versioned),
        })
    }

    /// Applies `ops`, split by shard and sent concurrently. Atomic within each shard (keys with one
    /// hash tag share a shard), not across shards.
    pub async fn batch(&self, ops: Vec<BatchOp>) -> Result<BatchOutcome, Error> {
        let mut total = 0;
        for op in &ops {
            check_key(op.key())?;
            total += op.key().len();
            if let BatchOp::Put { value, .. } = op {
                check_value(value)?;
                total += value.len();
            }
        }
        check_batch(ops.len(), total)?;
        let mut by_shard: BTreeMap<ShardId, Vec<BatchOp>> = BTreeMap::new();
        {
            let routes = self.inner.routes.lock().expect("route cache lock");
            for op in ops {
                by_shard
                    .entry(routes.shard_for_key(op.key()))
                    .or_default()
                    .push(op);
            }
        }
        let results = join_all(by_shard.into_iter().map(|(shard_id, ops)| async move {
            let first_key = ops[0].key().clone();
            let wire: Vec<pb::BatchOp> = ops
                .iter()
                .map(|op| match op {
                    BatchOp::Put { key, value } => pb::BatchOp {
                        key: key.clone(),
                        op: Some(pb::batch_op::Op::Put(value.clone())),
                    },
                    BatchOp::Delete { key } => pb::BatchOp {
                        key: key.clone(),
                        op: Some(pb::batch_op::Op::Delete(true)),
                    },
                })
                .collect();
            let result = self
                .call(
                    Target::Key(&first_key),
                    Retry::OnlyIfNotApplied,
                    |mut kv, route, budget| {
                        let request = pb::BatchRequest {
                            route: Some(route),
                            ops: wire.clone(),
                        };
                        async move { kv.batch(with_deadline(request, budget)).await }
                    },
                )
                .await;
            (shard_id, result)
        }))
        .await;
        let mut versions = BTreeMap::new();
        let mut failed = Vec::new();
        let mut first_error = None;
        for (shard_id, result) in results {
            match result {
                Ok(response) => {
                    versions.insert(shard_id, response.version);
                }
                Err(error) => {
                    failed.push((shard_id, error.to_string()));
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            None => Ok(BatchOutcome { versions }),
            Some(error) if versions.is_empty() => Err(error),
            Some(_) => Err(Error::PartialBatch {
                applied: versions.keys().copied().collect(),
                failed,
            }),
        }
    }

    /// Reads many keys at once, concurrently; results are in the order of `keys`.
    pub async fn get_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Versioned>>, Error> {
        join_all(keys.iter().map(|key| self.get(key)))
            .await
            .into_iter()
            .collect()
    }

    /// Sends one request to the leader of its shard, retrying as the module header describes.
    pub(crate) async fn call<T, F, Fut>(&self, target: Target<'_>, retry: Retry, send: F) -> Result<T, Error>
    where
        F: Fn(KvClient<Channel>, pb::RouteHeader, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.config.request_timeout;
        let mut backoff = Backoff::no_leader();
        let mut attempts = 0u32;
        let mut hint_hops = 0u32;
        let mut last_error = String::from("no attempt made");
        loop {
            // Re-resolved on every attempt: a refreshed map may move the key to another shard.
            let (shard_id, route) = {
                let routes = inner.routes.lock().expect("route cache lock");
                let shard_id = match target {
                    Target::Key(key) => routes.shard_for_key(key),
                    Target::Shard(id) => id,
                };
                (shard_id, routes.route_shard(shard_id, attempts))
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Unavailable {
                    shard_id,
                    attempts,
                    last_error,
                });
            }
            attempts += 1;
            let Some(route) = route else {
                last_error = format!("shard {shard_id} is not in the cached shard map");
                inner.refresh(false).await.ok();
                tokio::time::sleep(backoff.next_delay().min(deadline - Instant::now())).await;
                continue;
            };
            let outcome = match channel(&inner.channels, &inner.config, &route.addr) {
                Err(error) => Attempt::Unreachable(error),
                Ok(channel) => {
                    let kv = KvClient::new(channel)
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES);
                    let header = pb::RouteHeader {
                        shard_id: route.shard_id,
                        map_epoch: route.epoch,
                    };
                    // The node gets a deadline `ANSWER_GRACE` shorter than our own wait: it drops
                    // the request at its deadline and answers, so the client usually learns
                    // whether a write was proposed instead of timing out blind (and the node stops
                    // working on requests nobody waits for). See ARCHITECTURE.md "Errors".
                    let remaining = deadline - now;
                    // Reads may be retried elsewhere, so one slow node gets at most MAX_ATTEMPT;
                    // a write that timed out cannot be retried, so it gets the whole deadline.
                    let attempt_cap = if retry == Retry::Always {
                        MAX_ATTEMPT
                    } else {
                        remaining
                    };
                    let (server_budget, wait) = if remaining > ANSWER_GRACE {
                        let server_budget = (remaining - ANSWER_GRACE).min(attempt_cap);
                        (server_budget, server_budget + ANSWER_GRACE)
                    } else {
                        (remaining, remaining)
                    };
                    match tokio::time::timeout(wait, send(kv, header, server_budget)).await {
                        Ok(Ok(response)) => return Ok(response.into_inner()),
                        Ok(Err(status)) => classify(status),
                        Err(_) => Attempt::Ambiguous(format!(
                            "no answer from node {} within {wait:?}",
                            route.node_id
                        )),
                    }
                }
            };
            debug!(shard_id, node = route.node_id, attempt = attempts, outcome = ?outcome, "request attempt failed");
            match outcome {
                Attempt::Fatal(error) => return Err(error),
                Attempt::Server(message) => return Err(Error::Server { shard_id, message }),
                Attempt::NotLeader {
                    leader: Some((node, addr)),
                } if hint_hops < MAX_HINT_HOPS => {
                    hint_hops += 1;
                    last_error = format!(
                        "node {} is not the leader; it named node {node} at {addr}",
                        route.node_id
                    );
                    let known = inner
                        .routes
                        .lock()
                        .expect("route cache lock")
                        .set_leader(shard_id, node);
                    if !known {
                        inner.refresh(true).await.ok();
                    }
                    continue;
                }
                Attempt::NotLeader { .. } => {
                    hint_hops = 0;
                    last_error = format!("node {} is not the leader and knows none", route.node_id);
                    inner
                        .routes
                        .lock()
                        .expect("route cache lock")
                        .clear_leader(shard_id, route.node_id);
                }
                Attempt::WrongShard => {
                    last_error = "the cached shard map is stale".into();
                    inner.refresh(true).await.ok();
                    continue;
                }
                Attempt::Busy(message) => {
                    last_error = message;
                    let delay = Backoff::busy().next_delay().max(backoff.next_delay());
                    tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now()))).await;
                    continue;
                }
                Attempt::Unavailable {
                    outcome_unknown,
                    message,
                } => {
                    if outcome_unknown && retry == Retry::OnlyIfNotApplied {
                        return Err(Error::OutcomeUnknown {
                            shard_id,
                            reason: message,
                        });
                    }
                    last_error = message;
                    inner
                        .routes
                        .lock()
                        .expect("route cache lock")
                        .clear_leader(shard_id, route.node_id);
                }
                Attempt::Unreachable(message) => {
                    last_error = format!("node {} at {}: {message}", route.node_id, route.addr);
                    inner
                        .routes
                        .lock()
                        .expect("route cache lock")
                        .clear_leader(shard_id, route.node_id);
                }
                Attempt::Ambiguous(message) => {
                    if retry == Retry::OnlyIfNotApplied {
                        return Err(Error::OutcomeUnknown {
                            shard_id,
                            reason: message,
                        });
                    }
                    last_error = format!("node {} at {}: {message}", route.node_id, route.addr);
                    inner
                        .routes
                        .lock()
                        .expect("route cache lock")
                        .clear_leader(shard_id, route.node_id);
                }
            }
            // No leader known right now: refresh the map (another node may know one), then back
            // off with jitter before the next attempt.
            inner.refresh(false).await.ok();
            let remaining = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(backoff.next_delay().min(remaining)).await;
        }
    }
}

/// How one failed attempt ended, from the client's point of view.
#[derive(Debug)]
enum Attempt {
    /// Never worth retrying (bad input).
    Fatal(Error),
    /// The node failed internally.
    Server(String),
    /// The request was not applied; the node named the leader, if it knows one.
    NotLeader {
        leader: Option<(u64, String)>,
    },
    WrongShard,
    Busy(String),
    Unavailable {
        outcome_unknown: bool,
        message: String,
    },
    /// The request never reached the node (connection refused).
    Unreachable(String),
    /// The request may have reached the node (connection broke, no answer in time).
    Ambiguous(String),
}

fn classify(status: tonic::Status) -> Attempt {
    let detail = pb::ErrorDetail::decode(status.details())
        .ok()
        .and_then(|detail| detail.kind);
    match detail {
        Some(Kind::NotLeader(not_leader)) => Attempt::NotLeader {
            leader: (not_leader.leader_node_id != 0)
                .then_some((not_leader.leader_node_id, not_leader.leader_addr)),
        },
        Some(Kind::WrongShard(_)) => Attempt::WrongShard,
        Some(Kind::Busy(_)) => Attempt::Busy(status.message().into()),
        Some(Kind::Unavailable(unavailable)) => Attempt::Unavailable {
            outcome_unknown: unavailable.outcome_unknown,
            message: status.message().into(),
        },
        Some(Kind::InvalidArgument(_)) => Attempt::Fatal(Error::InvalidArgument(status.message().into())),
        None => match status.code() {
            tonic::Code::InvalidArgument => Attempt::Fatal(Error::InvalidArgument(status.message().into())),
            tonic::Code::Internal => Attempt::Server(status.message().into()),
            tonic::Code::Unimplemented => Attempt::Fatal(Error::Protocol(format!(
                "the node does not implement this request: {}",
                status.message()
            ))),
            // A connection that could not be opened carried nothing: safe to send again.
            tonic::Code::Unavailable if is_connect_failure(&status) => {
                Attempt::Unreachable(status.message().into())
            }
            _ => Attempt::Ambiguous(format!("{}: {}", status.code(), status.message())),
        },
    }
}

/// Whether a transport error happened while connecting, before any request bytes were sent.
fn is_connect_failure(status: &tonic::Status) -> bool {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        text.push_str(&error.to_string());
        source = error.source();
    }
    let text = text.to_lowercase();
    text.contains("tcp connect error")
        || text.contains("connection refused")
        || text.contains("error trying to connect")
}

/// Wraps a request with a gRPC deadline (`grpc-timeout`), which the node enforces by dropping the
/// request when it expires.
pub(crate) fn with_deadline<T>(message: T, budget: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(budget);
    request
}

fn versioned(value: pb::VersionedValue) -> Versioned {
    Versioned {
        value: value.value,
        version: value.version,
    }
}

/// The channel to `addr`, created lazily and kept.
fn channel(
    channels: &Mutex<HashMap<String, Channel>>,
    config: &ClientConfig,
    addr: &str,
) -> Result<Channel, String> {
    let mut channels = channels.lock().expect("channel map lock");
    if let Some(channel) = channels.get(addr) {
        return Ok(channel.clone());
    }
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("{addr} is not a valid HOST:PORT: {e}"))?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    let channel = endpoint.connect_lazy();
    channels.insert(addr.to_owned(), channel.clone());
    Ok(channel)
}

async fn fetch_map(
    channels: &Mutex<HashMap<String, Channel>>,
    config: &ClientConfig,
    addr: &str,
) -> Result<ShardMap, String> {
    let mut client =
        ClusterClient::new(channel(channels, config, addr)?).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let response = tokio::time::timeout(
        config.connect_timeout.max(MAX_ATTEMPT),
        client.get_shard_map(pb::GetShardMapRequest {}),
    )
    .await
    .map_err(|_| format!("{addr} did not answer"))?
    .map_err(|status| format!("{addr}: {}", status.message()))?;
    ShardMap::from_proto(&response.into_inner()).map_err(|e| format!("{addr} sent a bad shard map: {e}"))
}

impl Inner {
    /// Fetches the map from the first node that answers (known nodes, then seeds). Without
    /// `force`, skips the fetch if another refresh finished moments ago.
    pub(crate) async fn refresh(&self, force: bool) -> Result<(), Error> {
        let mut last = self.refreshing.lock().await;
        if !force && last.elapsed() < MIN_REFRESH_GAP {
            return Ok(());
        }
        let mut addrs: Vec<String> = {
            let routes = self.routes.lock().expect("route cache lock");
            // Prefer nodes that lead something: they are alive and know current leaders.
            let map = routes.map();
            let mut leaders: Vec<u64> = map.shards.iter().filter_map(|s| s.leader).collect();
            leaders.sort_unstable();
            leaders.dedup();
            let mut addrs: Vec<String> = leaders
                .iter()
                .filter_map(|n| map.node_addr(*n))
                .map(str::to_owned)
                .collect();
            addrs.extend(map.nodes.values().cloned());
            addrs
        };
        addrs.extend(self.config.endpoints.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        addrs.retain(|addr| seen.insert(addr.clone()));
        let mut last_error = String::new();
        for addr in &addrs {
            match fetch_map(&self.channels, &self.config, addr).await {
                Ok(map) => {
                    self.routes.lock().expect("route cache lock").replace(map);
                    *last = Instant::now();
                    return Ok(());
                }
                Err(error) => last_error = error,
            }
        }
        *last = Instant::now();
        Err(Error::NoSeedReachable {
            seeds: addrs,
            last_error,
        })
    }
}

/// Refreshes the map every `map_refresh_interval` until the client is dropped.
fn spawn_refresher(inner: Weak<Inner>) {
    let Some(interval) = inner.upgrade().map(|inner| inner.config.map_refresh_interval) else {
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let Some(inner) = inner.upgrade() else { return };
            if let Err(error) = inner.refresh(true).await {
                debug!(%error, "background shard map refresh failed");
            }
        }
    });
}

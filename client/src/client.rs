//! The `Client`: its configuration, its shared state (route cache, connections, request ids,
//! replica health), the shard-map refresh, and the public API. Each request runs as a
//! `plan::Plan`. A handle may carry a `Session` and default `ReadOptions`; clones of a handle
//! share everything else.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::join_all;
use futures::stream::FuturesUnordered;
use tokio::sync::Mutex as AsyncMutex;
use tracing::debug;

use ringkv_map::ShardMap;
use ringkv_proto::pb::{self, kv_command::Request as Command, kv_reply::Reply};
use ringkv_proto::{ShardId, check_batch, check_key, check_value};

use crate::classify::Attempt;
use crate::classify::RequestKind;
use crate::error::Error;
use crate::plan::{self, AttemptTime, MAX_WRITE_RETRY_WINDOW, Plan, Target, unexpected_reply};
use crate::pool::{NodeConnection, Pool};
use crate::read::{Consistency, ReadOptions, ReplicaSelection, Session};
use crate::replicas::ReplicaHealth;
use crate::request_ids::RequestIds;
use crate::route::RouteCache;
use crate::types::{BatchOp, BatchOutcome, CasOutcome, Expect, Served, Versioned, versioned};

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Nodes to fetch the shard map from at first; any one that answers is enough.
    pub endpoints: Vec<String>,
    /// How long one request may take, retries, map refreshes and backoff included: every call
    /// returns by then. Writes are retried for at most 5 minutes whatever this says (a shard
    /// keeps a silent client's request ids for 10).
    pub request_timeout: Duration,
    /// How long connecting to a node may take (also bounded by the request's deadline).
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

/// Cheap to clone; clones share connections, the route cache and request ids.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    /// Writes and reads through this handle advance it; session reads wait for it.
    session: Option<Session>,
    /// What `get`, `get_many` and `scan` ask for unless told otherwise.
    read: ReadOptions,
}

pub(crate) struct Inner {
    pub(crate) config: ClientConfig,
    /// A std lock: held only to read or update the cache, never across an await.
    pub(crate) routes: Mutex<RouteCache>,
    pub(crate) pool: Pool,
    pub(crate) ids: Arc<RequestIds>,
    pub(crate) health: ReplicaHealth,
    /// One map refresh at a time; the others wait for it and reuse its result.
    refreshing: AsyncMutex<Instant>,
}

/// A refresh within this long of the previous one is skipped.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(50);
/// Longest wait for one node's shard map during a refresh.
const MAX_MAP_FETCH: Duration = Duration::from_secs(1);
/// How long a map refresh waits for newer maps after the first that will do.
const MAP_FETCH_GRACE: Duration = Duration::from_millis(20);

impl Client {
    pub async fn connect<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Result<Client, Error> {
        Client::with_config(ClientConfig::new(endpoints)).await
    }

    /// Connects to the cluster through the endpoints (the newest map any of them answers with),
    /// within the config's request timeout.
    pub async fn with_config(config: ClientConfig) -> Result<Client, Error> {
        let pool = Pool::new(config.connect_timeout);
        let deadline = Instant::now() + config.request_timeout;
        let fetch = |addr: String, timeout| {
            let pool = &pool;
            async move { pool.fetch_map(&addr, timeout).await }
        };
        let map = fetch_newest(fetch, &config.endpoints, 0, deadline).await?;
        let inner = Arc::new(Inner {
            routes: Mutex::new(RouteCache::new(map)),
            pool,
            ids: RequestIds::new(),
            health: ReplicaHealth::default(),
            refreshing: AsyncMutex::new(Instant::now()),
            config,
        });
        spawn_refresher(Arc::downgrade(&inner));
        Ok(Client {
            inner,
            session: None,
            read: ReadOptions::default(),
        })
    }

    /// A handle on the same client whose writes and reads advance `session`, and whose reads at
    /// `Consistency::Session` wait for it. Clones of the session share it.
    pub fn with_session(&self, session: Session) -> Client {
        Client {
            session: Some(session),
            ..self.clone()
        }
    }

    /// A handle on the same client whose `get`, `get_many` and `scan` use `options`.
    pub fn with_read_options(&self, options: ReadOptions) -> Client {
        Client {
            read: options,
            ..self.clone()
        }
    }

    /// What `get`, `get_many` and `scan` ask for on this handle.
    pub fn read_options(&self) -> ReadOptions {
        self.read
    }

    /// The session this handle carries, if any.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// Notes in the handle's session (if any) an index the shard routed to by `route` reached.
    pub(crate) fn observe(&self, route: &pb::RouteHeader, index: u64) {
        if let Some(session) = &self.session {
            session.observe(ShardId(route.shard_id), index, route.map_epoch);
        }
    }

    /// Runs a read at `options`: at the leader for a linearizable read (or when asked), else at
    /// the replicas in the order the selection asks for. `send` gets the level to put on the
    /// wire, with the session's token for the shard the attempt goes to.
    pub(crate) async fn read<T, F, Fut>(
        &self,
        target: Target<'_>,
        options: ReadOptions,
        deadline: Instant,
        send: F,
    ) -> Result<T, Error>
    where
        F: Fn(NodeConnection, pb::RouteHeader, AttemptTime, pb::ReadLevel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Attempt>>,
    {
        if options.consistency == Consistency::Session {
            let Some(session) = &self.session else {
                return Err(Error::InvalidArgument(
                    "a session read needs a session: read through client.with_session(session)".into(),
                ));
            };
            // A map older than the session's may route a key a split moved to its old shard,
            // whose replica may not have applied the split yet.
            let epoch = self.inner.routes.lock().expect("route cache lock").map().epoch;
            if session.map_epoch() > epoch {
                self.inner.refresh(true, deadline).await.ok();
            }
        }
        let session = self.session.as_ref();
        let plan = Plan {
            inner: &self.inner,
            target,
            kind: RequestKind::Read,
            deadline,
        };
        let send = |node, route: pb::RouteHeader, time| {
            let token = match session {
                Some(session) if options.consistency == Consistency::Session => {
                    let routes = self.inner.routes.lock().expect("route cache lock");
                    session.token_in(ShardId(route.shard_id), routes.map())
                }
                _ => 0,
            };
            send(node, route, time, options.wire(token))
        };
        if options.consistency.needs_leader() || options.selection == ReplicaSelection::Leader {
            plan.run(send).await
        } else {
            plan.run_on_replicas(options.selection, send).await
        }
    }

    /// The cached shard map, with leader hints.
    pub async fn shard_map(&self) -> ShardMap {
        self.inner.routes.lock().expect("route cache lock").map().clone()
    }

    /// Fetches the shard map from any reachable node now.
    pub async fn refresh_shard_map(&self) -> Result<(), Error> {
        self.inner.refresh(true, self.deadline(RequestKind::Read)).await
    }

    pub(crate) fn deadline(&self, kind: RequestKind) -> Instant {
        let timeout = match kind {
            RequestKind::Read => self.inner.config.request_timeout,
            RequestKind::Write => self.inner.config.request_timeout.min(MAX_WRITE_RETRY_WINDOW),
        };
        Instant::now() + timeout
    }

    pub(crate) fn plan<'a>(&'a self, target: Target<'a>, kind: RequestKind) -> Plan<'a> {
        Plan {
            inner: &self.inner,
            target,
            kind,
            deadline: self.deadline(kind),
        }
    }

    /// Reads `key` at the handle's read options (linearizable unless set otherwise).
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Versioned>, Error> {
        self.get_with(key, self.read).await
    }

    /// Reads `key` at `options`.
    pub async fn get_with(
        &self,
        key: impl AsRef<[u8]>,
        options: ReadOptions,
    ) -> Result<Option<Versioned>, Error> {
        Ok(self.get_served(key, options).await?.0)
    }

    /// Reads `key` at `options`; also says which node served it.
    pub async fn get_served(
        &self,
        key: impl AsRef<[u8]>,
        options: ReadOptions,
    ) -> Result<(Option<Versioned>, ringkv_proto::NodeId), Error> {
        let (value, served) = self.get_traced(key, options).await?;
        Ok((value, served.node_id))
    }

    /// Reads `key` at `options`; also says which replica served it, and the log index of the
    /// shard its answer is as new as.
    pub async fn get_traced(
        &self,
        key: impl AsRef<[u8]>,
        options: ReadOptions,
    ) -> Result<(Option<Versioned>, Served), Error> {
        let key = Bytes::copy_from_slice(key.as_ref());
        check_key(&key)?;
        let deadline = self.deadline(RequestKind::Read);
        let response = self
            .read(
                Target::Key(&key),
                options,
                deadline,
                |node, route, time, level| {
                    let message = pb::GetRequest {
                        route: Some(route),
                        key: key.clone(),
                        level: Some(level),
                    };
                    async move {
                        match node.commands.call(Command::Get(message), time).await? {
                            Reply::Get(response) => {
                                self.observe(&route, response.index);
                                Ok(response)
                            }
                            other => Err(unexpected_reply("get", &other)),
                        }
                    }
                },
            )
            .await?;
        let served = Served {
            node_id: ringkv_proto::NodeId(response.node_id),
            replica_id: ringkv_proto::ReplicaId(response.replica_id),
            index: response.index,
        };
        Ok((response.value.map(versioned), served))
    }

    /// Sets `key` to `value`; returns the version written. Applied at most once, however often it
    /// is retried.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64, Error> {
        let key = Bytes::copy_from_slice(key.as_ref());
        let value = Bytes::copy_from_slice(value.as_ref());
        check_key(&key)?;
        check_value(&value)?;
        let ticket = self.inner.ids.begin();
        let response = self
            .plan(Target::Key(&key), RequestKind::Write)
            .run(|node, route, time| {
                let message = pb::PutRequest {
                    route: Some(route),
                    key: key.clone(),
                    value: value.clone(),
                    request_id: Some(self.inner.ids.wire(ticket.seq)),
                };
                async move {
                    match node.commands.call(Command::Put(message), time).await? {
                        Reply::Put(response) => {
                            self.observe(&route, response.index);
                            Ok(response)
                        }
                        other => Err(unexpected_reply("put", &other)),
                    }
                }
            })
            .await?;
        Ok(response.version)
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool, Error> {
        let key = Bytes::copy_from_slice(key.as_ref());
        check_key(&key)?;
        let ticket = self.inner.ids.begin();
        let response = self
            .plan(Target::Key(&key), RequestKind::Write)
            .run(|node, route, time| {
                let message = pb::DeleteRequest {
                    route: Some(route),
                    key: key.clone(),
                    request_id: Some(self.inner.ids.wire(ticket.seq)),
                };
                async move {
                    match node.commands.call(Command::Delete(message), time).await? {
                        Reply::Delete(response) => {
                            self.observe(&route, response.index);
                            Ok(response)
                        }
                        other => Err(unexpected_reply("delete", &other)),
                    }
                }
            })
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
            Expect::Value(value) => {
                check_value(&value)
                    .map_err(|e| Error::InvalidArgument(format!("the expected value: {e}")))?;
                pb::cas_request::Expect::ExpectValue(value)
            }
            Expect::Version(version) => pb::cas_request::Expect::ExpectVersion(version),
        };
        let new_value = new_value.map(Bytes::copy_from_slice);
        let ticket = self.inner.ids.begin();
        let response = self
            .plan(Target::Key(&key), RequestKind::Write)
            .run(|node, route, time| {
                let message = pb::CasRequest {
                    route: Some(route),
                    key: key.clone(),
                    expect: Some(expect.clone()),
                    new_value: new_value.clone().unwrap_or_default(),
                    delete: new_value.is_none(),
                    request_id: Some(self.inner.ids.wire(ticket.seq)),
                };
                async move {
                    match node.commands.call(Command::Cas(message), time).await? {
                        Reply::Cas(response) => {
                            self.observe(&route, response.index);
                            Ok(response)
                        }
                        other => Err(unexpected_reply("compare-and-swap", &other)),
                    }
                }
            })
            .await?;
        Ok(CasOutcome {
            succeeded: response.succeeded,
            version: response.version,
            current: response.current.map(versioned),
        })
    }

    /// Applies `ops`, split by shard and sent concurrently. Atomic within each shard (keys with one
    /// hash tag share a shard), not across shards: when some part fails, the error says per shard
    /// whether its part applied, did not, or may have (`Error::Batch`).
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
        plan::batch(self, ops, self.deadline(RequestKind::Write)).await
    }

    /// Reads many keys at the handle's read options; results are in the order of `keys`.
    pub async fn get_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Versioned>>, Error> {
        self.get_many_with(keys, self.read).await
    }

    /// Reads many keys at `options`: one request per shard (of at most `MULTI_GET_CHUNK` keys),
    /// the shards' requests concurrent. Results are in the order of `keys`; the first shard's
    /// error fails the whole read.
    pub async fn get_many_with<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        options: ReadOptions,
    ) -> Result<Vec<Option<Versioned>>, Error> {
        let mut by_shard: BTreeMap<ShardId, Vec<usize>> = BTreeMap::new();
        {
            let routes = self.inner.routes.lock().expect("route cache lock");
            for (index, key) in keys.iter().enumerate() {
                check_key(key.as_ref())?;
                by_shard
                    .entry(routes.shard_for_key(key.as_ref()))
                    .or_default()
                    .push(index);
            }
        }
        let deadline = self.deadline(RequestKind::Read);
        let parts = by_shard
            .into_values()
            .flat_map(|indexes| {
                indexes
                    .chunks(MULTI_GET_CHUNK)
                    .map(<[usize]>::to_vec)
                    .collect::<Vec<_>>()
            })
            .map(|indexes| {
                let part: Vec<Bytes> = indexes
                    .iter()
                    .map(|index| Bytes::copy_from_slice(keys[*index].as_ref()))
                    .collect();
                async move {
                    let values = self.multi_get_part(&part, options, deadline).await?;
                    Ok::<_, Error>(indexes.into_iter().zip(values).collect::<Vec<_>>())
                }
            });
        let mut results = vec![None; keys.len()];
        for part in join_all(parts).await {
            for (index, value) in part? {
                results[index] = value;
            }
        }
        Ok(results)
    }

    /// One multi-get request for keys of one shard (as the cached map routes them; a split
    /// since is answered `WrongShard`, and the part is read again, split by the new map).
    async fn multi_get_part(
        &self,
        keys: &[Bytes],
        options: ReadOptions,
        deadline: Instant,
    ) -> Result<Vec<Option<Versioned>>, Error> {
        // Set when the map, refreshed during the read, no longer puts the keys in one shard.
        let regroup = std::sync::atomic::AtomicBool::new(false);
        let regroup = &regroup;
        let attempt = self
            .read(
                Target::Key(&keys[0]),
                options,
                deadline,
                |node, route, time, level| {
                    let split = {
                        let routes = self.inner.routes.lock().expect("route cache lock");
                        keys.iter()
                            .any(|key| routes.shard_for_key(key).0 != route.shard_id)
                    };
                    let message = pb::MultiGetRequest {
                        route: Some(route),
                        keys: keys.to_vec(),
                        level: Some(level),
                    };
                    async move {
                        if split {
                            regroup.store(true, std::sync::atomic::Ordering::Relaxed);
                            return Err(Attempt::Fatal(Error::Protocol("the keys span shards now".into())));
                        }
                        match node.commands.call(Command::MultiGet(message), time).await? {
                            Reply::MultiGet(response) if response.values.len() == keys.len() => {
                                self.observe(&route, response.index);
                                Ok(response)
                            }
                            Reply::MultiGet(response) => Err(Attempt::Fatal(Error::Protocol(format!(
                                "the node answered a multi-get of {} keys with {} values",
                                keys.len(),
                                response.values.len()
                            )))),
                            other => Err(unexpected_reply("multi-get", &other)),
                        }
                    }
                },
            )
            .await;
        match attempt {
            Ok(response) => Ok(response
                .values
                .into_iter()
                .map(|maybe| maybe.value.map(versioned))
                .collect()),
            // A split moved some keys to another shard: read them one by one (rare).
            Err(_) if regroup.load(std::sync::atomic::Ordering::Relaxed) => {
                let mut values = Vec::with_capacity(keys.len());
                for key in keys {
                    values.push(self.get_with(key, options).await?);
                }
                Ok(values)
            }
            Err(error) => Err(error),
        }
    }
}

/// The shard map from whichever of `addrs` answers first, all asked at once, by `deadline`.
/// Asks every address in `addrs` for its map at once and returns the newest one answered: once a
/// map of at least `at_least` has arrived, the others get `MAP_FETCH_GRACE` more to answer with a
/// newer one. The first answer alone could come from a node whose map lags (one cut off from the
/// metadata group), and a client that takes it would be sent back by every node that knows
/// better, until its deadline. Each address gets at most `MAX_MAP_FETCH` and what is left of
/// `deadline`.
async fn fetch_newest<F, Fut>(
    fetch: F,
    addrs: &[String],
    at_least: u64,
    deadline: Instant,
) -> Result<ShardMap, Error>
where
    F: Fn(String, Duration) -> Fut,
    Fut: std::future::Future<Output = Result<ShardMap, String>>,
{
    let failed = |last_error: String| Error::NoSeedReachable {
        seeds: addrs.to_vec(),
        last_error,
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    if addrs.is_empty() || remaining.is_zero() {
        return Err(failed("no endpoint to ask, or no time left".into()));
    }
    let timeout = remaining.min(MAX_MAP_FETCH);
    let mut fetches: FuturesUnordered<_> = addrs.iter().map(|addr| fetch(addr.clone(), timeout)).collect();
    let mut newest: Option<ShardMap> = None;
    let mut last_error = String::new();
    let mut grace_until: Option<tokio::time::Instant> = None;
    loop {
        let answer = match grace_until {
            Some(until) => match tokio::time::timeout_at(until, fetches.next()).await {
                Ok(answer) => answer,
                Err(_) => break,
            },
            None => fetches.next().await,
        };
        match answer {
            None => break,
            Some(Ok(map)) => {
                if newest.as_ref().is_none_or(|newest| map.epoch > newest.epoch) {
                    newest = Some(map);
                }
                if grace_until.is_none() && newest.as_ref().is_some_and(|map| map.epoch >= at_least) {
                    grace_until = Some(tokio::time::Instant::now() + MAP_FETCH_GRACE);
                }
            }
            Some(Err(error)) => last_error = error,
        }
    }
    newest.ok_or_else(|| failed(last_error))
}

impl Inner {
    /// Refreshes the map from the nodes (known nodes and seeds, asked at once), taking the newest
    /// answered (`fetch_newest`), by `deadline`. Without `force`, skips the fetch if another
    /// refresh finished moments ago.
    pub(crate) async fn refresh(&self, force: bool, deadline: Instant) -> Result<(), Error> {
        self.refresh_from(force, 0, deadline).await
    }

    /// Refreshes the map, asking until one at least as new as `epoch` (a node's, that said the
    /// cached one is stale) is found, or every node has answered.
    pub(crate) async fn refresh_to(&self, epoch: u64, deadline: Instant) -> Result<(), Error> {
        self.refresh_from(true, epoch, deadline).await
    }

    async fn refresh_from(&self, force: bool, at_least: u64, deadline: Instant) -> Result<(), Error> {
        let timed_out = || Error::NoSeedReachable {
            seeds: self.config.endpoints.clone(),
            last_error: "the request's deadline passed while refreshing the shard map".into(),
        };
        let mut last = tokio::time::timeout_at(deadline.into(), self.refreshing.lock())
            .await
            .map_err(|_| timed_out())?;
        if !force && last.elapsed() < MIN_REFRESH_GAP {
            return Ok(());
        }
        let mut addrs: Vec<String> = {
            let routes = self.routes.lock().expect("route cache lock");
            routes
                .map()
                .nodes
                .values()
                .map(|info| info.addr.clone())
                .collect()
        };
        addrs.extend(self.config.endpoints.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        addrs.retain(|addr| seen.insert(addr.clone()));
        let pool = &self.pool;
        let fetch = |addr: String, timeout| async move { pool.fetch_map(&addr, timeout).await };
        let result = fetch_newest(fetch, &addrs, at_least, deadline).await;
        *last = Instant::now();
        let map = result?;
        self.routes.lock().expect("route cache lock").replace(map)
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
            let deadline = Instant::now() + inner.config.request_timeout;
            if let Err(error) = inner.refresh(true, deadline).await {
                debug!(%error, "background shard map refresh failed");
            }
        }
    });
}

/// Keys one multi-get request names at most (the node's limit).
const MULTI_GET_CHUNK: usize = 1_000;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ringkv_map::NodeInfo;
    use ringkv_proto::NodeId;

    use super::*;

    fn map(epoch: u64) -> ShardMap {
        let nodes: BTreeMap<NodeId, NodeInfo> = (1..=3)
            .map(|id| {
                let info = NodeInfo {
                    addr: format!("node-{id}"),
                    incarnation: id,
                    state: Default::default(),
                    role: Default::default(),
                };
                (NodeId(id), info)
            })
            .collect();
        let mut map = ShardMap::bootstrap(7, &nodes, 2, 3).unwrap();
        map.epoch = epoch;
        map
    }

    /// Node 3's map lags (epoch 4) and it answers first; the others know epoch 9. The first
    /// answer alone would pin the client to a map every other node refuses.
    #[tokio::test]
    async fn a_refresh_takes_the_newest_map_not_the_first_answer() {
        let addrs: Vec<String> = (1..=3).map(|id| format!("node-{id}")).collect();
        let fetch = |addr: String, _timeout: Duration| async move {
            if addr == "node-3" {
                Ok(map(4))
            } else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(map(9))
            }
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        // Told by a node that its map is epoch 9: waits for one that new.
        let newest = fetch_newest(fetch, &addrs, 9, deadline).await.unwrap();
        assert_eq!(newest.epoch, 9);
        // Told nothing: still the newest that arrives within the grace after the first.
        let newest = fetch_newest(fetch, &addrs, 0, deadline).await.unwrap();
        assert_eq!(newest.epoch, 9);
        // A node that never answers holds the refresh up only as long as its fetch may take.
        let silent = |addr: String, timeout: Duration| async move {
            if addr == "node-1" {
                tokio::time::sleep(timeout).await;
                Err(format!("{addr} did not answer"))
            } else {
                Ok(map(4))
            }
        };
        let started = Instant::now();
        let newest = fetch_newest(silent, &addrs, 9, Instant::now() + Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(newest.epoch, 4, "the newest there is");
        assert!(started.elapsed() < Duration::from_secs(1));
        // Nobody answers: the error says so.
        let none =
            |addr: String, _timeout: Duration| async move { Err::<ShardMap, _>(format!("{addr} is down")) };
        assert!(matches!(
            fetch_newest(none, &addrs, 0, deadline).await,
            Err(Error::NoSeedReachable { .. })
        ));
    }
}

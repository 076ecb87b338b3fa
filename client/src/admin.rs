//! The operator's client, apart from the application's (etcd keeps its Cluster and Maintenance
//! APIs apart from KV the same way): requests that change where replicas live (moving a replica,
//! splitting a shard, decommissioning a node, the read-replica setting) and waiting for each to
//! end, a node's status, and the replica check (`check.rs`). Each change is its own typed request,
//! sent to any node, which hands it to the metadata group's leader; the leader validates it
//! against the map and refuses, saying why and changing nothing, one that does not apply.

use ringkv_proto::FromProto;
use std::future::Future;
use std::time::{Duration, Instant};

use tonic::transport::Channel;

use ringkv_map::{NodeState, ShardMap};
use ringkv_proto::pb::{self, cluster_client::ClusterClient};
use ringkv_proto::{NodeId, ShardId};

use crate::client::{Client, ClientConfig};
use crate::error::Error;
use crate::status::NodeStatus;

/// Operator requests against a cluster. Built from a `Client` (sharing its connections and shard
/// map) or on its own; cheap to clone.
#[derive(Clone)]
pub struct AdminClient {
    client: Client,
}

impl AdminClient {
    /// Connects to the cluster through any of `endpoints`.
    pub async fn connect<S: Into<String>>(
        endpoints: impl IntoIterator<Item = S>,
    ) -> Result<AdminClient, Error> {
        Ok(AdminClient::new(Client::connect(endpoints).await?))
    }

    pub async fn with_config(config: ClientConfig) -> Result<AdminClient, Error> {
        Ok(AdminClient::new(Client::with_config(config).await?))
    }

    /// An admin client sharing `client`'s connections and shard map.
    pub fn new(client: Client) -> AdminClient {
        AdminClient { client }
    }

    /// The application client this one shares its connections with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The cached shard map, with leader hints.
    pub async fn shard_map(&self) -> ShardMap {
        self.client.shard_map().await
    }

    /// Fetches the shard map from the nodes now.
    pub async fn refresh_shard_map(&self) -> Result<(), Error> {
        self.client.refresh_shard_map().await
    }

    /// A node's view of itself and its replicas, within the request timeout.
    pub async fn node_status(&self, addr: &str) -> Result<NodeStatus, Error> {
        let unreachable = |last_error: String| Error::NoSeedReachable {
            seeds: vec![addr.into()],
            last_error,
        };
        let mut client = self.client.inner.pool.cluster(addr).map_err(unreachable)?;
        let timeout = self.client.inner.config.request_timeout;
        let mut request = tonic::Request::new(pb::StatusRequest {});
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, client.status(request)).await {
            Ok(Ok(response)) => Ok(NodeStatus::from_proto(response.into_inner())),
            Ok(Err(status)) => Err(unreachable(status.message().into())),
            Err(_) => Err(unreachable("no answer".into())),
        }
    }

    /// Begins moving `shard`'s replica on node `from` to node `to`. Returns the map with the move
    /// recorded, once it is; the cluster then carries the move out in the background (see
    /// `wait_for_move`). A move that cannot be made (no such shard, no voter on `from`, a replica
    /// already on `to`, another move of the shard under way) is refused with
    /// `Error::InvalidArgument` saying why, and changes nothing.
    pub async fn move_replica(&self, shard: ShardId, from: NodeId, to: NodeId) -> Result<ShardMap, Error> {
        let request = pb::MoveReplicaRequest {
            shard_id: shard.0,
            from_node: from.0,
            to_node: to.0,
        };
        let map = self
            .ask_any_node(|mut client, timeout| {
                let mut request = tonic::Request::new(request);
                request.set_timeout(timeout);
                async move { client.move_replica(request).await.map(|r| r.into_inner().map) }
            })
            .await?;
        self.adopt(decode_map(map, "MoveReplica")?)
    }

    /// Begins splitting `shard` at the midpoint of its arc. Returns the map with the split
    /// recorded, once it is; the cluster then applies it in the background (see
    /// `wait_for_split`). A split that cannot be made (no such shard, one too small, a move or
    /// another split of the shard under way) is refused with `Error::InvalidArgument` saying why,
    /// and changes nothing.
    pub async fn split_shard(&self, shard: ShardId) -> Result<ShardMap, Error> {
        let map = self
            .ask_any_node(|mut client, timeout| {
                let mut request = tonic::Request::new(pb::SplitShardRequest { shard_id: shard.0 });
                request.set_timeout(timeout);
                async move { client.split_shard(request).await.map(|r| r.into_inner().map) }
            })
            .await?;
        self.adopt(decode_map(map, "SplitShard")?)
    }

    /// Waits until the map no longer lists a split of `shard`, up to `timeout`. `None` if it
    /// still does then.
    pub async fn wait_for_split(&self, shard: ShardId, timeout: Duration) -> Result<Option<ShardMap>, Error> {
        self.wait_for_map(timeout, |map| map.split_of(shard).is_none())
            .await
    }

    /// Begins decommissioning `node`: the controller moves every replica off it, then marks it
    /// removed (see `wait_for_node_state`). Refused with `Error::InvalidArgument`, changing
    /// nothing, when the node is not up or the other nodes could not hold every shard's replicas.
    pub async fn decommission_node(&self, node: NodeId) -> Result<ShardMap, Error> {
        let map = self
            .ask_any_node(|mut client, timeout| {
                let mut request = tonic::Request::new(pb::DecommissionNodeRequest { node_id: node.0 });
                request.set_timeout(timeout);
                async move {
                    client
                        .decommission_node(request)
                        .await
                        .map(|r| r.into_inner().map)
                }
            })
            .await?;
        self.adopt(decode_map(map, "DecommissionNode")?)
    }

    /// Sets the cluster's `read_replicas`: the read replicas (learners) every data shard keeps
    /// at least, besides one on each read-replica node (at most `MAX_READ_REPLICAS`). The
    /// controller then adds or removes them. Returns the map with the setting recorded.
    pub async fn set_read_replicas(&self, read_replicas: u32) -> Result<ShardMap, Error> {
        let map = self
            .ask_any_node(|mut client, timeout| {
                let mut request = tonic::Request::new(pb::SetReadReplicasRequest { read_replicas });
                request.set_timeout(timeout);
                async move {
                    client
                        .set_read_replicas(request)
                        .await
                        .map(|r| r.into_inner().map)
                }
            })
            .await?;
        self.adopt(decode_map(map, "SetReadReplicas")?)
    }

    /// Caches `map` (the one a change produced), so that waiting for the change to end never
    /// looks at an older map a lagging node still serves.
    fn adopt(&self, map: ShardMap) -> Result<ShardMap, Error> {
        self.client
            .inner
            .routes
            .lock()
            .expect("route cache lock")
            .replace(map.clone())?;
        Ok(map)
    }

    /// Waits until the map lists no move of `shard`, up to `timeout`. Returns the map then, or
    /// `None` if the move is still under way when the time is up. The map `move_replica` returned
    /// is the oldest one looked at.
    pub async fn wait_for_move(&self, shard: ShardId, timeout: Duration) -> Result<Option<ShardMap>, Error> {
        self.wait_for_map(timeout, |map| map.move_of(shard).is_none())
            .await
    }

    /// Waits until the map shows `node` in `state`, up to `timeout`.
    pub async fn wait_for_node_state(
        &self,
        node: NodeId,
        state: NodeState,
        timeout: Duration,
    ) -> Result<Option<ShardMap>, Error> {
        self.wait_for_map(timeout, |map| {
            map.nodes.get(&node).map(|info| info.state) == Some(state)
        })
        .await
    }

    async fn wait_for_map(
        &self,
        timeout: Duration,
        done: impl Fn(&ShardMap) -> bool,
    ) -> Result<Option<ShardMap>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.refresh_shard_map().await.is_ok() {
                let map = self.shard_map().await;
                if done(&map) {
                    return Ok(Some(map));
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends one request to the nodes of the map in turn until one answers, within the request
    /// timeout. A refusal for bad input ends it at once.
    async fn ask_any_node<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: Fn(ClusterClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = self.client.deadline(crate::classify::RequestKind::Read);
        let addrs: Vec<String> = self
            .shard_map()
            .await
            .nodes
            .values()
            .map(|info| info.addr.clone())
            .collect();
        let mut last_error = String::from("no node to ask");
        for addr in &addrs {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let client = match self.client.inner.pool.cluster(addr) {
                Ok(client) => client,
                Err(error) => {
                    last_error = error;
                    continue;
                }
            };
            match tokio::time::timeout(remaining, call(client, remaining)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
                    return Err(Error::InvalidArgument(status.message().to_owned()));
                }
                Ok(Err(status)) => last_error = format!("{addr}: {}", status.message()),
                Err(_) => last_error = format!("{addr}: no answer in time"),
            }
        }
        Err(Error::Unavailable {
            shard_id: ShardId::META,
            attempts: addrs.len() as u32,
            last_error,
        })
    }
}

fn decode_map(map: Option<pb::ShardMap>, what: &str) -> Result<ShardMap, Error> {
    let map = map.ok_or_else(|| Error::Protocol(format!("{what} answered without a map")))?;
    ShardMap::from_proto(&map).map_err(|error| Error::Protocol(format!("{what} answered a bad map: {error}")))
}

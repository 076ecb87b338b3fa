//! Connections to nodes: one lazily connected channel per node address, shared by every request to
//! that node (HTTP/2 multiplexes them), with the node's Kv command stream on it; and the few node
//! calls that are not Kv requests.

use ringkv_proto::FromProto;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use ringkv_map::ShardMap;

use crate::commands::CommandStream;
use ringkv_proto::limits::MAX_MESSAGE_BYTES;
use ringkv_proto::pb::{self, cluster_client::ClusterClient, kv_client::KvClient};

pub(crate) struct Pool {
    connect_timeout: Duration,
    /// A std lock: held only to clone or insert a connection, never across an await.
    nodes: Mutex<HashMap<String, NodeConnection>>,
}

/// What the client holds for one node.
#[derive(Clone)]
pub(crate) struct NodeConnection {
    pub channel: Channel,
    /// Carries the node's gets, puts, deletes, compare-and-swaps and batches.
    pub commands: CommandStream,
}

impl Pool {
    pub(crate) fn new(connect_timeout: Duration) -> Pool {
        Pool {
            connect_timeout,
            nodes: Mutex::new(HashMap::new()),
        }
    }

    /// The channel to `addr`, created lazily and kept. Creating one does not connect: the first
    /// request does, within that request's own time limit.
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, String> {
        Ok(self.node(addr)?.channel)
    }

    /// The connection to `addr` (see `channel`); its command stream starts on first use. Must be
    /// called inside a tokio runtime.
    pub(crate) fn node(&self, addr: &str) -> Result<NodeConnection, String> {
        let mut nodes = self.nodes.lock().expect("node connection map lock");
        if let Some(node) = nodes.get(addr) {
            return Ok(node.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("{addr} is not a valid HOST:PORT: {e}"))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = endpoint.connect_lazy();
        let node = NodeConnection {
            commands: CommandStream::new(channel.clone(), addr.to_owned()),
            channel,
        };
        nodes.insert(addr.to_owned(), node.clone());
        Ok(node)
    }

    pub(crate) fn cluster(&self, addr: &str) -> Result<ClusterClient<Channel>, String> {
        Ok(cluster(self.channel(addr)?))
    }

    /// The shard map `addr` serves, within `timeout`.
    pub(crate) async fn fetch_map(&self, addr: &str, timeout: Duration) -> Result<ShardMap, String> {
        let mut client = self.cluster(addr)?;
        let mut request = tonic::Request::new(pb::GetShardMapRequest { linearizable: false });
        request.set_timeout(timeout);
        let response = tokio::time::timeout(timeout, client.get_shard_map(request))
            .await
            .map_err(|_| format!("{addr} did not answer within {} ms", timeout.as_millis()))?
            .map_err(|status| format!("{addr}: {}", status.message()))?;
        ShardMap::from_proto(&response.into_inner()).map_err(|e| format!("{addr} sent a bad shard map: {e}"))
    }
}

/// A Kv client on `channel`, with ringkv's message limits.
pub(crate) fn kv(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// A Cluster client on `channel`, with ringkv's message limits.
pub(crate) fn cluster(channel: Channel) -> ClusterClient<Channel> {
    ClusterClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES)
}

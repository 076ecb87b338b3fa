//! Runs a node: opens its storage, checks who it is, serves Kv, Cluster and Raft on one TCP
//! listener, finds or forms its cluster, starts its shard groups; and stops it, gracefully (shard
//! leaderships handed over first) or, for tests, as a crash would.
//!
//! Process overview of `start_with`:
//! 1. Validate the config; open the engine (fails at once if another process holds the data dir).
//! 2. Read the data directory's identity: a new directory gets a node record (random
//!    incarnation); an existing member must have been started with its cluster's settings.
//! 3. Listen, and serve: from now on peers can ask this node who it is.
//! 4. If the directory holds no cluster yet, find or form it with the peers (`node::bootstrap`)
//!    and record it durably.
//! 5. Start the shard groups; from now on the node serves requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::info;

use ringkv_engine::{Engine, EngineOptions};
use ringkv_proto::limits::MAX_MESSAGE_BYTES;
use ringkv_proto::pb::{cluster_server::ClusterServer, kv_server::KvServer, raft_server::RaftServer};

use crate::config::NodeConfig;
use crate::identity::{self, BootstrapParams, LocalIdentity, Stored};
use crate::node::{Node, NodeSlot, bootstrap};
use crate::service::{ClusterService, KvService, RaftService};
use crate::transport::{GrpcTransport, MAX_RAFT_MESSAGE_BYTES, RaftTransport};

/// How long a graceful stop waits for the node's shard leaderships to move elsewhere.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long stopping waits for clients to close their connections.
const SERVE_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long stopping waits for storage work still running to let go of the engine.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a node runs with besides its config.
pub struct StartOptions {
    pub transport: Arc<dyn RaftTransport>,
    pub engine: EngineOptions,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            transport: Arc::new(GrpcTransport::new(Duration::from_secs(2))),
            engine: EngineOptions::default(),
        }
    }
}

/// A node serving on its listener; `stop` shuts it down.
pub struct RunningNode {
    pub node: Arc<Node>,
    pub local_addr: SocketAddr,
    /// Set to true to stop serving (it also ends the Kv command streams).
    stop: watch::Sender<bool>,
    serving: JoinHandle<Result<(), tonic::transport::Error>>,
    /// What the services serve; emptied when the node stops.
    slot: Arc<NodeSlot>,
}

impl RunningNode {
    /// Stops gracefully: hands every shard this node leads to a caught-up replica elsewhere (so
    /// clients see no election), stops serving, stops the shard groups and closes the engine.
    pub async fn stop(self) {
        let still_leading = self.node.hand_over_leadership(HANDOVER_TIMEOUT).await;
        info!(still_leading, "leaderships handed over; stopping");
        // The groups stop before the server does, so no leadership comes back in between;
        // requests still in flight here end with their outcome unknown and are retried elsewhere.
        self.node.shutdown().await;
        self.halt().await;
    }

    /// Stops at once, as a crash would for the cluster: the shard groups stop first, so requests
    /// in flight fail with their outcome unknown, no leadership is handed over, and peers find out
    /// by timeouts. (Unlike a real crash, writes already made stay in the OS's buffers.)
    pub async fn kill(self) {
        self.node.shutdown().await;
        self.halt().await;
    }

    async fn halt(self) {
        let _ = self.stop.send(true);
        stop_serving(self.serving).await;
        // Connections that did not close in time live on; they must not keep the node.
        self.slot.clear_node();
        shut_down_groups(self.node).await;
    }
}

/// Waits for the server to close its connections, which it does once each client has answered
/// the HTTP/2 shutdown ping and its requests in flight have ended; stops waiting after
/// `SERVE_STOP_TIMEOUT`, so a client that stopped answering (frozen, or cut off) cannot hold the
/// node up. Call after signalling the stop.
async fn stop_serving(mut serving: JoinHandle<Result<(), tonic::transport::Error>>) {
    if tokio::time::timeout(SERVE_STOP_TIMEOUT, &mut serving)
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_ms = SERVE_STOP_TIMEOUT.as_millis() as u64,
            "some clients did not close their connections in time (they stopped answering); \
             stopping without them"
        );
        serving.abort();
    }
}

/// Stops every shard group (if still running) and closes the engine.
async fn shut_down_groups(node: Arc<Node>) {
    node.shutdown().await;
    let engine = node.engine().clone();
    let weak = Arc::downgrade(&node);
    drop(node);
    let handles = engine.handle_counter();
    if !engine.close(CLOSE_TIMEOUT).await {
        // Which kind of holder is left tells where to look: a task that still has the node, or
        // storage work (a Raft group, a blocking job) that has the engine alone.
        tracing::warn!(
            node_still_held = weak.strong_count(),
            storage_handles = handles(),
            "storage still in use {} s after stopping; it closes when the last task ends",
            CLOSE_TIMEOUT.as_secs()
        );
    }
}

/// Starts a node with the gRPC transport, as `ringkv start` does.
pub async fn start(config: &NodeConfig) -> anyhow::Result<RunningNode> {
    let options = StartOptions {
        transport: Arc::new(
            GrpcTransport::new(Duration::from_secs(2)).with_snapshot_rate(config.snapshot_rate_bytes_per_sec),
        ),
        ..StartOptions::default()
    };
    start_with(config, options).await
}

pub async fn start_with(config: &NodeConfig, options: StartOptions) -> anyhow::Result<RunningNode> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    // Opening replays the WAL, and the identity records are synced writes: RocksDB work, kept off
    // the runtime's worker threads.
    let engine = {
        let (data_dir, engine_options) = (config.data_dir.clone(), options.engine);
        tokio::task::spawn_blocking(move || Engine::open_with(&data_dir, engine_options)).await??
    };
    let mut params = BootstrapParams::from_config(config)?;
    let data_dir = config.data_dir.display().to_string();
    let listener = TcpListener::bind(&config.listen).await.with_context(|| {
        format!(
            "cannot listen on {}: is another process using this port? choose another --listen",
            config.listen
        )
    })?;
    let stored = engine.run_blocking(identity::load).await?;
    let (record, member) = match (stored, &config.join) {
        (Stored::Fresh, Some(join)) => {
            let record = bootstrap::join_cluster(
                &engine,
                join,
                config.id(),
                config.advertised_addr(),
                config.node_role(),
                None,
            )
            .await?;
            (record.0, Some(record.1))
        }
        (Stored::Waiting(record), Some(join)) => {
            let joined = bootstrap::join_cluster(
                &engine,
                join,
                record.node_id,
                config.advertised_addr(),
                config.node_role(),
                Some(record),
            )
            .await?;
            (joined.0, Some(joined.1))
        }
        (Stored::Fresh, None) => {
            let node_id = config.id();
            let record = engine
                .run_blocking(move |engine| identity::create_node(engine, node_id))
                .await?;
            (record, None)
        }
        (Stored::Waiting(record), None) => (record, None),
        (
            Stored::Member {
                node,
                params: stored,
                map,
            },
            join,
        ) => {
            // A node that joined took the cluster's settings; a node that formed it is held to them.
            let differences = params.differences(&stored, "the cluster in this data directory");
            if join.is_none() && node.node_id == config.id() && !differences.is_empty() {
                bail!(
                    "node {} refuses to start with settings that differ from its cluster's (data directory \
                     {data_dir}): {}. Start it with the cluster's settings",
                    node.node_id,
                    differences.join("; ")
                );
            }
            (node, Some((stored, *map)))
        }
    };
    // A joining node started without --node-id takes the id its data directory records.
    let assigned = config.join.is_some() && config.node_id == 0;
    if record.node_id != config.id() && !assigned {
        bail!(
            "data directory {data_dir} belongs to node {}, but this node was started as node {}; use --node-id {} \
             or another --data-dir",
            record.node_id,
            config.id(),
            record.node_id
        );
    }
    let member = member.map(|(stored, map)| {
        params = stored;
        map
    });

    let local_addr = listener.local_addr()?;
    let slot = NodeSlot::new(record, params.clone(), member.clone());
    let (stop, stopping) = watch::channel(false);
    let serving = tokio::spawn(serve(slot.clone(), listener, stopping));
    info!(%local_addr, node_id = %record.node_id, "serving Kv, Cluster and Raft");

    let started = async {
        let map = match member {
            Some(map) => map,
            None => {
                let map = bootstrap::join_or_form(record, &params, &data_dir).await?;
                let (saved_params, saved_map) = (params.clone(), map.clone());
                engine
                    .run_blocking(move |engine| identity::save_cluster(engine, &saved_params, &saved_map))
                    .await?;
                slot.set_map(map.clone());
                map
            }
        };
        let identity = LocalIdentity {
            cluster_id: map.cluster_id,
            node_id: record.node_id,
            incarnation: record.incarnation,
        };
        Node::start(config, engine, identity, params, map, options.transport).await
    };
    match started.await {
        Ok(node) => {
            slot.set_node(node.clone());
            Ok(RunningNode {
                node,
                local_addr,
                stop,
                serving,
                slot,
            })
        }
        Err(error) => {
            let _ = stop.send(true);
            stop_serving(serving).await;
            Err(error)
        }
    }
}

async fn serve(
    slot: Arc<NodeSlot>,
    listener: TcpListener,
    stopping: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let mut stopped = stopping.clone();
    let shutdown = async move {
        let _ = stopped.wait_for(|stopping| *stopping).await;
    };
    Server::builder()
        .tcp_nodelay(true)
        .add_service(
            KvServer::new(KvService::new(slot.clone(), stopping.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            ClusterServer::new(ClusterService::new(slot.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            RaftServer::new(RaftService::new(slot, stopping))
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
        )
        // Accepted connections need TCP_NODELAY set here: the builder's own setting only applies
        // to listeners it binds itself. Without it, small replies wait on Nagle's algorithm and
        // the peer's delayed ACK, about 40 ms each (it showed as a p99 near 40 ms).
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await
}

//! A cluster of in-process nodes, each with its own data dir (real RocksDB), talking Raft over
//! real TCP (gRPC transport) or over the fault-injecting [`MemoryNetwork`]; clients always use
//! real gRPC. Tests use it where they need to look inside a node (its engine, its Raft metrics),
//! to inject network faults, or to stop, kill and restart nodes without a process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ringkv_client::{Client, ClientConfig};
use ringkv_engine::{EngineOptions, NodeId, ShardId};
use ringkv_server::transport::{GrpcTransport, MemoryNetwork, RaftTransport};
use ringkv_server::{NodeConfig, RunningNode, StartOptions};
use tempfile::TempDir;

use crate::ports::free_ports;

pub enum TransportKind {
    Grpc,
    Memory(Arc<MemoryNetwork>),
}

pub struct LocalCluster {
    pub configs: Vec<NodeConfig>,
    /// Running nodes by node id; `None` while stopped.
    pub nodes: BTreeMap<u64, Option<RunningNode>>,
    transport: TransportKind,
    /// Shared by every node's engine: a test switch turned on here affects them all.
    pub engine_options: EngineOptions,
    _dir: TempDir,
}

impl LocalCluster {
    /// Starts `n` nodes with `shards` shards; `tune` adjusts every node's config before start.
    /// The nodes start together: a new cluster forms once all of them are up.
    pub async fn start(
        n: usize,
        shards: u32,
        transport: TransportKind,
        tune: impl Fn(&mut NodeConfig),
    ) -> anyhow::Result<LocalCluster> {
        LocalCluster::start_with(n, shards, transport, EngineOptions::default(), tune).await
    }

    /// `start` with engine options (test switches) shared by every node. `RINGKV_TEST_BUG=NAME`
    /// turns one known bug back on (`ringkv_engine::KNOWN_BUGS`), to watch a test catch it.
    pub async fn start_with(
        n: usize,
        shards: u32,
        transport: TransportKind,
        engine_options: EngineOptions,
        tune: impl Fn(&mut NodeConfig),
    ) -> anyhow::Result<LocalCluster> {
        crate::init_logging();
        if let Ok(bug) = std::env::var("RINGKV_TEST_BUG") {
            engine_options
                .faults
                .enable_bug(&bug)
                .map_err(anyhow::Error::msg)?;
        }
        let dir = tempfile::Builder::new().prefix("ringkv-local-").tempdir()?;
        let ports = free_ports(n);
        let peers: BTreeMap<String, String> = ports
            .iter()
            .enumerate()
            .map(|(i, port)| ((i + 1).to_string(), format!("127.0.0.1:{port}")))
            .collect();
        let configs: Vec<NodeConfig> = ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let mut config = NodeConfig {
                    node_id: i as u64 + 1,
                    listen: format!("127.0.0.1:{port}"),
                    data_dir: dir.path().join(format!("node-{}", i + 1)),
                    peers: peers.clone(),
                    shards,
                    ..NodeConfig::default()
                };
                tune(&mut config);
                config
            })
            .collect();
        let mut cluster = LocalCluster {
            configs,
            nodes: BTreeMap::new(),
            transport,
            engine_options,
            _dir: dir,
        };
        let starts = (1..=n as u64).map(|node_id| cluster.launch(node_id));
        let started = futures::future::try_join_all(starts).await?;
        for (node_id, running) in (1..=n as u64).zip(started) {
            cluster.adopt(node_id, running);
        }
        Ok(cluster)
    }

    fn config(&self, node_id: u64) -> &NodeConfig {
        &self.configs[node_id as usize - 1]
    }

    /// Starts a node's server (without recording it).
    async fn launch(&self, node_id: u64) -> anyhow::Result<RunningNode> {
        let config = self.config(node_id).clone();
        let transport: Arc<dyn RaftTransport> = match &self.transport {
            TransportKind::Grpc => Arc::new(
                GrpcTransport::new(Duration::from_secs(1))
                    .with_snapshot_rate(config.snapshot_rate_bytes_per_sec),
            ),
            TransportKind::Memory(network) => network.endpoint(NodeId(node_id)),
        };
        let options = StartOptions {
            transport,
            engine: self.engine_options.clone(),
        };
        ringkv_server::start_with(&config, options)
            .await
            .with_context(|| format!("starting node {node_id}"))
    }

    fn adopt(&mut self, node_id: u64, running: RunningNode) {
        if let TransportKind::Memory(network) = &self.transport {
            network.register(&running.node);
        }
        self.nodes.insert(node_id, Some(running));
    }

    /// Restarts a stopped node (its data dir is kept).
    pub async fn start_node(&mut self, node_id: u64) -> anyhow::Result<()> {
        let running = self.launch(node_id).await?;
        self.adopt(node_id, running);
        Ok(())
    }

    /// Starts a new node that joins the running cluster through node 1 (`join`), with the next
    /// node id and `role` ("voter" or "read-replica"); `tune` adjusts its config. Returns its id.
    pub async fn join_node(&mut self, role: &str, tune: impl Fn(&mut NodeConfig)) -> anyhow::Result<u64> {
        let node_id = self.configs.len() as u64 + 1;
        let port = free_ports(1)[0];
        let first = self.configs[0].clone();
        let mut config = NodeConfig {
            node_id,
            listen: format!("127.0.0.1:{port}"),
            data_dir: first
                .data_dir
                .parent()
                .context("node 1's data dir has a parent")?
                .join(format!("node-{node_id}")),
            peers: BTreeMap::new(),
            join: Some(first.listen.clone()),
            role: role.to_owned(),
            shards: first.shards,
            replication: first.replication,
            raft: first.raft.clone(),
            ..NodeConfig::default()
        };
        tune(&mut config);
        self.configs.push(config);
        let running = self.launch(node_id).await?;
        self.adopt(node_id, running);
        Ok(node_id)
    }

    /// Stops a node gracefully: its shard leaderships are handed over first.
    pub async fn stop_node(&mut self, node_id: u64) {
        if let Some(Some(running)) = self.nodes.insert(node_id, None) {
            running.stop().await;
        }
    }

    /// Stops a node as a crash would for the cluster: nothing is handed over.
    pub async fn kill_node(&mut self, node_id: u64) {
        if let Some(Some(running)) = self.nodes.insert(node_id, None) {
            running.kill().await;
        }
    }

    /// `count` keys `{prefix}{i}` that shard `shard` owns, by the shard map of node `node_id`:
    /// for tests that propose on a shard's Raft group directly, bypassing the node's routing.
    pub fn keys_of_shard(&self, node_id: u64, shard: ShardId, prefix: &str, count: usize) -> Vec<Vec<u8>> {
        let map = self.running(node_id).node.shard_map();
        (0..)
            .map(|i| format!("{prefix}{i}").into_bytes())
            .filter(|key| map.shard_for_key(key).id == shard)
            .take(count)
            .collect()
    }

    /// The node that leads `shard`, by the shard map of node `node_id`.
    pub fn leader_of(&self, node_id: u64, shard: ShardId) -> anyhow::Result<u64> {
        Ok(self
            .running(node_id)
            .node
            .shard_map()
            .shard(shard)
            .and_then(|s| s.leader)
            .with_context(|| format!("shard {shard} has no leader in node {node_id}'s map"))?
            .0)
    }

    pub fn running(&self, node_id: u64) -> &RunningNode {
        self.nodes[&node_id].as_ref().expect("node is running")
    }

    pub fn is_running(&self, node_id: u64) -> bool {
        self.nodes.get(&node_id).is_some_and(Option::is_some)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.configs.iter().map(|c| c.listen.clone()).collect()
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        self.client_with_timeout(Duration::from_secs(10)).await
    }

    pub async fn client_with_timeout(&self, timeout: Duration) -> anyhow::Result<Client> {
        let mut config = ClientConfig::new(self.endpoints());
        config.request_timeout = timeout;
        Ok(Client::with_config(config).await?)
    }

    /// Waits until every running node sees a leader for each of its shards and, when every node
    /// runs, until each shard is led by its preferred node (the leader balancer has settled).
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for_leaders(timeout, true).await
    }

    /// Waits until every running node sees a leader for each of its shards.
    pub async fn wait_for_leaders(&self, timeout: Duration, settled: bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let all_running = self.nodes.values().all(Option::is_some);
        loop {
            let mut problems: Vec<(u64, u64, u64)> = Vec::new();
            for (node_id, running) in self
                .nodes
                .iter()
                .filter_map(|(id, r)| r.as_ref().map(|r| (*id, r)))
            {
                let map = running.node.shard_map();
                for replica in running.node.status().replicas {
                    let preferred = map
                        .shard(ringkv_engine::ShardId(replica.shard_id))
                        .and_then(|s| s.voters.first())
                        .map(|v| v.node_id.0);
                    let ok = replica.leader_node_id != 0
                        && (!settled || !all_running || Some(replica.leader_node_id) == preferred);
                    if !ok {
                        problems.push((node_id, replica.shard_id, replica.leader_node_id));
                    }
                }
            }
            if problems.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("after {timeout:?}, (node, shard, leader) without a settled leader: {problems:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running replica of every shard has applied everything its shard's
    /// leader has committed (as the leader reported it when this was called).
    pub async fn wait_caught_up(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses: Vec<_> = self
                .nodes
                .values()
                .flatten()
                .map(|running| running.node.status())
                .collect();
            let mut committed: BTreeMap<u64, u64> = BTreeMap::new();
            for status in &statuses {
                for replica in &status.replicas {
                    if replica.role == "leader" {
                        committed.insert(replica.shard_id, replica.committed_index);
                    }
                }
            }
            let behind: Vec<(u64, u64, u64, u64)> = statuses
                .iter()
                .flat_map(|status| {
                    let committed = &committed;
                    status.replicas.iter().filter_map(move |r| {
                        let target = committed.get(&r.shard_id).copied().unwrap_or(u64::MAX);
                        (r.applied_index < target).then_some((
                            status.node_id,
                            r.shard_id,
                            r.applied_index,
                            target,
                        ))
                    })
                })
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("after {timeout:?}, (node, shard, applied, leader's commit) still behind: {behind:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn shutdown(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for node_id in ids {
            self.kill_node(node_id).await;
        }
    }
}

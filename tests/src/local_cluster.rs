//! A cluster of in-process nodes, each with its own data dir, talking over real TCP (gRPC
//! transport) or in memory ([`MemoryTransport`]). Tests use it where they need to look inside a
//! node (its engine, its Raft metrics) or to stop and restart nodes without a process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ringkv_client::{Client, ClientConfig};
use ringkv_server::transport::{GrpcTransport, MemoryTransport, RaftTransport};
use ringkv_server::{NodeConfig, RunningNode};
use tempfile::TempDir;

use crate::ports::free_ports;

pub enum TransportKind {
    Grpc,
    Memory(Arc<MemoryTransport>),
}

pub struct LocalCluster {
    pub configs: Vec<NodeConfig>,
    /// Running nodes by node id; `None` while stopped.
    pub nodes: BTreeMap<u64, Option<RunningNode>>,
    transport: TransportKind,
    _dir: TempDir,
}

impl LocalCluster {
    /// Starts `n` nodes with `shards` shards; `tune` adjusts every node's config before start.
    pub async fn start(
        n: usize,
        shards: u32,
        transport: TransportKind,
        tune: impl Fn(&mut NodeConfig),
    ) -> anyhow::Result<LocalCluster> {
        crate::init_logging();
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
            _dir: dir,
        };
        for node_id in 1..=n as u64 {
            cluster.start_node(node_id).await?;
        }
        Ok(cluster)
    }

    fn config(&self, node_id: u64) -> &NodeConfig {
        &self.configs[node_id as usize - 1]
    }

    pub async fn start_node(&mut self, node_id: u64) -> anyhow::Result<()> {
        let config = self.config(node_id).clone();
        let transport: Arc<dyn RaftTransport> = match &self.transport {
            TransportKind::Grpc => Arc::new(GrpcTransport::new(Duration::from_secs(1))),
            TransportKind::Memory(memory) => memory.clone(),
        };
        let running = ringkv_server::start_with_transport(&config, transport)
            .await
            .with_context(|| format!("starting node {node_id}"))?;
        if let TransportKind::Memory(memory) = &self.transport {
            memory.register(&running.node);
        }
        self.nodes.insert(node_id, Some(running));
        Ok(())
    }

    /// Stops a node cleanly (its data dir stays for a restart).
    pub async fn stop_node(&mut self, node_id: u64) {
        if let Some(Some(running)) = self.nodes.insert(node_id, None) {
            running.stop().await;
        }
    }

    pub fn running(&self, node_id: u64) -> &RunningNode {
        self.nodes[&node_id].as_ref().expect("node is running")
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.configs.iter().map(|c| c.listen.clone()).collect()
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        let mut config = ClientConfig::new(self.endpoints());
        config.request_timeout = Duration::from_secs(10);
        Ok(Client::with_config(config).await?)
    }

    /// Waits until every running node sees a leader for each of its shards and, when every node
    /// runs, until each shard is led by its preferred node (the leader balancer has settled).
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
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
                        .shard(replica.shard_id)
                        .and_then(|s| s.voters.first())
                        .map(|v| v.node_id);
                    let settled = replica.leader_node_id != 0
                        && (!all_running || Some(replica.leader_node_id) == preferred);
                    if !settled {
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
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn shutdown(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for node_id in ids {
            self.stop_node(node_id).await;
        }
    }
}

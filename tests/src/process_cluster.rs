//! A cluster of real `ringkv start` processes on 127.0.0.1, each with its own temp data dir and
//! log file. Every process the harness starts is killed (by pid) when the cluster is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ringkv_client::{Client, ClientConfig};
use tempfile::TempDir;

use crate::ports::free_ports;

/// Where the `ringkv` binary is: `RINGKV_BIN`, else next to the test executable's `deps` dir
/// (`target/<profile>/ringkv`), which `cargo build --bins` produces.
pub fn ringkv_binary() -> PathBuf {
    if let Ok(path) = std::env::var("RINGKV_BIN") {
        return PathBuf::from(path);
    }
    workspace_binary("ringkv")
}

/// A binary of the workspace (`ringkv`, `ringkv-bench`) in the test executable's profile dir.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let binary = profile_dir.join(name);
    assert!(
        binary.exists(),
        "{name} binary not found at {}: run `cargo build --bins` first",
        binary.display()
    );
    binary
}

pub struct ProcessNode {
    pub node_id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// The member it joins through (`--join`), for a node added after the cluster formed.
    join: Option<String>,
    /// Started without `--node-id` (the cluster assigns it).
    assigned_id: bool,
    /// Flags of its own, after the cluster's.
    own_args: Vec<String>,
    child: Option<Child>,
}

impl ProcessNode {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct ProcessCluster {
    pub nodes: Vec<ProcessNode>,
    peers: String,
    shards: u32,
    extra_args: Vec<String>,
    _dir: TempDir,
}

impl ProcessCluster {
    /// Starts `n` nodes forming one cluster of `shards` shards, `min(3, n)` replicas each.
    pub fn start(n: usize, shards: u32, extra_args: &[&str]) -> anyhow::Result<ProcessCluster> {
        let dir = tempfile::Builder::new().prefix("ringkv-test-").tempdir()?;
        let ports = free_ports(n);
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("{}=127.0.0.1:{port}", i + 1))
            .collect();
        let mut cluster = ProcessCluster {
            nodes: Vec::new(),
            peers: peers.join(","),
            shards,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            _dir: dir,
        };
        for (index, port) in ports.iter().enumerate() {
            let node_id = index as u64 + 1;
            let root = cluster._dir.path();
            cluster.nodes.push(ProcessNode {
                node_id,
                addr: format!("127.0.0.1:{port}"),
                data_dir: root.join(format!("node-{node_id}")),
                log_path: root.join(format!("node-{node_id}.log")),
                join: None,
                assigned_id: false,
                own_args: Vec::new(),
                child: None,
            });
        }
        for node_id in 1..=n as u64 {
            cluster.start_node(node_id)?;
        }
        Ok(cluster)
    }

    /// Adds node `node_id` with an empty data directory, joining through node 1 (`ringkv start
    /// --join`), and starts it. With `assigned`, it is started without `--node-id`: the cluster
    /// must assign it `node_id` (the next id after every node it has had).
    pub fn add_joining_node(&mut self, node_id: u64, assigned: bool) -> anyhow::Result<()> {
        self.add_joining_node_with(node_id, assigned, &[])
    }

    /// `add_joining_node` with flags of the node's own (such as `--role read-replica`).
    pub fn add_joining_node_with(
        &mut self,
        node_id: u64,
        assigned: bool,
        own_args: &[&str],
    ) -> anyhow::Result<()> {
        let port = free_ports(1)[0];
        let root = self._dir.path();
        let join = self.node(1).addr.clone();
        self.nodes.push(ProcessNode {
            node_id,
            addr: format!("127.0.0.1:{port}"),
            data_dir: root.join(format!("node-{node_id}")),
            log_path: root.join(format!("node-{node_id}.log")),
            join: Some(join),
            assigned_id: assigned,
            own_args: own_args.iter().map(|s| s.to_string()).collect(),
            child: None,
        });
        self.start_node(node_id)
    }

    fn node_mut(&mut self, node_id: u64) -> &mut ProcessNode {
        self.nodes
            .iter_mut()
            .find(|n| n.node_id == node_id)
            .expect("node id in cluster")
    }

    pub fn node(&self, node_id: u64) -> &ProcessNode {
        self.nodes
            .iter()
            .find(|n| n.node_id == node_id)
            .expect("node id in cluster")
    }

    /// The command line that starts `node_id`, without spawning it.
    pub fn start_command(&self, node_id: u64) -> Command {
        self.start_command_listening(node_id, &self.node(node_id).addr)
    }

    /// Like `start_command`, but listening on `listen` while advertising the node's own address.
    pub fn start_command_listening(&self, node_id: u64, listen: &str) -> Command {
        let node = self.node(node_id);
        let mut command = Command::new(ringkv_binary());
        command.arg("start");
        if !node.assigned_id {
            command.args(["--node-id", &node_id.to_string()]);
        }
        command
            .args(["--listen", listen, "--advertise", &node.addr])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--shards", &self.shards.to_string()])
            .args(&self.extra_args)
            .args(&node.own_args)
            .env(
                "RINGKV_LOG",
                std::env::var("RINGKV_NODE_LOG").unwrap_or_else(|_| "info".into()),
            );
        if let Some(join) = &node.join {
            command.args(["--join", join]);
        } else if !self.extra_args.iter().any(|arg| arg == "--peers") {
            command.args(["--peers", &self.peers]);
        }
        command
    }

    /// The command line that starts `node_id` as the cluster was started but with `--shards`
    /// and `--peers` replaced (`None`: as the cluster has them) and `extra` added.
    pub fn start_command_with(
        &self,
        node_id: u64,
        shards: Option<u32>,
        peers: Option<&str>,
        extra: &[&str],
    ) -> Command {
        let node = self.node(node_id);
        let mut command = Command::new(ringkv_binary());
        command
            .arg("start")
            .args(["--node-id", &node_id.to_string(), "--listen", &node.addr])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--shards", &shards.unwrap_or(self.shards).to_string()])
            .args(["--peers", peers.unwrap_or(&self.peers)])
            .args(extra)
            .env("RINGKV_LOG", "warn");
        command
    }

    /// The `--peers` value the cluster was started with.
    pub fn peers(&self) -> &str {
        &self.peers
    }

    /// Starts (or restarts) a node's process, appending to its log file.
    pub fn start_node(&mut self, node_id: u64) -> anyhow::Result<()> {
        let mut command = self.start_command(node_id);
        let node = self.node_mut(node_id);
        if node.child.is_some() {
            bail!("node {node_id} is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)?;
        command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        node.child = Some(
            command
                .spawn()
                .with_context(|| format!("cannot spawn node {node_id}"))?,
        );
        Ok(())
    }

    /// SIGKILLs a node's process (no chance to flush or shut down) and reaps it.
    pub fn kill(&mut self, node_id: u64) {
        if let Some(mut child) = self.node_mut(node_id).child.take() {
            let _ = child.kill(); // SIGKILL on Unix
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM (a graceful stop: the node hands its shard leaderships over first) and waits
    /// up to `timeout` for the process to exit; SIGKILLs it if it has not. Returns whether it
    /// exited on its own, with success.
    pub fn terminate(&mut self, node_id: u64, timeout: Duration) -> bool {
        let Some(mut child) = self.node_mut(node_id).child.take() else {
            return false;
        };
        signal(&child, "TERM");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Freezes a node's process (SIGSTOP): it keeps its sockets, but answers nothing.
    pub fn pause(&self, node_id: u64) {
        if let Some(child) = &self.node(node_id).child {
            signal(child, "STOP");
        }
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn resume(&self, node_id: u64) {
        if let Some(child) = &self.node(node_id).child {
            signal(child, "CONT");
        }
    }

    /// Deletes a stopped node's data directory, as a replaced disk would.
    pub fn wipe(&self, node_id: u64) -> anyhow::Result<()> {
        let node = self.node(node_id);
        assert!(node.child.is_none(), "wipe a node only while it is stopped");
        std::fs::remove_dir_all(&node.data_dir)
            .with_context(|| format!("cannot delete {}", node.data_dir.display()))
    }

    /// Runs `command` (a `ringkv start` that must refuse to start) in the foreground, waiting at
    /// most `timeout` for it to exit (it is killed otherwise), and returns its output.
    pub fn run_to_exit(mut command: Command, timeout: Duration) -> anyhow::Result<std::process::Output> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn()?;
        let deadline = Instant::now() + timeout;
        loop {
            if child.try_wait()?.is_some() {
                return Ok(child.wait_with_output()?);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let output = child.wait_with_output()?;
                bail!(
                    "the node did not exit within {timeout:?}; its output:\n{}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        self.client_with_timeout(Duration::from_secs(10)).await
    }

    pub async fn client_with_timeout(&self, timeout: Duration) -> anyhow::Result<Client> {
        let mut config = ClientConfig::new(self.endpoints());
        config.request_timeout = timeout;
        Ok(Client::with_config(config).await?)
    }

    /// Waits until every shard has a leader that every running node agrees on. Fails after
    /// `timeout`, printing the nodes' logs' tails to help debugging.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last_problem = String::from("no node answered");
        let all_running = self.nodes.iter().all(ProcessNode::is_running);
        while Instant::now() < deadline {
            match self.leaders().await {
                Ok(leaders) => {
                    let missing: Vec<_> = leaders
                        .iter()
                        .filter(|(_, l)| l.is_none())
                        .map(|(s, _)| *s)
                        .collect();
                    if !missing.is_empty() || leaders.is_empty() {
                        last_problem = format!("shards without an agreed leader: {missing:?}");
                    } else if !all_running {
                        return Ok(());
                    } else {
                        // With every node up, also wait for the leader balancer to settle, so
                        // tests do not start writing into leadership transfers.
                        let preferred = self.preferred_leaders().await?;
                        let misplaced: Vec<_> = leaders
                            .iter()
                            .filter(|(s, l)| preferred.get(*s) != l.as_ref())
                            .map(|(s, _)| *s)
                            .collect();
                        if misplaced.is_empty() {
                            return Ok(());
                        }
                        last_problem = format!("shards not yet led by their preferred node: {misplaced:?}");
                    }
                }
                Err(error) => last_problem = error.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "cluster not ready after {timeout:?}: {last_problem}\n{}",
            self.log_tails(30)
        )
    }

    /// Each shard's (and the metadata group's) preferred leader (its first voter), from a running
    /// node's shard map.
    async fn preferred_leaders(&self) -> anyhow::Result<BTreeMap<u64, u64>> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .context("no node is running")?;
        let mut client =
            ringkv_proto::pb::cluster_client::ClusterClient::connect(format!("http://{}", node.addr)).await?;
        let map = client
            .get_shard_map(ringkv_proto::pb::GetShardMapRequest { linearizable: false })
            .await?
            .into_inner();
        Ok(map
            .shards
            .iter()
            .chain(&map.meta)
            .filter_map(|s| s.voters.first().map(|v| (s.shard_id, v.node_id)))
            .collect())
    }

    /// Leader node of every shard, as reported consistently by the running nodes hosting it
    /// (`None` when no leader or the running nodes disagree).
    pub async fn leaders(&self) -> anyhow::Result<BTreeMap<u64, Option<u64>>> {
        let mut seen: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let mut client =
                ringkv_proto::pb::cluster_client::ClusterClient::connect(format!("http://{}", node.addr))
                    .await
                    .with_context(|| format!("node {} at {} is not answering", node.node_id, node.addr))?;
            let status = client
                .status(ringkv_proto::pb::StatusRequest {})
                .await?
                .into_inner();
            for replica in status.replicas {
                seen.entry(replica.shard_id)
                    .or_default()
                    .push(replica.leader_node_id);
            }
        }
        let running: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.node_id)
            .collect();
        Ok(seen
            .into_iter()
            .map(|(shard, views)| {
                let first = views[0];
                let agreed = first != 0 && running.contains(&first) && views.iter().all(|&v| v == first);
                (shard, agreed.then_some(first))
            })
            .collect())
    }

    /// The running node that leads the most shards.
    pub async fn busiest_leader(&self) -> anyhow::Result<u64> {
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for leader in self.leaders().await?.values().flatten() {
            *counts.entry(*leader).or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(node, _)| node)
            .context("no shard has a leader")
    }

    /// The last `lines` lines of every node's log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let text = std::fs::read_to_string(&node.log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            out.push_str(&format!("--- node {} log tail ---\n", node.node_id));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// Sends `signal` (a name such as "TERM") to a child process, by its pid, with `kill(1)`. A
/// process that is already gone is not an error.
fn signal(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                // A paused process must be resumed to die promptly.
                signal(&child, "CONT");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

//! Node configuration: one serde struct with defaults, read from a TOML file and/or flags, checked
//! by `validate()` before anything touches the disk. `ringkv.example.toml` at the repository root
//! lists every field with its default; a test keeps the two equal.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use ringkv_proto::NodeId;

/// Default client/peer port: unassigned by IANA, and easy to remember next to Redis's 6379.
pub const DEFAULT_PORT: u16 = 7379;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id, 1 to 2^32-1, unique in the cluster.
    pub node_id: u64,
    /// Address the node listens on for clients and peers (`host:port`).
    pub listen: String,
    /// Address peers and clients should use to reach this node; defaults to `listen`.
    pub advertise: Option<String>,
    /// Directory holding the node's RocksDB instance and snapshots.
    pub data_dir: PathBuf,
    /// Every node of the cluster at bootstrap, this one included: node id -> address. Empty means a
    /// single-node cluster made of this node alone.
    pub peers: BTreeMap<String, String>,
    /// Address of any node of a running cluster to join (instead of forming one with `peers`).
    /// With it, `node_id` 0 asks the cluster to assign an id.
    pub join: Option<String>,
    /// What replicas the node takes: "voter" (voters, and read replicas when the cluster's
    /// `read_replicas` asks), or "read-replica" (only read replicas, one of every shard; such a
    /// node joins a running cluster with `join`).
    pub role: String,
    /// Number of shards the ring is cut into when the cluster is first created.
    pub shards: u32,
    /// Replicas per shard when the cluster is first created; at most the number of nodes.
    /// Defaults to min(3, number of nodes).
    pub replication: Option<usize>,
    /// How long a node waits for a write to commit or a read to be confirmed before answering
    /// Unavailable, in milliseconds.
    pub request_timeout_ms: u64,
    /// A replica move whose new replica has not caught up this long after the move began is
    /// rolled back, in milliseconds (run by the metadata group's leader).
    pub move_timeout_ms: u64,
    /// A node unheard for this long (no answer to the metadata leader's pulses) is marked down, and
    /// its replicas are re-created on the other nodes, in milliseconds.
    pub dead_node_timeout_ms: u64,
    /// A shard this node leads splits in two once its data takes more than this many bytes
    /// (RocksDB's estimate); 0 never splits on size. Give every node the same value.
    pub split_size_bytes: u64,
    /// A shard this node leads splits in two once it applies more than this many log entries per
    /// second (measured over 5 s); 0 (the default) never splits on write rate.
    pub split_writes_per_sec: u64,
    /// Outgoing snapshot streams (moving replicas) send at most this many bytes per second, all
    /// together, so a rebalance leaves disk and network to foreground requests; 0: no limit.
    pub snapshot_rate_bytes_per_sec: u64,
    pub raft: RaftTuning,
    /// Tests only (`--test-move-hold-file`, hidden): while this file exists, the mover holds
    /// every move at step `Promote`, before its membership change, so a test can kill a node
    /// there.
    #[serde(skip)]
    pub test_move_hold_file: Option<PathBuf>,
}

/// Raft timing and log-retention knobs, shared by every shard group on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTuning {
    /// Leader heartbeat period, in milliseconds. Must exceed the worst round trip between nodes:
    /// openraft gives up on a heartbeat's answer after one interval, and a leader none of whose
    /// heartbeats are answered in time loses its lease and refuses writes while idle.
    pub heartbeat_interval_ms: u64,
    /// Election timeout range, in milliseconds. Must exceed the heartbeat interval.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A leader skips its periodic heartbeat to a follower that acknowledged a message (entries or
    /// a heartbeat) sent within this many milliseconds: the answer to an append renews the
    /// leader's lease and the follower's election timer as a heartbeat would. 0 sends every
    /// heartbeat. `heartbeat_interval_ms` + this + a fifth of the heartbeat interval must stay
    /// under `election_timeout_min_ms`, so a follower never waits out its election timeout.
    pub heartbeat_min_interval_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_after_logs: u64,
    /// Log entries kept behind a snapshot, so slightly lagging followers catch up from the log.
    pub logs_to_keep_after_snapshot: u64,
    /// A snapshot transfer fails when nothing moves (no chunk sent or acknowledged, no keep-alive
    /// while the receiver installs) for this long, in milliseconds. There is no overall limit:
    /// a large shard takes as long as its size needs.
    pub snapshot_idle_timeout_ms: u64,
    /// A shard that serves no request for this long, fully replicated, goes quiet: its replicas
    /// stop their Raft timers and heartbeats until a request or a Raft message wakes them, and
    /// node-level liveness (one pulse per peer node per heartbeat interval) watches its leader
    /// instead. In milliseconds; 0 keeps every shard's timers running.
    pub quiesce_after_ms: u64,
    /// Whether a leader serves linearizable reads (and gives replicas read indexes) on its lease,
    /// without a heartbeat round, while a quorum acknowledged one of its messages less than
    /// `election_timeout_max_ms` ago. Safe while the nodes' clocks advance at the same rate (they
    /// need not agree); false asks a quorum for every read (ReadIndex), at the cost of a round.
    pub lease_reads: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: 1,
            listen: format!("127.0.0.1:{DEFAULT_PORT}"),
            advertise: None,
            data_dir: PathBuf::from("ringkv-data"),
            peers: BTreeMap::new(),
            join: None,
            role: "voter".into(),
            shards: 16,
            replication: None,
            request_timeout_ms: 5_000,
            move_timeout_ms: 600_000,
            dead_node_timeout_ms: 600_000,
            split_size_bytes: 512 * 1024 * 1024,
            split_writes_per_sec: 0,
            // On the 2-core development machine, p99 over a rebalance's requests was 2.1-2.5x its
            // value before at 8 MiB/s and within 2x at 4 MiB/s (README "Growing and shrinking a
            // cluster").
            snapshot_rate_bytes_per_sec: 4 * 1024 * 1024,
            raft: RaftTuning::default(),
            test_move_hold_file: None,
        }
    }
}

impl Default for RaftTuning {
    fn default() -> Self {
        // Heartbeats every 100 ms with 0.6–1.2 s elections: failover in about two seconds, while a
        // node with a few hundred idle shards stays well under one core (DESIGN.md "Raft").
        RaftTuning {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 600,
            election_timeout_max_ms: 1_200,
            // A follower hears from its leader at least every ~520 ms (100 + 400 + one tick),
            // inside the 600 ms minimum election timeout; a busy shard's appends stand in for most
            // heartbeats (README "Many shards": +25–35 % writes over 1,024 shards).
            heartbeat_min_interval_ms: 400,
            snapshot_after_logs: 10_000,
            logs_to_keep_after_snapshot: 1_000,
            snapshot_idle_timeout_ms: 30_000,
            quiesce_after_ms: 2_000,
            lease_reads: true,
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl NodeConfig {
    pub fn from_file(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// The address this node is reached at.
    pub fn advertised_addr(&self) -> &str {
        self.advertise.as_deref().unwrap_or(&self.listen)
    }

    /// The cluster's nodes at bootstrap, parsed from `peers` (this node alone when empty).
    pub fn bootstrap_nodes(&self) -> Result<BTreeMap<NodeId, String>, ConfigError> {
        if self.peers.is_empty() {
            return Ok(BTreeMap::from([(
                NodeId(self.node_id),
                self.advertised_addr().to_owned(),
            )]));
        }
        let mut nodes = BTreeMap::new();
        for (id, addr) in &self.peers {
            let id: u64 = id.trim().parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "peer id {id:?} is not a number; write peers as ID=HOST:PORT"
                ))
            })?;
            nodes.insert(NodeId(id), addr.clone());
        }
        Ok(nodes)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        NodeId(self.node_id)
    }

    pub fn dead_node_timeout(&self) -> Duration {
        Duration::from_millis(self.dead_node_timeout_ms)
    }

    pub fn move_timeout(&self) -> Duration {
        Duration::from_millis(self.move_timeout_ms)
    }

    pub fn split_policy(&self) -> crate::node::SplitPolicy {
        crate::node::SplitPolicy {
            size_bytes: self.split_size_bytes,
            writes_per_sec: self.split_writes_per_sec,
        }
    }

    pub fn snapshot_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.raft.snapshot_idle_timeout_ms)
    }

    /// How long a leader may serve reads on the strength of its followers' last acknowledgements:
    /// openraft's leader lease is the longest election timeout.
    pub fn leader_lease(&self) -> Duration {
        Duration::from_millis(self.raft.election_timeout_max_ms)
    }

    /// How long an idle shard waits before going quiet; `None`: never (see `node::quiesce`).
    pub fn quiesce_after(&self) -> Option<Duration> {
        (self.raft.quiesce_after_ms > 0).then(|| Duration::from_millis(self.raft.quiesce_after_ms))
    }

    /// How long Raft messages may take (see `RaftTimeouts`).
    pub fn raft_timeouts(&self) -> crate::transport::RaftTimeouts {
        crate::transport::RaftTimeouts {
            rpc_floor: Duration::from_millis(self.raft.election_timeout_max_ms),
            snapshot_idle: self.snapshot_idle_timeout(),
        }
    }

    pub fn replication_factor(&self) -> Result<usize, ConfigError> {
        let n_nodes = self.bootstrap_nodes()?.len();
        Ok(self.replication.unwrap_or(n_nodes.min(3)))
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Checks everything that can be checked without touching the disk or the network, and says
    /// which setting is wrong.
    /// The role as the cluster's map records it (`validate` has checked the text).
    pub fn node_role(&self) -> ringkv_proto::pb::NodeRole {
        if self.role == "read-replica" {
            ringkv_proto::pb::NodeRole::ReadReplica
        } else {
            ringkv_proto::pb::NodeRole::Voter
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        match self.role.as_str() {
            "voter" => {}
            "read-replica" if self.join.is_some() => {}
            "read-replica" => {
                return invalid(
                    "role \"read-replica\" needs join: a read-replica node joins a running cluster (it cannot \
                     form one, which needs voters)"
                        .into(),
                );
            }
            other => {
                return invalid(format!(
                    "role {other:?} is unknown: use \"voter\" or \"read-replica\""
                ));
            }
        }
        if let Some(join) = &self.join {
            if !self.peers.is_empty() {
                return invalid(
                    "join and peers exclude each other: peers form a new cluster, join enters a running one"
                        .into(),
                );
            }
            if join
                .rsplit_once(':')
                .and_then(|(_, port)| port.parse::<u16>().ok())
                .is_none()
            {
                return invalid(format!("join address {join:?} is not HOST:PORT"));
            }
        }
        let assigned = self.join.is_some() && self.node_id == 0;
        if !assigned && (self.node_id == 0 || self.node_id > u64::from(u32::MAX)) {
            return invalid(format!(
                "node_id {} is out of range: use 1 to {}",
                self.node_id,
                u32::MAX
            ));
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            return invalid(format!(
                "listen address {:?} is not HOST:PORT with a numeric IP",
                self.listen
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir is empty".into());
        }
        // A joining node takes the cluster's shard and replica settings; only its own are checked.
        let nodes = if self.join.is_some() {
            BTreeMap::new()
        } else {
            self.bootstrap_nodes()?
        };
        for (id, addr) in &nodes {
            if id.0 == 0 || id.0 > u64::from(u32::MAX) {
                return invalid(format!("peer id {id} is out of range: use 1 to {}", u32::MAX));
            }
            if addr
                .rsplit_once(':')
                .and_then(|(_, port)| port.parse::<u16>().ok())
                .is_none()
            {
                return invalid(format!("peer {id} address {addr:?} is not HOST:PORT"));
            }
        }
        match nodes.get(&self.id()) {
            None if self.join.is_some() => {}
            None => {
                return invalid(format!(
                    "peers do not include this node's id {}; list every node, this one too",
                    self.node_id
                ));
            }
            Some(addr) if addr != self.advertised_addr() => {
                return invalid(format!(
                    "peers give node {} the address {addr}, but it listens/advertises {}",
                    self.node_id,
                    self.advertised_addr()
                ));
            }
            Some(_) => {}
        }
        if self.shards == 0 || self.shards > 65_536 {
            return invalid(format!(
                "shards = {} is out of range: use 1 to 65536",
                self.shards
            ));
        }
        let replication = self.replication_factor()?;
        if self.join.is_none() && (replication == 0 || replication > nodes.len()) {
            return invalid(format!(
                "replication = {replication} is impossible with {} node(s): use 1 to {}",
                nodes.len(),
                nodes.len()
            ));
        }
        if self.dead_node_timeout_ms == 0 {
            return invalid("dead_node_timeout_ms must be positive".into());
        }
        if self.move_timeout_ms == 0 {
            return invalid("move_timeout_ms must be positive".into());
        }
        if self.request_timeout_ms == 0 {
            return invalid("request_timeout_ms must be positive".into());
        }
        let raft = &self.raft;
        if raft.heartbeat_interval_ms == 0 || raft.election_timeout_min_ms <= raft.heartbeat_interval_ms {
            return invalid(format!(
                "raft.election_timeout_min_ms ({}) must exceed raft.heartbeat_interval_ms ({}), which must be positive",
                raft.election_timeout_min_ms, raft.heartbeat_interval_ms
            ));
        }
        if raft.election_timeout_max_ms <= raft.election_timeout_min_ms {
            return invalid(format!(
                "raft.election_timeout_max_ms ({}) must exceed raft.election_timeout_min_ms ({})",
                raft.election_timeout_max_ms, raft.election_timeout_min_ms
            ));
        }
        // openraft's tick runs every 13/64 of the heartbeat interval; a suppressed heartbeat goes
        // out at the first tick after its deadline.
        let quietest_gap = raft.heartbeat_interval_ms
            + raft.heartbeat_min_interval_ms
            + raft.heartbeat_interval_ms * 13 / 64;
        if quietest_gap >= raft.election_timeout_min_ms {
            return invalid(format!(
                "raft.heartbeat_min_interval_ms ({}) is too long for raft.election_timeout_min_ms ({}): a follower \
                 could go {quietest_gap} ms without hearing from its leader and start an election. Keep \
                 heartbeat_interval_ms + heartbeat_min_interval_ms + heartbeat_interval_ms / 5 under \
                 election_timeout_min_ms (lower heartbeat_min_interval_ms, or 0 to send every heartbeat)",
                raft.heartbeat_min_interval_ms, raft.election_timeout_min_ms
            ));
        }
        if raft.snapshot_after_logs == 0 {
            return invalid("raft.snapshot_after_logs must be positive".into());
        }
        if raft.snapshot_idle_timeout_ms == 0 {
            return invalid("raft.snapshot_idle_timeout_ms must be positive".into());
        }
        Ok(())
    }

    /// The openraft configuration every shard group on this node runs with.
    pub fn openraft_config(&self) -> Result<openraft::Config, ConfigError> {
        let raft = &self.raft;
        let config = openraft::Config {
            cluster_name: "ringkv".into(),
            heartbeat_interval: raft.heartbeat_interval_ms,
            election_timeout_min: raft.election_timeout_min_ms,
            election_timeout_max: raft.election_timeout_max_ms,
            heartbeat_min_interval: Some(raft.heartbeat_min_interval_ms),
            // The transport bounds snapshot transfers by an idle timeout instead (see
            // `RaftTransport::install_snapshot`); openraft's own timeouts only need to not cut in.
            install_snapshot_timeout: raft.snapshot_idle_timeout_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(raft.snapshot_after_logs),
            max_in_snapshot_log_to_keep: raft.logs_to_keep_after_snapshot,
            // Replication payloads are bounded in bytes by the log store
            // (`REPLICATION_PAYLOAD_BYTES`); this only caps how many small entries go together.
            max_payload_entries: 1024,
            purge_batch_size: 256,
            // A node that cannot win (partitioned, restarted, or starved of CPU long enough for
            // its election timer to fire) first asks whether it would win, and does not disrupt a
            // healthy leader by raising the term.
            enable_pre_vote: Some(true),
            // A restarted node never resumes leading the term it led before: it becomes leader
            // only by winning an election, and a new leader commits an entry of its own term
            // before it serves reads or commits earlier entries. Resuming the old term would let
            // reads rely on a commit index saved without an fsync, which a power loss can undo.
            enable_leader_restore: Some(false),
            ..openraft::Config::default()
        };
        config
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("raft settings: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses_and_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ringkv.example.toml");
        let parsed = NodeConfig::from_file(&path).unwrap();
        assert_eq!(parsed, NodeConfig::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn default_is_a_valid_single_node_cluster() {
        let config = NodeConfig::default();
        config.validate().unwrap();
        assert_eq!(config.bootstrap_nodes().unwrap().len(), 1);
        assert_eq!(config.replication_factor().unwrap(), 1);
        config.openraft_config().unwrap();
    }

    #[test]
    fn validate_names_the_bad_setting() {
        type Mutation = Box<dyn Fn(&mut NodeConfig)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|c| c.node_id = 0), "node_id"),
            (Box::new(|c| c.listen = "localhost".into()), "listen"),
            (Box::new(|c| c.shards = 0), "shards"),
            (Box::new(|c| c.replication = Some(2)), "replication"),
            (
                Box::new(|c| c.raft.election_timeout_min_ms = 10),
                "election_timeout_min_ms",
            ),
            (
                Box::new(|c| c.raft.heartbeat_min_interval_ms = 500),
                "heartbeat_min_interval_ms",
            ),
            (
                Box::new(|c| c.peers = BTreeMap::from([("2".into(), "127.0.0.1:1".into())])),
                "peers",
            ),
            (
                Box::new(|c| c.peers = BTreeMap::from([("x".into(), "127.0.0.1:1".into())])),
                "peer id",
            ),
        ];
        for (mutate, expected) in cases {
            let mut config = NodeConfig::default();
            mutate(&mut config);
            let message = config.validate().unwrap_err().to_string();
            assert!(message.contains(expected), "expected {expected:?} in {message:?}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let error = toml::from_str::<NodeConfig>("node_idd = 3")
            .unwrap_err()
            .to_string();
        assert!(error.contains("node_idd"), "{error}");
    }
}

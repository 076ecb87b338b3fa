//! The command line's arguments (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "ringkv",
    version,
    about = "ringkv: a replicated, sharded key-value store"
)]
pub(super) struct Cli {
    /// Nodes to contact (comma-separated HOST:PORT); any one that answers is enough.
    #[arg(
        long,
        global = true,
        env = "RINGKV_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7379"
    )]
    pub(super) endpoints: Vec<String>,
    /// How long a client command may take, including retries, in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub(super) timeout_ms: u64,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand, Debug)]
pub(super) enum Command {
    /// Run a node. With no flags: a single-node cluster on 127.0.0.1:7379 with data in ./ringkv-data.
    Start(Box<StartArgs>),
    /// Set KEY to VALUE.
    Put {
        key: String,
        value: String,
        /// Write within a session (`new` for a fresh one) and print it after, on stderr, for a
        /// later `get --consistency session --session ...`.
        #[arg(long)]
        session: Option<String>,
    },
    /// Print KEY's value; exits 1 if the key does not exist.
    Get {
        key: String,
        /// Also print the version (the log index that last wrote the key).
        #[arg(long)]
        version: bool,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Delete KEY; exits 1 if it did not exist.
    Del { key: String },
    /// Compare-and-swap: set KEY to NEW only if it currently holds the expected value.
    Cas(CasArgs),
    /// List keys (in hash order) with their values.
    Scan {
        /// Only keys starting with this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many keys.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Continue from the cursor a previous scan printed.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Show nodes and shards: arcs, voters, leaders, applied indexes, failed replicas.
    Status {
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Wait until every shard and the metadata group has a leader and no replica is out of
    /// service. Exits 0 once they do; 1, naming what is still missing, after --timeout seconds.
    WaitReady {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Check that every shard's replicas hold identical data: each replica hashes its state at
    /// the same log index. Prints every shard whose replicas differ; exits 1 if any does.
    Check {
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Operate on shards.
    #[command(subcommand)]
    Shard(ShardCommand),
    /// Operate on nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Change cluster settings.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Create the cluster's certificates (a CA, node and client certificates). No cluster is
    /// contacted.
    #[command(subcommand)]
    Cert(CertCommand),
}

/// Where certificates go, and the CA key that signs them.
#[derive(Args, Debug)]
pub(super) struct CertsArgs {
    /// The certificates directory: `ca.crt`, `node.crt`/`node.key`, `client.NAME.crt`/`.key`.
    #[arg(long, env = "RINGKV_CERTS_DIR")]
    pub(super) certs_dir: PathBuf,
    /// The CA's private key. Keep it out of the certs directory that nodes and clients get.
    #[arg(long)]
    pub(super) ca_key: PathBuf,
    /// Replace files that exist already.
    #[arg(long)]
    pub(super) overwrite: bool,
}

#[derive(Subcommand, Debug)]
pub(super) enum CertCommand {
    /// Create the cluster's CA: `ca.crt` in --certs-dir, and its key at --ca-key.
    #[command(name = "create-ca")]
    Ca {
        #[command(flatten)]
        certs: CertsArgs,
        /// How many days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        lifetime_days: u32,
    },
    /// Create a node certificate (`node.crt`, `node.key`) for the HOSTs (DNS names, IP
    /// addresses) the node is reached at, signed by the CA.
    #[command(name = "create-node")]
    Node {
        #[command(flatten)]
        certs: CertsArgs,
        #[arg(required = true)]
        hosts: Vec<String>,
        /// How many days the certificate is valid (at most as long as the CA).
        #[arg(long, default_value_t = 365)]
        lifetime_days: u32,
    },
    /// Create a client certificate (`client.NAME.crt`, `client.NAME.key`) with an access level,
    /// signed by the CA.
    #[command(name = "create-client")]
    Client {
        #[command(flatten)]
        certs: CertsArgs,
        name: String,
        /// readonly (reads, scans, status) | readwrite (and writes) | admin (and cluster
        /// operations).
        #[arg(long)]
        access: String,
        /// How many days the certificate is valid (at most as long as the CA).
        #[arg(long, default_value_t = 365)]
        lifetime_days: u32,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum ClusterCommand {
    /// Set how many read replicas (non-voting learners) every shard keeps at least, besides one
    /// on each read-replica node; the controller adds or removes them on voter nodes that hold
    /// no replica of the shard.
    ReadReplicas { count: u32 },
}

/// How fresh a read must be, and where it may be served.
#[derive(Args, Debug)]
pub(super) struct ReadArgs {
    /// eventual | bounded=DURATION (500ms, 2s) | session | replica | linearizable. Below
    /// linearizable, any replica may serve (README, "Consistency levels").
    #[arg(long, default_value = "linearizable")]
    pub(super) consistency: String,
    /// Which replica to ask first for a read below linearizable: nearest | spread | leader, or a
    /// node id.
    #[arg(long, default_value = "nearest")]
    pub(super) replica: String,
    /// For --consistency session: the session printed by an earlier command (`session: ...` on
    /// stderr), to read your own writes across commands. Any command run with --session prints
    /// the session after it.
    #[arg(long)]
    pub(super) session: Option<String>,
}

#[derive(Subcommand, Debug)]
pub(super) enum NodeCommand {
    /// List the cluster's nodes: state (up, joining, down, decommissioning, removed), replicas,
    /// leaders, data size. Joining: up, and not yet given its share of the replicas.
    List {
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Move every replica off a node, then remove it from the cluster. Returns once the node is
    /// marked decommissioning; with --wait, once it is removed.
    Decommission {
        node: u64,
        /// Wait for the node to be removed, up to this many seconds.
        #[arg(long)]
        wait: Option<u64>,
    },
    /// Remove a node that is gone for good (a dead machine): its replicas are re-created on the
    /// other nodes at once, without waiting for dead_node_timeout, then it is marked removed.
    Remove {
        node: u64,
        /// Wait for the node to be removed, up to this many seconds.
        #[arg(long)]
        wait: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum ShardCommand {
    /// Move a shard's replica from one node to another, online: the new replica catches up as a
    /// learner, then replaces the old one through a membership change. Returns once the move is
    /// recorded; with --wait, once it has finished or been rolled back.
    Move {
        /// The shard (`ringkv status` lists them; `meta` for the metadata group).
        shard: String,
        /// The node that gives up its replica.
        #[arg(long)]
        from: u64,
        /// The node that receives the new replica.
        #[arg(long)]
        to: u64,
        /// Wait for the move to end, up to this many seconds.
        #[arg(long)]
        wait: Option<u64>,
    },
    /// Split a shard in two at the midpoint of its arc, online and in place: the upper half
    /// becomes a new shard whose replicas sit on the same nodes; no data is copied. Returns once
    /// the split is recorded; with --wait, once it is applied.
    Split {
        /// The shard (`ringkv status` lists them).
        shard: u64,
        /// Wait for the split to be applied, up to this many seconds.
        #[arg(long)]
        wait: Option<u64>,
    },
}

#[derive(Args, Debug)]
pub(super) struct StartArgs {
    /// TOML config file (see ringkv.example.toml); flags override it.
    #[arg(long)]
    pub(super) config: Option<PathBuf>,
    #[arg(long)]
    pub(super) node_id: Option<u64>,
    /// HOST:PORT to listen on.
    #[arg(long)]
    pub(super) listen: Option<String>,
    /// HOST:PORT others use to reach this node, if not the listen address.
    #[arg(long)]
    pub(super) advertise: Option<String>,
    #[arg(long)]
    pub(super) data_dir: Option<PathBuf>,
    /// Every node of the cluster, this one included: ID=HOST:PORT,ID=HOST:PORT,...
    #[arg(long, value_delimiter = ',')]
    pub(super) peers: Vec<String>,
    /// Shards to create when the cluster is first started.
    #[arg(long)]
    pub(super) shards: Option<u32>,
    /// Replicas per shard when the cluster is first started.
    #[arg(long)]
    pub(super) replication: Option<usize>,
    /// Join the running cluster that the node at this address (HOST:PORT) belongs to, instead of
    /// forming one with --peers. Needs an empty --data-dir; without --node-id the cluster assigns
    /// one.
    #[arg(long)]
    pub(super) join: Option<String>,
    /// voter (the default) or read-replica: a node that hosts only read replicas (non-voting
    /// learners, one of every shard) and joins a running cluster with --join.
    #[arg(long)]
    pub(super) role: Option<String>,
    /// Raft snapshot threshold: build a snapshot after this many log entries.
    #[arg(long)]
    pub(super) snapshot_after_logs: Option<u64>,
    /// Roll back a replica move whose new replica has not caught up after this many milliseconds.
    #[arg(long)]
    pub(super) move_timeout_ms: Option<u64>,
    /// Mark a node unheard for this many milliseconds down and re-create its replicas elsewhere.
    #[arg(long)]
    pub(super) dead_node_timeout_ms: Option<u64>,
    /// Split a shard once its data takes more than this many bytes (0: never on size).
    #[arg(long)]
    pub(super) split_size_bytes: Option<u64>,
    /// Split a shard once it applies more than this many writes per second (0: never on rate).
    #[arg(long)]
    pub(super) split_writes_per_sec: Option<u64>,
    /// Send snapshots (moving replicas) at most this many bytes per second, all together (0: no
    /// limit).
    #[arg(long)]
    pub(super) snapshot_rate_bytes_per_sec: Option<u64>,
    /// Tests only: while this file exists, replica moves hold before their membership change.
    #[arg(long, hide = true)]
    pub(super) test_move_hold_file: Option<PathBuf>,
    /// Log entries kept behind a snapshot.
    #[arg(long)]
    pub(super) logs_to_keep_after_snapshot: Option<u64>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("expectation").required(true).args(["expect", "expect_version", "expect_absent"])))]
#[command(group(clap::ArgGroup::new("outcome").required(true).args(["new", "delete"])))]
pub(super) struct CasArgs {
    pub(super) key: String,
    /// The new value.
    pub(super) new: Option<String>,
    /// The value KEY must currently hold.
    #[arg(long)]
    pub(super) expect: Option<String>,
    /// The version KEY must currently have.
    #[arg(long)]
    pub(super) expect_version: Option<u64>,
    /// KEY must not exist.
    #[arg(long)]
    pub(super) expect_absent: bool,
    /// Delete KEY instead of writing a new value.
    #[arg(long)]
    pub(super) delete: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Output {
    Table,
    Json,
}

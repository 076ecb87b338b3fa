//! The `ringkv` command line: `start` runs a node; every other command is a client of a running
//! cluster (`--endpoints`). Exit codes: 0 success; 1 the answer is "no" (key not found,
//! compare-and-swap expectation not met); 2 an error, reported on one line of stderr.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use ringkv_client::{Client, ClientConfig, Expect, ScanCursor, ScanOptions};

use crate::config::NodeConfig;

/// `println!` that stops quietly when stdout is closed (`ringkv status | head`) instead of
/// panicking on a broken pipe.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

#[derive(Parser, Debug)]
#[command(
    name = "ringkv",
    version,
    about = "ringkv: a replicated, sharded key-value store"
)]
struct Cli {
    /// Nodes to contact (comma-separated HOST:PORT); any one that answers is enough.
    #[arg(
        long,
        global = true,
        env = "RINGKV_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7379"
    )]
    endpoints: Vec<String>,
    /// How long a client command may take, including retries, in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node. With no flags: a single-node cluster on 127.0.0.1:7379 with data in ./ringkv-data.
    Start(StartArgs),
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Print KEY's value; exits 1 if the key does not exist.
    Get {
        key: String,
        /// Also print the version (the log index that last wrote the key).
        #[arg(long)]
        version: bool,
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
    },
    /// Show nodes and shards: arcs, voters, leaders, applied indexes.
    Status {
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Args, Debug)]
struct StartArgs {
    /// TOML config file (see ringkv.example.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    node_id: Option<u64>,
    /// HOST:PORT to listen on.
    #[arg(long)]
    listen: Option<String>,
    /// HOST:PORT others use to reach this node, if not the listen address.
    #[arg(long)]
    advertise: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Every node of the cluster, this one included: ID=HOST:PORT,ID=HOST:PORT,...
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Shards to create when the cluster is first started.
    #[arg(long)]
    shards: Option<u32>,
    /// Replicas per shard when the cluster is first started.
    #[arg(long)]
    replication: Option<usize>,
    /// Raft snapshot threshold: build a snapshot after this many log entries.
    #[arg(long)]
    snapshot_after_logs: Option<u64>,
    /// Log entries kept behind a snapshot.
    #[arg(long)]
    logs_to_keep_after_snapshot: Option<u64>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("expectation").required(true).args(["expect", "expect_version", "expect_absent"])))]
#[command(group(clap::ArgGroup::new("outcome").required(true).args(["new", "delete"])))]
struct CasArgs {
    key: String,
    /// The new value.
    new: Option<String>,
    /// The value KEY must currently hold.
    #[arg(long)]
    expect: Option<String>,
    /// The version KEY must currently have.
    #[arg(long)]
    expect_version: Option<u64>,
    /// KEY must not exist.
    #[arg(long)]
    expect_absent: bool,
    /// Delete KEY instead of writing a new value.
    #[arg(long)]
    delete: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

/// Process entry point for the `ringkv` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // openraft logs every failed heartbeat to an unreachable peer at warn level, many times a
    // second per shard: keep its errors only, unless RINGKV_LOG asks for more.
    let default_level = if matches!(cli.command, Command::Start(_)) {
        "info,openraft=error"
    } else {
        "warn,openraft=error"
    };
    let filter = EnvFilter::try_from_env("RINGKV_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let start_args = match cli.command {
        Command::Start(args) => return start(args).await,
        other => other,
    };
    let mut config = ClientConfig::new(cli.endpoints.clone());
    config.request_timeout = Duration::from_millis(cli.timeout_ms);
    let client = Client::with_config(config).await?;
    match start_args {
        Command::Start(_) => unreachable!("handled above"),
        Command::Put { key, value } => {
            let version = client.put(&key, &value).await?;
            println!("OK (version {version})");
        }
        Command::Get { key, version } => match client.get(&key).await? {
            Some(value) => {
                println!("{}", String::from_utf8_lossy(&value.value));
                if version {
                    println!("version {}", value.version);
                }
            }
            None => {
                eprintln!("key not found: {key}");
                return Ok(ExitCode::from(1));
            }
        },
        Command::Del { key } => {
            if !client.delete(&key).await? {
                eprintln!("key not found: {key}");
                return Ok(ExitCode::from(1));
            }
            println!("deleted");
        }
        Command::Cas(args) => return cas(&client, args).await,
        Command::Scan {
            prefix,
            limit,
            cursor,
        } => {
            let cursor = cursor.map(|text| ScanCursor::decode(&text)).transpose()?;
            let page = client
                .scan(ScanOptions {
                    prefix: Bytes::from(prefix),
                    limit,
                    cursor,
                })
                .await?;
            for entry in &page.entries {
                println!(
                    "{}\t{}",
                    String::from_utf8_lossy(&entry.key),
                    String::from_utf8_lossy(&entry.value)
                );
            }
            if let Some(next) = page.next_cursor {
                eprintln!("more keys: continue with --cursor {}", next.encode());
            }
        }
        Command::Status { output } => status(&client, output).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn cas(client: &Client, args: CasArgs) -> anyhow::Result<ExitCode> {
    let expect = match (args.expect, args.expect_version, args.expect_absent) {
        (Some(value), None, false) => Expect::Value(Bytes::from(value)),
        (None, Some(version), false) => Expect::Version(version),
        (None, None, true) => Expect::Absent,
        _ => bail!("give exactly one of --expect, --expect-version, --expect-absent"),
    };
    let new_value = if args.delete {
        None
    } else {
        args.new.as_deref().map(str::as_bytes)
    };
    let outcome = client.compare_and_swap(&args.key, expect, new_value).await?;
    if outcome.succeeded {
        println!("OK (version {})", outcome.version);
        return Ok(ExitCode::SUCCESS);
    }
    match outcome.current {
        Some(current) => eprintln!(
            "cas failed: {} holds {:?} (version {}); nothing was changed",
            args.key,
            String::from_utf8_lossy(&current.value),
            current.version
        ),
        None => eprintln!("cas failed: {} does not exist; nothing was changed", args.key),
    }
    Ok(ExitCode::from(1))
}

async fn start(args: StartArgs) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => NodeConfig::from_file(path)?,
        None => NodeConfig::default(),
    };
    if let Some(node_id) = args.node_id {
        config.node_id = node_id;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if args.advertise.is_some() {
        config.advertise = args.advertise;
    }
    if let Some(data_dir) = args.data_dir {
        config.data_dir = data_dir;
    }
    if !args.peers.is_empty() {
        let mut peers = BTreeMap::new();
        for peer in &args.peers {
            let (id, addr) = peer
                .split_once('=')
                .with_context(|| format!("--peers entry {peer:?} is not ID=HOST:PORT"))?;
            peers.insert(id.trim().to_owned(), addr.trim().to_owned());
        }
        config.peers = peers;
    }
    if let Some(shards) = args.shards {
        config.shards = shards;
    }
    if args.replication.is_some() {
        config.replication = args.replication;
    }
    if let Some(n) = args.snapshot_after_logs {
        config.raft.snapshot_after_logs = n;
    }
    if let Some(n) = args.logs_to_keep_after_snapshot {
        config.raft.logs_to_keep_after_snapshot = n;
    }
    let running = crate::server::start(&config).await?;
    eprintln!(
        "ringkv node {} serving on {} with data in {}",
        config.node_id,
        running.local_addr,
        config.data_dir.display()
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

async fn status(client: &Client, output: Output) -> anyhow::Result<()> {
    client.refresh_shard_map().await?;
    let map = client.shard_map().await;
    let mut nodes = Vec::new();
    let mut applied: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for (&node_id, addr) in &map.nodes {
        match tokio::time::timeout(Duration::from_secs(3), client.node_status(addr)).await {
            Ok(Ok(status)) => {
                for replica in &status.replicas {
                    applied.insert((replica.shard_id, node_id), replica.applied_index);
                }
                let leaders = status.replicas.iter().filter(|r| r.role == "leader").count();
                nodes.push(serde_json::json!({
                    "node_id": node_id, "addr": addr, "state": "up",
                    "replicas": status.replicas.len(), "leaders": leaders,
                    "log_appends": status.log_appends, "log_fsyncs": status.log_fsyncs,
                }));
            }
            Ok(Err(error)) => nodes.push(serde_json::json!({
                "node_id": node_id, "addr": addr, "state": "unreachable", "error": error.to_string(),
            })),
            Err(_) => nodes.push(serde_json::json!({
                "node_id": node_id, "addr": addr, "state": "unreachable", "error": "no answer within 3 s",
            })),
        }
    }
    let shards: Vec<serde_json::Value> = map
        .shards
        .iter()
        .map(|shard| {
            let voters: Vec<u64> = shard.voters.iter().map(|v| v.node_id).collect();
            let applied: serde_json::Map<String, serde_json::Value> = voters
                .iter()
                .filter_map(|node| {
                    applied
                        .get(&(shard.id, *node))
                        .map(|index| (node.to_string(), (*index).into()))
                })
                .collect();
            serde_json::json!({
                "shard_id": shard.id,
                "arc_start": format!("{:016x}", shard.arc.start),
                "arc_end": format!("{:016x}", shard.arc.end),
                "voters": voters,
                "learners": shard.learners.iter().map(|l| l.node_id).collect::<Vec<_>>(),
                "leader": shard.leader,
                "applied_index": applied,
            })
        })
        .collect();
    if output == Output::Json {
        let report = serde_json::json!({ "epoch": map.epoch, "nodes": nodes, "shards": shards });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("shard map epoch {}", map.epoch);
    println!(
        "{:<6} {:<22} {:<12} {:>8} {:>8} {:>12} {:>10}",
        "NODE", "ADDRESS", "STATE", "REPLICAS", "LEADERS", "LOG_APPENDS", "FSYNCS"
    );
    for node in &nodes {
        println!(
            "{:<6} {:<22} {:<12} {:>8} {:>8} {:>12} {:>10}",
            node["node_id"].to_string(),
            node["addr"].as_str().unwrap_or(""),
            node["state"].as_str().unwrap_or(""),
            node.get("replicas").map_or("-".into(), |v| v.to_string()),
            node.get("leaders").map_or("-".into(), |v| v.to_string()),
            node.get("log_appends").map_or("-".into(), |v| v.to_string()),
            node.get("log_fsyncs").map_or("-".into(), |v| v.to_string()),
        );
    }
    println!();
    println!(
        "{:<6} {:<35} {:<12} {:<7} APPLIED (node:index)",
        "SHARD", "ARC", "VOTERS", "LEADER"
    );
    for shard in &shards {
        let voters: Vec<String> = shard["voters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v.to_string())
            .collect();
        let applied: Vec<String> = shard["applied_index"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(node, index)| format!("{node}:{index}"))
            .collect();
        let leader = shard["leader"]
            .as_u64()
            .map_or("none".to_string(), |l| l.to_string());
        println!(
            "{:<6} {:<35} {:<12} {:<7} {}",
            shard["shard_id"].to_string(),
            format!(
                "{}-{}",
                shard["arc_start"].as_str().unwrap_or(""),
                shard["arc_end"].as_str().unwrap_or("")
            ),
            voters.join(","),
            leader,
            applied.join(" ")
        );
    }
    Ok(())
}

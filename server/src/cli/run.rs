//! The entry point and the key-value commands (put, get, del, cas, scan).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use ringkv_client::{
    AdminClient, Client, ClientConfig, Consistency, Expect, NodeId, ReadOptions, ReplicaSelection,
    ScanCursor, ScanOptions, Session, ShardId,
};

use super::args::{CasArgs, Cli, ClusterCommand, Command, NodeCommand, ReadArgs, ShardCommand};
use super::{cert, report, start};

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
    // Colours only on a terminal: logs written to files stay plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Command::Start(args) => return start::start(*args).await,
        Command::Cert(command) => return cert::run(command),
        other => other,
    };
    let mut config = ClientConfig::new(cli.endpoints.clone());
    config.request_timeout = Duration::from_millis(cli.timeout_ms);
    if let Command::WaitReady { timeout } = start_args {
        // The nodes may not even listen yet: connecting is part of the wait.
        return report::wait_ready(config, Duration::from_secs(timeout)).await;
    }
    let client = Client::with_config(config).await?;
    match start_args {
        Command::Start(_) | Command::Cert(_) => unreachable!("handled above"),
        Command::Put { key, value, session } => {
            let client = match session.as_deref() {
                None => client,
                Some("new") => client.with_session(Session::new()),
                Some(text) => client.with_session(Session::decode(text)?),
            };
            let version = client.put(&key, &value).await?;
            println!("OK (version {version})");
            print_session(&client);
        }
        Command::Get { key, version, read } => {
            let (client, options) = reading(&client, &read)?;
            let found = client.get_with(&key, options).await?;
            print_session(&client);
            match found {
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
            }
        }
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
            read,
        } => {
            let cursor = cursor.map(|text| ScanCursor::decode(&text)).transpose()?;
            let (client, options) = reading(&client, &read)?;
            let page = client
                .scan(ScanOptions {
                    prefix: Bytes::from(prefix),
                    limit,
                    cursor,
                    read: Some(options),
                })
                .await?;
            print_session(&client);
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
        Command::Status { output } => report::status(&AdminClient::new(client.clone()), output).await?,
        Command::WaitReady { .. } => unreachable!("handled above"),
        Command::Check { output } => {
            let admin = AdminClient::new(client.clone());
            return report::check(&admin, output, Duration::from_millis(cli.timeout_ms)).await;
        }
        Command::Shard(ShardCommand::Move {
            shard,
            from,
            to,
            wait,
        }) => {
            return move_replica(
                &AdminClient::new(client.clone()),
                &shard,
                NodeId(from),
                NodeId(to),
                wait,
            )
            .await;
        }
        Command::Shard(ShardCommand::Split { shard, wait }) => {
            return split_shard(&AdminClient::new(client.clone()), ShardId(shard), wait).await;
        }
        Command::Node(NodeCommand::List { output }) => {
            report::node_list(&AdminClient::new(client.clone()), output).await?
        }
        Command::Cluster(ClusterCommand::ReadReplicas { count }) => {
            let map = AdminClient::new(client.clone()).set_read_replicas(count).await?;
            println!("read_replicas is {} (map epoch {})", map.read_replicas, map.epoch);
        }
        Command::Node(NodeCommand::Decommission { node, wait } | NodeCommand::Remove { node, wait }) => {
            return decommission(&AdminClient::new(client.clone()), NodeId(node), wait).await;
        }
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

/// `ringkv shard split`: exit 0 once the split is recorded (with `--wait`: applied), 1 if it is
/// still under way when the wait ends.
async fn split_shard(client: &AdminClient, shard: ShardId, wait: Option<u64>) -> anyhow::Result<ExitCode> {
    let map = client.split_shard(shard).await?;
    let split = map
        .split_of(shard)
        .ok_or_else(|| anyhow::anyhow!("the map returned does not list the split"))?;
    println!(
        "splitting shard {shard} at hash {:#018x}: shard {} takes the upper half (map epoch {})",
        split.at, split.child, map.epoch
    );
    let Some(seconds) = wait else {
        return Ok(ExitCode::SUCCESS);
    };
    let child = split.child;
    match client.wait_for_split(shard, Duration::from_secs(seconds)).await? {
        Some(map) => {
            let arc = map.shard(child).map(|child| child.arc);
            match arc {
                Some(arc) => println!(
                    "split: shard {child} owns {:#018x}..={:#018x}",
                    arc.start, arc.end
                ),
                None => println!("split: shard {child} exists"),
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            println!(
                "still splitting after {seconds} s (see `ringkv status`); it finishes once the shard has a leader"
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// `ringkv shard move`: exit 0 once the move is recorded (with `--wait`: finished), 1 if it was
/// rolled back or is still under way when the wait ends.
async fn move_replica(
    client: &AdminClient,
    shard: &str,
    from: NodeId,
    to: NodeId,
    wait: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let shard = match shard {
        "meta" => ShardId::META,
        number => ShardId(
            number
                .parse()
                .map_err(|_| anyhow::anyhow!("shard {number:?} is not a shard id (a number, or meta)"))?,
        ),
    };
    let map = client.move_replica(shard, from, to).await?;
    let moving = map
        .move_of(shard)
        .ok_or_else(|| anyhow::anyhow!("the map returned does not list the move"))?;
    println!(
        "moving shard {shard} from node {from} to node {to}: new replica {} (map epoch {})",
        moving.to.replica_id, map.epoch
    );
    let Some(seconds) = wait else {
        return Ok(ExitCode::SUCCESS);
    };
    let new_replica = moving.to;
    match client.wait_for_move(shard, Duration::from_secs(seconds)).await? {
        Some(map) => {
            let finished = map
                .shard(shard)
                .is_some_and(|group| group.voters.contains(&new_replica));
            if finished {
                println!(
                    "moved: shard {shard} now has replica {} on node {to}",
                    new_replica.replica_id
                );
                Ok(ExitCode::SUCCESS)
            } else {
                println!("rolled back: the new replica did not catch up in time (see `ringkv status`)");
                Ok(ExitCode::from(1))
            }
        }
        None => {
            println!("still moving after {seconds} s; `ringkv status` shows its progress");
            Ok(ExitCode::from(1))
        }
    }
}

/// `ringkv node decommission`: exit 0 once the node is marked decommissioning (with `--wait`:
/// removed), 1 if it is still being drained when the wait ends.
async fn decommission(client: &AdminClient, node: NodeId, wait: Option<u64>) -> anyhow::Result<ExitCode> {
    let map = client.decommission_node(node).await?;
    println!(
        "decommissioning node {node} (map epoch {}): its replicas move to the other nodes",
        map.epoch
    );
    let Some(seconds) = wait else {
        return Ok(ExitCode::SUCCESS);
    };
    match client
        .wait_for_node_state(
            node,
            ringkv_client::NodeState::Removed,
            Duration::from_secs(seconds),
        )
        .await?
    {
        Some(_) => {
            println!("removed: node {node} holds no replicas and may be stopped");
            Ok(ExitCode::SUCCESS)
        }
        None => {
            println!("still draining after {seconds} s; `ringkv node list` shows its progress");
            Ok(ExitCode::from(1))
        }
    }
}

/// The client handle and read options `--consistency`, `--replica` and `--session` ask for.
fn reading(client: &Client, args: &ReadArgs) -> anyhow::Result<(Client, ReadOptions)> {
    let consistency = Consistency::parse(&args.consistency)?;
    let selection = match args.replica.as_str() {
        "nearest" => ReplicaSelection::Nearest,
        "spread" => ReplicaSelection::Spread,
        "leader" => ReplicaSelection::Leader,
        node => match node.parse::<u64>() {
            Ok(id) => ReplicaSelection::Node(NodeId(id)),
            Err(_) => bail!("--replica {node:?}: use nearest, spread, leader or a node id"),
        },
    };
    let client = match (&args.session, consistency) {
        (Some(text), _) => client.with_session(Session::decode(text)?),
        // A session read with no earlier session: an empty one (any replica serves).
        (None, Consistency::Session) => client.with_session(Session::new()),
        (None, _) => client.clone(),
    };
    Ok((client, ReadOptions::new(consistency).with_selection(selection)))
}

/// Prints the handle's session, if it has one, for a later command's `--session`.
fn print_session(client: &Client) {
    if let Some(session) = client.session() {
        eprintln!("session: {}", session.encode());
    }
}

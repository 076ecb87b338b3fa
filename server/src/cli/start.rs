//! `ringkv start`: builds the node's config from the file and flags, runs the node until SIGTERM
//! or Ctrl-C, then stops it gracefully (its shard leaderships handed over first).

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;

use super::args::StartArgs;
use crate::config::NodeConfig;

pub(super) async fn start(args: StartArgs) -> anyhow::Result<ExitCode> {
    let config = config_from(args)?;
    // Forming a new cluster waits for every peer to start; a signal during that wait stops the
    // node as promptly as one after.
    let running = tokio::select! {
        running = crate::server::start(&config) => running?,
        _ = shutdown_signal() => {
            tracing::info!("stopped before the node finished starting");
            return Ok(ExitCode::SUCCESS);
        }
    };
    eprintln!(
        "ringkv node {} serving on {} with data in {}",
        config.node_id,
        running.local_addr,
        config.data_dir.display()
    );
    shutdown_signal().await;
    tracing::info!("shutting down: handing shard leaderships to other nodes first");
    running.stop().await;
    Ok(ExitCode::SUCCESS)
}

fn config_from(args: StartArgs) -> anyhow::Result<NodeConfig> {
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
    if args.join.is_some() {
        config.join = args.join;
        if args.node_id.is_none() {
            // 0: the cluster assigns the id.
            config.node_id = 0;
        }
    }
    if let Some(ms) = args.dead_node_timeout_ms {
        config.dead_node_timeout_ms = ms;
    }
    if let Some(ms) = args.move_timeout_ms {
        config.move_timeout_ms = ms;
    }
    if let Some(bytes) = args.split_size_bytes {
        config.split_size_bytes = bytes;
    }
    if let Some(role) = &args.role {
        config.role = role.clone();
    }
    if let Some(rate) = args.split_writes_per_sec {
        config.split_writes_per_sec = rate;
    }
    if let Some(rate) = args.snapshot_rate_bytes_per_sec {
        config.snapshot_rate_bytes_per_sec = rate;
    }
    if args.test_move_hold_file.is_some() {
        config.test_move_hold_file = args.test_move_hold_file;
    }
    if let Some(n) = args.logs_to_keep_after_snapshot {
        config.raft.logs_to_keep_after_snapshot = n;
    }
    Ok(config)
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

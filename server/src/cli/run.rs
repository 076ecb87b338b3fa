//! The entry point and the key-value commands (put, get, del, cas, scan).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use ringkv_client::{Client, ClientConfig, Expect, ScanCursor, ScanOptions};

use super::args::{CasArgs, Cli, Command};
use super::{report, start};

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
        Command::Start(args) => return start::start(args).await,
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
        Command::Status { output } => report::status(&client, output).await?,
        Command::Check { output } => {
            return report::check(&client, output, Duration::from_millis(cli.timeout_ms)).await;
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

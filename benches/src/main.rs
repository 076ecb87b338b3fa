//! `ringkv-bench`: the load generator. Drives a running cluster through ringkv-client with a
//! write, read, mixed or YCSB (A–F) workload for a fixed time, closed or open loop, printing
//! progress each interval and a final report of throughput and latency percentiles (HDR
//! histograms), as text or JSON. Sending it SIGUSR1 begins a new phase of the run; the report then
//! also gives throughput and percentiles per phase (before, during and after an event the caller
//! marks, such as a rebalance).

mod load;
mod report;
mod workload;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Parser, Debug, Clone)]
#[command(name = "ringkv-bench", about = "Load generator for a running ringkv cluster")]
pub struct Args {
    /// Nodes to contact (comma-separated HOST:PORT).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7379")]
    pub endpoints: Vec<String>,
    /// write, read, mixed (`--read-ratio`), or a YCSB core workload: ycsb-a (50% reads, 50%
    /// updates), ycsb-b (95/5), ycsb-c (reads), ycsb-d (95% reads of the newest keys, 5% inserts),
    /// ycsb-e (95% short scans, 5% inserts), ycsb-f (50% reads, 50% read-modify-writes).
    #[arg(long, value_enum, default_value_t = Workload::Mixed)]
    pub workload: Workload,
    /// Fraction of reads in the mixed workload.
    #[arg(long, default_value_t = 0.5)]
    pub read_ratio: f64,
    /// Number of distinct keys (`bench:0` .. `bench:N-1`), written by the preload.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// How keys are chosen. Default: zipfian for YCSB (latest for ycsb-d), uniform otherwise.
    #[arg(long, value_enum)]
    pub distribution: Option<Distribution>,
    /// Open loop: start this many operations per second on a fixed schedule, whatever the
    /// cluster's speed (at most `--concurrency` in flight), and count latency from each
    /// operation's intended start. Without it, a closed loop: each worker starts its next
    /// operation when the previous one finishes.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Concurrent requests in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds to run (after the preload).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Write every key once before a read or mixed run, so reads find values.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub preload: bool,
    /// Consistency of reads and scans: linearizable | replica | session | bounded=DURATION |
    /// eventual. Below linearizable, reads go to any replica (`--replica`).
    #[arg(long, default_value = "linearizable")]
    pub consistency: String,
    /// Which replica a read below linearizable asks first: nearest | spread | leader.
    #[arg(long, default_value = "spread")]
    pub replica: String,
    /// Seconds between progress lines (stderr); 0 for none.
    #[arg(long, default_value_t = 1)]
    pub progress_interval: u64,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Exit with status 1 when more than this many operations failed (the report is printed
    /// either way). Unset: failures are only reported.
    #[arg(long)]
    pub max_errors: Option<u64>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Write,
    Read,
    Mixed,
    YcsbA,
    YcsbB,
    YcsbC,
    YcsbD,
    YcsbE,
    YcsbF,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// YCSB's zipfian (constant 0.99): key `bench:0` most popular, then `bench:1`, … Keys are
    /// placed by hash, so the popular ones spread over shards.
    Zipfian,
    /// Zipfian over recency: the most recently inserted keys most popular.
    Latest,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.read_ratio)
        || args.keys == 0
        || args.concurrency == 0
        || args.duration == 0
    {
        eprintln!("error: --read-ratio must be in [0, 1] and --keys, --concurrency, --duration positive");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(load::run(&args)) {
        Ok(result) => {
            match args.output {
                Output::Text => print!("{}", report::text(&args, &result)),
                Output::Json => println!("{}", report::json(&args, &result)),
            }
            match args.max_errors {
                Some(max) if result.errors > max => {
                    eprintln!(
                        "error: {} operations failed, more than --max-errors {max} allows; the samples above say why",
                        result.errors
                    );
                    ExitCode::from(1)
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// The measured duration of the timed phase, for reports.
pub fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

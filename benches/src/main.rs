//! `ringkv-bench`: the load generator. Drives a running cluster through ringkv-client with a
//! write, read or mixed workload for a fixed time, printing progress each interval and a final
//! report of throughput and latency percentiles (HDR histograms), as text or JSON.

mod load;
mod report;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Parser, Debug, Clone)]
#[command(name = "ringkv-bench", about = "Load generator for a running ringkv cluster")]
pub struct Args {
    /// Nodes to contact (comma-separated HOST:PORT).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7379")]
    pub endpoints: Vec<String>,
    #[arg(long, value_enum, default_value_t = Workload::Mixed)]
    pub workload: Workload,
    /// Fraction of reads in the mixed workload.
    #[arg(long, default_value_t = 0.5)]
    pub read_ratio: f64,
    /// Number of distinct keys (`bench:0` .. `bench:N-1`), chosen uniformly at random.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
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
    /// Seconds between progress lines (stderr); 0 for none.
    #[arg(long, default_value_t = 1)]
    pub progress_interval: u64,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Write,
    Read,
    Mixed,
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
            ExitCode::SUCCESS
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

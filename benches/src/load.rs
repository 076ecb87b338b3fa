//! The workload: `concurrency` tasks, each issuing one request at a time until the deadline, each
//! recording latencies into its own histograms (merged at the end, so recording takes no lock).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::Rng;
use ringkv_client::{Client, ClientConfig};

use crate::{Args, Workload};

/// Latencies are recorded in microseconds, from 1 µs to 60 s, with 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub struct LoadResult {
    pub elapsed: Duration,
    pub reads: Histogram<u64>,
    pub writes: Histogram<u64>,
    pub errors: u64,
    /// The first few distinct error messages.
    pub error_samples: Vec<String>,
    pub preloaded: u64,
}

impl LoadResult {
    pub fn all(&self) -> Histogram<u64> {
        let mut all = self.reads.clone();
        all.add(&self.writes).expect("same bounds");
        all
    }
}

struct Progress {
    ops: AtomicU64,
    errors: AtomicU64,
}

fn key(n: u64) -> String {
    format!("bench:{n}")
}

pub async fn run(args: &Args) -> anyhow::Result<LoadResult> {
    let mut config = ClientConfig::new(args.endpoints.clone());
    config.request_timeout = Duration::from_secs(10);
    let client = Client::with_config(config)
        .await
        .with_context(|| format!("cannot reach the cluster at {}", args.endpoints.join(",")))?;
    let value: Arc<Vec<u8>> = Arc::new((0..args.value_size).map(|i| b'a' + (i % 26) as u8).collect());

    let preloaded = if args.preload && args.workload != Workload::Write {
        preload(args, &client, &value).await?
    } else {
        0
    };

    let progress = Arc::new(Progress {
        ops: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let reporter = (args.progress_interval > 0).then(|| {
        let progress = progress.clone();
        let interval = Duration::from_secs(args.progress_interval);
        tokio::spawn(async move {
            let mut last_ops = 0;
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            loop {
                ticker.tick().await;
                let ops = progress.ops.load(Ordering::Relaxed);
                eprintln!(
                    "[{:>5.1}s] {ops} ops, {:.0} ops/s, {} errors",
                    started.elapsed().as_secs_f64(),
                    (ops - last_ops) as f64 / interval.as_secs_f64(),
                    progress.errors.load(Ordering::Relaxed)
                );
                last_ops = ops;
            }
        })
    });

    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (client, value, progress, args) = (client.clone(), value.clone(), progress.clone(), args.clone());
        workers.spawn(async move {
            let (mut reads, mut writes) = (histogram(), histogram());
            let mut errors = BTreeSet::new();
            // Bounded by the deadline; each request is bounded by the client's timeout.
            while Instant::now() < deadline {
                let (n, is_read) = {
                    let mut rng = rand::rng();
                    let is_read = match args.workload {
                        Workload::Read => true,
                        Workload::Write => false,
                        Workload::Mixed => rng.random_bool(args.read_ratio),
                    };
                    (rng.random_range(0..args.keys), is_read)
                };
                let begun = Instant::now();
                let result = if is_read {
                    client.get(key(n)).await.map(|_| ())
                } else {
                    client.put(key(n), value.as_slice()).await.map(|_| ())
                };
                let micros = begun.elapsed().as_micros().max(1) as u64;
                match result {
                    Ok(()) => {
                        let histogram = if is_read { &mut reads } else { &mut writes };
                        histogram.saturating_record(micros);
                        progress.ops.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                        if errors.len() < 5 {
                            errors.insert(error.to_string());
                        }
                    }
                }
            }
            (reads, writes, errors)
        });
    }
    let (mut reads, mut writes) = (histogram(), histogram());
    let mut error_samples = BTreeSet::new();
    while let Some(result) = workers.join_next().await {
        let (worker_reads, worker_writes, worker_errors) = result.context("a load worker panicked")?;
        reads.add(&worker_reads).expect("same bounds");
        writes.add(&worker_writes).expect("same bounds");
        error_samples.extend(worker_errors);
    }
    let elapsed = started.elapsed();
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    Ok(LoadResult {
        elapsed,
        reads,
        writes,
        errors: progress.errors.load(Ordering::Relaxed),
        error_samples: error_samples.into_iter().take(5).collect(),
        preloaded,
    })
}

/// Writes every key once, `concurrency` at a time.
async fn preload(args: &Args, client: &Client, value: &Arc<Vec<u8>>) -> anyhow::Result<u64> {
    eprintln!("preloading {} keys...", args.keys);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (client, value, next, keys) = (client.clone(), value.clone(), next.clone(), args.keys);
        tasks.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= keys {
                    return anyhow::Ok(());
                }
                client
                    .put(key(n), value.as_slice())
                    .await
                    .with_context(|| format!("preloading {}", key(n)))?;
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(args.keys)
}

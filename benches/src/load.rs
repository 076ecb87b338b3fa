//! The load: `concurrency` tasks, each issuing one request at a time until the deadline, each
//! recording latencies into its own histograms (merged at the end) and into the progress
//! interval's histogram (one uncontended-in-practice lock per operation, for the progress lines'
//! percentiles).
//! Closed loop by default; with `--rate` an open loop, where latency counts from each operation's
//! intended start, so time spent queued behind a slow cluster is not hidden.
//!
//! Phases: SIGUSR1 ends the current phase and begins the next, so a script can mark an event
//! (nodes joining, a rebalance finishing) and the report gives throughput and percentiles over
//! every operation of each phase, not only per progress interval.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::Rng;
use ringkv_client::{
    Client, ClientConfig, Consistency, ReadOptions, ReplicaSelection, ScanCursor, ScanOptions, Session,
};
use ringkv_proto::key_hash;

use crate::Args;
use crate::workload::{self, Chooser, Op};

/// Latencies are recorded in microseconds, from 1 µs to 60 s, with 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub struct LoadResult {
    pub elapsed: Duration,
    /// Latencies per operation kind, indexed by `Op::index`.
    pub latencies: Vec<Histogram<u64>>,
    pub errors: u64,
    /// The first few distinct error messages.
    pub error_samples: Vec<String>,
    pub preloaded: u64,
    /// Open loop only: operations that started more than 1 ms after their intended time because
    /// every worker was busy (the cluster fell behind the rate; their latency includes the wait).
    pub late_starts: u64,
    /// The phases SIGUSR1 marked (one when it was never sent).
    pub phases: Vec<Phase>,
}

/// The operations of one phase of the run, all kinds together.
pub struct Phase {
    /// When it began and ended, from the start of the timed run.
    pub from: Duration,
    pub to: Duration,
    pub latencies: Histogram<u64>,
    pub errors: u64,
}

impl LoadResult {
    pub fn all(&self) -> Histogram<u64> {
        let mut all = histogram();
        for histogram in &self.latencies {
            all.add(histogram).expect("same bounds");
        }
        all
    }
}

struct Progress {
    ops: AtomicU64,
    errors: AtomicU64,
    late_starts: AtomicU64,
    recorded: std::sync::Mutex<Recorded>,
}

/// Latencies shared by the workers, behind one lock taken once per operation.
struct Recorded {
    /// Since the last progress line.
    interval: Histogram<u64>,
    /// The phase under way, and those SIGUSR1 ended.
    phase: Phase,
    phases: Vec<Phase>,
}

impl Recorded {
    fn new() -> Recorded {
        Recorded {
            interval: histogram(),
            phase: Phase::beginning(Duration::ZERO),
            phases: Vec::new(),
        }
    }

    fn record(&mut self, micros: u64) {
        self.interval.saturating_record(micros);
        self.phase.latencies.saturating_record(micros);
    }

    /// Ends the phase under way at `at` and begins the next.
    fn next_phase(&mut self, at: Duration) {
        let mut ended = std::mem::replace(&mut self.phase, Phase::beginning(at));
        ended.to = at;
        self.phases.push(ended);
    }
}

impl Phase {
    fn beginning(at: Duration) -> Phase {
        Phase {
            from: at,
            to: at,
            latencies: histogram(),
            errors: 0,
        }
    }
}

fn key(n: u64) -> String {
    format!("bench:{n}")
}

/// When each operation starts: as soon as the worker is free (closed loop), or on a fixed
/// schedule of `rate` per second (open loop).
#[derive(Clone, Copy)]
enum Pace {
    Closed,
    Open { started: Instant, rate: u64 },
}

pub async fn run(args: &Args) -> anyhow::Result<LoadResult> {
    let mut config = ClientConfig::new(args.endpoints.clone());
    config.request_timeout = Duration::from_secs(10);
    let client = Client::with_config(config)
        .await
        .with_context(|| format!("cannot reach the cluster at {}", args.endpoints.join(",")))?;
    let client = client.with_read_options(read_options(args)?);
    // Session reads need a session: one for the whole run (every worker's writes and reads).
    let client = if client.read_options().consistency == Consistency::Session {
        client.with_session(Session::new())
    } else {
        client
    };
    let value = Bytes::from(
        (0..args.value_size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    );
    let mix = workload::mix(args.workload, args.read_ratio);
    let distribution = args
        .distribution
        .unwrap_or_else(|| workload::default_distribution(args.workload));
    let needs_preload = mix.iter().any(|(op, _)| *op != Op::Update && *op != Op::Insert);

    let preloaded = if args.preload && needs_preload {
        preload(args, &client, &value).await?
    } else {
        0
    };
    let chooser = Arc::new(Chooser::new(mix, distribution, args.keys));

    let progress = Arc::new(Progress {
        ops: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        late_starts: AtomicU64::new(0),
        recorded: std::sync::Mutex::new(Recorded::new()),
    });
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let pace = match args.rate {
        Some(rate) => Pace::Open { started, rate },
        None => Pace::Closed,
    };
    let reporter = (args.progress_interval > 0).then(|| {
        let progress = progress.clone();
        let interval = Duration::from_secs(args.progress_interval);
        tokio::spawn(async move {
            let mut last_ops = 0;
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            loop {
                ticker.tick().await;
                let ops = progress.ops.load(Ordering::Relaxed);
                let latencies = std::mem::replace(
                    &mut progress.recorded.lock().expect("recorded lock").interval,
                    histogram(),
                );
                let ms = |quantile: f64| latencies.value_at_quantile(quantile) as f64 / 1000.0;
                eprintln!(
                    "[{:>5.1}s] {ops} ops, {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                    started.elapsed().as_secs_f64(),
                    (ops - last_ops) as f64 / interval.as_secs_f64(),
                    ms(0.5),
                    ms(0.99),
                    progress.errors.load(Ordering::Relaxed)
                );
                last_ops = ops;
            }
        })
    });

    let phase_marks = spawn_phase_marks(progress.clone(), started)?;

    // Open loop: the schedule's next operation, shared so whichever worker is free takes it.
    let next_op = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let worker = Worker {
            client: client.clone(),
            value: value.clone(),
            chooser: chooser.clone(),
            progress: progress.clone(),
        };
        let next_op = next_op.clone();
        workers.spawn(async move {
            let mut latencies: Vec<Histogram<u64>> = Op::ALL.iter().map(|_| histogram()).collect();
            let mut errors = BTreeSet::new();
            // Bounded by the deadline; each request is bounded by the client's timeout.
            loop {
                let begun = match pace {
                    Pace::Closed => {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        now
                    }
                    Pace::Open { started, rate } => {
                        let n = next_op.fetch_add(1, Ordering::Relaxed);
                        let intended = started + Duration::from_secs_f64(n as f64 / rate as f64);
                        if intended >= deadline {
                            break;
                        }
                        let now = Instant::now();
                        if intended > now {
                            // Ahead of schedule: the worker was idle. Time from when it woke, so
                            // the timer's millisecond granularity is not counted as latency.
                            tokio::time::sleep_until(intended.into()).await;
                            Instant::now()
                        } else {
                            // Behind schedule: the wait since the intended start is queueing the
                            // cluster caused, and is part of the latency.
                            if now - intended > Duration::from_millis(1) {
                                worker.progress.late_starts.fetch_add(1, Ordering::Relaxed);
                            }
                            intended
                        }
                    }
                };
                // Open loop: an operation scheduled before the deadline runs even if its worker
                // woke after it, so the run starts exactly `rate × duration` operations.
                let op = worker.chooser.op(&mut rand::rng());
                match worker.run(op).await {
                    Ok(()) => {
                        let micros = begun.elapsed().as_micros().max(1) as u64;
                        latencies[op.index()].saturating_record(micros);
                        worker
                            .progress
                            .recorded
                            .lock()
                            .expect("recorded lock")
                            .record(micros);
                        worker.progress.ops.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        worker.progress.errors.fetch_add(1, Ordering::Relaxed);
                        worker
                            .progress
                            .recorded
                            .lock()
                            .expect("recorded lock")
                            .phase
                            .errors += 1;
                        if errors.len() < 5 {
                            errors.insert(format!("{}: {error}", op.name()));
                        }
                    }
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies: Vec<Histogram<u64>> = Op::ALL.iter().map(|_| histogram()).collect();
    let mut error_samples = BTreeSet::new();
    while let Some(result) = workers.join_next().await {
        let (worker_latencies, worker_errors) = result.context("a load worker panicked")?;
        for (total, worker) in latencies.iter_mut().zip(&worker_latencies) {
            total.add(worker).expect("same bounds");
        }
        error_samples.extend(worker_errors);
    }
    let elapsed = started.elapsed();
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    phase_marks.abort();
    let phases = {
        let mut recorded = progress.recorded.lock().expect("recorded lock");
        recorded.next_phase(elapsed);
        std::mem::take(&mut recorded.phases)
    };
    Ok(LoadResult {
        elapsed,
        latencies,
        errors: progress.errors.load(Ordering::Relaxed),
        error_samples: error_samples.into_iter().take(5).collect(),
        preloaded,
        late_starts: progress.late_starts.load(Ordering::Relaxed),
        phases,
    })
}

/// Begins a new phase on each SIGUSR1, with a progress line saying so.
fn spawn_phase_marks(
    progress: Arc<Progress>,
    started: Instant,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut marks = signal(SignalKind::user_defined1()).context("cannot listen for SIGUSR1 (phase marks)")?;
    Ok(tokio::spawn(async move {
        while marks.recv().await.is_some() {
            let at = started.elapsed();
            let phase = {
                let mut recorded = progress.recorded.lock().expect("recorded lock");
                recorded.next_phase(at);
                recorded.phases.len() + 1
            };
            eprintln!("[{:>5.1}s] SIGUSR1: phase {phase} begins", at.as_secs_f64());
        }
    }))
}

/// What one load task needs to run operations.
struct Worker {
    client: Client,
    value: Bytes,
    chooser: Arc<Chooser>,
    progress: Arc<Progress>,
}

impl Worker {
    async fn run(&self, op: Op) -> Result<(), ringkv_client::Error> {
        // Every random choice first: the thread-local generator cannot be held across an await.
        let (n, scan_length) = {
            let mut rng = rand::rng();
            let n = match op {
                Op::Insert => self.chooser.new_key(),
                _ => self.chooser.existing_key(&mut rng),
            };
            (n, rng.random_range(1..=workload::MAX_SCAN_LENGTH))
        };
        let key = key(n);
        match op {
            Op::Read => self.client.get(&key).await.map(drop),
            Op::Update | Op::Insert => self.client.put(&key, &self.value).await.map(drop),
            Op::Scan => {
                let options = ScanOptions {
                    limit: scan_length,
                    cursor: Some(ScanCursor::at_ring_position(key_hash(key.as_bytes()))),
                    ..ScanOptions::default()
                };
                self.client.scan(options).await.map(drop)
            }
            Op::ReadModifyWrite => {
                self.client.get(&key).await?;
                self.client.put(&key, &self.value).await.map(drop)
            }
        }
    }
}

/// Writes every key once, `concurrency` at a time.
async fn preload(args: &Args, client: &Client, value: &Bytes) -> anyhow::Result<u64> {
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
                    .put(key(n), &value)
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

/// The read options `--consistency` and `--replica` ask for.
pub fn read_options(args: &Args) -> anyhow::Result<ReadOptions> {
    let consistency = Consistency::parse(&args.consistency)?;
    let selection = match args.replica.as_str() {
        "nearest" => ReplicaSelection::Nearest,
        "spread" => ReplicaSelection::Spread,
        "leader" => ReplicaSelection::Leader,
        other => anyhow::bail!("--replica {other:?}: use nearest, spread or leader"),
    };
    Ok(ReadOptions::new(consistency).with_selection(selection))
}

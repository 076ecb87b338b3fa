//! Group commit's ordering guarantee, checked with an instrumented fsync: no append is acknowledged
//! before an fsync that started after its entries were written has finished. The checker is shown
//! to fail when either of the two bugs it exists for is switched back on: queueing the durability
//! waiter before the write, and skipping the fsync.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::alias::{EntryOf, LogIdOf};
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::{Entry, EntryPayload};
use ringkv_engine::{Command, Engine, EngineOptions, Proposal, ReplicaId, ShardId, SyncEvent, TypeConfig};

const SHARDS: u64 = 8;
const APPENDS_PER_SHARD: u64 = 30;

fn log_id(index: u64) -> LogIdOf<TypeConfig> {
    openraft::testing::log_id::<TypeConfig>(1, ReplicaId(1), index)
}

fn put(index: u64) -> EntryOf<TypeConfig> {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Proposal::internal(Command::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        })),
    }
}

/// Everything that happened, in one global order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Engine(SyncEvent),
    /// The test saw the append's durability callback fire.
    Acknowledged {
        shard: ShardId,
        index: u64,
    },
}

#[derive(Default)]
struct Recorder {
    sequence: AtomicU64,
    steps: Mutex<Vec<(u64, Step)>>,
}

impl Recorder {
    fn record(&self, step: Step) {
        let mut steps = self.steps.lock().unwrap();
        let at = self.sequence.fetch_add(1, Ordering::SeqCst);
        steps.push((at, step));
    }
}

/// Runs concurrent appends from several shards on an engine opened with `options` (plus the
/// recorder as its observer) and returns the recorded steps.
async fn run_appends(options: EngineOptions) -> Vec<(u64, Step)> {
    let recorder = Arc::new(Recorder::default());
    let dir = tempfile::tempdir().unwrap();
    let observer = recorder.clone();
    let options = EngineOptions {
        sync_observer: Some(Arc::new(move |event| observer.record(Step::Engine(event)))),
        ..options
    };
    let engine = Engine::open_with(dir.path(), options).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for shard in (1..=SHARDS).map(ShardId) {
        let (engine, recorder) = (engine.clone(), recorder.clone());
        tasks.spawn(async move {
            let mut store = engine.log_store(shard);
            for index in 1..=APPENDS_PER_SHARD {
                let (sender, receiver) = TypeConfig::oneshot();
                store
                    .append(vec![put(index)], IOFlushed::signal(sender))
                    .await
                    .unwrap();
                receiver.await.unwrap().unwrap();
                recorder.record(Step::Acknowledged { shard, index });
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
    recorder.steps.lock().unwrap().clone()
}

/// The guarantee: for every acknowledged append, some fsync started after the append's entries
/// were written and finished before the acknowledgement. Returns the first violation.
fn check_order(steps: &[(u64, Step)]) -> Result<usize, String> {
    let mut checked = 0;
    for (acknowledged_at, step) in steps {
        let Step::Acknowledged { shard, index } = *step else {
            continue;
        };
        let written_at = steps
            .iter()
            .find_map(|(at, step)| match step {
                Step::Engine(SyncEvent::AppendWritten {
                    shard: written_shard,
                    last_index,
                }) if *written_shard == shard && *last_index == index => Some(*at),
                _ => None,
            })
            .ok_or_else(|| format!("shard {shard} append {index} was acknowledged but never written"))?;
        let covered = steps.iter().any(|(started_at, step)| match step {
            Step::Engine(SyncEvent::FsyncStarted { id }) if *started_at > written_at => {
                steps.iter().any(|(finished_at, step)| {
                    matches!(step, Step::Engine(SyncEvent::FsyncFinished { id: finished })
                        if finished == id && finished_at < acknowledged_at)
                })
            }
            _ => false,
        });
        if !covered {
            return Err(format!(
                "shard {shard} append {index} (written at step {written_at}) was acknowledged at step \
                 {acknowledged_at} without an fsync that started after the write and finished before"
            ));
        }
        checked += 1;
    }
    Ok(checked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_append_is_acknowledged_before_an_fsync_that_started_after_its_write() {
    let steps = run_appends(EngineOptions::default()).await;
    let checked = check_order(&steps).unwrap_or_else(|violation| panic!("{violation}"));
    assert_eq!(checked as u64, SHARDS * APPENDS_PER_SHARD);
    // And the fsyncs were shared: fewer fsyncs than appends.
    let fsyncs = steps
        .iter()
        .filter(|(_, step)| matches!(step, Step::Engine(SyncEvent::FsyncFinished { .. })))
        .count() as u64;
    assert!(
        fsyncs < SHARDS * APPENDS_PER_SHARD,
        "{fsyncs} fsyncs for {} appends",
        SHARDS * APPENDS_PER_SHARD
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_order_check_catches_a_waiter_queued_before_its_write() {
    let options = EngineOptions::default();
    options.faults.enqueue_before_write.store(true, Ordering::Relaxed);
    let steps = run_appends(options).await;
    let violation = check_order(&steps).expect_err("a waiter queued before its write must be caught");
    assert!(violation.contains("without an fsync"), "{violation}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_order_check_catches_a_skipped_fsync() {
    let options = EngineOptions::default();
    options.faults.skip_fsync.store(true, Ordering::Relaxed);
    let steps = run_appends(options).await;
    let violation = check_order(&steps).expect_err("acknowledging without an fsync must be caught");
    assert!(violation.contains("without an fsync"), "{violation}");
}

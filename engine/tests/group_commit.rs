//! Group commit's ordering guarantee, checked with an instrumented fsync: every append is
//! acknowledged only after an fsync that started after its entries were written has finished. The
//! engine reports each step (entries written, fsync started, fsync finished, callback fired after
//! which fsync) as it takes it, so the check is exact, not a matter of timing. It is shown to fail
//! when either of the two bugs it exists for is switched back on: queueing the durability waiter
//! before the write, and skipping the fsync.

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

/// Everything that happened, in one global order: the engine's steps as it takes them.
#[derive(Default)]
struct Recorder {
    sequence: AtomicU64,
    steps: Mutex<Vec<(u64, SyncEvent)>>,
}

impl Recorder {
    fn record(&self, event: SyncEvent) {
        let mut steps = self.steps.lock().unwrap();
        let at = self.sequence.fetch_add(1, Ordering::SeqCst);
        steps.push((at, event));
    }
}

/// Runs concurrent appends from several shards on an engine opened with `options` (plus the
/// recorder as its observer), waiting for each append's callback, and returns the recorded steps.
async fn run_appends(options: EngineOptions) -> Vec<(u64, SyncEvent)> {
    let recorder = Arc::new(Recorder::default());
    let dir = tempfile::tempdir().unwrap();
    let observer = recorder.clone();
    let options = EngineOptions {
        sync_observer: Some(Arc::new(move |event| observer.record(event))),
        ..options
    };
    let engine = Engine::open_with(dir.path(), options).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for shard in (1..=SHARDS).map(ShardId) {
        let engine = engine.clone();
        tasks.spawn(async move {
            let mut store = engine.log_store(shard);
            for index in 1..=APPENDS_PER_SHARD {
                let (sender, receiver) = TypeConfig::oneshot();
                store
                    .append(vec![put(index)], IOFlushed::signal(sender))
                    .await
                    .unwrap();
                receiver.await.unwrap().unwrap();
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
    recorder.steps.lock().unwrap().clone()
}

/// The guarantee, checked exactly: every append is acknowledged by the syncer after an fsync (the
/// one whose batch it was in) that started after the append's entries were written and finished
/// before the acknowledgement. Returns how many appends it checked, or the first violation.
fn check_order(steps: &[(u64, SyncEvent)]) -> Result<usize, String> {
    let at = |wanted: SyncEvent| {
        steps
            .iter()
            .find(|(_, event)| *event == wanted)
            .map(|(at, _)| *at)
    };
    let mut checked = 0;
    for (acknowledged_at, event) in steps {
        let SyncEvent::AppendAcknowledged {
            shard,
            last_index,
            fsync_id,
        } = *event
        else {
            continue;
        };
        let written_at = at(SyncEvent::AppendWritten { shard, last_index })
            .ok_or_else(|| format!("shard {shard} append {last_index} was acknowledged but never written"))?;
        let started_at = at(SyncEvent::FsyncStarted { id: fsync_id });
        let finished_at = at(SyncEvent::FsyncFinished { id: fsync_id });
        let covered = matches!((started_at, finished_at), (Some(started), Some(finished))
            if started > written_at && finished < *acknowledged_at);
        if !covered {
            return Err(format!(
                "shard {shard} append {last_index} (written at step {written_at}) was acknowledged at step \
                 {acknowledged_at} after fsync {fsync_id}, which started at {started_at:?} and finished at \
                 {finished_at:?}: not an fsync that started after the write"
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
        .filter(|(_, event)| matches!(event, SyncEvent::FsyncFinished { .. }))
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
    assert!(
        violation.contains("not an fsync that started after the write"),
        "{violation}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_order_check_catches_a_skipped_fsync() {
    let options = EngineOptions::default();
    options.faults.skip_fsync.store(true, Ordering::Relaxed);
    let steps = run_appends(options).await;
    let violation = check_order(&steps).expect_err("acknowledging without an fsync must be caught");
    assert!(violation.contains("started at None"), "{violation}");
}

//! Test-only switches that put known bugs back into the engine, and an observer of its durability
//! steps. Tests use them to show that they catch what they claim to catch: with a switch on, the
//! test must fail. Production code never turns a switch on; every switch is off by default.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::types::{LogIndex, ShardId};

/// Bugs a test can reintroduce. Shared by every clone of one engine.
#[derive(Debug, Default)]
pub struct TestFaults {
    /// When non-zero, every read of log entries returns at most this many (the bug that skipped
    /// applies when the commit index jumped by more than 4096).
    pub log_read_cap: AtomicUsize,
    /// Queue an append's durability waiter before writing its entries (then pause briefly so the
    /// syncer can run in between), so an fsync that began before the write can acknowledge it.
    pub enqueue_before_write: AtomicBool,
    /// Acknowledge waiters without calling fsync at all.
    pub skip_fsync: AtomicBool,
    /// Not a bug: run every storage call on the blocking pool, as if each attempt to run it on
    /// the caller's thread would have had to wait on I/O, so tests cover that path too.
    pub force_blocking_pool: AtomicBool,
    /// Not a bug: every apply fails with an I/O error, as on a disk failing under the state
    /// machine, so tests can watch openraft stop the group and the node take the replica out of
    /// service.
    pub fail_apply: AtomicBool,
}

impl TestFaults {
    pub(crate) fn log_read_cap(&self) -> Option<usize> {
        match self.log_read_cap.load(Ordering::Relaxed) {
            0 => None,
            cap => Some(cap),
        }
    }
}

/// A step of the write path, reported to a [`SyncObserver`] as it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncEvent {
    /// An append's entries were written (readable, not yet durable).
    AppendWritten { shard: ShardId, last_index: LogIndex },
    /// The syncer began a WAL fsync; `id` counts fsyncs from 1.
    FsyncStarted { id: u64 },
    /// That fsync returned.
    FsyncFinished { id: u64 },
    /// The syncer completed an append's durability callback after the fsync numbered
    /// `fsync_id` (the fsync it ran for the batch of waiters this append was in).
    AppendAcknowledged {
        shard: ShardId,
        last_index: LogIndex,
        fsync_id: u64,
    },
}

/// Called synchronously at each [`SyncEvent`], from whichever thread takes the step.
pub type SyncObserver = Arc<dyn Fn(SyncEvent) + Send + Sync>;

/// How to open an engine beyond its data directory. `Default` is what production uses.
#[derive(Clone, Default)]
pub struct EngineOptions {
    pub faults: Arc<TestFaults>,
    pub sync_observer: Option<SyncObserver>,
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions")
            .field("faults", &self.faults)
            .field("sync_observer", &self.sync_observer.is_some())
            .finish()
    }
}

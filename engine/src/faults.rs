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
    /// A replica with applied state but no snapshot file answers "no snapshot" when openraft
    /// asks for one to send (the bug that stopped a split child's group the first time a leader
    /// had to send a snapshot).
    pub no_snapshot_on_demand: AtomicBool,
    /// The node lets a replica that started empty under an arc a split shrank take log entries
    /// and snapshots from before the split (the bug that replayed them under the narrowed arc).
    pub accept_below_floor: AtomicBool,
    /// A bounded-staleness read on a replica counts as fresh what leaders' AppendEntries showed
    /// (the commit index capped at the replica's matched log, at the message's arrival), as it
    /// once did: a replica far behind, or one whose leader was deposed without knowing it, then
    /// serves old data as fresh.
    pub bounded_from_heartbeats: AtomicBool,
    /// Not a bug: opening the state machine of this shard id fails (0: none), as a damaged
    /// replica's would, so tests can watch what the node does meanwhile with the others.
    pub fail_open_shard: std::sync::atomic::AtomicU64,
    /// A replica waits to start only for running replicas whose range overlaps its own, not for
    /// a stopped replica's stored state (the bug that started a split child beside a parent
    /// replica that had failed to open).
    pub overlap_ignores_stored: AtomicBool,
    /// A group's leader keeps learners the shard map does not place (no membership audit): the
    /// bug that left a learner a stale mover re-added after a rollback in the group for good.
    pub keep_unplaced_learners: AtomicBool,
    /// Not a bug: replicas keep the log from before their last split (the node's split log
    /// trimmer pauses), as in the moments after a split, so tests can send it to a new replica.
    pub pause_split_log_trim: AtomicBool,
}

/// The switches that put a known bug back, by the name tests take them by (`RINGKV_TEST_BUG`,
/// `RINGKV_SIM_BUG`).
pub const KNOWN_BUGS: &[&str] = &[
    "log-read-cap",
    "no-snapshot-on-demand",
    "accept-below-floor",
    "bounded-from-heartbeats",
    "overlap-ignores-stored",
    "keep-unplaced-learners",
];

impl TestFaults {
    /// Turns on the bug switch named `name` (one of `KNOWN_BUGS`).
    pub fn enable_bug(&self, name: &str) -> Result<(), String> {
        match name {
            "log-read-cap" => self.log_read_cap.store(4096, Ordering::Relaxed),
            "no-snapshot-on-demand" => self.no_snapshot_on_demand.store(true, Ordering::Relaxed),
            "accept-below-floor" => self.accept_below_floor.store(true, Ordering::Relaxed),
            "bounded-from-heartbeats" => self.bounded_from_heartbeats.store(true, Ordering::Relaxed),
            "overlap-ignores-stored" => self.overlap_ignores_stored.store(true, Ordering::Relaxed),
            "keep-unplaced-learners" => self.keep_unplaced_learners.store(true, Ordering::Relaxed),
            other => {
                return Err(format!(
                    "unknown bug switch {other:?}; the known ones are {}",
                    KNOWN_BUGS.join(", ")
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn no_snapshot_on_demand(&self) -> bool {
        self.no_snapshot_on_demand.load(Ordering::Relaxed)
    }

    pub fn accepts_below_floor(&self) -> bool {
        self.accept_below_floor.load(Ordering::Relaxed)
    }

    pub fn bounded_from_heartbeats(&self) -> bool {
        self.bounded_from_heartbeats.load(Ordering::Relaxed)
    }

    pub fn overlap_ignores_stored(&self) -> bool {
        self.overlap_ignores_stored.load(Ordering::Relaxed)
    }

    pub fn keeps_unplaced_learners(&self) -> bool {
        self.keep_unplaced_learners.load(Ordering::Relaxed)
    }

    pub fn split_log_trim_paused(&self) -> bool {
        self.pause_split_log_trim.load(Ordering::Relaxed)
    }

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

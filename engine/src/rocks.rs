//! The engine's one RocksDB instance: the only module in ringkv that imports `rocksdb` (this
//! file: opening, the data-dir lock, writes, sizes; `rocks/reads.rs`: every read). Everything
//! else in the engine reads and writes through the small API here: column families by name,
//! batches of our own `WriteOps`, range reads, and point-in-time views for snapshots.
//!
//! RocksDB calls block, sometimes for long (a write stall behind a flush, a slow disk). The async
//! parts of the engine therefore run them through [`Engine::run_blocking`], on tokio's blocking
//! pool, never on the runtime's worker threads that drive Raft timers and gRPC. The one exception
//! is [`Engine::get_if_cached`], a point read that gives up rather than touch a file.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rocksdb::{
    BoundColumnFamily, ColumnFamilyDescriptor, DBCompressionType, ErrorKind, MultiThreaded, Options,
    ReadOptions, ReadTier, WriteBatch, WriteOptions,
};

use crate::error::Error;
use crate::faults::{EngineOptions, SyncEvent, TestFaults};
use crate::keys;
use crate::log_store::LogStore;
use crate::retire::Fence;
use crate::state_machine::StateMachine;
use crate::syncer::Syncer;
use crate::types::{LogIndex, ShardId, Versioned};

mod reads;

pub(crate) use reads::View;
use reads::read_error;

/// Multi-threaded column-family mode: handles are shared across threads without a lock.
type Db = rocksdb::DBWithThreadMode<MultiThreaded>;

/// The column families, in the order they are opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cf {
    Log,
    State,
    Data,
    Meta,
    Sessions,
    /// The metadata group's keys: laid out as `Data`, apart from every shard's.
    MetaKv,
}

impl Cf {
    const ALL: [Cf; 6] = [Cf::Log, Cf::State, Cf::Data, Cf::Meta, Cf::Sessions, Cf::MetaKv];

    /// Where the state machine of `shard` keeps its keys: the metadata group in `MetaKv`, every
    /// data shard in `Data`. Its log, Raft state, applied state and request-id table are keyed by
    /// shard id like any shard's.
    pub(crate) fn keys_of(shard: ShardId) -> Cf {
        if shard.is_meta() { Cf::MetaKv } else { Cf::Data }
    }

    fn name(self) -> &'static str {
        match self {
            Cf::Log => "raft_log",
            Cf::State => "raft_state",
            Cf::Data => "data",
            Cf::Meta => "meta",
            Cf::Sessions => "sessions",
            Cf::MetaKv => "meta_kv",
        }
    }
}

pub use ringkv_core::HashRange;

/// One page of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    pub entries: Vec<(Vec<u8>, Versioned)>,
    /// Where the next page starts (a data key); empty when the range is exhausted.
    pub next_cursor: Vec<u8>,
}

/// Group-commit counters since the engine opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Log append calls made durable.
    pub appends: u64,
    /// WAL fsyncs started.
    pub fsyncs_started: u64,
    /// WAL fsyncs finished; each completed every waiter queued before it started.
    pub fsyncs: u64,
}

/// A raw key-value pair as stored.
pub(crate) type RawPair = (Vec<u8>, Vec<u8>);

/// Most keys one scan call examines, matching or not, so a selective prefix cannot make a page
/// take unbounded time.
const SCAN_EXAMINE_LIMIT: usize = 10_000;
/// Most bytes of keys and values one scan page holds (the first entry always comes), so a page
/// stays well under the 16 MiB message limit whatever the values' sizes.
const SCAN_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// A batch of writes to apply atomically.
#[derive(Default)]
pub(crate) struct WriteOps {
    cfs: Vec<(Cf, Op)>,
}

enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    DeleteRange(Vec<u8>, Vec<u8>),
}

impl WriteOps {
    pub(crate) fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.cfs.push((cf, Op::Put(key.into(), value.into())));
    }

    pub(crate) fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.cfs.push((cf, Op::Delete(key.into())));
    }

    /// Deletes keys in `[from, to)`.
    pub(crate) fn delete_range(&mut self, cf: Cf, from: impl Into<Vec<u8>>, to: impl Into<Vec<u8>>) {
        self.cfs.push((cf, Op::DeleteRange(from.into(), to.into())));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.cfs.is_empty()
    }
}

/// A digest of one shard replica's state at one log index (the replica check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestState {
    /// Being computed in the background.
    Computing,
    Done {
        digest: u64,
        keys: u64,
    },
    /// Computing it failed (a storage error); the replica check reports it.
    Failed,
}

/// Digests kept per shard; older ones are forgotten.
const DIGESTS_KEPT: usize = 8;

/// The node's storage engine. Cheap to clone; all clones share one RocksDB instance.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
    /// Set on the handles a replica's log, state machine and snapshots write through: once the
    /// replica is retired (removed from this node), their writes are refused.
    fence: Option<Fence>,
}

struct Inner {
    // Field order matters on drop: the syncer thread (which holds the DB) stops first, and the
    // data directory lock is released last.
    syncer: Syncer,
    db: Arc<Db>,
    path: PathBuf,
    snapshot_dir: PathBuf,
    incoming_counter: AtomicU64,
    faults: Arc<TestFaults>,
    options: EngineOptions,
    /// Replica-check digests by shard and log index. A std lock: held only to read or insert.
    digests: Mutex<HashMap<ShardId, BTreeMap<LogIndex, DigestState>>>,
    /// The fence of the replica each shard's state belongs to now (see `retire.rs`).
    fences: Mutex<HashMap<ShardId, Fence>>,
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.syncer.stop();
    }
}

/// Name of the file in the data directory whose lock marks the directory as in use.
const LOCK_FILE: &str = "ringkv.lock";

fn db_options() -> Options {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.set_compression_type(DBCompressionType::Lz4);
    options.set_bottommost_compression_type(DBCompressionType::Zstd);
    options.increase_parallelism(2);
    // Memtables bound the memory of bulk loads such as a snapshot install: two of 32 MiB per
    // column family before writes wait for a flush.
    options.set_write_buffer_size(32 * 1024 * 1024);
    options.set_max_write_buffer_number(2);
    options
}

impl Engine {
    /// Opens (creating if needed) the engine in `data_dir`. Fails with `DataDirInUse` at once if
    /// another process, or another `Engine` in this one, has it open.
    pub fn open(data_dir: &Path) -> Result<Engine, Error> {
        Engine::open_with(data_dir, EngineOptions::default())
    }

    /// `open` with test switches or an observer (see [`EngineOptions`]).
    pub fn open_with(data_dir: &Path, options: EngineOptions) -> Result<Engine, Error> {
        let open_error = |message: String| Error::Open {
            path: data_dir.to_owned(),
            message,
        };
        std::fs::create_dir_all(data_dir).map_err(|e| open_error(e.to_string()))?;
        // Our own lock, taken before RocksDB opens: "in use" is decided by this lock alone, never
        // by reading RocksDB's error text (a "block checksum mismatch" also contains "lock").
        let lock_path = data_dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| open_error(format!("cannot open {}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::DataDirInUse {
                    path: data_dir.to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(open_error(format!("cannot lock {}: {e}", lock_path.display())));
            }
        }
        let snapshot_dir = data_dir.join("snapshots");
        std::fs::create_dir_all(snapshot_dir.join("incoming")).map_err(|e| open_error(e.to_string()))?;
        let descriptors = Cf::ALL
            .iter()
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), db_options()));
        let db =
            Db::open_cf_descriptors(&db_options(), data_dir.join("db"), descriptors).map_err(|e| match e
                .kind()
            {
                ErrorKind::Corruption => Error::Corruption {
                    what: format!("the RocksDB database in {}", data_dir.display()),
                    detail: e.into_string(),
                },
                _ => open_error(e.into_string()),
            })?;
        let db = Arc::new(db);
        let syncer = {
            let db = db.clone();
            let faults = options.faults.clone();
            let observer = options.sync_observer.clone();
            Syncer::start(
                move |id| {
                    if faults.skip_fsync.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    // The observer sees the real fsync, so a skipped one shows as missing.
                    if let Some(observe) = &observer {
                        observe(SyncEvent::FsyncStarted { id });
                    }
                    let result = db.flush_wal(true).map_err(|e| e.into_string());
                    if let Some(observe) = &observer {
                        observe(SyncEvent::FsyncFinished { id });
                    }
                    result
                },
                options.sync_observer.clone(),
            )
        };
        // Leftovers of transfers and builds interrupted by a crash are useless: nothing refers
        // to them.
        remove_files(&snapshot_dir.join("incoming"), |_| true);
        if let Ok(shards) = std::fs::read_dir(&snapshot_dir) {
            for shard in shards.flatten() {
                remove_files(&shard.path(), |name| name.ends_with(".tmp"));
            }
        }
        Ok(Engine {
            inner: Arc::new(Inner {
                syncer,
                db,
                path: data_dir.to_owned(),
                snapshot_dir,
                incoming_counter: AtomicU64::new(0),
                faults: options.faults.clone(),
                options,
                digests: Mutex::new(HashMap::new()),
                fences: Mutex::new(HashMap::new()),
                _lock: lock,
            }),
            fence: None,
        })
    }

    /// Closes the engine: waits (at most `timeout`) until every other handle to it is dropped, then
    /// drops this one, which closes RocksDB and releases the data directory. Storage work already
    /// handed to the blocking pool holds a handle until it finishes, shortly after the Raft groups
    /// that started it have stopped. Returns false if other handles were still alive at the
    /// timeout (the engine then closes whenever the last one goes).
    pub async fn close(self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while Arc::strong_count(&self.inner) > 1 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        true
    }

    /// A probe counting the handles to this engine that exist when it is called (without being
    /// one): for diagnosing a close that does not finish.
    pub fn handle_counter(&self) -> impl Fn() -> usize + use<> {
        let inner = Arc::downgrade(&self.inner);
        move || inner.strong_count()
    }

    /// Runs `work` (RocksDB calls) on tokio's blocking pool and waits for it, so a slow disk
    /// never blocks the worker threads that drive Raft timers and gRPC.
    pub async fn run_blocking<T, F>(&self, work: F) -> T
    where
        F: FnOnce(&Engine) -> T + Send + 'static,
        T: Send + 'static,
    {
        let engine = self.clone();
        match tokio::task::spawn_blocking(move || work(&engine)).await {
            Ok(value) => value,
            // A panic in storage code is a bug; surface it where it happened.
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.path
    }

    /// The Raft log storage of one shard.
    pub fn log_store(&self, shard: ShardId) -> LogStore {
        LogStore::new(self.fenced(shard), shard)
    }

    /// The state machine of one shard, owning the data keys of `range`.
    pub fn state_machine(&self, shard: ShardId, range: HashRange) -> Result<StateMachine, Error> {
        if self
            .inner
            .faults
            .fail_open_shard
            .load(std::sync::atomic::Ordering::Relaxed)
            == shard.0
        {
            return Err(Error::Io(format!(
                "opening shard {shard} failed (test switch fail_open_shard)"
            )));
        }
        StateMachine::open(self.fenced(shard), shard, range)
    }

    /// Writes every memtable to disk files. For tests and tools; the engine never needs it.
    pub fn flush(&self) -> Result<(), Error> {
        for cf in Cf::ALL {
            self.inner
                .db
                .flush_cf(&self.cf(cf))
                .map_err(|e| Error::Write(e.into_string()))?;
        }
        Ok(())
    }

    /// The disk files (SSTs) holding user data, largest first. For tools and tests (a test damages
    /// one to check how a node handles corruption).
    pub fn data_files(&self) -> Result<Vec<PathBuf>, Error> {
        let mut files: Vec<_> = self
            .inner
            .db
            .live_files()
            .map_err(read_error)?
            .into_iter()
            .filter(|file| file.column_family_name == Cf::Data.name())
            .collect();
        files.sort_by_key(|file| std::cmp::Reverse(file.size));
        let dir = self.inner.path.join("db");
        Ok(files
            .into_iter()
            .map(|file| dir.join(file.name.trim_start_matches('/')))
            .collect())
    }

    /// The replica-check digest of `shard` at log index `index`, if this engine computed one.
    pub fn digest(&self, shard: ShardId, index: LogIndex) -> Option<DigestState> {
        let digests = self.inner.digests.lock().expect("digests lock");
        digests.get(&shard)?.get(&index).copied()
    }

    /// A node-level metadata record.
    pub fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        self.get_cf(Cf::Meta, &keys::node_meta_key(name))
    }

    /// Writes a node-level metadata record, durable on return.
    pub fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), Error> {
        self.put_metas(&[(name, value)])
    }

    /// Writes several node-level metadata records atomically, durable on return.
    pub fn put_metas(&self, records: &[(&str, &[u8])]) -> Result<(), Error> {
        let mut ops = WriteOps::default();
        for (name, value) in records {
            ops.put(Cf::Meta, keys::node_meta_key(name), *value);
        }
        self.write_ops(ops, true)
    }

    /// Bytes the engine holds: SST files on disk and memtables, over every column family
    /// (RocksDB's own estimates; 0 for a figure it cannot give).
    pub fn approximate_bytes(&self) -> u64 {
        Cf::ALL
            .iter()
            .map(|cf| {
                let handle = self.cf(*cf);
                ["rocksdb.total-sst-files-size", "rocksdb.cur-size-all-mem-tables"]
                    .iter()
                    .map(|name| {
                        self.inner
                            .db
                            .property_int_value_cf(&handle, *name)
                            .ok()
                            .flatten()
                            .unwrap_or(0)
                    })
                    .sum::<u64>()
            })
            .sum()
    }

    /// Roughly how many bytes the data keys of `range` take: RocksDB's estimate of their share
    /// of the data files, plus the keys and values still in memtables (which that estimate
    /// leaves out), counted by a memtable-only iterator. Never reads a data file.
    pub fn approximate_range_bytes(&self, range: HashRange) -> Result<u64, Error> {
        let (start, end) = keys::data_range_bounded(range);
        let cf = self.cf(Cf::Data);
        let files = self
            .inner
            .db
            .get_approximate_sizes_cf(&cf, &[rocksdb::Range::new(&start, &end)])
            .first()
            .copied()
            .unwrap_or(0);
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(end);
        read_options.set_read_tier(ReadTier::Memtable);
        let mut iterator = self.inner.db.raw_iterator_cf_opt(&cf, read_options);
        iterator.seek(&start);
        let mut in_memory = 0u64;
        while iterator.valid() {
            in_memory +=
                (iterator.key().map_or(0, <[u8]>::len) + iterator.value().map_or(0, <[u8]>::len)) as u64;
            iterator.next();
        }
        match iterator.status() {
            Ok(()) => Ok(files + in_memory),
            // Memtables alone cannot answer for keys deleted in files: what was counted stands.
            Err(error) if error.kind() == ErrorKind::Incomplete => Ok(files + in_memory),
            Err(error) => Err(read_error(error)),
        }
    }

    pub fn group_commit_stats(&self) -> GroupCommitStats {
        let counters = &self.inner.syncer.counters;
        GroupCommitStats {
            appends: counters.appends.load(Ordering::Acquire),
            fsyncs_started: counters.fsyncs_started.load(Ordering::Acquire),
            fsyncs: counters.fsyncs.load(Ordering::Acquire),
        }
    }

    /// A fresh path in the data dir to receive a snapshot streamed from a leader.
    pub fn incoming_snapshot_path(&self, shard: ShardId) -> Result<PathBuf, Error> {
        let n = self.inner.incoming_counter.fetch_add(1, Ordering::AcqRel);
        let dir = self.inner.snapshot_dir.join("incoming");
        std::fs::create_dir_all(&dir).map_err(|e| Error::Snapshot {
            path: dir.clone(),
            message: format!("cannot create: {e}"),
        })?;
        Ok(dir.join(format!("shard-{shard}-{}-{n}.part", std::process::id())))
    }

    // ---------------------------------------------------------------- crate-internal API

    pub(crate) fn snapshot_dir(&self, shard: ShardId) -> PathBuf {
        self.inner.snapshot_dir.join(format!("shard-{shard}"))
    }

    pub(crate) fn syncer(&self) -> &Syncer {
        &self.inner.syncer
    }

    pub(crate) fn faults(&self) -> &TestFaults {
        &self.inner.faults
    }

    /// The test switches this engine was opened with, for the node's own (`faults.rs`).
    pub fn test_faults(&self) -> &TestFaults {
        &self.inner.faults
    }

    pub(crate) fn observe(&self, event: SyncEvent) {
        if let Some(observer) = &self.inner.options.sync_observer {
            observer(event);
        }
    }

    pub(crate) fn set_digest(&self, shard: ShardId, index: LogIndex, state: DigestState) {
        let mut digests = self.inner.digests.lock().expect("digests lock");
        let of_shard = digests.entry(shard).or_default();
        of_shard.insert(index, state);
        while of_shard.len() > DIGESTS_KEPT {
            of_shard.pop_first();
        }
    }

    /// A handle that writes as the current replica of `shard` on this node: its writes are
    /// refused once that replica is retired.
    pub(crate) fn fenced(&self, shard: ShardId) -> Engine {
        let fence = self
            .fences()
            .entry(shard)
            .or_insert_with(|| Fence::new(shard))
            .clone();
        Engine {
            fence: Some(fence),
            ..self.clone()
        }
    }

    /// The fences of the replicas this node runs, by shard (see `retire.rs`).
    pub(crate) fn fences(&self) -> std::sync::MutexGuard<'_, HashMap<ShardId, Fence>> {
        self.inner
            .fences
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forgets the digests of `shard` (its state was replaced by a snapshot).
    pub(crate) fn clear_digests(&self, shard: ShardId) {
        self.inner.digests.lock().expect("digests lock").remove(&shard);
    }

    fn cf(&self, cf: Cf) -> Arc<BoundColumnFamily<'_>> {
        self.inner
            .db
            .cf_handle(cf.name())
            .expect("column family created at open")
    }

    /// Writes `ops` atomically. With `sync`, durable on return (an fsync of its own); without,
    /// readable at once and durable after the syncer's next fsync.
    pub(crate) fn write_ops(&self, ops: WriteOps, sync: bool) -> Result<(), Error> {
        let _entered = self.fence.as_ref().map(Fence::enter).transpose()?;
        self.inner.syncer.check_healthy()?;
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.inner
            .db
            .write_opt(self.batch(&ops), &options)
            .map_err(|e| Error::Write(e.into_string()))
    }

    fn batch(&self, ops: &WriteOps) -> WriteBatch {
        let mut batch = WriteBatch::default();
        for (cf, op) in &ops.cfs {
            let handle = self.cf(*cf);
            match op {
                Op::Put(key, value) => batch.put_cf(&handle, key, value),
                Op::Delete(key) => batch.delete_cf(&handle, key),
                Op::DeleteRange(from, to) => batch.delete_range_cf(&handle, from, to),
            }
        }
        batch
    }

    /// Writes `ops` (not synced: durable after the syncer's next fsync), on the calling thread
    /// when RocksDB can take them without waiting, else on the blocking pool. Returns once they
    /// are readable.
    ///
    /// "Without waiting": the write carries `no_slowdown`, so instead of sleeping in a write
    /// stall or slowdown (a flush or compaction behind) RocksDB refuses it and it goes to the
    /// blocking pool. What stays on the caller's thread is the memtable insert and a buffered
    /// WAL `write()`: microseconds, where a trip to the blocking pool costs two thread wake-ups.
    pub(crate) async fn write_unsynced(&self, ops: WriteOps) -> Result<(), Error> {
        if !self.inner.faults.force_blocking_pool.load(Ordering::Relaxed) {
            let _entered = self.fence.as_ref().map(Fence::enter).transpose()?;
            self.inner.syncer.check_healthy()?;
            let mut options = WriteOptions::default();
            options.set_no_slowdown(true);
            match self.inner.db.write_opt(self.batch(&ops), &options) {
                Ok(()) => return Ok(()),
                Err(error) if error.kind() == ErrorKind::Incomplete => {}
                Err(error) => return Err(Error::Write(error.into_string())),
            }
        }
        self.run_blocking(move |engine| engine.write_ops(ops, false))
            .await
    }
}

/// Removes the files in `dir` whose names `remove` picks; errors (a missing dir) are ignored.
fn remove_files(dir: &Path, remove: impl Fn(&str) -> bool) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let is_file = entry.file_type().is_ok_and(|kind| kind.is_file());
            if is_file && remove(&entry.file_name().to_string_lossy()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

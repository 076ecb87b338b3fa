//! openraft log storage for one shard, over the node's shared engine. Appends are written at once
//! (readable on return) and acknowledged through the node-wide syncer after the WAL fsync that
//! covers them; vote, truncation and purge wait for durability before returning.
//!
//! Reads follow openraft's contract exactly: `try_get_log_entries` and `entries_stream` return
//! every entry of the range the log holds, however many (the apply path reads committed entries
//! through `entries_stream` and then records the range's end as applied, so a capped read would
//! silently skip applies); a hole, or a committed entry missing at the end, is reported as
//! corruption. Only `limited_get_log_entries`, which builds replication payloads, may stop early,
//! at a byte budget. Large ranges are read from RocksDB in chunks so no single read holds much in
//! memory.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::Stream;
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};

use crate::codec;
use crate::error::Error;
use crate::faults::SyncEvent;
use crate::keys::{self, STATE_COMMITTED, STATE_PURGED, STATE_VOTE};
use crate::rocks::{Cf, Engine, RawPair, WriteOps};
use crate::syncer::Waiter;
use crate::types::{LogIndex, ShardId, TypeConfig};

type Entry = EntryOf<TypeConfig>;
type LogId = LogIdOf<TypeConfig>;
type Vote = VoteOf<TypeConfig>;

/// Entries, and bytes, read from RocksDB per call when a range is read in pieces (at least one
/// entry per call, whatever its size).
const READ_CHUNK_ENTRIES: usize = 1024;
const READ_CHUNK_BYTES: usize = 16 * 1024 * 1024;
/// Byte budget of a log read done on a runtime thread (from memory): small enough to decode in
/// well under a millisecond, large enough for a busy shard's newest entries.
const INLINE_READ_BYTES: usize = 1024 * 1024;

/// Byte budget of one replication payload (`limited_get_log_entries`): entries are added while
/// their stored size stays within it, and the first entry always goes, so a payload is at most one
/// largest entry (a batch of 8 MiB) plus this, well under the Raft transport's message limit.
pub const REPLICATION_PAYLOAD_BYTES: usize = 4 * 1024 * 1024;

/// The Raft log and vote of one shard replica. Cheap to clone (it is also its own log reader).
#[derive(Clone)]
pub struct LogStore {
    engine: Engine,
    shard: ShardId,
}

/// How many entries one read may return.
#[derive(Debug, Clone, Copy)]
struct ReadLimit {
    entries: usize,
    bytes: usize,
}

impl LogStore {
    pub(crate) fn new(engine: Engine, shard: ShardId) -> Self {
        LogStore { engine, shard }
    }

    async fn read_state<T>(&self, tag: u8, what: &'static str) -> Result<Option<T>, Error>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let shard = self.shard;
        self.engine
            .run_blocking(move |engine| {
                engine
                    .get_cf(Cf::State, &keys::state_key(shard, tag))?
                    .map(|bytes| codec::decode(&bytes, &format!("{what} of shard {shard}")))
                    .transpose()
            })
            .await
    }

    /// The index of the last committed entry as last saved by openraft, if any.
    async fn committed_index(&self) -> Result<Option<LogIndex>, Error> {
        let committed: Option<Option<LogId>> = self.read_state(STATE_COMMITTED, "committed log id").await?;
        Ok(committed.flatten().map(|id| id.index))
    }

    /// Entries from `from` (inclusive) up to `to` (exclusive; `None`: the log's end), at most
    /// `limit` of them, verified for checksum, index and continuity. Runs RocksDB on the caller's
    /// thread: call through `run_blocking`.
    fn read_entries(
        engine: &Engine,
        shard: ShardId,
        from: LogIndex,
        to: Option<LogIndex>,
        limit: ReadLimit,
    ) -> Result<Vec<Entry>, Error> {
        let (start, end) = keys::log_range(shard, from, to);
        let pairs = engine.range_cf(Cf::Log, &start, &end, limit.entries, limit.bytes)?;
        LogStore::decode_entries(pairs, shard, from)
    }

    fn decode_entries(pairs: Vec<RawPair>, shard: ShardId, from: LogIndex) -> Result<Vec<Entry>, Error> {
        let mut entries: Vec<Entry> = Vec::with_capacity(pairs.len());
        for (key, value) in pairs {
            let index = keys::log_key_index(&key).unwrap_or_default();
            let entry: Entry = codec::decode_entry(&value, shard, index)?;
            if entry.log_id.index != index {
                return Err(Error::Corruption {
                    what: format!("log entry {index} of shard {shard}"),
                    detail: format!(
                        "stored under index {index} but holds index {}",
                        entry.log_id.index
                    ),
                });
            }
            let expected = entries.last().map_or(from, |e| e.log_id.index + 1);
            if !entries.is_empty() && index != expected {
                return Err(Error::Corruption {
                    what: format!("log of shard {shard}"),
                    detail: format!("hole between entries {} and {index}", expected - 1),
                });
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    /// [`LogStore::read_entries`] without blocking a runtime thread: on the caller's thread when
    /// the entries are all in memory (the newest ones are, in the memtable: those replication
    /// and apply read), else on the blocking pool. Read on the caller's thread, a range stops at
    /// `INLINE_READ_BYTES`; callers accept a shorter answer (never an empty one while entries
    /// remain), so a runtime thread decodes at most about a megabyte, or one entry larger than that.
    async fn read_entries_async(
        &self,
        from: LogIndex,
        to: Option<LogIndex>,
        limit: ReadLimit,
    ) -> Result<Vec<Entry>, Error> {
        let shard = self.shard;
        let (start, end) = keys::log_range(shard, from, to);
        let inline_bytes = limit.bytes.min(INLINE_READ_BYTES);
        if let Some(pairs) =
            self.engine
                .range_cf_if_cached(Cf::Log, &start, &end, limit.entries, inline_bytes)?
        {
            return LogStore::decode_entries(pairs, shard, from);
        }
        self.engine
            .run_blocking(move |engine| LogStore::read_entries(engine, shard, from, to, limit))
            .await
    }

    /// One chunk of a whole-range read.
    async fn read_chunk(&self, from: LogIndex, to: Option<LogIndex>) -> Result<Vec<Entry>, Error> {
        let limit = ReadLimit {
            entries: READ_CHUNK_ENTRIES,
            bytes: READ_CHUNK_BYTES,
        };
        self.read_entries_async(from, to, limit).await
    }

    /// The number of entries a whole-range read may return: all of them, unless a test has
    /// switched the old 4096-entry cap back on.
    fn whole_range_cap(&self) -> usize {
        self.engine.faults().log_read_cap().unwrap_or(usize::MAX)
    }
}

/// `[from, to)` of a range bound pair; `to = None` means to the end of the log.
fn bounds(range: &impl RangeBounds<u64>) -> (LogIndex, Option<LogIndex>) {
    let from = match range.start_bound() {
        Bound::Included(&n) => n,
        Bound::Excluded(&n) => n + 1,
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(&n) => n.checked_add(1),
        Bound::Excluded(&n) => Some(n),
        Bound::Unbounded => None,
    };
    (from, to)
}

/// Continues a whole-range read after a chunk: where the next chunk starts, or `None` when the
/// range is complete or the log ends. (A chunk may stop early at its byte budget, so only an empty
/// chunk says the log has ended.)
fn next_chunk_start(chunk: &[Entry], to: Option<LogIndex>) -> Option<LogIndex> {
    let next = chunk.last()?.log_id.index + 1;
    match to {
        Some(to) if next >= to => None,
        _ => Some(next),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (mut from, to) = bounds(&range);
        let cap = self.whole_range_cap();
        let mut entries: Vec<Entry> = Vec::new();
        loop {
            let chunk = self.read_chunk(from, to).await?;
            let next = next_chunk_start(&chunk, to);
            if let (Some(last), Some(first)) = (entries.last(), chunk.first())
                && last.log_id.index + 1 != first.log_id.index
            {
                return Err(Error::Corruption {
                    what: format!("log of shard {}", self.shard),
                    detail: format!(
                        "hole between entries {} and {}",
                        last.log_id.index, first.log_id.index
                    ),
                }
                .into());
            }
            entries.extend(chunk);
            if entries.len() >= cap {
                entries.truncate(cap);
                return Ok(entries);
            }
            match next {
                Some(next) => from = next,
                None => return Ok(entries),
            }
        }
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.read_state(STATE_VOTE, "vote").await?)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, io::Error> {
        let limit = ReadLimit {
            entries: (end.saturating_sub(start) as usize).min(self.whole_range_cap()),
            bytes: REPLICATION_PAYLOAD_BYTES,
        };
        Ok(self.read_entries_async(start, Some(end), limit).await?)
    }

    async fn entries_stream<RB>(&mut self, range: RB) -> impl Stream<Item = Result<Entry, io::Error>> + Send
    where
        RB: RangeBounds<u64> + Clone + Debug + Send,
    {
        // Reads one chunk at a time as the consumer (the apply worker) pulls, so applying a huge
        // committed range never holds more than a chunk of entries in memory.
        struct Cursor {
            store: LogStore,
            from: Option<LogIndex>,
            to: Option<LogIndex>,
            remaining_cap: usize,
            buffered: std::vec::IntoIter<Entry>,
        }
        let (from, to) = bounds(&range);
        let cursor = Cursor {
            remaining_cap: self.whole_range_cap(),
            store: self.clone(),
            from: Some(from),
            to,
            buffered: Vec::new().into_iter(),
        };
        // The apply path reads committed entries through this stream and then records the whole
        // range as applied, so a gap, or a committed entry missing at the end, is an error, never
        // a shorter stream. (openraft saves the committed id before every apply. Past the
        // committed id, as openraft's storage suite asks, the stream just ends with the log.)
        futures::stream::unfold(cursor, |mut cursor| async move {
            loop {
                if cursor.remaining_cap == 0 {
                    return None;
                }
                if let Some(entry) = cursor.buffered.next() {
                    cursor.remaining_cap -= 1;
                    return Some((Ok(entry), cursor));
                }
                let from = cursor.from?;
                match cursor.store.read_chunk(from, cursor.to).await {
                    Ok(chunk) => {
                        let first = chunk.first().map(|e| e.log_id.index);
                        let missing = match first {
                            Some(found) if found != from => {
                                Some(format!("entry {from} is missing; the log continues at {found}"))
                            }
                            Some(_) => None,
                            None if cursor.to.is_some_and(|to| from < to) => {
                                match cursor.store.committed_index().await {
                                    Ok(Some(committed)) if committed >= from => Some(format!(
                                        "committed entry {from} is missing; the log ends before it (committed up to {committed})"
                                    )),
                                    Ok(_) => None,
                                    Err(error) => {
                                        cursor.from = None;
                                        return Some((Err(error.into()), cursor));
                                    }
                                }
                            }
                            None => None,
                        };
                        if let Some(detail) = missing {
                            cursor.from = None;
                            let error = Error::Corruption {
                                what: format!("log of shard {}", cursor.store.shard),
                                detail,
                            };
                            return Some((Err(error.into()), cursor));
                        }
                        cursor.from = next_chunk_start(&chunk, cursor.to);
                        if chunk.is_empty() {
                            return None;
                        }
                        cursor.buffered = chunk.into_iter();
                    }
                    Err(error) => {
                        cursor.from = None;
                        return Some((Err(error.into()), cursor));
                    }
                }
            }
        })
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = self.read_state(STATE_PURGED, "last purged log id").await?;
        let shard = self.shard;
        let last_entry = self
            .engine
            .run_blocking(move |engine| -> Result<Option<LogId>, Error> {
                let (start, end) = keys::log_range(shard, 0, None);
                match engine.last_in_range(Cf::Log, &start, &end)? {
                    Some((key, value)) => {
                        let index = keys::log_key_index(&key).unwrap_or_default();
                        let entry: Entry = codec::decode_entry(&value, shard, index)?;
                        Ok(Some(entry.log_id))
                    }
                    None => Ok(None),
                }
            })
            .await?;
        Ok(LogState {
            last_log_id: last_entry.or(last_purged),
            last_purged_log_id: last_purged,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut ops = WriteOps::default();
        ops.put(
            Cf::State,
            keys::state_key(self.shard, STATE_VOTE),
            codec::encode(vote),
        );
        self.engine
            .run_blocking(move |engine| engine.write_ops(ops, false))
            .await?;
        // A vote must be on disk before it is acted on: a node that forgets its vote can vote
        // twice in one term.
        self.engine.syncer().sync().await?;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not waited on: losing the newest committed id in a crash only means relearning it from
        // the leader; the next fsync makes it durable anyway.
        let mut ops = WriteOps::default();
        ops.put(
            Cf::State,
            keys::state_key(self.shard, STATE_COMMITTED),
            codec::encode(&committed),
        );
        self.engine.write_unsynced(ops).await?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self
            .read_state::<Option<LogId>>(STATE_COMMITTED, "committed log id")
            .await?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last_index) = entries.last().map(|entry| entry.log_id.index) else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        let shard = self.shard;
        // Test-only: the bug of queueing the waiter before the write. It waits (up to a second)
        // for the syncer to start an fsync before writing, so the bug shows every time rather than
        // only when the threads happen to interleave that way.
        let mut callback = Some(callback);
        if self.engine.faults().enqueue_before_write.load(Ordering::Relaxed) {
            let counters = &self.engine.syncer().counters;
            let started_before = counters.fsyncs_started.load(Ordering::Acquire);
            self.engine.syncer().enqueue(Waiter::Append {
                callback: callback.take().expect("callback"),
                shard,
                last_index,
            });
            for _ in 0..1000 {
                if counters.fsyncs_started.load(Ordering::Acquire) > started_before {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        // Written now (readable when this returns); acknowledged only after the fsync.
        let mut ops = WriteOps::default();
        for entry in &entries {
            ops.put(
                Cf::Log,
                keys::log_key(shard, entry.log_id.index),
                codec::encode_entry(entry),
            );
        }
        self.engine.write_unsynced(ops).await?;
        self.engine
            .observe(SyncEvent::AppendWritten { shard, last_index });
        self.engine
            .syncer()
            .counters
            .appends
            .fetch_add(1, Ordering::AcqRel);
        if let Some(callback) = callback {
            self.engine.syncer().enqueue(Waiter::Append {
                callback,
                shard,
                last_index,
            });
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        let (start, end) = keys::log_range(self.shard, from, None);
        let mut ops = WriteOps::default();
        ops.delete_range(Cf::Log, start, end);
        self.engine
            .run_blocking(move |engine| engine.write_ops(ops, false))
            .await?;
        self.engine.syncer().sync().await?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let (start, end) = keys::log_range(self.shard, 0, Some(log_id.index + 1));
        let mut ops = WriteOps::default();
        // The purge point and the deletion are one atomic batch: never a log that starts after an
        // unrecorded purge.
        ops.put(
            Cf::State,
            keys::state_key(self.shard, STATE_PURGED),
            codec::encode(&log_id),
        );
        ops.delete_range(Cf::Log, start, end);
        self.engine
            .run_blocking(move |engine| engine.write_ops(ops, false))
            .await?;
        self.engine.syncer().sync().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;

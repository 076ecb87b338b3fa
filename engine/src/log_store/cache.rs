//! The newest entries of one shard's log, kept in memory as they are appended, so that building a
//! replication payload and applying committed entries — both of which read entries the node has
//! just written — need no RocksDB read and no hand-off to the blocking pool.
//!
//! **Invariant:** the cache is empty or holds a contiguous run of entries that ends at the log's
//! last entry (a suffix of the log). Appends extend it (or restart it, if they do not follow on),
//! truncation and purge cut it before they touch RocksDB, and eviction drops the oldest entries.
//! A read is answered from the cache only when the cache covers where it starts; otherwise the
//! caller reads RocksDB.

use std::collections::VecDeque;

use super::{Entry, ReadLimit};
use crate::types::LogIndex;

/// Bytes of stored entries kept per shard. Enough for the entries in flight between append,
/// replication and apply under load; large batches fall back to RocksDB reads.
pub(crate) const CACHE_BYTES: usize = 256 * 1024;

#[derive(Default)]
pub(crate) struct EntryCache {
    /// Entries and their stored sizes, oldest first, consecutive indexes.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl EntryCache {
    fn first_index(&self) -> Option<LogIndex> {
        self.entries.front().map(|(entry, _)| entry.log_id.index)
    }

    fn last_index(&self) -> Option<LogIndex> {
        self.entries.back().map(|(entry, _)| entry.log_id.index)
    }

    /// Records entries just written to the log (consecutive, in order), each with its stored size.
    pub(crate) fn append(&mut self, appended: impl IntoIterator<Item = (Entry, usize)>) {
        for (entry, size) in appended {
            if self
                .last_index()
                .is_some_and(|last| last + 1 != entry.log_id.index)
            {
                // Not a continuation (the log was rewritten below the cache): start over.
                self.entries.clear();
                self.bytes = 0;
            }
            self.bytes += size;
            self.entries.push_back((entry, size));
        }
        while self.bytes > CACHE_BYTES {
            let Some((_, size)) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= size;
        }
    }

    /// Drops the entries from `from` on (the log is being truncated there).
    pub(crate) fn truncate_from(&mut self, from: LogIndex) {
        while self.last_index().is_some_and(|last| last >= from) {
            let (_, size) = self.entries.pop_back().expect("non-empty");
            self.bytes -= size;
        }
    }

    /// Drops the entries up to and including `upto` (the log is being purged there).
    pub(crate) fn purge_upto(&mut self, upto: LogIndex) {
        while self.first_index().is_some_and(|first| first <= upto) {
            let (_, size) = self.entries.pop_front().expect("non-empty");
            self.bytes -= size;
        }
    }

    /// The entries of `[from, to)` (`to = None`: to the log's end) within `limit`, with the same
    /// budget rule as a RocksDB read (the first entry always; then while the bytes fit), if the
    /// cache can answer: it holds `from`, or `from` is just past the log's end (an empty answer).
    /// `None`: read RocksDB instead.
    pub(crate) fn read(&self, from: LogIndex, to: Option<LogIndex>, limit: ReadLimit) -> Option<Vec<Entry>> {
        let (first, last) = (self.first_index()?, self.last_index()?);
        if from < first || from > last + 1 {
            return None;
        }
        let end = to.map_or(last + 1, |to| to.min(last + 1));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let skip = (from - first) as usize;
        for (entry, size) in self.entries.iter().skip(skip) {
            if entry.log_id.index >= end || out.len() >= limit.entries {
                break;
            }
            if !out.is_empty() && bytes.saturating_add(*size) > limit.bytes {
                break;
            }
            bytes += size;
            out.push(entry.clone());
        }
        Some(out)
    }
}

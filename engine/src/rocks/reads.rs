//! The engine's reads: point reads (in place when cached), scans of a shard's range, raw range
//! reads of a column family for the log and the state machine, and point-in-time views for
//! snapshots and digests. Part of the `rocks` module, the only code that imports `rocksdb`.

use std::sync::atomic::Ordering;

use rocksdb::{Direction, ErrorKind, IteratorMode, ReadOptions, ReadTier};

use super::{Cf, Db, Engine, HashRange, RawPair, SCAN_EXAMINE_LIMIT, SCAN_PAGE_BYTES, ScanPage};
use crate::codec;
use crate::error::Error;
use crate::keys;
use crate::types::Versioned;

impl Engine {
    /// Reads a key from local storage, with no consistency check (the caller confirms it).
    pub fn get(&self, key: &[u8]) -> Result<Option<Versioned>, Error> {
        self.get_cf(Cf::Data, &keys::data_key(key))?
            .map(|bytes| codec::decode_value(&bytes))
            .transpose()
    }

    /// Reads a key of the metadata group (`ShardId::META`) from local storage, with no
    /// consistency check (the caller confirms it).
    pub fn get_meta_kv(&self, key: &[u8]) -> Result<Option<Versioned>, Error> {
        self.get_cf(Cf::MetaKv, &keys::data_key(key))?
            .map(|bytes| codec::decode_value(&bytes))
            .transpose()
    }

    /// Reads `key` only if that needs no file read: from the memtables and the block cache.
    /// `Ok(None)` means the answer is on disk (call [`Engine::get`] off the runtime threads);
    /// otherwise this never waits on I/O, so it may run on a runtime thread.
    pub fn get_if_cached(&self, key: &[u8]) -> Result<Option<Option<Versioned>>, Error> {
        let mut read_options = ReadOptions::default();
        read_options.set_read_tier(ReadTier::BlockCache);
        match self
            .inner
            .db
            .get_cf_opt(&self.cf(Cf::Data), keys::data_key(key), &read_options)
        {
            Ok(bytes) => Ok(Some(bytes.map(|bytes| codec::decode_value(&bytes)).transpose()?)),
            Err(error) if error.kind() == ErrorKind::Incomplete => Ok(None),
            Err(error) => Err(read_error(error)),
        }
    }

    /// A page of the keys of `range` in data-key order strictly after `cursor` (empty: from the
    /// start), keeping those whose user key starts with `prefix`, at most `limit` of them. A
    /// prefix that fixes the hash tag (`{user42}:`) reads only the keys of that one hash.
    pub fn scan(
        &self,
        range: HashRange,
        cursor: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<ScanPage, Error> {
        let range = match ringkv_core::prefix_hash(prefix) {
            None => range,
            Some(hash) if range.contains(hash) => HashRange {
                start: hash,
                end: hash,
            },
            Some(_) => {
                return Ok(ScanPage {
                    entries: Vec::new(),
                    next_cursor: Vec::new(),
                });
            }
        };
        let (start, end) = keys::data_range(range);
        let from = if cursor.is_empty() || cursor < start.as_slice() {
            start.clone()
        } else {
            cursor.to_vec()
        };
        let mut read_options = ReadOptions::default();
        if let Some(end) = end {
            read_options.set_iterate_upper_bound(end);
        }
        let cf = self.cf(Cf::Data);
        let iterator =
            self.inner
                .db
                .iterator_cf_opt(&cf, read_options, IteratorMode::From(&from, Direction::Forward));
        let mut entries = Vec::new();
        let mut examined = 0;
        let mut bytes = 0usize;
        let mut last_key = Vec::new();
        for item in iterator {
            let (key, value) = item.map_err(read_error)?;
            if key.as_ref() == cursor {
                continue;
            }
            let full = !entries.is_empty() && bytes + key.len() + value.len() > SCAN_PAGE_BYTES;
            if entries.len() >= limit.max(1) || examined >= SCAN_EXAMINE_LIMIT || full {
                // More keys remain: resume after the last one examined.
                return Ok(ScanPage {
                    entries,
                    next_cursor: last_key,
                });
            }
            examined += 1;
            let user_key = keys::user_key(&key);
            if user_key.starts_with(prefix) {
                bytes += key.len() + value.len();
                entries.push((user_key.to_vec(), codec::decode_value(&value)?));
            }
            last_key = key.to_vec();
        }
        Ok(ScanPage {
            entries,
            next_cursor: Vec::new(),
        })
    }

    pub(crate) fn get_cf(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.inner.db.get_cf(&self.cf(cf), key).map_err(read_error)
    }

    /// Runs `read` against a point-in-time view of the database taken on another thread, once
    /// `taken` has been called; returns the view's result through `done`. For work that must see
    /// one instant but may take long (a digest), so the caller can go on as soon as the view exists.
    pub(crate) fn spawn_view<T: Send + 'static>(
        &self,
        read: impl FnOnce(&View<'_>) -> T + Send + 'static,
    ) -> std::sync::mpsc::Receiver<T> {
        let (taken_sender, taken) = std::sync::mpsc::channel::<()>();
        let (done_sender, done) = std::sync::mpsc::channel::<T>();
        let engine = self.clone();
        std::thread::Builder::new()
            .name("ringkv-view".into())
            .spawn(move || {
                let snapshot = engine.inner.db.snapshot();
                let _ = taken_sender.send(());
                let result = read(&View {
                    engine: &engine,
                    snapshot,
                });
                let _ = done_sender.send(result);
            })
            .expect("spawn a view thread");
        // Returns once the view exists: later writes are not in it.
        let _ = taken.recv();
        done
    }

    /// Key-value pairs in `[from, to)`, in order: at most `max_entries` of them, and no more once
    /// their values reach `max_bytes` (the first pair always comes, whatever its size). Stops
    /// iterating at the budget, so a read never holds more than it returns.
    pub(crate) fn range_cf(
        &self,
        cf: Cf,
        from: &[u8],
        to: &[u8],
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<RawPair>, Error> {
        self.range_cf_tier(cf, from, to, max_entries, max_bytes, ReadTier::All)?
            .ok_or_else(|| Error::Read("RocksDB reported a full read incomplete".to_string()))
    }

    /// [`Engine::range_cf`] only if that needs no file read (memtables and block cache):
    /// `Ok(None)` means some of it is on disk, so read it off the runtime threads instead.
    /// Never waits on I/O, so it may run on a runtime thread.
    pub(crate) fn range_cf_if_cached(
        &self,
        cf: Cf,
        from: &[u8],
        to: &[u8],
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<RawPair>>, Error> {
        if self.inner.faults.force_blocking_pool.load(Ordering::Relaxed) {
            return Ok(None);
        }
        self.range_cf_tier(cf, from, to, max_entries, max_bytes, ReadTier::BlockCache)
    }

    fn range_cf_tier(
        &self,
        cf: Cf,
        from: &[u8],
        to: &[u8],
        max_entries: usize,
        max_bytes: usize,
        tier: ReadTier,
    ) -> Result<Option<Vec<RawPair>>, Error> {
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(to.to_vec());
        read_options.set_read_tier(tier);
        let iterator = self.inner.db.iterator_cf_opt(
            &self.cf(cf),
            read_options,
            IteratorMode::From(from, Direction::Forward),
        );
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in iterator {
            if out.len() >= max_entries {
                break;
            }
            // The iterator ends with an error, never silently, when the read tier forbids the
            // file read it needs: a cut-short range would look like a short log.
            let (key, value) = match item {
                Ok(pair) => pair,
                Err(error) if error.kind() == ErrorKind::Incomplete => return Ok(None),
                Err(error) => return Err(read_error(error)),
            };
            if !out.is_empty() && bytes.saturating_add(value.len()) > max_bytes {
                break;
            }
            bytes += value.len();
            out.push((key.into_vec(), value.into_vec()));
        }
        Ok(Some(out))
    }

    /// Calls `visit` with every key in `[from, to)`, in order, without copying values.
    pub(crate) fn for_each_key(
        &self,
        cf: Cf,
        from: &[u8],
        to: &[u8],
        mut visit: impl FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(to.to_vec());
        let mut iterator = self.inner.db.raw_iterator_cf_opt(&self.cf(cf), read_options);
        iterator.seek(from);
        while iterator.valid() {
            if let Some(key) = iterator.key() {
                visit(key)?;
            }
            iterator.next();
        }
        iterator.status().map_err(read_error)
    }

    /// The last key-value pair in `[from, to)`.
    pub(crate) fn last_in_range(&self, cf: Cf, from: &[u8], to: &[u8]) -> Result<Option<RawPair>, Error> {
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_lower_bound(from.to_vec());
        read_options.set_iterate_upper_bound(to.to_vec());
        let mut iterator = self
            .inner
            .db
            .iterator_cf_opt(&self.cf(cf), read_options, IteratorMode::End);
        match iterator.next() {
            Some(item) => {
                let (key, value) = item.map_err(read_error)?;
                Ok(Some((key.to_vec(), value.to_vec())))
            }
            None => Ok(None),
        }
    }

    /// Runs `read` against a point-in-time view of the whole database.
    pub(crate) fn read_at_snapshot<T>(
        &self,
        read: impl FnOnce(&View<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let snapshot = self.inner.db.snapshot();
        read(&View {
            engine: self,
            snapshot,
        })
    }
}

/// A consistent point-in-time view of the database.
pub(crate) struct View<'a> {
    engine: &'a Engine,
    snapshot: rocksdb::SnapshotWithThreadMode<'a, Db>,
}

impl View<'_> {
    pub(crate) fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.snapshot.get_cf(&self.engine.cf(cf), key).map_err(read_error)
    }

    /// Calls `visit` for each pair in `[from, to)` (`to = None`: to the end), in order.
    pub(crate) fn for_each(
        &self,
        cf: Cf,
        from: &[u8],
        to: Option<&[u8]>,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut read_options = ReadOptions::default();
        if let Some(to) = to {
            read_options.set_iterate_upper_bound(to.to_vec());
        }
        let iterator = self.snapshot.iterator_cf_opt(
            &self.engine.cf(cf),
            read_options,
            IteratorMode::From(from, Direction::Forward),
        );
        for item in iterator {
            let (key, value) = item.map_err(read_error)?;
            visit(&key, &value)?;
        }
        Ok(())
    }
}

/// A RocksDB read error: corruption (a checksum mismatch) and a failed disk read are told apart
/// from conditions that pass (busy, try again, incomplete).
pub(super) fn read_error(error: rocksdb::Error) -> Error {
    match error.kind() {
        ErrorKind::Corruption => Error::Corruption {
            what: "stored data".into(),
            detail: error.into_string(),
        },
        ErrorKind::IOError => Error::Io(error.into_string()),
        _ => Error::Read(error.into_string()),
    }
}

//! openraft log storage for one shard, over the node's shared engine. Appends are written at once
//! (readable on return) and acknowledged through the node-wide syncer after the WAL fsync that
//! covers them; vote, truncation and purge wait for durability before returning.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::Ordering;

use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};

use crate::codec;
use crate::error::Error;
use crate::keys::{self, STATE_COMMITTED, STATE_PURGED, STATE_VOTE};
use crate::rocks::{Cf, Engine, WriteOps};
use crate::syncer::Waiter;
use crate::types::{ShardId, TypeConfig};

type Entry = EntryOf<TypeConfig>;
type LogId = LogIdOf<TypeConfig>;
type Vote = VoteOf<TypeConfig>;

/// Most entries returned by one read, so a reader asking for a huge range cannot exhaust memory.
const MAX_ENTRIES_PER_READ: usize = 4096;

/// The Raft log and vote of one shard replica. Cheap to clone (it is also its own log reader).
#[derive(Clone)]
pub struct LogStore {
    engine: Engine,
    shard: ShardId,
}

impl LogStore {
    pub(crate) fn new(engine: Engine, shard: ShardId) -> Self {
        LogStore { engine, shard }
    }

    fn read_state<T: serde::de::DeserializeOwned>(&self, tag: u8, what: &str) -> Result<Option<T>, Error> {
        self.engine
            .get_cf(Cf::State, &keys::state_key(self.shard, tag))?
            .map(|bytes| codec::decode(&bytes, &format!("{what} of shard {}", self.shard)))
            .transpose()
    }

    fn entries(&self, from: u64, to: Option<u64>) -> Result<Vec<Entry>, Error> {
        let (start, end) = keys::log_range(self.shard, from, to);
        let mut entries = Vec::new();
        for (key, value) in self
            .engine
            .range_cf(Cf::Log, &start, &end, MAX_ENTRIES_PER_READ)?
        {
            let index = keys::log_key_index(&key).unwrap_or_default();
            let entry: Entry = codec::decode_entry(&value, self.shard, index)?;
            if entry.log_id.index != index {
                return Err(Error::Corruption {
                    what: format!("log entry {index} of shard {}", self.shard),
                    detail: format!(
                        "stored under index {index} but holds index {}",
                        entry.log_id.index
                    ),
                });
            }
            if let Some(previous) = entries.last().map(|e: &Entry| e.log_id.index)
                && previous + 1 != index
            {
                return Err(Error::Corruption {
                    what: format!("log of shard {}", self.shard),
                    detail: format!("hole between entries {previous} and {index}"),
                });
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
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
        Ok(self.entries(from, to)?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.read_state(STATE_VOTE, "vote")?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = self.read_state(STATE_PURGED, "last purged log id")?;
        let (start, end) = keys::log_range(self.shard, 0, None);
        let last_log_id = match self.engine.last_in_range(Cf::Log, &start, &end)? {
            Some((key, value)) => {
                let index = keys::log_key_index(&key).unwrap_or_default();
                let entry: Entry = codec::decode_entry(&value, self.shard, index)?;
                Some(entry.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
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
        self.engine.write_ops(ops, false)?;
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
        self.engine.write_ops(ops, false)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self
            .read_state::<Option<LogId>>(STATE_COMMITTED, "committed log id")?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut ops = WriteOps::default();
        for entry in entries {
            ops.put(
                Cf::Log,
                keys::log_key(self.shard, entry.log_id.index),
                codec::encode_entry(&entry),
            );
        }
        if ops.is_empty() {
            callback.io_completed(Ok(()));
            return Ok(());
        }
        // Written now (readable when this returns); acknowledged only after the fsync.
        self.engine.write_ops(ops, false)?;
        self.engine
            .syncer()
            .counters
            .appends
            .fetch_add(1, Ordering::AcqRel);
        self.engine.syncer().enqueue(Waiter::Append(callback));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        let (start, end) = keys::log_range(self.shard, from, None);
        let mut ops = WriteOps::default();
        ops.delete_range(Cf::Log, start, end);
        self.engine.write_ops(ops, false)?;
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
        self.engine.write_ops(ops, false)?;
        self.engine.syncer().sync().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::alias::EntryOf;
    use openraft::type_config::TypeConfigExt;
    use openraft::{Entry, EntryPayload};

    use super::*;
    use crate::types::Command;

    #[tokio::test]
    async fn a_corrupted_log_entry_is_an_error_not_a_skip() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let mut store = engine.log_store(1);
        let entries: Vec<EntryOf<TypeConfig>> = (1..=3)
            .map(|index| Entry {
                log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
                payload: EntryPayload::Normal(Command::Delete { key: b"k".to_vec() }),
            })
            .collect();
        let (sender, receiver) = TypeConfig::oneshot();
        store.append(entries, IOFlushed::signal(sender)).await.unwrap();
        receiver.await.unwrap().unwrap();

        // Flip one bit of entry 2 as stored.
        let key = keys::log_key(1, 2);
        let mut bytes = engine.get_cf(Cf::Log, &key).unwrap().unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let mut ops = WriteOps::default();
        ops.put(Cf::Log, key, bytes);
        engine.write_ops(ops, true).unwrap();

        let error = store.try_get_log_entries(1..=3).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("log entry 2 of shard 1"), "{error}");
        assert!(error.to_string().contains("checksum mismatch"), "{error}");
        // Entry 1, before the damage, still reads.
        assert_eq!(store.try_get_log_entries(1..2).await.unwrap().len(), 1);
    }
}

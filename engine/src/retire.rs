//! Which replica owns a shard's state on this node, and deleting that state when the replica moves
//! away.
//!
//! The engine keys a replica's log, Raft state, applied state and request-id table by shard id, so
//! a node holds at most one replica of a shard. When a replica leaves and the node later gets a new
//! replica of the same shard (a fresh replica id, as every move gets), the new replica must start
//! from nothing: openraft would otherwise replay the old replica's log and vote as its own. The
//! owner record (`META_OWNER`) says which replica id the stored state belongs to, and
//! `delete_replica` removes all of it in one durable batch: a crash leaves the state whole or gone.
//!
//! Stopping a Raft group does not stop every task that writes for it: openraft's state-machine
//! worker and snapshot builds run on until they notice. A write landing after the deletion would
//! leave state with no owner, or worse, mixed into a new replica's. So a replica's log, state
//! machine and snapshots write through an engine handle carrying the replica's fence, and
//! `retire_replica` closes the fence (waiting for writes under way) before it deletes.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use crate::codec;
use crate::error::Error;
use crate::keys::{self, META_OWNER};
use crate::rocks::{Cf, Engine, HashRange, WriteOps};
use crate::types::{ReplicaId, ShardId};

/// Shared by the engine handles one replica writes through. Writes hold it open (shared);
/// retiring the replica closes it (exclusive), after which every write is refused.
#[derive(Clone, Debug)]
pub(crate) struct Fence {
    shard: ShardId,
    retired: Arc<RwLock<bool>>,
}

impl Fence {
    pub(crate) fn new(shard: ShardId) -> Fence {
        Fence {
            shard,
            retired: Arc::default(),
        }
    }

    /// Holds the fence open for one write; refuses if the replica was retired.
    pub(crate) fn enter(&self) -> Result<RwLockReadGuard<'_, bool>, Error> {
        let retired = self
            .retired
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *retired {
            return Err(Error::Retired { shard: self.shard });
        }
        Ok(retired)
    }

    /// Refuses every later write; returns once writes under way have finished.
    fn close(&self) {
        *self
            .retired
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
    }
}

impl Engine {
    /// Retires this node's replica of `shard` and deletes its state (see `delete_replica`): no
    /// write through a handle the replica was given lands after this returns. A replica started
    /// here later gets a new fence. Call on the blocking pool: it waits for writes under way.
    pub fn retire_replica(&self, shard: ShardId, range: HashRange) -> Result<(), Error> {
        if let Some(fence) = self.fences().remove(&shard) {
            fence.close();
        }
        self.delete_replica(shard, range)
    }

    /// The replica id whose state this node holds for `shard`, if it recorded one. State written
    /// before owners were recorded has none.
    pub fn replica_owner(&self, shard: ShardId) -> Result<Option<ReplicaId>, Error> {
        let Some(bytes) = self.get_cf(Cf::Meta, &keys::shard_meta_key(shard, META_OWNER))? else {
            return Ok(None);
        };
        let raw: u64 = codec::decode(&bytes, &format!("owner record of shard {shard}"))?;
        Ok(Some(ReplicaId(raw)))
    }

    /// Records that the state of `shard` on this node belongs to `replica` (durable on return).
    pub fn set_replica_owner(&self, shard: ShardId, replica: ReplicaId) -> Result<(), Error> {
        let mut ops = WriteOps::default();
        ops.put(
            Cf::Meta,
            keys::shard_meta_key(shard, META_OWNER),
            codec::encode(&replica.0),
        );
        self.write_ops(ops, true)
    }

    /// Whether this node holds any state of `shard`: a log, a vote, an applied state.
    pub fn has_replica_state(&self, shard: ShardId) -> Result<bool, Error> {
        Ok(self.stored_shards()?.contains(&shard))
    }

    /// Every shard this node holds some state of (Raft state or shard records, which every
    /// replica started here has: its owner record).
    pub fn stored_shards(&self) -> Result<BTreeSet<ShardId>, Error> {
        let mut shards = BTreeSet::new();
        self.for_each_key(Cf::State, &[], &[0xff; 9], |key| {
            if let Some(raw) = key.get(..8) {
                shards.insert(ShardId(u64::from_be_bytes(raw.try_into().expect("8 bytes"))));
            }
            Ok(())
        })?;
        self.for_each_key(Cf::Meta, b"s", b"t", |key| {
            if let Some(raw) = key.get(1..9) {
                shards.insert(ShardId(u64::from_be_bytes(raw.try_into().expect("8 bytes"))));
            }
            Ok(())
        })?;
        // Not the log: it is large, and a replica with a log has its owner record too.
        Ok(shards)
    }

    /// Deletes everything this node holds of `shard`: its log, vote and commit records, applied
    /// state, snapshot records and files, owner record, request-id table and its keys: those of
    /// the range its applied state records (`range` if it records none), short of the range of
    /// any shard split off it whose state this node holds. One durable batch, then the snapshot
    /// files. The shard's Raft group must be stopped first.
    pub fn delete_replica(&self, shard: ShardId, range: HashRange) -> Result<(), Error> {
        // A damaged applied state must not stop the deletion (it may be why the replica goes).
        let mut range = self.range_of(shard).ok().flatten().unwrap_or(range);
        for other in self.stored_shards()? {
            // The metadata group's keys live in a column family of their own: no data shard's
            // range is carved out of its deletion, nor its range out of theirs.
            if other == shard || other.is_meta() || shard.is_meta() {
                continue;
            }
            if let Some(theirs) = self.range_of(other).ok().flatten()
                && theirs.start > range.start
                && theirs.start <= range.end
            {
                range.end = theirs.start - 1;
            }
        }
        let mut ops = crate::snapshot::clear_ops(shard, range);
        let (log_start, log_end) = keys::log_range(shard, 0, None);
        ops.delete_range(Cf::Log, log_start.to_vec(), log_end);
        ops.delete_range(
            Cf::State,
            keys::state_key(shard, 0).to_vec(),
            (shard.0 + 1).to_be_bytes().to_vec(),
        );
        ops.delete_range(
            Cf::Meta,
            keys::shard_meta_key(shard, 0).to_vec(),
            keys::shard_meta_key(ShardId(shard.0 + 1), 0).to_vec(),
        );
        self.write_ops(ops, true)?;
        self.clear_digests(shard);
        let dir = self.snapshot_dir(shard);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            // The files are dead weight, not state: the records that named them are gone.
            Err(error) => Err(Error::Snapshot {
                path: dir,
                message: format!("cannot delete the snapshot files of a removed replica: {error}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{META_APPLIED, STATE_VOTE};

    /// Writes one record of every kind a replica of `shard` holds, with a data key at `hash`.
    fn fill(engine: &Engine, shard: ShardId, hash: u64) {
        let mut ops = WriteOps::default();
        ops.put(Cf::Log, keys::log_key(shard, 7).to_vec(), b"entry".to_vec());
        ops.put(
            Cf::State,
            keys::state_key(shard, STATE_VOTE).to_vec(),
            b"vote".to_vec(),
        );
        ops.put(
            Cf::Meta,
            keys::shard_meta_key(shard, META_APPLIED).to_vec(),
            b"applied".to_vec(),
        );
        ops.put(
            Cf::Sessions,
            keys::session_key(shard, 1, 1).to_vec(),
            b"result".to_vec(),
        );
        let mut data_key = hash.to_be_bytes().to_vec();
        data_key.extend_from_slice(b"key");
        ops.put(Cf::keys_of(shard), data_key, b"value".to_vec());
        engine.write_ops(ops, true).expect("write");
    }

    /// The metadata group's keys (`meta_kv`) have hashes anywhere on the ring, like data keys.
    /// Deleting its replica once carved the ranges of the data shards stored here out of its
    /// deletion, as for a split parent, and left its keys behind.
    #[test]
    fn deleting_a_metadata_replica_deletes_every_one_of_its_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(dir.path()).expect("open");
        let whole = HashRange {
            start: 0,
            end: u64::MAX,
        };
        // A data shard stored here, owning the upper half.
        let data = ShardId(2);
        fill(&engine, data, 1 << 63);
        let mut ops = WriteOps::default();
        ops.put(
            Cf::Meta,
            keys::shard_meta_key(data, META_APPLIED).to_vec(),
            crate::codec::encode(&crate::state_machine::AppliedState {
                range: Some(HashRange {
                    start: 1 << 63,
                    end: u64::MAX,
                }),
                ..Default::default()
            }),
        );
        engine.write_ops(ops, true).expect("write");
        // Metadata keys on both sides of the data shard's start.
        for hash in [1u64 << 40, (1 << 63) + 5, u64::MAX - 1] {
            let mut key = hash.to_be_bytes().to_vec();
            key.extend_from_slice(b"map");
            let mut ops = WriteOps::default();
            ops.put(Cf::MetaKv, key, b"v".to_vec());
            engine.write_ops(ops, true).expect("write");
        }
        engine.delete_replica(ShardId::META, whole).expect("delete");
        let mut left = 0;
        engine
            .for_each_key(Cf::MetaKv, &[], &[0xff; 32], |_| {
                left += 1;
                Ok(())
            })
            .expect("scan");
        assert_eq!(left, 0, "metadata keys left behind");
        // The data shard's key is untouched.
        let mut data_keys = 0;
        engine
            .for_each_key(Cf::Data, &[], &[0xff; 32], |_| {
                data_keys += 1;
                Ok(())
            })
            .expect("scan");
        assert_eq!(data_keys, 1);
    }

    #[test]
    fn deleting_a_replica_removes_all_of_its_state_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(dir.path()).expect("open");
        let (kept, gone) = (ShardId(5), ShardId(6));
        let gone_range = HashRange {
            start: 1 << 62,
            end: (1 << 63) - 1,
        };
        fill(&engine, kept, 1 << 61);
        fill(&engine, gone, 1 << 62);
        engine.set_replica_owner(gone, ReplicaId(42)).expect("owner");
        assert_eq!(engine.replica_owner(gone).expect("read"), Some(ReplicaId(42)));
        assert_eq!(
            engine.stored_shards().expect("list"),
            [kept, gone].into_iter().collect()
        );

        engine.delete_replica(gone, gone_range).expect("delete");
        assert_eq!(
            engine.stored_shards().expect("list"),
            [kept].into_iter().collect()
        );
        assert_eq!(engine.replica_owner(gone).expect("read"), None);
        let count = |cf: Cf| {
            let mut n = 0;
            engine
                .for_each_key(cf, &[], &[0xff; 32], |_| {
                    n += 1;
                    Ok(())
                })
                .expect("scan");
            n
        };
        // The kept shard's one record of each kind is all that is left.
        for cf in [Cf::Log, Cf::State, Cf::Meta, Cf::Sessions, Cf::Data] {
            assert_eq!(count(cf), 1, "{cf:?}");
        }
    }
}

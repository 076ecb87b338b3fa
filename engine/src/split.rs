//! Splitting a shard in place. A data key starts with the hash of its user key, so the keys of
//! any hash range are one contiguous run of the `data` column family: a split moves no data. The
//! `Split` command in the parent's log, applied at the same index on every replica, does three
//! things in the batch that records it as applied:
//! 1. the parent's range (in its applied state) ends before `at`: from then on its commands on
//!    keys at or past `at` are answered `NotInShard` and change nothing, and its reads, scans,
//!    digests and snapshots leave those keys out;
//! 2. the child's state is created: its applied state (range `[at, end]`, the parent's log clock,
//!    the membership of the split's replicas, all as of the "origin" log id at the split's index),
//!    its log purged up to that id, and a copy of the parent's request-id table, so a retry of a
//!    write the parent applied is still answered from the table after it re-routes to the child;
//! 3. nothing else: the child's keys stay where they are.
//!
//! The child's log continues at the split index + 1, so every version it writes is above every
//! version the parent wrote before the split: a compare-and-swap on a version never meets an old
//! version again. The origin log id has term 0 (below any term the child's elections use).
//!
//! A node must never run a child replica while its replica of the parent still owns the child's
//! range (it would apply, late, parent entries over the child's newer writes): the node starts
//! its child replica only once its parent replica's range no longer overlaps it (`range_of`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::alias::{LeaderIdOf, LogIdOf, StoredMembershipOf};
use openraft::vote::RaftLeaderIdExt;
use openraft::{LogId, Membership};

use crate::codec;
use crate::error::Error;
use crate::keys::{self, META_APPLIED, META_OWNER, STATE_PURGED};
use crate::rocks::{Cf, Engine, HashRange, WriteOps};
use crate::state_machine::{AppliedState, read_applied};
use crate::types::{LogIndex, ReplicaId, ReplicaNode, ShardId, TypeConfig};

/// Request-id rows copied per read while copying a parent's table.
const COPY_CHUNK: usize = 4096;

/// A shard replica's current range, shared between its state machine (which shrinks it when it
/// applies a split or installs a snapshot of a later range) and the node serving its requests,
/// with the log index it holds from (the last split's). A shard's range only ever keeps its
/// start, so only the end moves.
#[derive(Debug, Clone)]
pub struct ShardRange {
    start: u64,
    end: Arc<AtomicU64>,
    since: Arc<AtomicU64>,
}

impl ShardRange {
    pub(crate) fn new(range: HashRange, since: LogIndex) -> ShardRange {
        ShardRange {
            start: range.start,
            end: Arc::new(AtomicU64::new(range.end)),
            since: Arc::new(AtomicU64::new(since)),
        }
    }

    pub fn get(&self) -> HashRange {
        HashRange {
            start: self.start,
            end: self.end.load(Ordering::Acquire),
        }
    }

    /// The log index from which the range holds: that of the last split that shrank it or
    /// created the shard (0: never split).
    pub fn since(&self) -> LogIndex {
        self.since.load(Ordering::Acquire)
    }

    pub(crate) fn set(&self, range: HashRange, since: LogIndex) {
        debug_assert_eq!(range.start, self.start, "a shard's range keeps its start");
        // The index first: whoever sees the new end also sees the index it holds from.
        self.since.store(since, Ordering::Release);
        self.end.store(range.end, Ordering::Release);
    }
}

/// The log id a split child's state starts from: the split's index, term 0.
pub(crate) fn origin_log_id(index: LogIndex) -> LogIdOf<TypeConfig> {
    LogId::new(
        <LeaderIdOf<TypeConfig> as RaftLeaderIdExt>::new_committed(0, ReplicaId(0)),
        index,
    )
}

/// The writes that create the state of `child` on this node, split off `parent` at `index`
/// (step 2 of the module header); nothing if the node holds state of `child` already (its
/// replica was started from a snapshot, or the split was applied before).
pub(crate) fn child_state_ops(
    engine: &Engine,
    parent: ShardId,
    parent_applied: &AppliedState,
    child: ShardId,
    child_range: HashRange,
    replicas: &[(ReplicaId, ReplicaNode)],
    index: LogIndex,
) -> Result<WriteOps, Error> {
    let mut ops = WriteOps::default();
    let has_state = engine
        .get_cf(Cf::Meta, &keys::shard_meta_key(child, META_APPLIED))?
        .is_some()
        || engine
            .get_cf(Cf::Meta, &keys::shard_meta_key(child, META_OWNER))?
            .is_some();
    if has_state {
        return Ok(ops);
    }
    let origin = origin_log_id(index);
    let voters: BTreeSet<ReplicaId> = replicas.iter().map(|(id, _)| *id).collect();
    let nodes: BTreeMap<ReplicaId, ReplicaNode> = replicas.iter().cloned().collect();
    let membership = Membership::new(vec![voters], nodes).map_err(|error| Error::Corruption {
        what: format!("split of shard {parent} into shard {child}"),
        detail: format!("the split's replicas make no valid membership: {error}"),
    })?;
    let applied = AppliedState {
        last_applied: Some(origin),
        membership: StoredMembershipOf::<TypeConfig>::new(Some(origin), membership),
        clock: parent_applied.clock,
        range: Some(child_range),
        range_since: index,
    };
    ops.put(
        Cf::Meta,
        keys::shard_meta_key(child, META_APPLIED),
        codec::encode(&applied),
    );
    ops.put(
        Cf::State,
        keys::state_key(child, STATE_PURGED),
        codec::encode(&origin),
    );
    let (start, end) = keys::session_range(parent);
    let mut from = start.to_vec();
    loop {
        let rows = engine.range_cf(Cf::Sessions, &from, &end, COPY_CHUNK, usize::MAX)?;
        let Some((last, _)) = rows.last() else { break };
        let mut next = last.clone();
        next.push(0);
        let full = rows.len() == COPY_CHUNK;
        for (key, value) in rows {
            if let Some((client, seq)) = keys::session_key_parts(&key) {
                ops.put(
                    Cf::Sessions,
                    keys::session_key(child, client, seq).to_vec(),
                    value,
                );
            }
        }
        if !full {
            break;
        }
        from = next;
    }
    Ok(ops)
}

impl Engine {
    /// Whether the state of `shard` on this node was created by a split for `replica`: it has
    /// applied nothing past the split's origin, and names `replica` a voter.
    pub fn split_born(&self, shard: ShardId, replica: ReplicaId) -> Result<bool, Error> {
        let applied = read_applied(self, shard)?;
        let Some(origin) = applied.last_applied else {
            return Ok(false);
        };
        Ok(origin == origin_log_id(origin.index)
            && applied
                .membership
                .membership()
                .voter_ids()
                .any(|voter| voter == replica))
    }

    /// The range the state of `shard` on this node owns, if it records one: the range of its
    /// last apply, install or split. `None` for a shard with no applied state yet.
    pub fn range_of(&self, shard: ShardId) -> Result<Option<HashRange>, Error> {
        Ok(read_applied(self, shard)?.range)
    }
}

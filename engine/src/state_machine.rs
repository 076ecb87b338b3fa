//! openraft state machine for one shard: applies commands to the shard's data keys, recording the
//! applied log id, membership, log clock and request-id table in the same atomic batch as the data
//! they describe. Applies are not fsynced: after a crash the node replays the log from the durable
//! applied id.
//!
//! A committed run is applied in groups of bounded size, each answered only after its batch is
//! written. A group that reads nothing from RocksDB (puts, on a loaded request-id table, no
//! duplicate to look up, at most `IN_PLACE_APPLY_BYTES`) is applied on the calling thread and
//! written with `Engine::write_unsynced` (a memtable insert, refused rather than delayed in a write
//! stall); any other group goes to tokio's blocking pool, whose hand-off costs two thread wake-ups.
//! A `Digest` command ends a group: the state as of that index is hashed on a point-in-time view in
//! the background while applying goes on. A `Split` command ends a group too (see `split.rs`).
//!
//! The shard's range is part of its applied state: a command on a key outside it is answered
//! `NotInShard` and changes nothing, on every replica alike.

use std::io;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use openraft::EntryPayload;
use openraft::alias::{EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::codec;
use crate::error::Error;
use crate::keys::{self, META_APPLIED};
use crate::progress::AppliedBound;
use crate::rocks::{Cf, DigestState, Engine, HashRange, View, WriteOps};
use crate::sessions::{self, Admission, SessionClock, Sessions};
use crate::snapshot::{self, SnapshotBuilder, SnapshotFile};
use crate::split::{ShardRange, child_state_ops};

mod overlay;

use crate::types::{
    BatchOp, Command, CommandResult, Expect, LogIndex, Proposal, RequestId, ShardId, TypeConfig,
};
use overlay::Overlay;

type LogId = LogIdOf<TypeConfig>;
type StoredMembership = StoredMembershipOf<TypeConfig>;
type Entry = EntryOf<TypeConfig>;

/// Most entries applied in one batch, and most bytes of commands: bounds the memory an apply of a
/// huge committed range holds at once.
const APPLY_GROUP_ENTRIES: usize = 1024;
const APPLY_GROUP_BYTES: usize = 16 * 1024 * 1024;
/// Largest group applied on the calling thread: its batch is a memtable insert of microseconds.
const IN_PLACE_APPLY_BYTES: usize = 1024 * 1024;

/// What the state machine has applied, stored with the data of each apply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct AppliedState {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub clock: SessionClock,
    /// The hashes the shard owns; `None` until the first apply of a replica opened before the
    /// range was recorded (it then owns the range it was opened with).
    pub range: Option<HashRange>,
    /// The log index from which `range` holds: the index of the last split that shrank it, or
    /// of the split that created the shard (0: never split).
    pub range_since: LogIndex,
}

/// The applied state as record version 3 wrote it, before `range_since`.
#[derive(Deserialize)]
struct AppliedStateV3 {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    clock: SessionClock,
    range: Option<HashRange>,
}

impl AppliedState {
    /// Decodes a stored applied state of this build's version or the one before.
    pub(crate) fn decode(bytes: &[u8], shard: ShardId) -> Result<AppliedState, Error> {
        let what = format!("applied state of shard {shard}");
        Ok(
            match codec::decode_versioned::<AppliedStateV3, AppliedState>(bytes, &what)? {
                Ok(state) => state,
                // A range recorded before `range_since` existed: its last split's index is not
                // known, and 0 asks nothing of a new replica, as before.
                Err(old) => AppliedState {
                    last_applied: old.last_applied,
                    membership: old.membership,
                    clock: old.clock,
                    range: old.range,
                    range_since: 0,
                },
            },
        )
    }
}

pub struct StateMachine {
    engine: Engine,
    shard: ShardId,
    /// The range as of the last apply or install, shared with the node serving the replica.
    range: ShardRange,
    /// The applied state as of the last apply or install; the copy on disk is authoritative.
    applied: AppliedState,
    /// Raised before each write of applied state (see `progress`).
    bound: AppliedBound,
    /// `None` only while an apply group holds it on the blocking pool.
    sessions: Option<Sessions>,
    /// Serializes changes of the shard's current snapshot between builders and installs.
    snapshot_lock: Arc<Mutex<()>>,
}

impl StateMachine {
    pub(crate) fn open(engine: Engine, shard: ShardId, range: HashRange) -> Result<StateMachine, Error> {
        let snapshot_lock = Arc::new(Mutex::new(()));
        // A snapshot install interrupted by a crash is finished before anything reads the shard.
        let stored = read_applied(&engine, shard)?.range.unwrap_or(range);
        snapshot::resume_install(&engine, shard, stored, &snapshot_lock)?;
        // Read after the install, which may have changed it.
        let mut applied = read_applied(&engine, shard)?;
        let range = *applied.range.get_or_insert(stored);
        let sessions = Sessions::load(&engine, shard)?;
        Ok(StateMachine {
            engine,
            shard,
            range: ShardRange::new(range, applied.range_since),
            bound: AppliedBound::new(applied.last_applied.map_or(0, |id| id.index)),
            applied,
            sessions: Some(sessions),
            snapshot_lock,
        })
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The shard's range as this replica applies it, kept current by later applies.
    pub fn range(&self) -> ShardRange {
        self.range.clone()
    }

    /// The bound on what reads of this replica may have seen, kept current by later applies.
    pub fn applied_bound(&self) -> AppliedBound {
        self.bound.clone()
    }

    /// Clients with a session in this shard's request-id table.
    pub fn sessions(&self) -> usize {
        self.sessions.as_ref().map_or(0, Sessions::len)
    }

    /// The stored result of `request`, as a retry of it would be answered; `None` when the table
    /// holds none (never applied, below its client's floor, or expired). For diagnostics and tests.
    pub fn stored_result(&self, request: RequestId) -> Result<Option<CommandResult>, Error> {
        match self.engine.get_cf(
            Cf::Sessions,
            &keys::session_key(self.shard, request.client, request.seq),
        )? {
            Some(bytes) => Ok(Some(codec::decode(&bytes, "stored request result")?)),
            None => Ok(None),
        }
    }
}

pub(crate) fn read_applied(engine: &Engine, shard: ShardId) -> Result<AppliedState, Error> {
    Ok(
        match engine.get_cf(Cf::Meta, &keys::shard_meta_key(shard, META_APPLIED))? {
            Some(bytes) => AppliedState::decode(&bytes, shard)?,
            None => AppliedState::default(),
        },
    )
}

/// What an apply group works on; moved to the blocking pool and back.
struct ApplyState {
    applied: AppliedState,
    sessions: Sessions,
}

/// Answers each applied entry's waiting client, if any. Called only after the group's batch is
/// written, so a read after the answer sees it.
fn answer(
    responders: Vec<Option<openraft::storage::ApplyResponder<TypeConfig>>>,
    results: Vec<CommandResult>,
) {
    for (responder, result) in responders.into_iter().zip(results) {
        if let Some(responder) = responder {
            responder.send(result);
        }
    }
}

/// Whether applying `entry` reads nothing from RocksDB, given the loaded request-id table: blank
/// and membership entries, and puts whose request id is not already answered (a duplicate's
/// stored result would be read). Deletes, compare-and-swaps and batches read current values;
/// digests write mid-group.
fn reads_nothing(entry: &Entry, sessions: &Sessions) -> bool {
    match &entry.payload {
        EntryPayload::Blank | EntryPayload::Membership(_) => true,
        EntryPayload::Normal(proposal) => {
            matches!(proposal.command, Command::Put { .. })
                && proposal
                    .request
                    .is_none_or(|request| !sessions.has_result(request))
        }
    }
}

/// Applies `entries` (consecutive, committed) to the shard and returns one result per entry, and
/// the batch to write (the group's data, request-id rows and applied state). Reads RocksDB on the
/// calling thread when an entry needs it (see `reads_nothing`), and a digest entry writes what
/// came before it.
fn apply_group(
    engine: &Engine,
    shard: ShardId,
    shard_range: &ShardRange,
    state: &mut ApplyState,
    entries: Vec<Entry>,
    next_index: &mut Option<LogIndex>,
) -> Result<(Vec<CommandResult>, WriteOps), Error> {
    let mut range = state.applied.range.unwrap_or_else(|| shard_range.get());
    let mut overlay = Overlay::new(engine, shard, range);
    let mut results = Vec::with_capacity(entries.len());
    for entry in entries {
        let index = entry.log_id.index;
        // The entries of one apply call are a committed range, one after another: a gap means
        // entries were skipped, which would leave this replica silently different from the
        // others. Refuse, loudly. (Between calls openraft may move on, e.g. past an installed
        // snapshot; its storage suite applies such ranges. A range cut short at its end is caught
        // by the log store, which knows the committed index.)
        if let Some(expected) = *next_index
            && index != expected
        {
            return Err(Error::Corruption {
                what: format!("apply of shard {shard}"),
                detail: format!(
                    "entry {index} came to be applied after entry {}; entries were skipped",
                    expected - 1
                ),
            });
        }
        *next_index = Some(index + 1);
        let result = match entry.payload {
            EntryPayload::Blank => CommandResult::None,
            EntryPayload::Membership(membership) => {
                state.applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                CommandResult::None
            }
            EntryPayload::Normal(proposal) => {
                let Proposal {
                    request,
                    client_floor,
                    proposed_at_ms,
                    command,
                } = proposal;
                let clock = &mut state.applied.clock;
                clock.now_ms = clock.now_ms.max(proposed_at_ms);
                state.sessions.sweep_if_due(shard, clock, &mut overlay.ops);
                let now_ms = clock.now_ms;
                if command == Command::Digest {
                    state.applied.last_applied = Some(entry.log_id);
                    // The digest must see exactly the state at this index: write what came
                    // before (and the applied id) first.
                    let before = std::mem::replace(&mut overlay, Overlay::new(engine, shard, range));
                    engine.write_ops(before.finish(shard, &state.applied), false)?;
                    start_digest(engine, shard, range, index);
                    results.push(CommandResult::None);
                    continue;
                }
                if let Command::Split { at, child, replicas } = &command {
                    let result = if range.start < *at && *at <= range.end {
                        // Write what came before first: the child's copy of the request-id
                        // table must hold the rows this group wrote.
                        let before = std::mem::replace(&mut overlay, Overlay::new(engine, shard, range));
                        if !before.ops.is_empty() {
                            engine.write_ops(before.finish(shard, &state.applied), false)?;
                        }
                        let child_range = HashRange {
                            start: *at,
                            end: range.end,
                        };
                        range = HashRange {
                            start: range.start,
                            end: *at - 1,
                        };
                        state.applied.range = Some(range);
                        state.applied.range_since = index;
                        state.applied.last_applied = Some(entry.log_id);
                        let mut ops = child_state_ops(
                            engine,
                            shard,
                            &state.applied,
                            *child,
                            child_range,
                            replicas,
                            index,
                        )?;
                        ops.put(
                            Cf::Meta,
                            keys::shard_meta_key(shard, META_APPLIED),
                            codec::encode(&state.applied),
                        );
                        engine.write_ops(ops, false)?;
                        shard_range.set(range, index);
                        overlay = Overlay::new(engine, shard, range);
                        info!(
                            shard_id = %shard, child_shard_id = %child, index,
                            "applied a split: the child shard owns {:#018x}..={:#018x}",
                            child_range.start, child_range.end
                        );
                        CommandResult::None
                    } else {
                        // Applied before (the split was proposed twice), or never meant for this
                        // range.
                        CommandResult::NotInShard
                    };
                    state.applied.last_applied = Some(entry.log_id);
                    results.push(result);
                    continue;
                }
                match request.filter(|request| request.seq != 0) {
                    None => overlay.apply(command, index)?,
                    Some(request) => {
                        match state
                            .sessions
                            .admit(shard, request, client_floor, now_ms, &mut overlay.ops)
                        {
                            Admission::Apply => {
                                let result = overlay.apply(command, index)?;
                                // A command on keys outside the range changed nothing: its request
                                // id stays free, so a retry (routed again after a split, a batch
                                // split again into the pieces each shard now owns) applies.
                                if result != CommandResult::NotInShard {
                                    state.sessions.record(shard, request, &result, &mut overlay.ops);
                                    overlay.results.insert(request, result.clone());
                                }
                                result
                            }
                            Admission::Duplicate => match overlay.results.get(&request) {
                                Some(result) => result.clone(),
                                None => sessions::stored_result(engine, shard, request)?,
                            },
                            Admission::Refused(reason) => CommandResult::Refused { reason },
                        }
                    }
                }
            }
        };
        state.applied.last_applied = Some(entry.log_id);
        results.push(result);
    }
    Ok((results, overlay.finish(shard, &state.applied)))
}

/// Hashes the shard's state as it is now (after the digest entry's index) on a point-in-time view,
/// in the background; records the result in the engine's digest table.
fn start_digest(engine: &Engine, shard: ShardId, range: HashRange, index: LogIndex) {
    engine.set_digest(shard, index, DigestState::Computing);
    let background = engine.clone();
    let done = engine.spawn_view(move |view| shard_digest(view, shard, range));
    std::thread::spawn(move || {
        let state = match done.recv() {
            Ok(Ok((digest, keys))) => DigestState::Done { digest, keys },
            Ok(Err(error)) => {
                warn!(shard_id = %shard, index, %error, "replica check: computing the digest failed");
                DigestState::Failed
            }
            Err(_) => DigestState::Failed,
        };
        background.set_digest(shard, index, state);
    });
}

/// xxh3 of the shard's applied state (log id, membership, log clock), then every data record of
/// the shard's range and every request-id record of the shard, in key order, each framed by its
/// column family and lengths; and how many data and request-id records there were.
pub(crate) fn shard_digest(view: &View<'_>, shard: ShardId, range: HashRange) -> Result<(u64, u64), Error> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let applied = view
        .get(Cf::Meta, &keys::shard_meta_key(shard, META_APPLIED))?
        .unwrap_or_default();
    hasher.update(&(applied.len() as u32).to_le_bytes());
    hasher.update(&applied);
    let mut records = 0u64;
    let mut hash_record = |tag: u8, key: &[u8], value: &[u8]| {
        hasher.update(&[tag]);
        hasher.update(&(key.len() as u32).to_le_bytes());
        hasher.update(key);
        hasher.update(&(value.len() as u32).to_le_bytes());
        hasher.update(value);
        records += 1;
    };
    let (start, end) = keys::data_range(range);
    view.for_each(Cf::keys_of(shard), &start, end.as_deref(), |key, value| {
        hash_record(b'd', key, value);
        Ok(())
    })?;
    let (start, end) = keys::session_range(shard);
    view.for_each(Cf::Sessions, &start, Some(&end), |key, value| {
        hash_record(b's', key, value);
        Ok(())
    })?;
    Ok((hasher.digest(), records))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let shard = self.shard;
        let applied = self
            .engine
            .run_blocking(move |engine| read_applied(engine, shard))
            .await?;
        Ok((applied.last_applied, applied.membership))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        let mut pending: Option<EntryResponder<TypeConfig>> = None;
        // A stream must not be polled again once it has ended.
        let mut ended = false;
        let mut next_index: Option<LogIndex> = None;
        loop {
            // Take a bounded group from the stream (which reads the log in chunks as pulled).
            let mut group = Vec::new();
            let mut responders = Vec::new();
            let mut bytes = 0usize;
            loop {
                let item = match pending.take() {
                    Some(item) => item,
                    None if ended => break,
                    None => match entries.next().await {
                        Some(item) => item?,
                        None => {
                            ended = true;
                            break;
                        }
                    },
                };
                let size = entry_size(&item.0);
                if !group.is_empty()
                    && (group.len() >= APPLY_GROUP_ENTRIES || bytes + size > APPLY_GROUP_BYTES)
                {
                    pending = Some(item);
                    break;
                }
                bytes += size;
                let (entry, responder) = item;
                group.push(entry);
                responders.push(responder);
            }
            if group.is_empty() {
                return Ok(());
            }
            if self
                .engine
                .faults()
                .fail_apply
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                return Err(io::Error::other("apply failed (test switch fail_apply)"));
            }
            let (shard, range) = (self.shard, self.range.clone());
            // Before anything of the group is written (a digest or a split writes mid-group).
            self.bound.raise(group.last().expect("not empty").log_id.index);
            if bytes <= IN_PLACE_APPLY_BYTES
                && !self
                    .engine
                    .faults()
                    .force_blocking_pool
                    .load(std::sync::atomic::Ordering::Relaxed)
                && let Some(sessions) = self.sessions.as_ref()
                && group.iter().all(|entry| reads_nothing(entry, sessions))
            {
                let sessions = self.sessions.take().expect("checked above");
                let mut state = ApplyState {
                    applied: self.applied.clone(),
                    sessions,
                };
                // On an error the session index stays `None` and is reloaded from disk.
                let (results, ops) =
                    apply_group(&self.engine, shard, &range, &mut state, group, &mut next_index)?;
                self.engine.write_unsynced(ops).await?;
                self.applied = state.applied;
                self.sessions = Some(state.sessions);
                answer(responders, results);
                continue;
            }
            let (applied, sessions) = (self.applied.clone(), self.sessions.take());
            // On an error the session index stays `None`, and the next apply reloads it from disk
            // (the in-memory copy may have run ahead of what was written).
            let (state, results, next) = self
                .engine
                .run_blocking(move |engine| -> Result<_, Error> {
                    let sessions = match sessions {
                        Some(sessions) => sessions,
                        None => Sessions::load(engine, shard)?,
                    };
                    let mut state = ApplyState { applied, sessions };
                    let (results, ops) =
                        apply_group(engine, shard, &range, &mut state, group, &mut next_index)?;
                    engine.write_ops(ops, false)?;
                    Ok((state, results, next_index))
                })
                .await?;
            next_index = next;
            self.applied = state.applied;
            self.sessions = Some(state.sessions);
            answer(responders, results);
        }
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder::new(
            self.engine.clone(),
            self.shard,
            self.range.get(),
            self.snapshot_lock.clone(),
        )
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        if let Some(last) = &meta.last_log_id {
            self.bound.raise(last.index);
        }
        let (shard, range, lock, meta) = (
            self.shard,
            self.range.get(),
            self.snapshot_lock.clone(),
            meta.clone(),
        );
        let (applied, sessions) = self
            .engine
            .run_blocking(move |engine| -> Result<(AppliedState, Sessions), Error> {
                let applied = snapshot::install(engine, shard, range, &lock, &meta, &snapshot.path)?;
                Ok((applied, Sessions::load(engine, shard)?))
            })
            .await?;
        // Durable before openraft acts on it (for example by purging the log it replaces).
        self.engine.syncer().sync().await?;
        self.engine.clear_digests(self.shard);
        if let Some(range) = applied.range {
            self.range.set(range, applied.range_since);
        }
        self.applied = applied;
        self.sessions = Some(sessions);
        Ok(())
    }

    /// The shard's current snapshot; built now if there is none while the log is purged (so a
    /// follower behind the purge point can only be sent a snapshot). openraft asks for it when
    /// such a follower needs one, and treats "none" as a fatal storage error of the leader; a
    /// snapshot file can be lost (deleted by hand, or written by an older build, whose format is
    /// not sent), and every replica that may lead must still be able to send one. With nothing
    /// purged, none is needed: followers are sent the log (and openraft asks at startup too, when
    /// building one would only cost time, or fail on a damaged replica before it could be taken
    /// out of service).
    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, SnapshotFile>>, io::Error> {
        let (shard, range, lock) = (self.shard, self.range.get(), self.snapshot_lock.clone());
        let build_missing = !self.engine.faults().no_snapshot_on_demand();
        Ok(self
            .engine
            .run_blocking(move |engine| -> Result<_, Error> {
                if let Some(current) = snapshot::current(engine, shard)? {
                    return Ok(Some(current));
                }
                let purged = engine
                    .get_cf(Cf::State, &keys::state_key(shard, keys::STATE_PURGED))?
                    .is_some();
                if !build_missing || !purged || read_applied(engine, shard)?.last_applied.is_none() {
                    return Ok(None);
                }
                info!(
                    shard_id = %shard,
                    "building a snapshot to send: this replica has none (a split child, or its file is gone)"
                );
                snapshot::build(engine, shard, range, &lock).map(Some)
            })
            .await?)
    }
}

/// Rough size of an entry's command, for bounding apply groups.
fn entry_size(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(proposal) => match &proposal.command {
            Command::Put { key, value } => key.len() + value.len(),
            Command::Delete { key } => key.len(),
            Command::Cas {
                key,
                expect,
                new_value,
            } => {
                let expected = match expect {
                    Expect::Value(value) => value.len(),
                    _ => 0,
                };
                key.len() + expected + new_value.as_ref().map_or(0, Vec::len)
            }
            Command::Batch { ops } => ops
                .iter()
                .map(|op| match op {
                    BatchOp::Put { key, value } => key.len() + value.len(),
                    BatchOp::Delete { key } => key.len(),
                })
                .sum(),
            Command::Digest | Command::Split { .. } => 0,
        },
        _ => 0,
    }
}

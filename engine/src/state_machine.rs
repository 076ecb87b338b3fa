//! openraft state machine for one shard: applies commands to the shard's data keys, recording the
//! applied log id and membership in the same atomic batch as the data they describe. Applies are
//! not fsynced: after a crash the node replays the log from the durable applied id.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use openraft::EntryPayload;
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::Error;
use crate::keys::{self, META_APPLIED};
use crate::rocks::{Cf, Engine, HashRange, WriteOps};
use crate::snapshot::{self, SnapshotBuilder, SnapshotFile};
use crate::types::{BatchOp, Command, CommandResult, Expect, LogIndex, ShardId, TypeConfig, Versioned};

type LogId = LogIdOf<TypeConfig>;
type StoredMembership = StoredMembershipOf<TypeConfig>;

/// What the state machine has applied, stored with the data of each apply.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct AppliedState {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

pub struct StateMachine {
    engine: Engine,
    shard: ShardId,
    range: HashRange,
    /// The applied state as of the last apply or install; the copy on disk is authoritative.
    applied: AppliedState,
    /// Serializes changes of the shard's current snapshot between builders and installs.
    snapshot_lock: Arc<Mutex<()>>,
}

impl StateMachine {
    pub(crate) fn open(engine: Engine, shard: ShardId, range: HashRange) -> Result<StateMachine, Error> {
        let applied = read_applied(&engine, shard)?;
        Ok(StateMachine {
            engine,
            shard,
            range,
            applied,
            snapshot_lock: Arc::new(Mutex::new(())),
        })
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }
}

pub(crate) fn read_applied(engine: &Engine, shard: ShardId) -> Result<AppliedState, Error> {
    Ok(
        match engine.get_cf(Cf::Meta, &keys::shard_meta_key(shard, META_APPLIED))? {
            Some(bytes) => codec::decode(&bytes, &format!("applied state of shard {shard}"))?,
            None => AppliedState::default(),
        },
    )
}

/// Pending writes of one apply batch, readable by later commands of the same batch.
struct Overlay<'a> {
    engine: &'a Engine,
    ops: WriteOps,
    /// Latest value of each data key written in this batch (`None`: deleted).
    written: HashMap<Vec<u8>, Option<Versioned>>,
}

impl Overlay<'_> {
    fn current(&self, data_key: &[u8]) -> Result<Option<Versioned>, Error> {
        if let Some(value) = self.written.get(data_key) {
            return Ok(value.clone());
        }
        self.engine
            .get_cf(Cf::Data, data_key)?
            .map(|bytes| codec::decode_value(&bytes))
            .transpose()
    }

    fn put(&mut self, data_key: Vec<u8>, value: Vec<u8>, version: LogIndex) {
        self.ops
            .put(Cf::Data, data_key.clone(), codec::encode_value(version, &value));
        self.written.insert(data_key, Some(Versioned { value, version }));
    }

    fn delete(&mut self, data_key: Vec<u8>) {
        self.ops.delete(Cf::Data, data_key.clone());
        self.written.insert(data_key, None);
    }

    fn apply(&mut self, command: Command, index: LogIndex) -> Result<CommandResult, Error> {
        Ok(match command {
            Command::Put { key, value } => {
                self.put(keys::data_key(&key), value, index);
                CommandResult::Put { version: index }
            }
            Command::Delete { key } => {
                let data_key = keys::data_key(&key);
                let existed = self.current(&data_key)?.is_some();
                self.delete(data_key);
                CommandResult::Delete { existed }
            }
            Command::Cas {
                key,
                expect,
                new_value,
            } => {
                let data_key = keys::data_key(&key);
                let current = self.current(&data_key)?;
                let matches = match (&expect, &current) {
                    (Expect::Absent, current) => current.is_none(),
                    (Expect::Value(expected), Some(current)) => &current.value == expected,
                    (Expect::Version(expected), Some(current)) => current.version == *expected,
                    (_, None) => false,
                };
                if !matches {
                    return Ok(CommandResult::Cas {
                        succeeded: false,
                        version: 0,
                        current,
                    });
                }
                match new_value {
                    Some(value) => {
                        self.put(data_key, value, index);
                        CommandResult::Cas {
                            succeeded: true,
                            version: index,
                            current: None,
                        }
                    }
                    None => {
                        self.delete(data_key);
                        CommandResult::Cas {
                            succeeded: true,
                            version: 0,
                            current: None,
                        }
                    }
                }
            }
            Command::Batch { ops } => {
                for op in ops {
                    match op {
                        BatchOp::Put { key, value } => self.put(keys::data_key(&key), value, index),
                        BatchOp::Delete { key } => self.delete(keys::data_key(&key)),
                    }
                }
                CommandResult::Batch { version: index }
            }
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let applied = read_applied(&self.engine, self.shard)?;
        Ok((applied.last_applied, applied.membership))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        let mut overlay = Overlay {
            engine: &self.engine,
            ops: WriteOps::default(),
            written: HashMap::new(),
        };
        let mut applied = self.applied.clone();
        let mut responses = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let result = match entry.payload {
                EntryPayload::Blank => CommandResult::None,
                EntryPayload::Normal(command) => overlay.apply(command, entry.log_id.index)?,
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    CommandResult::None
                }
            };
            applied.last_applied = Some(entry.log_id);
            if let Some(responder) = responder {
                responses.push((responder, result));
            }
        }
        if applied.last_applied == self.applied.last_applied {
            return Ok(());
        }
        let mut ops = overlay.ops;
        ops.put(
            Cf::Meta,
            keys::shard_meta_key(self.shard, META_APPLIED),
            codec::encode(&applied),
        );
        self.engine.write_ops(ops, false)?;
        self.applied = applied;
        // Answer only after the batch is written, so a read after the answer sees it.
        for (responder, result) in responses {
            responder.send(result);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder::new(
            self.engine.clone(),
            self.shard,
            self.range,
            self.snapshot_lock.clone(),
        )
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let (engine, shard, range, lock, meta) = (
            self.engine.clone(),
            self.shard,
            self.range,
            self.snapshot_lock.clone(),
            meta.clone(),
        );
        let applied = tokio::task::spawn_blocking(move || {
            snapshot::install(&engine, shard, range, &lock, &meta, &snapshot.path)
        })
        .await
        .map_err(|e| io::Error::other(format!("snapshot install task failed: {e}")))??;
        // Durable before openraft acts on it (for example by purging the log it replaces).
        self.engine.syncer().sync().await?;
        self.applied = applied;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, SnapshotFile>>, io::Error> {
        Ok(snapshot::current(&self.engine, self.shard)?)
    }
}

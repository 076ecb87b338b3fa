//! One apply group's pending writes (`Overlay`): how each command changes the shard's keys, with
//! later commands of the group reading what earlier ones wrote before anything reaches RocksDB.

use std::collections::HashMap;

use super::AppliedState;
use crate::codec;
use crate::error::Error;
use crate::keys::{self, META_APPLIED};
use crate::rocks::{Cf, Engine, HashRange, WriteOps};
use crate::types::{BatchOp, Command, CommandResult, Expect, LogIndex, RequestId, ShardId, Versioned};

/// Pending writes of one apply group, readable by later commands of the same group.
pub(super) struct Overlay<'a> {
    pub(super) engine: &'a Engine,
    /// Where the shard's keys live (`Cf::keys_of`).
    pub(super) cf: Cf,
    /// The shard's range: commands on keys outside it change nothing.
    pub(super) range: HashRange,
    pub(super) ops: WriteOps,
    /// Latest value of each data key written in this group (`None`: deleted).
    pub(super) written: HashMap<Vec<u8>, Option<Versioned>>,
    /// Results of requests applied in this group, for duplicates within it.
    pub(super) results: HashMap<RequestId, CommandResult>,
}

impl<'a> Overlay<'a> {
    pub(super) fn new(engine: &'a Engine, shard: ShardId, range: HashRange) -> Self {
        Overlay {
            engine,
            cf: Cf::keys_of(shard),
            range,
            ops: WriteOps::default(),
            written: HashMap::new(),
            results: HashMap::new(),
        }
    }

    pub(super) fn current(&self, data_key: &[u8]) -> Result<Option<Versioned>, Error> {
        if let Some(value) = self.written.get(data_key) {
            return Ok(value.clone());
        }
        self.engine
            .get_cf(self.cf, data_key)?
            .map(|bytes| codec::decode_value(&bytes))
            .transpose()
    }

    fn put(&mut self, data_key: Vec<u8>, value: Vec<u8>, version: LogIndex) {
        self.ops
            .put(self.cf, data_key.clone(), codec::encode_value(version, &value));
        self.written.insert(data_key, Some(Versioned { value, version }));
    }

    fn delete(&mut self, data_key: Vec<u8>) {
        self.ops.delete(self.cf, data_key.clone());
        self.written.insert(data_key, None);
    }

    /// Whether every key `command` writes lies in the shard's range.
    fn in_range(&self, command: &Command) -> bool {
        match command {
            Command::Put { key, .. } | Command::Delete { key } | Command::Cas { key, .. } => {
                self.range.holds_key(key)
            }
            Command::Batch { ops } => ops.iter().all(|op| match op {
                BatchOp::Put { key, .. } | BatchOp::Delete { key } => self.range.holds_key(key),
            }),
            Command::Digest | Command::Split { .. } => true,
        }
    }

    pub(super) fn apply(&mut self, command: Command, index: LogIndex) -> Result<CommandResult, Error> {
        if !self.in_range(&command) {
            return Ok(CommandResult::NotInShard);
        }
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
            // Handled by the group loop, which must cut the batch there.
            Command::Digest | Command::Split { .. } => CommandResult::None,
        })
    }
}

impl Overlay<'_> {
    /// The group's writes plus the applied state they bring the shard to.
    pub(super) fn finish(self, shard: ShardId, applied: &AppliedState) -> WriteOps {
        let mut ops = self.ops;
        ops.put(
            Cf::Meta,
            keys::shard_meta_key(shard, META_APPLIED),
            codec::encode(applied),
        );
        ops
    }
}

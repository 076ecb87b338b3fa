//! Shard snapshots as files. A builder reads a point-in-time RocksDB view (so it can run while
//! `apply` continues) and streams the shard's data range into a file; an install verifies a file
//! and replaces the shard's data in one atomic batch. The newest snapshot of each shard is kept as
//! its "current" one (what followers are sent); older files are deleted.
//!
//! File format: `MAGIC`, then records `key_len u32 LE ++ data key ++ value_len u32 LE ++ stored
//! value`, then `END_MARK ++ record count u64 LE ++ crc32 u32 LE` (crc over every byte before it).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::alias::{SnapshotMetaOf, SnapshotOf};
use openraft::storage::RaftSnapshotBuilder;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::Error;
use crate::keys::{self, META_APPLIED, META_SNAPSHOT};
use crate::rocks::{Cf, Engine, HashRange, RawPair, WriteOps};
use crate::state_machine::AppliedState;
use crate::types::{ShardId, TypeConfig};

const MAGIC: &[u8; 8] = b"RKVSNAP1";
const END_MARK: &[u8; 4] = b"END!";

/// A snapshot file: openraft's `SnapshotData` for ringkv. The transport streams the file's bytes.
#[derive(Debug)]
pub struct SnapshotFile {
    pub path: PathBuf,
}

/// The shard's current snapshot, recorded in the meta CF.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CurrentSnapshot {
    meta: SnapshotMetaOf<TypeConfig>,
    file_name: String,
}

pub struct SnapshotBuilder {
    engine: Engine,
    shard: ShardId,
    range: HashRange,
    lock: Arc<Mutex<()>>,
}

impl SnapshotBuilder {
    pub(crate) fn new(engine: Engine, shard: ShardId, range: HashRange, lock: Arc<Mutex<()>>) -> Self {
        SnapshotBuilder {
            engine,
            shard,
            range,
            lock,
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotFile>, io::Error> {
        let (engine, shard, range, lock) = (self.engine.clone(), self.shard, self.range, self.lock.clone());
        let snapshot = tokio::task::spawn_blocking(move || build(&engine, shard, range, &lock))
            .await
            .map_err(|e| io::Error::other(format!("snapshot build task failed: {e}")))??;
        Ok(snapshot)
    }
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos}-{}", std::process::id())
}

fn snapshot_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Snapshot {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Writes the shard's data as of one point in time to a new file and makes it the current snapshot.
fn build(
    engine: &Engine,
    shard: ShardId,
    range: HashRange,
    lock: &Mutex<()>,
) -> Result<SnapshotOf<TypeConfig, SnapshotFile>, Error> {
    let dir = engine.snapshot_dir(shard);
    std::fs::create_dir_all(&dir).map_err(|e| snapshot_error(&dir, format!("cannot create: {e}")))?;
    let temp_path = dir.join(format!("build-{}.tmp", unique_suffix()));
    let applied = engine.read_at_snapshot(|view| {
        // The applied state and the data come from the same view, so they always agree.
        let applied: AppliedState = match view.get(Cf::Meta, &keys::shard_meta_key(shard, META_APPLIED))? {
            Some(bytes) => codec::decode(&bytes, &format!("applied state of shard {shard}"))?,
            None => AppliedState::default(),
        };
        let file = File::create(&temp_path)
            .map_err(|e| snapshot_error(&temp_path, format!("cannot create: {e}")))?;
        let mut writer = ChecksumWriter::new(BufWriter::new(file));
        let write_error = |e: io::Error| snapshot_error(&temp_path, format!("cannot write: {e}"));
        writer.write_all(MAGIC).map_err(write_error)?;
        let (start, end) = keys::data_range(range);
        let mut count: u64 = 0;
        view.for_each(Cf::Data, &start, end.as_deref(), |key, value| {
            writer
                .write_all(&(key.len() as u32).to_le_bytes())
                .map_err(write_error)?;
            writer.write_all(key).map_err(write_error)?;
            writer
                .write_all(&(value.len() as u32).to_le_bytes())
                .map_err(write_error)?;
            writer.write_all(value).map_err(write_error)?;
            count += 1;
            Ok(())
        })?;
        writer.write_all(END_MARK).map_err(write_error)?;
        writer.write_all(&count.to_le_bytes()).map_err(write_error)?;
        let crc = writer.hasher.clone().finalize();
        let mut inner = writer.inner;
        inner.write_all(&crc.to_le_bytes()).map_err(write_error)?;
        let file = inner.into_inner().map_err(|e| write_error(e.into_error()))?;
        file.sync_all().map_err(write_error)?;
        Ok(applied)
    })?;

    let meta = SnapshotMetaOf::<TypeConfig> {
        last_log_id: applied.last_applied,
        last_membership: applied.membership.clone(),
    };
    let path = adopt(engine, shard, lock, &temp_path, &meta, WriteOps::default())?;
    Ok(SnapshotOf::<TypeConfig, SnapshotFile> {
        meta,
        snapshot: SnapshotFile { path },
    })
}

/// Records `snapshot` as the shard's current one (with `ops`, atomically) unless a newer one is
/// already current, then deletes every other snapshot file of the shard.
fn make_current(
    engine: &Engine,
    shard: ShardId,
    lock: &Mutex<()>,
    snapshot: CurrentSnapshot,
    mut ops: WriteOps,
) -> Result<(), Error> {
    let _guard = lock.lock().expect("snapshot lock");
    let index_of = |s: &CurrentSnapshot| s.meta.last_log_id.as_ref().map_or(0, |id| id.index);
    let keep = match read_current(engine, shard)? {
        Some(existing) if index_of(&existing) > index_of(&snapshot) && ops.is_empty() => existing.file_name,
        _ => {
            ops.put(
                Cf::Meta,
                keys::shard_meta_key(shard, META_SNAPSHOT),
                codec::encode(&snapshot),
            );
            snapshot.file_name.clone()
        }
    };
    if !ops.is_empty() {
        engine.write_ops(ops, false)?;
    }
    let dir = engine.snapshot_dir(shard);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".snap") && name != keep {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

/// Moves a finished snapshot file into the shard's snapshot dir under its standard name and makes
/// it the current snapshot, together with `ops`. Returns its new path.
fn adopt(
    engine: &Engine,
    shard: ShardId,
    lock: &Mutex<()>,
    file: &Path,
    meta: &SnapshotMetaOf<TypeConfig>,
    ops: WriteOps,
) -> Result<PathBuf, Error> {
    let dir = engine.snapshot_dir(shard);
    std::fs::create_dir_all(&dir).map_err(|e| snapshot_error(&dir, format!("cannot create: {e}")))?;
    let index = meta.last_log_id.as_ref().map_or(0, |id| id.index);
    let file_name = format!("snap-{index:020}-{}.snap", unique_suffix());
    let path = dir.join(&file_name);
    std::fs::rename(file, &path)
        .or_else(|_| std::fs::copy(file, &path).map(|_| ()))
        .map_err(|e| snapshot_error(file, format!("cannot keep as {}: {e}", path.display())))?;
    make_current(
        engine,
        shard,
        lock,
        CurrentSnapshot {
            meta: meta.clone(),
            file_name,
        },
        ops,
    )?;
    Ok(path)
}

fn read_current(engine: &Engine, shard: ShardId) -> Result<Option<CurrentSnapshot>, Error> {
    engine
        .get_cf(Cf::Meta, &keys::shard_meta_key(shard, META_SNAPSHOT))?
        .map(|bytes| codec::decode(&bytes, &format!("current snapshot record of shard {shard}")))
        .transpose()
}

/// The shard's current snapshot, if its file still exists.
pub(crate) fn current(
    engine: &Engine,
    shard: ShardId,
) -> Result<Option<SnapshotOf<TypeConfig, SnapshotFile>>, Error> {
    let Some(current) = read_current(engine, shard)? else {
        return Ok(None);
    };
    let path = engine.snapshot_dir(shard).join(&current.file_name);
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(SnapshotOf::<TypeConfig, SnapshotFile> {
        meta: current.meta,
        snapshot: SnapshotFile { path },
    }))
}

/// Verifies the file at `path` and replaces the shard's data and applied state with its content in
/// one atomic batch; the file becomes the shard's current snapshot.
pub(crate) fn install(
    engine: &Engine,
    shard: ShardId,
    range: HashRange,
    lock: &Mutex<()>,
    meta: &SnapshotMetaOf<TypeConfig>,
    path: &Path,
) -> Result<AppliedState, Error> {
    let records = read_verified(path)?;
    let (start, end) = keys::data_range(range);
    let mut ops = WriteOps::default();
    match &end {
        Some(end) => ops.delete_range(Cf::Data, start.clone(), end.clone()),
        // The last arc of the ring: bound by a key above every valid data key (hash, then a key
        // of at most MAX_KEY_BYTES).
        None => ops.delete_range(
            Cf::Data,
            start.clone(),
            vec![0xff; 8 + ringkv_proto::limits::MAX_KEY_BYTES + 1],
        ),
    }
    for (key, value) in records {
        let inside = key.as_slice() >= start.as_slice() && end.as_ref().is_none_or(|end| key < *end);
        if !inside {
            return Err(snapshot_error(path, "holds a key outside the shard's range"));
        }
        ops.put(Cf::Data, key, value);
    }
    let applied = AppliedState {
        last_applied: meta.last_log_id,
        membership: meta.last_membership.clone(),
    };
    ops.put(
        Cf::Meta,
        keys::shard_meta_key(shard, META_APPLIED),
        codec::encode(&applied),
    );

    adopt(engine, shard, lock, path, meta, ops)?;
    Ok(applied)
}

/// Reads every record of a snapshot file after checking its framing and checksum.
fn read_verified(path: &Path) -> Result<Vec<RawPair>, Error> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|file| BufReader::new(file).read_to_end(&mut bytes))
        .map_err(|e| snapshot_error(path, format!("cannot read: {e}")))?;
    let corrupt = |detail: &str| Error::Corruption {
        what: format!("snapshot file {}", path.display()),
        detail: detail.into(),
    };
    if bytes.len() < MAGIC.len() + END_MARK.len() + 12 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt("not a ringkv snapshot (bad header or too short)"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if crc32fast::hash(body) != stored {
        return Err(corrupt("checksum mismatch"));
    }
    let trailer_start = body.len() - END_MARK.len() - 8;
    if &body[trailer_start..trailer_start + END_MARK.len()] != END_MARK {
        return Err(corrupt("missing end marker"));
    }
    let count = u64::from_le_bytes(
        body[trailer_start + END_MARK.len()..]
            .try_into()
            .expect("8 bytes"),
    );
    let mut records = Vec::new();
    let mut position = MAGIC.len();
    let take = |position: &mut usize| -> Result<Vec<u8>, Error> {
        let len_end = *position + 4;
        let len = u32::from_le_bytes(
            body.get(*position..len_end)
                .ok_or_else(|| corrupt("truncated record"))?
                .try_into()
                .expect("4 bytes"),
        ) as usize;
        let value = body
            .get(len_end..len_end + len)
            .ok_or_else(|| corrupt("truncated record"))?
            .to_vec();
        *position = len_end + len;
        Ok(value)
    };
    while position < trailer_start {
        let key = take(&mut position)?;
        let value = take(&mut position)?;
        records.push((key, value));
    }
    if position != trailer_start || records.len() as u64 != count {
        return Err(corrupt("record count does not match the trailer"));
    }
    Ok(records)
}

/// A writer that keeps a crc32 of everything written through it.
struct ChecksumWriter<W: Write> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> ChecksumWriter<W> {
    fn new(inner: W) -> Self {
        ChecksumWriter {
            inner,
            hasher: crc32fast::Hasher::new(),
        }
    }
}

impl<W: Write> Write for ChecksumWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

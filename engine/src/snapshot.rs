//! Shard snapshots as files. A builder reads a point-in-time RocksDB view (so it can run while
//! `apply` continues) and streams the shard's data range and request-id table into a file; an
//! install verifies a file and replaces the shard's state with it. The newest snapshot of each
//! shard is kept as its "current" one (what followers are sent); older files are deleted.
//!
//! File format: `MAGIC`, then `header_len u32 LE ++ postcard(SnapshotHeader)`, then records
//! `tag u8 ++ key_len u32 LE ++ key ++ value_len u32 LE ++ value` (tag `d`: a data key and its
//! stored value; `s`: a request-id table row), then `END_MARK ++ record count u64 LE ++ crc32 u32
//! LE` (crc over every byte before it).
//!
//! Install process, in bounded memory whatever the shard's size:
//! 1. Verify the whole file by streaming it once: framing, checksum, count, every key inside the
//!    shard. A damaged file is refused before anything changes.
//! 2. Move the file into the shard's snapshot directory (and fsync the directory), then write, in
//!    one batch, an "install in progress" marker naming it together with the deletion of the
//!    shard's data and table.
//! 3. Stream the records into bounded batches.
//! 4. Write, in one batch, the applied state and current-snapshot record and delete the marker.
//!
//! A crash in steps 2–4 leaves the marker; opening the shard's state machine finds it and runs the
//! install again from the kept file before anything reads the shard, so no reader ever sees a
//! half-installed shard: the switch is atomic at step 4.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::alias::{SnapshotMetaOf, SnapshotOf};
use openraft::storage::RaftSnapshotBuilder;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::codec;
use crate::error::Error;
use crate::keys::{self, META_APPLIED, META_INSTALLING, META_SNAPSHOT};
use crate::rocks::{Cf, Engine, HashRange, WriteOps};
use crate::sessions::SessionClock;
use crate::state_machine::AppliedState;
use crate::types::{ShardId, TypeConfig};

/// 4: the header carries the index the range holds from. Files of an older version are not read
/// (`current` treats one as missing, so a new one is built).
const MAGIC: &[u8; 8] = b"RKVSNAP4";
const END_MARK: &[u8; 4] = b"END!";
const TAG_DATA: u8 = b'd';
const TAG_SESSION: u8 = b's';
/// Largest key or value a record may claim; anything larger is a damaged length field.
const MAX_RECORD_PART: usize = 64 * 1024 * 1024;
/// Bytes of records written per install batch.
const INSTALL_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// A snapshot file: openraft's `SnapshotData` for ringkv. The transport streams the file's bytes.
#[derive(Debug)]
pub struct SnapshotFile {
    pub path: PathBuf,
}

/// What a snapshot file carries besides records: the parts of the applied state openraft's
/// snapshot meta does not hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SnapshotHeader {
    clock: SessionClock,
    /// The shard's range as of the snapshot (a split since may have shrunk it).
    range: Option<HashRange>,
    /// The log index the range holds from (the last split's).
    range_since: u64,
}

/// The shard's current snapshot, recorded in the meta CF.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CurrentSnapshot {
    meta: SnapshotMetaOf<TypeConfig>,
    file_name: String,
}

/// An install in progress: which file, and what it installs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InstallMarker {
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
        let (shard, range, lock) = (self.shard, self.range, self.lock.clone());
        let snapshot = self
            .engine
            .run_blocking(move |engine| build(engine, shard, range, &lock))
            .await?;
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

/// Writes the shard's state as of one point in time to a new file and makes it the current
/// snapshot.
pub(crate) fn build(
    engine: &Engine,
    shard: ShardId,
    range: HashRange,
    lock: &Mutex<()>,
) -> Result<SnapshotOf<TypeConfig, SnapshotFile>, Error> {
    let dir = engine.snapshot_dir(shard);
    std::fs::create_dir_all(&dir).map_err(|e| snapshot_error(&dir, format!("cannot create: {e}")))?;
    let temp_path = dir.join(format!("build-{}.tmp", unique_suffix()));
    let applied = engine.read_at_snapshot(|view| {
        // The applied state and the records come from the same view, so they always agree.
        let applied: AppliedState = match view.get(Cf::Meta, &keys::shard_meta_key(shard, META_APPLIED))? {
            Some(bytes) => AppliedState::decode(&bytes, shard)?,
            None => AppliedState::default(),
        };
        let file = File::create(&temp_path)
            .map_err(|e| snapshot_error(&temp_path, format!("cannot create: {e}")))?;
        let mut writer = ChecksumWriter::new(BufWriter::new(file));
        let write_error = |e: io::Error| snapshot_error(&temp_path, format!("cannot write: {e}"));
        writer.write_all(MAGIC).map_err(write_error)?;
        // A split applied since the builder was made has shrunk the range.
        let range = applied.range.unwrap_or(range);
        let header = codec::encode(&SnapshotHeader {
            clock: applied.clock,
            range: Some(range),
            range_since: applied.range_since,
        });
        writer
            .write_all(&(header.len() as u32).to_le_bytes())
            .map_err(write_error)?;
        writer.write_all(&header).map_err(write_error)?;
        let mut count: u64 = 0;
        let (start, end) = keys::data_range(range);
        view.for_each(Cf::keys_of(shard), &start, end.as_deref(), |key, value| {
            count += 1;
            write_record(&mut writer, TAG_DATA, key, value).map_err(write_error)
        })?;
        let (start, end) = keys::session_range(shard);
        view.for_each(Cf::Sessions, &start, Some(&end), |key, value| {
            count += 1;
            write_record(&mut writer, TAG_SESSION, key, value).map_err(write_error)
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
    let _guard = lock.lock().expect("snapshot lock");
    let (path, file_name) = move_into_place(engine, shard, &temp_path, &meta)?;
    make_current(
        engine,
        shard,
        CurrentSnapshot {
            meta: meta.clone(),
            file_name,
        },
        WriteOps::default(),
    )?;
    Ok(SnapshotOf::<TypeConfig, SnapshotFile> {
        meta,
        snapshot: SnapshotFile { path },
    })
}

/// Records `snapshot` as the shard's current one (with `ops`, atomically) unless a newer one is
/// already current, then deletes every other snapshot file of the shard. The caller holds the
/// shard's snapshot lock.
fn make_current(
    engine: &Engine,
    shard: ShardId,
    snapshot: CurrentSnapshot,
    mut ops: WriteOps,
) -> Result<(), Error> {
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

/// Moves a finished snapshot file into the shard's snapshot dir under its standard name. Returns
/// its new path and name.
fn move_into_place(
    engine: &Engine,
    shard: ShardId,
    file: &Path,
    meta: &SnapshotMetaOf<TypeConfig>,
) -> Result<(PathBuf, String), Error> {
    let dir = engine.snapshot_dir(shard);
    std::fs::create_dir_all(&dir).map_err(|e| snapshot_error(&dir, format!("cannot create: {e}")))?;
    let index = meta.last_log_id.as_ref().map_or(0, |id| id.index);
    let file_name = format!("snap-{index:020}-{}.snap", unique_suffix());
    let path = dir.join(&file_name);
    std::fs::rename(file, &path)
        .or_else(|_| std::fs::copy(file, &path).map(|_| ()))
        .map_err(|e| snapshot_error(file, format!("cannot keep as {}: {e}", path.display())))?;
    // The new name must survive a power loss before anything refers to it.
    File::open(&dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| snapshot_error(&dir, format!("cannot sync the directory: {e}")))?;
    Ok((path, file_name))
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
    // A missing file, or one of an older format no peer reads: the caller builds a new one.
    if !path.exists() || read_header(&path).is_err() {
        return Ok(None);
    }
    Ok(Some(SnapshotOf::<TypeConfig, SnapshotFile> {
        meta: current.meta,
        snapshot: SnapshotFile { path },
    }))
}

/// Verifies the file at `path` and replaces the shard's data and request-id table with its
/// content (see the module header); the file becomes the shard's current snapshot. Returns the
/// new applied state. The caller makes it durable (a WAL fsync) before acting on it.
pub(crate) fn install(
    engine: &Engine,
    shard: ShardId,
    range: HashRange,
    lock: &Mutex<()>,
    meta: &SnapshotMetaOf<TypeConfig>,
    path: &Path,
) -> Result<AppliedState, Error> {
    // Held throughout, so a concurrent builder cannot delete the file being installed.
    let _guard = lock.lock().expect("snapshot lock");
    let header = match verify(path, shard, range) {
        Ok(header) => header,
        Err(error) => {
            // A refused file is of no use to anyone.
            let _ = std::fs::remove_file(path);
            return Err(error);
        }
    };
    let (kept_path, file_name) = move_into_place(engine, shard, path, meta)?;
    let marker = InstallMarker {
        meta: meta.clone(),
        file_name,
    };
    // The marker and the deletion of the old state in one batch: the keys of the range the
    // replica had and of the one it gets (the same start; a split shrinks the end).
    let mut ops = clear_ops(shard, widest(range, header.range));
    ops.put(
        Cf::Meta,
        keys::shard_meta_key(shard, META_INSTALLING),
        codec::encode(&marker),
    );
    engine.write_ops(ops, false)?;
    fill_and_finish(engine, shard, &marker, &kept_path, header)
}

/// Finishes an install a crash interrupted, if the shard has one (see the module header).
pub(crate) fn resume_install(
    engine: &Engine,
    shard: ShardId,
    range: HashRange,
    lock: &Mutex<()>,
) -> Result<(), Error> {
    let Some(bytes) = engine.get_cf(Cf::Meta, &keys::shard_meta_key(shard, META_INSTALLING))? else {
        return Ok(());
    };
    let _guard = lock.lock().expect("snapshot lock");
    let marker: InstallMarker = codec::decode(&bytes, &format!("install marker of shard {shard}"))?;
    let path = engine.snapshot_dir(shard).join(&marker.file_name);
    info!(shard_id = %shard, file = %path.display(), "finishing a snapshot install interrupted by a crash");
    let header = verify(&path, shard, range)?;
    // Whatever part of the records the interrupted install wrote goes again.
    engine.write_ops(clear_ops(shard, widest(range, header.range)), false)?;
    fill_and_finish(engine, shard, &marker, &path, header)?;
    Ok(())
}

/// `range` extended to the end of `other`, if that reaches further.
fn widest(range: HashRange, other: Option<HashRange>) -> HashRange {
    HashRange {
        start: range.start,
        end: other.map_or(range.end, |other| other.end.max(range.end)),
    }
}

/// The deletion of a shard's data and request-id rows.
pub(crate) fn clear_ops(shard: ShardId, range: HashRange) -> WriteOps {
    let (data_start, data_end) = keys::data_range_bounded(range);
    let (session_start, session_end) = keys::session_range(shard);
    let mut ops = WriteOps::default();
    ops.delete_range(Cf::keys_of(shard), data_start, data_end);
    ops.delete_range(Cf::Sessions, session_start.to_vec(), session_end.to_vec());
    ops
}

/// Steps 3 and 4 of an install whose marker is written and old state deleted.
fn fill_and_finish(
    engine: &Engine,
    shard: ShardId,
    marker: &InstallMarker,
    path: &Path,
    header: SnapshotHeader,
) -> Result<AppliedState, Error> {
    let mut ops = WriteOps::default();
    let mut batch_bytes = 0usize;
    read_records(path, |tag, key, value| {
        let cf = if tag == TAG_DATA {
            Cf::keys_of(shard)
        } else {
            Cf::Sessions
        };
        batch_bytes += key.len() + value.len();
        ops.put(cf, key, value);
        if batch_bytes >= INSTALL_BATCH_BYTES {
            engine.write_ops(std::mem::take(&mut ops), false)?;
            batch_bytes = 0;
        }
        Ok(())
    })?;

    let applied = AppliedState {
        last_applied: marker.meta.last_log_id,
        membership: marker.meta.last_membership.clone(),
        clock: header.clock,
        range: header.range,
        range_since: header.range_since,
    };
    ops.put(
        Cf::Meta,
        keys::shard_meta_key(shard, META_APPLIED),
        codec::encode(&applied),
    );
    ops.delete(Cf::Meta, keys::shard_meta_key(shard, META_INSTALLING));
    make_current(
        engine,
        shard,
        CurrentSnapshot {
            meta: marker.meta.clone(),
            file_name: marker.file_name.clone(),
        },
        ops,
    )?;
    Ok(applied)
}

/// Checks a snapshot file end to end without loading it: magic, checksum, framing, record count,
/// a range in its header that starts where the shard's `range` does, and that every record
/// belongs to the shard and the header's range. Returns its header.
fn verify(path: &Path, shard: ShardId, range: HashRange) -> Result<SnapshotHeader, Error> {
    let corrupt = |detail: &str| Error::Corruption {
        what: format!("snapshot file {}", path.display()),
        detail: detail.into(),
    };
    let read_error = |e: io::Error| snapshot_error(path, format!("cannot read: {e}"));
    let mut file = File::open(path).map_err(read_error)?;
    let len = file.metadata().map_err(read_error)?.len();
    if len < (MAGIC.len() + 4 + END_MARK.len() + 8 + 4) as u64 {
        return Err(corrupt("too short to be a ringkv snapshot"));
    }
    // The checksum covers everything but its own last 4 bytes.
    let mut hasher = crc32fast::Hasher::new();
    let mut remaining = len - 4;
    let mut buffer = vec![0u8; 1024 * 1024];
    while remaining > 0 {
        let want = remaining.min(buffer.len() as u64) as usize;
        file.read_exact(&mut buffer[..want]).map_err(read_error)?;
        hasher.update(&buffer[..want]);
        remaining -= want as u64;
    }
    let mut stored = [0u8; 4];
    file.read_exact(&mut stored).map_err(read_error)?;
    if hasher.finalize() != u32::from_le_bytes(stored) {
        return Err(corrupt("checksum mismatch"));
    }
    let range = match read_header(path)?.range {
        Some(snapshot) if snapshot.start == range.start && snapshot.end <= range.end => snapshot,
        Some(snapshot) => {
            return Err(corrupt(&format!(
                "it holds the range {:#018x}..={:#018x}, not part of the shard's {:#018x}..={:#018x}",
                snapshot.start, snapshot.end, range.start, range.end
            )));
        }
        None => return Err(corrupt("its header names no range")),
    };
    let (data_start, data_end) = keys::data_range(range);
    let (session_start, session_end) = keys::session_range(shard);
    let header = read_records(path, |tag, key, _| {
        let inside = match tag {
            TAG_DATA => key >= data_start && data_end.as_ref().is_none_or(|end| key < *end),
            _ => key.as_slice() >= session_start.as_slice() && key.as_slice() < session_end.as_slice(),
        };
        if inside {
            Ok(())
        } else {
            Err(corrupt("holds a record outside the shard"))
        }
    })?;
    Ok(header)
}

/// The header of a snapshot file, read without checking the rest.
fn read_header(path: &Path) -> Result<SnapshotHeader, Error> {
    let corrupt = |detail: &str| Error::Corruption {
        what: format!("snapshot file {}", path.display()),
        detail: detail.into(),
    };
    let read_error = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => corrupt("truncated"),
        _ => snapshot_error(path, format!("cannot read: {e}")),
    };
    let mut reader = BufReader::new(File::open(path).map_err(read_error)?);
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).map_err(read_error)?;
    if &magic != MAGIC {
        return Err(corrupt("not a ringkv snapshot of this version (bad magic)"));
    }
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).map_err(read_error)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_RECORD_PART {
        return Err(corrupt("its header's length is damaged"));
    }
    let mut header = vec![0u8; len];
    reader.read_exact(&mut header).map_err(read_error)?;
    codec::decode(&header, "snapshot header")
}

/// Streams the records of a snapshot file (whose checksum the caller checked or will check) to
/// `visit`, checking framing and the record count. Returns the file's header.
fn read_records(
    path: &Path,
    mut visit: impl FnMut(u8, Vec<u8>, Vec<u8>) -> Result<(), Error>,
) -> Result<SnapshotHeader, Error> {
    let corrupt = |detail: &str| Error::Corruption {
        what: format!("snapshot file {}", path.display()),
        detail: detail.into(),
    };
    let read_error = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => corrupt("truncated"),
        _ => snapshot_error(path, format!("cannot read: {e}")),
    };
    let mut file = File::open(path).map_err(read_error)?;
    let len = file.metadata().map_err(read_error)?.len();
    // Records end where the trailer (end mark, count, crc) begins.
    let records_end = len
        .checked_sub((END_MARK.len() + 8 + 4) as u64)
        .ok_or_else(|| corrupt("too short to be a ringkv snapshot"))?;
    let mut reader = BufReader::with_capacity(256 * 1024, &mut file);
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).map_err(read_error)?;
    if &magic != MAGIC {
        return Err(corrupt("not a ringkv snapshot of this version (bad magic)"));
    }
    let mut position = MAGIC.len() as u64;
    let take_u32 = |reader: &mut BufReader<&mut File>, position: &mut u64| -> Result<usize, Error> {
        let mut bytes = [0u8; 4];
        reader.read_exact(&mut bytes).map_err(read_error)?;
        *position += 4;
        Ok(u32::from_le_bytes(bytes) as usize)
    };
    let take_bytes =
        |reader: &mut BufReader<&mut File>, position: &mut u64, n: usize| -> Result<Vec<u8>, Error> {
            if n > MAX_RECORD_PART || *position + n as u64 > records_end {
                return Err(corrupt("a record's length runs past the end of the records"));
            }
            let mut bytes = vec![0u8; n];
            reader.read_exact(&mut bytes).map_err(read_error)?;
            *position += n as u64;
            Ok(bytes)
        };
    let header_len = take_u32(&mut reader, &mut position)?;
    let header_bytes = take_bytes(&mut reader, &mut position, header_len)?;
    let header: SnapshotHeader = codec::decode(&header_bytes, "snapshot header")?;
    let mut count = 0u64;
    while position < records_end {
        let mut tag = [0u8; 1];
        reader.read_exact(&mut tag).map_err(read_error)?;
        position += 1;
        if tag[0] != TAG_DATA && tag[0] != TAG_SESSION {
            return Err(corrupt("unknown record tag"));
        }
        let key_len = take_u32(&mut reader, &mut position)?;
        let key = take_bytes(&mut reader, &mut position, key_len)?;
        let value_len = take_u32(&mut reader, &mut position)?;
        let value = take_bytes(&mut reader, &mut position, value_len)?;
        visit(tag[0], key, value)?;
        count += 1;
    }
    if position != records_end {
        return Err(corrupt("records overrun the trailer"));
    }
    let mut trailer = [0u8; 12];
    reader.read_exact(&mut trailer).map_err(read_error)?;
    if &trailer[..4] != END_MARK {
        return Err(corrupt("missing end marker"));
    }
    if u64::from_le_bytes(trailer[4..].try_into().expect("8 bytes")) != count {
        return Err(corrupt("record count does not match the trailer"));
    }
    Ok(header)
}

fn write_record(writer: &mut impl Write, tag: u8, key: &[u8], value: &[u8]) -> io::Result<()> {
    writer.write_all(&[tag])?;
    writer.write_all(&(key.len() as u32).to_le_bytes())?;
    writer.write_all(key)?;
    writer.write_all(&(value.len() as u32).to_le_bytes())?;
    writer.write_all(value)
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

#[cfg(test)]
mod tests;

//! Snapshot installs survive a crash at any step: the shard is either in its old state or, once
//! reopened, in the snapshot's; never half of each.

use futures::StreamExt;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{Entry, EntryPayload};

use super::*;
use crate::types::{Command, Proposal, ReplicaId, RequestId};

const SHARD: ShardId = ShardId(2);
const WHOLE_RING: HashRange = HashRange {
    start: 0,
    end: u64::MAX,
};

async fn apply_puts(engine: &Engine, puts: &[(u64, &str, &str)]) {
    let mut sm = engine.state_machine(SHARD, WHOLE_RING).unwrap();
    let entries = puts.iter().map(|&(index, key, value)| {
        let proposal = Proposal {
            request: Some(RequestId {
                client: 5,
                seq: index,
            }),
            client_floor: 1,
            proposed_at_ms: 1_700_000_000_000,
            command: Command::Put {
                key: key.into(),
                value: value.into(),
            },
        };
        Ok((
            Entry {
                log_id: openraft::testing::log_id::<TypeConfig>(1, ReplicaId(1), index),
                payload: EntryPayload::Normal(proposal),
            },
            None,
        ))
    });
    sm.apply(futures::stream::iter(entries).boxed()).await.unwrap();
}

fn value(engine: &Engine, key: &str) -> Option<Vec<u8>> {
    engine.get(key.as_bytes()).unwrap().map(|v| v.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_interrupted_by_a_crash_is_finished_when_the_shard_reopens() {
    let source_dir = tempfile::tempdir().unwrap();
    let source = Engine::open(source_dir.path()).unwrap();
    let puts: Vec<(u64, String, String)> = (1..=500)
        .map(|i| (i, format!("key-{i}"), format!("value-{i}")))
        .collect();
    let borrowed: Vec<(u64, &str, &str)> = puts
        .iter()
        .map(|(i, k, v)| (*i, k.as_str(), v.as_str()))
        .collect();
    apply_puts(&source, &borrowed).await;
    let mut sm = source.state_machine(SHARD, WHOLE_RING).unwrap();
    let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();

    let target_dir = tempfile::tempdir().unwrap();
    {
        let target = Engine::open(target_dir.path()).unwrap();
        apply_puts(&target, &[(1, "stale", "old")]).await;
        // Steps 1 and 2 of an install, then a crash: the file is verified and kept, the marker
        // written, and the shard's old state deleted, but no record of the snapshot is in yet.
        let incoming = target.incoming_snapshot_path(SHARD).unwrap();
        std::fs::copy(&snapshot.snapshot.path, &incoming).unwrap();
        verify(&incoming, SHARD, WHOLE_RING).unwrap();
        let (_, file_name) = move_into_place(&target, SHARD, &incoming, &snapshot.meta).unwrap();
        let marker = InstallMarker {
            meta: snapshot.meta.clone(),
            file_name,
        };
        let mut ops = WriteOps::default();
        ops.put(
            Cf::Meta,
            keys::shard_meta_key(SHARD, META_INSTALLING),
            codec::encode(&marker),
        );
        let (start, end) = keys::data_range_bounded(WHOLE_RING);
        ops.delete_range(Cf::Data, start, end);
        target.write_ops(ops, false).unwrap();
        assert_eq!(value(&target, "stale"), None, "the old state is already gone");
    }

    // Reopening the shard's state machine finishes the install before anything reads the shard.
    let target = Engine::open(target_dir.path()).unwrap();
    let mut sm = target.state_machine(SHARD, WHOLE_RING).unwrap();
    for (_, key, expected) in &puts {
        assert_eq!(value(&target, key), Some(expected.clone().into_bytes()), "{key}");
    }
    assert_eq!(value(&target, "stale"), None);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, snapshot.meta.last_log_id);
    assert!(
        sm.stored_result(RequestId { client: 5, seq: 500 })
            .unwrap()
            .is_some(),
        "the request-id table came with the snapshot"
    );
    assert!(
        target
            .get_cf(Cf::Meta, &keys::shard_meta_key(SHARD, META_INSTALLING))
            .unwrap()
            .is_none(),
        "the marker is gone"
    );
    let current = sm.get_current_snapshot().await.unwrap().expect("current");
    assert_eq!(current.meta.last_log_id, snapshot.meta.last_log_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_foreign_snapshot_is_refused_before_anything_changes() {
    let source_dir = tempfile::tempdir().unwrap();
    let source = Engine::open(source_dir.path()).unwrap();
    apply_puts(&source, &[(1, "a", "1"), (2, "b", "2")]).await;
    let mut sm = source.state_machine(SHARD, WHOLE_RING).unwrap();
    let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let bytes = std::fs::read(&snapshot.snapshot.path).unwrap();

    let target_dir = tempfile::tempdir().unwrap();
    let target = Engine::open(target_dir.path()).unwrap();
    apply_puts(&target, &[(1, "mine", "kept")]).await;
    let mut target_sm = target.state_machine(SHARD, WHOLE_RING).unwrap();
    let mut damaged = bytes.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    let mut truncated = bytes.clone();
    truncated.truncate(bytes.len() - 7);
    for (what, file) in [
        ("damaged", damaged),
        ("truncated", truncated),
        ("empty", Vec::new()),
    ] {
        let path = target.incoming_snapshot_path(SHARD).unwrap();
        std::fs::write(&path, file).unwrap();
        let result = target_sm
            .install_snapshot(&snapshot.meta, SnapshotFile { path })
            .await;
        assert!(result.is_err(), "a {what} snapshot must be refused");
        assert_eq!(
            value(&target, "mine"),
            Some(b"kept".to_vec()),
            "{what}: nothing changed"
        );
    }
    // A snapshot of another shard's range is refused too.
    let narrow = HashRange { start: 0, end: 1 };
    let path = target.incoming_snapshot_path(SHARD).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let error = verify(&path, SHARD, narrow).unwrap_err();
    assert!(error.to_string().contains("not part of the shard"), "{error}");
}

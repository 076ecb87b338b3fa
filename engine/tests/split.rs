//! Splitting a shard in place (engine side): the split command, applied like any entry, shrinks
//! the parent's range and creates the child's state on the same engine, with no data copied.

use std::collections::BTreeSet;

use openraft::alias::{EntryOf, LogIdOf};
use openraft::storage::{RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{Entry, EntryPayload};
use ringkv_engine::{
    Command, CommandResult, Engine, HashRange, NodeId, Proposal, ReplicaId, ReplicaNode, RequestId, ShardId,
    TypeConfig, now_ms,
};

const WHOLE_RING: HashRange = HashRange {
    start: 0,
    end: u64::MAX,
};
const PARENT: ShardId = ShardId(1);
const CHILD: ShardId = ShardId(2);
const AT: u64 = 1 << 63;

fn log_id(index: u64) -> LogIdOf<TypeConfig> {
    openraft::testing::log_id::<TypeConfig>(1, ReplicaId(1), index)
}

fn entry(index: u64, request: Option<RequestId>, command: Command) -> EntryOf<TypeConfig> {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Proposal {
            request,
            client_floor: 0,
            proposed_at_ms: now_ms(),
            command,
        }),
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: value.into(),
    }
}

fn split() -> Command {
    Command::Split {
        at: AT,
        child: CHILD,
        replicas: (1..=3)
            .map(|n| {
                (
                    ReplicaId(100 + n),
                    ReplicaNode {
                        node_id: NodeId(n),
                        addr: format!("127.0.0.1:{}", 7000 + n),
                        incarnation: n,
                    },
                )
            })
            .collect(),
    }
}

async fn apply(sm: &mut ringkv_engine::StateMachine, entries: Vec<EntryOf<TypeConfig>>) {
    let stream = futures::stream::iter(entries.into_iter().map(|entry| Ok((entry, None))));
    sm.apply(stream).await.unwrap();
}

/// Keys on both sides of `AT`.
fn keys() -> (Vec<String>, Vec<String>) {
    (0..200)
        .map(|i| format!("key-{i}"))
        .partition(|key| ringkv_core::key_hash(key.as_bytes()) < AT)
}

fn all_keys(engine: &Engine, range: HashRange) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    let mut cursor = Vec::new();
    loop {
        let page = engine.scan(range, &cursor, b"", 1000).unwrap();
        found.extend(page.entries.into_iter().map(|(key, _)| key));
        if page.next_cursor.is_empty() {
            return found;
        }
        cursor = page.next_cursor;
    }
}

#[tokio::test]
async fn a_split_hands_the_upper_half_to_a_child_created_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let mut parent = engine.state_machine(PARENT, WHOLE_RING).unwrap();
    let (low, high) = keys();
    let retried = RequestId { client: 7, seq: 1 };
    let mut entries = vec![entry(1, Some(retried), put(&high[0], "written-before"))];
    for (i, key) in low.iter().chain(&high[1..]).enumerate() {
        entries.push(entry(i as u64 + 2, None, put(key, "v")));
    }
    let split_index = entries.len() as u64 + 1;
    entries.push(entry(split_index, None, split()));
    // A write after the split to a key the child now owns: not applied.
    let late = RequestId { client: 8, seq: 1 };
    entries.push(entry(split_index + 1, Some(late), put(&high[1], "too-late")));
    // The same split again (a second proposal of it): changes nothing.
    entries.push(entry(split_index + 2, None, split()));
    apply(&mut parent, entries).await;

    assert_eq!(
        parent.range().get(),
        HashRange {
            start: 0,
            end: AT - 1
        }
    );
    // Answered `NotInShard` and not recorded: its request id stays free, so the retry the client
    // sends to the child (or a batch split again by the new map) applies there.
    assert_eq!(parent.stored_result(late).unwrap(), None);
    assert_eq!(engine.get(high[1].as_bytes()).unwrap().unwrap().value, b"v");

    // The child's state exists: its range, membership and log start at the split's index.
    let mut child = engine.state_machine(CHILD, WHOLE_RING).unwrap();
    assert_eq!(
        child.range().get(),
        HashRange {
            start: AT,
            end: u64::MAX
        }
    );
    let (applied, membership) = child.applied_state().await.unwrap();
    assert_eq!(applied.map(|id| id.index), Some(split_index));
    let voters: BTreeSet<ReplicaId> = membership.membership().voter_ids().collect();
    assert_eq!(voters, [101, 102, 103].map(ReplicaId).into_iter().collect());
    let log_state = engine.log_store(CHILD).get_log_state().await.unwrap();
    assert_eq!(log_state.last_purged_log_id, applied);
    assert_eq!(log_state.last_log_id, applied);
    // A retry of a write the parent applied is answered from the child's copy of the table.
    assert_eq!(
        child.stored_result(retried).unwrap(),
        Some(CommandResult::Put { version: 1 })
    );

    // Between them the two ranges hold every key exactly once.
    let mut scanned = all_keys(&engine, parent.range().get());
    scanned.extend(all_keys(&engine, child.range().get()));
    let expected: BTreeSet<Vec<u8>> = low.iter().chain(&high).map(|k| k.clone().into_bytes()).collect();
    assert_eq!(scanned.len(), expected.len());
    assert_eq!(scanned.into_iter().collect::<BTreeSet<_>>(), expected);

    // The child goes on at the next index, so its versions are above every earlier one.
    let child_entry = Entry {
        log_id: openraft::testing::log_id::<TypeConfig>(1, ReplicaId(101), split_index + 1),
        payload: EntryPayload::Normal(Proposal::internal(put(&high[2], "child"))),
    };
    apply(&mut child, vec![child_entry]).await;
    let written = engine.get(high[2].as_bytes()).unwrap().unwrap();
    assert_eq!(
        (written.value.as_slice(), written.version),
        (&b"child"[..], split_index + 1)
    );
    // ...and the parent refuses a key on the child's side.
    let parent_late = RequestId { client: 9, seq: 1 };
    apply(
        &mut parent,
        vec![entry(split_index + 3, Some(parent_late), put(&low[0], "ok"))],
    )
    .await;
    assert!(matches!(
        parent.stored_result(parent_late).unwrap(),
        Some(CommandResult::Put { .. })
    ));

    // A snapshot of the parent carries its new range to a replica that had the old one.
    let snapshot = parent
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = Engine::open(other_dir.path()).unwrap();
    let mut other_parent = other.state_machine(PARENT, WHOLE_RING).unwrap();
    let path = other.incoming_snapshot_path(PARENT).unwrap();
    std::fs::copy(&snapshot.snapshot.path, &path).unwrap();
    other_parent
        .install_snapshot(&snapshot.meta, ringkv_engine::SnapshotFile { path })
        .await
        .unwrap();
    assert_eq!(other_parent.range().get(), parent.range().get());
    assert_eq!(all_keys(&other, WHOLE_RING).len(), low.len());
    drop(other_parent);
    // The range survives a restart.
    let reopened = other.state_machine(PARENT, WHOLE_RING).unwrap();
    assert_eq!(reopened.range().get(), parent.range().get());
}

#[tokio::test]
async fn deleting_a_lagging_parent_replica_spares_the_keys_of_its_child() {
    let (low, high) = keys();
    let puts: Vec<_> = low
        .iter()
        .chain(&high)
        .enumerate()
        .map(|(i, key)| entry(i as u64 + 1, None, put(key, "v")))
        .collect();
    // On one node the parent applies the split, and the child's snapshot is taken there.
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let mut parent = engine.state_machine(PARENT, WHOLE_RING).unwrap();
    let mut entries = puts.clone();
    entries.push(entry(puts.len() as u64 + 1, None, split()));
    apply(&mut parent, entries).await;
    let mut child = engine.state_machine(CHILD, WHOLE_RING).unwrap();
    let snapshot = child.get_snapshot_builder().await.build_snapshot().await.unwrap();

    // On another, the parent's replica lags (it still owns the whole ring) while the child's
    // replica there has installed that snapshot.
    let lagging_dir = tempfile::tempdir().unwrap();
    let lagging = Engine::open(lagging_dir.path()).unwrap();
    let mut lagging_parent = lagging.state_machine(PARENT, WHOLE_RING).unwrap();
    apply(&mut lagging_parent, puts).await;
    drop(lagging_parent);
    let child_arc = HashRange {
        start: AT,
        end: u64::MAX,
    };
    let mut lagging_child = lagging.state_machine(CHILD, child_arc).unwrap();
    let path = lagging.incoming_snapshot_path(CHILD).unwrap();
    std::fs::copy(&snapshot.snapshot.path, &path).unwrap();
    lagging_child
        .install_snapshot(&snapshot.meta, ringkv_engine::SnapshotFile { path })
        .await
        .unwrap();

    // Deleting the parent's replica deletes only the keys below the child's range.
    lagging.delete_replica(PARENT, WHOLE_RING).unwrap();
    assert_eq!(all_keys(&lagging, WHOLE_RING).len(), high.len());
    assert_eq!(all_keys(&lagging, lagging_child.range().get()).len(), high.len());
}

/// A split child starts with its log purged up to the split and no snapshot file. Any replica of
/// it may have to send a snapshot (to a learner added later, after a leader change), and openraft
/// stops a leader's group for good when the state machine says it has none: so one is built when
/// asked. With the old behaviour switched back on, the child has none to give.
#[tokio::test]
async fn a_split_child_has_a_snapshot_to_send_without_having_built_one() {
    let (low, high) = keys();
    let mut entries: Vec<_> = low
        .iter()
        .chain(&high)
        .enumerate()
        .map(|(i, key)| entry(i as u64 + 1, None, put(key, "v")))
        .collect();
    let split_index = entries.len() as u64 + 1;
    entries.push(entry(split_index, None, split()));

    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let mut parent = engine.state_machine(PARENT, WHOLE_RING).unwrap();
    apply(&mut parent, entries.clone()).await;
    let mut child = engine.state_machine(CHILD, WHOLE_RING).unwrap();
    let snapshot = child
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("a split child must have a snapshot to send");
    assert_eq!(snapshot.meta.last_log_id.map(|id| id.index), Some(split_index));
    let voters: BTreeSet<ReplicaId> = snapshot.meta.last_membership.membership().voter_ids().collect();
    assert_eq!(voters, [101, 102, 103].map(ReplicaId).into_iter().collect());

    // A new, empty replica of the child installs it and holds exactly the child's keys.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Engine::open(other_dir.path()).unwrap();
    let child_arc = HashRange {
        start: AT,
        end: u64::MAX,
    };
    let mut new_child = other.state_machine(CHILD, child_arc).unwrap();
    let path = other.incoming_snapshot_path(CHILD).unwrap();
    std::fs::copy(&snapshot.snapshot.path, &path).unwrap();
    new_child
        .install_snapshot(&snapshot.meta, ringkv_engine::SnapshotFile { path })
        .await
        .unwrap();
    assert_eq!(all_keys(&other, WHOLE_RING).len(), high.len());

    // The bug, switched back on: the child has nothing to send.
    let buggy_dir = tempfile::tempdir().unwrap();
    let options = ringkv_engine::EngineOptions::default();
    options
        .faults
        .no_snapshot_on_demand
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let buggy = Engine::open_with(buggy_dir.path(), options).unwrap();
    let mut buggy_parent = buggy.state_machine(PARENT, WHOLE_RING).unwrap();
    apply(&mut buggy_parent, entries).await;
    let mut buggy_child = buggy.state_machine(CHILD, WHOLE_RING).unwrap();
    assert!(buggy_child.get_current_snapshot().await.unwrap().is_none());
}

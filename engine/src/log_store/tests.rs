//! Log store reads: whole ranges are whole, replication payloads stop at a byte budget, and a
//! corrupted entry is an error, never a skip.

use futures::StreamExt;
use openraft::alias::EntryOf;
use openraft::type_config::TypeConfigExt;
use openraft::{Entry, EntryPayload};

use super::*;
use crate::types::{Command, Proposal, ReplicaId};

fn entry(index: u64, value_bytes: usize) -> EntryOf<TypeConfig> {
    Entry {
        log_id: openraft::testing::log_id::<TypeConfig>(1, ReplicaId(1), index),
        payload: EntryPayload::Normal(Proposal::internal(Command::Put {
            key: format!("k{index}").into_bytes(),
            value: vec![7; value_bytes],
        })),
    }
}

async fn append(store: &mut LogStore, entries: Vec<EntryOf<TypeConfig>>) {
    let (sender, receiver) = TypeConfig::oneshot();
    store.append(entries, IOFlushed::signal(sender)).await.unwrap();
    receiver.await.unwrap().unwrap();
}

/// Asserts `indexes` is exactly `first..=last`, saying how it differs without printing it all.
fn assert_consecutive(what: &str, indexes: &[u64], first: u64, last: u64) {
    assert_eq!(
        indexes.len() as u64,
        last - first + 1,
        "{what} returned {} entries ({:?}..={:?}), expected {first}..={last}",
        indexes.len(),
        indexes.first(),
        indexes.last()
    );
    assert!(
        indexes.iter().copied().eq(first..=last),
        "{what} returned entries out of order"
    );
}

async fn store_with(engine: &Engine, n: u64, value_bytes: usize) -> LogStore {
    let mut store = engine.log_store(ShardId(1));
    for first in (1..=n).step_by(1000) {
        let last = (first + 999).min(n);
        append(
            &mut store,
            (first..=last).map(|i| entry(i, value_bytes)).collect(),
        )
        .await;
    }
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_ten_thousand_entries_returns_every_one_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let mut store = store_with(&engine, 10_000, 10).await;

    let entries = store.try_get_log_entries(1..=10_000).await.unwrap();
    let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
    assert_consecutive("try_get_log_entries(1..=10000)", &indexes, 1, 10_000);

    // The apply path reads through the stream: it must yield the whole range too, in order.
    let streamed: Vec<u64> = store
        .entries_stream(1..10_001)
        .await
        .map(|entry| entry.unwrap().log_id.index)
        .collect()
        .await;
    assert_consecutive("entries_stream(1..10001)", &streamed, 1, 10_000);

    // Open-ended and mid-log ranges.
    assert_eq!(store.try_get_log_entries(5_000..).await.unwrap().len(), 5_001);
    assert_eq!(store.try_get_log_entries(..=1_500).await.unwrap().len(), 1_500);
    assert_eq!(store.try_get_log_entries(10_001..).await.unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_switch_brings_back_the_short_read_it_stands_for() {
    // The simulation suite uses this switch to show that it catches skipped applies; this test
    // keeps the switch honest: with it on, a whole-range read comes back short.
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let mut store = store_with(&engine, 5_000, 10).await;
    engine.faults().log_read_cap.store(4096, Ordering::Relaxed);
    assert_eq!(store.try_get_log_entries(1..=5_000).await.unwrap().len(), 4096);
    let streamed = store.entries_stream(1..5_001).await.count().await;
    assert_eq!(streamed, 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_payloads_stop_at_the_byte_budget_but_are_never_empty() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    // 1 MiB values: a payload holds about four of them.
    let mut store = store_with(&engine, 20, 1024 * 1024).await;
    let payload = store.limited_get_log_entries(1, 21).await.unwrap();
    assert!(!payload.is_empty());
    let bytes: usize = payload.iter().map(|e| codec::encode_entry(e).len()).sum();
    assert!(
        bytes <= REPLICATION_PAYLOAD_BYTES,
        "{} entries, {bytes} bytes",
        payload.len()
    );
    assert!(payload.len() < 20, "stopped early: {} entries", payload.len());
    assert_eq!(payload[0].log_id.index, 1);

    // An entry larger than the whole budget still goes, alone.
    append(&mut store, vec![entry(21, 6 * 1024 * 1024)]).await;
    let payload = store.limited_get_log_entries(21, 22).await.unwrap();
    assert_eq!(payload.len(), 1);
    // Small entries: bounded by the range asked for.
    append(&mut store, (22..=100).map(|i| entry(i, 1)).collect()).await;
    assert_eq!(store.limited_get_log_entries(22, 101).await.unwrap().len(), 79);
}

#[tokio::test]
async fn a_corrupted_log_entry_is_an_error_not_a_skip() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let mut store = engine.log_store(ShardId(1));
    let entries: Vec<EntryOf<TypeConfig>> = (1..=3)
        .map(|index| Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, ReplicaId(1), index),
            payload: EntryPayload::Normal(Proposal::internal(Command::Delete { key: b"k".to_vec() })),
        })
        .collect();
    append(&mut store, entries).await;

    // Flip one bit of entry 2 as stored.
    let key = keys::log_key(ShardId(1), 2);
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
    // The apply path's stream reports it too, instead of ending early.
    let streamed: Vec<_> = store.entries_stream(1..4).await.collect().await;
    assert!(streamed.iter().any(|item| item.is_err()), "{streamed:?}");
    // Entry 1, before the damage, still reads.
    assert_eq!(store.try_get_log_entries(1..2).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_entry_missing_at_the_end_of_the_log_is_an_error_not_a_short_stream() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let mut store = store_with(&engine, 5, 10).await;
    let log_id = |index| openraft::testing::log_id::<TypeConfig>(1, ReplicaId(1), index);

    // Past the committed index the stream ends with the log, as openraft's storage suite asks.
    store.save_committed(Some(log_id(5))).await.unwrap();
    let streamed: Vec<_> = store.entries_stream(1..9).await.collect().await;
    assert_eq!(streamed.len(), 5, "{streamed:?}");
    assert!(streamed.iter().all(Result::is_ok), "{streamed:?}");

    // Entries 6..=8 committed but not in the log: the apply path must not take the range as whole.
    store.save_committed(Some(log_id(8))).await.unwrap();
    let streamed: Vec<_> = store.entries_stream(1..9).await.collect().await;
    assert_eq!(streamed.len(), 6, "five entries, then the error: {streamed:?}");
    let error = streamed.last().unwrap().as_ref().unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    assert!(
        error.to_string().contains("committed entry 6 is missing"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_on_disk_are_read_whole_through_the_blocking_pool_after_an_inline_miss() {
    // Replication and apply read the log on the runtime thread when the entries are in memory.
    // Entries only in SST files, after a fresh open (empty block cache), must not come back as a
    // short or empty range: the inline read reports the miss and the blocking read answers.
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path()).unwrap();
        store_with(&engine, 3_000, 100).await;
        engine.flush().unwrap();
    }
    let engine = Engine::open(dir.path()).unwrap();
    let (start, end) = keys::log_range(ShardId(1), 1, Some(3_001));
    assert_eq!(
        engine
            .range_cf_if_cached(Cf::Log, &start, &end, 3_000, usize::MAX)
            .unwrap(),
        None,
        "entries only on disk need a file read"
    );
    let mut store = engine.log_store(ShardId(1));
    let payload: Vec<u64> = store
        .limited_get_log_entries(1, 1_001)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_consecutive("limited_get_log_entries(1, 1001) from disk", &payload, 1, 1_000);
    let streamed: Vec<u64> = store
        .entries_stream(1..3_001)
        .await
        .map(|entry| entry.unwrap().log_id.index)
        .collect()
        .await;
    assert_consecutive("entries_stream(1..3001) from disk", &streamed, 1, 3_000);

    // Newly appended entries are in the memtable: the inline read answers them whole.
    append(&mut store, (3_001..=3_100).map(|i| entry(i, 100)).collect()).await;
    let (start, end) = keys::log_range(ShardId(1), 3_001, Some(3_101));
    let pairs = engine
        .range_cf_if_cached(Cf::Log, &start, &end, 1_000, usize::MAX)
        .unwrap()
        .expect("the memtable answers without a file read");
    assert_eq!(pairs.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_reads_stop_at_their_byte_budget_and_the_rest_still_comes() {
    // 64 KiB entries: an inline read (1 MiB budget) holds 16 of them; a whole-range read keeps
    // going until it has them all.
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let mut store = store_with(&engine, 100, 64 * 1024).await;
    let payload = store.limited_get_log_entries(1, 101).await.unwrap();
    assert!(
        (1..=17).contains(&payload.len()),
        "{} entries in one payload",
        payload.len()
    );
    let all: Vec<u64> = store
        .try_get_log_entries(1..=100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_consecutive("try_get_log_entries(1..=100)", &all, 1, 100);
}

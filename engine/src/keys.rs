//! Key layout of the engine's column families. All integers are big-endian so RocksDB's byte order
//! is numeric order: one shard's log is one contiguous range, and so is one shard's data.
//!
//! - `raft_log`:   shard id (8) ++ log index (8)
//! - `raft_state`: shard id (8) ++ tag (1): vote, committed, last purged
//! - `data`:       key_hash(user key) (8) ++ user key
//! - `meta_kv`:    the same, for the metadata group (`ShardId::META`) alone
//! - `meta`:       b's' ++ shard id (8) ++ tag (1): applied state, current snapshot, install in
//!   progress, owner (the replica id the state belongs to); and b'n' ++ name: node-level records
//!   (cluster map, node identity)
//! - `sessions`:   shard id (8) ++ client id (8) ++ seq (8): the result of that client request
//!   (seq 0: the client's session record: floor and last activity)

use crate::rocks::HashRange;
use crate::types::{LogIndex, ShardId};

pub(crate) const STATE_VOTE: u8 = 1;
pub(crate) const STATE_COMMITTED: u8 = 2;
pub(crate) const STATE_PURGED: u8 = 3;

pub(crate) const META_APPLIED: u8 = 1;
pub(crate) const META_SNAPSHOT: u8 = 2;
pub(crate) const META_INSTALLING: u8 = 3;
pub(crate) const META_OWNER: u8 = 4;

pub(crate) fn log_key(shard: ShardId, index: LogIndex) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&shard.0.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The log index encoded in a `raft_log` key.
pub(crate) fn log_key_index(key: &[u8]) -> Option<LogIndex> {
    Some(LogIndex::from_be_bytes(key.get(8..16)?.try_into().ok()?))
}

/// `[start, end)` of a shard's log keys for indexes in `[from, to)`; `to = None` means the end of
/// the shard's log.
pub(crate) fn log_range(shard: ShardId, from: LogIndex, to: Option<LogIndex>) -> ([u8; 16], Vec<u8>) {
    let end = match to {
        Some(to) => log_key(shard, to).to_vec(),
        // Shard ids are far below u64::MAX, so the next shard's prefix bounds this one.
        None => (shard.0 + 1).to_be_bytes().to_vec(),
    };
    (log_key(shard, from), end)
}

pub(crate) fn state_key(shard: ShardId, tag: u8) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[..8].copy_from_slice(&shard.0.to_be_bytes());
    key[8] = tag;
    key
}

pub(crate) fn shard_meta_key(shard: ShardId, tag: u8) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[0] = b's';
    key[1..9].copy_from_slice(&shard.0.to_be_bytes());
    key[9] = tag;
    key
}

pub(crate) fn node_meta_key(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(b'n');
    key.extend_from_slice(name.as_bytes());
    key
}

pub(crate) fn session_key(shard: ShardId, client: u64, seq: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&shard.0.to_be_bytes());
    key[8..16].copy_from_slice(&client.to_be_bytes());
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The (client, seq) a `sessions` key names.
pub(crate) fn session_key_parts(key: &[u8]) -> Option<(u64, u64)> {
    let client = u64::from_be_bytes(key.get(8..16)?.try_into().ok()?);
    let seq = u64::from_be_bytes(key.get(16..24)?.try_into().ok()?);
    Some((client, seq))
}

/// `[start, end)` of one shard's `sessions` keys.
pub(crate) fn session_range(shard: ShardId) -> ([u8; 8], [u8; 8]) {
    (shard.0.to_be_bytes(), (shard.0 + 1).to_be_bytes())
}

pub(crate) fn data_key(user_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + user_key.len());
    key.extend_from_slice(&ringkv_core::key_hash(user_key).to_be_bytes());
    key.extend_from_slice(user_key);
    key
}

/// The user key inside a data key.
pub(crate) fn user_key(data_key: &[u8]) -> &[u8] {
    data_key.get(8..).unwrap_or_default()
}

/// `[start, end)` of the data keys in a hash range; `end = None` when the range reaches the end of
/// the ring.
pub(crate) fn data_range(range: HashRange) -> (Vec<u8>, Option<Vec<u8>>) {
    let start = range.start.to_be_bytes().to_vec();
    let end = range.end.checked_add(1).map(|next| next.to_be_bytes().to_vec());
    (start, end)
}

/// `[start, end)` of the data keys in a hash range, with a finite end: the last arc of the ring is
/// bounded by a key above every valid data key (hash, then a key of at most `MAX_KEY_BYTES`).
pub(crate) fn data_range_bounded(range: HashRange) -> (Vec<u8>, Vec<u8>) {
    let (start, end) = data_range(range);
    let end = end.unwrap_or_else(|| vec![0xff; 8 + ringkv_core::limits::MAX_KEY_BYTES + 1]);
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_shard_then_index() {
        let shard = ShardId;
        assert!(log_key(shard(1), u64::MAX) < log_key(shard(2), 0));
        assert!(log_key(shard(1), 255) < log_key(shard(1), 256));
        let (start, end) = log_range(shard(7), 0, None);
        assert!(start.as_slice() < log_key(shard(7), u64::MAX).as_slice());
        assert!(log_key(shard(7), u64::MAX).as_slice() < end.as_slice());
        assert!(end.as_slice() <= log_key(shard(8), 0).as_slice());
        assert_eq!(log_key_index(&log_key(shard(3), 42)), Some(42));
        let (start, end) = session_range(shard(7));
        let key = session_key(shard(7), u64::MAX, u64::MAX);
        assert!(start.as_slice() <= key.as_slice() && key.as_slice() < end.as_slice());
        assert_eq!(session_key_parts(&session_key(shard(7), 5, 9)), Some((5, 9)));
    }

    #[test]
    fn data_keys_of_a_range_sit_inside_its_bounds() {
        let range = HashRange {
            start: 1 << 60,
            end: (2 << 60) - 1,
        };
        let (start, end) = data_range(range);
        let end = end.unwrap();
        for key in [&b"a"[..], b"bb", b"{tag}x"] {
            let data = data_key(key);
            let hash = ringkv_core::key_hash(key);
            assert_eq!(
                range.start <= hash && hash <= range.end,
                start <= data && data < end,
                "{key:?}"
            );
            assert_eq!(user_key(&data), key);
        }
        assert_eq!(
            data_range(HashRange {
                start: 0,
                end: u64::MAX
            })
            .1,
            None
        );
    }
}

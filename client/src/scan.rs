//! Scans across the whole keyspace: shards in ring order, each paged by its server-side cursor,
//! resumable through an opaque `ScanCursor` (like Redis SCAN, keys come in hash order). A prefix
//! that fixes the hash tag (`{user42}:`) is scanned on the one shard holding its keys.

use bytes::Bytes;

use ringkv_proto::pb;

use crate::classify::RequestKind;
use crate::client::Client;
use crate::error::Error;
use crate::plan::{Target, request, unary};
use crate::pool::kv;
use crate::read::ReadOptions;
use crate::types::KeyValue;

/// Pages fetched per `scan` call at most, so a selective prefix over a huge keyspace returns a
/// cursor instead of running unbounded.
const MAX_PAGES_PER_CALL: usize = 1_000;

#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Only keys starting with this.
    pub prefix: Bytes,
    /// At most this many entries (0: 100).
    pub limit: usize,
    /// Where a previous scan stopped.
    pub cursor: Option<ScanCursor>,
    /// The level to read at; `None`: the client handle's read options.
    pub read: Option<ReadOptions>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    pub entries: Vec<KeyValue>,
    /// Where to continue; `None` when the whole keyspace has been scanned.
    pub next_cursor: Option<ScanCursor>,
}

/// A position in a keyspace scan: a point on the ring (the shard holding it) and the position
/// inside that shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanCursor {
    ring_position: u64,
    shard_cursor: Bytes,
}

impl ScanCursor {
    /// A scan that starts at a point of the hash ring: from the first key of the shard owning
    /// `ring_position` (a key's point is `ringkv_proto::key_hash(key)`). Shards hold keys in hash
    /// ranges, so this is the nearest thing to "scan from key K" that a hash-sharded store has.
    pub fn at_ring_position(ring_position: u64) -> ScanCursor {
        ScanCursor {
            ring_position,
            shard_cursor: Bytes::new(),
        }
    }

    /// Text form, for command lines: `RING_POSITION_HEX:SHARD_CURSOR_HEX`.
    pub fn encode(&self) -> String {
        let hex: String = self.shard_cursor.iter().map(|b| format!("{b:02x}")).collect();
        format!("{:016x}:{hex}", self.ring_position)
    }

    pub fn decode(text: &str) -> Result<ScanCursor, Error> {
        let bad = || Error::InvalidArgument(format!("{text:?} is not a scan cursor printed by ringkv"));
        let (position, cursor) = text.split_once(':').ok_or_else(bad)?;
        let ring_position = u64::from_str_radix(position, 16).map_err(|_| bad())?;
        if cursor.len() % 2 != 0 {
            return Err(bad());
        }
        let shard_cursor = (0..cursor.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&cursor[i..i + 2], 16).map_err(|_| bad()))
            .collect::<Result<Vec<u8>, Error>>()?;
        Ok(ScanCursor {
            ring_position,
            shard_cursor: shard_cursor.into(),
        })
    }
}

impl Client {
    /// Up to `limit` keys (with values) starting with `prefix`, in hash order, from `cursor`.
    pub async fn scan(&self, options: ScanOptions) -> Result<ScanPage, Error> {
        let limit = if options.limit == 0 { 100 } else { options.limit };
        ringkv_proto::check_scan(
            &options.prefix,
            options
                .cursor
                .as_ref()
                .map_or(&[][..], |cursor| &cursor.shard_cursor[..]),
        )?;
        let (mut ring_position, mut shard_cursor) = match options.cursor {
            Some(cursor) => (cursor.ring_position, cursor.shard_cursor),
            None => (0, Bytes::new()),
        };
        // A prefix that fixes the hash tag (`{user42}:`): every key it matches sits at one point
        // of the ring, so the scan asks the one shard holding it and ends there.
        let tagged = ringkv_proto::prefix_hash(&options.prefix);
        if let Some(hash) = tagged {
            if ring_position > hash {
                return Ok(ScanPage {
                    entries: Vec::new(),
                    next_cursor: None,
                });
            }
            if ring_position < hash {
                ring_position = hash;
                shard_cursor = Bytes::new();
            }
        }
        let mut entries = Vec::new();
        // One deadline for the whole call, however many pages it reads.
        let deadline = self.deadline(RequestKind::Read);
        let read = options.read.unwrap_or(self.read_options());
        for _ in 0..MAX_PAGES_PER_CALL {
            // Routed by the hash the scan stands at, which a split may have moved to another
            // shard since the last page; the cursor names that hash too, so the shard owning it
            // now goes on from there.
            let cursor = if shard_cursor.is_empty() {
                Bytes::copy_from_slice(&ring_position.to_be_bytes())
            } else {
                shard_cursor.clone()
            };
            let want = (limit - entries.len()) as u32;
            let response = self
                .read(
                    Target::Hash(ring_position),
                    read,
                    deadline,
                    |node, route, time, level| {
                        let message = pb::ScanRequest {
                            route: Some(route),
                            cursor: cursor.clone(),
                            prefix: options.prefix.clone(),
                            limit: want,
                            level: Some(level),
                        };
                        async move {
                            let response = unary(kv(node.channel).scan(request(message, time))).await?;
                            self.observe(&route, response.index);
                            Ok(response)
                        }
                    },
                )
                .await?;
            entries.extend(response.entries.into_iter().map(|e| KeyValue {
                key: e.key,
                value: e.value,
                version: e.version,
            }));
            if response.next_cursor.is_empty() {
                // This shard is done: go on past the end of its range as it was read, or finish
                // at the end of the ring.
                let range_end = match response.range_end {
                    Some(end) => end,
                    None => self.shard_map().await.shard_for_hash(ring_position).arc.end,
                };
                let past_tag = tagged.is_some_and(|hash| range_end >= hash);
                match range_end.checked_add(1).filter(|_| !past_tag) {
                    Some(next) => {
                        ring_position = next;
                        shard_cursor = Bytes::new();
                    }
                    None => {
                        return Ok(ScanPage {
                            entries,
                            next_cursor: None,
                        });
                    }
                }
            } else {
                if let Some(hash) = response.next_cursor.get(..8) {
                    ring_position = u64::from_be_bytes(hash.try_into().expect("8 bytes"));
                }
                shard_cursor = response.next_cursor;
            }
            if entries.len() >= limit {
                break;
            }
        }
        Ok(ScanPage {
            entries,
            next_cursor: Some(ScanCursor {
                ring_position,
                shard_cursor,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_through_text_and_refuse_garbage() {
        let cursor = ScanCursor {
            ring_position: 0x1234,
            shard_cursor: Bytes::from_static(&[0, 1, 0xab]),
        };
        assert_eq!(ScanCursor::decode(&cursor.encode()).unwrap(), cursor);
        for bad in ["", "xyz", "12:abc", "zz:00", "12"] {
            assert!(ScanCursor::decode(bad).is_err(), "{bad:?}");
        }
    }
}

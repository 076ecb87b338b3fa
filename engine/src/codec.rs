//! On-disk record encoding, in one place. Every record starts with a version byte so the format
//! can change without guessing; structured records are postcard; log entries also carry a crc32 of
//! their body, verified on every read (a mismatch is corruption, never skipped); stored values use
//! a fixed layout so reads need no deserialization.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::types::{LogIndex, ShardId, Versioned};

/// Format version of every record written by this build. 2: log entries carry a `Proposal`
/// (request id, leader clock, command); the applied state carries the log clock. 3: the applied
/// state carries the shard's range (splits). 4: the applied state carries the index its range
/// holds from; every other record is as in 3, and this build reads both.
pub const RECORD_VERSION: u8 = 4;
/// The oldest version this build reads: records of version 3 differ from 4 only in the applied
/// state, which `decode_versioned` lets its reader convert.
const OLDEST_READABLE: u8 = 3;

/// `version ++ postcard(value)`.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = vec![RECORD_VERSION];
    // Encoding plain in-memory data into a Vec cannot fail.
    bytes.extend(postcard::to_stdvec(value).expect("postcard encoding into a Vec"));
    bytes
}

/// Decodes a record written by `encode`; `what` names it in errors.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Error> {
    let body = check_version(bytes, what)?;
    decode_body(body, what)
}

/// The version byte of a record, and the record decoded as `Old` when that version is older than
/// this build's, else as `New`: for the one record whose layout changed between them.
pub fn decode_versioned<Old: DeserializeOwned, New: DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<Result<New, Old>, Error> {
    let body = check_version(bytes, what)?;
    if bytes[0] < RECORD_VERSION {
        Ok(Err(decode_body(body, what)?))
    } else {
        Ok(Ok(decode_body(body, what)?))
    }
}

fn decode_body<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Error> {
    postcard::from_bytes(body).map_err(|e| Error::Corruption {
        what: what.into(),
        detail: e.to_string(),
    })
}

fn check_version<'a>(bytes: &'a [u8], what: &str) -> Result<&'a [u8], Error> {
    match bytes.split_first() {
        Some((&version, body)) if (OLDEST_READABLE..=RECORD_VERSION).contains(&version) => Ok(body),
        Some((version, _)) => Err(Error::Corruption {
            what: what.into(),
            detail: format!(
                "record version {version}, this build reads versions {OLDEST_READABLE} to {RECORD_VERSION}"
            ),
        }),
        None => Err(Error::Corruption {
            what: what.into(),
            detail: "empty record".into(),
        }),
    }
}

/// A log entry: `version ++ crc32(body) (4, little-endian) ++ body`, body = postcard(entry).
pub fn encode_entry<T: Serialize>(entry: &T) -> Vec<u8> {
    let body = postcard::to_stdvec(entry).expect("postcard encoding into a Vec");
    let mut bytes = Vec::with_capacity(5 + body.len());
    bytes.push(RECORD_VERSION);
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

/// Decodes a log entry, verifying its checksum.
pub fn decode_entry<T: DeserializeOwned>(bytes: &[u8], shard: ShardId, index: LogIndex) -> Result<T, Error> {
    let what = || format!("log entry {index} of shard {shard}");
    let rest = check_version(bytes, &what())?;
    if rest.len() < 4 {
        return Err(Error::Corruption {
            what: what(),
            detail: "record shorter than its checksum".into(),
        });
    }
    let (crc, body) = rest.split_at(4);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let actual = crc32fast::hash(body);
    if stored != actual {
        return Err(Error::Corruption {
            what: what(),
            detail: format!("checksum mismatch (stored {stored:08x}, computed {actual:08x})"),
        });
    }
    postcard::from_bytes(body).map_err(|e| Error::Corruption {
        what: what(),
        detail: e.to_string(),
    })
}

/// A stored value: `version ++ write index (8, big-endian) ++ value bytes`.
pub fn encode_value(version: LogIndex, value: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(9 + value.len());
    bytes.push(RECORD_VERSION);
    bytes.extend_from_slice(&version.to_be_bytes());
    bytes.extend_from_slice(value);
    bytes
}

pub fn decode_value(bytes: &[u8]) -> Result<Versioned, Error> {
    let body = check_version(bytes, "stored value")?;
    if body.len() < 8 {
        return Err(Error::Corruption {
            what: "stored value".into(),
            detail: "shorter than its header".into(),
        });
    }
    let (version, value) = body.split_at(8);
    Ok(Versioned {
        version: LogIndex::from_be_bytes(version.try_into().expect("8 bytes")),
        value: value.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_other_versions() {
        let bytes = encode(&(7u64, "seven".to_string()));
        assert_eq!(
            decode::<(u64, String)>(&bytes, "test").unwrap(),
            (7, "seven".to_string())
        );
        let mut newer = bytes.clone();
        newer[0] = RECORD_VERSION + 1;
        let error = decode::<(u64, String)>(&newer, "test").unwrap_err().to_string();
        assert!(error.contains("record version"), "{error}");
        assert_eq!(
            decode_value(&encode_value(42, b"v")).unwrap(),
            Versioned {
                version: 42,
                value: b"v".to_vec()
            }
        );
    }

    #[test]
    fn a_flipped_bit_in_a_log_entry_is_corruption() {
        let mut bytes = encode_entry(&("entry", 5u64));
        assert_eq!(
            decode_entry::<(String, u64)>(&bytes, ShardId(1), 5).unwrap(),
            ("entry".to_string(), 5)
        );
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let error = decode_entry::<(String, u64)>(&bytes, ShardId(1), 5).unwrap_err();
        assert!(matches!(error, Error::Corruption { .. }), "{error}");
        assert!(error.to_string().contains("log entry 5 of shard 1"), "{error}");
    }
}

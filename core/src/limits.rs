//! Request size limits, checked by the client before sending (to fail fast) and by the server
//! before proposing (authoritatively). A request over a limit changes nothing.

use thiserror::Error;

/// Longest accepted key.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
/// Largest accepted value.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most operations in one batch.
pub const MAX_BATCH_OPS: usize = 1000;
/// Largest total of key and value bytes in one batch.
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Largest gRPC message a node or client accepts; above every request the limits allow.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A request that breaks one of the limits above. The message names the limit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LimitError {
    #[error("key is empty: keys must be 1 to {MAX_KEY_BYTES} bytes")]
    EmptyKey,
    #[error("key is {0} bytes: keys must be at most {MAX_KEY_BYTES} bytes")]
    KeyTooLong(usize),
    #[error("value is {0} bytes: values must be at most {MAX_VALUE_BYTES} bytes (1 MiB)")]
    ValueTooLarge(usize),
    #[error("batch is empty: a batch needs at least one operation")]
    EmptyBatch,
    #[error("batch has {0} operations: batches may hold at most {MAX_BATCH_OPS}")]
    BatchTooManyOps(usize),
    #[error(
        "batch holds {0} bytes of keys and values: batches may hold at most {MAX_BATCH_BYTES} bytes (8 MiB)"
    )]
    BatchTooLarge(usize),
    #[error("scan prefix is {0} bytes: a prefix is part of a key, at most {MAX_KEY_BYTES} bytes")]
    PrefixTooLong(usize),
    #[error(
        "scan cursor is {0} bytes: a cursor is a position ringkv returned, at most {MAX_CURSOR_BYTES} bytes"
    )]
    CursorTooLong(usize),
}

/// Longest scan cursor: a stored key (its 8-byte hash and the key).
pub const MAX_CURSOR_BYTES: usize = 8 + MAX_KEY_BYTES;

/// Checks a scan's prefix and cursor.
pub fn check_scan(prefix: &[u8], cursor: &[u8]) -> Result<(), LimitError> {
    if prefix.len() > MAX_KEY_BYTES {
        return Err(LimitError::PrefixTooLong(prefix.len()));
    }
    if cursor.len() > MAX_CURSOR_BYTES {
        return Err(LimitError::CursorTooLong(cursor.len()));
    }
    Ok(())
}

pub fn check_key(key: &[u8]) -> Result<(), LimitError> {
    match key.len() {
        0 => Err(LimitError::EmptyKey),
        n if n > MAX_KEY_BYTES => Err(LimitError::KeyTooLong(n)),
        _ => Ok(()),
    }
}

pub fn check_value(value: &[u8]) -> Result<(), LimitError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(LimitError::ValueTooLarge(value.len()));
    }
    Ok(())
}

/// Checks a batch given the sizes of its operations as `(key, value)` pairs (value 0 for deletes),
/// after each key and value has passed its own check.
pub fn check_batch(n_ops: usize, total_bytes: usize) -> Result<(), LimitError> {
    if n_ops == 0 {
        return Err(LimitError::EmptyBatch);
    }
    if n_ops > MAX_BATCH_OPS {
        return Err(LimitError::BatchTooManyOps(n_ops));
    }
    if total_bytes > MAX_BATCH_BYTES {
        return Err(LimitError::BatchTooLarge(total_bytes));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_accept_the_boundary_and_refuse_one_past_it() {
        assert_eq!(check_key(b""), Err(LimitError::EmptyKey));
        assert!(check_key(&[b'k'; MAX_KEY_BYTES]).is_ok());
        assert_eq!(
            check_key(&[b'k'; MAX_KEY_BYTES + 1]),
            Err(LimitError::KeyTooLong(MAX_KEY_BYTES + 1))
        );
        assert!(check_value(b"").is_ok());
        assert!(check_value(&vec![0; MAX_VALUE_BYTES]).is_ok());
        assert!(check_value(&vec![0; MAX_VALUE_BYTES + 1]).is_err());
        assert!(check_batch(MAX_BATCH_OPS, MAX_BATCH_BYTES).is_ok());
        assert!(check_batch(0, 0).is_err());
        assert!(check_batch(MAX_BATCH_OPS + 1, 10).is_err());
        assert!(check_batch(1, MAX_BATCH_BYTES + 1).is_err());
        assert!(check_scan(&[b'p'; MAX_KEY_BYTES], &[0; MAX_CURSOR_BYTES]).is_ok());
        assert_eq!(
            check_scan(&[b'p'; MAX_KEY_BYTES + 1], b""),
            Err(LimitError::PrefixTooLong(MAX_KEY_BYTES + 1))
        );
        assert_eq!(
            check_scan(b"", &[0; MAX_CURSOR_BYTES + 1]),
            Err(LimitError::CursorTooLong(MAX_CURSOR_BYTES + 1))
        );
    }

    #[test]
    fn messages_name_the_limit() {
        let message = check_key(&[b'k'; 5000]).unwrap_err().to_string();
        assert!(message.contains("4096"), "{message}");
        let message = check_value(&vec![0; MAX_VALUE_BYTES + 1])
            .unwrap_err()
            .to_string();
        assert!(message.contains("1 MiB"), "{message}");
    }
}

//! Encoding of openraft messages inside the Raft service's `payload` bytes: postcard, as for
//! on-disk records. Only ringkv nodes of the same version read these, so no version byte is needed
//! beyond the protobuf envelope.

use serde::Serialize;
use serde::de::DeserializeOwned;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain data structures into a Vec cannot fail.
    postcard::to_stdvec(value).expect("postcard encoding of a Raft message")
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("malformed Raft message: {e}"))
}

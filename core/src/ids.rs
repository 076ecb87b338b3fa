//! Identifiers. Nodes, shards and replicas are all numbered with `u64`s on the wire; in code each
//! is its own type, so passing a shard id where a replica id belongs does not compile.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $display:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw number, as carried on the wire.
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                $display(self.0, f)
            }
        }

        impl From<u64> for $name {
            fn from(raw: u64) -> Self {
                $name(raw)
            }
        }
    };
}

id_type!(
    /// A server process (one `ringkv start`, one data directory). 1 to 2^32-1.
    NodeId,
    number
);
id_type!(
    /// A shard: one arc of the hash ring and its own Raft group.
    ShardId,
    shard_number
);
id_type!(
    /// One Raft member of one shard: the openraft node id. Unique across the cluster and never
    /// reused, so a replica placed anew (on another node, or after data loss) gets a fresh one.
    ReplicaId,
    number
);

fn number(raw: u64, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    fmt::Display::fmt(&raw, f)
}

/// Shards print as their number, the metadata group as `meta`: "shard meta" in a log line reads
/// better than "shard 4294967295".
fn shard_number(raw: u64, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    if raw == ShardId::META.0 {
        f.write_str("meta")
    } else {
        fmt::Display::fmt(&raw, f)
    }
}

impl ShardId {
    /// The metadata group: the Raft group that holds the shard map. Its keys live apart from the
    /// shards' data (the engine's `meta_kv` column family); data shard ids stay below it.
    pub const META: ShardId = ShardId(u32::MAX as u64);

    pub const fn is_meta(self) -> bool {
        self.0 == ShardId::META.0
    }
}

/// A position in a shard's Raft log. A plain number: openraft indexes logs with `u64`.
pub type LogIndex = u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_and_serialize_as_plain_numbers() {
        assert_eq!(ShardId(7).to_string(), "7");
        assert_eq!(ShardId::META.to_string(), "meta");
        assert_eq!(format!("{:?}", NodeId(2)), "NodeId(2)");
        assert_eq!(ReplicaId::from(9).get(), 9);
    }
}

//! `HashRange`: an inclusive range of the 64-bit hash ring, the unit every crate agrees on. A
//! shard's arc in the map, a replica's range in its applied state, a snapshot's range.

use serde::{Deserialize, Serialize};

use crate::hash::key_hash;

/// Inclusive range of hash values `[start, end]`: one shard's arc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HashRange {
    pub start: u64,
    pub end: u64,
}

impl HashRange {
    /// The whole ring.
    pub const ALL: HashRange = HashRange {
        start: 0,
        end: u64::MAX,
    };

    pub fn contains(&self, hash: u64) -> bool {
        self.start <= hash && hash <= self.end
    }

    /// Whether the data key of `user_key` falls in the range.
    pub fn holds_key(&self, user_key: &[u8]) -> bool {
        self.contains(key_hash(user_key))
    }

    pub fn overlaps(&self, other: &HashRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_inclusive_at_both_ends() {
        let range = HashRange { start: 10, end: 20 };
        assert!(range.contains(10) && range.contains(20));
        assert!(!range.contains(9) && !range.contains(21));
        assert!(range.overlaps(&HashRange { start: 20, end: 30 }));
        assert!(!range.overlaps(&HashRange { start: 21, end: 30 }));
        assert!(HashRange::ALL.contains(u64::MAX));
    }
}

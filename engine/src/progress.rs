//! How far a replica's applied state may have reached, for the node that serves reads from it.
//!
//! The state machine raises the bound to an apply group's last index *before* it writes the group
//! (and to a snapshot's index before it installs it), so a read that finishes and then loads the
//! bound gets an index at or above the state it read: the index a session must reach before its
//! next read (monotonic reads). Waiting for data to be visible goes the other way and uses
//! openraft's applied index, which moves only after the write.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::types::LogIndex;

/// Shared between the state machine and the node serving the replica; clones share the bound.
#[derive(Debug, Clone, Default)]
pub struct AppliedBound(Arc<AtomicU64>);

impl AppliedBound {
    pub(crate) fn new(index: LogIndex) -> AppliedBound {
        AppliedBound(Arc::new(AtomicU64::new(index)))
    }

    /// No read of the replica's state has seen anything applied after this index.
    pub fn get(&self) -> LogIndex {
        self.0.load(Ordering::SeqCst)
    }

    /// Called before state up to `index` may become visible to readers.
    pub(crate) fn raise(&self, index: LogIndex) {
        self.0.fetch_max(index, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_only_rises() {
        let bound = AppliedBound::new(5);
        bound.raise(9);
        bound.raise(7);
        assert_eq!(bound.get(), 9);
        assert_eq!(bound.clone().get(), 9, "clones share it");
    }
}

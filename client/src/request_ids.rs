//! Request ids for writes: a random client id, and a sequence number per write, kept by every
//! attempt of that write so the shard applies it at most once (see the engine's `sessions`).
//! Each attempt also carries the lowest sequence number this client still waits for, so the shard
//! can forget older results and refuse stale copies of finished writes.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ringkv_proto::pb;

pub(crate) struct RequestIds {
    client_id: u64,
    next: AtomicU64,
    /// Sequence numbers of writes not finished yet. A std lock: held to insert, remove or read
    /// the smallest, never across an await.
    outstanding: Mutex<BTreeSet<u64>>,
}

/// One write's sequence number, outstanding until dropped (when the write has finished, whatever
/// its outcome).
pub(crate) struct Ticket {
    ids: Arc<RequestIds>,
    pub(crate) seq: u64,
}

impl RequestIds {
    pub(crate) fn new() -> Arc<RequestIds> {
        let client_id = loop {
            let id: u64 = rand::random();
            if id != 0 {
                break id;
            }
        };
        Arc::new(RequestIds {
            client_id,
            next: AtomicU64::new(1),
            outstanding: Mutex::new(BTreeSet::new()),
        })
    }

    pub(crate) fn begin(self: &Arc<Self>) -> Ticket {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        self.outstanding.lock().expect("request ids lock").insert(seq);
        Ticket {
            ids: self.clone(),
            seq,
        }
    }

    /// The id an attempt of write `seq` carries now.
    pub(crate) fn wire(&self, seq: u64) -> pb::RequestId {
        let first_incomplete = self
            .outstanding
            .lock()
            .expect("request ids lock")
            .first()
            .copied()
            .unwrap_or(seq)
            .min(seq);
        pb::RequestId {
            client_id: self.client_id,
            seq,
            first_incomplete,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.ids
            .outstanding
            .lock()
            .expect("request ids lock")
            .remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_the_oldest_write_still_running() {
        let ids = RequestIds::new();
        let first = ids.begin();
        let second = ids.begin();
        let third = ids.begin();
        assert_eq!((first.seq, second.seq, third.seq), (1, 2, 3));
        assert_eq!(ids.wire(third.seq).first_incomplete, 1);
        drop(first);
        assert_eq!(ids.wire(third.seq).first_incomplete, 2);
        drop(second);
        let wire = ids.wire(third.seq);
        assert_eq!((wire.seq, wire.first_incomplete), (3, 3));
        assert_ne!(wire.client_id, 0);
    }
}

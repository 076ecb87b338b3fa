//! Group commit: one node-wide thread makes the write-ahead log durable for every shard at once.
//!
//! Writers (log appends, votes, truncations, purges, snapshot installs) first write their batch to
//! RocksDB without syncing, so it is readable at once and ordered in the WAL, then queue a waiter
//! here. The syncer thread takes every waiter queued so far, issues one WAL fsync, which covers
//! every write made before it started, and only then completes those waiters. Concurrent appends
//! from many shards therefore share fsyncs, and no waiter completes before an fsync that began
//! after its write. A failed fsync poisons the engine: every later write is refused.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use openraft::storage::IOFlushed;
use tracing::error;

use crate::error::Error;
use crate::faults::{SyncEvent, SyncObserver};
use crate::types::{LogIndex, ShardId, TypeConfig};

/// Something to complete once the WAL is durable.
pub(crate) enum Waiter {
    /// An openraft log append's callback, and which append it acknowledges.
    Append {
        callback: IOFlushed<TypeConfig>,
        shard: ShardId,
        last_index: LogIndex,
    },
    /// An async caller awaiting durability (vote, truncate, purge, install).
    Notify(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// Counters since the engine opened.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub appends: AtomicU64,
    pub fsyncs_started: AtomicU64,
    pub fsyncs: AtomicU64,
}

pub(crate) struct Syncer {
    /// Unbounded on purpose: a waiter is a few words, and producers are bounded by openraft's own
    /// pipelines; blocking a Raft task here would stall every shard on the node.
    sender: Mutex<Option<mpsc::Sender<Waiter>>>,
    pub counters: Arc<Counters>,
    /// Set when an fsync failed; holds the reason for later errors.
    poisoned: Arc<Mutex<Option<String>>>,
    is_poisoned: Arc<AtomicBool>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

impl Syncer {
    /// Starts the syncer thread; `sync_wal(id)` makes every write made before the call durable
    /// (`id` numbers the calls from 1). `observer` (tests) hears which fsync acknowledged each
    /// append.
    pub(crate) fn start(
        sync_wal: impl Fn(u64) -> Result<(), String> + Send + 'static,
        observer: Option<SyncObserver>,
    ) -> Syncer {
        let (sender, receiver) = mpsc::channel::<Waiter>();
        let counters = Arc::new(Counters::default());
        let poisoned = Arc::new(Mutex::new(None));
        let is_poisoned = Arc::new(AtomicBool::new(false));
        let thread = {
            let (counters, poisoned, is_poisoned) = (counters.clone(), poisoned.clone(), is_poisoned.clone());
            thread::Builder::new()
                .name("ringkv-syncer".into())
                .spawn(move || run(receiver, sync_wal, observer, &counters, &poisoned, &is_poisoned))
                .expect("spawn the syncer thread")
        };
        Syncer {
            sender: Mutex::new(Some(sender)),
            counters,
            poisoned,
            is_poisoned,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Fails if an earlier fsync failed: call before every write.
    pub(crate) fn check_healthy(&self) -> Result<(), Error> {
        if self.is_poisoned.load(Ordering::Acquire) {
            let reason = self
                .poisoned
                .lock()
                .expect("poison lock")
                .clone()
                .unwrap_or_default();
            return Err(Error::Poisoned(reason));
        }
        Ok(())
    }

    /// Queues a waiter behind the writes already made. If the syncer has stopped, the waiter is
    /// failed at once.
    pub(crate) fn enqueue(&self, waiter: Waiter) {
        let sender = self.sender.lock().expect("syncer sender lock");
        let rejected = match sender.as_ref() {
            Some(sender) => sender.send(waiter).err().map(|e| e.0),
            None => Some(waiter),
        };
        if let Some(waiter) = rejected {
            complete(waiter, Err("the storage engine is shutting down".into()));
        }
    }

    /// Waits until every write made before this call is durable.
    pub(crate) async fn sync(&self) -> Result<(), Error> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.enqueue(Waiter::Notify(sender));
        match receiver.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(Error::Poisoned(reason)),
            Err(_) => Err(Error::Write(
                "the syncer stopped before confirming durability".into(),
            )),
        }
    }

    /// Stops the thread after it has completed every queued waiter.
    pub(crate) fn stop(&self) {
        self.sender.lock().expect("syncer sender lock").take();
        if let Some(thread) = self.thread.lock().expect("syncer thread lock").take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn complete(waiter: Waiter, result: Result<(), String>) {
    match waiter {
        Waiter::Append { callback, .. } => {
            callback.io_completed(result.map_err(|reason| std::io::Error::other(Error::Poisoned(reason))))
        }
        Waiter::Notify(sender) => {
            let _ = sender.send(result);
        }
    }
}

fn run(
    receiver: mpsc::Receiver<Waiter>,
    sync_wal: impl Fn(u64) -> Result<(), String>,
    observer: Option<SyncObserver>,
    counters: &Counters,
    poisoned: &Mutex<Option<String>>,
    is_poisoned: &AtomicBool,
) {
    // Ends when every sender is gone (the engine is closing) and the queue is drained.
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        batch.extend(receiver.try_iter());
        let mut fsync_id = 0;
        let result = if let Some(reason) = poisoned.lock().expect("poison lock").clone() {
            Err(reason)
        } else {
            let id = counters.fsyncs_started.fetch_add(1, Ordering::AcqRel) + 1;
            fsync_id = id;
            let result = sync_wal(id);
            counters.fsyncs.fetch_add(1, Ordering::AcqRel);
            if let Err(reason) = &result {
                error!(%reason, "WAL fsync failed; refusing all further writes on this node");
                *poisoned.lock().expect("poison lock") = Some(reason.clone());
                is_poisoned.store(true, Ordering::Release);
            }
            result
        };
        for waiter in batch {
            if let (
                Some(observe),
                Waiter::Append {
                    shard, last_index, ..
                },
                Ok(()),
            ) = (&observer, &waiter, &result)
            {
                observe(SyncEvent::AppendAcknowledged {
                    shard: *shard,
                    last_index: *last_index,
                    fsync_id,
                });
            }
            complete(waiter, result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_fsync_poisons_every_later_write() {
        let fail = Arc::new(AtomicBool::new(false));
        let syncer = {
            let fail = fail.clone();
            Syncer::start(
                move |_| {
                    if fail.load(Ordering::Acquire) {
                        Err("disk gone".into())
                    } else {
                        Ok(())
                    }
                },
                None,
            )
        };
        syncer.sync().await.unwrap();
        syncer.check_healthy().unwrap();
        fail.store(true, Ordering::Release);
        assert!(syncer.sync().await.is_err());
        let error = syncer.check_healthy().unwrap_err().to_string();
        assert!(error.contains("disk gone"), "{error}");
        fail.store(false, Ordering::Release);
        assert!(
            syncer.sync().await.is_err(),
            "a poisoned engine never syncs again"
        );
    }
}

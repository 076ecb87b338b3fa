//! The snapshot throttle: one token bucket per node that every outgoing snapshot stream draws
//! from, so moving replicas (a rebalance, a node join or a replacement) cannot take all of the
//! disk and network that foreground requests need. Raft messages other than snapshots are never
//! throttled.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Smallest chunk a throttled stream sends, so a low rate does not mean tiny messages.
const MIN_CHUNK_BYTES: usize = 16 * 1024;

/// A token bucket of `rate` bytes per second holding at most one second of tokens. Senders wait
/// in turn (the lock is fair and held while waiting), so concurrent snapshot streams share the rate.
#[derive(Debug)]
pub struct SnapshotThrottle {
    rate: u64,
    /// Tokens available (negative: owed) as of the instant.
    bucket: Mutex<(f64, Instant)>,
}

impl SnapshotThrottle {
    /// A throttle of `rate` bytes per second; `None` for 0 (no limit).
    pub fn new(rate: u64) -> Option<SnapshotThrottle> {
        (rate > 0).then(|| SnapshotThrottle {
            rate,
            bucket: Mutex::new((rate as f64, Instant::now())),
        })
    }

    /// The chunk size to stream with: at most `max`, and small enough that a chunk takes no
    /// more than a quarter of a second at the rate.
    pub fn chunk_bytes(&self, max: usize) -> usize {
        ((self.rate / 4) as usize).clamp(MIN_CHUNK_BYTES, max.max(MIN_CHUNK_BYTES))
    }

    /// Waits until `bytes` may be sent.
    pub async fn take(&self, bytes: usize) {
        let mut bucket = self.bucket.lock().await;
        let (tokens, since) = *bucket;
        let now = Instant::now();
        let rate = self.rate as f64;
        let refilled = (tokens + now.duration_since(since).as_secs_f64() * rate).min(rate);
        let left = refilled - bytes as f64;
        *bucket = (left, now);
        if left < 0.0 {
            // Held while waiting: the next sender's wait starts after this one's.
            tokio::time::sleep(Duration::from_secs_f64(-left / rate)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn streams_share_the_rate_after_a_one_second_burst() {
        let throttle = std::sync::Arc::new(SnapshotThrottle::new(4 * 1024 * 1024).expect("a rate"));
        let started = Instant::now();
        // Two streams of 6 MiB each in 1 MiB chunks: 12 MiB at 4 MiB/s, less the 4 MiB burst,
        // is 2 s at the least.
        let mut streams = tokio::task::JoinSet::new();
        for _ in 0..2 {
            let throttle = throttle.clone();
            streams.spawn(async move {
                for _ in 0..6 {
                    throttle.take(1024 * 1024).await;
                }
            });
        }
        while streams.join_next().await.is_some() {}
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(2), "12 MiB went out in {took:?}");
        assert!(
            took < Duration::from_millis(2100),
            "the throttle waited longer than the rate needs: {took:?}"
        );
    }

    #[test]
    fn no_rate_means_no_throttle_and_chunks_fit_the_rate() {
        assert!(SnapshotThrottle::new(0).is_none());
        let slow = SnapshotThrottle::new(100 * 1024).expect("a rate");
        assert_eq!(slow.chunk_bytes(1024 * 1024), 25 * 1024);
        let fast = SnapshotThrottle::new(1 << 30).expect("a rate");
        assert_eq!(fast.chunk_bytes(1024 * 1024), 1024 * 1024);
    }
}

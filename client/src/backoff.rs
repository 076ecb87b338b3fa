//! Exponential backoff with full jitter, in named presets. Jitter spreads retries of many clients
//! so they do not hit a recovering shard in lockstep.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// For a shard with no leader: elections take about a second, so start small and cap at half
    /// an election timeout.
    pub fn no_leader() -> Backoff {
        Backoff {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(500),
            attempt: 0,
        }
    }

    /// For a node that says it is busy: back off harder.
    pub fn busy() -> Backoff {
        Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(2),
            attempt: 0,
        }
    }

    /// The next delay: uniform in `[0, min(cap, base * 2^attempt)]`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let millis = ceiling.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }

    fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_stay_within_it() {
        let mut backoff = Backoff::no_leader();
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            ceilings.push(backoff.ceiling());
            let delay = backoff.next_delay();
            assert!(delay <= Duration::from_millis(500), "{delay:?}");
        }
        assert_eq!(ceilings[0], Duration::from_millis(20));
        assert_eq!(ceilings[1], Duration::from_millis(40));
        assert_eq!(*ceilings.last().unwrap(), Duration::from_millis(500));
        assert!(ceilings.windows(2).all(|w| w[0] <= w[1]));
    }
}

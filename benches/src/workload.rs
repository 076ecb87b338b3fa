//! What a load worker does next: the operation mix of each workload (the classic write / read /
//! mixed ones and YCSB A–F) and the key distributions (uniform, zipfian, latest).
//!
//! YCSB's mixes follow the YCSB core workloads. ringkv shards by hash, so there is no ordered key
//! range: YCSB-E's "short range scan" here is a scan of 1–100 entries starting at the ring
//! position of the chosen key (the first keys of the shard that owns it), one shard's page.

use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;

use crate::{Distribution, Workload};

/// The skew of YCSB's zipfian distribution (its `zipfian constant`).
const ZIPFIAN_THETA: f64 = 0.99;
/// YCSB-E's scans read between 1 and this many entries, uniformly.
pub const MAX_SCAN_LENGTH: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Read,
    /// Overwrite an existing key.
    Update,
    /// Write a key never written before (YCSB-D, YCSB-E).
    Insert,
    Scan,
    /// Read a key, then write it (YCSB-F); timed as one operation.
    ReadModifyWrite,
}

impl Op {
    pub const ALL: [Op; 5] = [Op::Read, Op::Update, Op::Insert, Op::Scan, Op::ReadModifyWrite];

    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Update => "write",
            Op::Insert => "insert",
            Op::Scan => "scan",
            Op::ReadModifyWrite => "rmw",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The operations of a workload with their shares, which add up to 1.
pub fn mix(workload: Workload, read_ratio: f64) -> Vec<(Op, f64)> {
    match workload {
        Workload::Write => vec![(Op::Update, 1.0)],
        Workload::Read => vec![(Op::Read, 1.0)],
        Workload::Mixed => vec![(Op::Read, read_ratio), (Op::Update, 1.0 - read_ratio)],
        Workload::YcsbA => vec![(Op::Read, 0.5), (Op::Update, 0.5)],
        Workload::YcsbB => vec![(Op::Read, 0.95), (Op::Update, 0.05)],
        Workload::YcsbC => vec![(Op::Read, 1.0)],
        Workload::YcsbD => vec![(Op::Read, 0.95), (Op::Insert, 0.05)],
        Workload::YcsbE => vec![(Op::Scan, 0.95), (Op::Insert, 0.05)],
        Workload::YcsbF => vec![(Op::Read, 0.5), (Op::ReadModifyWrite, 0.5)],
    }
}

/// The key distribution a workload uses unless `--distribution` says otherwise: YCSB's own
/// (zipfian; latest for YCSB-D), uniform for the classic workloads.
pub fn default_distribution(workload: Workload) -> Distribution {
    match workload {
        Workload::Write | Workload::Read | Workload::Mixed => Distribution::Uniform,
        Workload::YcsbD => Distribution::Latest,
        _ => Distribution::Zipfian,
    }
}

/// Picks operations and keys; shared by all workers (the only shared state is the insert counter).
pub struct Chooser {
    mix: Vec<(Op, f64)>,
    distribution: Distribution,
    zipfian: Zipfian,
    /// The next key index an insert writes; keys below it exist (or are being written).
    next_insert: AtomicU64,
}

impl Chooser {
    pub fn new(mix: Vec<(Op, f64)>, distribution: Distribution, n_keys: u64) -> Chooser {
        Chooser {
            mix,
            distribution,
            zipfian: Zipfian::new(n_keys, ZIPFIAN_THETA),
            next_insert: AtomicU64::new(n_keys),
        }
    }

    pub fn op(&self, rng: &mut impl Rng) -> Op {
        let mut point: f64 = rng.random();
        for &(op, share) in &self.mix {
            if point < share {
                return op;
            }
            point -= share;
        }
        self.mix.last().expect("a workload has at least one operation").0
    }

    /// The key index for a read, update, scan or read-modify-write.
    pub fn existing_key(&self, rng: &mut impl Rng) -> u64 {
        match self.distribution {
            Distribution::Uniform => rng.random_range(0..self.zipfian.n_items),
            Distribution::Zipfian => self.zipfian.next(rng),
            Distribution::Latest => {
                // Most recent first: rank 0 is the newest key number handed out. Ranks stay below
                // the preloaded count, so the key is never past the keyspace, but the newest ones
                // may still be in flight: such a read finds nothing (as in YCSB).
                let newest = self.next_insert.load(Ordering::Relaxed) - 1;
                newest - self.zipfian.next(rng)
            }
        }
    }

    /// A key index no operation has used yet.
    pub fn new_key(&self) -> u64 {
        self.next_insert.fetch_add(1, Ordering::Relaxed)
    }
}

/// Zipfian ranks in `0..n_items` (rank 0 most popular), by the method of Gray et al., "Quickly
/// generating billion-record synthetic databases" (SIGMOD 1994), as YCSB does.
pub struct Zipfian {
    n_items: u64,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
}

impl Zipfian {
    pub fn new(n_items: u64, theta: f64) -> Zipfian {
        assert!(n_items > 0, "a zipfian distribution needs at least one item");
        let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zeta_n = zeta(n_items);
        let zeta_2 = zeta(2.min(n_items));
        Zipfian {
            n_items,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta_n,
            eta: (1.0 - (2.0 / n_items as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n),
        }
    }

    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zeta_n;
        if uz < 1.0 || self.n_items == 1 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let rank = (self.n_items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.n_items - 1)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn every_mix_adds_up_to_one() {
        use clap::ValueEnum;
        for workload in Workload::value_variants() {
            let total: f64 = mix(*workload, 0.3).iter().map(|(_, share)| share).sum();
            assert!((total - 1.0).abs() < 1e-9, "{workload:?} adds up to {total}");
        }
    }

    #[test]
    fn operations_follow_the_mix() {
        let chooser = Chooser::new(mix(Workload::YcsbB, 0.0), Distribution::Uniform, 100);
        let mut rng = StdRng::seed_from_u64(7);
        let reads = (0..100_000).filter(|_| chooser.op(&mut rng) == Op::Read).count();
        // 95% reads: 95,000 expected, a standard deviation of ~69.
        assert!((94_000..96_000).contains(&reads), "{reads} reads in 100,000");
    }

    #[test]
    fn zipfian_favours_low_ranks_like_ycsb() {
        let zipfian = Zipfian::new(10_000, ZIPFIAN_THETA);
        let mut rng = StdRng::seed_from_u64(1);
        let mut counts = vec![0u64; 10_000];
        for _ in 0..200_000 {
            counts[zipfian.next(&mut rng) as usize] += 1;
        }
        // With theta 0.99 over 10,000 items, rank 0 has probability 1/zeta(10,000) ≈ 10%, and
        // the top 1% of keys take more than half of all requests; uniform would give 0.01% and 1%.
        let top = counts[0] as f64 / 200_000.0;
        assert!((0.08..0.12).contains(&top), "rank 0 drew {top:.3}");
        let top_percent: u64 = counts[..100].iter().sum();
        assert!(
            top_percent > 100_000,
            "top 100 ranks drew {top_percent} of 200,000"
        );
        assert!(counts[5_000..].iter().any(|&c| c > 0), "the tail is never drawn");
    }

    #[test]
    fn latest_reads_the_newest_keys_and_only_existing_ones() {
        let chooser = Chooser::new(mix(Workload::YcsbD, 0.0), Distribution::Latest, 1_000);
        for _ in 0..500 {
            chooser.new_key();
        }
        let mut rng = StdRng::seed_from_u64(3);
        let picks: Vec<u64> = (0..10_000).map(|_| chooser.existing_key(&mut rng)).collect();
        assert!(
            picks.iter().all(|&k| k < 1_500),
            "a key past the newest one was picked"
        );
        let newest_tenth = picks.iter().filter(|&&k| k >= 1_400).count();
        assert!(
            newest_tenth > 5_000,
            "only {newest_tenth} of 10,000 picks in the newest 100 keys"
        );
    }
}

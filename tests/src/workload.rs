//! The workload fault tests run: clients doing random reads, puts, compare-and-swaps and deletes
//! on a few shared keys, each recorded in a linearizability history exactly as its result says
//! (done, certainly not applied, or maybe applied), plus writes of keys of their own whose
//! acknowledgements are kept for the no-loss check.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_client::{Client, Error, Expect};

use crate::linearizability::{History, Op, OpToken, Outcome};

/// What one worker saw.
#[derive(Debug, Default, Clone)]
pub struct WorkerReport {
    /// Own keys whose writes were acknowledged, with their values.
    pub acknowledged: BTreeMap<String, String>,
    /// Operations that completed.
    pub completed: u64,
    /// Writes that ended with an error saying they may have applied.
    pub unknown: u64,
    /// Operations that ended with an error saying they did not happen.
    pub not_applied: u64,
    /// The first few error messages, for the test's report.
    pub error_samples: Vec<String>,
}

impl WorkerReport {
    pub fn merge(&mut self, other: WorkerReport) {
        self.acknowledged.extend(other.acknowledged);
        self.completed += other.completed;
        self.unknown += other.unknown;
        self.not_applied += other.not_applied;
        for sample in other.error_samples {
            if self.error_samples.len() < 10 {
                self.error_samples.push(sample);
            }
        }
    }

    fn error(&mut self, error: &Error) {
        if error.may_have_applied() {
            self.unknown += 1;
        } else {
            self.not_applied += 1;
        }
        if self.error_samples.len() < 10 {
            self.error_samples.push(error.to_string());
        }
    }
}

/// Records `result` for `token`: completed with `outcome`, unknown when the error says the
/// operation may have applied, not applied when it says it certainly did not.
fn record<T>(
    history: &History,
    token: OpToken,
    report: &mut WorkerReport,
    result: Result<T, Error>,
    outcome: impl FnOnce(T) -> Outcome,
) {
    match result {
        Ok(value) => {
            report.completed += 1;
            history.complete(token, outcome(value));
        }
        Err(error) => {
            report.error(&error);
            if error.may_have_applied() {
                history.unknown(token);
            } else {
                history.not_applied(token);
            }
        }
    }
}

/// Runs until `stop`: random operations on `n_keys` shared keys named `{prefix}-{i}`, then a
/// write of a key of its own, over and over. Seeded, so a failing run's choices replay.
pub async fn run_worker(
    worker_id: usize,
    client: Client,
    history: History,
    stop: Arc<AtomicBool>,
    prefix: &str,
    n_keys: usize,
    seed: u64,
) -> WorkerReport {
    let mut rng = StdRng::seed_from_u64(seed ^ (worker_id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut report = WorkerReport::default();
    let mut sequence = 0u64;
    // Bounded by the stop flag, which tests set after a bounded time; each operation is bounded
    // by the client's request timeout.
    while !stop.load(Ordering::Relaxed) {
        sequence += 1;
        let key = format!("{prefix}-{}", rng.random_range(0..n_keys));
        let value = format!("w{worker_id}-{sequence}");
        let roll = rng.random_range(0..100);
        if roll < 35 {
            let token = history.invoke(worker_id, key.as_bytes(), Op::Get);
            let result = client.get(&key).await;
            record(&history, token, &mut report, result, |found| {
                Outcome::Value(found.map(|v| v.value.to_vec()))
            });
        } else if roll < 70 {
            let token = history.invoke(worker_id, key.as_bytes(), Op::Put(value.clone().into_bytes()));
            let result = client.put(&key, &value).await;
            record(&history, token, &mut report, result, |_| Outcome::Ok);
        } else if roll < 95 {
            // Compare against what a read just saw, so many swaps succeed.
            let read = history.invoke(worker_id, key.as_bytes(), Op::Get);
            let result = client.get(&key).await;
            let expected = result
                .as_ref()
                .ok()
                .map(|found| found.as_ref().map(|v| v.value.clone()));
            record(&history, read, &mut report, result, |found| {
                Outcome::Value(found.map(|v| v.value.to_vec()))
            });
            let Some(expected) = expected else { continue };
            let op = Op::Cas {
                expect: expected.as_ref().map(|v| v.to_vec()),
                new: Some(value.clone().into_bytes()),
            };
            let expect = match &expected {
                Some(v) => Expect::Value(v.clone()),
                None => Expect::Absent,
            };
            let token = history.invoke(worker_id, key.as_bytes(), op);
            let result = client
                .compare_and_swap(&key, expect, Some(value.as_bytes()))
                .await;
            record(&history, token, &mut report, result, |outcome| {
                Outcome::Succeeded(outcome.succeeded)
            });
        } else {
            let token = history.invoke(worker_id, key.as_bytes(), Op::Delete);
            let result = client.delete(&key).await;
            record(&history, token, &mut report, result, Outcome::Succeeded);
        }
        let own_key = format!("{prefix}-own-{worker_id}-{sequence}");
        match client.put(&own_key, &value).await {
            Ok(_) => {
                report.completed += 1;
                report.acknowledged.insert(own_key, value);
            }
            Err(error) => report.error(&error),
        }
    }
    report
}

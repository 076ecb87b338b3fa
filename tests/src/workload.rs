//! The workload fault tests run: clients doing random reads, puts, compare-and-swaps and deletes
//! on a few shared keys, each recorded in a linearizability history exactly as its result says
//! (done, certainly not applied, or maybe applied), plus writes of keys of their own whose
//! acknowledgements are kept for the no-loss check; and level workers (`run_level_worker`):
//! puts, batches across shards, and reads at every consistency level, each checked against its
//! level's guarantee (`levels`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_client::{
    BatchOp, Client, Consistency, Error, Expect, ReadOptions, ReplicaSelection, ShardOutcome,
};

use crate::levels::{Level, LevelHistory, PutOutcome};
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

/// What a level worker saw.
#[derive(Debug, Default, Clone)]
pub struct LevelReport {
    /// Operations that completed, and writes whose batch spanned more than one shard.
    pub completed: u64,
    pub batches_across_shards: u64,
    /// Valid requests refused as bad input: a bug, whatever the faults.
    pub refused_as_invalid: Vec<String>,
}

/// Records a put of `worker` in both histories, as `outcome` says.
fn record_put(
    lin: &History,
    levels: &LevelHistory,
    worker: usize,
    (token, key, value, invoked): (OpToken, &[u8], &[u8], u64),
    outcome: PutOutcome,
) {
    match outcome {
        PutOutcome::Acknowledged { .. } => lin.complete(token, Outcome::Ok),
        PutOutcome::MaybeApplied => lin.unknown(token),
        PutOutcome::NotApplied => lin.not_applied(token),
    }
    levels.put(worker, key, value, invoked, outcome);
}

fn put_outcome(error: &Error) -> PutOutcome {
    if error.may_have_applied() {
        PutOutcome::MaybeApplied
    } else {
        PutOutcome::NotApplied
    }
}

/// Runs until `stop`: on `n_keys` keys `{prefix}-lv-{i}` (their own key space, written only by
/// puts of values no other put writes), puts of one key and batches of two or three (whose keys
/// land on any shards, on both sides of any split point), and reads at every level below
/// linearizable, through `client`, which carries this worker's `Session`. Puts and
/// replica-linearizable reads go to `lin` (the linearizability checker); puts and session,
/// bounded and eventual reads go to `levels` (`levels::LevelHistory::check`). Every result is
/// recorded exactly as it says: acknowledged, maybe applied, or certainly not applied.
#[allow(clippy::too_many_arguments)]
pub async fn run_level_worker(
    worker_id: usize,
    client: Client,
    lin: History,
    levels: LevelHistory,
    stop: Arc<AtomicBool>,
    prefix: &str,
    n_keys: usize,
    seed: u64,
) -> LevelReport {
    let mut rng =
        StdRng::seed_from_u64(seed ^ 0x1e7e15 ^ (worker_id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut report = LevelReport::default();
    // Ids apart from `run_worker`'s in the linearizability history.
    let lin_client = 1_000 + worker_id;
    let mut sequence = 0u64;
    let key_of = |i: usize| format!("{prefix}-lv-{i}");
    let refused = |report: &mut LevelReport, what: &str, error: &Error| {
        if matches!(error, Error::InvalidArgument(_)) && report.refused_as_invalid.len() < 10 {
            report
                .refused_as_invalid
                .push(format!("{what} refused as invalid: {error}"));
        }
    };
    while !stop.load(Ordering::Relaxed) {
        sequence += 1;
        let roll = rng.random_range(0..100);
        if roll < 30 {
            let key = key_of(rng.random_range(0..n_keys));
            let value = format!("L{worker_id}-{sequence}");
            let token = lin.invoke(lin_client, key.as_bytes(), Op::Put(value.clone().into_bytes()));
            let invoked = levels.now();
            let outcome = match client.put(&key, &value).await {
                Ok(version) => PutOutcome::Acknowledged { version },
                Err(error) => {
                    refused(&mut report, "a put", &error);
                    put_outcome(&error)
                }
            };
            report.completed += u64::from(matches!(outcome, PutOutcome::Acknowledged { .. }));
            record_put(
                &lin,
                &levels,
                worker_id,
                (token, key.as_bytes(), value.as_bytes(), invoked),
                outcome,
            );
        } else if roll < 40 {
            let mut indexes: Vec<usize> = (0..n_keys).collect();
            let count = rng.random_range(2..=3.min(n_keys));
            let mut chosen = Vec::new();
            for _ in 0..count {
                chosen.push(indexes.swap_remove(rng.random_range(0..indexes.len())));
            }
            let puts: Vec<(String, String)> = chosen
                .iter()
                .enumerate()
                .map(|(j, &i)| (key_of(i), format!("L{worker_id}-{sequence}-{j}")))
                .collect();
            let tokens: Vec<OpToken> = puts
                .iter()
                .map(|(key, value)| {
                    lin.invoke(lin_client, key.as_bytes(), Op::Put(value.clone().into_bytes()))
                })
                .collect();
            let invoked = levels.now();
            let ops = puts
                .iter()
                .map(|(key, value)| BatchOp::Put {
                    key: Bytes::from(key.clone()),
                    value: Bytes::from(value.clone()),
                })
                .collect();
            let result = client.batch(ops).await;
            // Each key's outcome: that of the shard part that held it.
            let outcome_of = |key: &str| -> PutOutcome {
                let holds = |keys: &[Bytes]| keys.iter().any(|k| k.as_ref() == key.as_bytes());
                match &result {
                    Ok(outcome) => outcome
                        .keys
                        .iter()
                        .find(|(_, keys)| holds(keys))
                        .and_then(|(shard, _)| outcome.versions.get(shard))
                        .map_or(PutOutcome::MaybeApplied, |&version| PutOutcome::Acknowledged {
                            version,
                        }),
                    Err(Error::Batch { shards, keys, .. }) => keys
                        .iter()
                        .find(|(_, keys)| holds(keys))
                        .and_then(|(shard, _)| shards.get(shard))
                        .map_or(PutOutcome::MaybeApplied, |outcome| match outcome {
                            ShardOutcome::Applied { version } => {
                                PutOutcome::Acknowledged { version: *version }
                            }
                            ShardOutcome::NotApplied(_) => PutOutcome::NotApplied,
                            ShardOutcome::Unknown(_) => PutOutcome::MaybeApplied,
                        }),
                    Err(error) => put_outcome(error),
                }
            };
            if let Ok(outcome) = &result
                && outcome.versions.len() > 1
            {
                report.batches_across_shards += 1;
            }
            if let Err(error) = &result {
                refused(&mut report, "a batch", error);
            }
            for ((key, value), token) in puts.iter().zip(tokens) {
                let outcome = outcome_of(key);
                record_put(
                    &lin,
                    &levels,
                    worker_id,
                    (token, key.as_bytes(), value.as_bytes(), invoked),
                    outcome,
                );
            }
            report.completed += u64::from(result.is_ok());
        } else {
            let key = key_of(rng.random_range(0..n_keys));
            let (consistency, level) = match rng.random_range(0..5) {
                0 => (Consistency::ReplicaLinearizable, None),
                1 => (Consistency::Session, Some(Level::Session)),
                2 => {
                    let bound = Duration::from_millis(300);
                    (Consistency::Bounded(bound), Some(Level::Bounded(bound)))
                }
                3 => {
                    let bound = Duration::from_millis(1500);
                    (Consistency::Bounded(bound), Some(Level::Bounded(bound)))
                }
                _ => (Consistency::Eventual, Some(Level::Eventual)),
            };
            let options = ReadOptions::new(consistency).with_selection(ReplicaSelection::Spread);
            match level {
                None => {
                    let token = lin.invoke(lin_client, key.as_bytes(), Op::Get);
                    match client.get_with(&key, options).await {
                        Ok(found) => {
                            report.completed += 1;
                            lin.complete(token, Outcome::Value(found.map(|v| v.value.to_vec())));
                        }
                        Err(error) => {
                            refused(&mut report, "a replica-linearizable read", &error);
                            lin.not_applied(token);
                        }
                    }
                }
                Some(level) => {
                    let invoked = levels.now();
                    match client.get_traced(&key, options).await {
                        Ok((found, served)) => {
                            report.completed += 1;
                            levels.read(
                                worker_id,
                                key.as_bytes(),
                                level,
                                invoked,
                                found.map(|v| (v.value.to_vec(), v.version)),
                                (served.node_id.0, served.replica_id.0),
                            );
                        }
                        Err(error) => refused(&mut report, "a read", &error),
                    }
                }
            }
        }
    }
    report
}

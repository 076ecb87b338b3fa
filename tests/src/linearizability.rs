//! A linearizability checker for key-value histories recorded by concurrent test clients.
//!
//! Process overview:
//! 1. Clients record every operation: `invoke` before sending, then `complete` with what they saw,
//!    `unknown` when it may or may not have happened (an `OutcomeUnknown` error or a deadline), or
//!    `not_applied` when the error says it certainly did not happen (it is then left out, so a
//!    write reported as failed that did apply shows up as a violation).
//! 2. Operations on different keys are independent, so the history is split by key and each key
//!    is checked alone (P-compositionality).
//! 3. Per key, a Wing & Gong style depth-first search builds a sequential order: an operation may
//!    come next if no unordered operation returned before it was invoked; it is applied to a model
//!    register (the key's value or absence) and its recorded result must match. Failed operations
//!    never returned, so they may be placed anywhere after their invocation, or nowhere.
//! 4. Visited (set of ordered operations, register value) pairs are cached, which keeps the search
//!    close to linear for histories with few concurrent clients.
//!
//! Failed reads constrain nothing and are dropped. The search has a step budget and reports
//! `BudgetExceeded` instead of running forever.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// An operation on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Get,
    Put(Vec<u8>),
    Delete,
    /// Compare-and-swap: if the key holds `expect` (`None`: absent), set it to `new` (`None`: delete).
    Cas {
        expect: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    },
}

/// What a completed operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A put finished.
    Ok,
    /// A get saw this value (`None`: absent).
    Value(Option<Vec<u8>>),
    /// A delete found the key (`true`) or not; a compare-and-swap swapped (`true`) or not.
    Succeeded(bool),
}

/// One recorded operation. Times are nanoseconds since the history began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub client: usize,
    pub key: Vec<u8>,
    pub op: Op,
    pub invoked_at: u64,
    /// `None` while running, or forever if the outcome is unknown.
    pub returned_at: Option<u64>,
    /// `None` if the outcome is unknown.
    pub outcome: Option<Outcome>,
}

/// A thread-safe recorder, cheap to clone; clones append to the same history.
#[derive(Clone)]
pub struct History {
    started: Instant,
    operations: Arc<Mutex<Vec<Operation>>>,
    /// Operations recorded as certainly not applied: left out of `operations()`.
    not_applied: Arc<Mutex<HashSet<usize>>>,
}

/// Names an invoked operation so its completion can be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpToken(usize);

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    pub fn new() -> History {
        History {
            started: Instant::now(),
            operations: Arc::new(Mutex::new(Vec::new())),
            not_applied: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// Records that `client` is about to send `op` on `key`. Call right before sending.
    pub fn invoke(&self, client: usize, key: &[u8], op: Op) -> OpToken {
        let mut operations = self.operations.lock().expect("history lock");
        let invoked_at = self.now();
        operations.push(Operation {
            client,
            key: key.to_vec(),
            op,
            invoked_at,
            returned_at: None,
            outcome: None,
        });
        OpToken(operations.len() - 1)
    }

    /// Records what the operation returned. Call right after the answer arrives.
    pub fn complete(&self, token: OpToken, outcome: Outcome) {
        let returned_at = self.now();
        let mut operations = self.operations.lock().expect("history lock");
        let operation = &mut operations[token.0];
        operation.returned_at = Some(returned_at);
        operation.outcome = Some(outcome);
    }

    /// Records that the operation may or may not have happened: it never returned.
    pub fn unknown(&self, token: OpToken) {
        let _ = token;
    }

    /// Records that the operation certainly did not happen (the error said so): it is left out of
    /// the history, so if it did happen after all, the checker finds a value nobody wrote.
    pub fn not_applied(&self, token: OpToken) {
        self.not_applied.lock().expect("history lock").insert(token.0);
    }

    /// A copy of everything recorded so far, without the operations that did not happen.
    pub fn operations(&self) -> Vec<Operation> {
        let not_applied = self.not_applied.lock().expect("history lock").clone();
        self.operations
            .lock()
            .expect("history lock")
            .iter()
            .enumerate()
            .filter(|(index, _)| !not_applied.contains(index))
            .map(|(_, operation)| operation.clone())
            .collect()
    }
}

/// The checker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable {
        key: Vec<u8>,
        explanation: String,
    },
    /// The search for this key took more than the budget's steps without an answer.
    BudgetExceeded {
        key: Vec<u8>,
    },
}

/// Panics unless `check` shows the history linearizable within `budget`, first printing (to
/// stderr) every operation on the key it could not show, so a failure can be analysed after.
pub fn assert_linearizable(operations: &[Operation], budget: usize) {
    let verdict = check(operations, budget);
    let key = match &verdict {
        Verdict::Linearizable => return,
        Verdict::NotLinearizable { key, .. } | Verdict::BudgetExceeded { key } => key,
    };
    for operation in operations.iter().filter(|op| &op.key == key) {
        eprintln!("{operation:?}");
    }
    panic!(
        "history of {} operations is not shown linearizable: {verdict:?}",
        operations.len()
    );
}

/// Checks a history, key by key, spending at most `budget` search steps per key.
pub fn check(operations: &[Operation], budget: usize) -> Verdict {
    let mut by_key: HashMap<&[u8], Vec<&Operation>> = HashMap::new();
    for operation in operations {
        by_key.entry(&operation.key).or_default().push(operation);
    }
    let mut keys: Vec<&[u8]> = by_key.keys().copied().collect();
    keys.sort();
    for key in keys {
        match check_key(&by_key[key], budget) {
            KeyVerdict::Ok => {}
            KeyVerdict::Violation(explanation) => {
                return Verdict::NotLinearizable {
                    key: key.to_vec(),
                    explanation,
                };
            }
            KeyVerdict::OutOfBudget => return Verdict::BudgetExceeded { key: key.to_vec() },
        }
    }
    Verdict::Linearizable
}

enum KeyVerdict {
    Ok,
    Violation(String),
    OutOfBudget,
}

/// An operation prepared for the search: values interned as small ids (0 = absent).
#[derive(Debug, Clone)]
struct Entry {
    op: ModelOp,
    outcome: Option<ModelOutcome>,
    invoked_at: u64,
    /// `u64::MAX` when the outcome is unknown.
    returned_at: u64,
    source: usize,
}

#[derive(Debug, Clone, Copy)]
enum ModelOp {
    Get,
    Put(u32),
    Delete,
    Cas { expect: u32, new: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelOutcome {
    Ok,
    Value(u32),
    Succeeded(bool),
}

/// Applies `op` to the register `state`; `None` if the recorded outcome contradicts it.
fn step(state: u32, op: ModelOp, outcome: Option<ModelOutcome>) -> Option<u32> {
    let (next, result) = match op {
        ModelOp::Get => (state, ModelOutcome::Value(state)),
        ModelOp::Put(value) => (value, ModelOutcome::Ok),
        ModelOp::Delete => (0, ModelOutcome::Succeeded(state != 0)),
        ModelOp::Cas { expect, new } => {
            if state == expect {
                (new, ModelOutcome::Succeeded(true))
            } else {
                (state, ModelOutcome::Succeeded(false))
            }
        }
    };
    match outcome {
        Some(recorded) if recorded != result => None,
        _ => Some(next),
    }
}

fn check_key(operations: &[&Operation], budget: usize) -> KeyVerdict {
    let mut values: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut intern = |value: &Option<Vec<u8>>| -> u32 {
        match value {
            None => 0,
            Some(bytes) => {
                let next = values.len() as u32 + 1;
                *values.entry(bytes.clone()).or_insert(next)
            }
        }
    };
    let mut entries: Vec<Entry> = Vec::new();
    for (source, operation) in operations.iter().enumerate() {
        if operation.outcome.is_none() && operation.op == Op::Get {
            continue; // A failed read changed nothing and constrains nothing.
        }
        let op = match &operation.op {
            Op::Get => ModelOp::Get,
            Op::Put(value) => ModelOp::Put(intern(&Some(value.clone()))),
            Op::Delete => ModelOp::Delete,
            Op::Cas { expect, new } => ModelOp::Cas {
                expect: intern(expect),
                new: intern(new),
            },
        };
        let outcome = operation.outcome.as_ref().map(|outcome| match outcome {
            Outcome::Ok => ModelOutcome::Ok,
            Outcome::Value(value) => ModelOutcome::Value(intern(value)),
            Outcome::Succeeded(flag) => ModelOutcome::Succeeded(*flag),
        });
        let returned_at = match (&outcome, operation.returned_at) {
            (Some(_), Some(at)) => at,
            _ => u64::MAX,
        };
        entries.push(Entry {
            op,
            outcome,
            invoked_at: operation.invoked_at,
            returned_at,
            source,
        });
    }
    entries.sort_by_key(|entry| entry.invoked_at);
    let n = entries.len();
    let completed = entries.iter().filter(|e| e.outcome.is_some()).count();
    let words = n.div_ceil(64);

    // Depth-first search with an explicit stack of (linearized set, state, next candidate index).
    let mut linearized = vec![0u64; words];
    let is_set = |set: &[u64], i: usize| set[i / 64] & (1 << (i % 64)) != 0;
    let mut seen: HashSet<(Vec<u64>, u32)> = HashSet::new();
    struct Frame {
        state: u32,
        /// The entry this frame linearized (to undo on backtrack).
        entry: Option<usize>,
        /// Candidate order for this frame and the position reached in it.
        candidates: Vec<usize>,
        position: usize,
    }
    let candidates_of = |set: &[u64]| -> Vec<usize> {
        // An operation may go next if no unordered completed operation returned before its
        // invocation. Completed operations first: failed ones can always wait until the end.
        let min_return = (0..n)
            .filter(|&i| !is_set(set, i))
            .map(|i| entries[i].returned_at)
            .min()
            .unwrap_or(u64::MAX);
        let mut ready: Vec<usize> = (0..n)
            .filter(|&i| !is_set(set, i) && entries[i].invoked_at <= min_return)
            .collect();
        ready.sort_by_key(|&i| (entries[i].outcome.is_none(), entries[i].invoked_at));
        ready
    };
    let mut stack = vec![Frame {
        state: 0,
        entry: None,
        candidates: candidates_of(&linearized),
        position: 0,
    }];
    let mut done_completed = 0usize;
    let mut deepest = (0usize, 0u32, Vec::new());
    let mut steps = 0usize;
    while let Some(frame) = stack.last_mut() {
        if done_completed == completed {
            return KeyVerdict::Ok;
        }
        steps += 1;
        if steps > budget {
            return KeyVerdict::OutOfBudget;
        }
        if frame.position >= frame.candidates.len() {
            // Dead end: undo this frame's operation.
            let frame = stack.pop().expect("non-empty");
            if let Some(i) = frame.entry {
                linearized[i / 64] &= !(1 << (i % 64));
                if entries[i].outcome.is_some() {
                    done_completed -= 1;
                }
            }
            continue;
        }
        let i = frame.candidates[frame.position];
        frame.position += 1;
        let Some(next_state) = step(frame.state, entries[i].op, entries[i].outcome) else {
            continue;
        };
        linearized[i / 64] |= 1 << (i % 64);
        if !seen.insert((linearized.clone(), next_state)) {
            linearized[i / 64] &= !(1 << (i % 64));
            continue;
        }
        if entries[i].outcome.is_some() {
            done_completed += 1;
        }
        if done_completed > deepest.0 {
            deepest = (done_completed, next_state, linearized.clone());
        }
        let candidates = candidates_of(&linearized);
        stack.push(Frame {
            state: next_state,
            entry: Some(i),
            candidates,
            position: 0,
        });
    }
    KeyVerdict::Violation(explain(operations, &entries, &values, completed, &deepest))
}

fn explain(
    operations: &[&Operation],
    entries: &[Entry],
    values: &HashMap<Vec<u8>, u32>,
    completed: usize,
    deepest: &(usize, u32, Vec<u64>),
) -> String {
    let (ordered, state, set) = deepest;
    let name = |id: u32| -> String {
        if id == 0 {
            return "absent".into();
        }
        values
            .iter()
            .find(|(_, v)| **v == id)
            .map_or("?".into(), |(bytes, _)| {
                format!("{:?}", String::from_utf8_lossy(bytes))
            })
    };
    let is_set = |i: usize| set.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0);
    let mut stuck: Vec<String> = entries
        .iter()
        .enumerate()
        .filter(|(i, e)| !is_set(*i) && e.outcome.is_some())
        .take(5)
        .map(|(_, e)| {
            let operation = operations[e.source];
            format!(
                "client {} {:?} -> {:?} (invoked {} µs, returned {} µs)",
                operation.client,
                operation.op,
                operation.outcome,
                operation.invoked_at / 1000,
                operation.returned_at.unwrap_or(0) / 1000
            )
        })
        .collect();
    stuck.sort();
    format!(
        "no order of the {completed} completed operations fits a single register: at best {ordered} could be \
         ordered, leaving the value {}, and none of these could come next: {}",
        name(*state),
        stuck.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: usize = 1_000_000;

    /// Builds an operation from a compact description; times in arbitrary units.
    fn op(
        client: usize,
        key: &str,
        op: Op,
        invoked_at: u64,
        returned_at: u64,
        outcome: Option<Outcome>,
    ) -> Operation {
        let returned_at = outcome.as_ref().map(|_| returned_at);
        Operation {
            client,
            key: key.as_bytes().to_vec(),
            op,
            invoked_at,
            returned_at,
            outcome,
        }
    }

    fn put(v: &str) -> Op {
        Op::Put(v.as_bytes().to_vec())
    }

    fn saw(v: Option<&str>) -> Option<Outcome> {
        Some(Outcome::Value(v.map(|v| v.as_bytes().to_vec())))
    }

    fn ok() -> Option<Outcome> {
        Some(Outcome::Ok)
    }

    fn cas(expect: Option<&str>, new: &str) -> Op {
        Op::Cas {
            expect: expect.map(|v| v.as_bytes().to_vec()),
            new: Some(new.as_bytes().to_vec()),
        }
    }

    #[test]
    fn sequential_histories() {
        let valid = vec![
            op(0, "k", Op::Get, 0, 1, saw(None)),
            op(0, "k", put("1"), 2, 3, ok()),
            op(0, "k", Op::Get, 4, 5, saw(Some("1"))),
            op(0, "k", Op::Delete, 6, 7, Some(Outcome::Succeeded(true))),
            op(0, "k", Op::Get, 8, 9, saw(None)),
        ];
        assert_eq!(check(&valid, BUDGET), Verdict::Linearizable);
        let invented = vec![
            op(0, "k", put("1"), 0, 1, ok()),
            op(0, "k", Op::Get, 2, 3, saw(Some("2"))),
        ];
        assert!(matches!(
            check(&invented, BUDGET),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn overlapping_writes_and_reads_that_only_one_order_explains() {
        let history = vec![
            op(0, "k", put("1"), 0, 10, ok()),
            op(1, "k", put("2"), 1, 11, ok()),
            op(2, "k", Op::Get, 2, 3, saw(Some("2"))),
            op(3, "k", Op::Get, 4, 5, saw(Some("1"))),
            op(2, "k", Op::Get, 12, 13, saw(Some("1"))),
        ];
        assert_eq!(check(&history, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_both_writes_is_rejected_and_explained() {
        let history = vec![
            op(0, "k", put("1"), 0, 1, ok()),
            op(1, "k", put("2"), 2, 3, ok()),
            op(2, "k", Op::Get, 4, 5, saw(Some("1"))),
        ];
        match check(&history, BUDGET) {
            Verdict::NotLinearizable { key, explanation } => {
                assert_eq!(key, b"k");
                assert!(explanation.contains("Get"), "{explanation}");
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn two_concurrent_cas_from_absent_cannot_both_succeed() {
        let both = vec![
            op(0, "k", cas(None, "a"), 0, 10, Some(Outcome::Succeeded(true))),
            op(1, "k", cas(None, "b"), 1, 11, Some(Outcome::Succeeded(true))),
        ];
        assert!(matches!(check(&both, BUDGET), Verdict::NotLinearizable { .. }));
        let one = vec![
            op(0, "k", cas(None, "a"), 0, 10, Some(Outcome::Succeeded(true))),
            op(1, "k", cas(None, "b"), 1, 11, Some(Outcome::Succeeded(false))),
            op(2, "k", Op::Get, 12, 13, saw(Some("a"))),
        ];
        assert_eq!(check(&one, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn failed_operations_may_or_may_not_have_happened() {
        let read_later = vec![
            op(0, "k", put("5"), 0, 0, None),
            op(1, "k", Op::Get, 100, 101, saw(Some("5"))),
        ];
        assert_eq!(check(&read_later, BUDGET), Verdict::Linearizable);
        let never_read = vec![
            op(0, "k", put("5"), 0, 0, None),
            op(1, "k", Op::Get, 100, 101, saw(None)),
        ];
        assert_eq!(check(&never_read, BUDGET), Verdict::Linearizable);
        let from_nowhere = vec![
            op(0, "k", put("4"), 0, 0, None),
            op(1, "k", Op::Get, 100, 101, saw(Some("5"))),
        ];
        assert!(matches!(
            check(&from_nowhere, BUDGET),
            Verdict::NotLinearizable { .. }
        ));
        // A failed write cannot take effect before it was invoked.
        let too_early = vec![
            op(1, "k", Op::Get, 0, 1, saw(Some("5"))),
            op(0, "k", put("5"), 2, 0, None),
        ];
        assert!(matches!(
            check(&too_early, BUDGET),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn delete_of_a_key_never_written_cannot_find_it() {
        let history = vec![op(0, "k", Op::Delete, 0, 1, Some(Outcome::Succeeded(true)))];
        assert!(matches!(check(&history, BUDGET), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn keys_are_checked_independently_and_the_bad_one_is_named() {
        let history = vec![
            op(0, "good", put("1"), 0, 1, ok()),
            op(0, "bad", put("1"), 0, 1, ok()),
            op(1, "good", Op::Get, 2, 3, saw(Some("1"))),
            op(1, "bad", Op::Get, 2, 3, saw(Some("2"))),
        ];
        match check(&history, BUDGET) {
            Verdict::NotLinearizable { key, .. } => assert_eq!(key, b"bad"),
            other => panic!("expected a violation on \"bad\", got {other:?}"),
        }
    }

    /// Generates a history by running a real register with operations at random points inside
    /// overlapping intervals: it is linearizable by construction.
    fn generated_history(seed: u64, n_ops: usize, failure_percent: u64) -> Vec<Operation> {
        let mut rng = seed;
        let mut next = move |bound: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % bound
        };
        let mut registers: HashMap<String, Option<Vec<u8>>> = HashMap::new();
        let mut history = Vec::new();
        // Each op gets a linearization point; its interval surrounds it with random slack, so
        // ops overlap. Points are increasing.
        for i in 0..n_ops {
            let point = (i as u64 + 1) * 100;
            let key = format!("k{}", next(3));
            // A failed operation may have taken effect (kept) or not (its effect is undone below).
            let fails = next(100) < failure_percent;
            let takes_effect = !fails || next(2) == 0;
            let register = registers.entry(key.clone()).or_default();
            let before = register.clone();
            let (op_kind, outcome) = match next(4) {
                0 => (Op::Get, Some(Outcome::Value(register.clone()))),
                1 => {
                    let value = format!("v{i}").into_bytes();
                    *register = Some(value.clone());
                    (Op::Put(value), Some(Outcome::Ok))
                }
                2 => {
                    let existed = register.is_some();
                    *register = None;
                    (Op::Delete, Some(Outcome::Succeeded(existed)))
                }
                _ => {
                    let expect = if next(2) == 0 {
                        register.clone()
                    } else {
                        Some(b"other".to_vec())
                    };
                    let new = Some(format!("c{i}").into_bytes());
                    let swapped = *register == expect;
                    if swapped {
                        *register = new.clone();
                    }
                    (Op::Cas { expect, new }, Some(Outcome::Succeeded(swapped)))
                }
            };
            if !takes_effect {
                *registers.get_mut(&key).expect("just used") = before;
            }
            let invoked_at = point - next(250).min(point);
            let returned_at = point + next(250);
            history.push(Operation {
                client: (next(5)) as usize,
                key: key.into_bytes(),
                op: op_kind,
                invoked_at,
                returned_at: (!fails).then_some(returned_at),
                outcome: if fails { None } else { outcome },
            });
        }
        history
    }

    #[test]
    fn generated_concurrent_histories_are_accepted_and_a_mutated_read_is_caught() {
        for seed in 1..=5 {
            let mut history = generated_history(seed * 7919, 300, 0);
            assert_eq!(check(&history, BUDGET), Verdict::Linearizable, "seed {seed}");
            let read = history.iter().position(|o| o.op == Op::Get).expect("some read");
            history[read].outcome = Some(Outcome::Value(Some(b"never-written".to_vec())));
            assert!(
                matches!(check(&history, BUDGET), Verdict::NotLinearizable { .. }),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn generated_histories_with_failed_operations_are_accepted() {
        // Failed operations that did and did not take effect, mixed into concurrent histories:
        // the checker must still find the order that produced them.
        for seed in 1..=40 {
            let history = generated_history(seed * 104_729, 400, 10);
            assert_eq!(check(&history, BUDGET), Verdict::Linearizable, "seed {seed}");
        }
    }

    #[test]
    fn a_write_recorded_as_not_applied_that_did_apply_is_caught() {
        // A client was told its put certainly failed, yet a later read sees the value.
        let history = History::new();
        let put = history.invoke(0, b"k", Op::Put(b"v1".to_vec()));
        history.not_applied(put);
        let get = history.invoke(1, b"k", Op::Get);
        history.complete(get, Outcome::Value(Some(b"v1".to_vec())));
        assert!(matches!(
            check(&history.operations(), BUDGET),
            Verdict::NotLinearizable { .. }
        ));
        // Recorded as unknown instead, the same history is fine: the put may have happened.
        let history = History::new();
        let put = history.invoke(0, b"k", Op::Put(b"v1".to_vec()));
        history.unknown(put);
        let get = history.invoke(1, b"k", Op::Get);
        history.complete(get, Outcome::Value(Some(b"v1".to_vec())));
        assert_eq!(check(&history.operations(), BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn the_recorder_is_usable_from_many_tasks() {
        let history = History::new();
        let threads: Vec<_> = (0..4)
            .map(|client| {
                let history = history.clone();
                std::thread::spawn(move || {
                    for i in 0..10 {
                        let token = history.invoke(client, b"k", put(&format!("{client}-{i}")));
                        if i % 3 == 0 {
                            history.unknown(token);
                        } else {
                            history.complete(token, Outcome::Ok);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let operations = history.operations();
        assert_eq!(operations.len(), 40);
        assert_eq!(operations.iter().filter(|o| o.outcome.is_none()).count(), 16);
        assert_eq!(check(&operations, BUDGET), Verdict::Linearizable);
    }
}

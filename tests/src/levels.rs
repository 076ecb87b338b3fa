//! Reads below linearizable, checked against each level's own guarantee (README, "Consistency
//! levels"). Linearizable and replica-linearizable reads go to the linearizability checker; this
//! one takes the session, bounded-staleness and eventual reads of a key space that is only ever
//! written with puts of values no other put writes, so every stored value names the put that
//! wrote it and its version (the log index that wrote it, which only grows for a key, across
//! splits too) orders it among the others.
//!
//! What each read must show, given every put recorded exactly as its result said (acknowledged at
//! a version, maybe applied, or certainly not applied):
//! - every level: a value some put wrote that was not certainly refused, at the version that put
//!   was acknowledged at; one version never names two values;
//! - eventual: also, a replica never answers an older version of a key than it answered before
//!   to a read that had returned before this one began (replicas only move forward; a new replica
//!   of a shard, on the same node or not, has another replica id);
//! - session: at least as new as every put of the session acknowledged before the read began
//!   and every version a read of the session returned before it (read-your-writes, monotonic
//!   reads), per key, across splits;
//! - bounded(B): at least as new as every put acknowledged before the read began minus B, on the
//!   test's clock (every node of the simulation runs in the test's process, on the same clock).
//!
//! An absent key counts as version 0 (no delete ever runs on these keys).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a put ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Acknowledged { version: u64 },
    MaybeApplied,
    NotApplied,
}

/// The level a read asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Session,
    Bounded(Duration),
    Eventual,
}

#[derive(Debug, Clone)]
struct Put {
    session: usize,
    key: Vec<u8>,
    value: Vec<u8>,
    invoked: u64,
    returned: u64,
    outcome: PutOutcome,
}

#[derive(Debug, Clone)]
struct Read {
    session: usize,
    key: Vec<u8>,
    level: Level,
    invoked: u64,
    returned: u64,
    /// The value and version read; `None`: absent.
    found: Option<(Vec<u8>, u64)>,
    /// (node, replica id) that served it.
    replica: (u64, u64),
}

#[derive(Default)]
struct Events {
    puts: Vec<Put>,
    reads: Vec<Read>,
}

/// A thread-safe recorder, cheap to clone. Times are nanoseconds since it was created.
#[derive(Clone)]
pub struct LevelHistory {
    started: Instant,
    events: Arc<Mutex<Events>>,
}

impl Default for LevelHistory {
    fn default() -> Self {
        LevelHistory::new()
    }
}

impl LevelHistory {
    pub fn new() -> LevelHistory {
        LevelHistory {
            started: Instant::now(),
            events: Arc::default(),
        }
    }

    /// Now, on the history's clock: take it right before sending a request.
    pub fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// Records a put of `session`, invoked at `invoked` (from `now`), that ended as `outcome`.
    pub fn put(&self, session: usize, key: &[u8], value: &[u8], invoked: u64, outcome: PutOutcome) {
        let returned = self.now();
        self.events.lock().expect("history lock").puts.push(Put {
            session,
            key: key.to_vec(),
            value: value.to_vec(),
            invoked,
            returned,
            outcome,
        });
    }

    /// Records a read of `session` that returned `found` (value and version; `None`: absent),
    /// served by replica `replica` (node id, replica id) of the key's shard.
    pub fn read(
        &self,
        session: usize,
        key: &[u8],
        level: Level,
        invoked: u64,
        found: Option<(Vec<u8>, u64)>,
        replica: (u64, u64),
    ) {
        let returned = self.now();
        self.events.lock().expect("history lock").reads.push(Read {
            session,
            key: key.to_vec(),
            level,
            invoked,
            returned,
            found,
            replica,
        });
    }

    /// How many reads it holds at each level (session, bounded, eventual).
    pub fn counts(&self) -> (usize, usize, usize) {
        let events = self.events.lock().expect("history lock");
        let count = |want: fn(&Level) -> bool| events.reads.iter().filter(|r| want(&r.level)).count();
        (
            count(|l| matches!(l, Level::Session)),
            count(|l| matches!(l, Level::Bounded(_))),
            count(|l| matches!(l, Level::Eventual)),
        )
    }

    /// Checks every read (see the module header); the violations, at most 20, each saying what
    /// was read and what it should have seen.
    pub fn check(&self) -> Vec<String> {
        let events = self.events.lock().expect("history lock");
        check(&events.puts, &events.reads)
    }
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn check(puts: &[Put], reads: &[Read]) -> Vec<String> {
    let mut violations = Vec::new();
    // Who wrote each value, and the version of each acknowledged put.
    let by_value: HashMap<(&[u8], &[u8]), &Put> = puts
        .iter()
        .map(|put| ((put.key.as_slice(), put.value.as_slice()), put))
        .collect();
    let mut version_names: HashMap<(&[u8], u64), &[u8]> = HashMap::new();
    for put in puts {
        if let PutOutcome::Acknowledged { version } = put.outcome
            && let Some(other) = version_names.insert((put.key.as_slice(), version), put.value.as_slice())
            && other != put.value.as_slice()
        {
            violations.push(format!(
                "key {}: version {version} acknowledged for two values, {} and {}",
                show(&put.key),
                show(other),
                show(&put.value)
            ));
        }
    }

    // Every level: a value a put wrote, not refused, at its acknowledged version.
    for read in reads {
        let Some((value, version)) = &read.found else {
            continue;
        };
        match by_value.get(&(read.key.as_slice(), value.as_slice())) {
            None => violations.push(format!(
                "{:?} read of {} returned {}, which no put wrote",
                read.level,
                show(&read.key),
                show(value)
            )),
            Some(put) if put.outcome == PutOutcome::NotApplied => violations.push(format!(
                "{:?} read of {} returned {}, written by a put that was answered \"certainly not applied\"",
                read.level,
                show(&read.key),
                show(value)
            )),
            Some(put) => {
                if let PutOutcome::Acknowledged { version: acked } = put.outcome
                    && acked != *version
                {
                    violations.push(format!(
                        "{:?} read of {} returned {} at version {version}; its put was acknowledged at {acked}",
                        read.level,
                        show(&read.key),
                        show(value)
                    ));
                }
            }
        }
        if let Some(named) = version_names.insert((read.key.as_slice(), *version), value.as_slice())
            && named != value.as_slice()
        {
            violations.push(format!(
                "key {}: version {version} read as {} and as {}",
                show(&read.key),
                show(named),
                show(value)
            ));
        }
    }
    let version_of = |read: &Read| read.found.as_ref().map_or(0, |(_, version)| *version);

    // Session: per session and key, in the session's order (its operations run one at a time).
    let mut session_floor: HashMap<(usize, &[u8]), (u64, String)> = HashMap::new();
    let mut ordered: Vec<(u64, bool, usize)> = puts
        .iter()
        .enumerate()
        .map(|(i, put)| (put.invoked, true, i))
        .chain(reads.iter().enumerate().map(|(i, read)| (read.invoked, false, i)))
        .collect();
    ordered.sort();
    for (_, is_put, i) in ordered {
        if is_put {
            let put = &puts[i];
            if let PutOutcome::Acknowledged { version } = put.outcome {
                let floor = session_floor
                    .entry((put.session, put.key.as_slice()))
                    .or_default();
                if version > floor.0 {
                    *floor = (
                        version,
                        format!("its put of {} at version {version}", show(&put.value)),
                    );
                }
            }
            continue;
        }
        let read = &reads[i];
        let version = version_of(read);
        let floor = session_floor
            .entry((read.session, read.key.as_slice()))
            .or_default();
        if read.level == Level::Session && version < floor.0 {
            violations.push(format!(
                "session {} read {} at version {version} (node {}, replica {}), older than {}",
                read.session,
                show(&read.key),
                read.replica.0,
                read.replica.1,
                floor.1
            ));
        }
        // Whatever the level, a read's answer is something the session has seen; a session read
        // after it must be as new (the client's token is raised by every read of the session).
        if version > floor.0 {
            *floor = (version, format!("its earlier read at version {version}"));
        }
    }

    // Bounded: at least as new as every put acknowledged more than B before the read began.
    let mut acked: BTreeMap<&[u8], Vec<(u64, u64)>> = BTreeMap::new();
    for put in puts {
        if let PutOutcome::Acknowledged { version } = put.outcome {
            acked
                .entry(put.key.as_slice())
                .or_default()
                .push((put.returned, version));
        }
    }
    for list in acked.values_mut() {
        list.sort();
    }
    for read in reads {
        let Level::Bounded(bound) = read.level else {
            continue;
        };
        let cutoff = read.invoked.saturating_sub(bound.as_nanos() as u64);
        let newest_before = acked
            .get(read.key.as_slice())
            .into_iter()
            .flatten()
            .take_while(|(returned, _)| *returned < cutoff)
            .map(|(_, version)| *version)
            .max()
            .unwrap_or(0);
        let version = version_of(read);
        if version < newest_before {
            violations.push(format!(
                "bounded({} ms) read of {} (node {}, replica {}) returned version {version}, older than \
                 version {newest_before}, acknowledged more than {} ms before the read began",
                bound.as_millis(),
                show(&read.key),
                read.replica.0,
                read.replica.1,
                bound.as_millis()
            ));
        }
    }

    // Eventual (and every level): one replica never goes back, for reads one after another.
    type ReplicaKey<'a> = ((u64, u64), &'a [u8]);
    let mut by_replica: HashMap<ReplicaKey, Vec<&Read>> = HashMap::new();
    for read in reads {
        by_replica
            .entry((read.replica, read.key.as_slice()))
            .or_default()
            .push(read);
    }
    for ((replica, key), mut list) in by_replica {
        list.sort_by_key(|read| read.returned);
        // The newest version any read that returned before `invoked` saw.
        let mut seen: Vec<(u64, u64)> = Vec::new();
        let mut best = 0u64;
        for read in &list {
            best = best.max(version_of(read));
            seen.push((read.returned, best));
        }
        for read in &list {
            let index = seen.partition_point(|(returned, _)| *returned < read.invoked);
            let before = if index == 0 { 0 } else { seen[index - 1].1 };
            if version_of(read) < before {
                violations.push(format!(
                    "replica {} on node {} answered {:?} read of {} with version {}, after answering \
                     version {before} to an earlier read",
                    replica.1,
                    replica.0,
                    read.level,
                    show(key),
                    version_of(read)
                ));
            }
        }
    }
    violations.truncate(20);
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(session: usize, key: &str, value: &str, invoked: u64, returned: u64, outcome: PutOutcome) -> Put {
        Put {
            session,
            key: key.into(),
            value: value.into(),
            invoked,
            returned,
            outcome,
        }
    }

    fn read(session: usize, key: &str, level: Level, at: (u64, u64), found: Option<(&str, u64)>) -> Read {
        Read {
            session,
            key: key.into(),
            level,
            invoked: at.0,
            returned: at.1,
            found: found.map(|(value, version)| (value.into(), version)),
            // Each session reads its own replica, unless a test says otherwise.
            replica: (1, 100 + session as u64),
        }
    }

    fn on_one_replica(mut reads: Vec<Read>) -> Vec<Read> {
        for read in &mut reads {
            read.replica = (1, 100);
        }
        reads
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn each_level_is_held_to_its_own_guarantee() {
        let puts = vec![
            put(0, "k", "a", 0, 10 * MS, PutOutcome::Acknowledged { version: 5 }),
            put(
                1,
                "k",
                "b",
                20 * MS,
                30 * MS,
                PutOutcome::Acknowledged { version: 9 },
            ),
            put(1, "k", "gone", 40 * MS, 50 * MS, PutOutcome::NotApplied),
            put(1, "k", "maybe", 60 * MS, 70 * MS, PutOutcome::MaybeApplied),
        ];
        let ok = vec![
            // Old values are fine at eventual, and for bounded reads within the bound.
            read(2, "k", Level::Eventual, (100 * MS, 101 * MS), Some(("a", 5))),
            read(
                3,
                "k",
                Level::Bounded(Duration::from_millis(500)),
                (200 * MS, 201 * MS),
                Some(("a", 5)),
            ),
            // Session 1 wrote b: it reads b or newer.
            read(1, "k", Level::Session, (80 * MS, 81 * MS), Some(("maybe", 12))),
            read(0, "k", Level::Session, (82 * MS, 83 * MS), Some(("a", 5))),
        ];
        assert_eq!(check(&puts, &ok), Vec::<String>::new());

        let bad: Vec<(Read, &str)> = vec![
            (
                read(
                    2,
                    "k",
                    Level::Eventual,
                    (100 * MS, 101 * MS),
                    Some(("made-up", 3)),
                ),
                "no put wrote",
            ),
            (
                read(2, "k", Level::Eventual, (100 * MS, 101 * MS), Some(("gone", 11))),
                "certainly not applied",
            ),
            (
                read(2, "k", Level::Eventual, (100 * MS, 101 * MS), Some(("b", 7))),
                "acknowledged at 9",
            ),
            (
                read(1, "k", Level::Session, (80 * MS, 81 * MS), Some(("a", 5))),
                "older than its put",
            ),
            (
                read(1, "k", Level::Session, (80 * MS, 81 * MS), None),
                "older than its put",
            ),
            (
                read(
                    3,
                    "k",
                    Level::Bounded(Duration::from_millis(10)),
                    (200 * MS, 201 * MS),
                    Some(("a", 5)),
                ),
                "older than version 9",
            ),
        ];
        for (read, says) in bad {
            let violations = check(&puts, std::slice::from_ref(&read));
            assert!(
                violations.iter().any(|v| v.contains(says)),
                "{read:?}: expected \"{says}\", got {violations:?}"
            );
        }

        // Monotonic reads within a session, and per replica for reads one after another.
        let back = vec![
            read(4, "k", Level::Session, (100 * MS, 101 * MS), Some(("b", 9))),
            read(4, "k", Level::Session, (102 * MS, 103 * MS), Some(("a", 5))),
        ];
        assert!(check(&puts, &back).iter().any(|v| v.contains("earlier read")));
        let replica_back = on_one_replica(vec![
            read(5, "k", Level::Eventual, (100 * MS, 101 * MS), Some(("b", 9))),
            read(6, "k", Level::Eventual, (102 * MS, 103 * MS), Some(("a", 5))),
        ]);
        assert!(
            check(&puts, &replica_back)
                .iter()
                .any(|v| v.contains("after answering"))
        );
        // Overlapping reads of one replica may see either order.
        let overlapping = on_one_replica(vec![
            read(5, "k", Level::Eventual, (100 * MS, 110 * MS), Some(("b", 9))),
            read(6, "k", Level::Eventual, (105 * MS, 106 * MS), Some(("a", 5))),
        ]);
        assert_eq!(check(&puts, &overlapping), Vec::<String>::new());
    }
}

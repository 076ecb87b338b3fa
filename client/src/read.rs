//! What a read asks for: its consistency level and which replicas may serve it (`ReadOptions`),
//! and the `Session` that carries read-your-writes and monotonic reads across requests, replicas
//! and processes.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringkv_map::ShardMap;
use ringkv_proto::pb;
use ringkv_proto::{NodeId, ShardId};

use crate::error::Error;

/// How fresh a read must be. See README, "Consistency levels", for what each costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// The shard's leader confirms it leads, then reads: every write acknowledged before the read
    /// began is seen.
    #[default]
    Linearizable,
    /// Any replica asks the leader for its read index, catches up to it, and reads locally: as
    /// linearizable as `Linearizable`, with the data read off the leader.
    ReplicaLinearizable,
    /// Within the client handle's `Session`: read-your-writes, monotonic reads, monotonic writes,
    /// writes-follow-reads. Any replica that has applied the session's writes and reads serves.
    Session,
    /// Data at most this old, as the serving replica can show on its own clock (no clock
    /// comparison between machines); a replica that cannot show it refuses and another is tried.
    Bounded(Duration),
    /// Whatever the replica has, at once, also while the shard has no leader. Values were
    /// committed once, but may be old, and two reads may go back in time.
    Eventual,
}

impl Consistency {
    /// `eventual`, `bounded=500ms` (also `s`), `session`, `replica`, `linearizable`.
    pub fn parse(text: &str) -> Result<Consistency, Error> {
        let bad = || {
            Error::InvalidArgument(format!(
                "{text:?} is not a consistency level: use eventual, bounded=DURATION (like \
                 bounded=500ms or bounded=2s), session, replica or linearizable"
            ))
        };
        Ok(match text {
            "linearizable" => Consistency::Linearizable,
            "replica" | "replica-linearizable" => Consistency::ReplicaLinearizable,
            "session" => Consistency::Session,
            "eventual" => Consistency::Eventual,
            _ => {
                let bound = text.strip_prefix("bounded=").ok_or_else(bad)?;
                let duration = if let Some(ms) = bound.strip_suffix("ms") {
                    ms.parse::<u64>().map(Duration::from_millis)
                } else if let Some(s) = bound.strip_suffix('s') {
                    s.parse::<u64>().map(Duration::from_secs)
                } else {
                    return Err(bad());
                };
                match duration {
                    Ok(duration) if !duration.is_zero() => Consistency::Bounded(duration),
                    _ => return Err(bad()),
                }
            }
        })
    }

    /// Whether only the leader serves it.
    pub(crate) fn needs_leader(&self) -> bool {
        matches!(self, Consistency::Linearizable)
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Consistency::Linearizable => write!(f, "linearizable"),
            Consistency::ReplicaLinearizable => write!(f, "replica"),
            Consistency::Session => write!(f, "session"),
            Consistency::Bounded(bound) => write!(f, "bounded={}ms", bound.as_millis()),
            Consistency::Eventual => write!(f, "eventual"),
        }
    }
}

/// Which replicas a read that any replica may serve goes to first. The leader is tried last
/// whenever the chosen replicas cannot serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplicaSelection {
    /// The leader only (as a linearizable read).
    Leader,
    /// The replica with the lowest latency this client has measured.
    #[default]
    Nearest,
    /// Round robin over the shard's healthy replicas.
    Spread,
    /// This node's replica, when it has one (an application's own zone, or a test).
    Node(NodeId),
}

/// What a read asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadOptions {
    pub consistency: Consistency,
    pub selection: ReplicaSelection,
}

impl ReadOptions {
    pub fn new(consistency: Consistency) -> ReadOptions {
        ReadOptions {
            consistency,
            selection: ReplicaSelection::default(),
        }
    }

    pub fn with_selection(self, selection: ReplicaSelection) -> ReadOptions {
        ReadOptions { selection, ..self }
    }

    /// The level on the wire; `session_token` is what a session read asks the replica to have
    /// applied (`Session::token_in`).
    pub(crate) fn wire(&self, session_token: u64) -> pb::ReadLevel {
        let (consistency, min_index, max_staleness_ms) = match self.consistency {
            Consistency::Linearizable => (pb::Consistency::Linearizable, 0, 0),
            Consistency::ReplicaLinearizable => (pb::Consistency::ReplicaLinearizable, 0, 0),
            Consistency::Session => (pb::Consistency::Session, session_token, 0),
            Consistency::Bounded(bound) => (pb::Consistency::Bounded, 0, bound.as_millis().max(1) as u64),
            Consistency::Eventual => (pb::Consistency::Eventual, 0, 0),
        };
        pb::ReadLevel {
            consistency: consistency as i32,
            min_index,
            max_staleness_ms,
        }
    }
}

/// A session: the highest log index per shard that its writes produced and its reads saw, and
/// the newest shard-map epoch it routed with. Clones share one session; the application holds
/// it, attaches it to a client handle (`Client::with_session`), and may pass it to another
/// process (`encode`/`decode`) to carry the guarantees along.
#[derive(Debug, Clone, Default)]
pub struct Session {
    state: Arc<Mutex<SessionState>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SessionState {
    tokens: BTreeMap<ShardId, u64>,
    epoch: u64,
}

impl Session {
    pub fn new() -> Session {
        Session::default()
    }

    /// The highest index of `shard_id` this session's writes produced and its reads saw.
    pub fn token(&self, shard_id: ShardId) -> u64 {
        let state = self.state.lock().expect("session lock");
        state.tokens.get(&shard_id).copied().unwrap_or(0)
    }

    /// The index a replica of `shard_id` must have applied to serve this session, given `map`:
    /// its own token, and what it inherits from the shards it was split off. A key the session
    /// wrote or read in a parent before a split now lives in the child, whose state as of the
    /// split's index holds everything the parent had applied: so for each ancestor, the child
    /// needs `min(ancestor's token, split index)` (every later index of the child is above it).
    pub fn token_in(&self, shard_id: ShardId, map: &ShardMap) -> u64 {
        let state = self.state.lock().expect("session lock");
        let token_of = |shard: ShardId| state.tokens.get(&shard).copied().unwrap_or(0);
        let mut token = token_of(shard_id);
        let mut cap = u64::MAX;
        let mut shard = shard_id;
        // Parents have lower ids than their children, so this ends; the bound is for safety.
        for _ in 0..64 {
            let Some(origin) = map.shard(shard).and_then(|s| s.origin) else {
                break;
            };
            cap = cap.min(origin.index);
            token = token.max(token_of(origin.parent).min(cap));
            shard = origin.parent;
        }
        token
    }

    /// The newest shard-map epoch the session has routed with: a client routing its reads must
    /// have a map at least this new, so a key a split moved is not read from the old shard.
    pub fn map_epoch(&self) -> u64 {
        self.state.lock().expect("session lock").epoch
    }

    /// Notes that a write applied at, or a read saw state up to, `index` of `shard_id`, routed
    /// with a map of `epoch`.
    pub(crate) fn observe(&self, shard_id: ShardId, index: u64, epoch: u64) {
        let mut state = self.state.lock().expect("session lock");
        let token = state.tokens.entry(shard_id).or_default();
        *token = (*token).max(index);
        state.epoch = state.epoch.max(epoch);
    }

    /// Text form: `EPOCH` then `;SHARD=INDEX` per shard.
    pub fn encode(&self) -> String {
        let state = self.state.lock().expect("session lock");
        let mut text = state.epoch.to_string();
        for (shard, index) in &state.tokens {
            text.push_str(&format!(";{}={index}", shard.0));
        }
        text
    }

    pub fn decode(text: &str) -> Result<Session, Error> {
        let bad = || Error::InvalidArgument(format!("{text:?} is not a session printed by Session::encode"));
        let mut parts = text.split(';');
        let epoch = parts.next().ok_or_else(bad)?.parse::<u64>().map_err(|_| bad())?;
        let mut tokens = BTreeMap::new();
        for part in parts {
            let (shard, index) = part.split_once('=').ok_or_else(bad)?;
            let shard = shard.parse::<u64>().map_err(|_| bad())?;
            let index = index.parse::<u64>().map_err(|_| bad())?;
            tokens.insert(ShardId(shard), index);
        }
        Ok(Session {
            state: Arc::new(Mutex::new(SessionState { tokens, epoch })),
        })
    }

    /// Folds `other` into this session (the higher token per shard): for an application that
    /// joins two flows of work.
    pub fn merge(&self, other: &Session) {
        let theirs = other.state.lock().expect("session lock").clone();
        for (shard, index) in theirs.tokens {
            self.observe(shard, index, theirs.epoch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_from_their_cli_names_and_refuse_garbage() {
        let table = [
            ("linearizable", Consistency::Linearizable),
            ("replica", Consistency::ReplicaLinearizable),
            ("session", Consistency::Session),
            ("eventual", Consistency::Eventual),
            ("bounded=500ms", Consistency::Bounded(Duration::from_millis(500))),
            ("bounded=2s", Consistency::Bounded(Duration::from_secs(2))),
        ];
        for (text, level) in table {
            assert_eq!(Consistency::parse(text).unwrap(), level, "{text}");
            assert_eq!(Consistency::parse(&level.to_string()).unwrap(), level, "{level}");
        }
        for bad in ["", "strong", "bounded=", "bounded=0ms", "bounded=5", "bounded=xs"] {
            assert!(Consistency::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// A session that wrote in shard 1 before it split (at index 50) into 1 and 3, and 3 later
    /// split (at its index 80) into 3 and 4: reads of the children must not be served by a
    /// replica that holds less than what the session saw.
    #[test]
    fn a_split_child_inherits_what_the_session_knew_of_its_ancestors() {
        let nodes: std::collections::BTreeMap<NodeId, ringkv_map::NodeInfo> = (1..=3)
            .map(|id| {
                let info = ringkv_map::NodeInfo {
                    addr: format!("127.0.0.1:{}", 7000 + id),
                    incarnation: 100 + id,
                    state: Default::default(),
                    role: Default::default(),
                };
                (NodeId(id), info)
            })
            .collect();
        let mut map = ShardMap::bootstrap(9, &nodes, 2, 3).unwrap();
        map.begin_split(ShardId(1), 0, "test").unwrap();
        map.finish_split(ShardId(1), 50, 0);
        map.begin_split(ShardId(3), 0, "test").unwrap();
        map.finish_split(ShardId(3), 80, 0);
        let session = Session::new();
        // Before the first split the session saw index 30 of shard 1.
        session.observe(ShardId(1), 30, 1);
        assert_eq!(session.token_in(ShardId(1), &map), 30);
        assert_eq!(
            session.token_in(ShardId(3), &map),
            30,
            "a child: its parent's token"
        );
        assert_eq!(session.token_in(ShardId(4), &map), 30, "a grandchild too");
        assert_eq!(session.token_in(ShardId(2), &map), 0, "an unrelated shard");
        // Later it saw index 70 of shard 1 (after the split: shard 1's own keys): the child
        // needs only the split's index, which every state of the child is at or above.
        session.observe(ShardId(1), 70, 3);
        assert_eq!(session.token_in(ShardId(3), &map), 50);
        assert_eq!(session.token_in(ShardId(4), &map), 50);
        // The child's own token counts, capped at the grandchild's split for the grandchild.
        session.observe(ShardId(3), 95, 5);
        assert_eq!(session.token_in(ShardId(3), &map), 95);
        assert_eq!(session.token_in(ShardId(4), &map), 80);
        session.observe(ShardId(4), 120, 5);
        assert_eq!(session.token_in(ShardId(4), &map), 120);
    }

    #[test]
    fn a_session_keeps_the_highest_token_per_shard_and_round_trips() {
        let session = Session::new();
        session.observe(ShardId(1), 10, 3);
        session.observe(ShardId(1), 7, 2);
        session.observe(ShardId(4), 22, 5);
        assert_eq!(session.token(ShardId(1)), 10, "never goes back");
        assert_eq!(session.token(ShardId(9)), 0);
        assert_eq!(session.map_epoch(), 5);
        let copy = Session::decode(&session.encode()).unwrap();
        assert_eq!(copy.encode(), session.encode());
        assert_eq!(copy.token(ShardId(4)), 22);
        let other = Session::new();
        other.observe(ShardId(1), 12, 1);
        session.merge(&other);
        assert_eq!(session.token(ShardId(1)), 12);
        assert_eq!(session.map_epoch(), 5);
        for bad in ["", "x", "3;1", "3;a=1", "3;1=b"] {
            assert!(Session::decode(bad).is_err(), "{bad:?}");
        }
        // A clone is the same session.
        let clone = session.clone();
        clone.observe(ShardId(2), 5, 0);
        assert_eq!(session.token(ShardId(2)), 5);
    }
}

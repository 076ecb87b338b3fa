//! The request-id table of one shard: what each client's recent writes returned, so a retry of a
//! write that already applied is answered with the first result instead of being applied again.
//!
//! A client names each write with (client id, sequence number) and tells the shard the lowest
//! sequence number it still waits for (its floor). The table keeps, per client:
//! - the result of every applied write at or above the floor (rows in the `sessions` column family,
//!   written in the same batch as the data they describe, so a crash never separates them);
//! - the floor itself and the client's last activity (one record per client).
//!
//! A request below the floor is a stale copy of a write the client already finished: it is refused,
//! never applied. A client silent for [`SESSION_TTL_MS`] by the proposing leaders' clocks is
//! forgotten; clients never retry a write for longer than half of that, so a forgotten session can
//! no longer receive a retry. Expiry uses the clock carried in the log, so every replica forgets
//! the same sessions at the same log index and the table stays identical on every replica.
//!
//! The in-memory index (which sequence numbers have stored results) is rebuilt from the column
//! family when the state machine opens and after a snapshot install.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::Error;
use crate::keys;
use crate::rocks::{Cf, Engine, WriteOps};
use crate::types::{CommandResult, RequestId, ShardId};

/// How long a silent client's session is kept: 10 minutes of log time. Clients stop retrying a
/// write after half of this (`ringkv-client` gives up at its deadline, capped at 5 minutes), so a
/// retry always finds its session, as long as leaders' clocks differ by less than 5 minutes.
pub const SESSION_TTL_MS: u64 = 10 * 60 * 1000;
/// How often (in log time) expired sessions are swept.
const SWEEP_INTERVAL_MS: u64 = 60 * 1000;
/// A session's last-activity record is rewritten at most this often, to keep writes small.
const TOUCH_GRANULARITY_MS: u64 = 1000;

/// A client's session record, stored under sequence number 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct SessionRecord {
    floor: u64,
    last_active_ms: u64,
}

#[derive(Debug, Clone, Default)]
struct ClientSession {
    floor: u64,
    last_active_ms: u64,
    /// Sequence numbers at or above the floor whose results are stored.
    results: BTreeSet<u64>,
}

/// The log clock of a shard's state machine: what expiry is measured by. Part of the applied
/// state, so it survives restarts and travels in snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionClock {
    /// The largest proposal clock applied, in milliseconds since the Unix epoch.
    pub now_ms: u64,
    /// When idle sessions are next swept.
    pub next_sweep_ms: u64,
}

/// What to do with a proposal that carries a request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admission {
    /// First time seen: apply it and record its result.
    Apply,
    /// Already applied: answer with the stored result.
    Duplicate,
    /// Below the client's floor: the client finished it; do not apply.
    Refused(String),
}

#[derive(Debug, Default)]
pub(crate) struct Sessions {
    clients: HashMap<u64, ClientSession>,
}

impl Sessions {
    /// Loads the table of `shard` from the engine.
    pub(crate) fn load(engine: &Engine, shard: ShardId) -> Result<Sessions, Error> {
        let (start, end) = keys::session_range(shard);
        let mut clients: HashMap<u64, ClientSession> = HashMap::new();
        // Keys only: the stored results stay on disk until a retry asks for one.
        engine.for_each_key(Cf::Sessions, &start, &end, |key| {
            let (client, seq) = keys::session_key_parts(key).ok_or_else(|| Error::Corruption {
                what: format!("request-id table of shard {shard}"),
                detail: format!("malformed key of {} bytes", key.len()),
            })?;
            let session = clients.entry(client).or_default();
            if seq == 0 {
                let bytes = engine
                    .get_cf(Cf::Sessions, key)?
                    .ok_or_else(|| Error::Read("a session record vanished while loading".into()))?;
                let record: SessionRecord = codec::decode(&bytes, "client session record")?;
                session.floor = record.floor;
                session.last_active_ms = record.last_active_ms;
            } else {
                session.results.insert(seq);
            }
            Ok(())
        })?;
        Ok(Sessions { clients })
    }

    /// Decides whether `request` applies, after raising the client's floor to `client_floor`
    /// (dropping the results below it) and recording its activity at `now_ms`.
    pub(crate) fn admit(
        &mut self,
        shard: ShardId,
        request: RequestId,
        client_floor: u64,
        now_ms: u64,
        ops: &mut WriteOps,
    ) -> Admission {
        let session = self.clients.entry(request.client).or_default();
        let mut dirty = false;
        if client_floor > session.floor {
            let kept = session.results.split_off(&client_floor);
            for seq in std::mem::replace(&mut session.results, kept) {
                ops.delete(Cf::Sessions, keys::session_key(shard, request.client, seq));
            }
            session.floor = client_floor;
            dirty = true;
        }
        if now_ms >= session.last_active_ms + TOUCH_GRANULARITY_MS || session.last_active_ms == 0 {
            session.last_active_ms = now_ms.max(session.last_active_ms);
            dirty = true;
        }
        if dirty {
            let record = SessionRecord {
                floor: session.floor,
                last_active_ms: session.last_active_ms,
            };
            ops.put(
                Cf::Sessions,
                keys::session_key(shard, request.client, 0),
                codec::encode(&record),
            );
        }
        if request.seq < session.floor {
            Admission::Refused(format!(
                "{request} was already finished by its client (its floor is {}); this stale copy is not applied",
                session.floor
            ))
        } else if session.results.contains(&request.seq) {
            Admission::Duplicate
        } else {
            Admission::Apply
        }
    }

    /// Records the result of an applied request.
    pub(crate) fn record(
        &mut self,
        shard: ShardId,
        request: RequestId,
        result: &CommandResult,
        ops: &mut WriteOps,
    ) {
        if let Some(session) = self.clients.get_mut(&request.client) {
            session.results.insert(request.seq);
        }
        ops.put(
            Cf::Sessions,
            keys::session_key(shard, request.client, request.seq),
            codec::encode(result),
        );
    }

    /// Forgets sessions idle for longer than the TTL, if a sweep is due at `clock.now_ms`.
    pub(crate) fn sweep_if_due(&mut self, shard: ShardId, clock: &mut SessionClock, ops: &mut WriteOps) {
        if clock.now_ms < clock.next_sweep_ms {
            return;
        }
        clock.next_sweep_ms = clock.now_ms + SWEEP_INTERVAL_MS;
        let expired: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, session)| session.last_active_ms + SESSION_TTL_MS < clock.now_ms)
            .map(|(&client, _)| client)
            .collect();
        for client in expired {
            let session = self.clients.remove(&client).unwrap_or_default();
            ops.delete(Cf::Sessions, keys::session_key(shard, client, 0));
            for seq in session.results {
                ops.delete(Cf::Sessions, keys::session_key(shard, client, seq));
            }
        }
    }

    /// Whether `request`'s result is stored (a repeat of it would be answered from the table).
    pub(crate) fn has_result(&self, request: RequestId) -> bool {
        self.clients
            .get(&request.client)
            .is_some_and(|session| session.results.contains(&request.seq))
    }

    /// Number of clients with a session.
    pub(crate) fn len(&self) -> usize {
        self.clients.len()
    }
}

/// Reads the stored result of `request`, written by an earlier apply.
pub(crate) fn stored_result(
    engine: &Engine,
    shard: ShardId,
    request: RequestId,
) -> Result<CommandResult, Error> {
    let bytes = engine
        .get_cf(
            Cf::Sessions,
            &keys::session_key(shard, request.client, request.seq),
        )?
        .ok_or_else(|| Error::Corruption {
            what: format!("request-id table of shard {shard}"),
            detail: format!("the index lists {request} but its result is missing"),
        })?;
    codec::decode(&bytes, "stored request result")
}

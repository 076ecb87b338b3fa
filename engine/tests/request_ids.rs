//! Exactly-once writes at the state machine: a write carrying a request id is applied once however
//! often it is proposed; a repeat is answered with the first result. This holds across a restart
//! and on a replica that got the shard by snapshot. Stale copies below a client's floor are
//! refused, and idle sessions expire by the log's clock.
//!
//! The client-visible answers come from a real single-replica Raft group on RocksDB (openraft's
//! responders cannot be built outside it); the state after a snapshot install is checked through
//! the state machine's stored results and data.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use openraft::alias::{EntryOf, LogIdOf, SnapshotOf, VoteOf};
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{Entry, EntryPayload};
use ringkv_engine::{
    Command, CommandResult, Engine, HashRange, Proposal, ReplicaId, ReplicaNode, RequestId, SESSION_TTL_MS,
    ShardId, ShardRaft, SnapshotFile, TypeConfig, now_ms,
};

const SHARD: ShardId = ShardId(1);
const WHOLE_RING: HashRange = HashRange {
    start: 0,
    end: u64::MAX,
};

/// A network for a group of one: there is never anyone to send to.
#[derive(Clone)]
struct Alone;

impl RaftNetworkFactory<TypeConfig> for Alone {
    type Network = Alone;
    async fn new_client(&mut self, _: ReplicaId, _: &ReplicaNode) -> Alone {
        Alone
    }
}

fn unreachable() -> Unreachable<TypeConfig> {
    Unreachable::new(&std::io::Error::other("a group of one has no peers"))
}

impl RaftNetworkV2<TypeConfig> for Alone {
    type SnapshotData = SnapshotFile;
    async fn append_entries(
        &mut self,
        _: AppendEntriesRequest<TypeConfig>,
        _: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(unreachable()))
    }
    async fn vote(
        &mut self,
        _: VoteRequest<TypeConfig>,
        _: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(unreachable()))
    }
    async fn full_snapshot(
        &mut self,
        _: VoteOf<TypeConfig>,
        _: SnapshotOf<TypeConfig, SnapshotFile>,
        _: impl Future<Output = ReplicationClosed> + Send + 'static,
        _: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(unreachable()))
    }
}

/// Starts (and on first start initializes) a single-replica group on `engine`.
async fn group_of_one(engine: &Engine) -> ShardRaft {
    let config = openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        snapshot_policy: openraft::SnapshotPolicy::Never,
        ..Default::default()
    };
    let raft = ShardRaft::new(
        ReplicaId(1),
        Arc::new(config.validate().unwrap()),
        Alone,
        engine.log_store(SHARD),
        engine.state_machine(SHARD, WHOLE_RING).unwrap(),
    )
    .await
    .unwrap();
    if !raft.is_initialized().await.unwrap() {
        let members = BTreeMap::from([(ReplicaId(1), ReplicaNode::default())]);
        raft.initialize(members).await.unwrap();
    }
    raft.wait(Some(Duration::from_secs(10)))
        .current_leader(ReplicaId(1), "the only replica leads")
        .await
        .unwrap();
    raft
}

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: value.into(),
    }
}

fn request(client: u64, seq: u64) -> RequestId {
    RequestId { client, seq }
}

fn proposal(request: RequestId, floor: u64, command: Command) -> Proposal {
    Proposal {
        request: Some(request),
        client_floor: floor,
        proposed_at_ms: now_ms(),
        command,
    }
}

async fn write(raft: &ShardRaft, proposal: Proposal) -> CommandResult {
    raft.client_write(proposal).await.unwrap().data
}

fn value_of(engine: &Engine, key: &str) -> Option<Vec<u8>> {
    engine.get(key.as_bytes()).unwrap().map(|v| v.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_is_applied_once_and_answered_with_its_first_result() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let raft = group_of_one(&engine).await;
    let (alice, bob) = (0xa11ce, 0xb0b);

    let first = write(&raft, proposal(request(alice, 1), 1, put("k", "from-alice"))).await;
    let CommandResult::Put { version } = first else {
        panic!("unexpected {first:?}")
    };
    write(&raft, proposal(request(bob, 1), 1, put("k", "from-bob"))).await;
    // Alice's retry of request 1 (same id, same content) after Bob's write: not applied again.
    let retry = write(&raft, proposal(request(alice, 1), 1, put("k", "from-alice"))).await;
    assert_eq!(retry, CommandResult::Put { version }, "the first answer, again");
    assert_eq!(
        value_of(&engine, "k"),
        Some(b"from-bob".to_vec()),
        "bob's write stands"
    );

    // A compare-and-swap that failed fails the same way when retried, even though it would
    // succeed now.
    let cas = Command::Cas {
        key: "c".into(),
        expect: ringkv_engine::Expect::Value(b"x".to_vec()),
        new_value: Some(b"y".to_vec()),
    };
    let failed = write(&raft, proposal(request(alice, 2), 1, cas.clone())).await;
    write(&raft, proposal(request(bob, 2), 2, put("c", "x"))).await;
    assert_eq!(write(&raft, proposal(request(alice, 2), 1, cas)).await, failed);
    assert_eq!(value_of(&engine, "c"), Some(b"x".to_vec()));

    // Two copies proposed together (the second before the first commits; they may or may not
    // land in one apply batch).
    let copies = futures::future::join(
        raft.client_write(proposal(request(alice, 3), 3, put("d", "once"))),
        raft.client_write(proposal(request(alice, 3), 3, put("d", "once"))),
    )
    .await;
    let (a, b) = (copies.0.unwrap(), copies.1.unwrap());
    assert_eq!(a.data, b.data, "both copies answer with the one apply's result");
    let CommandResult::Put { version } = a.data else {
        panic!("unexpected {:?}", a.data)
    };
    assert_eq!(
        engine.get(b"d").unwrap().unwrap().version,
        version,
        "written once, at the first copy's index"
    );
    raft.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_repeated_after_a_restart_is_not_applied_again() {
    let dir = tempfile::tempdir().unwrap();
    let (first, alice) = {
        let engine = Engine::open(dir.path()).unwrap();
        let raft = group_of_one(&engine).await;
        let alice = 0xa11ce;
        let first = write(&raft, proposal(request(alice, 7), 7, put("k", "v1"))).await;
        write(&raft, proposal(request(1, 1), 1, put("k", "v2"))).await;
        raft.shutdown().await.unwrap();
        drop(raft);
        assert!(engine.close(Duration::from_secs(10)).await, "the engine closes");
        (first, alice)
    };
    let engine = Engine::open(dir.path()).unwrap();
    let raft = group_of_one(&engine).await;
    let retry = write(&raft, proposal(request(alice, 7), 7, put("k", "v1"))).await;
    assert_eq!(retry, first);
    assert_eq!(value_of(&engine, "k"), Some(b"v2".to_vec()));
    raft.shutdown().await.unwrap();
}

fn entry(index: u64, proposal: Proposal) -> EntryOf<TypeConfig> {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(proposal),
    }
}

fn log_id(index: u64) -> LogIdOf<TypeConfig> {
    openraft::testing::log_id::<TypeConfig>(1, ReplicaId(1), index)
}

async fn apply(sm: &mut ringkv_engine::StateMachine, entries: Vec<EntryOf<TypeConfig>>) {
    let stream = futures::stream::iter(entries.into_iter().map(|entry| Ok((entry, None))));
    sm.apply(stream.boxed()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_got_the_shard_by_snapshot_knows_which_requests_applied() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let mut sm = engine.state_machine(SHARD, WHOLE_RING).unwrap();
    let alice = request(0xa11ce, 1);
    apply(
        &mut sm,
        vec![
            entry(1, proposal(alice, 1, put("k", "v1"))),
            entry(2, proposal(request(2, 1), 1, put("k", "v2"))),
        ],
    )
    .await;
    let first = sm.stored_result(alice).unwrap().expect("stored");
    let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();

    let other_dir = tempfile::tempdir().unwrap();
    let other = Engine::open(other_dir.path()).unwrap();
    let mut other_sm = other.state_machine(SHARD, WHOLE_RING).unwrap();
    let path = other.incoming_snapshot_path(SHARD).unwrap();
    std::fs::copy(&snapshot.snapshot.path, &path).unwrap();
    other_sm
        .install_snapshot(&snapshot.meta, SnapshotFile { path })
        .await
        .unwrap();
    assert_eq!(other_sm.stored_result(alice).unwrap(), Some(first));
    // The retry reaches this replica's log after the snapshot: not applied again.
    apply(&mut other_sm, vec![entry(3, proposal(alice, 1, put("k", "v1")))]).await;
    assert_eq!(value_of(&other, "k"), Some(b"v2".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_copy_below_the_clients_floor_is_refused_and_sessions_expire() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let mut sm = engine.state_machine(SHARD, WHOLE_RING).unwrap();
    let client = 0xc0ffee;
    let t0 = now_ms();
    let at = |request, floor, time, command| Proposal {
        request: Some(request),
        client_floor: floor,
        proposed_at_ms: time,
        command,
    };
    apply(
        &mut sm,
        vec![
            entry(1, at(request(client, 3), 3, t0, put("a", "3"))),
            // The client finished 3 and 4 and now waits for 5: results below 5 are dropped...
            entry(2, at(request(client, 5), 5, t0, put("b", "5"))),
            // ...and a late copy of request 3 is refused, not applied.
            entry(3, at(request(client, 3), 3, t0, put("a", "stale"))),
        ],
    )
    .await;
    assert_eq!(value_of(&engine, "a"), Some(b"3".to_vec()));
    assert_eq!(
        sm.stored_result(request(client, 3)).unwrap(),
        None,
        "below the floor"
    );
    assert!(sm.stored_result(request(client, 5)).unwrap().is_some());
    assert_eq!(sm.sessions(), 1);

    // Another client writes long after: the silent client's session expires, everywhere at the
    // same log index, because expiry uses the clock in the log.
    let later = t0 + SESSION_TTL_MS + 120_000;
    apply(
        &mut sm,
        vec![entry(4, at(request(7, 1), 1, later, put("c", "1")))],
    )
    .await;
    assert_eq!(sm.stored_result(request(client, 5)).unwrap(), None, "expired");
    assert_eq!(sm.sessions(), 1, "only the active client is left");

    // All of it survives a restart of the state machine.
    drop(sm);
    let sm = engine.state_machine(SHARD, WHOLE_RING).unwrap();
    assert_eq!(sm.sessions(), 1);
    assert!(sm.stored_result(request(7, 1)).unwrap().is_some());
}

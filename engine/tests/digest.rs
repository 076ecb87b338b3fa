//! The replica check's digest: replicas that applied the same log agree at every digest index,
//! whatever else they applied after it; replicas whose data differs disagree.

use std::time::Duration;

use futures::StreamExt;
use openraft::alias::EntryOf;
use openraft::storage::RaftStateMachine;
use openraft::{Entry, EntryPayload};
use ringkv_engine::{
    Command, DigestState, Engine, HashRange, Proposal, ReplicaId, RequestId, ShardId, StateMachine,
    TypeConfig,
};

const SHARD: ShardId = ShardId(3);
const WHOLE_RING: HashRange = HashRange {
    start: 0,
    end: u64::MAX,
};

fn entry(index: u64, command: Command) -> EntryOf<TypeConfig> {
    let proposal = Proposal {
        request: Some(RequestId {
            client: 9,
            seq: index,
        }),
        client_floor: 1,
        proposed_at_ms: 1_700_000_000_000,
        command,
    };
    Entry {
        log_id: openraft::testing::log_id::<TypeConfig>(1, ReplicaId(1), index),
        payload: EntryPayload::Normal(proposal),
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: value.into(),
    }
}

async fn apply(sm: &mut StateMachine, entries: Vec<EntryOf<TypeConfig>>) {
    let stream = futures::stream::iter(entries.into_iter().map(|entry| Ok((entry, None))));
    sm.apply(stream.boxed()).await.unwrap();
}

async fn digest_at(engine: &Engine, index: u64) -> (u64, u64) {
    for _ in 0..1000 {
        match engine.digest(SHARD, index) {
            Some(DigestState::Done { digest, keys }) => return (digest, keys),
            Some(DigestState::Failed) => panic!("digest at {index} failed"),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    panic!("no digest at {index} after 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_the_same_log_agree_and_a_divergent_one_does_not() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let engines: Vec<Engine> = dirs.iter().map(|d| Engine::open(d.path()).unwrap()).collect();
    let common = || {
        vec![
            entry(1, put("a", "1")),
            entry(2, put("b", "2")),
            entry(3, Command::Delete { key: "a".into() }),
            entry(4, Command::Digest),
        ]
    };
    // Replica 0 applies more after the digest, in the same batch: the digest is of index 4 alone.
    let mut first = engines[0].state_machine(SHARD, WHOLE_RING).unwrap();
    let mut entries = common();
    entries.push(entry(5, put("c", "after")));
    apply(&mut first, entries).await;
    // Replica 1 applies the same log in two batches.
    let mut second = engines[1].state_machine(SHARD, WHOLE_RING).unwrap();
    let mut entries = common();
    let tail = entries.split_off(2);
    apply(&mut second, entries).await;
    apply(&mut second, tail).await;

    let (a, a_keys) = digest_at(&engines[0], 4).await;
    let (b, b_keys) = digest_at(&engines[1], 4).await;
    assert_eq!((a, a_keys), (b, b_keys));
    // One data key is left ("a" was deleted); plus the client's session record and the stored
    // results of its three writes (the digest command is not a client write).
    assert_eq!(a_keys, 1 + 1 + 3);

    // Replica 2 diverged: one value differs.
    let mut third = engines[2].state_machine(SHARD, WHOLE_RING).unwrap();
    let mut entries = common();
    entries[1] = entry(2, put("b", "different"));
    apply(&mut third, entries).await;
    let (c, _) = digest_at(&engines[2], 4).await;
    assert_ne!(a, c, "a replica holding different data has a different digest");
}

/// The replica check compares request-id tables too: two replicas with the same data but a
/// different table (one recorded a write's result, the other applied it as a write without a
/// request id) answer a retry differently, and their digests differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_whose_request_id_tables_differ_disagree() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let engines: Vec<Engine> = dirs.iter().map(|d| Engine::open(d.path()).unwrap()).collect();
    let log = |recorded: bool| {
        let mut entries = vec![
            entry(1, put("a", "1")),
            entry(2, put("b", "2")),
            entry(3, Command::Digest),
        ];
        if !recorded && let EntryPayload::Normal(proposal) = &mut entries[1].payload {
            proposal.request = None;
        }
        entries
    };
    let mut first = engines[0].state_machine(SHARD, WHOLE_RING).unwrap();
    apply(&mut first, log(true)).await;
    let mut second = engines[1].state_machine(SHARD, WHOLE_RING).unwrap();
    apply(&mut second, log(false)).await;
    for key in ["a", "b"] {
        assert_eq!(
            engines[0].get(key.as_bytes()).unwrap().map(|v| v.value),
            engines[1].get(key.as_bytes()).unwrap().map(|v| v.value),
            "the data is the same"
        );
    }
    let (a, _) = digest_at(&engines[0], 3).await;
    let (b, _) = digest_at(&engines[1], 3).await;
    assert_ne!(
        a, b,
        "replicas whose request-id tables differ have different digests"
    );
}

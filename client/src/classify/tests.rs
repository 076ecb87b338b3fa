//! Every answer the client can receive, classified, for reads and for writes: what it means for
//! whether the request applied, what the plan does next, and the error a request ends with.

use prost::Message;
use tonic::{Code, Status};

use super::*;

fn with_detail(code: Code, kind: Kind) -> Status {
    let details = pb::ErrorDetail { kind: Some(kind) }.encode_to_vec();
    Status::with_details(code, "answer from the node", details.into())
}

/// A status as tonic builds it when the TCP connection could not be opened.
fn connect_failure() -> Status {
    let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
    Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))))
}

/// The same code and text as a connect failure, without tonic's typed error: a broken connection
/// whose message happens to read alike must not pass for "never left".
fn lookalike_connect_failure() -> Status {
    Status::unavailable("tcp connect error: connection refused")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    No,
    Maybe,
}

#[test]
fn every_answer_is_classified_by_what_it_means_for_the_write() {
    let not_leader = |leader: u64| {
        with_detail(
            Code::FailedPrecondition,
            Kind::NotLeader(pb::NotLeader {
                shard_id: 3,
                leader_node_id: leader,
                leader_addr: if leader == 0 {
                    String::new()
                } else {
                    "127.0.0.1:7380".into()
                },
            }),
        )
    };
    let unavailable = |outcome_unknown: bool| {
        with_detail(
            Code::Unavailable,
            Kind::Unavailable(pb::Unavailable {
                shard_id: 3,
                outcome_unknown,
            }),
        )
    };
    // (what, status, applied, next)
    let table: Vec<(&str, Status, Applied, Next)> = vec![
        (
            "not leader, names the leader",
            not_leader(2),
            Applied::No,
            Next::FollowHint,
        ),
        (
            "not leader, knows none",
            not_leader(0),
            Applied::No,
            Next::BackOff,
        ),
        (
            "wrong shard",
            with_detail(
                Code::FailedPrecondition,
                Kind::WrongShard(pb::WrongShard {
                    shard_id: 3,
                    map_epoch: 2,
                }),
            ),
            Applied::No,
            Next::Refresh,
        ),
        (
            "busy",
            with_detail(Code::Unavailable, Kind::Busy(pb::Busy { shard_id: 3 })),
            Applied::No,
            Next::BackOffBusy,
        ),
        (
            "unavailable before proposing",
            unavailable(false),
            Applied::No,
            Next::BackOff,
        ),
        (
            "unavailable after proposing",
            unavailable(true),
            Applied::Maybe,
            Next::BackOff,
        ),
        (
            "invalid argument with detail",
            with_detail(
                Code::InvalidArgument,
                Kind::InvalidArgument(pb::InvalidArgument { limit: "key".into() }),
            ),
            Applied::No,
            Next::Fail,
        ),
        (
            "invalid argument, bare",
            Status::invalid_argument("bad"),
            Applied::No,
            Next::Fail,
        ),
        (
            "internal error on the node",
            Status::internal("storage"),
            Applied::Maybe,
            Next::BackOff,
        ),
        (
            "connection could not be opened",
            connect_failure(),
            Applied::No,
            Next::BackOff,
        ),
        (
            "broken connection that reads like a connect error",
            lookalike_connect_failure(),
            Applied::Maybe,
            Next::BackOff,
        ),
        (
            "connection broke",
            Status::unavailable("connection reset"),
            Applied::Maybe,
            Next::BackOff,
        ),
        (
            "deadline exceeded",
            Status::deadline_exceeded("late"),
            Applied::Maybe,
            Next::BackOff,
        ),
        (
            "cancelled (tonic's client-side timeout)",
            Status::cancelled("Timeout expired"),
            Applied::Maybe,
            Next::BackOff,
        ),
        (
            "unknown",
            Status::unknown("h2 error"),
            Applied::Maybe,
            Next::BackOff,
        ),
        ("aborted", Status::aborted("?"), Applied::Maybe, Next::BackOff),
        ("data loss", Status::data_loss("?"), Applied::Maybe, Next::BackOff),
        (
            "unimplemented (older node)",
            Status::unimplemented("no such method"),
            Applied::No,
            Next::Fail,
        ),
        // tonic answers these when a message is over a size limit; the client cannot tell
        // whether it was the request (not run) or the answer (the request ran).
        (
            "resource exhausted (message too large)",
            Status::resource_exhausted("too large"),
            Applied::Maybe,
            Next::BackOff,
        ),
        (
            "out of range (decoded message too large)",
            Status::out_of_range("decoded message length too large"),
            Applied::Maybe,
            Next::BackOff,
        ),
        (
            "failed precondition without detail",
            Status::failed_precondition("?"),
            Applied::No,
            Next::Fail,
        ),
        (
            "permission denied",
            Status::permission_denied("?"),
            Applied::No,
            Next::Fail,
        ),
        (
            "unauthenticated",
            Status::unauthenticated("?"),
            Applied::No,
            Next::Fail,
        ),
    ];
    for (what, status, applied, expected_next) in table {
        let attempt = classify(&status);
        let maybe = if attempt.may_have_applied() {
            Applied::Maybe
        } else {
            Applied::No
        };
        assert_eq!(maybe, applied, "{what}: {attempt:?}");
        assert_eq!(next(&attempt), expected_next, "{what}: {attempt:?}");
    }
}

#[test]
fn a_request_ends_with_the_error_its_attempts_allow_for_reads_and_writes() {
    let shard = ShardId(3);
    let unavailable = || Error::Unavailable {
        shard_id: shard,
        attempts: 4,
        last_error: "no leader".into(),
    };
    let invalid = || Error::InvalidArgument("too long".into());
    // (kind, what ended it, any attempt maybe applied, expected: is OutcomeUnknown?)
    let table = [
        (RequestKind::Read, unavailable(), false, false),
        (RequestKind::Read, unavailable(), true, false),
        (RequestKind::Read, invalid(), false, false),
        (RequestKind::Write, unavailable(), false, false),
        (RequestKind::Write, unavailable(), true, true),
        (RequestKind::Write, invalid(), false, false),
        (RequestKind::Write, invalid(), true, true),
    ];
    for (kind, ended, maybe_applied, unknown) in table {
        let error = final_error(kind, shard, ended.clone(), maybe_applied);
        assert_eq!(
            matches!(error, Error::OutcomeUnknown { .. }),
            unknown,
            "{kind:?} ended by {ended:?}, maybe applied: {maybe_applied} -> {error:?}"
        );
        assert_eq!(error.may_have_applied(), unknown, "{error:?}");
        if !unknown {
            assert_eq!(error, ended);
        }
    }
}

#[test]
fn classification_does_not_read_error_text() {
    // A status whose text mentions connecting but with no typed connect error in its source, and
    // one with the typed error but unrelated text: only the type decides.
    assert!(matches!(
        classify(&lookalike_connect_failure()),
        Attempt::Ambiguous(_)
    ));
    let refused = std::io::Error::other("something else entirely");
    let typed = Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
    assert_eq!(typed.code(), Code::Unavailable);
    assert!(matches!(classify(&typed), Attempt::Unreachable(_)));
}

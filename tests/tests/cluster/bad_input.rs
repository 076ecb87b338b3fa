//! Bad input and misuse: every limit is refused with InvalidArgument naming it and writes nothing;
//! a compare-and-swap with a wrong expectation fails and changes nothing; a second server on a data
//! dir in use fails at once with a clear message.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ringkv_client::Expect;
use ringkv_proto::pb::{self, kv_client::KvClient};
use ringkv_tests::ProcessCluster;
use tonic::Code;

async fn raw_client(addr: &str) -> anyhow::Result<KvClient<tonic::transport::Channel>> {
    Ok(KvClient::connect(format!("http://{addr}"))
        .await?
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20))
}

fn assert_invalid(result: Result<impl std::fmt::Debug, tonic::Status>, needle: &str) {
    let status = result.expect_err("request over a limit must fail");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} should name {needle:?}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_are_refused_and_nothing_is_written() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3, 16, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    // Talk to the leader of the key's shard, so a refusal cannot be a NotLeader in disguise.
    let mut raw = raw_client(&cluster.nodes[0].addr).await?;
    let put = |key: Bytes, value: Bytes| pb::PutRequest {
        route: None,
        key,
        value,
        request_id: None,
    };

    assert_invalid(
        raw.put(put(Bytes::new(), Bytes::from_static(b"v"))).await,
        "empty",
    );
    assert_invalid(
        raw.put(put(Bytes::from(vec![b'k'; 4097]), Bytes::new())).await,
        "4096",
    );
    assert_invalid(
        raw.put(put(
            Bytes::from_static(b"big"),
            Bytes::from(vec![0u8; (1 << 20) + 1]),
        ))
        .await,
        "1 MiB",
    );
    assert_invalid(
        raw.get(pb::GetRequest {
            key: Bytes::new(),
            ..Default::default()
        })
        .await,
        "empty",
    );

    let op = |key: String, value: Vec<u8>| pb::BatchOp {
        key: key.into(),
        op: Some(pb::batch_op::Op::Put(value.into())),
    };
    let too_many: Vec<_> = (0..1001)
        .map(|i| op(format!("{{t}}many-{i}"), b"v".to_vec()))
        .collect();
    assert_invalid(
        raw.batch(pb::BatchRequest {
            request_id: None,
            route: None,
            ops: too_many,
        })
        .await,
        "1000",
    );
    let too_big: Vec<_> = (0..9)
        .map(|i| op(format!("{{t}}big-{i}"), vec![1u8; 1 << 20]))
        .collect();
    assert_invalid(
        raw.batch(pb::BatchRequest {
            request_id: None,
            route: None,
            ops: too_big,
        })
        .await,
        "8 MiB",
    );
    let empty_key_inside = vec![
        op("{t}fine".into(), b"v".to_vec()),
        op(String::new(), b"v".to_vec()),
    ];
    assert_invalid(
        raw.batch(pb::BatchRequest {
            request_id: None,
            route: None,
            ops: empty_key_inside,
        })
        .await,
        "operation 1",
    );
    let cross_shard: Vec<_> = (0..50)
        .map(|i| op(format!("spread-{i}"), b"v".to_vec()))
        .collect();
    assert_invalid(
        raw.batch(pb::BatchRequest {
            request_id: None,
            route: None,
            ops: cross_shard,
        })
        .await,
        "one shard",
    );
    assert_invalid(
        raw.compare_and_swap(pb::CasRequest {
            key: Bytes::from_static(b"k"),
            ..Default::default()
        })
        .await,
        "expectation",
    );
    // The expected value of a compare-and-swap is a user byte field like any other.
    assert_invalid(
        raw.compare_and_swap(pb::CasRequest {
            key: Bytes::from_static(b"cas-big"),
            expect: Some(pb::cas_request::Expect::ExpectValue(Bytes::from(vec![
                0u8;
                (1 << 20)
                    + 1
            ]))),
            new_value: Bytes::from_static(b"v"),
            ..Default::default()
        })
        .await,
        "1 MiB",
    );
    // A scan's prefix and cursor are user byte fields too.
    assert_invalid(
        raw.scan(pb::ScanRequest {
            route: Some(pb::RouteHeader {
                shard_id: 1,
                map_epoch: 0,
            }),
            prefix: Bytes::from(vec![b'p'; 4097]),
            ..Default::default()
        })
        .await,
        "4096",
    );
    assert_invalid(
        raw.scan(pb::ScanRequest {
            route: Some(pb::RouteHeader {
                shard_id: 1,
                map_epoch: 0,
            }),
            cursor: Bytes::from(vec![0u8; 8 + 4097]),
            ..Default::default()
        })
        .await,
        "cursor",
    );
    // A malformed request id is refused too.
    assert_invalid(
        raw.put(pb::PutRequest {
            route: None,
            key: Bytes::from_static(b"bad-id"),
            value: Bytes::from_static(b"v"),
            request_id: Some(pb::RequestId {
                client_id: 1,
                seq: 0,
                first_incomplete: 0,
            }),
        })
        .await,
        "request id",
    );

    // Nothing any refused request carried was written.
    assert_eq!(client.get("big").await?, None);
    assert_eq!(client.get("{t}many-0").await?, None);
    assert_eq!(client.get("{t}big-0").await?, None);
    assert_eq!(client.get("{t}fine").await?, None);
    assert_eq!(client.get("spread-0").await?, None);
    assert_eq!(client.get("cas-big").await?, None);
    assert_eq!(client.get("bad-id").await?, None);

    // The client refuses the same input before sending, with the same words.
    let error = client.put("", "v").await.expect_err("empty key");
    assert!(error.to_string().contains("empty"), "{error}");
    let error = client.put(vec![b'k'; 4097], "v").await.expect_err("long key");
    assert!(error.to_string().contains("4096"), "{error}");
    let error = client
        .put("k", vec![0u8; (1 << 20) + 1])
        .await
        .expect_err("big value");
    assert!(error.to_string().contains("1 MiB"), "{error}");
    let error = client
        .compare_and_swap(
            "k",
            Expect::Value(Bytes::from(vec![0u8; (1 << 20) + 1])),
            Some(b"v"),
        )
        .await
        .expect_err("big expected value");
    assert!(error.to_string().contains("expected value"), "{error}");
    assert!(!error.may_have_applied());

    // Exactly at the limits is fine.
    client.put(vec![b'k'; 4096], vec![7u8; 1 << 20]).await?;
    assert_eq!(
        client.get(vec![b'k'; 4096]).await?.expect("written").value.len(),
        1 << 20
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cas_with_a_wrong_expectation_fails_and_changes_nothing() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3, 16, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client().await?;

    let version = client.put("account", "100").await?;
    let outcome = client
        .compare_and_swap("account", Expect::Value(Bytes::from_static(b"90")), Some(b"80"))
        .await?;
    assert!(!outcome.succeeded);
    let current = outcome.current.expect("key exists");
    assert_eq!((current.value.as_ref(), current.version), (&b"100"[..], version));
    assert_eq!(
        client.get("account").await?.expect("still there").value,
        &b"100"[..]
    );

    let outcome = client
        .compare_and_swap("account", Expect::Version(version + 1000), Some(b"80"))
        .await?;
    assert!(!outcome.succeeded, "a wrong version must not match");
    let outcome = client
        .compare_and_swap("account", Expect::Absent, Some(b"80"))
        .await?;
    assert!(!outcome.succeeded, "the key exists");
    assert_eq!(
        client.get("account").await?.expect("still there").value,
        &b"100"[..]
    );

    let outcome = client
        .compare_and_swap("account", Expect::Version(version), Some(b"80"))
        .await?;
    assert!(outcome.succeeded, "the right version swaps");
    assert_eq!(client.get("account").await?.expect("swapped").value, &b"80"[..]);
    let outcome = client
        .compare_and_swap("account", Expect::Value(Bytes::from_static(b"80")), None)
        .await?;
    assert!(outcome.succeeded, "cas can delete");
    assert_eq!(client.get("account").await?, None);
    let outcome = client
        .compare_and_swap("account", Expect::Absent, Some(b"1"))
        .await?;
    assert!(outcome.succeeded, "expect-absent on a missing key swaps");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_a_data_dir_in_use_fails_at_once() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3, 4, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;

    let port = ringkv_tests::ports::free_ports(1)[0];
    // Same node and data dir as the running node 1, listening on another port.
    let mut command = cluster.start_command_listening(1, &format!("127.0.0.1:{port}"));
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    assert!(
        !output.status.success(),
        "the second server must exit with an error"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "it must fail at once, took {:?}",
        started.elapsed()
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("already in use"),
        "stderr should say the data dir is in use: {stderr}"
    );
    assert!(
        stderr.contains(&cluster.node(1).data_dir.display().to_string()),
        "and name it: {stderr}"
    );

    // The running node was not disturbed.
    let client = cluster.client().await?;
    client.put("still-works", "yes").await?;
    assert_eq!(
        client.get("still-works").await?.expect("written").value,
        &b"yes"[..]
    );
    Ok(())
}

//! The Kv command stream (`Kv.Commands`), which carries every get and write a client sends to a
//! node: concurrent requests share its messages; each request is answered under its own id, a bad
//! one with the error its unary call would give, without failing the others; open streams do not
//! hold up a node's graceful stop; and Raft replication travels on the nodes' `Calls` streams.

use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use ringkv_proto::pb::{self, kv_client::KvClient, kv_command::Request, kv_reply::Reply};
use ringkv_tests::ProcessCluster;
use tonic::Code;

/// Stream counters summed over the cluster's running nodes: (Kv requests, their messages, Raft
/// calls).
async fn stream_counters(
    client: &ringkv_client::Client,
    cluster: &ProcessCluster,
) -> anyhow::Result<(u64, u64, u64)> {
    let (mut commands, mut messages, mut raft_calls) = (0, 0, 0);
    for node in cluster.nodes.iter().filter(|node| node.is_running()) {
        let status = ringkv_tests::admin(client).node_status(&node.addr).await?;
        commands += status.kv_commands;
        messages += status.kv_command_messages;
        raft_calls += status.raft_calls;
    }
    Ok((commands, messages, raft_calls))
}

// A current-thread runtime: every request below is queued before the client's stream drivers run,
// so how many share a message does not depend on thread scheduling. It also makes the client
// unresponsive while the test waits for node 3 to stop (that wait blocks the thread): a node must
// not wait forever for a client that has stopped answering.
#[tokio::test(flavor = "current_thread")]
async fn concurrent_requests_share_messages_and_streams_do_not_hold_up_a_stop() -> anyhow::Result<()> {
    let mut cluster = ProcessCluster::start(3, 16, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client_with_timeout(Duration::from_secs(30)).await?;
    let keys: Vec<String> = (0..512).map(|i| format!("together-{i}")).collect();

    let (commands_before, messages_before, raft_before) = stream_counters(&client, &cluster).await?;
    let puts = join_all(keys.iter().map(|key| client.put(key, format!("value of {key}")))).await;
    for (key, result) in keys.iter().zip(&puts) {
        assert!(result.is_ok(), "put {key}: {result:?}");
    }
    let (commands_after, messages_after, raft_after) = stream_counters(&client, &cluster).await?;
    let (commands, messages) = (commands_after - commands_before, messages_after - messages_before);
    // Replication travelled on the nodes' Raft streams: each put reached two followers.
    assert!(
        raft_after - raft_before >= 2,
        "the nodes' Raft streams carried {} calls during 512 puts",
        raft_after - raft_before
    );
    // Every put travelled on a stream (retries would add more), and they shared messages: 512
    // puts queued together leave in a handful of messages per node, not one each.
    assert!(
        commands >= 512,
        "the nodes received {commands} requests for 512 puts"
    );
    assert!(
        messages * 8 <= commands,
        "512 concurrent puts took {messages} messages for {commands} requests: they were not batched"
    );

    let gets = join_all(keys.iter().map(|key| client.get(key))).await;
    for (key, result) in keys.iter().zip(gets) {
        let value = result?.map(|v| v.value);
        assert_eq!(
            value.as_deref(),
            Some(format!("value of {key}").as_bytes()),
            "get {key}"
        );
    }

    // The client holds a stream open to every node and, frozen, does not answer the node's
    // shutdown; the node still stops.
    assert!(
        cluster.terminate(3, Duration::from_secs(60)),
        "node 3 did not stop within 60 s with a frozen client's streams open\n{}",
        cluster.log_tails(30)
    );
    // The client notices the stream's end and carries on with the other nodes.
    let puts = join_all(keys.iter().take(64).map(|key| client.put(key, "after the stop"))).await;
    for (key, result) in keys.iter().zip(&puts) {
        assert!(result.is_ok(), "put {key} after node 3 stopped: {result:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_command_is_answered_under_its_id_and_a_bad_one_fails_alone() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3, 16, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    client.put("served", "yes").await?;
    // Talk to the leader of the key's shard, so the good read is served there.
    let map = client.shard_map().await;
    let shard = map.shard_for_key(b"served").id;
    let leader = cluster.leaders().await?[&shard.0].expect("every shard has a leader after wait_ready");
    let mut raw = KvClient::connect(format!("http://{}", cluster.node(leader).addr)).await?;

    let commands = vec![
        pb::KvCommand {
            id: 7,
            budget_ms: 5_000,
            request: None,
        },
        pb::KvCommand {
            id: 8,
            budget_ms: 5_000,
            request: Some(Request::Put(pb::PutRequest {
                key: Bytes::new(),
                value: Bytes::from_static(b"v"),
                ..Default::default()
            })),
        },
        pb::KvCommand {
            id: 9,
            budget_ms: 5_000,
            request: Some(Request::Get(pb::GetRequest {
                key: Bytes::from_static(b"served"),
                ..Default::default()
            })),
        },
    ];
    let (send, outbound) = tokio::sync::mpsc::channel(4);
    send.send(pb::KvCommands { commands }).await?;
    let mut replies = raw
        .commands(tokio_stream::wrappers::ReceiverStream::new(outbound))
        .await?
        .into_inner();
    let mut answers = std::collections::BTreeMap::new();
    while answers.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(20), replies.message())
            .await
            .map_err(|_| anyhow::anyhow!("no reply within 20 s; got {answers:?}"))??
            .ok_or_else(|| anyhow::anyhow!("the stream ended early; got {answers:?}"))?;
        for reply in message.replies {
            assert!(
                answers.insert(reply.id, reply.reply).is_none(),
                "id {} answered twice",
                reply.id
            );
        }
    }
    let error = |id: u64| match &answers[&id] {
        Some(Reply::Error(error)) => error.clone(),
        other => panic!("command {id} should fail, got {other:?}"),
    };
    let missing = error(7);
    assert_eq!(missing.code, Code::InvalidArgument as i32, "{missing:?}");
    assert!(missing.message.contains("carries no request"), "{missing:?}");
    let empty_key = error(8);
    assert_eq!(empty_key.code, Code::InvalidArgument as i32, "{empty_key:?}");
    assert!(empty_key.message.contains("empty"), "{empty_key:?}");
    match &answers[&9] {
        Some(Reply::Get(pb::GetResponse {
            value: Some(value), ..
        })) => assert_eq!(&value.value[..], b"yes"),
        other => panic!("command 9 should read \"yes\", got {other:?}"),
    }

    // Closing the request side ends the reply stream once everything is answered.
    drop(send);
    let end = tokio::time::timeout(Duration::from_secs(20), replies.message()).await;
    assert!(
        matches!(end, Ok(Ok(None))),
        "the stream should end after the client closes it: {end:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_get_asks_each_shard_once_and_answers_in_the_order_asked() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(3, 16, &[])?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    let keys: Vec<String> = (0..200).map(|i| format!("many-{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        client.put(key, format!("v{i}")).await?;
    }
    // Every fourth key asked for does not exist.
    let asked: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            if i % 4 == 3 {
                format!("missing-{i}")
            } else {
                key.clone()
            }
        })
        .collect();
    let expected: Vec<Option<Bytes>> = (0..asked.len())
        .map(|i| (i % 4 != 3).then(|| Bytes::from(format!("v{i}"))))
        .collect();
    let levels = [
        ringkv_client::ReadOptions::default(),
        ringkv_client::ReadOptions::new(ringkv_client::Consistency::ReplicaLinearizable)
            .with_selection(ringkv_client::ReplicaSelection::Spread),
    ];
    for options in levels {
        let (before, _, _) = stream_counters(&client, &cluster).await?;
        let values = client.get_many_with(&asked, options).await?;
        let (after, _, _) = stream_counters(&client, &cluster).await?;
        let got: Vec<Option<Bytes>> = values.into_iter().map(|v| v.map(|v| v.value)).collect();
        assert_eq!(got, expected, "{options:?}");
        // 200 keys over 16 shards: one request per shard, and at most one retry each (a leader
        // change on a starved machine sends a shard's request again) — never one per key.
        assert!(
            after - before <= 32,
            "{options:?}: {} requests for 200 keys on 16 shards",
            after - before
        );
    }

    // Malformed multi-gets are refused, naming what is wrong.
    let addr = format!("http://{}", cluster.nodes[0].addr);
    let mut raw = KvClient::connect(addr).await?;
    let empty = raw.multi_get(pb::MultiGetRequest::default()).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert!(
        empty.message().contains("at least one key"),
        "{}",
        empty.message()
    );
    let too_many = pb::MultiGetRequest {
        keys: (0..1_001).map(|i| Bytes::from(format!("k{i}"))).collect(),
        ..Default::default()
    };
    let refused = raw.multi_get(too_many).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("at most 1000 keys"),
        "{}",
        refused.message()
    );
    Ok(())
}

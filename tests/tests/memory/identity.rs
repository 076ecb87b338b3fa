//! Every Raft message carries its sender's and receiver's identity, and a node refuses one of
//! another cluster, one addressed to an earlier incarnation of itself, and one from a sender whose
//! incarnation its shard map does not record — each with a message saying what happened. A
//! message with the right identity is served.

use std::time::Duration;

use openraft::raft::VoteRequest;
use ringkv_engine::{NodeId, ReplicaId, ShardId, TypeConfig};
use ringkv_server::transport::{MemoryNetwork, RaftHeader};
use ringkv_tests::LocalCluster;
use ringkv_tests::local_cluster::TransportKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_messages_of_another_cluster_or_incarnation_are_refused() -> anyhow::Result<()> {
    let cluster = LocalCluster::start(3, 2, TransportKind::Memory(MemoryNetwork::new(3)), |_| {}).await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let receiver = &cluster.running(2).node;
    let sender = cluster.running(1).node.identity();
    let map = receiver.shard_map();
    let shard = map.shard(ShardId(1)).expect("shard 1");
    let target = shard
        .replica_on(NodeId(2))
        .expect("node 2 hosts shard 1")
        .replica_id;
    let good = RaftHeader {
        cluster_id: sender.cluster_id,
        from_node: sender.node_id,
        from_incarnation: sender.incarnation,
        to_node: NodeId(2),
        to_incarnation: receiver.identity().incarnation,
    };
    // A vote request that changes nothing: an old term, from a replica of the shard.
    let vote = |header: RaftHeader| {
        let node = receiver.clone();
        async move {
            let request = VoteRequest::<TypeConfig>::new(
                openraft::impls::Vote::new(0, ReplicaId(shard_replica(1))),
                None,
            );
            node.raft_vote(&header, ShardId(1), target, request).await
        }
    };
    fn shard_replica(node: u64) -> u64 {
        (1 << 32) | node
    }
    vote(good).await.map_err(anyhow::Error::msg)?;

    let cases = [
        (
            RaftHeader {
                cluster_id: good.cluster_id ^ 1,
                ..good
            },
            "belongs to cluster",
        ),
        (
            RaftHeader {
                to_incarnation: good.to_incarnation ^ 1,
                ..good
            },
            "must not act for those replicas",
        ),
        (
            RaftHeader {
                from_incarnation: good.from_incarnation ^ 1,
                ..good
            },
            "must not rejoin as the replicas it used to hold",
        ),
        (
            RaftHeader {
                from_node: NodeId(9),
                ..good
            },
            "does not list",
        ),
        (
            RaftHeader {
                to_node: NodeId(3),
                ..good
            },
            "meant for node 3",
        ),
    ];
    for (header, expected) in cases {
        let error = vote(header).await.expect_err("refused");
        assert!(error.contains(expected), "{header:?}: {error}");
        assert!(error.contains("node 2 refused"), "{error}");
    }
    cluster.shutdown().await;
    Ok(())
}

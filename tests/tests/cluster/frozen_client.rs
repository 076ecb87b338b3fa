//! A node stops and frees its storage even when a client's connection to it outlives the server:
//! a client that stopped answering (frozen) never closes its connection, and the connection's task
//! lives on after the server gave up waiting for it. It must not keep the node, so an in-process
//! restart on the same data directory finds the directory free.

use std::sync::mpsc;
use std::time::Duration;

use ringkv_tests::LocalCluster;
use ringkv_tests::local_cluster::TransportKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_client_connection_does_not_keep_a_stopped_node_alive() -> anyhow::Result<()> {
    let mut cluster = LocalCluster::start(1, 1, TransportKind::Grpc, |_| {}).await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let endpoint = cluster.endpoints()[0].clone();

    // A client on a runtime of its own: it connects and writes, then its only thread blocks, so
    // its connection stays open and answers nothing (not even HTTP/2 pings) for 40 s.
    let (connected, wait_connected) = mpsc::channel();
    let frozen = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        runtime.block_on(async {
            let client = ringkv_client::Client::connect([endpoint]).await.expect("connect");
            client.put("frozen", "client").await.expect("put");
            let _ = connected.send(());
            std::thread::sleep(Duration::from_secs(40));
            drop(client);
        });
    });
    wait_connected.recv_timeout(Duration::from_secs(30))?;

    // The stop waits 5 s for the frozen client, then goes on without it; the node's storage must
    // close anyway, so the restart finds its data directory free.
    cluster.kill_node(1).await;
    cluster.start_node(1).await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let client = cluster.client().await?;
    let value = client.get("frozen").await?.map(|v| v.value);
    assert_eq!(value.as_deref(), Some(&b"client"[..]));
    cluster.shutdown().await;
    frozen.join().expect("the frozen client's thread");
    Ok(())
}

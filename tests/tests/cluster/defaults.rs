//! `ringkv start` with no flags at all runs a working single-node cluster on 127.0.0.1:7379 with
//! its data in ./ringkv-data; a bad configuration is refused with a message naming the setting.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringkv_tests::process_cluster::ringkv_binary;

/// Kills the child on drop, so a failing assertion cannot leave the process running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_with_no_flags_serves_a_single_node_cluster() -> anyhow::Result<()> {
    assert!(
        std::net::TcpListener::bind("127.0.0.1:7379").is_ok(),
        "this test needs the default port 127.0.0.1:7379 free; stop whatever listens there"
    );
    let dir = tempfile::tempdir()?;
    let child = Command::new(ringkv_binary())
        .arg("start")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let _guard = KillOnDrop(child);

    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        match ringkv_client::Client::connect(["127.0.0.1:7379"]).await {
            Ok(client) => break client,
            Err(error) => {
                assert!(Instant::now() < deadline, "default node never answered: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let map = client.shard_map().await;
    assert_eq!(map.nodes.len(), 1);
    assert_eq!(map.shards.len(), 16, "16 shards by default");
    client.put("hello", "world").await?;
    assert_eq!(client.get("hello").await?.map(|v| v.value), Some("world".into()));
    assert!(
        dir.path().join("ringkv-data").is_dir(),
        "default data dir ./ringkv-data"
    );
    Ok(())
}

#[test]
fn a_bad_configuration_is_refused_with_the_setting_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--node-id", "0"], "node_id"),
        (&["--listen", "nowhere"], "listen"),
        (&["--shards", "0"], "shards"),
        (&["--replication", "3"], "replication"),
        (&["--peers", "1=127.0.0.1:7379,x=127.0.0.1:1"], "peer id"),
    ];
    for (args, needle) in cases {
        let output = Command::new(ringkv_binary())
            .arg("start")
            .args(["--data-dir", &dir.path().join("data").display().to_string()])
            .args(*args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?} must be refused");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(needle),
            "{args:?}: error should name {needle:?}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one-line error: {stderr}");
    }
    let missing = dir.path().join("missing.toml");
    let output = Command::new(ringkv_binary())
        .args(["start", "--config", &missing.display().to_string()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.toml"));
    assert!(
        !dir.path().join("data").exists(),
        "a refused start writes nothing"
    );
}

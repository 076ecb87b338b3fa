//! ringkv's test harness: clusters of real `ringkv` processes ([`ProcessCluster`]) or of in-process
//! nodes ([`LocalCluster`], Raft over real TCP or the fault-injecting in-memory network), the
//! linearizability checker and the replica check the fault tests end with.

pub mod checks;
pub mod levels;
pub mod linearizability;
pub mod local_cluster;
pub mod ports;
pub mod process_cluster;
pub mod workload;

pub use checks::assert_replicas_identical;

/// The operator's client for `client`'s cluster, sharing its connections.
pub fn admin(client: &ringkv_client::Client) -> ringkv_client::AdminClient {
    ringkv_client::AdminClient::new(client.clone())
}
pub use local_cluster::LocalCluster;
pub use process_cluster::ProcessCluster;

/// Sets up test logging once (RINGKV_LOG=debug to see node logs of in-process clusters).
pub fn init_logging() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("RINGKV_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=error"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

//! openraft's own storage conformance suite, run against the RocksDB engine: one fresh engine in
//! its own temp dir per test case.

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use ringkv_engine::{Engine, HashRange, LogStore, ShardId, StateMachine, TypeConfig};
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::open(dir.path()).expect("open engine");
        let log_store = engine.log_store(ShardId(1));
        let state_machine = engine
            .state_machine(
                ShardId(1),
                HashRange {
                    start: 0,
                    end: u64::MAX,
                },
            )
            .expect("open state machine");
        Ok((dir, log_store, state_machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_on_rocksdb() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(RocksBuilder).await
}

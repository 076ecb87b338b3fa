//! openraft's own storage conformance suite, run against the RocksDB engine: one fresh engine in
//! its own temp dir per test case. Twice: as production runs it (storage calls on the caller's
//! thread when they need no I/O), and with every call on the blocking pool, the other path.

use std::sync::atomic::Ordering;

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use ringkv_engine::{Engine, EngineOptions, HashRange, LogStore, ShardId, StateMachine, TypeConfig};
use tempfile::TempDir;

struct RocksBuilder {
    force_blocking_pool: bool,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = EngineOptions::default();
        options
            .faults
            .force_blocking_pool
            .store(self.force_blocking_pool, Ordering::Relaxed);
        let engine = Engine::open_with(dir.path(), options).expect("open engine");
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
    Suite::test_all(RocksBuilder {
        force_blocking_pool: false,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_with_every_call_on_the_blocking_pool()
-> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(RocksBuilder {
        force_blocking_pool: true,
    })
    .await
}

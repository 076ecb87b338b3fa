//! An in-process transport for tests: delivers each Raft message by calling the target node
//! directly, with no sockets and no encoding. A node that stopped is unreachable.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};

use ringkv_engine::{SnapshotFile, TypeConfig};

use super::{RaftTransport, Target, TransportError};
use crate::node::Node;

#[derive(Default)]
pub struct MemoryTransport {
    /// Nodes by address. Weak, so a stopped node disappears instead of being kept alive here.
    nodes: RwLock<HashMap<String, Weak<Node>>>,
}

impl MemoryTransport {
    pub fn new() -> Arc<Self> {
        Arc::new(MemoryTransport::default())
    }

    pub fn register(&self, node: &Arc<Node>) {
        self.nodes
            .write()
            .expect("nodes lock")
            .insert(node.addr().to_owned(), Arc::downgrade(node));
    }

    fn node(&self, target: &Target) -> Result<Arc<Node>, TransportError> {
        let unreachable = |message: &str| TransportError::Unreachable {
            addr: target.addr.clone(),
            message: message.into(),
        };
        self.nodes
            .read()
            .expect("nodes lock")
            .get(&target.addr)
            .and_then(Weak::upgrade)
            .ok_or_else(|| unreachable("no node registered at this address"))
    }
}

fn remote(target: &Target) -> impl Fn(String) -> TransportError + '_ {
    move |message| TransportError::Remote {
        addr: target.addr.clone(),
        message,
    }
}

impl RaftTransport for MemoryTransport {
    fn append_entries(
        &self,
        target: &Target,
        rpc: AppendEntriesRequest<TypeConfig>,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<AppendEntriesResponse<TypeConfig>, TransportError>> {
        let node = self.node(target);
        let target = target.clone();
        Box::pin(async move {
            node?
                .raft_append(target.shard_id, target.replica_id, rpc)
                .await
                .map_err(remote(&target))
        })
    }

    fn vote(
        &self,
        target: &Target,
        rpc: VoteRequest<TypeConfig>,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<VoteResponse<TypeConfig>, TransportError>> {
        let node = self.node(target);
        let target = target.clone();
        Box::pin(async move {
            node?
                .raft_vote(target.shard_id, target.replica_id, rpc)
                .await
                .map_err(remote(&target))
        })
    }

    fn transfer_leader(
        &self,
        target: &Target,
        rpc: TransferLeaderRequest<TypeConfig>,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<TransferLeaderResponse<TypeConfig>, TransportError>> {
        let node = self.node(target);
        let target = target.clone();
        Box::pin(async move {
            node?
                .raft_transfer_leader(target.shard_id, target.replica_id, rpc)
                .await
                .map_err(remote(&target))
        })
    }

    fn install_snapshot(
        &self,
        target: &Target,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotFile>,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<SnapshotResponse<TypeConfig>, TransportError>> {
        let node = self.node(target);
        let target = target.clone();
        Box::pin(async move {
            let node = node?;
            // Each node has its own data dir: copy the file as the gRPC transport would stream it.
            let path = node
                .engine()
                .incoming_snapshot_path(target.shard_id)
                .map_err(|e| remote(&target)(e.to_string()))?;
            tokio::fs::copy(&snapshot.snapshot.path, &path)
                .await
                .map_err(|e| remote(&target)(e.to_string()))?;
            node.raft_install_snapshot(
                target.shard_id,
                target.replica_id,
                vote,
                snapshot.meta,
                SnapshotFile { path },
            )
            .await
            .map_err(remote(&target))
        })
    }
}

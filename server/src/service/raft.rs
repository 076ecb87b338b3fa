//! The Raft service: receives peers' Raft messages for any shard and hands each to the local
//! replica it names. Snapshots arrive as a stream, written to a file before being installed.

use std::future::Future;
use std::sync::Arc;

use openraft::alias::{SnapshotMetaOf, VoteOf};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use ringkv_engine::{ReplicaId, ShardId, SnapshotFile, TypeConfig};
use ringkv_proto::pb::{self, raft_server::Raft};

use crate::error::ServiceError;
use crate::node::Node;
use crate::wire;

pub struct RaftService {
    node: Arc<Node>,
}

impl RaftService {
    pub fn new(node: Arc<Node>) -> Self {
        RaftService { node }
    }
}

fn reply<T: Serialize>(result: Result<T, String>) -> Response<pb::RaftReply> {
    Response::new(pb::RaftReply {
        payload: wire::encode(&result).into(),
    })
}

/// Decodes a unary Raft request, hands it to the node, and encodes the node's answer.
async fn unary<Rpc, Answer, Fut>(
    request: Request<pb::RaftRequest>,
    handle: impl FnOnce(ShardId, ReplicaId, Rpc) -> Fut,
) -> Result<Response<pb::RaftReply>, Status>
where
    Rpc: DeserializeOwned,
    Answer: Serialize,
    Fut: Future<Output = Result<Answer, String>>,
{
    let request = request.into_inner();
    let rpc = wire::decode(&request.payload).map_err(malformed)?;
    Ok(reply(
        handle(request.shard_id, request.target_replica_id, rpc).await,
    ))
}

fn malformed(message: String) -> Status {
    ServiceError::InvalidArgument(message).into()
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        unary(request, |shard, replica, rpc| {
            self.node.raft_append(shard, replica, rpc)
        })
        .await
    }

    async fn vote(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        unary(request, |shard, replica, rpc| {
            self.node.raft_vote(shard, replica, rpc)
        })
        .await
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        unary(request, |shard, replica, rpc| {
            self.node.raft_transfer_leader(shard, replica, rpc)
        })
        .await
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| malformed("empty snapshot stream".into()))?;
        let (vote, meta): (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>) =
            wire::decode(&first.header).map_err(malformed)?;
        let (shard_id, replica_id) = (first.shard_id, first.target_replica_id);
        let result = async {
            let path = self
                .node
                .engine()
                .incoming_snapshot_path(shard_id)
                .map_err(|e| e.to_string())?;
            let mut file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            let write_error = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
            file.write_all(&first.data).await.map_err(write_error)?;
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|e| format!("snapshot stream broke: {e}"))?
            {
                file.write_all(&chunk.data).await.map_err(write_error)?;
            }
            file.sync_all().await.map_err(write_error)?;
            drop(file);
            let snapshot = SnapshotFile { path: path.clone() };
            self.node
                .raft_install_snapshot(shard_id, replica_id, vote, meta, snapshot)
                .await
        }
        .await;
        Ok(reply(result))
    }
}

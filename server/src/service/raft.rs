//! The Raft service: receives peers' Raft messages for any shard and hands each, with the identity
//! header it carries, to the node (which checks it and finds the replica). Snapshots arrive as a
//! stream written to a file; the answer streams back acknowledgements of each chunk, keep-alives
//! while the snapshot installs, and the reply.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use openraft::alias::{SnapshotMetaOf, VoteOf};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use ringkv_engine::{ReplicaId, ShardId, SnapshotFile, TypeConfig};
use ringkv_proto::pb::{self, raft_server::Raft};

use crate::error::ServiceError;
use crate::node::{Node, NodeSlot};
use crate::transport::RaftHeader;
use crate::wire;

/// How often the receiver of a snapshot tells the sender it is still installing.
const INSTALL_KEEPALIVE: Duration = Duration::from_secs(1);

pub struct RaftService {
    slot: Arc<NodeSlot>,
}

impl RaftService {
    pub fn new(slot: Arc<NodeSlot>) -> Self {
        RaftService { slot }
    }
}

fn encode_reply<T: Serialize>(result: Result<T, String>) -> pb::RaftReply {
    pb::RaftReply {
        payload: wire::encode(&result).into(),
    }
}

fn malformed(message: String) -> Status {
    ServiceError::InvalidArgument(message).into()
}

fn header_of(header: Option<&pb::RaftHeader>) -> Result<RaftHeader, Status> {
    header
        .map(RaftHeader::from_proto)
        .ok_or_else(|| malformed("Raft message without a header naming its sender and receiver".into()))
}

impl RaftService {
    /// Decodes a unary Raft request, hands it to the node, and encodes the node's answer.
    async fn unary<Rpc, Answer, Fut>(
        &self,
        request: Request<pb::RaftRequest>,
        handle: impl FnOnce(Arc<Node>, RaftHeader, ShardId, ReplicaId, Rpc) -> Fut,
    ) -> Result<Response<pb::RaftReply>, Status>
    where
        Rpc: DeserializeOwned,
        Answer: Serialize,
        Fut: Future<Output = Result<Answer, String>>,
    {
        let request = request.into_inner();
        let header = header_of(request.header.as_ref())?;
        let rpc = wire::decode(&request.payload).map_err(malformed)?;
        let answer = match self.slot.node() {
            Some(node) => {
                handle(
                    node.clone(),
                    header,
                    ShardId(request.shard_id),
                    ReplicaId(request.target_replica_id),
                    rpc,
                )
                .await
            }
            None => Err(format!(
                "node {} is starting and serves no Raft group yet",
                header.to_node
            )),
        };
        Ok(Response::new(encode_reply(answer)))
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotProgress, Status>> + Send>>;

#[tonic::async_trait]
impl Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        self.unary(request, |node, header, shard, replica, rpc| async move {
            node.raft_append(&header, shard, replica, rpc).await
        })
        .await
    }

    async fn vote(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        self.unary(request, |node, header, shard, replica, rpc| async move {
            node.raft_vote(&header, shard, replica, rpc).await
        })
        .await
    }

    async fn pre_vote(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        self.unary(request, |node, header, shard, replica, rpc| async move {
            node.raft_pre_vote(&header, shard, replica, rpc).await
        })
        .await
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        self.unary(request, |node, header, shard, replica, rpc| async move {
            node.raft_transfer_leader(&header, shard, replica, rpc).await
        })
        .await
    }

    type InstallSnapshotStream = ProgressStream;

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<ProgressStream>, Status> {
        let node = self.slot.require()?.clone();
        let mut chunks = request.into_inner();
        let idle_timeout = node.snapshot_idle_timeout();
        let first = tokio::time::timeout(idle_timeout, chunks.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no snapshot chunk arrived"))??
            .ok_or_else(|| malformed("empty snapshot stream".into()))?;
        let header = header_of(first.raft_header.as_ref())?;
        let (vote, meta): (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>) =
            wire::decode(&first.header).map_err(malformed)?;
        // Refuse a foreign sender before taking a single byte of its snapshot.
        node.check_raft_header(&header)
            .map_err(Status::failed_precondition)?;
        let (progress, receiver) = mpsc::channel::<Result<pb::SnapshotProgress, Status>>(8);
        tokio::spawn(async move {
            let target = (ShardId(first.shard_id), ReplicaId(first.target_replica_id));
            let result = receive_and_install(
                &node,
                &header,
                target,
                vote,
                meta,
                first.data.to_vec(),
                chunks,
                &progress,
            )
            .await;
            let last = pb::SnapshotProgress {
                bytes_received: 0,
                reply: Some(encode_reply(result)),
            };
            let _ = progress.send(Ok(last)).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}

/// Writes the streamed snapshot to a file (acknowledging each chunk), then installs it while
/// sending keep-alives. Every wait for the sender is bounded by the idle timeout.
#[allow(clippy::too_many_arguments)]
async fn receive_and_install(
    node: &Arc<Node>,
    header: &RaftHeader,
    (shard_id, replica_id): (ShardId, ReplicaId),
    vote: VoteOf<TypeConfig>,
    meta: SnapshotMetaOf<TypeConfig>,
    first_data: Vec<u8>,
    chunks: Streaming<pb::SnapshotChunk>,
    progress: &mpsc::Sender<Result<pb::SnapshotProgress, Status>>,
) -> Result<openraft::raft::SnapshotResponse<TypeConfig>, String> {
    let path = node
        .engine()
        .incoming_snapshot_path(shard_id)
        .map_err(|e| e.to_string())?;
    let result = receive_into(
        node,
        header,
        (shard_id, replica_id),
        vote,
        meta,
        first_data,
        chunks,
        progress,
        &path,
    )
    .await;
    if result.is_err() {
        // An install that did not happen leaves nothing behind (a file the install took is gone
        // from here already).
        let _ = tokio::fs::remove_file(&path).await;
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn receive_into(
    node: &Arc<Node>,
    header: &RaftHeader,
    (shard_id, replica_id): (ShardId, ReplicaId),
    vote: VoteOf<TypeConfig>,
    meta: SnapshotMetaOf<TypeConfig>,
    first_data: Vec<u8>,
    mut chunks: Streaming<pb::SnapshotChunk>,
    progress: &mpsc::Sender<Result<pb::SnapshotProgress, Status>>,
    path: &std::path::Path,
) -> Result<openraft::raft::SnapshotResponse<TypeConfig>, String> {
    let idle_timeout = node.snapshot_idle_timeout();
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let write_error = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    file.write_all(&first_data).await.map_err(write_error)?;
    let mut received = first_data.len() as u64;
    loop {
        let chunk = tokio::time::timeout(idle_timeout, chunks.message())
            .await
            .map_err(|_| format!("snapshot stream idle for {} ms", idle_timeout.as_millis()))?
            .map_err(|e| format!("snapshot stream broke: {e}"))?;
        let Some(chunk) = chunk else { break };
        file.write_all(&chunk.data).await.map_err(write_error)?;
        received += chunk.data.len() as u64;
        let ack = pb::SnapshotProgress {
            bytes_received: received,
            reply: None,
        };
        if progress.send(Ok(ack)).await.is_err() {
            return Err("the sender went away".into());
        }
    }
    file.sync_all().await.map_err(write_error)?;
    drop(file);
    let snapshot = SnapshotFile {
        path: path.to_owned(),
    };
    let install = node.raft_install_snapshot(header, shard_id, replica_id, vote, meta, snapshot);
    tokio::pin!(install);
    let mut keepalive = tokio::time::interval(INSTALL_KEEPALIVE);
    loop {
        tokio::select! {
            result = &mut install => return result,
            _ = keepalive.tick() => {
                let alive = pb::SnapshotProgress { bytes_received: received, reply: None };
                let _ = progress.send(Ok(alive)).await;
            }
        }
    }
}

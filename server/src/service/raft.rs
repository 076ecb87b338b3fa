//! The Raft service: receives peers' Raft messages for any shard and hands each, with the identity
//! header it carries, to the node (which checks it and finds the replica). Peers send them on one
//! `Calls` stream per node pair (`ringkv_client::batch_stream`); the unary calls carry the same.
//! Snapshots arrive as a stream written to a file; the answer streams back acknowledgements of each
//! chunk, keep-alives while the snapshot installs, and the reply.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use openraft::alias::{SnapshotMetaOf, VoteOf};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use ringkv_client::batch_stream;
use ringkv_engine::{ReplicaId, ShardId, SnapshotFile, TypeConfig};
use ringkv_proto::pb::{self, raft_server::Raft};

use crate::error::ServiceError;
use crate::node::{Node, NodeSlot};
use crate::transport::RaftHeader;
use crate::wire;

/// How often the receiver of a snapshot tells the sender it is still installing.
const INSTALL_KEEPALIVE: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct RaftService {
    slot: Arc<NodeSlot>,
    /// Becomes true when the node stops serving: the `Calls` streams end then.
    stopping: watch::Receiver<bool>,
}

impl RaftService {
    pub fn new(slot: Arc<NodeSlot>, stopping: watch::Receiver<bool>) -> Self {
        RaftService { slot, stopping }
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
    /// Serves one `Calls` stream until the peer closes its side or this node stops.
    fn serve_calls(&self, inbound: Streaming<pb::RaftCalls>) -> CallStream {
        let (service, slot) = (self.clone(), self.slot.clone());
        batch_stream::serve(
            inbound,
            |message: pb::RaftCalls| message.calls,
            move |call| {
                let service = service.clone();
                async move { service.handle_call(call).await }
            },
            prost::Message::encoded_len,
            |results| pb::RaftResults { results },
            move |calls| slot.count_raft_calls(calls),
            self.stopping.clone(),
        )
    }

    /// Handles one call of a `Calls` stream as its unary call would, and answers under its id.
    async fn handle_call(&self, call: pb::RaftCall) -> pb::RaftResult {
        let request = call.request.unwrap_or_default();
        let answer = match pb::RaftRpc::try_from(call.rpc) {
            Ok(rpc) => self.handle(rpc, request).await,
            Err(_) => Err(malformed(format!("unknown Raft RPC {}", call.rpc))),
        };
        let result = match answer {
            Ok(reply) => pb::raft_result::Result::Reply(reply),
            Err(status) => pb::raft_result::Result::Error(pb::RaftCallError {
                code: status.code() as i32,
                message: status.message().to_owned(),
            }),
        };
        pb::RaftResult {
            id: call.id,
            result: Some(result),
        }
    }

    /// Hands one Raft request to the node.
    async fn handle(&self, rpc: pb::RaftRpc, request: pb::RaftRequest) -> Result<pb::RaftReply, Status> {
        match rpc {
            pb::RaftRpc::AppendEntries => {
                self.decode_and_handle(request, |node, header, shard, replica, rpc| async move {
                    node.raft_append(&header, shard, replica, rpc).await
                })
                .await
            }
            pb::RaftRpc::Vote => {
                self.decode_and_handle(request, |node, header, shard, replica, rpc| async move {
                    node.raft_vote(&header, shard, replica, rpc).await
                })
                .await
            }
            pb::RaftRpc::PreVote => {
                self.decode_and_handle(request, |node, header, shard, replica, rpc| async move {
                    node.raft_pre_vote(&header, shard, replica, rpc).await
                })
                .await
            }
            pb::RaftRpc::TransferLeader => {
                self.decode_and_handle(request, |node, header, shard, replica, rpc| async move {
                    node.raft_transfer_leader(&header, shard, replica, rpc).await
                })
                .await
            }
            pb::RaftRpc::Quiesce => {
                self.decode_and_handle(request, |node, header, shard, replica, rpc| async move {
                    node.raft_quiesce(&header, shard, replica, rpc)
                })
                .await
            }
            pb::RaftRpc::ReadIndex => {
                self.decode_and_handle(request, |node, header, shard, replica, rpc| async move {
                    node.raft_read_index(&header, shard, replica, rpc).await
                })
                .await
            }
            pb::RaftRpc::Pulse => {
                self.decode_and_handle(request, |node, header, _, _, pulse| async move {
                    node.raft_pulse(&header, pulse)
                })
                .await
            }
        }
    }

    /// Decodes a Raft request, hands it to the node, and encodes the node's answer.
    async fn decode_and_handle<Rpc, Answer, Fut>(
        &self,
        request: pb::RaftRequest,
        handle: impl FnOnce(Arc<Node>, RaftHeader, ShardId, ReplicaId, Rpc) -> Fut,
    ) -> Result<pb::RaftReply, Status>
    where
        Rpc: DeserializeOwned,
        Answer: Serialize,
        Fut: Future<Output = Result<Answer, String>>,
    {
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
        Ok(encode_reply(answer))
    }
}

type CallStream = ReceiverStream<Result<pb::RaftResults, Status>>;
type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotProgress, Status>> + Send>>;

#[tonic::async_trait]
impl Raft for RaftService {
    type CallsStream = CallStream;

    async fn calls(
        &self,
        request: Request<Streaming<pb::RaftCalls>>,
    ) -> Result<Response<CallStream>, Status> {
        Ok(Response::new(self.serve_calls(request.into_inner())))
    }

    async fn append_entries(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        Ok(Response::new(
            self.handle(pb::RaftRpc::AppendEntries, request.into_inner())
                .await?,
        ))
    }

    async fn vote(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        Ok(Response::new(
            self.handle(pb::RaftRpc::Vote, request.into_inner()).await?,
        ))
    }

    async fn pre_vote(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        Ok(Response::new(
            self.handle(pb::RaftRpc::PreVote, request.into_inner()).await?,
        ))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        Ok(Response::new(
            self.handle(pb::RaftRpc::TransferLeader, request.into_inner())
                .await?,
        ))
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

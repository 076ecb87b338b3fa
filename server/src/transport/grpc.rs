//! The production transport: Raft messages for every shard go to a peer over one tonic channel
//! (one HTTP/2 connection, created lazily and kept) per peer address, tagged with shard and
//! replica ids and the sender's identity. All but snapshots travel on one `Calls` stream per peer
//! (`ringkv_client::batch_stream`): the messages of every shard queued while the stream is busy
//! leave together. Payloads are postcard-encoded openraft messages (see
//! `wire`). Snapshots stream both ways: file chunks out, acknowledgements and keep-alives back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

use ringkv_client::batch_stream::{self, Failure, Protocol};
use ringkv_engine::{SnapshotFile, TypeConfig};
use ringkv_proto::pb::{self, raft_client::RaftClient};

use super::{
    Pulse, QuiesceRequest, RaftTransport, ReadIndexRequest, SnapshotThrottle, Target, TransportError,
};
use crate::wire;

/// Bytes of snapshot file per streamed chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Largest Raft message accepted. Replication payloads stop at a byte budget
/// (`REPLICATION_PAYLOAD_BYTES`, 4 MiB) but always carry at least one entry, and one entry is at
/// most a batch of 8 MiB: 64 MiB leaves room for both and the framing.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The Raft `Calls` stream to one peer.
struct RaftCalls {
    client: RaftClient<Channel>,
}

impl Protocol for RaftCalls {
    type Request = (pb::RaftRpc, pb::RaftRequest);
    type Reply = pb::raft_result::Result;
    type Requests = pb::RaftCalls;
    type Replies = pb::RaftResults;

    fn size((_, request): &Self::Request) -> usize {
        prost::Message::encoded_len(request) + 16
    }

    fn pack(requests: Vec<(u64, Self::Request)>) -> pb::RaftCalls {
        let calls = requests
            .into_iter()
            .map(|(id, (rpc, request))| pb::RaftCall {
                id,
                rpc: rpc.into(),
                request: Some(request),
            })
            .collect();
        pb::RaftCalls { calls }
    }

    fn unpack(results: pb::RaftResults) -> Vec<(u64, Option<Self::Reply>)> {
        results
            .results
            .into_iter()
            .map(|result| (result.id, result.result))
            .collect()
    }

    fn open(
        &self,
        requests: ReceiverStream<pb::RaftCalls>,
    ) -> BoxFuture<'static, Result<Streaming<pb::RaftResults>, tonic::Status>> {
        let mut client = self.client.clone();
        Box::pin(async move { Ok(client.calls(requests).await?.into_inner()) })
    }
}

/// What the transport holds for one peer address.
#[derive(Clone)]
struct Peer {
    /// For snapshots, which stream on calls of their own.
    client: RaftClient<Channel>,
    /// Every other Raft RPC, for every shard.
    calls: batch_stream::Sender<RaftCalls>,
}

pub struct GrpcTransport {
    connect_timeout: Duration,
    /// Every outgoing snapshot stream draws from it; `None`: no limit.
    snapshot_throttle: Option<Arc<SnapshotThrottle>>,
    /// One lazily connected channel per peer address, shared by all shards. A std mutex: held only
    /// to clone or insert a peer, never across an await.
    peers: Mutex<HashMap<String, Peer>>,
}

impl GrpcTransport {
    pub fn new(connect_timeout: Duration) -> Self {
        GrpcTransport {
            connect_timeout,
            snapshot_throttle: None,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Limits outgoing snapshot streams, all together, to `bytes_per_sec` (0: no limit).
    pub fn with_snapshot_rate(mut self, bytes_per_sec: u64) -> Self {
        self.snapshot_throttle = SnapshotThrottle::new(bytes_per_sec).map(Arc::new);
        self
    }

    /// The peer at `addr`, created on first use (it connects on the first call). Must be called
    /// inside a tokio runtime.
    fn peer(&self, addr: &str) -> Result<Peer, TransportError> {
        let mut peers = self.peers.lock().expect("peer map lock");
        if let Some(peer) = peers.get(addr) {
            return Ok(peer.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| TransportError::Unreachable {
                addr: addr.into(),
                message: e.to_string(),
            })?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect_lazy();
        let client = RaftClient::new(channel)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
        let peer = Peer {
            calls: batch_stream::Sender::new(
                RaftCalls {
                    client: client.clone(),
                },
                addr.to_owned(),
            ),
            client,
        };
        peers.insert(addr.to_owned(), peer.clone());
        Ok(peer)
    }

    /// Sends one Raft RPC on the peer's `Calls` stream and decodes the reply, within `timeout`.
    fn call<Req, Resp>(
        &self,
        target: &Target,
        kind: pb::RaftRpc,
        rpc: Req,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Resp, TransportError>>
    where
        Req: Serialize,
        Resp: DeserializeOwned + Send + 'static,
    {
        let addr = target.addr.clone();
        let peer = self.peer(&addr);
        let request = pb::RaftRequest {
            shard_id: target.shard_id.0,
            target_replica_id: target.replica_id.0,
            payload: wire::encode(&rpc).into(),
            header: Some(target.header.to_proto()),
        };
        Box::pin(async move {
            let calls = peer?.calls;
            let result = tokio::time::timeout(timeout, calls.call((kind, request)))
                .await
                .map_err(|_| TransportError::Network {
                    addr: addr.clone(),
                    message: format!("no reply within {} ms", timeout.as_millis()),
                })?;
            let reply = match result {
                Ok(pb::raft_result::Result::Reply(reply)) => reply,
                Ok(pb::raft_result::Result::Error(error)) => {
                    let status = tonic::Status::new(tonic::Code::from_i32(error.code), error.message);
                    return Err(status_error(&addr, status));
                }
                Err(Failure::NotSent(message)) => return Err(TransportError::Unreachable { addr, message }),
                Err(Failure::OpenFailed(status)) => return Err(status_error(&addr, status)),
                Err(Failure::Lost(message)) => return Err(TransportError::Network { addr, message }),
            };
            decode_reply(&addr, &reply.payload)
        })
    }
}

fn status_error(addr: &str, status: tonic::Status) -> TransportError {
    let message = format!("{}: {}", status.code(), status.message());
    match status.code() {
        tonic::Code::Unavailable => TransportError::Unreachable {
            addr: addr.into(),
            message,
        },
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown => {
            TransportError::Network {
                addr: addr.into(),
                message,
            }
        }
        _ => TransportError::Remote {
            addr: addr.into(),
            message,
        },
    }
}

/// A reply payload is `postcard(Result<Resp, String>)`: the peer's own error travels as text.
fn decode_reply<Resp: DeserializeOwned>(addr: &str, payload: &[u8]) -> Result<Resp, TransportError> {
    let reply: Result<Resp, String> = wire::decode(payload).map_err(|message| TransportError::Remote {
        addr: addr.into(),
        message,
    })?;
    reply.map_err(|message| TransportError::Remote {
        addr: addr.into(),
        message,
    })
}

impl RaftTransport for GrpcTransport {
    fn append_entries(
        &self,
        target: &Target,
        rpc: AppendEntriesRequest<TypeConfig>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<AppendEntriesResponse<TypeConfig>, TransportError>> {
        self.call(target, pb::RaftRpc::AppendEntries, rpc, timeout)
    }

    fn vote(
        &self,
        target: &Target,
        rpc: VoteRequest<TypeConfig>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<VoteResponse<TypeConfig>, TransportError>> {
        self.call(target, pb::RaftRpc::Vote, rpc, timeout)
    }

    fn pre_vote(
        &self,
        target: &Target,
        rpc: VoteRequest<TypeConfig>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<VoteResponse<TypeConfig>, TransportError>> {
        self.call(target, pb::RaftRpc::PreVote, rpc, timeout)
    }

    fn transfer_leader(
        &self,
        target: &Target,
        rpc: TransferLeaderRequest<TypeConfig>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<TransferLeaderResponse<TypeConfig>, TransportError>> {
        self.call(target, pb::RaftRpc::TransferLeader, rpc, timeout)
    }

    fn quiesce(
        &self,
        target: &Target,
        request: QuiesceRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<bool, TransportError>> {
        self.call(target, pb::RaftRpc::Quiesce, request, timeout)
    }

    fn read_index(
        &self,
        target: &Target,
        request: ReadIndexRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<u64, TransportError>> {
        self.call(target, pb::RaftRpc::ReadIndex, request, timeout)
    }

    fn pulse(
        &self,
        target: &Target,
        pulse: Pulse,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Pulse, TransportError>> {
        self.call(target, pb::RaftRpc::Pulse, pulse, timeout)
    }

    fn install_snapshot(
        &self,
        target: &Target,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotFile>,
        idle_timeout: Duration,
    ) -> BoxFuture<'static, Result<SnapshotResponse<TypeConfig>, TransportError>> {
        let addr = target.addr.clone();
        let client = self.peer(&addr).map(|peer| peer.client);
        let throttle = self.snapshot_throttle.clone();
        let (shard_id, target_replica_id, raft_header) =
            (target.shard_id.0, target.replica_id.0, target.header.to_proto());
        Box::pin(async move {
            let mut client = client?;
            let network = |message: String| TransportError::Network {
                addr: addr.clone(),
                message,
            };
            let header = wire::encode(&(vote, snapshot.meta.clone()));
            let path = snapshot.snapshot.path.clone();
            let mut file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| network(format!("cannot open snapshot file {}: {e}", path.display())))?;
            // A bounded channel feeds the request stream, so at most a few chunks sit in memory;
            // the reader task ends when the file does or the call is dropped.
            let (sender, receiver) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(4);
            let reader_path = path.clone();
            let chunk_bytes = throttle.as_ref().map_or(SNAPSHOT_CHUNK_BYTES, |throttle| {
                throttle.chunk_bytes(SNAPSHOT_CHUNK_BYTES)
            });
            let reader = tokio::spawn(async move {
                let first = pb::SnapshotChunk {
                    shard_id,
                    target_replica_id,
                    header: header.into(),
                    data: Default::default(),
                    raft_header: Some(raft_header),
                };
                if sender.send(first).await.is_err() {
                    return Ok(());
                }
                loop {
                    let mut buffer = vec![0u8; chunk_bytes];
                    let n = file
                        .read(&mut buffer)
                        .await
                        .map_err(|e| format!("cannot read snapshot file {}: {e}", reader_path.display()))?;
                    if n == 0 {
                        return Ok(());
                    }
                    buffer.truncate(n);
                    if let Some(throttle) = &throttle {
                        throttle.take(n).await;
                    }
                    let chunk = pb::SnapshotChunk {
                        shard_id,
                        target_replica_id,
                        header: Default::default(),
                        data: buffer.into(),
                        raft_header: None,
                    };
                    if sender.send(chunk).await.is_err() {
                        return Ok(());
                    }
                }
            });
            let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
            let idle = |what: &str| {
                network(format!(
                    "snapshot transfer: no {what} for {} ms",
                    idle_timeout.as_millis()
                ))
            };
            let mut progress = tokio::time::timeout(idle_timeout, client.install_snapshot(stream))
                .await
                .map_err(|_| idle("answer"))?
                .map_err(|status| status_error(&addr, status))?
                .into_inner();
            // Every message from the receiver (a chunk written, a keep-alive while it installs)
            // resets the idle timer; the last one carries the reply.
            let reply = loop {
                match tokio::time::timeout(idle_timeout, progress.message()).await {
                    Err(_) => {
                        reader.abort();
                        return Err(idle("progress"));
                    }
                    Ok(Err(status)) => return Err(status_error(&addr, status)),
                    Ok(Ok(None)) => return Err(network("snapshot stream ended without a reply".into())),
                    Ok(Ok(Some(message))) => {
                        if let Some(reply) = message.reply {
                            break reply;
                        }
                    }
                }
            };
            match reader.await {
                Ok(Ok(())) => {}
                Ok(Err(message)) => return Err(network(message)),
                Err(error) => return Err(network(format!("snapshot reader failed: {error}"))),
            }
            decode_reply(&addr, &reply.payload)
        })
    }
}

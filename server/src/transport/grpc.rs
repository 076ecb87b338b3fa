//! The production transport: Raft messages for every shard go to a peer over one tonic channel
//! (one HTTP/2 connection, created lazily and kept) per peer address, tagged with shard and
//! replica ids and the sender's identity. Payloads are postcard-encoded openraft messages (see
//! `wire`). Snapshots stream both ways: file chunks out, acknowledgements and keep-alives back.

use std::collections::HashMap;
use std::sync::Mutex;
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
use tonic::transport::{Channel, Endpoint};

use ringkv_engine::{SnapshotFile, TypeConfig};
use ringkv_proto::pb::{self, raft_client::RaftClient};

use super::{RaftTransport, Target, TransportError};
use crate::wire;

/// Bytes of snapshot file per streamed chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Largest Raft message accepted. Replication payloads stop at a byte budget
/// (`REPLICATION_PAYLOAD_BYTES`, 4 MiB) but always carry at least one entry, and one entry is at
/// most a batch of 8 MiB: 64 MiB leaves room for both and the framing.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// One unary call of the Raft service on a client: which RPC `unary` makes.
type UnaryCall = fn(
    RaftClient<Channel>,
    tonic::Request<pb::RaftRequest>,
) -> BoxFuture<'static, Result<tonic::Response<pb::RaftReply>, tonic::Status>>;

pub struct GrpcTransport {
    connect_timeout: Duration,
    /// One lazily connected channel per peer address, shared by all shards. A std mutex: held only
    /// to clone or insert a channel, never across an await.
    channels: Mutex<HashMap<String, Channel>>,
}

impl GrpcTransport {
    pub fn new(connect_timeout: Duration) -> Self {
        GrpcTransport {
            connect_timeout,
            channels: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, addr: &str) -> Result<RaftClient<Channel>, TransportError> {
        let mut channels = self.channels.lock().expect("channel map lock");
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| TransportError::Unreachable {
                        addr: addr.into(),
                        message: e.to_string(),
                    })?
                    .connect_timeout(self.connect_timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_while_idle(true);
                let channel = endpoint.connect_lazy();
                channels.insert(addr.to_owned(), channel.clone());
                channel
            }
        };
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES))
    }

    fn unary<Req, Resp>(
        &self,
        target: &Target,
        rpc: Req,
        timeout: Duration,
        call: UnaryCall,
    ) -> BoxFuture<'static, Result<Resp, TransportError>>
    where
        Req: Serialize,
        Resp: DeserializeOwned + Send + 'static,
    {
        let addr = target.addr.clone();
        let client = self.client(&addr);
        let request = pb::RaftRequest {
            shard_id: target.shard_id.0,
            target_replica_id: target.replica_id.0,
            payload: wire::encode(&rpc).into(),
            header: Some(target.header.to_proto()),
        };
        Box::pin(async move {
            let mut request = tonic::Request::new(request);
            request.set_timeout(timeout);
            let reply = tokio::time::timeout(timeout, call(client?, request))
                .await
                .map_err(|_| TransportError::Network {
                    addr: addr.clone(),
                    message: format!("no reply within {} ms", timeout.as_millis()),
                })?
                .map_err(|status| status_error(&addr, status))?;
            decode_reply(&addr, &reply.into_inner().payload)
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
        self.unary(target, rpc, timeout, |mut client, request| {
            Box::pin(async move { client.append_entries(request).await })
        })
    }

    fn vote(
        &self,
        target: &Target,
        rpc: VoteRequest<TypeConfig>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<VoteResponse<TypeConfig>, TransportError>> {
        self.unary(target, rpc, timeout, |mut client, request| {
            Box::pin(async move { client.vote(request).await })
        })
    }

    fn pre_vote(
        &self,
        target: &Target,
        rpc: VoteRequest<TypeConfig>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<VoteResponse<TypeConfig>, TransportError>> {
        self.unary(target, rpc, timeout, |mut client, request| {
            Box::pin(async move { client.pre_vote(request).await })
        })
    }

    fn transfer_leader(
        &self,
        target: &Target,
        rpc: TransferLeaderRequest<TypeConfig>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<TransferLeaderResponse<TypeConfig>, TransportError>> {
        self.unary(target, rpc, timeout, |mut client, request| {
            Box::pin(async move { client.transfer_leader(request).await })
        })
    }

    fn install_snapshot(
        &self,
        target: &Target,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotFile>,
        idle_timeout: Duration,
    ) -> BoxFuture<'static, Result<SnapshotResponse<TypeConfig>, TransportError>> {
        let addr = target.addr.clone();
        let client = self.client(&addr);
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
                    let mut buffer = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                    let n = file
                        .read(&mut buffer)
                        .await
                        .map_err(|e| format!("cannot read snapshot file {}: {e}", reader_path.display()))?;
                    if n == 0 {
                        return Ok(());
                    }
                    buffer.truncate(n);
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

//! The Kv `Commands` stream: many requests from one client on one long-lived stream. Each request
//! is handled concurrently, exactly as its unary call would be (same validation, routing, budget and
//! errors), and its answer joins whichever reply message leaves next: replies that finish while the
//! stream is busy sending travel together.
//!
//! The stream ends when the client closes it (after the requests in flight are answered) or when
//! the node stops (at once; unanswered requests may have been applied, and the client treats them
//! so).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tracing::debug;

use ringkv_proto::pb::{self, kv_command::Request as Command, kv_reply::Reply};

use super::KvService;
use crate::error::ServiceError;

/// Requests one stream may have in flight on this node; past it the node stops reading the
/// stream, and HTTP/2 flow control holds the client back.
const MAX_IN_FLIGHT: usize = 4096;
/// Caps on one reply message, well under the gRPC message limit (one reply can be a whole value).
const MAX_REPLIES_PER_MESSAGE: usize = 1024;
const MAX_REPLY_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

pub(super) type ReplyStream = ReceiverStream<Result<pb::KvReplies, Status>>;

impl KvService {
    /// Serves one `Commands` stream: reads requests until the client closes its side or the node
    /// stops, and returns the stream of their replies.
    pub(super) fn serve_commands(&self, inbound: Streaming<pb::KvCommands>) -> ReplyStream {
        let (replies_tx, replies_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::channel(1);
        tokio::spawn(read_commands(self.clone(), inbound, replies_tx));
        tokio::spawn(send_replies(replies_rx, out_tx, self.stopping.clone()));
        ReceiverStream::new(out_rx)
    }

    /// Handles one request as its unary call would, and answers it under its id.
    async fn handle(&self, command: pb::KvCommand) -> pb::KvReply {
        let budget = (command.budget_ms > 0).then(|| Duration::from_millis(command.budget_ms));
        let result = match command.request {
            Some(Command::Get(request)) => self.get(budget, request).await.map(Reply::Get),
            Some(Command::Put(request)) => self.put(budget, request).await.map(Reply::Put),
            Some(Command::Delete(request)) => self.delete(budget, request).await.map(Reply::Delete),
            Some(Command::Cas(request)) => self.compare_and_swap(budget, request).await.map(Reply::Cas),
            Some(Command::Batch(request)) => self.batch(budget, request).await.map(Reply::Batch),
            None => Err(ServiceError::InvalidArgument(format!(
                "command {} carries no request: it needs one of get, put, delete, cas or batch",
                command.id
            ))),
        };
        let reply = result.unwrap_or_else(|error| Reply::Error(kv_error(Status::from(error))));
        pb::KvReply {
            id: command.id,
            reply: Some(reply),
        }
    }
}

/// A failed request's status, as a reply.
fn kv_error(status: Status) -> pb::KvError {
    pb::KvError {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: bytes::Bytes::copy_from_slice(status.details()),
    }
}

/// Reads the client's requests and starts each one; stops at the end of the client's side, a
/// broken stream, or when the node stops.
async fn read_commands(
    service: KvService,
    mut inbound: Streaming<pb::KvCommands>,
    replies: mpsc::UnboundedSender<pb::KvReply>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut stopping = service.stopping.clone();
    loop {
        let message = tokio::select! {
            _ = stopping.wait_for(|stopping| *stopping) => return,
            message = inbound.message() => message,
        };
        let commands = match message {
            Ok(Some(message)) => {
                service.slot.count_commands(message.commands.len());
                message.commands
            }
            Ok(None) => return,
            Err(status) => {
                debug!(%status, "Kv command stream broke");
                return;
            }
        };
        for command in commands {
            let permit = tokio::select! {
                _ = stopping.wait_for(|stopping| *stopping) => return,
                permit = in_flight.clone().acquire_owned() => permit.expect("semaphore never closed"),
            };
            let (service, replies) = (service.clone(), replies.clone());
            tokio::spawn(async move {
                let reply = service.handle(command).await;
                // The send fails only when the reply stream is gone (node stopping, client gone).
                let _ = replies.send(reply);
                drop(permit);
            });
        }
    }
}

/// Sends replies as they finish, as many per message as are ready when the stream can take
/// another. Ends when every request read has been answered after the client closed its side, or
/// at once when the node stops.
async fn send_replies(
    mut replies: mpsc::UnboundedReceiver<pb::KvReply>,
    out: mpsc::Sender<Result<pb::KvReplies, Status>>,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            _ = stopping.wait_for(|stopping| *stopping) => return,
            reply = replies.recv() => match reply {
                Some(reply) => reply,
                None => return,
            },
        };
        let mut bytes = prost::Message::encoded_len(&first);
        let mut batch = vec![first];
        while batch.len() < MAX_REPLIES_PER_MESSAGE && bytes < MAX_REPLY_MESSAGE_BYTES {
            match replies.try_recv() {
                Ok(reply) => {
                    bytes += prost::Message::encoded_len(&reply);
                    batch.push(reply);
                }
                Err(_) => break,
            }
        }
        let sent = tokio::select! {
            _ = stopping.wait_for(|stopping| *stopping) => return,
            sent = out.send(Ok(pb::KvReplies { replies: batch })) => sent,
        };
        if sent.is_err() {
            return;
        }
    }
}

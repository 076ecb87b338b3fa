//! The Kv `Commands` stream (`ringkv_client::batch_stream`): many requests from one client on one
//! long-lived stream. Each request is handled concurrently, exactly as its unary call would be
//! (same validation, routing, budget and errors), and answered under its id.
//!
//! The stream ends when the client closes it (after the requests in flight are answered) or when
//! the node stops (at once; unanswered requests may have been applied, and the client treats them
//! so).

use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use ringkv_client::batch_stream;
use ringkv_proto::pb::{self, kv_command::Request as Command, kv_reply::Reply};

use super::KvService;
use crate::error::ServiceError;

pub(super) type ReplyStream = ReceiverStream<Result<pb::KvReplies, Status>>;

impl KvService {
    /// Serves one `Commands` stream until the client closes its side or the node stops.
    pub(super) fn serve_commands(&self, inbound: Streaming<pb::KvCommands>) -> ReplyStream {
        let (service, slot) = (self.clone(), self.slot.clone());
        batch_stream::serve(
            inbound,
            |message: pb::KvCommands| message.commands,
            move |command| {
                let service = service.clone();
                async move { service.handle(command).await }
            },
            prost::Message::encoded_len,
            |replies| pb::KvReplies { replies },
            move |commands| slot.count_commands(commands),
            self.stopping.clone(),
        )
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
            Some(Command::MultiGet(request)) => self.multi_get(budget, request).await.map(Reply::MultiGet),
            None => Err(ServiceError::InvalidArgument(format!(
                "command {} carries no request: it needs one of get, multi_get, put, delete, cas or batch",
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

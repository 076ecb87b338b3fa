//! One Kv command stream per node (`crate::batch_stream`): every get, put, delete,
//! compare-and-swap and batch this client sends to a node travels on it, so concurrent requests
//! share gRPC messages instead of each paying for a call of its own.
//!
//! What a failure means for each request follows the rules in `classify`:
//! - still queued in the client: it never left, not applied (`Unreachable`), and retried;
//! - handed to a stream that could not be opened: classified from the status as a unary call's
//!   would be (a connection never opened sent nothing);
//! - handed to a stream that then broke, or that the node ended (it does when stopping): maybe
//!   applied (`Ambiguous`);
//! - the node's answer for one request: that request's gRPC status, classified as its unary call's
//!   would be.

use futures::future::BoxFuture;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::batch_stream::{self, Failure, Protocol};
use ringkv_proto::pb::{self, kv_command::Request, kv_reply::Reply};

use crate::classify::{Attempt, classify};
use crate::plan::AttemptTime;
use crate::pool::kv;

/// The Kv `Commands` stream to one node.
struct KvCommands {
    channel: Channel,
}

impl Protocol for KvCommands {
    /// The request and the node's budget for it, in milliseconds.
    type Request = (Request, u64);
    type Reply = Reply;
    type Requests = pb::KvCommands;
    type Replies = pb::KvReplies;

    fn size((request, _): &Self::Request) -> usize {
        // The request plus the id, budget and field headers around it.
        request.encoded_len() + 32
    }

    fn pack(requests: Vec<(u64, Self::Request)>) -> pb::KvCommands {
        let commands = requests
            .into_iter()
            .map(|(id, (request, budget_ms))| pb::KvCommand {
                id,
                budget_ms,
                request: Some(request),
            })
            .collect();
        pb::KvCommands { commands }
    }

    fn unpack(replies: pb::KvReplies) -> Vec<(u64, Option<Reply>)> {
        replies
            .replies
            .into_iter()
            .map(|reply| (reply.id, reply.reply))
            .collect()
    }

    fn open(
        &self,
        requests: ReceiverStream<pb::KvCommands>,
    ) -> BoxFuture<'static, Result<Streaming<pb::KvReplies>, Status>> {
        let mut client = kv(self.channel.clone());
        Box::pin(async move { Ok(client.commands(requests).await?.into_inner()) })
    }
}

/// The handle on a node's command stream; cheap to clone.
#[derive(Clone)]
pub(crate) struct CommandStream {
    sender: batch_stream::Sender<KvCommands>,
    addr: String,
}

impl CommandStream {
    /// Starts the stream's driver for the node at `addr` (it connects on the first request). Must
    /// be called inside a tokio runtime.
    pub(crate) fn new(channel: Channel, addr: String) -> CommandStream {
        CommandStream {
            sender: batch_stream::Sender::new(KvCommands { channel }, addr.clone()),
            addr,
        }
    }

    /// Sends `request` with the node's share of `time`, and waits for its answer (the caller
    /// bounds the wait). An error answer is classified as its unary call's would be.
    pub(crate) async fn call(&self, request: Request, time: AttemptTime) -> Result<Reply, Attempt> {
        let budget_ms = (time.budget.as_millis() as u64).max(1);
        match self.sender.call((request, budget_ms)).await {
            Ok(Reply::Error(error)) => Err(classify(&Status::with_details(
                Code::from_i32(error.code),
                error.message,
                error.details,
            ))),
            Ok(reply) => Ok(reply),
            Err(Failure::NotSent(reason)) => Err(Attempt::Unreachable(format!("{}: {reason}", self.addr))),
            Err(Failure::OpenFailed(status)) => Err(classify(&status)),
            Err(Failure::Lost(reason)) => Err(Attempt::Ambiguous(reason)),
        }
    }
}

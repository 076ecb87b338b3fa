//! One `Commands` stream per node: every get, put, delete, compare-and-swap and batch this client
//! sends to a node travels on it, so concurrent requests share gRPC messages instead of each paying
//! for a call of its own.
//!
//! A driver task per node owns the stream. A request waits in its queue only while the stream
//! cannot take another message; everything that queued meanwhile leaves in the next message. A lone
//! request therefore goes at once, alone, and under load each message carries many.
//!
//! What a failure means for each request follows the rules in `classify`:
//! - a request still in the queue never left: not applied (`Unreachable`), and retried;
//! - a request handed to the stream, when the stream breaks or the node ends it: maybe applied
//!   (`Ambiguous`), unless the connection never opened (then nothing left: `Unreachable`);
//! - the node's answer for one request: that request's gRPC status, classified as its unary call's
//!   would be.
//!
//! The driver opens a stream when a request arrives and there is none, and keeps it until it
//! breaks. It stops when the client is dropped.

use std::collections::{HashMap, VecDeque};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use tracing::debug;

use ringkv_proto::pb::{self, kv_command::Request, kv_reply::Reply};

use crate::classify::{Attempt, classify};
use crate::plan::AttemptTime;
use crate::pool::kv;

/// Caps on one message, well under the gRPC message limit (one request can be a whole batch).
const MAX_COMMANDS_PER_MESSAGE: usize = 1024;
const MAX_COMMAND_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

type Answer = Result<Reply, Attempt>;

struct Call {
    request: Request,
    budget_ms: u64,
    answer: oneshot::Sender<Answer>,
}

/// The handle on a node's command stream; cheap to clone.
#[derive(Clone)]
pub(crate) struct CommandStream {
    calls: mpsc::UnboundedSender<Call>,
}

impl CommandStream {
    /// Starts the driver for the node at `addr` (it connects on the first request). Must be called
    /// inside a tokio runtime.
    pub(crate) fn new(channel: Channel, addr: String) -> CommandStream {
        let (calls, queue) = mpsc::unbounded_channel();
        tokio::spawn(drive(channel, addr, queue));
        CommandStream { calls }
    }

    /// Sends `request` with the node's share of `time`, and waits for its answer (the caller
    /// bounds the wait). An error answer is classified as its unary call's would be.
    pub(crate) async fn call(&self, request: Request, time: AttemptTime) -> Answer {
        let (answer, answered) = oneshot::channel();
        let call = Call {
            request,
            budget_ms: (time.budget.as_millis() as u64).max(1),
            answer,
        };
        if self.calls.send(call).is_err() {
            return Err(Attempt::Unreachable("the client is shutting down".into()));
        }
        match answered.await {
            Ok(Ok(Reply::Error(error))) => Err(classify(&status_of(error))),
            Ok(answer) => answer,
            Err(_) => Err(Attempt::Ambiguous(
                "the command stream stopped before answering".into(),
            )),
        }
    }
}

/// The status a unary call would have answered with.
fn status_of(error: pb::KvError) -> Status {
    Status::with_details(Code::from_i32(error.code), error.message, error.details)
}

/// Runs streams to the node one after another, each for as long as it lasts, while requests come.
async fn drive(channel: Channel, addr: String, mut calls: mpsc::UnboundedReceiver<Call>) {
    let mut queue = VecDeque::new();
    loop {
        if queue.is_empty() {
            match calls.recv().await {
                Some(call) => queue.push_back(call),
                None => return,
            }
        }
        if !run_stream(&channel, &addr, &mut calls, &mut queue).await {
            return;
        }
    }
}

/// One stream: sends queued requests and delivers answers until the stream ends or breaks (then
/// every request it carried unanswered gets its failure) or the client is dropped with nothing
/// left to answer. Returns whether the client is still there.
async fn run_stream(
    channel: &Channel,
    addr: &str,
    calls: &mut mpsc::UnboundedReceiver<Call>,
    queue: &mut VecDeque<Call>,
) -> bool {
    let (out, out_rx) = mpsc::channel::<pb::KvCommands>(1);
    let mut client = kv(channel.clone());
    let mut opening = Box::pin(async move { client.commands(ReceiverStream::new(out_rx)).await });
    let mut replies: Option<Streaming<pb::KvReplies>> = None;
    let mut sent: HashMap<u64, oneshot::Sender<Answer>> = HashMap::new();
    let mut next_id = 0u64;
    let mut client_open = true;
    loop {
        if !client_open && queue.is_empty() && sent.is_empty() {
            return false;
        }
        tokio::select! {
            opened = &mut opening, if replies.is_none() => match opened {
                Ok(response) => replies = Some(response.into_inner()),
                Err(status) => {
                    // The node refused the stream, or the connection failed: classified as a
                    // unary call's status would be (a connection never opened sent nothing).
                    let attempt = classify(&status);
                    debug!(%addr, %status, "could not open the Kv command stream");
                    fail_sent(&mut sent, attempt);
                    fail_queued(queue, addr, &status);
                    return client_open;
                }
            },
            message = next_replies(&mut replies) => match message {
                Ok(Some(message)) => {
                    for reply in message.replies {
                        let answer = match reply.reply {
                            Some(reply) => Ok(reply),
                            None => Err(Attempt::Ambiguous(format!(
                                "{addr} answered request {} with an empty reply", reply.id
                            ))),
                        };
                        if let Some(caller) = sent.remove(&reply.id) {
                            // The caller may have stopped waiting (its deadline passed).
                            let _ = caller.send(answer);
                        }
                    }
                }
                Ok(None) => {
                    fail_sent(&mut sent, Attempt::Ambiguous(format!(
                        "{addr} ended the command stream (the node is stopping) before answering"
                    )));
                    return client_open;
                }
                Err(status) => {
                    debug!(%addr, %status, "Kv command stream broke");
                    fail_sent(&mut sent, Attempt::Ambiguous(format!(
                        "the command stream to {addr} broke: {status}"
                    )));
                    return client_open;
                }
            },
            call = calls.recv(), if client_open => match call {
                Some(call) => {
                    queue.push_back(call);
                    while let Ok(call) = calls.try_recv() {
                        queue.push_back(call);
                    }
                }
                None => client_open = false,
            },
            permit = out.reserve(), if !queue.is_empty() => match permit {
                Ok(permit) => {
                    let message = take_message(queue, &mut sent, &mut next_id);
                    if !message.commands.is_empty() {
                        permit.send(message);
                    }
                }
                // The request side is gone, so the stream is over; its end arrives on the
                // reply side. Until then nothing more can be sent.
                Err(_) => {
                    fail_sent(&mut sent, Attempt::Ambiguous(format!(
                        "the command stream to {addr} closed before answering"
                    )));
                    fail_queued(queue, addr, &Status::unavailable("the command stream closed"));
                    return client_open;
                }
            },
        }
    }
}

/// The next message from the stream, once it is open.
async fn next_replies(
    replies: &mut Option<Streaming<pb::KvReplies>>,
) -> Result<Option<pb::KvReplies>, Status> {
    match replies {
        Some(replies) => replies.message().await,
        None => std::future::pending().await,
    }
}

/// Moves as many queued requests as fit into one message, skipping those whose caller no longer
/// waits (they are never sent).
fn take_message(
    queue: &mut VecDeque<Call>,
    sent: &mut HashMap<u64, oneshot::Sender<Answer>>,
    next_id: &mut u64,
) -> pb::KvCommands {
    let mut commands = Vec::new();
    let mut bytes = 0;
    while let Some(call) = queue.front() {
        if call.answer.is_closed() {
            queue.pop_front();
            continue;
        }
        // The request plus the id, budget and field headers around it.
        let size = call.request.encoded_len() + 32;
        if !commands.is_empty()
            && (commands.len() >= MAX_COMMANDS_PER_MESSAGE || bytes + size > MAX_COMMAND_MESSAGE_BYTES)
        {
            break;
        }
        let call = queue.pop_front().expect("front exists");
        bytes += size;
        sent.insert(*next_id, call.answer);
        commands.push(pb::KvCommand {
            id: *next_id,
            budget_ms: call.budget_ms,
            request: Some(call.request),
        });
        *next_id += 1;
    }
    pb::KvCommands { commands }
}

/// Answers every request handed to the stream with `attempt`.
fn fail_sent(sent: &mut HashMap<u64, oneshot::Sender<Answer>>, attempt: Attempt) {
    for (_, caller) in sent.drain() {
        let _ = caller.send(Err(attempt.clone()));
    }
}

/// Answers every queued request: it never left.
fn fail_queued(queue: &mut VecDeque<Call>, addr: &str, status: &Status) {
    for call in queue.drain(..) {
        let _ = call.answer.send(Err(Attempt::Unreachable(format!(
            "not sent: the command stream to {addr} failed ({})",
            status.message()
        ))));
    }
}

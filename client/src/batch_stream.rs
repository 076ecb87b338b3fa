//! Many requests on one long-lived gRPC stream, batched per message: the client's Kv command
//! stream to each node and the Raft stream between each pair of nodes both use it.
//!
//! **Sending side** (`Sender`). A driver task owns the stream. A request waits in its queue only
//! while the stream cannot take another message; everything that queued meanwhile leaves in the
//! next message. A lone request therefore goes at once, alone, and under load each message carries
//! many, so the per-call cost of gRPC (an HTTP/2 stream, headers, a task per call on both ends) is
//! paid per message instead of per request. The driver opens a stream when a request arrives and
//! there is none, keeps it until it breaks, and stops when every `Sender` is dropped.
//!
//! What a failure means for each request (`Failure`):
//! - still queued: it never left (`NotSent`);
//! - handed to a stream that could not be opened: what the status says (a connection that was never
//!   opened sent nothing; the caller decides from the status, as for a unary call);
//! - handed to a stream that then broke or was ended by the peer: it may have been handled (`Lost`).
//!
//! **Receiving side** (`serve`). Each request is handled concurrently; its reply joins whichever
//! message leaves next, so replies that finish while the stream is busy travel together. It stops
//! reading past `MAX_IN_FLIGHT` unanswered requests (HTTP/2 flow control then holds the sender),
//! and ends the stream at once when told to stop.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tracing::debug;

/// Caps on one message, well under the gRPC message limits (one request can be a whole batch).
const MAX_PER_MESSAGE: usize = 1024;
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Requests one stream may have unanswered at the receiver before it stops reading.
pub const MAX_IN_FLIGHT: usize = 4096;

/// How one kind of stream packs requests and replies into messages.
pub trait Protocol: Send + Sync + 'static {
    type Request: Send + 'static;
    type Reply: Send + 'static;
    /// A message of requests, as sent.
    type Requests: Send + 'static;
    /// A message of replies, as received.
    type Replies: Send + 'static;

    /// About how many bytes `request` adds to a message.
    fn size(request: &Self::Request) -> usize;
    fn pack(requests: Vec<(u64, Self::Request)>) -> Self::Requests;
    /// Each reply with the id of its request; `None` for a reply the peer left empty.
    fn unpack(replies: Self::Replies) -> Vec<(u64, Option<Self::Reply>)>;
    /// Opens a stream sending `requests`.
    fn open(
        &self,
        requests: ReceiverStream<Self::Requests>,
    ) -> BoxFuture<'static, Result<Streaming<Self::Replies>, Status>>;
}

/// Why a request got no reply.
#[derive(Debug)]
pub enum Failure {
    /// It never left this process.
    NotSent(String),
    /// The stream it was handed to could not be opened: the status says whether anything left.
    OpenFailed(Status),
    /// The stream broke or ended after it was handed over: the peer may have handled it.
    Lost(String),
}

type Answer<P> = Result<<P as Protocol>::Reply, Failure>;

struct Call<P: Protocol> {
    request: P::Request,
    answer: oneshot::Sender<Answer<P>>,
}

/// The handle on one peer's stream; cheap to clone.
pub struct Sender<P: Protocol> {
    calls: mpsc::UnboundedSender<Call<P>>,
}

impl<P: Protocol> Clone for Sender<P> {
    fn clone(&self) -> Self {
        Sender {
            calls: self.calls.clone(),
        }
    }
}

impl<P: Protocol> Sender<P> {
    /// Starts the driver for the peer at `addr` (it connects on the first request). Must be
    /// called inside a tokio runtime.
    pub fn new(protocol: P, addr: String) -> Sender<P> {
        let (calls, queue) = mpsc::unbounded_channel();
        tokio::spawn(drive(protocol, addr, queue));
        Sender { calls }
    }

    /// Sends `request` and waits for its reply. The caller bounds the wait; a request whose caller
    /// stopped waiting before it left is not sent.
    pub async fn call(&self, request: P::Request) -> Answer<P> {
        let (answer, answered) = oneshot::channel();
        if self.calls.send(Call { request, answer }).is_err() {
            return Err(Failure::NotSent("the stream's driver has stopped".into()));
        }
        answered.await.unwrap_or_else(|_| {
            Err(Failure::Lost(
                "the stream's driver stopped before the reply".into(),
            ))
        })
    }
}

/// Runs streams to the peer one after another, each for as long as it lasts, while requests come.
async fn drive<P: Protocol>(protocol: P, addr: String, mut calls: mpsc::UnboundedReceiver<Call<P>>) {
    let mut queue = VecDeque::new();
    loop {
        if queue.is_empty() {
            match calls.recv().await {
                Some(call) => queue.push_back(call),
                None => return,
            }
        }
        if !run_stream(&protocol, &addr, &mut calls, &mut queue).await {
            return;
        }
    }
}

/// Requests handed to the stream, by id, waiting for their replies.
struct Waiting<P: Protocol> {
    answers: HashMap<u64, oneshot::Sender<Answer<P>>>,
    next_id: u64,
    /// When `answers` grows past this, the callers that stopped waiting are forgotten.
    sweep_at: usize,
}

impl<P: Protocol> Waiting<P> {
    fn fail_all(&mut self, failure: impl Fn() -> Failure) {
        for (_, caller) in self.answers.drain() {
            let _ = caller.send(Err(failure()));
        }
    }
}

/// One stream: sends queued requests and delivers replies until the stream ends or breaks (then
/// every request it carried unanswered fails) or every `Sender` is gone with nothing left to
/// answer. Returns whether a `Sender` remains.
async fn run_stream<P: Protocol>(
    protocol: &P,
    addr: &str,
    calls: &mut mpsc::UnboundedReceiver<Call<P>>,
    queue: &mut VecDeque<Call<P>>,
) -> bool {
    let (out, out_rx) = mpsc::channel::<P::Requests>(1);
    let mut opening = protocol.open(ReceiverStream::new(out_rx));
    let mut replies: Option<Streaming<P::Replies>> = None;
    let mut waiting = Waiting::<P> {
        answers: HashMap::new(),
        next_id: 0,
        sweep_at: 1024,
    };
    let mut senders_alive = true;
    loop {
        if !senders_alive && queue.is_empty() && waiting.answers.is_empty() {
            return false;
        }
        tokio::select! {
            opened = &mut opening, if replies.is_none() => match opened {
                Ok(stream) => replies = Some(stream),
                Err(status) => {
                    debug!(%addr, %status, "could not open the stream");
                    waiting.fail_all(|| Failure::OpenFailed(status.clone()));
                    fail_queued(queue, &format!("the stream to {addr} could not be opened: {}", status.message()));
                    return senders_alive;
                }
            },
            message = next_message(&mut replies) => match message {
                Ok(Some(message)) => {
                    for (id, reply) in P::unpack(message) {
                        let Some(caller) = waiting.answers.remove(&id) else { continue };
                        let answer = reply.ok_or_else(|| Failure::Lost(format!("{addr} sent an empty reply")));
                        // The caller may have stopped waiting.
                        let _ = caller.send(answer);
                    }
                }
                Ok(None) => {
                    waiting.fail_all(|| Failure::Lost(format!("{addr} ended the stream before replying")));
                    return senders_alive;
                }
                Err(status) => {
                    debug!(%addr, %status, "stream broke");
                    waiting.fail_all(|| Failure::Lost(format!("the stream to {addr} broke: {status}")));
                    return senders_alive;
                }
            },
            call = calls.recv(), if senders_alive => match call {
                Some(call) => {
                    queue.push_back(call);
                    while let Ok(call) = calls.try_recv() {
                        queue.push_back(call);
                    }
                }
                None => senders_alive = false,
            },
            permit = out.reserve(), if !queue.is_empty() => match permit {
                Ok(permit) => {
                    if !waiting.answers.is_empty() {
                        // Requests are in flight, so more are likely coming from the tasks that
                        // run now: let them queue first, and the message carries them too. A
                        // lone request (nothing in flight) goes at once.
                        tokio::task::yield_now().await;
                        while let Ok(call) = calls.try_recv() {
                            queue.push_back(call);
                        }
                    }
                    let requests = take_message::<P>(queue, &mut waiting);
                    if !requests.is_empty() {
                        permit.send(P::pack(requests));
                    }
                }
                // The sending half is gone, so the stream is over.
                Err(_) => {
                    waiting.fail_all(|| Failure::Lost(format!("the stream to {addr} closed before replying")));
                    fail_queued(queue, &format!("the stream to {addr} closed"));
                    return senders_alive;
                }
            },
        }
    }
}

/// The next message from the stream, once it is open.
async fn next_message<M>(replies: &mut Option<Streaming<M>>) -> Result<Option<M>, Status> {
    match replies {
        Some(replies) => replies.message().await,
        None => std::future::pending().await,
    }
}

/// Moves as many queued requests as fit into one message, skipping those whose caller no longer
/// waits (they are never sent).
fn take_message<P: Protocol>(
    queue: &mut VecDeque<Call<P>>,
    waiting: &mut Waiting<P>,
) -> Vec<(u64, P::Request)> {
    let mut requests = Vec::new();
    let mut bytes = 0;
    while let Some(call) = queue.front() {
        if call.answer.is_closed() {
            queue.pop_front();
            continue;
        }
        let size = P::size(&call.request);
        if !requests.is_empty() && (requests.len() >= MAX_PER_MESSAGE || bytes + size > MAX_MESSAGE_BYTES) {
            break;
        }
        let call = queue.pop_front().expect("front exists");
        bytes += size;
        let id = waiting.next_id;
        waiting.next_id += 1;
        waiting.answers.insert(id, call.answer);
        requests.push((id, call.request));
    }
    // Callers that gave up on a stalled peer would otherwise stay until the stream breaks.
    if waiting.answers.len() > waiting.sweep_at {
        waiting.answers.retain(|_, caller| !caller.is_closed());
        waiting.sweep_at = (waiting.answers.len() * 2).max(1024);
    }
    requests
}

fn fail_queued<P: Protocol>(queue: &mut VecDeque<Call<P>>, reason: &str) {
    for call in queue.drain(..) {
        let _ = call
            .answer
            .send(Err(Failure::NotSent(format!("not sent: {reason}"))));
    }
}

/// Serves one stream: reads messages of requests from `inbound` until the peer closes its side,
/// the stream breaks or `stopping` becomes true; runs `handle` on each request concurrently; and
/// returns the stream of replies, `pack`ed as many per message as are ready. `on_message` sees the
/// number of requests in each message read.
pub fn serve<In, Item, Reply, Out, Handle, Fut>(
    mut inbound: Streaming<In>,
    unpack: fn(In) -> Vec<Item>,
    handle: Handle,
    size: fn(&Reply) -> usize,
    pack: fn(Vec<Reply>) -> Out,
    on_message: impl Fn(usize) + Send + 'static,
    stopping: watch::Receiver<bool>,
) -> ReceiverStream<Result<Out, Status>>
where
    In: Send + 'static,
    Item: Send + 'static,
    Reply: Send + 'static,
    Out: Send + 'static,
    Handle: Fn(Item) -> Fut + Send + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let (replies_tx, mut replies) = mpsc::unbounded_channel::<Reply>();
    let (out, out_rx) = mpsc::channel(1);
    let mut reader_stopping = stopping.clone();
    tokio::spawn(async move {
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        loop {
            let message = tokio::select! {
                _ = reader_stopping.wait_for(|stopping| *stopping) => return,
                message = inbound.message() => message,
            };
            let items = match message {
                Ok(Some(message)) => unpack(message),
                Ok(None) => return,
                Err(status) => {
                    debug!(%status, "request stream broke");
                    return;
                }
            };
            on_message(items.len());
            for item in items {
                let permit = tokio::select! {
                    _ = reader_stopping.wait_for(|stopping| *stopping) => return,
                    permit = in_flight.clone().acquire_owned() => permit.expect("semaphore never closed"),
                };
                let (reply, replies_tx) = (handle(item), replies_tx.clone());
                tokio::spawn(async move {
                    // Fails only when the reply stream is gone (stopping, or the peer left).
                    let _ = replies_tx.send(reply.await);
                    drop(permit);
                });
            }
        }
    });
    let mut stopping = stopping;
    tokio::spawn(async move {
        loop {
            let first = tokio::select! {
                _ = stopping.wait_for(|stopping| *stopping) => return,
                reply = replies.recv() => match reply {
                    Some(reply) => reply,
                    // The reader is done and every request read has been answered.
                    None => return,
                },
            };
            let mut bytes = size(&first);
            let mut batch = vec![first];
            while batch.len() < MAX_PER_MESSAGE && bytes < MAX_MESSAGE_BYTES {
                match replies.try_recv() {
                    Ok(reply) => {
                        bytes += size(&reply);
                        batch.push(reply);
                    }
                    Err(_) => break,
                }
            }
            let sent = tokio::select! {
                _ = stopping.wait_for(|stopping| *stopping) => return,
                sent = out.send(Ok(pack(batch))) => sent,
            };
            if sent.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(out_rx)
}

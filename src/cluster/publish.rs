//! The leader's side: sequenced events to JetStream, and the slot confirmed
//! only up to what JetStream has acknowledged.
//!
//! [`JetStreamFanout`] is what the leader's pipeline sees as its fan-out. It
//! never waits: it queues, in order, frames, control events and checkpoints
//! (the pipeline's handed-on LSN). One task publishes them in that order and
//! moves [`Progress`] to a checkpoint only once every message before it is
//! acknowledged. Publishes are pipelined, each stating which message must be
//! the stream's last before it (JetStream's expected-last-message-id), so
//! one lost on the way is never overtaken: those after it are refused too.
//! A failed publish is retried, with everything after it, in order, each
//! waiting for its acknowledgement; message ids make the retries (and a new
//! leader's replay of the same WAL) harmless.
//!
//! Nothing is published for a leadership term that is not vouched for by
//! its [`Lease`]: while the lease is in doubt the publisher waits, and once
//! the term is over it drops what the term left, checkpoints included. The
//! slot was never confirmed past those events, so the next leader (this
//! replica again, or another) replays them.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{Publish, PublishAckFuture};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::format::{self, Outgoing, StreamEvent};
use super::leader::{Lease, Standing};
use super::Names;
use crate::fanout::{Backlog, Fanout};
use crate::lsn::Lsn;
use crate::protocol::EventFrame;
use crate::replication::{Checkpoint, Progress};

/// What the pipeline handed over, in order: events to publish, and
/// checkpoints that move once everything before them is acknowledged.
enum Out {
    Event(StreamEvent),
    Handed(Lsn),
    Reset,
    /// What follows belongs to this leadership term.
    Term(u64),
}

/// Queued items at most before the pipeline stops taking transactions (and
/// the replicator, behind it, stops reading the slot).
pub const BACKLOG: usize = 50_000;

/// The leader pipeline's fan-out: everything goes to JetStream.
#[derive(Clone)]
pub struct JetStreamFanout {
    tx: mpsc::UnboundedSender<Out>,
    backlog: Arc<Backlog>,
}

impl JetStreamFanout {
    /// The fan-out and the task that publishes for it.
    pub fn start(
        js: async_nats::jetstream::Context,
        names: Names,
        replica: Uuid,
        lease: Arc<Lease>,
        progress: Progress,
        stop: CancellationToken,
    ) -> (JetStreamFanout, Arc<Backlog>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let backlog = Arc::new(Backlog::new(BACKLOG));
        let origin = Origin { names, replica: replica.to_string() };
        let task = tokio::spawn(publisher(js, origin, lease, rx, progress, backlog.clone(), stop));
        (JetStreamFanout { tx, backlog: backlog.clone() }, backlog, task)
    }

    fn send(&self, out: Out) {
        self.backlog.add();
        if self.tx.send(out).is_err() {
            self.backlog.done();
        }
    }
}

impl Fanout for JetStreamFanout {
    fn wants(&self, _chat_id: &Uuid) -> bool {
        true // subscribers are on other replicas too
    }
    fn publish(&self, frame: Arc<EventFrame>) {
        self.send(Out::Event(StreamEvent::Frame(frame)));
    }
    fn revoke(&self, chat_id: Uuid, user_id: Uuid) {
        self.send(Out::Event(StreamEvent::Revoke { chat_id, user_id }));
    }
    fn member(&self, chat_id: Uuid, user_id: Uuid, member: bool) {
        self.send(Out::Event(StreamEvent::Member { chat_id, user_id, member }));
    }
    fn resync_all(&self) {
        self.send(Out::Event(StreamEvent::Resync));
    }
}

impl Checkpoint for JetStreamFanout {
    fn handed_on(&self, lsn: Lsn) {
        self.send(Out::Handed(lsn));
    }
    fn reset(&self) {
        self.send(Out::Reset);
    }
    fn term(&self, term: u64) {
        self.send(Out::Term(term));
    }
}

/// Where this replica's messages go, and who it says published them.
struct Origin {
    names: Names,
    replica: String,
}

type AckFuture = Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// Each with the term it belongs to.
enum Pending {
    Sent(Outgoing, AckFuture, u64),
    Handed(Lsn, u64),
    Reset(u64),
}

/// Hands `m` to NATS if `term` leads; `None` once the term is over. The
/// time stamped on it is taken before the last look at the lease, so no copy
/// says it was sent after the lease ran out.
///
/// `after`: the id of the message published just before it, not yet known
/// to be stored. JetStream then stores `m` only if that one is the stream's
/// last, so a message lost on the way (a connection cut mid-stream) can
/// never be overtaken by the ones after it: they are refused too, and
/// [`resend`] publishes them all again, in order.
async fn send(
    js: &async_nats::jetstream::Context,
    m: &Outgoing,
    after: Option<&str>,
    lease: &Lease,
    term: u64,
    stop: &CancellationToken,
) -> Option<Result<AckFuture, String>> {
    let sent_at = loop {
        if !lease.leading(term, stop).await {
            return None;
        }
        let now = std::time::SystemTime::now();
        if lease.standing(term) == Standing::Leading {
            break now;
        }
    };
    Some(send_now(js, m, after, sent_at).await)
}

async fn send_now(
    js: &async_nats::jetstream::Context,
    m: &Outgoing,
    after: Option<&str>,
    sent_at: std::time::SystemTime,
) -> Result<AckFuture, String> {
    let headers = m.headers_sent_at(sent_at);
    let mut publish = Publish::build().payload(m.payload.clone()).headers(headers).message_id(&m.id);
    if let Some(previous) = after {
        publish = publish.expected_last_message_id(previous);
    }
    let ack: PublishAckFuture = js.send_publish(m.subject.clone(), publish).await.map_err(|e| e.to_string())?;
    Ok(Box::pin(async move { ack.into_future().await.map(|_| ()).map_err(|e| e.to_string()) }))
}

/// Publishes until `stop`, in order; checkpoints move once everything before
/// them is acknowledged.
async fn publisher(
    js: async_nats::jetstream::Context,
    origin: Origin,
    lease: Arc<Lease>,
    mut rx: mpsc::UnboundedReceiver<Out>,
    progress: Progress,
    backlog: Arc<Backlog>,
    stop: CancellationToken,
) {
    const IN_FLIGHT: usize = 1024;
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut in_flight = 0usize;
    // The term of what comes out of `rx` now, and whether it was found over.
    let (mut term, mut over) = (0u64, false);
    // The id of the last message handed to NATS in this term.
    let mut last_sent: Option<String> = None;
    loop {
        // Checkpoints whose messages are all acknowledged (a term that is
        // over moves nothing: it may have dropped messages before them).
        while matches!(pending.front(), Some(Pending::Handed(..) | Pending::Reset(_))) {
            match pending.pop_front() {
                Some(Pending::Handed(lsn, t)) if lease.standing(t) != Standing::Over => progress.handed_on(lsn),
                Some(Pending::Reset(t)) if lease.standing(t) != Standing::Over => progress.reset(),
                _ => {}
            }
        }
        let front_ack = async {
            match pending.front_mut() {
                Some(Pending::Sent(_, ack, _)) => ack.await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = front_ack => match r {
                Ok(()) => {
                    pending.pop_front();
                    in_flight -= 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "JetStream did not acknowledge; publishing again from there");
                    resend(&js, &mut pending, &lease, &stop).await;
                }
            },
            out = rx.recv(), if in_flight < IN_FLIGHT => {
                let Some(out) = out else { return };
                backlog.done();
                match out {
                    // A new term's first message follows whatever is stored.
                    Out::Term(t) => (term, over, last_sent) = (t, false, None),
                    Out::Handed(lsn) => pending.push_back(Pending::Handed(lsn, term)),
                    Out::Reset => pending.push_back(Pending::Reset(term)),
                    Out::Event(_) if over => {}
                    Out::Event(event) => {
                        let msg = format::encode(&origin.names, &origin.replica, event);
                        // Only while its predecessor is unacknowledged does
                        // the order need the stream's word.
                        let after = last_sent.as_deref().filter(|_| in_flight > 0);
                        let ack = match send(&js, &msg, after, &lease, term, &stop).await {
                            Some(Ok(ack)) => ack,
                            Some(Err(e)) => Box::pin(async move { Err(e) }),
                            None if stop.is_cancelled() => return,
                            None => {
                                over = true;
                                tracing::warn!(term, "leadership term over; dropping what it left unpublished (the next leader replays it)");
                                continue;
                            }
                        };
                        last_sent = Some(msg.id.clone());
                        pending.push_back(Pending::Sent(msg, ack, term));
                        in_flight += 1;
                    }
                }
            }
        }
    }
}

/// Publishes every unacknowledged message again, in order, waiting for each
/// acknowledgement, until all got one (or `stop`). Messages of a term that is
/// over are given up instead.
async fn resend(
    js: &async_nats::jetstream::Context,
    pending: &mut VecDeque<Pending>,
    lease: &Lease,
    stop: &CancellationToken,
) {
    let mut wait = Duration::from_millis(100);
    'again: loop {
        for p in pending.iter_mut() {
            if let Pending::Sent(msg, ack, term) = p {
                // Everything before it is acknowledged (stored): nothing to
                // expect of the stream's last message.
                let result = match send(js, msg, None, lease, *term, stop).await {
                    Some(Ok(fresh)) => fresh.await,
                    Some(Err(e)) => Err(e),
                    // Stopping: leave it unacknowledged (nothing after it may
                    // be checkpointed).
                    None if stop.is_cancelled() => return,
                    // Given up: its term is over.
                    None => Ok(()),
                };
                match result {
                    Ok(()) => *ack = Box::pin(async { Ok(()) }),
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "JetStream publish failed");
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = stop.cancelled() => return,
                        }
                        wait = (wait * 2).min(Duration::from_secs(2));
                        continue 'again;
                    }
                }
            }
        }
        return;
    }
}

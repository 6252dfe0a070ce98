//! The write side of one WebSocket: frames waiting for the socket.
//!
//! Nothing ever awaits a socket write. Frames go into the outbox; the
//! publisher that put a live frame there writes what the socket takes at
//! once (see `link`), and [`Outbox::poll_write`] is one branch of the
//! session's `select!` for the rest,
//! so shutdown, token expiry, revocations and the ping check are handled while
//! a write is pending. When several frames wait, they are handed to the
//! WebSocket together and flushed once (one `write` for many frames). The
//! outbox knows how many bytes wait and when the socket last took any, which
//! is what the slow-consumer rule (4008) is made of.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use chrono::{DateTime, Utc};
use futures_util::stream::SplitSink;
use futures_util::Sink;

use crate::metrics as m;

/// The connection is over; stop processing.
#[derive(Debug)]
pub(super) struct Closed;

struct Item {
    msg: Message,
    len: usize,
    /// Event frames: their commit time (None for rows read from the table).
    event: Option<Option<DateTime<Utc>>>,
}

pub(super) struct Outbox {
    sink: SplitSink<WebSocket, Message>,
    queue: VecDeque<Item>,
    /// Bytes in `queue`.
    bytes: usize,
    /// Something was handed to the WebSocket and not flushed yet.
    unflushed: bool,
    /// Commit times of event frames handed over since the last flush.
    events: Vec<Option<DateTime<Utc>>>,
    /// When the socket last took something (or the outbox last became busy).
    last_progress: Instant,
}

impl Outbox {
    pub(super) fn new(sink: SplitSink<WebSocket, Message>) -> Outbox {
        Outbox {
            sink,
            queue: VecDeque::new(),
            bytes: 0,
            unflushed: false,
            events: Vec::new(),
            last_progress: Instant::now(),
        }
    }

    /// Bytes waiting for the socket.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes waiting beside the biggest waiting frame: a single frame may be
    /// bigger than any bound on unsent data and still be delivered, but
    /// nothing may pile up behind it. O(frames waiting): call it only once
    /// [`Outbox::bytes`] is past a bound.
    pub(super) fn bytes_beside_biggest(&self) -> usize {
        self.bytes - self.queue.iter().map(|i| i.len).max().unwrap_or(0)
    }

    /// Frames are waiting, or a flush is.
    pub(super) fn busy(&self) -> bool {
        !self.queue.is_empty() || self.unflushed
    }

    /// When the socket last made progress (meaningful while busy).
    pub(super) fn last_progress(&self) -> Instant {
        self.last_progress
    }

    fn push(&mut self, item: Item) {
        if !self.busy() {
            // The stall clock starts when there is something to write.
            self.last_progress = Instant::now();
        }
        self.bytes += item.len;
        self.queue.push_back(item);
    }

    /// An answer or notice.
    pub(super) fn text(&mut self, text: Utf8Bytes) {
        let len = text.len();
        self.push(Item { msg: Message::Text(text), len, event: None });
    }

    /// An event frame (counted in `messages_sent` and the latency histogram
    /// once flushed).
    pub(super) fn event(&mut self, text: Utf8Bytes, commit_time: Option<DateTime<Utc>>) {
        let len = text.len();
        self.push(Item { msg: Message::Text(text), len, event: Some(commit_time) });
    }

    pub(super) fn ping(&mut self) {
        self.push(Item { msg: Message::Ping(Default::default()), len: 2, event: None });
    }

    /// Hands waiting frames to the WebSocket while it takes them, then
    /// flushes. Ready when something moved (or on error); Pending when the
    /// socket takes nothing now (the task is woken when it can).
    pub(super) fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Closed>> {
        let mut progressed = false;
        while !self.queue.is_empty() {
            match Pin::new(&mut self.sink).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Err(Closed)),
                Poll::Pending => break,
            }
            let Some(item) = self.queue.pop_front() else { break };
            self.bytes -= item.len;
            if let Some(t) = item.event {
                self.events.push(t);
            }
            if Pin::new(&mut self.sink).start_send(item.msg).is_err() {
                return Poll::Ready(Err(Closed));
            }
            self.unflushed = true;
            progressed = true;
        }
        if self.unflushed {
            match Pin::new(&mut self.sink).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.unflushed = false;
                    progressed = true;
                    self.flushed();
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Err(Closed)),
                Poll::Pending => {}
            }
        }
        if progressed {
            self.last_progress = Instant::now();
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn flushed(&mut self) {
        if self.events.is_empty() {
            return;
        }
        m::messages_sent(self.events.len() as u64);
        let now = Utc::now();
        for t in self.events.drain(..).flatten() {
            m::commit_to_send((now - t).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
        }
    }

    /// Writes everything waiting: Ready once nothing waits (or on error).
    pub(super) fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Closed>> {
        loop {
            match self.poll_write(cx) {
                Poll::Ready(Ok(())) if self.busy() => continue,
                other => return other,
            }
        }
    }

    /// Queues the close frame with `code`: after what is waiting when
    /// `flush_first`, else instead of it (a stalled peer would never take
    /// it anyway).
    pub(super) fn close_frame(&mut self, code: u16, reason: &str, flush_first: bool) {
        if !flush_first {
            self.queue.clear();
            self.bytes = 0;
        }
        self.push(Item { msg: Message::Close(Some(CloseFrame { code, reason: reason.into() })), len: 0, event: None });
    }

    /// Closes the socket (after [`Outbox::poll_finish`]).
    pub(super) fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.sink).poll_close(cx).map(|_| ())
    }
}

//! The part of a connection that live frames reach: its queue, what each
//! subscription still owes ([`Catchup`]) and its [`Outbox`], under one lock,
//! shared by the session and the hub.
//!
//! A live frame is taken on the publisher's own thread whenever nothing is
//! ahead of it: the session is parked (not in the middle of a request,
//! table work or frames it took), the queue is empty, the outbox has room
//! and the chat's subscription is started. Then the frame costs a lock, the catch-up
//! verdict and its share of a socket write, not a hand-off to the session's
//! task (a channel push, a wake-up, a `select!`). The hub's publisher holds
//! what it takes until it has nothing more at hand ([`crate::hub::Hub::flush`]),
//! so frames that arrive together (a publisher that is behind) leave in one
//! write per socket, and a lone frame leaves at once. Anything else goes through the
//! queue and the session, as before: a subscription that is still being
//! checked, frames behind others, a socket that is not taking them. Inbox
//! frames take the same path ([`Direct::offer_side`]) while the socket
//! keeps up and no older one waits beside the queue (where they merge per
//! chat); they join live frames the publisher holds, so a message and the
//! chat frame it causes leave in one write. Because
//! the publisher decides under the same lock the session holds while it
//! takes frames from the queue, writes table rows or answers, every frame is
//! judged and written in the order it would have been had it gone through
//! the queue.
//!
//! The publisher never waits for the socket: what a write leaves over stays
//! in the outbox, and the session is woken to write it (and to watch it for
//! the slow-consumer rule). The session, in turn, never calls the hub while
//! it holds this lock (the hub holds its own locks while it offers frames).

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

use super::outbox::Outbox;
use super::session::HIGH_WATER;
use crate::catchup::{Catchup, Verdict};
use crate::delivery::Delivery;
use crate::hub::{Direct, Offered};
use crate::metrics as m;
use crate::protocol::{EventFrame, FrameKind};

/// What the lock guards.
pub(super) struct Shared {
    /// Frames the hub queued for the session.
    pub rx: mpsc::Receiver<Arc<EventFrame>>,
    /// What each subscription still owes; pongs wait here for their barrier.
    pub owed: Catchup<Option<Value>>,
    pub out: Outbox,
    /// Table work is failing for a passing reason: when it started failing
    /// and the next pause. Meanwhile live messages of chats that owe a read
    /// are held back (see [`Catchup::live`]).
    pub failing: Option<(Instant, Duration)>,
    /// The session is parked, waiting for something to do: only then may
    /// the publisher judge and write a frame itself. While the session is
    /// busy (a request, table work, frames taken from the queue), frames
    /// queue behind what it is doing, as they always did: a `sent` answer
    /// precedes the sender's own `message`, a table read's rows precede the
    /// live frames committed after it, a frame taken precedes the next.
    pub idle: bool,
    /// The session is ending: frames are dropped.
    closing: bool,
    /// Live frames wait in the outbox for the publisher's flush.
    held: Holding,
}

/// Whether the outbox holds live frames for the publisher's flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holding {
    No,
    /// Nothing else waits: the socket had taken everything before.
    Alone,
    /// Behind what the socket has not taken yet.
    Behind,
}

impl Shared {
    /// The publisher may write a frame itself: the session is parked,
    /// nothing waits in the queue ahead of the frame and the outbox has room.
    fn parked(&self) -> bool {
        self.idle && self.rx.is_empty() && self.out.bytes() < HIGH_WATER
    }
}

pub(super) struct Link {
    shared: Mutex<Shared>,
    /// Wakes the session (its `Conn::wake`) when a direct write left work.
    waker: Waker,
    notify: Arc<Notify>,
    user: Uuid,
    /// Messages written are marked delivered (`CHAT_RELAY_AUTO_DELIVERED`).
    delivery: Option<Delivery>,
}

struct NotifyWaker(Arc<Notify>);

impl Wake for NotifyWaker {
    fn wake(self: Arc<Self>) {
        self.0.notify_one();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.notify_one();
    }
}

impl Link {
    pub(super) fn new(
        rx: mpsc::Receiver<Arc<EventFrame>>,
        out: Outbox,
        notify: Arc<Notify>,
        user: Uuid,
        delivery: Option<Delivery>,
    ) -> Link {
        let shared =
            Shared { rx, owed: Catchup::default(), out, failing: None, idle: false, closing: false, held: Holding::No };
        let waker = Waker::from(Arc::new(NotifyWaker(notify.clone())));
        Link { shared: Mutex::new(shared), waker, notify, user, delivery }
    }

    /// The shared state. Never held across an await or a call into the hub.
    pub(super) fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A live frame, from the queue or offered directly: judged, and
    /// written to the outbox when it is due.
    pub(super) fn live(&self, s: &mut Shared, frame: &EventFrame) -> Verdict {
        let verdict = s.owed.live(frame, s.failing.is_some());
        if verdict == Verdict::Write {
            if frame.kind == FrameKind::Message {
                self.delivered(frame);
            }
            s.out.event(frame.text.clone(), frame.commit_time);
        }
        verdict
    }

    /// Marks a message written to this user delivered, when the relay does
    /// that (never for the user's own messages).
    pub(super) fn delivered(&self, frame: &EventFrame) {
        if let Some(d) = &self.delivery {
            if frame.subject != Some(self.user) {
                d.delivered(frame.chat_id, self.user, frame.seq);
            }
        }
    }

    /// From here on frames are dropped; what waits is written (or, unless
    /// `flush_first`, dropped) and the socket closed with `code`, within
    /// `limit`.
    pub(super) async fn close(&self, code: u16, reason: &str, flush_first: bool, limit: Duration) {
        {
            let mut s = self.lock();
            s.closing = true;
            s.out.close_frame(code, reason, flush_first);
        }
        let _ = tokio::time::timeout(limit, async {
            let _ = std::future::poll_fn(|cx| self.lock().out.poll_finish(cx)).await;
            std::future::poll_fn(|cx| self.lock().out.poll_close(cx)).await;
        })
        .await;
    }

    /// The connection is over without a close frame: frames are dropped.
    pub(super) fn abandon(&self) {
        self.lock().closing = true;
    }

    /// Writes what the outbox holds as far as the socket takes it now; true
    /// when something is left (or the socket failed): the session's to handle.
    fn write_now(&self, s: &mut Shared) -> bool {
        if !s.out.busy() {
            return false;
        }
        let mut cx = Context::from_waker(&self.waker);
        // Outside tokio's per-task budget: the publisher writes to many
        // sockets in one poll of its own task, and a spent budget would make
        // every write after the first hundred or so report Pending.
        let write = tokio::task::unconstrained(std::future::poll_fn(|cx| s.out.poll_write(cx)));
        match std::pin::pin!(write).poll(&mut cx) {
            Poll::Ready(Err(_)) => true,
            _ => s.out.busy(),
        }
    }
}

impl Direct for Link {
    fn offer(&self, frame: &Arc<EventFrame>, hold: bool, queue: &mut dyn FnMut()) -> Offered {
        let mut s = self.lock();
        if s.closing {
            return Offered::Taken;
        }
        if !s.parked() || !s.owed.is_subscribed(&frame.chat_id) {
            queue();
            return Offered::Queued;
        }
        let behind = s.out.busy();
        // A gap: the session reads the table.
        let gap = self.live(&mut s, frame) == Verdict::Gap;
        let mut offered = Offered::Taken;
        let mut wake = gap;
        if hold && s.out.busy() {
            if s.held == Holding::No {
                s.held = if behind { Holding::Behind } else { Holding::Alone };
                offered = Offered::Held;
            }
        } else {
            wake |= self.write_now(&mut s);
        }
        drop(s);
        if wake {
            self.notify.notify_one();
        }
        offered
    }

    fn offer_side(&self, text: &Utf8Bytes, waiting: &mut dyn FnMut() -> bool) -> Offered {
        let mut s = self.lock();
        if s.closing {
            return Offered::Taken;
        }
        // Only while the socket keeps up: frames that would wait for it
        // wait beside the queue instead, where they merge per chat. They
        // join live frames held for the publisher's flush (a message and
        // the chat frame it causes leave in one write).
        let keeping_up = match s.held {
            Holding::No => !s.out.busy(),
            Holding::Alone => true,
            Holding::Behind => false,
        };
        if !keeping_up || !s.parked() || waiting() {
            return Offered::Queued;
        }
        s.out.text(text.clone());
        m::inbox_frames(1);
        // Written by whoever holds the outbox: the caller once it has let
        // go of its locks, or the hub's publisher.
        if s.held == Holding::No {
            s.held = Holding::Alone;
            return Offered::Held;
        }
        Offered::Taken
    }

    fn flush(&self) {
        let mut s = self.lock();
        s.held = Holding::No;
        if !s.closing && self.write_now(&mut s) {
            drop(s);
            self.notify.notify_one();
        }
    }
}

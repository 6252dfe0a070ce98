//! One WebSocket connection.
//!
//! Per subscribed chat the session remembers the last message seq it wrote
//! (`last`). A live message frame at or below it is dropped (the seam between
//! history and live, or a replay); the next one (`last + 1`) is written; one
//! further ahead means something is missing, and the chat is read from the
//! table from `last` on instead. An `update` or `delete` for a seq above
//! `last` is dropped too: its message has not been written yet, and when it
//! is read from the table it already shows the change (or is gone). So what
//! a client sees per chat is contiguous, increasing, never repeated, and no
//! change ever arrives before its message.
//!
//! Table work ([`Work`]) is what a subscription owes its client beyond the
//! live stream: history after `after_seq`, a gap, a catch-up after it fell
//! behind in the hub (including the updates, deletes and receipts it missed),
//! a resynchronisation. It runs a page at a time, only while the socket has
//! room, and every read checks participation in the same statement: a
//! removed user, or a check that cannot be made, ends the subscription.
//!
//! The session never awaits its socket ([`Outbox`]). It stops taking live
//! frames and requests while too much waits to be written, and closes with
//! 4008 only when the socket took nothing for `CHAT_RELAY_SLOW_CONSUMER_MS`
//! while frames waited, or when the unsent data passes [`MAX_UNSENT`].

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use futures_util::stream::SplitStream;
use futures_util::StreamExt;
use rustc_hash::FxHashMap;
use serde_json::Value;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::auth::Identity;
use super::outbox::{Closed, Outbox};
use super::Gateway;
use crate::event::MessageRow;
use crate::hub::{Behind, Conn};
use crate::metrics as m;
use crate::protocol::{self, ErrorCode, EventFrame, FrameKind, Request, ServerFrame, UnsubscribeReason};
use crate::store::StoreError;

/// WebSocket close codes of the protocol.
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const TOO_BIG: u16 = 1009;
    pub const UNAUTHORIZED: u16 = 4001;
    pub const SLOW_CONSUMER: u16 = 4008;
}

/// Above this many unsent bytes the session takes no more live frames and
/// no more requests until the socket drains.
pub const HIGH_WATER: usize = 256 * 1024;
/// Table work (catch-up pages) runs only below this.
pub const LOW_WATER: usize = 64 * 1024;
/// A connection whose unsent data passes this is closed with 4008.
pub const MAX_UNSENT: usize = 4 * 1024 * 1024;
/// Row text read per catch-up page, at most (and at least one row).
pub const PAGE_BYTES: i64 = 256 * 1024;
/// Row text in one `history` answer, at most (`has_more` says if cut).
pub const HISTORY_BYTES: i64 = 1024 * 1024;
/// Live frames taken from the queue per wake-up before looking around.
const BATCH: usize = 64;
/// How long table work keeps retrying a database that is restarting or
/// unreachable before the subscription ends with `unavailable`.
pub const UNAVAILABLE_FOR: Duration = Duration::from_secs(30);
/// First and largest pause between such retries.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What a subscription owes its client beyond the live stream.
#[derive(Debug, Default)]
struct Work {
    /// Messages after `last`, from the table.
    messages: bool,
    /// Rows `from..=to` to send again as `update` (updates it missed).
    updates: Option<(i64, i64)>,
    /// Deletes it missed, of messages it had.
    deletes: Vec<(i64, Uuid)>,
    /// Receipts it missed: of these users, or of everyone (None).
    receipts: Option<Option<HashSet<Uuid>>>,
    /// It fell behind in the hub (counted as a catch-up when done).
    behind: bool,
    /// Order of creation, for ping barriers.
    generation: u64,
}

struct Sub {
    /// Highest message seq written for this chat.
    last: i64,
    work: Option<Work>,
}

/// A `pong` waiting until what was owed before its `ping` is written.
struct Barrier {
    reference: Option<Value>,
    /// Live frames queued before the ping.
    dequeued: u64,
    /// Table work created before the ping.
    generation: u64,
}

pub(super) struct Session {
    gw: Arc<Gateway>,
    identity: Identity,
    conn: Arc<Conn>,
    rx: mpsc::Receiver<Arc<EventFrame>>,
    /// Live frames taken from the queue so far.
    dequeued: u64,
    out: Outbox,
    subs: FxHashMap<Uuid, Sub>,
    /// Highest seq written per chat, kept after unsubscribe: a resubscribe on
    /// this connection never repeats a message.
    written: FxHashMap<Uuid, i64>,
    /// Chats with table work, in the order it arose.
    pending: VecDeque<Uuid>,
    next_generation: u64,
    barriers: VecDeque<Barrier>,
    last_heard: Instant,
    /// Table work failed for a passing reason: when it started failing and
    /// the next pause.
    failing: Option<(Instant, Duration)>,
    /// No table work before this (a database that is coming back).
    retry_at: Option<tokio::time::Instant>,
}

enum Wake {
    Shutdown,
    Expired,
    Control,
    Wrote(Result<(), Closed>),
    Stalled,
    Tick,
    In(Option<Result<Message, axum::Error>>),
    Work,
    Retry,
    Frame(Option<Arc<EventFrame>>),
}

/// How the connection should end.
enum End {
    /// Peer gone or socket failed: nothing more to say.
    Quietly,
    /// Close with this code and reason, after writing what waits (or not).
    Close { code: u16, reason: &'static str, flush: bool },
}

impl From<Closed> for End {
    fn from(_: Closed) -> End {
        End::Quietly
    }
}

impl Session {
    pub(super) async fn run(gw: Arc<Gateway>, socket: WebSocket, identity: Identity) {
        let id = gw.next_conn_id();
        let (conn, rx) = Conn::new(id, identity.user_id, gw.cfg.outbound_queue);
        let (sink, stream) = socket.split();
        let mut session = Session {
            gw,
            identity,
            conn,
            rx,
            dequeued: 0,
            out: Outbox::new(sink),
            subs: FxHashMap::default(),
            written: FxHashMap::default(),
            pending: VecDeque::new(),
            next_generation: 0,
            barriers: VecDeque::new(),
            last_heard: Instant::now(),
            failing: None,
            retry_at: None,
        };
        m::ws_connected();
        tracing::debug!(conn = id, user = %identity.user_id, "connected");
        let end = session.serve(stream).await;
        // Counted before anything of the end is visible to others (the
        // presence change that unsubscribing sends), so a dashboard or test
        // that sees the peer gone also sees why.
        if let End::Close { code: close::SLOW_CONSUMER, reason, .. } = &end {
            m::slow_consumer();
            tracing::info!(conn = id, user = %identity.user_id, reason, "slow consumer disconnected");
        }
        for chat in session.subs.keys() {
            session.gw.hub.unsubscribe(*chat, id);
        }
        if let End::Close { code, reason, flush } = end {
            session.out.close(code, reason, flush, Duration::from_secs(2)).await;
        }
        m::ws_disconnected();
        tracing::debug!(conn = id, "disconnected");
    }

    async fn serve(&mut self, mut stream: SplitStream<WebSocket>) -> End {
        let shutdown = self.gw.shutdown.clone();
        let interval = self.gw.cfg.ping_interval;
        let patience = self.gw.cfg.slow_consumer;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let mut expiry = Box::pin(tokio::time::sleep(self.identity.remaining()));
        loop {
            self.release_barriers();
            if self.out.bytes() > MAX_UNSENT {
                return End::Close {
                    code: close::SLOW_CONSUMER,
                    reason: "slow consumer: unsent data over the limit; resubscribe with after_seq",
                    flush: false,
                };
            }
            let room = self.out.bytes() < HIGH_WATER;
            let table_room = !self.pending.is_empty() && self.out.bytes() < LOW_WATER && self.retry_at.is_none();
            // Like `stall_at`: only polled when there is one.
            let retry_at = self.retry_at;
            let busy = self.out.busy();
            let stall_at = self.out.last_progress() + patience;
            let wake = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Wake::Shutdown,
                _ = &mut expiry => Wake::Expired,
                _ = self.conn.wake.notified() => Wake::Control,
                r = futures_util::future::poll_fn(|cx| self.out.poll_write(cx)), if busy => Wake::Wrote(r),
                _ = tokio::time::sleep_until(stall_at.into()), if busy => Wake::Stalled,
                _ = ping.tick() => Wake::Tick,
                msg = stream.next(), if room => Wake::In(msg),
                _ = std::future::ready(()), if table_room => Wake::Work,
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => Wake::Retry,
                f = self.rx.recv(), if room => Wake::Frame(f),
            };
            let step: Result<(), End> = match wake {
                Wake::Shutdown => {
                    return End::Close { code: close::GOING_AWAY, reason: "server shutting down", flush: true }
                }
                Wake::Expired => return End::Close { code: close::UNAUTHORIZED, reason: "token expired", flush: true },
                Wake::Control => self.control(),
                Wake::Wrote(r) => r.map_err(End::from),
                Wake::Stalled => {
                    if self.out.busy() && self.out.last_progress().elapsed() >= patience {
                        return End::Close {
                            code: close::SLOW_CONSUMER,
                            reason: "slow consumer: took nothing from its socket; resubscribe with after_seq",
                            flush: false,
                        };
                    }
                    Ok(())
                }
                Wake::Tick => {
                    // Silent: no frame heard and nothing taken from the socket.
                    let quiet = |t: Instant| t.elapsed() > interval * 2;
                    if quiet(self.last_heard) && (!self.out.busy() || quiet(self.out.last_progress())) {
                        tracing::debug!(conn = self.conn.id, "peer silent for two ping intervals; dropping");
                        return End::Quietly;
                    }
                    self.out.ping();
                    Ok(())
                }
                Wake::In(None) => return End::Quietly,
                Wake::In(Some(Err(e))) => {
                    return match is_too_big(e) {
                        true => {
                            End::Close { code: close::TOO_BIG, reason: "frame larger than the limit", flush: false }
                        }
                        false => End::Quietly,
                    }
                }
                Wake::In(Some(Ok(msg))) => {
                    self.last_heard = Instant::now();
                    match self.on_incoming(msg, &mut expiry).await {
                        Ok(true) => Ok(()),
                        Ok(false) => return End::Quietly,
                        Err(end) => Err(end),
                    }
                }
                Wake::Work => self.work_step().await,
                Wake::Retry => {
                    self.retry_at = None;
                    Ok(())
                }
                Wake::Frame(None) => return End::Quietly,
                Wake::Frame(Some(frame)) => {
                    self.on_frame(frame);
                    for _ in 1..BATCH {
                        if self.out.bytes() >= HIGH_WATER {
                            break;
                        }
                        match self.rx.try_recv() {
                            Ok(frame) => self.on_frame(frame),
                            Err(_) => break,
                        }
                    }
                    if self.conn.has_behind() {
                        self.control()
                    } else {
                        Ok(())
                    }
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Revocations, resynchronisation, subscriptions that fell behind.
    fn control(&mut self) -> Result<(), End> {
        let ctl = self.conn.take(self.dequeued);
        if ctl.overflow {
            return Err(End::Close {
                code: close::SLOW_CONSUMER,
                reason: "slow consumer: too far behind; resubscribe with after_seq",
                flush: false,
            });
        }
        for chat in ctl.revoked {
            if self.end_sub(chat) {
                self.answer(
                    ServerFrame::Unsubscribed { chat_id: chat, reason: Some(UnsubscribeReason::Forbidden) },
                    &None,
                );
            }
        }
        if ctl.resync {
            let chats: Vec<Uuid> = self.subs.keys().copied().collect();
            for chat in chats {
                self.owe(chat, |w, _| w.messages = true);
            }
        }
        for (chat, behind) in ctl.behind {
            self.owe(chat, |w, last| merge_behind(w, behind, last));
        }
        for (chat, user, online) in ctl.presence {
            if self.subs.contains_key(&chat) {
                let frame = ServerFrame::Presence { chat_id: chat, user_id: user, online };
                self.out.event(frame.encode(None), None);
            }
        }
        Ok(())
    }

    /// Adds table work to a subscription (and queues it).
    fn owe(&mut self, chat: Uuid, add: impl FnOnce(&mut Work, i64)) {
        let Some(sub) = self.subs.get_mut(&chat) else { return };
        let work = sub.work.get_or_insert_with(|| {
            self.pending.push_back(chat);
            let generation = self.next_generation;
            self.next_generation += 1;
            Work { generation, ..Default::default() }
        });
        add(work, sub.last);
    }

    /// A live frame from the hub.
    fn on_frame(&mut self, frame: Arc<EventFrame>) {
        self.dequeued += 1;
        let Some(sub) = self.subs.get_mut(&frame.chat_id) else { return };
        match frame.kind {
            FrameKind::Message => {
                if frame.seq <= sub.last {
                    return; // written already (history seam, replay)
                }
                if self.failing.is_some() && sub.work.as_ref().is_some_and(|w| w.messages) {
                    // Its table read is retrying: nothing of the chat goes
                    // out unchecked; the read brings this one too.
                    return;
                }
                if frame.seq > sub.last + 1 {
                    // Something before it is missing: read the chat in order.
                    let chat = frame.chat_id;
                    self.owe(chat, |w, _| w.messages = true);
                    return;
                }
                sub.last = frame.seq;
                self.auto_deliver(&frame);
            }
            // Its message is not written yet: when it is read from the table
            // it shows this change already (or is gone).
            FrameKind::Update | FrameKind::Delete if frame.seq > sub.last => return,
            FrameKind::Update | FrameKind::Delete | FrameKind::Receipt | FrameKind::Typing => {}
        }
        self.out.event(frame.text.clone(), frame.commit_time);
    }

    fn auto_deliver(&self, frame: &EventFrame) {
        if self.gw.cfg.auto_delivered && frame.subject != Some(self.identity.user_id) {
            self.gw.delivery.delivered(frame.chat_id, self.identity.user_id, frame.seq);
        }
    }

    /// One step of the oldest table work: a page of messages or updates, the
    /// missed deletes, the missed receipts.
    async fn work_step(&mut self) -> Result<(), End> {
        enum Step {
            Messages(i64),
            Updates(i64, i64),
            Deletes(Vec<(i64, Uuid)>),
            Receipts(Option<Vec<Uuid>>),
            Done(bool),
        }
        let Some(&chat) = self.pending.front() else { return Ok(()) };
        let step = match self.subs.get_mut(&chat) {
            Some(Sub { last, work: Some(w) }) => {
                if w.messages {
                    Step::Messages(*last)
                } else if let Some((from, to)) = w.updates {
                    Step::Updates(from, to)
                } else if !w.deletes.is_empty() {
                    Step::Deletes(std::mem::take(&mut w.deletes))
                } else if let Some(users) = w.receipts.take() {
                    Step::Receipts(users.map(|u| u.into_iter().collect()))
                } else {
                    Step::Done(w.behind)
                }
            }
            _ => {
                self.pending.pop_front();
                return Ok(());
            }
        };
        let user = self.identity.user_id;
        let (page, store) = (self.gw.cfg.backfill_page, self.gw.store.clone());
        match step {
            Step::Messages(last) => {
                let (rows, more) = match store.page(chat, user, last, i64::MAX, page, PAGE_BYTES).await {
                    Ok(r) => r,
                    Err(e) => return self.work_failed(chat, e),
                };
                for row in rows {
                    let Some(sub) = self.subs.get_mut(&chat) else { break };
                    if row.seq > sub.last {
                        sub.last = row.seq;
                        let frame = EventFrame::message(&row, None);
                        self.auto_deliver(&frame);
                        self.out.event(frame.text, None);
                    }
                }
                if let Some(w) = self.work(chat) {
                    w.messages = more;
                }
            }
            Step::Updates(from, to) => {
                let (rows, more) = match store.page(chat, user, from - 1, to, page, PAGE_BYTES).await {
                    Ok(r) => r,
                    Err(e) => return self.work_failed(chat, e),
                };
                let next = rows.last().filter(|_| more).map(|r| (r.seq + 1, to));
                for row in rows {
                    self.out.event(EventFrame::update(&row, None).text, None);
                }
                if let Some(w) = self.work(chat) {
                    w.updates = next;
                }
            }
            Step::Deletes(mut deletes) => {
                deletes.sort_unstable();
                deletes.dedup();
                for (seq, id) in deletes {
                    self.out.event(EventFrame::delete(chat, id, seq, None).text, None);
                }
            }
            Step::Receipts(users) => match store.watermarks(chat, users.as_deref()).await {
                Ok(list) => {
                    for p in list {
                        self.out.event(EventFrame::receipt(&p, None).text, None);
                    }
                }
                Err(e) => return self.work_failed(chat, e),
            },
            Step::Done(behind) => {
                if behind {
                    m::catchup();
                }
                if let Some(sub) = self.subs.get_mut(&chat) {
                    sub.work = None;
                }
                self.pending.pop_front();
            }
        }
        self.failing = None;
        Ok(())
    }

    fn work(&mut self, chat: Uuid) -> Option<&mut Work> {
        self.subs.get_mut(&chat).and_then(|s| s.work.as_mut())
    }

    /// Table work for `chat` could not be done. A database that is
    /// restarting or out of connections is retried, with backoff, for up to
    /// [`UNAVAILABLE_FOR`]; meanwhile nothing of the chat is written. Past
    /// that, or for any other error, the subscription ends and the client is
    /// told why: it never stays on unchecked.
    fn work_failed(&mut self, chat: Uuid, e: StoreError) -> Result<(), End> {
        if e.is_transient() {
            let (since, delay) = self.failing.unwrap_or((Instant::now(), RETRY_FIRST));
            if since.elapsed() < UNAVAILABLE_FOR {
                tracing::debug!(conn = self.conn.id, chat_id = %chat, error = %e, "reading the chat failed; retrying");
                self.failing = Some((since, (delay * 2).min(RETRY_MAX)));
                self.retry_at = Some(tokio::time::Instant::now() + delay);
                return Ok(());
            }
        }
        self.failing = None;
        self.end_sub(chat);
        match e {
            StoreError::NotParticipant => self
                .answer(ServerFrame::Unsubscribed { chat_id: chat, reason: Some(UnsubscribeReason::Forbidden) }, &None),
            e => {
                tracing::warn!(conn = self.conn.id, chat_id = %chat, error = %e, "reading the chat failed; subscription ended");
                self.error(
                    ErrorCode::Unavailable,
                    "could not read the chat's history; subscribe again",
                    Some(chat),
                    &None,
                );
            }
        }
        Ok(())
    }

    /// Writes the pongs whose barriers have passed.
    fn release_barriers(&mut self) {
        let oldest_work =
            self.pending.iter().filter_map(|c| self.subs.get(c)?.work.as_ref().map(|w| w.generation)).min();
        while let Some(b) = self.barriers.front() {
            let frames_done = self.dequeued >= b.dequeued;
            let work_done = oldest_work.is_none_or(|g| g >= b.generation);
            if !(frames_done && work_done) {
                break;
            }
            if let Some(b) = self.barriers.pop_front() {
                self.answer(ServerFrame::Pong, &b.reference);
            }
        }
    }

    /// Handles a client frame; Ok(false) ends the session.
    async fn on_incoming(
        &mut self,
        msg: Message,
        expiry: &mut std::pin::Pin<Box<tokio::time::Sleep>>,
    ) -> Result<bool, End> {
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                self.error(ErrorCode::BadRequest, "frames must be UTF-8 JSON text", None, &None);
                return Ok(true);
            }
            Message::Close(_) => return Ok(false),
            Message::Ping(_) | Message::Pong(_) => return Ok(true),
        };
        let (request, reference) = match protocol::parse(&text) {
            Ok(r) => r,
            Err(bad) => {
                self.error(ErrorCode::BadRequest, &bad.message, None, &bad.reference);
                return Ok(true);
            }
        };
        match request {
            Request::Ping => {
                // Answered once everything owed before it is written: the
                // live frames queued so far and the table work asked for.
                self.barriers.push_back(Barrier {
                    reference,
                    dequeued: self.dequeued + self.rx.len() as u64,
                    generation: self.next_generation,
                });
            }
            Request::Subscribe { chat_id, after_seq } => self.subscribe(chat_id, after_seq, &reference).await,
            Request::Unsubscribe { chat_id } => {
                self.end_sub(chat_id);
                self.answer(ServerFrame::Unsubscribed { chat_id, reason: None }, &reference);
            }
            Request::Auth { access_token } => match self.gw.auth.verify(&access_token).await {
                Ok(id) if id.user_id == self.identity.user_id => {
                    self.identity = id;
                    expiry.as_mut().reset(tokio::time::Instant::now() + id.remaining());
                    self.answer(ServerFrame::Ok, &reference);
                }
                Ok(_) => {
                    self.error(ErrorCode::Unauthorized, "token is for another user", None, &reference);
                    return Err(End::Close {
                        code: close::UNAUTHORIZED,
                        reason: "token is for another user",
                        flush: true,
                    });
                }
                Err(why) => {
                    self.error(ErrorCode::Unauthorized, &why, None, &reference);
                    return Err(End::Close { code: close::UNAUTHORIZED, reason: "invalid token", flush: true });
                }
            },
            Request::Send { chat_id, client_generated_id, content } => {
                self.send(chat_id, client_generated_id, content, &reference).await
            }
            Request::History { chat_id, before_seq, limit } => {
                self.history(chat_id, before_seq, limit, &reference).await
            }
            Request::Typing { chat_id } => {
                let user = self.identity.user_id;
                if !self.subs.contains_key(&chat_id) {
                    self.error(
                        ErrorCode::Forbidden,
                        "subscribe to the chat before typing in it",
                        Some(chat_id),
                        &reference,
                    );
                } else if self.gw.limits.typing(user, chat_id) {
                    self.gw.hub.typing(chat_id, user, self.conn.id);
                }
            }
            Request::Ack { chat_id, seq } | Request::Read { chat_id, seq } => {
                let read = matches!(request, Request::Read { .. });
                match self.gw.membership.check(chat_id, self.identity.user_id).await {
                    Ok(true) if read => self.gw.delivery.read(chat_id, self.identity.user_id, seq),
                    Ok(true) => self.gw.delivery.delivered(chat_id, self.identity.user_id, seq),
                    Ok(false) => self.forbidden(chat_id, &reference),
                    Err(e) => self.store_error(e, Some(chat_id), &reference),
                }
            }
        }
        Ok(true)
    }

    async fn subscribe(&mut self, chat: Uuid, after_seq: Option<i64>, reference: &Option<Value>) {
        let user = self.identity.user_id;
        let already = self.subs.contains_key(&chat);
        if !already {
            // Register first, then check and read: whatever commits after the
            // read is certain to arrive through the hub.
            self.gw.hub.subscribe(chat, &self.conn);
        }
        // Always asked of the database itself, never of a cache.
        let latest = match self.gw.store.subscribe_check(chat, user).await {
            Ok(latest) => latest,
            Err(e) => {
                if !already {
                    self.gw.hub.unsubscribe(chat, self.conn.id);
                }
                return self.store_error(e, Some(chat), reference);
            }
        };
        // Checked: it counts for presence now, and learns who is here.
        let online = self.gw.hub.present(chat, &self.conn);
        let frame = ServerFrame::Subscribed {
            chat_id: chat,
            latest_seq: latest,
            online: &online.users,
            online_truncated: online.truncated,
        };
        self.answer(frame, reference);
        if already {
            return;
        }
        let floor = self.written.get(&chat).copied().unwrap_or(i64::MIN);
        let start = after_seq.unwrap_or(latest).max(floor);
        self.subs.insert(chat, Sub { last: start, work: None });
        if after_seq.is_some_and(|a| a < latest) {
            self.owe(chat, |w, _| w.messages = true);
        }
    }

    async fn send(&mut self, chat: Uuid, cgid: Uuid, content: String, reference: &Option<Value>) {
        if content.is_empty() {
            return self.error(ErrorCode::BadRequest, "content is empty", Some(chat), reference);
        }
        if content.len() > self.gw.cfg.max_content_bytes {
            let why = format!("content is longer than {} bytes", self.gw.cfg.max_content_bytes);
            return self.error(ErrorCode::BadRequest, &why, Some(chat), reference);
        }
        if let Err(wait) = self.gw.limits.send(self.identity.user_id) {
            let frame = ServerFrame::rate_limited("too many sends; nothing was stored", Some(chat), wait);
            return self.answer(frame, reference);
        }
        match self.gw.store.send(chat, self.identity.user_id, cgid, &content).await {
            Ok(o) => self.answer(
                ServerFrame::Sent {
                    chat_id: chat,
                    client_generated_id: cgid,
                    id: o.id,
                    seq: o.seq,
                    duplicate: o.duplicate,
                },
                reference,
            ),
            Err(e) => self.store_error(e, Some(chat), reference),
        }
    }

    async fn history(&mut self, chat: Uuid, before: Option<i64>, limit: i64, reference: &Option<Value>) {
        match self.gw.store.history(chat, self.identity.user_id, before, limit, HISTORY_BYTES).await {
            Ok((rows, has_more)) => {
                let messages = rows.iter().map(|r: &MessageRow| &r.body).collect();
                self.answer(ServerFrame::History { chat_id: chat, messages, has_more }, reference);
            }
            Err(e) => self.store_error(e, Some(chat), reference),
        }
    }

    fn forbidden(&mut self, chat: Uuid, reference: &Option<Value>) {
        self.error(ErrorCode::Forbidden, "not a participant of this chat", Some(chat), reference)
    }

    fn store_error(&mut self, e: StoreError, chat: Option<Uuid>, reference: &Option<Value>) {
        let (code, msg) = match &e {
            StoreError::NotParticipant => (ErrorCode::Forbidden, "not a participant of this chat"),
            StoreError::Unavailable(_) => (ErrorCode::Unavailable, "database unavailable, try again"),
            _ => (ErrorCode::Internal, "internal error"),
        };
        if !matches!(e, StoreError::NotParticipant) {
            tracing::warn!(conn = self.conn.id, error = %e, "request failed");
        }
        self.error(code, msg, chat, reference)
    }

    fn error(&mut self, code: ErrorCode, message: &str, chat: Option<Uuid>, reference: &Option<Value>) {
        self.answer(ServerFrame::error(code, message, chat), reference);
    }

    /// Ends a subscription, however it ends: leaves the hub (a no-op when
    /// the hub already dropped it), drops its table work, and remembers the
    /// last seq written, so a later subscribe on this connection never
    /// repeats a message. Returns whether the chat was subscribed.
    fn end_sub(&mut self, chat: Uuid) -> bool {
        self.gw.hub.unsubscribe(chat, self.conn.id);
        let Some(sub) = self.subs.remove(&chat) else { return false };
        if sub.work.is_some() {
            self.pending.retain(|c| *c != chat);
        }
        let e = self.written.entry(chat).or_insert(sub.last);
        *e = (*e).max(sub.last);
        true
    }

    fn answer(&mut self, frame: ServerFrame, reference: &Option<Value>) {
        self.out.text(frame.encode(reference.as_ref()));
    }
}

/// Adds what a subscription missed while behind to its table work.
fn merge_behind(w: &mut Work, b: Behind, last: i64) {
    w.behind = true;
    w.messages = true;
    // Messages after `last` are read from the table as they are now; rows up
    // to it the client has, and may have missed updates of.
    if let Some(from) = b.updates_from.filter(|f| *f <= last) {
        w.updates = Some(match w.updates {
            Some((f, t)) => (f.min(from), t.max(last)),
            None => (from, last),
        });
    }
    w.deletes.extend(b.deletes.into_iter().filter(|(seq, _)| *seq <= last));
    if b.all_receipts {
        w.receipts = Some(None);
    } else if !b.receipts.is_empty() {
        match &mut w.receipts {
            Some(None) => {}
            Some(Some(users)) => users.extend(b.receipts),
            None => w.receipts = Some(Some(b.receipts)),
        }
    }
}

fn is_too_big(e: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e.into_inner().downcast::<WsError>() {
        Ok(e) => matches!(*e, WsError::Capacity(_)),
        Err(_) => false,
    }
}

//! One WebSocket connection: the protocol's requests, the live frames the
//! hub queued, table work, and its socket, in one task.
//!
//! What each subscription still owes, and in which order, is decided by
//! `Catchup` (pure state, in the connection's [`Link`], where the hub also
//! writes live frames directly when nothing is ahead of them); the session
//! does the reading (every read checks participation in the same
//! statement: a removed user, or a check that cannot be made, ends the
//! subscription) and the rest of the writing. Table work runs a page at a
//! time, only while the socket has room.
//!
//! The session never awaits its socket ([`Outbox`]). It stops taking live
//! frames and requests while too much waits to be written, and closes with
//! 4008 only when the socket took nothing for `CHAT_RELAY_SLOW_CONSUMER_MS`
//! while frames waited, or when the unsent data beside its biggest waiting
//! frame passes [`MAX_UNSENT`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use futures_util::stream::SplitStream;
use futures_util::StreamExt;
use serde_json::Value;
use uuid::Uuid;

use super::auth::Identity;
use super::link::Link;
use super::outbox::{Closed, Outbox};
use super::Gateway;
use crate::catchup::Step;
use crate::event::MessageRow;
use crate::hub::Conn;
use crate::inbox::{InboxError, Pager};
use crate::metrics as m;
use crate::protocol::{self, ErrorCode, EventFrame, Request, ServerFrame, UnsubscribeReason};
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
/// A connection whose unsent data, beside its biggest waiting frame, passes
/// this is closed with 4008 (one frame may be bigger and is still written).
pub const MAX_UNSENT: usize = 4 * 1024 * 1024;
/// Row JSON read per catch-up page, at most (and at least one row).
pub const PAGE_BYTES: i64 = 256 * 1024;
/// Row JSON in one `history` answer, at most (`has_more` says if cut).
pub const HISTORY_BYTES: i64 = 1024 * 1024;
/// Pongs waiting for their barrier, at most; past it the session reads no
/// more client frames until some are written (a ping costs memory until
/// then, like anything else unsent).
pub const MAX_WAITING_PONGS: usize = 64;
/// Live frames taken from the queue per wake-up before looking around.
const BATCH: usize = 64;
/// How long table work keeps retrying a database that is restarting or
/// unreachable before the subscription ends with `unavailable`.
pub const UNAVAILABLE_FOR: Duration = Duration::from_secs(30);
/// First and largest pause between such retries.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

pub(super) struct Session {
    gw: Arc<Gateway>,
    identity: Identity,
    conn: Arc<Conn>,
    /// The queue, what each subscription owes, the outbox: shared with the
    /// hub, which writes live frames directly when nothing is ahead of them.
    link: Arc<Link>,
    last_heard: Instant,
    /// No table work before this (a database that is coming back).
    retry_at: Option<tokio::time::Instant>,
    /// The connection's inbox: on or off, and the pages still to come.
    inbox: Pager,
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
    /// Sets the connection up; [`Session::run`] serves it. Kept apart so the
    /// connection's task holds only the session and the read half, not the
    /// WebSocket it was made from (a future keeps room for its arguments
    /// for as long as it lives: that was most of an idle connection).
    pub(super) fn open(gw: Arc<Gateway>, socket: WebSocket, identity: Identity) -> (Session, SplitStream<WebSocket>) {
        let id = gw.next_conn_id();
        let (conn, rx) = Conn::new(id, identity.user_id, gw.cfg.outbound_queue);
        let (sink, stream) = socket.split();
        let delivery = gw.cfg.auto_delivered.then(|| gw.parts.delivery.clone());
        let link = Arc::new(Link::new(rx, Outbox::new(sink), conn.wake.clone(), identity.user_id, delivery));
        conn.set_direct(link.clone());
        let session =
            Session { gw, identity, conn, link, last_heard: Instant::now(), retry_at: None, inbox: Pager::default() };
        m::ws_connected();
        tracing::debug!(conn = id, user = %identity.user_id, "connected");
        (session, stream)
    }

    pub(super) async fn run(mut self, stream: SplitStream<WebSocket>) {
        let (id, identity) = (self.conn.id, self.identity);
        let end = self.serve(stream).await;
        // Counted before anything of the end is visible to others (the
        // presence change that unsubscribing sends), so a dashboard or test
        // that sees the peer gone also sees why.
        if let End::Close { code: close::SLOW_CONSUMER, reason, .. } = &end {
            m::slow_consumer();
            tracing::info!(conn = id, user = %identity.user_id, reason, "slow consumer disconnected");
        }
        let chats: Vec<Uuid> = self.link.lock().owed.chats().collect();
        for chat in chats {
            self.gw.parts.hub.unsubscribe(chat, id);
        }
        self.inbox.stop(&self.gw.parts.inbox, &self.conn);
        match end {
            End::Close { code, reason, flush } => {
                Box::pin(self.link.close(code, reason, flush, Duration::from_secs(2))).await
            }
            End::Quietly => self.link.abandon(),
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
            let (room, read_room, table_room, busy, stall_at) = {
                let mut s = self.link.lock();
                // Parked from here until something wakes the session.
                s.idle = true;
                if s.out.bytes() > MAX_UNSENT && s.out.bytes_beside_biggest() > MAX_UNSENT {
                    return End::Close {
                        code: close::SLOW_CONSUMER,
                        reason: "slow consumer: unsent data over the limit; resubscribe with after_seq",
                        flush: false,
                    };
                }
                let room = s.out.bytes() < HIGH_WATER;
                // Requests wait too while too many pongs wait for their barriers.
                let read_room = room && s.owed.pongs_waiting() < MAX_WAITING_PONGS;
                let table_room = s.owed.has_work() && s.out.bytes() < LOW_WATER && self.retry_at.is_none();
                (room, read_room, table_room, s.out.busy(), s.out.last_progress() + patience)
            };
            // Like `stall_at`: only polled when there is one.
            let retry_at = self.retry_at;
            let link = &self.link;
            let wake = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Wake::Shutdown,
                _ = &mut expiry => Wake::Expired,
                _ = self.conn.wake.notified() => Wake::Control,
                r = std::future::poll_fn(|cx| link.lock().out.poll_write(cx)), if busy => Wake::Wrote(r),
                _ = tokio::time::sleep_until(stall_at.into()), if busy => Wake::Stalled,
                _ = ping.tick() => Wake::Tick,
                msg = stream.next(), if read_room => Wake::In(msg),
                _ = std::future::ready(()), if table_room => Wake::Work,
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => Wake::Retry,
                f = std::future::poll_fn(|cx| {
                    // Taken and no longer idle in one step: nothing the
                    // publisher judges may overtake the frame in hand.
                    let mut s = link.lock();
                    let f = s.rx.poll_recv(cx);
                    if f.is_ready() {
                        s.idle = false;
                    }
                    f
                }), if room => Wake::Frame(f),
            };
            self.link.lock().idle = false;
            let step: Result<(), End> = match wake {
                Wake::Shutdown => {
                    return End::Close { code: close::GOING_AWAY, reason: "server shutting down", flush: true }
                }
                Wake::Expired => return End::Close { code: close::UNAUTHORIZED, reason: "token expired", flush: true },
                Wake::Control => self.control(),
                Wake::Wrote(r) => {
                    let room = self.link.lock().out.bytes() < HIGH_WATER;
                    match r {
                        // Room again: presence changes that waited for it.
                        Ok(()) if room && self.conn.side_waiting() => self.control(),
                        r => r.map_err(End::from),
                    }
                }
                Wake::Stalled => {
                    let stalled = {
                        let s = self.link.lock();
                        s.out.busy() && s.out.last_progress().elapsed() >= patience
                    };
                    if stalled {
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
                    let mut s = self.link.lock();
                    if quiet(self.last_heard) && (!s.out.busy() || quiet(s.out.last_progress())) {
                        tracing::debug!(conn = self.conn.id, "peer silent for two ping intervals; dropping");
                        return End::Quietly;
                    }
                    s.out.ping();
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
                    match Box::pin(self.on_incoming(msg, &mut expiry)).await {
                        Ok(true) => Ok(()),
                        Ok(false) => return End::Quietly,
                        Err(end) => Err(end),
                    }
                }
                Wake::Work => Box::pin(self.work_step()).await,
                Wake::Retry => {
                    self.retry_at = None;
                    Ok(())
                }
                Wake::Frame(None) => return End::Quietly,
                Wake::Frame(Some(frame)) => {
                    {
                        let mut s = self.link.lock();
                        self.link.live(&mut s, &frame);
                        for _ in 1..BATCH {
                            if s.out.bytes() >= HIGH_WATER {
                                break;
                            }
                            match s.rx.try_recv() {
                                Ok(frame) => {
                                    self.link.live(&mut s, &frame);
                                }
                                Err(_) => break,
                            }
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
        let (room, taken) = {
            let s = self.link.lock();
            (s.out.bytes() < HIGH_WATER, s.owed.taken())
        };
        let ctl = self.conn.take(taken, room);
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
        let inbox_on = self.inbox.is_on();
        let mut s = self.link.lock();
        if ctl.resync {
            s.owed.resync();
        }
        for (chat, behind) in ctl.behind {
            s.owed.fell_behind(chat, behind);
        }
        for (chat, user, online) in ctl.presence {
            if s.owed.is_subscribed(&chat) {
                let frame = ServerFrame::Presence { chat_id: chat, user_id: user, online };
                s.out.event(frame.encode(None), None);
            }
        }
        if !ctl.inbox.is_empty() && inbox_on {
            m::inbox_frames(ctl.inbox.len() as u64);
            for text in ctl.inbox {
                s.out.text(text);
            }
        }
        Ok(())
    }

    /// One step of the oldest table work: a page of messages or updates, the
    /// missed deletes, the missed receipts.
    async fn work_step(&mut self) -> Result<(), End> {
        let Some((chat, step)) = self.link.lock().owed.next_step(|_| m::catchup()) else { return Ok(()) };
        let user = self.identity.user_id;
        let (page, store) = (self.gw.cfg.backfill_page, self.gw.parts.store.clone());
        match step {
            Step::Messages { after } => {
                let (rows, more) = match store.page(chat, user, after, i64::MAX, page, PAGE_BYTES).await {
                    Ok(r) => r,
                    Err(e) => return self.work_failed(chat, e),
                };
                let complete = {
                    let mut s = self.link.lock();
                    for row in rows {
                        if s.owed.table_message(chat, row.seq) {
                            let frame = EventFrame::message(&row, None);
                            self.link.delivered(&frame);
                            s.out.event(frame.text, None);
                        }
                    }
                    s.owed.messages_read(chat, more)
                };
                if !complete {
                    // A streamed message the table does not show: deleted
                    // since, or committed but not visible yet (a synchronous
                    // standby has not confirmed it): then read again.
                    match store.latest_seq(chat).await {
                        Ok(latest) if self.link.lock().owed.visible_up_to(chat, latest) => {}
                        Ok(_) => {
                            let why = "a streamed message is not visible in the table yet";
                            return self.work_failed(chat, StoreError::Unavailable(why.into()));
                        }
                        Err(e) => return self.work_failed(chat, e),
                    }
                }
            }
            Step::Updates { from, to } => {
                let (rows, more) = match store.page(chat, user, from - 1, to, page, PAGE_BYTES).await {
                    Ok(r) => r,
                    Err(e) => return self.work_failed(chat, e),
                };
                let rest = rows.last().filter(|_| more).map(|r| (r.seq + 1, to));
                let mut s = self.link.lock();
                for row in rows {
                    s.out.event(EventFrame::update(&row, None).text, None);
                }
                s.owed.updates_read(chat, rest);
            }
            Step::Deletes(deletes) => {
                let mut s = self.link.lock();
                for (seq, id) in deletes {
                    s.out.event(EventFrame::delete(chat, id, seq, None).text, None);
                }
            }
            Step::Receipts(users) => match store.watermarks(chat, users.as_deref()).await {
                Ok(list) => {
                    let mut s = self.link.lock();
                    for p in list {
                        s.out.event(EventFrame::receipt(&p, None).text, None);
                    }
                }
                Err(e) => return self.work_failed(chat, e),
            },
        }
        self.link.lock().failing = None;
        Ok(())
    }

    /// Table work for `chat` could not be done. A database that is
    /// restarting or out of connections is retried, with backoff, for up to
    /// [`UNAVAILABLE_FOR`]; meanwhile nothing of the chat is written. Past
    /// that, or for any other error, the subscription ends and the client is
    /// told why: it never stays on unchecked.
    fn work_failed(&mut self, chat: Uuid, e: StoreError) -> Result<(), End> {
        let retry_in = {
            let mut s = self.link.lock();
            let (since, delay) = s.failing.unwrap_or((Instant::now(), RETRY_FIRST));
            let retry = e.is_transient() && since.elapsed() < UNAVAILABLE_FOR;
            s.failing = retry.then(|| (since, (delay * 2).min(RETRY_MAX)));
            retry.then_some(delay)
        };
        if let Some(delay) = retry_in {
            tracing::debug!(conn = self.conn.id, chat_id = %chat, error = %e, "reading the chat failed; retrying");
            self.retry_at = Some(tokio::time::Instant::now() + delay);
            return Ok(());
        }
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
        let mut s = self.link.lock();
        while let Some(reference) = s.owed.pong() {
            s.out.text(ServerFrame::Pong.encode(reference.as_ref()));
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
        if let Some(chat) = request.costly().filter(|c| !c.is_some_and(|c| self.answered_from_memory(&request, &c))) {
            if let Err(wait) = self.gw.parts.limits.request(self.identity.user_id) {
                let frame = ServerFrame::rate_limited("too many requests; try again later", chat, wait);
                self.answer(frame, &reference);
                return Ok(true);
            }
        }
        match request {
            Request::Ping => {
                // Answered once everything owed before it is written: the
                // live frames queued so far and the table work asked for.
                let mut s = self.link.lock();
                let queued = s.rx.len() as u64;
                s.owed.ping(reference, queued);
            }
            Request::Subscribe { chat_id, after_seq } => self.subscribe(chat_id, after_seq, &reference).await,
            Request::Unsubscribe { chat_id } => {
                self.end_sub(chat_id);
                self.answer(ServerFrame::Unsubscribed { chat_id, reason: None }, &reference);
            }
            Request::Auth { access_token } => match self.gw.parts.auth.verify(&access_token).await {
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
                if !self.link.lock().owed.is_subscribed(&chat_id) {
                    self.error(
                        ErrorCode::Forbidden,
                        "subscribe to the chat before typing in it",
                        Some(chat_id),
                        &reference,
                    );
                } else if self.gw.parts.limits.typing(user, chat_id) {
                    self.gw.parts.hub.typing(chat_id, user, self.conn.id);
                }
            }
            Request::Inbox { limit, before } => self.inbox_page(limit, before, &reference).await,
            Request::InboxOff => {
                self.inbox.stop(&self.gw.parts.inbox, &self.conn);
                self.answer(ServerFrame::Ok, &reference);
            }
            Request::Ack { chat_id, seq } | Request::Read { chat_id, seq } => {
                let read = matches!(request, Request::Read { .. });
                match self.gw.parts.membership.check(chat_id, self.identity.user_id).await {
                    Ok(true) if read => self.gw.parts.delivery.read(chat_id, self.identity.user_id, seq),
                    Ok(true) => self.gw.parts.delivery.delivered(chat_id, self.identity.user_id, seq),
                    Ok(false) => self.forbidden(chat_id, &reference),
                    Err(e) => self.store_error(e, Some(chat_id), &reference),
                }
            }
        }
        Ok(true)
    }

    /// An `ack` or `read` of a chat this connection is subscribed to, or
    /// whose membership is cached, costs no query: it is not rate limited
    /// (a client acking a burst of messages is not abusing anything).
    fn answered_from_memory(&self, request: &Request, chat: &Uuid) -> bool {
        matches!(request, Request::Ack { .. } | Request::Read { .. })
            && (self.link.lock().owed.is_subscribed(chat)
                || self.gw.parts.membership.cached(*chat, self.identity.user_id).is_some())
    }

    async fn subscribe(&mut self, chat: Uuid, after_seq: Option<i64>, reference: &Option<Value>) {
        let user = self.identity.user_id;
        let already = self.link.lock().owed.is_subscribed(&chat);
        if !already {
            // Register first, then check and read: whatever commits after the
            // read is certain to arrive through the hub.
            self.gw.parts.hub.subscribe(chat, &self.conn);
        }
        // Always asked of the database itself, never of a cache.
        let latest = match self.gw.parts.store.subscribe_check(chat, user).await {
            Ok(latest) => latest,
            Err(e) => {
                if !already {
                    self.gw.parts.hub.unsubscribe(chat, self.conn.id);
                }
                return self.store_error(e, Some(chat), reference);
            }
        };
        // Checked: it counts for presence now, and learns who is here.
        let online = self.gw.parts.hub.present(chat, &self.conn);
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
        // Streamed already but newer than the table showed: committed, not
        // yet visible (synchronous replication). Its frame may have passed
        // before this subscription was registered, so read until it shows.
        let newest = self.gw.parts.hub.newest(&chat).filter(|n| *n > latest);
        let mut s = self.link.lock();
        s.owed.start(chat, latest, after_seq);
        if let Some(newest) = newest {
            s.owed.expect(chat, newest);
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
        if let Err(wait) = self.gw.parts.limits.send(self.identity.user_id) {
            let frame = ServerFrame::rate_limited("too many sends; nothing was stored", Some(chat), wait);
            return self.answer(frame, reference);
        }
        match self.gw.parts.store.send(chat, self.identity.user_id, cgid, &content).await {
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
        match self.gw.parts.store.history(chat, self.identity.user_id, before, limit, HISTORY_BYTES).await {
            Ok((rows, has_more)) => {
                let messages = rows.iter().map(|r: &MessageRow| &r.body).collect();
                self.answer(ServerFrame::History { chat_id: chat, messages, has_more }, reference);
            }
            Err(e) => self.store_error(e, Some(chat), reference),
        }
    }

    /// `inbox`: the first page (starting the inbox) or the next one.
    async fn inbox_page(&mut self, limit: usize, before: Option<String>, reference: &Option<Value>) {
        let inbox = self.gw.parts.inbox.clone();
        let page = match &before {
            None => self.inbox.start(&inbox, &self.conn, limit, reference.as_ref()).await,
            Some(cursor) => self.inbox.more(&inbox, &self.conn, cursor, limit, reference.as_ref()).await,
        };
        match page {
            Ok(page) => self.link.lock().out.text(page.text),
            Err(InboxError::BadCursor) => {
                self.error(ErrorCode::BadRequest, "field before is not a cursor of this relay", None, reference)
            }
            Err(InboxError::Store(e)) => self.store_error(e, None, reference),
            Err(e) => {
                tracing::warn!(conn = self.conn.id, error = %e, "inbox page failed");
                let why = e.to_string();
                self.error(ErrorCode::Unavailable, &why, None, reference)
            }
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
        self.gw.parts.hub.unsubscribe(chat, self.conn.id);
        self.link.lock().owed.end(chat)
    }

    fn answer(&mut self, frame: ServerFrame, reference: &Option<Value>) {
        self.link.lock().out.text(frame.encode(reference.as_ref()));
    }
}

fn is_too_big(e: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e.into_inner().downcast::<WsError>() {
        Ok(e) => matches!(*e, WsError::Capacity(_)),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async fn returns, without calling it.
    fn future_size<A, B, F: std::future::Future>(_: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_connection_task_keeps_no_room_for_work_it_is_not_doing() {
        // Every idle connection holds this future. Request handlers and
        // table pages (database futures) are boxed while they run; inline,
        // they made it 3.8 KB of the 12.7 KiB an idle connection cost.
        let size = future_size(Session::run);
        eprintln!("connection task future: {size} bytes");
        assert!(size <= 2048, "the connection task's future is {size} bytes: box what a parked session does not await");
    }
}

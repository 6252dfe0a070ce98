//! One WebSocket connection.
//!
//! Per subscribed chat the session remembers the last message seq it wrote
//! (`last`). Live message frames at or below it are dropped (the seam between
//! backfill and live, or a replay); a frame that skips ahead first makes the
//! session fetch the missing seqs from the table. So what a client sees per
//! chat is contiguous, increasing and never repeated, whatever happened
//! upstream. While a backfill runs, frames arriving from the hub are stashed
//! and handled right after, in order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use chrono::{DateTime, Utc};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::auth::Identity;
use super::protocol::{self, ErrorCode, Request};
use super::Gateway;
use crate::hub::{ConnHandle, ConnId, EventFrame, FrameKind, KickReason, Kicked, Outbound};
use crate::metrics as m;
use crate::store::StoreError;

/// WebSocket close codes of the protocol.
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const TOO_BIG: u16 = 1009;
    pub const UNAUTHORIZED: u16 = 4001;
    pub const SLOW_CONSUMER: u16 = 4008;
}

/// Frames written between two flushes at most.
const BATCH: usize = 64;

/// The connection is over; stop processing.
struct Closed;

struct Sub {
    /// Highest message seq written for this chat.
    last: i64,
}

pub(super) struct Session {
    gw: Arc<Gateway>,
    id: ConnId,
    identity: Identity,
    handle: ConnHandle,
    rx: mpsc::Receiver<Outbound>,
    stash: VecDeque<Outbound>,
    sink: SplitSink<WebSocket, Message>,
    subs: HashMap<Uuid, Sub>,
    /// Highest seq written per chat, kept after unsubscribe: a resubscribe on
    /// this connection never repeats a message.
    written: HashMap<Uuid, i64>,
    /// Commit times of event frames fed since the last flush.
    unflushed: Vec<Option<DateTime<Utc>>>,
    unflushed_any: bool,
    last_heard: Instant,
}

enum Wake {
    Shutdown,
    Kicked,
    Expired,
    Out(Option<Outbound>),
    In(Option<Result<Message, axum::Error>>),
    Tick,
}

impl Session {
    pub(super) async fn run(gw: Arc<Gateway>, socket: WebSocket, identity: Identity) {
        let id = gw.next_conn_id();
        let (handle, rx, kicked) = ConnHandle::new(identity.user_id, gw.cfg.outbound_queue);
        let (sink, stream) = socket.split();
        let mut session = Session {
            gw,
            id,
            identity,
            handle,
            rx,
            stash: VecDeque::new(),
            sink,
            subs: HashMap::new(),
            written: HashMap::new(),
            unflushed: Vec::new(),
            unflushed_any: false,
            last_heard: Instant::now(),
        };
        m::ws_connected();
        tracing::debug!(conn = id, user = %identity.user_id, "connected");
        session.serve(stream, kicked).await;
        for chat in session.subs.keys() {
            session.gw.hub.unsubscribe(*chat, id);
        }
        m::ws_disconnected();
        tracing::debug!(conn = id, "disconnected");
    }

    async fn serve(&mut self, mut stream: SplitStream<WebSocket>, kicked: Kicked) {
        let shutdown = self.gw.shutdown.clone();
        let interval = self.gw.cfg.ping_interval;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let mut expiry = Box::pin(tokio::time::sleep(self.identity.remaining()));
        loop {
            // Frames stashed during a backfill go first, in order.
            while let Some(out) = self.stash.pop_front() {
                if self.on_outbound(out).await.is_err() {
                    return;
                }
            }
            let wake = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Wake::Shutdown,
                _ = kicked.token.cancelled() => Wake::Kicked,
                _ = &mut expiry => Wake::Expired,
                msg = stream.next() => Wake::In(msg),
                out = self.rx.recv() => Wake::Out(out),
                _ = ping.tick() => Wake::Tick,
            };
            let step = match wake {
                Wake::Shutdown => {
                    let _ = self.flush().await;
                    self.close(close::GOING_AWAY, "server shutting down").await;
                    return;
                }
                Wake::Kicked => {
                    if kicked.reason() == KickReason::SlowConsumer {
                        m::slow_consumer();
                        tracing::info!(conn = self.id, user = %self.identity.user_id, "slow consumer disconnected");
                    }
                    self.close(close::SLOW_CONSUMER, "slow consumer: reconnect and resubscribe with after_seq").await;
                    return;
                }
                Wake::Expired => {
                    let _ = self.flush().await;
                    self.close(close::UNAUTHORIZED, "token expired").await;
                    return;
                }
                Wake::Out(None) => return,
                Wake::Out(Some(out)) => self.on_outbound_batch(out).await,
                Wake::In(None) => return,
                Wake::In(Some(Ok(msg))) => {
                    self.last_heard = Instant::now();
                    // Events queued before this frame arrived are written before
                    // its answer: a `pong` is a barrier for what the hub had sent.
                    if self.drain_queue().await.is_err() {
                        return;
                    }
                    match self.on_incoming(msg, &mut expiry).await {
                        Ok(true) => Ok(()),
                        Ok(false) => return,
                        Err(Closed) => Err(Closed),
                    }
                }
                Wake::In(Some(Err(e))) => {
                    if is_too_big(e) {
                        self.close(close::TOO_BIG, "frame larger than the limit").await;
                    }
                    return;
                }
                Wake::Tick => {
                    if self.last_heard.elapsed() > interval * 2 {
                        tracing::debug!(conn = self.id, "peer silent for two ping intervals; dropping");
                        return;
                    }
                    self.sink.feed(Message::Ping(Default::default())).await.map_err(|_| Closed)
                }
            };
            if step.is_err() || self.flush().await.is_err() {
                return;
            }
        }
    }

    /// Handles one outbound item and then whatever else is already queued (up
    /// to a batch), so a burst costs one flush.
    async fn on_outbound_batch(&mut self, first: Outbound) -> Result<(), Closed> {
        self.on_outbound(first).await?;
        for _ in 1..BATCH {
            match self.rx.try_recv() {
                Ok(out) => self.on_outbound(out).await?,
                Err(_) => break,
            }
        }
        Ok(())
    }

    async fn drain_queue(&mut self) -> Result<(), Closed> {
        while let Some(out) = self.stash.pop_front() {
            self.on_outbound(out).await?;
        }
        while let Ok(out) = self.rx.try_recv() {
            self.on_outbound(out).await?;
        }
        Ok(())
    }

    async fn on_outbound(&mut self, out: Outbound) -> Result<(), Closed> {
        match out {
            Outbound::Event(frame) => self.on_event(frame).await,
            Outbound::Revoked(chat_id) => {
                if self.end_sub(chat_id) {
                    self.answer(json!({"type": "unsubscribed", "chat_id": chat_id, "reason": "forbidden"}), &None)
                        .await?;
                }
                Ok(())
            }
            Outbound::Resync => {
                let chats: Vec<Uuid> = self.subs.keys().copied().collect();
                for chat in chats {
                    match self.gw.membership.check(chat, self.identity.user_id).await {
                        Ok(false) => {
                            self.end_sub(chat);
                            self.answer(json!({"type": "unsubscribed", "chat_id": chat, "reason": "forbidden"}), &None)
                                .await?;
                        }
                        _ => self.catch_up(chat, None).await?,
                    }
                }
                Ok(())
            }
        }
    }

    async fn on_event(&mut self, frame: Arc<EventFrame>) -> Result<(), Closed> {
        let Some(last) = self.subs.get(&frame.chat_id).map(|s| s.last) else {
            return Ok(());
        };
        if frame.kind == FrameKind::Message {
            if frame.seq <= last {
                return Ok(()); // already written (backfill seam or replay)
            }
            if frame.seq > last + 1 {
                // Something is missing before it: take it from the table first.
                self.catch_up(frame.chat_id, Some(frame.seq)).await?;
                if self.subs.get(&frame.chat_id).is_none_or(|s| frame.seq <= s.last) {
                    return Ok(());
                }
            }
            if let Some(sub) = self.subs.get_mut(&frame.chat_id) {
                sub.last = frame.seq;
            }
            self.auto_deliver(&frame);
        }
        self.feed_event(frame.text.clone(), frame.commit_time).await
    }

    fn auto_deliver(&self, frame: &EventFrame) {
        if self.gw.cfg.auto_delivered && frame.sender_id != Some(self.identity.user_id) {
            self.gw.delivery.delivered(frame.chat_id, self.identity.user_id, frame.seq);
        }
    }

    /// Writes the chat's stored messages after its `last`, up to (not
    /// including) `before` when given, page by page. Hub frames arriving
    /// meanwhile are stashed.
    async fn catch_up(&mut self, chat: Uuid, before: Option<i64>) -> Result<(), Closed> {
        let page = self.gw.cfg.backfill_page;
        loop {
            let Some(last) = self.subs.get(&chat).map(|s| s.last) else {
                return Ok(());
            };
            let rows = match before {
                Some(b) => self.gw.store.messages_between(chat, last, b).await,
                None => self.gw.store.messages_after(chat, last, page).await,
            };
            let rows = match rows {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(conn = self.id, chat_id = %chat, error = %e, "backfill failed");
                    // Without the history we cannot keep the promise: end this
                    // subscription and say why; the client resubscribes.
                    self.end_sub(chat);
                    let frame = protocol::error(
                        ErrorCode::Unavailable,
                        "could not read the chat's history; subscribe again",
                        Some(chat),
                        &None,
                    );
                    return self.write(frame.into()).await;
                }
            };
            let full = before.is_none() && rows.len() as i64 >= page;
            for row in rows {
                if let Some(sub) = self.subs.get_mut(&chat) {
                    if row.seq <= sub.last {
                        continue;
                    }
                    sub.last = row.seq;
                }
                let frame = EventFrame::message(&row, None);
                self.auto_deliver(&frame);
                self.feed_event(frame.text, None).await?;
            }
            // Don't let the hub queue overflow while we read pages; but the
            // stash obeys the same bound as the queue: a client that needs
            // more than that is a slow consumer, not a reason to grow memory.
            while let Ok(out) = self.rx.try_recv() {
                self.stash.push_back(out);
            }
            if self.stash.len() > self.gw.cfg.outbound_queue.saturating_mul(4) {
                m::slow_consumer();
                self.close(close::SLOW_CONSUMER, "slow consumer: reconnect and resubscribe with after_seq").await;
                return Err(Closed);
            }
            self.flush().await?;
            if !full {
                return Ok(());
            }
        }
    }

    /// Handles a client frame; Ok(false) ends the session.
    async fn on_incoming(
        &mut self,
        msg: Message,
        expiry: &mut std::pin::Pin<Box<tokio::time::Sleep>>,
    ) -> Result<bool, Closed> {
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                self.write(
                    protocol::error(ErrorCode::BadRequest, "frames must be UTF-8 JSON text", None, &None).into(),
                )
                .await?;
                return Ok(true);
            }
            Message::Close(_) => return Ok(false),
            Message::Ping(_) | Message::Pong(_) => return Ok(true),
        };
        let (request, reference) = match protocol::parse(&text) {
            Ok(r) => r,
            Err(bad) => {
                self.write(protocol::error(ErrorCode::BadRequest, &bad.message, None, &bad.reference).into()).await?;
                return Ok(true);
            }
        };
        match request {
            Request::Ping => self.answer(json!({"type": "pong"}), &reference).await?,
            Request::Subscribe { chat_id, after_seq } => self.subscribe(chat_id, after_seq, &reference).await?,
            Request::Unsubscribe { chat_id } => {
                self.end_sub(chat_id);
                self.answer(json!({"type": "unsubscribed", "chat_id": chat_id}), &reference).await?;
            }
            Request::Auth { access_token } => match self.gw.auth.verify(&access_token).await {
                Ok(id) if id.user_id == self.identity.user_id => {
                    self.identity = id;
                    expiry.as_mut().reset(tokio::time::Instant::now() + id.remaining());
                    self.answer(json!({"type": "ok"}), &reference).await?;
                }
                Ok(_) => {
                    self.write(
                        protocol::error(ErrorCode::Unauthorized, "token is for another user", None, &reference).into(),
                    )
                    .await?;
                    let _ = self.flush().await;
                    self.close(close::UNAUTHORIZED, "token is for another user").await;
                    return Ok(false);
                }
                Err(why) => {
                    self.write(protocol::error(ErrorCode::Unauthorized, &why, None, &reference).into()).await?;
                    let _ = self.flush().await;
                    self.close(close::UNAUTHORIZED, &why).await;
                    return Ok(false);
                }
            },
            Request::Send { chat_id, client_generated_id, content } => {
                self.send(chat_id, client_generated_id, content, &reference).await?
            }
            Request::Ack { chat_id, seq } | Request::Read { chat_id, seq } => {
                let read = matches!(request, Request::Read { .. });
                match self.gw.membership.check(chat_id, self.identity.user_id).await {
                    Ok(true) if read => self.gw.delivery.read(chat_id, self.identity.user_id, seq),
                    Ok(true) => self.gw.delivery.delivered(chat_id, self.identity.user_id, seq),
                    Ok(false) => self.forbidden(chat_id, &reference).await?,
                    Err(e) => self.store_error(e, Some(chat_id), &reference).await?,
                }
            }
        }
        Ok(true)
    }

    async fn subscribe(&mut self, chat: Uuid, after_seq: Option<i64>, reference: &Option<Value>) -> Result<(), Closed> {
        let user = self.identity.user_id;
        match self.gw.membership.check(chat, user).await {
            Ok(true) => {}
            Ok(false) => return self.forbidden(chat, reference).await,
            Err(e) => return self.store_error(e, Some(chat), reference).await,
        }
        let already = self.subs.contains_key(&chat);
        if !already {
            // Register first, then read: whatever commits after the read is
            // certain to arrive through the hub.
            self.gw.hub.subscribe(chat, self.id, self.handle.clone());
            // Removed while we were checking? The WAL told the cache.
            if self.gw.membership.cached(chat, user) == Some(false) {
                self.gw.hub.unsubscribe(chat, self.id);
                return self.forbidden(chat, reference).await;
            }
        }
        let latest = match self.gw.store.latest_seq(chat).await {
            Ok(l) => l,
            Err(e) => {
                if !already {
                    self.gw.hub.unsubscribe(chat, self.id);
                }
                return self.store_error(e, Some(chat), reference).await;
            }
        };
        self.answer(json!({"type": "subscribed", "chat_id": chat, "latest_seq": latest}), reference).await?;
        if already {
            return Ok(());
        }
        let floor = self.written.get(&chat).copied().unwrap_or(i64::MIN);
        let start = after_seq.unwrap_or(latest).max(floor);
        self.subs.insert(chat, Sub { last: start });
        if after_seq.is_some() {
            self.catch_up(chat, None).await?;
        }
        Ok(())
    }

    async fn send(&mut self, chat: Uuid, cgid: Uuid, content: String, reference: &Option<Value>) -> Result<(), Closed> {
        if content.is_empty() {
            return self
                .write(protocol::error(ErrorCode::BadRequest, "content is empty", Some(chat), reference).into())
                .await;
        }
        if content.len() > self.gw.cfg.max_content_bytes {
            let why = format!("content is longer than {} bytes", self.gw.cfg.max_content_bytes);
            return self.write(protocol::error(ErrorCode::BadRequest, &why, Some(chat), reference).into()).await;
        }
        match self.gw.membership.check(chat, self.identity.user_id).await {
            Ok(true) => {}
            Ok(false) => return self.forbidden(chat, reference).await,
            Err(e) => return self.store_error(e, Some(chat), reference).await,
        }
        match self.gw.store.send(chat, self.identity.user_id, cgid, &content).await {
            Ok(o) => {
                let frame = json!({
                    "type": "sent", "chat_id": chat, "client_generated_id": cgid,
                    "id": o.id, "seq": o.seq, "duplicate": o.duplicate,
                });
                self.answer(frame, reference).await
            }
            Err(e) => self.store_error(e, Some(chat), reference).await,
        }
    }

    async fn forbidden(&mut self, chat: Uuid, reference: &Option<Value>) -> Result<(), Closed> {
        self.write(
            protocol::error(ErrorCode::Forbidden, "not a participant of this chat", Some(chat), reference).into(),
        )
        .await
    }

    async fn store_error(
        &mut self,
        e: StoreError,
        chat: Option<Uuid>,
        reference: &Option<Value>,
    ) -> Result<(), Closed> {
        let (code, msg) = match &e {
            StoreError::Unavailable(_) => (ErrorCode::Unavailable, "database unavailable, try again"),
            _ => (ErrorCode::Internal, "internal error"),
        };
        tracing::warn!(conn = self.id, error = %e, "request failed");
        self.write(protocol::error(code, msg, chat, reference).into()).await
    }

    /// Ends a subscription, however it ends: leaves the hub (a no-op when
    /// the hub already dropped it) and remembers the last seq written, so a
    /// later subscribe on this connection never repeats a message. Returns
    /// whether the chat was subscribed.
    fn end_sub(&mut self, chat: Uuid) -> bool {
        self.gw.hub.unsubscribe(chat, self.id);
        let Some(sub) = self.subs.remove(&chat) else { return false };
        let e = self.written.entry(chat).or_insert(sub.last);
        *e = (*e).max(sub.last);
        true
    }

    async fn answer(&mut self, frame: Value, reference: &Option<Value>) -> Result<(), Closed> {
        self.write(protocol::with_ref(frame, reference).into()).await
    }

    async fn write(&mut self, text: Utf8Bytes) -> Result<(), Closed> {
        self.unflushed_any = true;
        self.sink.feed(Message::Text(text)).await.map_err(|_| Closed)
    }

    async fn feed_event(&mut self, text: Utf8Bytes, commit_time: Option<DateTime<Utc>>) -> Result<(), Closed> {
        self.unflushed.push(commit_time);
        self.write(text).await
    }

    async fn flush(&mut self) -> Result<(), Closed> {
        if !self.unflushed_any {
            return Ok(());
        }
        self.sink.flush().await.map_err(|_| Closed)?;
        self.unflushed_any = false;
        if !self.unflushed.is_empty() {
            m::messages_sent(self.unflushed.len() as u64);
            let now = Utc::now();
            for t in self.unflushed.drain(..).flatten() {
                m::commit_to_send((now - t).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
            }
        }
        Ok(())
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let frame = Message::Close(Some(CloseFrame { code, reason: reason.into() }));
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.sink.send(frame).await;
            let _ = self.sink.close().await;
        })
        .await;
    }
}

fn is_too_big(e: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e.into_inner().downcast::<WsError>() {
        Ok(e) => matches!(*e, WsError::Capacity(_)),
        Err(_) => false,
    }
}

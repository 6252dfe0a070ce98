//! hub: who is subscribed to which chat, and fan-out.
//!
//! Every event is encoded to its JSON frame once ([`EventFrame`]) and the same
//! `Arc` is queued to every subscriber of its chat: nothing is serialised per
//! subscriber. Each connection has a bounded queue. When a queue is full,
//! [`Fanout::publish`] reports it as [`Blocked`] and the pipeline gives all
//! blocked connections, together, a short patience to make room ([`settle`]):
//! a fast client absorbing a burst (one big transaction) catches up; one that
//! does not is kicked (its session closes with 4008 and counts it) instead of
//! buffering without bound or holding everyone else back for longer.
//!
//! The pipeline talks to the hub only through the [`Fanout`] trait (publish,
//! revoke, resync). A deployment with several relay replicas can put a
//! broker behind that trait and feed each replica's local hub from it, without
//! touching the sessions.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::event::{MessageRow, Participant, RowBody};

/// Connection identifier, unique per process.
pub type ConnId = u64;

/// What kind of event a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Message,
    Update,
    Delete,
    Receipt,
}

/// One event, encoded once, shared by all its recipients.
#[derive(Debug)]
pub struct EventFrame {
    pub chat_id: Uuid,
    pub seq: i64,
    pub kind: FrameKind,
    /// Commit time of the transaction (None for rows read from the table).
    pub commit_time: Option<DateTime<Utc>>,
    /// For messages: the sender, so auto-delivered marking can skip them.
    pub sender_id: Option<Uuid>,
    pub text: Utf8Bytes,
}

impl EventFrame {
    pub fn message(row: &MessageRow, commit_time: Option<DateTime<Utc>>) -> EventFrame {
        Self::row(FrameKind::Message, "message", row, commit_time)
    }

    pub fn update(row: &MessageRow, commit_time: Option<DateTime<Utc>>) -> EventFrame {
        Self::row(FrameKind::Update, "update", row, commit_time)
    }

    fn row(kind: FrameKind, ty: &'static str, row: &MessageRow, commit_time: Option<DateTime<Utc>>) -> EventFrame {
        #[derive(serde::Serialize)]
        struct RowFrame<'a> {
            #[serde(rename = "type")]
            ty: &'static str,
            chat_id: Uuid,
            seq: i64,
            message: &'a RowBody,
        }
        let frame = RowFrame { ty, chat_id: row.chat_id, seq: row.seq, message: &row.body };
        // Serialising plain data into a String cannot fail.
        let text = serde_json::to_string(&frame).unwrap_or_default();
        EventFrame {
            chat_id: row.chat_id,
            seq: row.seq,
            kind,
            commit_time,
            sender_id: row.sender_id,
            text: text.into(),
        }
    }

    pub fn delete(chat_id: Uuid, id: Uuid, seq: i64, commit_time: DateTime<Utc>) -> EventFrame {
        let text = json!({"type": "delete", "chat_id": chat_id, "seq": seq, "id": id}).to_string();
        EventFrame {
            chat_id,
            seq,
            kind: FrameKind::Delete,
            commit_time: Some(commit_time),
            sender_id: None,
            text: text.into(),
        }
    }

    pub fn receipt(p: &Participant, commit_time: DateTime<Utc>) -> EventFrame {
        let text = json!({
            "type": "receipt", "chat_id": p.chat_id, "user_id": p.user_id,
            "delivered_seq": p.delivered_seq, "read_seq": p.read_seq,
        })
        .to_string();
        EventFrame {
            chat_id: p.chat_id,
            seq: p.delivered_seq.max(p.read_seq),
            kind: FrameKind::Receipt,
            commit_time: Some(commit_time),
            sender_id: None,
            text: text.into(),
        }
    }
}

/// What the hub queues to a connection.
#[derive(Debug, Clone)]
pub enum Outbound {
    Event(Arc<EventFrame>),
    /// The user was removed from the chat: say `unsubscribed` (forbidden), stop.
    Revoked(Uuid),
    /// The stream lost continuity (slot recreated, table truncated): re-check
    /// membership and catch up every subscription from the table.
    Resync,
}

/// Why a connection was kicked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KickReason {
    None = 0,
    SlowConsumer = 1,
}

/// The hub's handle on one connection.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub user_id: Uuid,
    tx: mpsc::Sender<Outbound>,
    kick: CancellationToken,
    reason: Arc<AtomicU8>,
}

impl ConnHandle {
    /// A handle plus the receiving side for the session.
    pub fn new(user_id: Uuid, queue: usize) -> (ConnHandle, mpsc::Receiver<Outbound>, Kicked) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let kick = CancellationToken::new();
        let reason = Arc::new(AtomicU8::new(KickReason::None as u8));
        (ConnHandle { user_id, tx, kick: kick.clone(), reason: reason.clone() }, rx, Kicked { token: kick, reason })
    }

    /// Queues without waiting; a full queue kicks the connection.
    fn offer(&self, out: Outbound) -> bool {
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.kick_slow();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn kick_slow(&self) {
        let slow = KickReason::SlowConsumer as u8;
        if self.reason.compare_exchange(0, slow, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.kick.cancel();
        }
    }
}

/// A frame that did not fit into a connection's queue.
pub struct Blocked {
    handle: ConnHandle,
    frame: Arc<EventFrame>,
}

/// Waits, for all blocked connections at once, up to `patience` for room;
/// those still full are kicked as slow consumers.
pub async fn settle(blocked: Vec<Blocked>, patience: std::time::Duration) {
    if blocked.is_empty() {
        return;
    }
    let waits = blocked.into_iter().map(|b| async move {
        if b.handle.kick.is_cancelled() {
            return;
        }
        if b.handle.tx.send_timeout(Outbound::Event(b.frame), patience).await.is_err() {
            b.handle.kick_slow();
        }
    });
    futures_util::future::join_all(waits).await;
}

/// The session's side of a kick.
#[derive(Debug, Clone)]
pub struct Kicked {
    pub token: CancellationToken,
    reason: Arc<AtomicU8>,
}

impl Kicked {
    pub fn reason(&self) -> KickReason {
        match self.reason.load(Ordering::Acquire) {
            1 => KickReason::SlowConsumer,
            _ => KickReason::None,
        }
    }
}

/// The pipeline's view of fan-out.
pub trait Fanout: Send + Sync {
    /// Whether anyone may want events of this chat (a broker-backed fan-out
    /// answers true); lets the pipeline skip encoding frames nobody reads.
    fn wants(&self, chat_id: &Uuid) -> bool;

    /// Queues a frame to every subscriber of its chat; returns the
    /// subscribers whose queue was full (hand them to [`settle`]).
    fn publish(&self, frame: Arc<EventFrame>) -> Vec<Blocked>;
    /// `user_id` left `chat_id`: cut their subscriptions to it.
    fn revoke(&self, chat_id: Uuid, user_id: Uuid);
    /// Tell every connection to resynchronise from the tables.
    fn resync_all(&self);
}

/// In-process subscriptions.
#[derive(Default)]
pub struct Hub {
    chats: DashMap<Uuid, Vec<(ConnId, ConnHandle)>>,
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    pub fn subscribe(&self, chat_id: Uuid, conn: ConnId, handle: ConnHandle) {
        let mut subs = self.chats.entry(chat_id).or_default();
        if !subs.iter().any(|(c, _)| *c == conn) {
            subs.push((conn, handle));
        }
    }

    pub fn unsubscribe(&self, chat_id: Uuid, conn: ConnId) {
        if let dashmap::Entry::Occupied(mut e) = self.chats.entry(chat_id) {
            e.get_mut().retain(|(c, _)| *c != conn);
            if e.get().is_empty() {
                e.remove();
            }
        }
    }

    /// Number of subscriptions to a chat.
    pub fn subscribers(&self, chat_id: &Uuid) -> usize {
        self.chats.get(chat_id).map(|s| s.len()).unwrap_or(0)
    }
}

impl Fanout for Hub {
    fn wants(&self, chat_id: &Uuid) -> bool {
        self.chats.contains_key(chat_id)
    }

    fn publish(&self, frame: Arc<EventFrame>) -> Vec<Blocked> {
        let mut blocked = Vec::new();
        if let Some(subs) = self.chats.get(&frame.chat_id) {
            for (_, h) in subs.iter() {
                match h.tx.try_send(Outbound::Event(frame.clone())) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        blocked.push(Blocked { handle: h.clone(), frame: frame.clone() })
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
        blocked
    }

    fn revoke(&self, chat_id: Uuid, user_id: Uuid) {
        if let dashmap::Entry::Occupied(mut e) = self.chats.entry(chat_id) {
            e.get_mut().retain(|(_, h)| {
                if h.user_id == user_id {
                    h.offer(Outbound::Revoked(chat_id));
                    false
                } else {
                    true
                }
            });
            if e.get().is_empty() {
                e.remove();
            }
        }
    }

    fn resync_all(&self) {
        let mut told = std::collections::HashSet::new();
        for subs in self.chats.iter() {
            for (conn, h) in subs.iter() {
                if told.insert(*conn) {
                    h.offer(Outbound::Resync);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn row(chat: Uuid, seq: i64) -> MessageRow {
        let mut json = Map::new();
        json.insert("seq".into(), json!(seq));
        MessageRow {
            id: Uuid::new_v4(),
            chat_id: chat,
            seq,
            sender_id: None,
            client_generated_id: None,
            status: None,
            body: RowBody::Json(json),
        }
    }

    #[tokio::test]
    async fn fan_out_shares_one_encoding_and_kicks_the_slow() {
        let hub = Hub::new();
        let chat = Uuid::new_v4();
        let (fast, mut fast_rx, fast_kick) = ConnHandle::new(Uuid::new_v4(), 4);
        let (slow, _slow_rx, slow_kick) = ConnHandle::new(Uuid::new_v4(), 2);
        hub.subscribe(chat, 1, fast);
        hub.subscribe(chat, 2, slow);
        for seq in 1..=3 {
            let blocked = hub.publish(Arc::new(EventFrame::message(&row(chat, seq), None)));
            assert_eq!(blocked.len(), if seq <= 2 { 0 } else { 1 }, "only the slow one is full, at the third");
            settle(blocked, std::time::Duration::from_millis(10)).await;
            if let Some(Outbound::Event(f)) = fast_rx.recv().await {
                assert_eq!(f.seq, seq);
                // Same allocation as every other subscriber got.
                assert_eq!(Arc::strong_count(&f), if seq <= 2 { 2 } else { 1 });
            } else {
                panic!("fast subscriber got nothing");
            }
        }
        assert!(slow_kick.token.is_cancelled());
        assert_eq!(slow_kick.reason(), KickReason::SlowConsumer);
        assert!(!fast_kick.token.is_cancelled());
    }

    #[tokio::test]
    async fn a_full_queue_that_drains_within_patience_is_not_kicked() {
        let hub = Hub::new();
        let chat = Uuid::new_v4();
        let (h, mut rx, kicked) = ConnHandle::new(Uuid::new_v4(), 1);
        hub.subscribe(chat, 1, h);
        assert!(hub.publish(Arc::new(EventFrame::message(&row(chat, 1), None))).is_empty());
        let blocked = hub.publish(Arc::new(EventFrame::message(&row(chat, 2), None)));
        assert_eq!(blocked.len(), 1);
        let reader = tokio::spawn(async move {
            let mut seqs = Vec::new();
            while let Some(Outbound::Event(f)) = rx.recv().await {
                seqs.push(f.seq);
                if seqs.len() == 2 {
                    break;
                }
            }
            seqs
        });
        settle(blocked, std::time::Duration::from_secs(30)).await;
        assert_eq!(reader.await.unwrap(), [1, 2]);
        assert!(!kicked.token.is_cancelled());
    }

    #[tokio::test]
    async fn revoke_cuts_only_that_user() {
        let hub = Hub::new();
        let chat = Uuid::new_v4();
        let alice = Uuid::new_v4();
        let (a, mut a_rx, _) = ConnHandle::new(alice, 8);
        let (b, _b_rx, _) = ConnHandle::new(Uuid::new_v4(), 8);
        hub.subscribe(chat, 1, a);
        hub.subscribe(chat, 2, b);
        hub.revoke(chat, alice);
        assert!(matches!(a_rx.recv().await, Some(Outbound::Revoked(c)) if c == chat));
        assert_eq!(hub.subscribers(&chat), 1);
        assert!(hub.publish(Arc::new(EventFrame::message(&row(chat, 1), None))).is_empty());
        assert!(a_rx.try_recv().is_err(), "nothing after revocation");
    }
}

//! hub: who is subscribed to which chat, and fan-out that never waits.
//!
//! Every event is encoded to its JSON frame once ([`EventFrame`]) and the same
//! `Arc` is offered to every subscriber of its chat: nothing is serialised per
//! subscriber. A connection ([`Conn`]) whose writer can take the frame at
//! once ([`Direct`]: the gateway's link, when nothing is ahead of the frame)
//! has it written right there, on the publisher's thread; otherwise the
//! frame goes into the connection's bounded queue for its session.
//! Offering a frame never blocks: when a connection's queue is full, the
//! subscription is *behind* ([`crate::catchup::Behind`]): its live frames are dropped, and the
//! few facts a later table read could not recover are noted (which deletes
//! it missed, from which seq it missed updates, whose receipts). The session
//! catches the subscription up from the table once its socket has room, then
//! takes live frames again. So one slow reader costs the pipeline nothing,
//! and no other connection or chat waits for it.
//!
//! Revocations and resynchronisation requests travel beside the queue (they
//! are never dropped and never wait behind frames).
//!
//! The hub also keeps the live part of a chat that is not in the table:
//! *presence* (per chat, how many checked subscriptions each user holds;
//! the first and the last one are announced) and *typing* (offered like an
//! event, but never remembered when a queue is full). Presence changes
//! travel beside the queue too, coalesced per chat and user, so a reader
//! that is behind gets the latest state, not a history of flickers.
//!
//! By job: this file holds the chats and their subscribers; [`conn`] one
//! connection's queue and what travels beside it; [`presence`] who is
//! online and typing, here and on other replicas. The pipeline reaches the
//! hub only through the local fan-out (`fanout::LocalFanout`).

mod conn;
mod presence;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use lru::LruCache;
use rustc_hash::FxBuildHasher;
use uuid::Uuid;

pub use conn::{Conn, ConnId, Direct, Offered};
pub use presence::PresenceOut;

use crate::protocol::EventFrame;
use presence::Shared;

/// One subscription in the hub: the connection, and whether its membership
/// was checked (only then does it count for presence and hear of it).
struct Subscription {
    conn: Arc<Conn>,
    present: bool,
}

/// A chat's subscribers, by connection (O(1) to add and remove: a mass
/// disconnect from a big chat stays linear), and its presence: checked
/// subscriptions per user.
#[derive(Default)]
struct ChatSubs {
    conns: HashMap<ConnId, Subscription, FxBuildHasher>,
    online: HashMap<Uuid, u32, FxBuildHasher>,
}

impl ChatSubs {
    /// Removes a subscription; a user's last checked one ends their presence.
    fn remove(&mut self, chat_id: Uuid, conn: ConnId, shared: &Shared) -> Option<Subscription> {
        let sub = self.conns.remove(&conn)?;
        if sub.present {
            self.leave(chat_id, sub.conn.user_id, shared);
        }
        Some(sub)
    }

    /// Connections of the checked subscriptions (those that count for
    /// presence and hear of it), but `except`.
    fn checked(&self, except: Option<ConnId>) -> impl Iterator<Item = &Arc<Conn>> {
        self.conns.iter().filter(move |(id, s)| s.present && Some(**id) != except).map(|(_, s)| &s.conn)
    }
}

/// Frames held for a write wait at most this long, even while the
/// publisher keeps publishing (see [`Hub::flush`]).
pub const HOLD_AT_MOST: Duration = Duration::from_millis(10);

/// Up to this many connections, [`Hub::flush`] writes on the caller's thread.
pub const FLUSH_INLINE: usize = 128;

/// Connections holding frames for [`Hub::flush`].
#[derive(Default)]
struct Held {
    conns: Vec<Arc<Conn>>,
    since: Option<Instant>,
}

/// Chats whose newest streamed seq is remembered, at most (least recently
/// streamed first out).
pub const NEWEST_CAPACITY: usize = 100_000;

/// In-process subscriptions.
pub struct Hub {
    chats: DashMap<Uuid, ChatSubs, FxBuildHasher>,
    shared: Shared,
    /// The newest message seq streamed per chat, subscribed or not: a
    /// subscription that starts while that message is committed but not
    /// visible yet (synchronous replication) knows to wait for it.
    newest: Mutex<LruCache<Uuid, i64>>,
    held: Mutex<Held>,
    /// Parts a big flush is shared out in: the cores.
    writers: usize,
}

impl Default for Hub {
    fn default() -> Hub {
        let cap = NonZeroUsize::new(NEWEST_CAPACITY).unwrap_or(NonZeroUsize::MIN);
        Hub {
            chats: DashMap::default(),
            shared: Shared::default(),
            newest: Mutex::new(LruCache::new(cap)),
            held: Mutex::default(),
            writers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    /// A message with `seq` was committed in `chat_id` (streamed from the WAL).
    pub fn committed(&self, chat_id: Uuid, seq: i64) {
        if let Ok(mut newest) = self.newest.lock() {
            match newest.get_mut(&chat_id) {
                Some(s) => *s = (*s).max(seq),
                None => {
                    newest.put(chat_id, seq);
                }
            }
        }
    }

    /// The newest message seq streamed for the chat, when remembered.
    pub fn newest(&self, chat_id: &Uuid) -> Option<i64> {
        self.newest.lock().ok()?.peek(chat_id).copied()
    }

    /// Registers a connection for a chat's events (its membership is checked
    /// afterwards: see [`Hub::present`]).
    pub fn subscribe(&self, chat_id: Uuid, conn: &Arc<Conn>) {
        self.chats
            .entry(chat_id)
            .or_default()
            .conns
            .entry(conn.id)
            .or_insert_with(|| Subscription { conn: conn.clone(), present: false });
    }

    pub fn unsubscribe(&self, chat_id: Uuid, conn: ConnId) {
        if let dashmap::Entry::Occupied(mut e) = self.chats.entry(chat_id) {
            e.get_mut().remove(chat_id, conn, &self.shared);
            if e.get().conns.is_empty() {
                e.remove();
            }
        }
    }

    /// Number of subscriptions to a chat.
    pub fn subscribers(&self, chat_id: &Uuid) -> usize {
        self.chats.get(chat_id).map(|s| s.conns.len()).unwrap_or(0)
    }
}

impl Hub {
    /// Whether any connection is subscribed to the chat.
    pub fn wants(&self, chat_id: &Uuid) -> bool {
        self.chats.contains_key(chat_id)
    }

    /// Offers a frame to every subscriber of its chat. Never waits.
    pub fn publish(&self, frame: &Arc<EventFrame>) {
        let mut held = Vec::new();
        if let Some(subs) = self.chats.get(&frame.chat_id) {
            for s in subs.conns.values() {
                if s.conn.offer(frame) {
                    held.push(s.conn.clone());
                }
            }
        }
        let overdue = {
            let Ok(mut h) = self.held.lock() else { return };
            if !held.is_empty() {
                h.since.get_or_insert_with(Instant::now);
                h.conns.append(&mut held);
            }
            h.since.is_some_and(|t| t.elapsed() >= HOLD_AT_MOST)
        };
        if overdue {
            self.flush();
        }
    }

    /// The publisher has nothing more at hand: writes what the connections
    /// held of what it published (frames that arrived together leave in one
    /// write per socket).
    ///
    /// The writes are shared out: past [`FLUSH_INLINE`] connections, each
    /// worker thread of the runtime gets a part, and the publisher goes on
    /// with the next event meanwhile.
    pub fn flush(&self) {
        let mut conns = match self.held.lock() {
            Ok(mut h) => {
                h.since = None;
                std::mem::take(&mut h.conns)
            }
            Err(_) => return,
        };
        if conns.len() > FLUSH_INLINE && self.writers > 1 {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let part = conns.len().div_ceil(self.writers).max(FLUSH_INLINE);
                while conns.len() > part {
                    let rest = conns.split_off(conns.len() - part);
                    rt.spawn(async move {
                        for c in rest {
                            c.flush();
                        }
                    });
                }
            }
        }
        for c in conns {
            c.flush();
        }
    }

    /// `user_id` left `chat_id`: cuts their subscriptions to it.
    pub fn revoke(&self, chat_id: Uuid, user_id: Uuid) {
        if let dashmap::Entry::Occupied(mut e) = self.chats.entry(chat_id) {
            let subs = e.get_mut();
            let gone: Vec<ConnId> =
                subs.conns.iter().filter(|(_, s)| s.conn.user_id == user_id).map(|(id, _)| *id).collect();
            for id in gone {
                if let Some(s) = subs.remove(chat_id, id, &self.shared) {
                    s.conn.revoke(chat_id);
                }
            }
            if e.get().conns.is_empty() {
                e.remove();
            }
        }
    }

    /// Tells every connection to resynchronise from the tables.
    pub fn resync_all(&self) {
        let mut told = HashSet::new();
        for subs in self.chats.iter() {
            for conn in subs.conns.values().map(|s| &s.conn) {
                if told.insert(conn.id) {
                    conn.resync();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::conn::MAX_REMEMBERED_DELETES;
    use super::presence::ONLINE_CAP;
    use super::*;
    use crate::event::{MessageRow, Participant, RowBody};
    use axum::extract::ws::Utf8Bytes;
    use serde_json::{json, Map};
    use std::sync::atomic::Ordering::SeqCst;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

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

    fn msg(chat: Uuid, seq: i64) -> Arc<EventFrame> {
        Arc::new(EventFrame::message(&row(chat, seq), None))
    }

    /// A writer that takes frames while `open`, else leaves them to the
    /// queue; it holds what it takes until flushed.
    #[derive(Default)]
    struct Writer {
        open: AtomicBool,
        held: AtomicBool,
        taken: Mutex<Vec<i64>>,
        flushes: AtomicUsize,
        /// Side frames taken, in order.
        side: Mutex<Vec<String>>,
    }

    impl Direct for Writer {
        fn offer(&self, frame: &Arc<EventFrame>, hold: bool, queue: &mut dyn FnMut()) -> Offered {
            if !self.open.load(SeqCst) {
                queue();
                return Offered::Queued;
            }
            self.taken.lock().unwrap().push(frame.seq);
            match hold && !self.held.swap(true, SeqCst) {
                true => Offered::Held,
                false => Offered::Taken,
            }
        }

        fn flush(&self) {
            self.held.store(false, SeqCst);
            self.flushes.fetch_add(1, SeqCst);
        }

        fn offer_side(&self, text: &Utf8Bytes, waiting: &mut dyn FnMut() -> bool) -> Offered {
            if !self.open.load(SeqCst) || waiting() {
                return Offered::Queued;
            }
            self.side.lock().unwrap().push(text.to_string());
            Offered::Held
        }
    }

    #[tokio::test]
    async fn a_direct_writer_takes_frames_past_the_queue_and_counts_them_for_catch_up() {
        let hub = Hub::new();
        let chat = Uuid::new_v4();
        let (c, mut rx) = Conn::new(1, Uuid::new_v4(), 2);
        let writer = Arc::new(Writer::default());
        writer.open.store(true, SeqCst);
        c.set_direct(writer.clone());
        hub.subscribe(chat, &c);
        for seq in 1..=5 {
            hub.publish(&msg(chat, seq));
        }
        // Taken at once: nothing queued, nothing behind, even past the queue's
        // size; held until the publisher flushes, then written in one go.
        assert_eq!(*writer.taken.lock().unwrap(), vec![1, 2, 3, 4, 5]);
        assert!(rx.try_recv().is_err());
        assert!(!c.has_behind());
        assert_eq!(writer.flushes.load(SeqCst), 0);
        hub.flush();
        assert_eq!(writer.flushes.load(SeqCst), 1);
        hub.flush();
        assert_eq!(writer.flushes.load(SeqCst), 1, "nothing held, nothing flushed");
        // Refused: queued while there is room, then behind.
        writer.open.store(false, SeqCst);
        for seq in 6..=8 {
            hub.publish(&msg(chat, seq));
        }
        assert!(c.has_behind());
        // The catch-up waits for the 7 frames handed over before the drop
        // (5 taken directly, 2 queued), not for the 2 queued alone.
        assert!(c.take(6, true).behind.is_empty());
        assert_eq!(c.take(7, true).behind[&chat].after, 7);
        assert_eq!((rx.recv().await.unwrap().seq, rx.recv().await.unwrap().seq), (6, 7));
    }

    #[test]
    fn an_inbox_frame_is_written_directly_unless_older_ones_wait_beside_the_queue() {
        let (c, _rx) = Conn::new(1, Uuid::new_v4(), 2);
        let writer = Arc::new(Writer::default());
        c.set_direct(writer.clone());
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let texts = |v: Vec<Utf8Bytes>| v.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        // The session is busy: the frame waits beside the queue...
        assert!(!c.inbox_frame(a, Utf8Bytes::from_static("a1")), "nothing to flush");
        writer.open.store(true, SeqCst);
        // ... and later ones wait behind it, though the writer would take
        // them now (a newer summary of a chat must not precede an older one).
        c.inbox_frame(b, Utf8Bytes::from_static("b1"));
        c.inbox_frame(a, Utf8Bytes::from_static("a2"));
        assert!(writer.side.lock().unwrap().is_empty());
        assert_eq!(texts(c.take(0, true).inbox), ["b1", "a2"]);
        // Nothing waits: written at once, nothing left to take.
        assert!(c.inbox_frame(a, Utf8Bytes::from_static("a3")), "held: the caller owes a flush");
        assert_eq!(*writer.side.lock().unwrap(), ["a3"]);
        assert!(c.take(0, true).inbox.is_empty());
    }

    #[tokio::test]
    async fn fan_out_shares_one_encoding_and_a_full_queue_falls_behind_without_waiting() {
        let hub = Hub::new();
        let (chat, quiet) = (Uuid::new_v4(), Uuid::new_v4());
        let (fast, mut fast_rx) = Conn::new(1, Uuid::new_v4(), 8);
        let (slow, mut slow_rx) = Conn::new(2, Uuid::new_v4(), 2);
        hub.subscribe(chat, &fast);
        hub.subscribe(chat, &slow);
        hub.subscribe(quiet, &slow);
        for seq in 1..=5 {
            hub.publish(&msg(chat, seq)); // returns at once, whatever the queues
            let f = fast_rx.recv().await.unwrap();
            assert_eq!(f.seq, seq);
        }
        // The slow connection took 2; chat fell behind at seq 3.
        assert!(slow.has_behind());
        // Nothing is taken before the two queued frames are.
        assert!(slow.take(0, true).behind.is_empty());
        // Its other chat is behind too now (the queue is full for everyone)...
        hub.publish(&msg(quiet, 1));
        assert_eq!(slow_rx.recv().await.unwrap().seq, 1);
        assert_eq!(slow_rx.recv().await.unwrap().seq, 2);
        let ctl = slow.take(2, true);
        assert_eq!(ctl.behind.keys().copied().collect::<HashSet<_>>(), HashSet::from([chat, quiet]));
        // ... and once taken, live frames are queued again.
        hub.publish(&msg(chat, 6));
        assert_eq!(slow_rx.recv().await.unwrap().seq, 6);
        assert!(!slow.has_behind());
    }

    #[tokio::test]
    async fn behind_notes_what_a_table_read_cannot_recover() {
        let hub = Hub::new();
        let chat = Uuid::new_v4();
        let (c, _rx) = Conn::new(1, Uuid::new_v4(), 1);
        hub.subscribe(chat, &c);
        hub.publish(&msg(chat, 1)); // fills the queue
        hub.publish(&msg(chat, 2));
        hub.publish(&Arc::new(EventFrame::update(&row(chat, 1), None)));
        let gone = Uuid::new_v4();
        hub.publish(&Arc::new(EventFrame::delete(chat, gone, 1, None)));
        let who = Uuid::new_v4();
        let p = Participant { chat_id: chat, user_id: who, delivered_seq: 2, read_seq: 1 };
        hub.publish(&Arc::new(EventFrame::receipt(&p, None)));
        let b = c.take(1, true).behind.remove(&chat).unwrap();
        assert_eq!(b.after, 1);
        assert_eq!(b.updates_from, Some(1));
        assert_eq!(b.deletes, vec![(1, gone)]);
        assert_eq!(b.receipts, HashSet::from([who]));
        assert!(!b.all_receipts);
    }

    #[tokio::test]
    async fn too_many_remembered_deletes_overflow_the_connection() {
        let hub = Hub::new();
        let chat = Uuid::new_v4();
        let (c, _rx) = Conn::new(1, Uuid::new_v4(), 1);
        hub.subscribe(chat, &c);
        hub.publish(&msg(chat, 1));
        for seq in 0..=MAX_REMEMBERED_DELETES as i64 {
            hub.publish(&Arc::new(EventFrame::delete(chat, Uuid::new_v4(), seq, None)));
        }
        assert!(c.take(0, true).overflow);
    }

    #[tokio::test]
    async fn revoke_cuts_only_that_user_and_forgets_their_backlog() {
        let hub = Hub::new();
        let chat = Uuid::new_v4();
        let alice = Uuid::new_v4();
        let (a, mut a_rx) = Conn::new(1, alice, 1);
        let (b, _b_rx) = Conn::new(2, Uuid::new_v4(), 8);
        hub.subscribe(chat, &a);
        hub.subscribe(chat, &b);
        hub.publish(&msg(chat, 1));
        hub.publish(&msg(chat, 2)); // alice falls behind
        hub.revoke(chat, alice);
        assert_eq!(hub.subscribers(&chat), 1);
        hub.publish(&msg(chat, 3));
        assert_eq!(a_rx.recv().await.unwrap().seq, 1);
        assert!(a_rx.try_recv().is_err(), "nothing after revocation");
        let ctl = a.take(1, true);
        assert_eq!(ctl.revoked, vec![chat]);
        assert!(ctl.behind.is_empty(), "no catch-up for a revoked chat");
    }

    #[tokio::test]
    async fn resync_reaches_each_connection_once() {
        let hub = Hub::new();
        let (c, _rx) = Conn::new(1, Uuid::new_v4(), 4);
        hub.subscribe(Uuid::new_v4(), &c);
        hub.subscribe(Uuid::new_v4(), &c);
        hub.resync_all();
        assert!(c.take(0, true).resync);
        assert!(!c.take(0, true).resync);
    }

    /// Presence changes wait beside the queue, coalesced, until the session
    /// has room for them: a reader that is behind holds one entry per user,
    /// not a frame per change.
    #[tokio::test]
    async fn presence_waits_coalesced_until_taken_with_room() {
        let hub = Hub::new();
        let chat = Uuid::new_v4();
        let (a, _a_rx) = Conn::new(1, Uuid::new_v4(), 4);
        hub.subscribe(chat, &a);
        hub.present(chat, &a);
        let bob = Uuid::new_v4();
        for id in 0..50 {
            let (b, _rx) = Conn::new(100 + id, bob, 4);
            hub.subscribe(chat, &b);
            hub.present(chat, &b);
            hub.unsubscribe(chat, 100 + id);
        }
        assert!(a.side_waiting());
        assert!(a.take(0, false).presence.is_empty(), "no room: nothing taken");
        assert!(a.side_waiting());
        assert_eq!(a.take(0, true).presence, vec![(chat, bob, false)], "one entry, the latest");
        assert!(!a.side_waiting());
    }

    #[tokio::test]
    async fn presence_counts_users_once_coalesces_and_caps_the_snapshot() {
        let hub = Hub::new();
        let chat = Uuid::new_v4();
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let (a, _a_rx) = Conn::new(1, alice, 4);
        hub.subscribe(chat, &a);
        assert_eq!(hub.present(chat, &a).users, vec![alice]);
        // Bob's tab comes, goes and comes again before Alice's session looks:
        // she is told once, of the latest state.
        let (b1, _b1_rx) = Conn::new(2, bob, 4);
        hub.subscribe(chat, &b1);
        hub.present(chat, &b1);
        hub.unsubscribe(chat, 2);
        let (b2, _b2_rx) = Conn::new(3, bob, 4);
        hub.subscribe(chat, &b2);
        let snap = hub.present(chat, &b2);
        assert_eq!(snap.users[0], bob, "the newcomer is listed first");
        assert_eq!(snap.users.iter().copied().collect::<HashSet<_>>(), HashSet::from([alice, bob]));
        assert_eq!(a.take(0, true).presence, vec![(chat, bob, true)]);
        // A subscription not yet checked is neither counted nor told.
        let (c, _c_rx) = Conn::new(4, Uuid::new_v4(), 4);
        hub.subscribe(chat, &c);
        assert_eq!(hub.online(&chat), 2);
        hub.unsubscribe(chat, 3);
        assert!(c.take(0, true).presence.is_empty());
        assert_eq!(a.take(0, true).presence, vec![(chat, bob, false)]);
        // Past the cap the snapshot says so and still lists the newcomer.
        let mut keep = Vec::new();
        for id in 10..(10 + ONLINE_CAP as u64) {
            let (conn, rx) = Conn::new(id, Uuid::new_v4(), 1);
            hub.subscribe(chat, &conn);
            hub.present(chat, &conn);
            keep.push((conn, rx));
        }
        let (last, _rx) = Conn::new(5, Uuid::new_v4(), 1);
        let snap = hub.present(chat, &last);
        assert!(snap.truncated);
        assert_eq!(snap.users.len(), ONLINE_CAP);
        assert_eq!(snap.users[0], last.user_id);
    }
}

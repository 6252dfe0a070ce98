//! hub: who is subscribed to which chat, and fan-out that never waits.
//!
//! Every event is encoded to its JSON frame once ([`EventFrame`]) and the same
//! `Arc` is offered to every subscriber of its chat: nothing is serialised per
//! subscriber. Each connection ([`Conn`]) has a bounded queue of frames.
//! Offering a frame never blocks: when a connection's queue is full, the
//! subscription is *behind* ([`Behind`]): its live frames are dropped, and the
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
//! The pipeline talks to the hub only through the [`Fanout`] trait (publish,
//! revoke, resync). A deployment with several relay replicas puts a broker
//! behind that trait and feeds each replica's local hub from it, without
//! touching the sessions.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use rustc_hash::FxBuildHasher;
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

use crate::catchup::Behind;
use crate::protocol::EventFrame;

/// Connection identifier, unique per process.
pub type ConnId = u64;

/// Deletes remembered for one connection's behind subscriptions, at most:
/// about 2.4 MB. Past it the connection is closed with 4008 (its unsent data
/// passed the memory bound) and resumes with `after_seq`.
pub const MAX_REMEMBERED_DELETES: usize = 100_000;
/// User ids listed in `subscribed.online`, at most; beyond it the frame says
/// `online_truncated` and lists this many.
pub const ONLINE_CAP: usize = 1000;

/// Requests beside the frame queue, taken by the session.
#[derive(Debug, Default)]
pub struct Control {
    /// The user was removed from these chats: say `unsubscribed` (forbidden).
    pub revoked: Vec<Uuid>,
    /// The stream lost continuity (slot recreated, table truncated): check
    /// membership again and catch every subscription up from the table.
    pub resync: bool,
    /// Behind subscriptions whose earlier frames the session has taken.
    pub behind: HashMap<Uuid, Behind>,
    /// Too much was remembered for this connection: close it (4008).
    pub overflow: bool,
    /// Presence changes, latest state per (chat, user).
    pub presence: Vec<(Uuid, Uuid, bool)>,
}

#[derive(Default)]
struct ControlState {
    revoked: Vec<Uuid>,
    resync: bool,
    behind: HashMap<Uuid, Behind>,
    deletes_left: usize,
    overflow: bool,
    presence: HashMap<(Uuid, Uuid), bool, FxBuildHasher>,
}

/// The hub's side of one connection: its queue, and what travels beside it.
pub struct Conn {
    pub id: ConnId,
    pub user_id: Uuid,
    queue: mpsc::Sender<Arc<EventFrame>>,
    /// Frames queued so far (written by the pipeline only).
    enqueued: AtomicU64,
    /// Chats currently behind: the fast path of [`Conn::offer`] skips the lock at 0.
    behind_chats: AtomicUsize,
    control: Mutex<ControlState>,
    /// Signalled when something was put into `control`.
    pub wake: Notify,
}

impl Conn {
    /// A connection's hub side plus the receiving end of its queue.
    pub fn new(id: ConnId, user_id: Uuid, queue: usize) -> (Arc<Conn>, mpsc::Receiver<Arc<EventFrame>>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let conn = Conn {
            id,
            user_id,
            queue: tx,
            enqueued: AtomicU64::new(0),
            behind_chats: AtomicUsize::new(0),
            control: Mutex::new(ControlState { deletes_left: MAX_REMEMBERED_DELETES, ..Default::default() }),
            wake: Notify::new(),
        };
        (Arc::new(conn), rx)
    }

    /// Queues a frame without ever waiting; when the queue is full the
    /// frame's subscription falls behind.
    pub fn offer(&self, frame: &Arc<EventFrame>) {
        if self.behind_chats.load(Ordering::Acquire) > 0 {
            if let Ok(mut ctl) = self.control.lock() {
                let ControlState { behind, deletes_left, overflow, .. } = &mut *ctl;
                if let Some(b) = behind.get_mut(&frame.chat_id) {
                    if !b.note(frame, deletes_left) {
                        *overflow = true;
                        drop(ctl);
                        self.wake.notify_one();
                    }
                    return;
                }
            }
        }
        match self.queue.try_send(frame.clone()) {
            Ok(()) => {
                self.enqueued.fetch_add(1, Ordering::Release);
            }
            Err(mpsc::error::TrySendError::Full(_)) => self.fall_behind(frame),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Queues an ephemeral frame (typing) if there is room; never falls
    /// behind for it and never remembers it.
    fn offer_ephemeral(&self, frame: &Arc<EventFrame>) {
        if self.queue.try_send(frame.clone()).is_ok() {
            self.enqueued.fetch_add(1, Ordering::Release);
        }
    }

    /// A user's presence in a chat changed (coalesced with any change not
    /// taken yet).
    fn presence(&self, chat_id: Uuid, user_id: Uuid, online: bool) {
        if let Ok(mut ctl) = self.control.lock() {
            ctl.presence.insert((chat_id, user_id), online);
        }
        self.wake.notify_one();
    }

    /// Forgets presence changes of a chat not taken yet (a fresh snapshot
    /// supersedes them).
    fn forget_presence(&self, chat_id: Uuid) {
        if let Ok(mut ctl) = self.control.lock() {
            if !ctl.presence.is_empty() {
                ctl.presence.retain(|(c, _), _| *c != chat_id);
            }
        }
    }

    fn fall_behind(&self, frame: &EventFrame) {
        let Ok(mut ctl) = self.control.lock() else { return };
        let after = self.enqueued.load(Ordering::Acquire);
        let ControlState { behind, deletes_left, overflow, .. } = &mut *ctl;
        let b = behind.entry(frame.chat_id).or_insert_with(|| {
            self.behind_chats.fetch_add(1, Ordering::AcqRel);
            Behind { after, ..Default::default() }
        });
        if !b.note(frame, deletes_left) {
            *overflow = true;
        }
        drop(ctl);
        self.wake.notify_one();
    }

    fn revoke(&self, chat_id: Uuid) {
        if let Ok(mut ctl) = self.control.lock() {
            if let Some(b) = ctl.behind.remove(&chat_id) {
                self.behind_chats.fetch_sub(1, Ordering::AcqRel);
                ctl.deletes_left += b.deletes.len();
            }
            ctl.revoked.push(chat_id);
        }
        self.wake.notify_one();
    }

    fn resync(&self) {
        if let Ok(mut ctl) = self.control.lock() {
            ctl.resync = true;
        }
        self.wake.notify_one();
    }

    /// True when behind subscriptions are waiting to be taken.
    pub fn has_behind(&self) -> bool {
        self.behind_chats.load(Ordering::Acquire) > 0
    }

    /// Takes what is pending beside the queue. Behind subscriptions are taken
    /// only once the session has taken (`dequeued`) every frame queued before
    /// they fell behind, so nothing older overtakes the catch-up; from the
    /// moment one is taken, its live frames are queued again.
    pub fn take(&self, dequeued: u64) -> Control {
        let Ok(mut ctl) = self.control.lock() else { return Control::default() };
        // Taken, not drained: an idle connection keeps no table behind.
        let presence = std::mem::take(&mut ctl.presence).into_iter().map(|((c, u), online)| (c, u, online)).collect();
        let ready: Vec<Uuid> = ctl.behind.iter().filter(|(_, b)| b.after <= dequeued).map(|(c, _)| *c).collect();
        let mut behind = HashMap::with_capacity(ready.len());
        for chat in ready {
            if let Some(b) = ctl.behind.remove(&chat) {
                self.behind_chats.fetch_sub(1, Ordering::AcqRel);
                ctl.deletes_left += b.deletes.len();
                behind.insert(chat, b);
            }
        }
        Control {
            revoked: std::mem::take(&mut ctl.revoked),
            resync: std::mem::take(&mut ctl.resync),
            behind,
            overflow: ctl.overflow,
            presence,
        }
    }
}

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

    fn leave(&mut self, chat_id: Uuid, user_id: Uuid, shared: &Shared) {
        if let Some(n) = self.online.get_mut(&user_id) {
            *n -= 1;
            if *n == 0 {
                self.online.remove(&user_id);
                shared.send(PresenceOut::Changed(chat_id, user_id, false));
                if !shared.remote_has(chat_id, user_id) {
                    self.announce(chat_id, user_id, false, None);
                }
            }
        }
    }

    /// Tells every checked subscriber (but `except`) of a presence change.
    fn announce(&self, chat_id: Uuid, user_id: Uuid, online: bool, except: Option<ConnId>) {
        for conn in self.checked(except) {
            conn.presence(chat_id, user_id, online);
        }
    }

    /// Connections of the checked subscriptions (those that count for
    /// presence and hear of it), but `except`.
    fn checked(&self, except: Option<ConnId>) -> impl Iterator<Item = &Arc<Conn>> {
        self.conns.iter().filter(move |(id, s)| s.present && Some(**id) != except).map(|(_, s)| &s.conn)
    }
}

/// What this replica tells the others (replicas mode): its users' presence
/// changes and their typing.
#[derive(Debug, Clone, PartialEq)]
pub enum PresenceOut {
    Changed(Uuid, Uuid, bool),
    Typing(Uuid, Uuid),
}

/// Presence held on other replicas: per chat, users and on how many replicas
/// they are online; per replica, what it holds (to drop it when it dies).
#[derive(Default)]
struct Remote {
    by_chat: HashMap<Uuid, HashMap<Uuid, u32>>,
    by_replica: HashMap<String, HashSet<(Uuid, Uuid)>>,
}

/// Hub state beside the chats map.
#[derive(Default)]
struct Shared {
    remote: Mutex<Remote>,
    out: std::sync::OnceLock<mpsc::UnboundedSender<PresenceOut>>,
}

impl Shared {
    fn send(&self, out: PresenceOut) {
        if let Some(tx) = self.out.get() {
            let _ = tx.send(out);
        }
    }

    fn remote_has(&self, chat_id: Uuid, user_id: Uuid) -> bool {
        self.remote.lock().is_ok_and(|r| r.by_chat.get(&chat_id).is_some_and(|u| u.contains_key(&user_id)))
    }

    fn remote_users(&self, chat_id: &Uuid) -> Vec<Uuid> {
        self.remote
            .lock()
            .map(|r| r.by_chat.get(chat_id).map(|u| u.keys().copied().collect()).unwrap_or_default())
            .unwrap_or_default()
    }
}

/// Who is online in a chat, as `subscribed` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Online {
    /// At most [`ONLINE_CAP`] user ids.
    pub users: Vec<Uuid>,
    /// More were online than listed.
    pub truncated: bool,
}

/// In-process subscriptions.
#[derive(Default)]
pub struct Hub {
    chats: DashMap<Uuid, ChatSubs, FxBuildHasher>,
    shared: Shared,
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
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

    /// The subscription's membership was checked: it counts for presence
    /// from now on (a user's first one is announced to the others), and it
    /// gets the chat's current presence. Changes after this snapshot reach
    /// it through [`Control::presence`].
    pub fn present(&self, chat_id: Uuid, conn: &Arc<Conn>) -> Online {
        let mut entry = self.chats.entry(chat_id).or_default();
        let subs = &mut *entry;
        let sub = subs.conns.entry(conn.id).or_insert_with(|| Subscription { conn: conn.clone(), present: false });
        if !sub.present {
            sub.present = true;
            let n = subs.online.entry(conn.user_id).or_insert(0);
            *n += 1;
            if *n == 1 {
                self.shared.send(PresenceOut::Changed(chat_id, conn.user_id, true));
                if !self.shared.remote_has(chat_id, conn.user_id) {
                    subs.announce(chat_id, conn.user_id, true, Some(conn.id));
                }
            }
        }
        conn.forget_presence(chat_id);
        // Online here, then online only on other replicas.
        let mut remote = self.shared.remote_users(&chat_id);
        remote.retain(|u| !subs.online.contains_key(u));
        let total = subs.online.len() + remote.len();
        let truncated = total > ONLINE_CAP;
        // The newcomer itself first, so it is listed even in a capped set.
        let mut users = Vec::with_capacity(total.min(ONLINE_CAP));
        users.push(conn.user_id);
        users.extend(subs.online.keys().chain(&remote).filter(|u| **u != conn.user_id).take(ONLINE_CAP - 1));
        Online { users, truncated }
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

    /// Users holding a checked subscription to a chat.
    pub fn online(&self, chat_id: &Uuid) -> usize {
        self.chats.get(chat_id).map(|s| s.online.len()).unwrap_or(0)
    }

    /// `user_id` is typing in `chat_id` on connection `from`: offered to the
    /// chat's other checked subscribers, dropped where a queue is full.
    pub fn typing(&self, chat_id: Uuid, user_id: Uuid, from: ConnId) {
        self.shared.send(PresenceOut::Typing(chat_id, user_id));
        self.typing_here(chat_id, user_id, Some(from));
    }

    /// Typing on another replica: to this replica's subscribers of the chat.
    pub fn remote_typing(&self, chat_id: Uuid, user_id: Uuid) {
        self.typing_here(chat_id, user_id, None);
    }

    fn typing_here(&self, chat_id: Uuid, user_id: Uuid, except: Option<ConnId>) {
        if let Some(subs) = self.chats.get(&chat_id) {
            let frame = Arc::new(EventFrame::typing(chat_id, user_id));
            for conn in subs.checked(except) {
                conn.offer_ephemeral(&frame);
            }
        }
    }
}

impl Hub {
    /// Replicas: where this replica's presence changes and typing go.
    pub fn presence_out(&self) -> mpsc::UnboundedReceiver<PresenceOut> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.shared.out.set(tx);
        rx
    }

    /// Every (chat, user) online on this replica.
    pub fn local_presence(&self) -> Vec<(Uuid, Uuid)> {
        let mut out = Vec::new();
        for e in self.chats.iter() {
            out.extend(e.value().online.keys().map(|u| (*e.key(), *u)));
        }
        out
    }

    /// Replica `replica` holds exactly `set` now (a heartbeat; empty: it is
    /// gone). Announces to local subscribers whoever came or went overall.
    pub fn remote_replace(&self, replica: &str, set: HashSet<(Uuid, Uuid)>) {
        let changes = {
            let Ok(mut r) = self.shared.remote.lock() else { return };
            let old = r.by_replica.remove(replica).unwrap_or_default();
            let mut changes = Vec::new();
            for (c, u) in old.difference(&set) {
                if remote_dec(&mut r, *c, *u) {
                    changes.push((*c, *u, false));
                }
            }
            for (c, u) in set.difference(&old) {
                if remote_inc(&mut r, *c, *u) {
                    changes.push((*c, *u, true));
                }
            }
            if !set.is_empty() {
                r.by_replica.insert(replica.to_string(), set);
            }
            changes
        };
        self.announce_remote(changes);
    }

    /// Replica `replica` says one user came or went in one chat.
    pub fn remote_set(&self, replica: &str, chat_id: Uuid, user_id: Uuid, online: bool) {
        let change = {
            let Ok(mut r) = self.shared.remote.lock() else { return };
            let held = r.by_replica.entry(replica.to_string()).or_default();
            let changed = if online { held.insert((chat_id, user_id)) } else { held.remove(&(chat_id, user_id)) };
            if !changed {
                return;
            }
            if online {
                remote_inc(&mut r, chat_id, user_id)
            } else {
                remote_dec(&mut r, chat_id, user_id)
            }
        };
        if change {
            self.announce_remote(vec![(chat_id, user_id, online)]);
        }
    }

    /// Users who came or went on other replicas, told to this replica's
    /// subscribers unless the user is online here anyway.
    fn announce_remote(&self, changes: Vec<(Uuid, Uuid, bool)>) {
        for (chat, user, online) in changes {
            if let Some(subs) = self.chats.get(&chat) {
                if !subs.online.contains_key(&user) {
                    subs.announce(chat, user, online, None);
                }
            }
        }
    }
}

/// One more replica holds (chat, user): true when it is the first.
fn remote_inc(r: &mut Remote, chat: Uuid, user: Uuid) -> bool {
    let n = r.by_chat.entry(chat).or_default().entry(user).or_insert(0);
    *n += 1;
    *n == 1
}

/// One replica fewer holds (chat, user): true when it was the last.
fn remote_dec(r: &mut Remote, chat: Uuid, user: Uuid) -> bool {
    let Some(users) = r.by_chat.get_mut(&chat) else { return false };
    let Some(n) = users.get_mut(&user) else { return false };
    *n -= 1;
    if *n > 0 {
        return false;
    }
    users.remove(&user);
    if users.is_empty() {
        r.by_chat.remove(&chat);
    }
    true
}

impl Hub {
    /// Whether any connection is subscribed to the chat.
    pub fn wants(&self, chat_id: &Uuid) -> bool {
        self.chats.contains_key(chat_id)
    }

    /// Offers a frame to every subscriber of its chat. Never waits.
    pub fn publish(&self, frame: &Arc<EventFrame>) {
        if let Some(subs) = self.chats.get(&frame.chat_id) {
            for s in subs.conns.values() {
                s.conn.offer(frame);
            }
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
    use super::*;
    use crate::event::{MessageRow, Participant, RowBody};
    use serde_json::{json, Map};

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
        assert!(slow.take(0).behind.is_empty());
        // Its other chat is behind too now (the queue is full for everyone)...
        hub.publish(&msg(quiet, 1));
        assert_eq!(slow_rx.recv().await.unwrap().seq, 1);
        assert_eq!(slow_rx.recv().await.unwrap().seq, 2);
        let ctl = slow.take(2);
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
        let b = c.take(1).behind.remove(&chat).unwrap();
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
        assert!(c.take(0).overflow);
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
        let ctl = a.take(1);
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
        assert!(c.take(0).resync);
        assert!(!c.take(0).resync);
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
        assert_eq!(a.take(0).presence, vec![(chat, bob, true)]);
        // A subscription not yet checked is neither counted nor told.
        let (c, _c_rx) = Conn::new(4, Uuid::new_v4(), 4);
        hub.subscribe(chat, &c);
        assert_eq!(hub.online(&chat), 2);
        hub.unsubscribe(chat, 3);
        assert!(c.take(0).presence.is_empty());
        assert_eq!(a.take(0).presence, vec![(chat, bob, false)]);
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

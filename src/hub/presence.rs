//! Presence and typing in the hub: per chat, how many checked subscriptions
//! each user holds (the first and the last are announced), what other
//! replicas hold, and typing offered like an event but never remembered.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use uuid::Uuid;

use super::{ChatSubs, Conn, ConnId, Hub, Subscription};
use crate::protocol::EventFrame;

/// User ids listed in `subscribed.online`, at most; beyond it the frame says
/// `online_truncated` and lists this many.
pub const ONLINE_CAP: usize = 1000;

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
pub(super) struct Shared {
    remote: Mutex<Remote>,
    out: std::sync::OnceLock<mpsc::UnboundedSender<PresenceOut>>,
}

impl Shared {
    pub(super) fn send(&self, out: PresenceOut) {
        if let Some(tx) = self.out.get() {
            let _ = tx.send(out);
        }
    }

    pub(super) fn remote_has(&self, chat_id: Uuid, user_id: Uuid) -> bool {
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

impl ChatSubs {
    pub(super) fn leave(&mut self, chat_id: Uuid, user_id: Uuid, shared: &Shared) {
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
    pub(super) fn announce(&self, chat_id: Uuid, user_id: Uuid, online: bool, except: Option<ConnId>) {
        for conn in self.checked(except) {
            conn.presence(chat_id, user_id, online);
        }
    }
}

impl Hub {
    /// The subscription's membership was checked: it counts for presence
    /// from now on (a user's first one is announced to the others), and it
    /// gets the chat's current presence. Changes after this snapshot reach
    /// it through [`super::conn::Control::presence`].
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

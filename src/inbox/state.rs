//! The inbox's state, pure: every online inbox user's chats, and the chats
//! they share, kept exact by the stream; no I/O and no locks here.
//!
//! Per chat (shared by its inbox users on this relay): the last seq, the
//! activity, the newest message row. Per user and chat: the watermarks and
//! the unread count. What the stream cannot tell (a count after a read that
//! left messages unread, the newest row after a delete, a chat the user was
//! just added to, what happened while a user's list was being read) is
//! *asked* of the table ([`Ask`]); until the [`Answer`] comes, that chat's
//! frames wait (and merge), and while any of the user's unread flags is
//! uncertain, all of the user's frames wait, so every frame's `unread_chats`
//! is exact.
//!
//! Answers are checked against generations: a change that makes a pending
//! answer stale bumps the generation and asks again, so an answer never
//! overwrites something newer. Counts asked up to a bound seq take the
//! inserts streamed after it as they come (`since`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use uuid::Uuid;

/// Unix microseconds.
pub type Micros = i64;

/// Unread counts are exact up to this; at it, "999+" (the protocol shows
/// at most 999).
pub const SATURATED: u32 = 1000;

/// What the stream says happened, as far as summaries care.
#[derive(Debug, Clone)]
pub enum Change {
    Insert { chat: Uuid, seq: i64, sender: Option<Uuid>, at: Micros, row: Arc<RawValue> },
    Update { chat: Uuid, seq: i64, at: Micros, row: Arc<RawValue> },
    Delete { chat: Uuid, seq: i64 },
    Marks { chat: Uuid, user: Uuid, read: i64, delivered: i64 },
    Member { chat: Uuid, user: Uuid, member: bool },
}

impl Change {
    fn user(&self) -> Option<Uuid> {
        match self {
            Change::Marks { user, .. } | Change::Member { user, .. } => Some(*user),
            _ => None,
        }
    }

    fn chat(&self) -> Uuid {
        match self {
            Change::Insert { chat, .. }
            | Change::Update { chat, .. }
            | Change::Delete { chat, .. }
            | Change::Marks { chat, .. }
            | Change::Member { chat, .. } => *chat,
        }
    }
}

/// A chat's newest message, as known.
#[derive(Debug, Clone)]
pub enum Last {
    Unknown,
    Empty,
    Row { seq: i64, row: Arc<RawValue> },
}

/// One of the user's chats as the list query returns it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub chat: Uuid,
    pub last_seq: i64,
    pub at: Micros,
    pub read: i64,
    pub delivered: i64,
    pub has_unread: bool,
    /// The newest seq the stream brought for this chat, when known (a
    /// commit streamed just before the list was read may not be in it).
    pub streamed: Option<i64>,
}

/// A question for the table. `bound` None: up to the chat's last seq as
/// the table has it now (a chat this relay knows nothing about yet).
#[derive(Debug, Clone, PartialEq)]
pub struct Ask {
    pub chat: Uuid,
    pub bound: Option<i64>,
    /// The newest row and activity are wanted (the chat's generation).
    pub last: Option<u32>,
    /// A user's count (and, when `read` is None, their watermarks).
    pub user: Option<AskUser>,
    /// Seqs the stream deleted: while the table still shows one of them, it
    /// is behind the stream.
    pub gone: Vec<i64>,
    /// Times this was asked again because the table was behind.
    pub tries: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AskUser {
    pub user: Uuid,
    pub read: Option<i64>,
    pub gen: u32,
}

/// The table's answer to an [`Ask`].
#[derive(Debug, Clone)]
pub struct Answer {
    pub ask: Ask,
    /// chats.last_seq in the table (0 when the chat is gone).
    pub last_seq: i64,
    /// Newest row with seq <= the bound, and the activity that goes with it.
    pub last: Option<(i64, Arc<RawValue>)>,
    pub at: Micros,
    /// The user is a participant (their row exists). When not, the ask is
    /// repeated until the stream says they left.
    pub member: bool,
    pub read: i64,
    pub delivered: i64,
    /// Unread up to the bound, at most [`SATURATED`].
    pub unread: u32,
    /// A row the stream deleted is still visible: the table is behind.
    pub stale: bool,
}

/// What to tell a user's connections.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// The chat's summary changed: send it (read it with [`State::summary`]).
    Chat {
        user: Uuid,
        chat: Uuid,
    },
    Removed {
        user: Uuid,
        chat: Uuid,
    },
}

/// A summary as the protocol shows it.
#[derive(Debug, Clone)]
pub struct Summary {
    pub chat: Uuid,
    pub last_seq: i64,
    pub last: Option<Arc<RawValue>>,
    pub at: Micros,
    pub unread: u32,
    pub read: i64,
    pub delivered: i64,
}

#[derive(Debug)]
struct Chat {
    /// Highest seq streamed or read (when `known`); highest streamed otherwise.
    last_seq: i64,
    /// The table's last_seq was read (or streamed past a read).
    known: bool,
    at: Micros,
    last: Last,
    gen: u32,
    asked: bool,
    users: Vec<Uuid>,
    /// Seqs deleted by the stream that no answer has confirmed gone yet.
    gone: Vec<i64>,
}

impl Chat {
    fn new(last_seq: i64, known: bool, at: Micros, last: Last) -> Chat {
        Chat { last_seq, known, at, last, gen: 0, asked: false, users: Vec::new(), gone: Vec::new() }
    }

    fn join(&mut self, user: Uuid) {
        if !self.users.contains(&user) {
            // Grown one at a time: memberships change rarely, and a doubled
            // list would hold up to twice the room it needs.
            self.users.reserve_exact(1);
            self.users.push(user);
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    read: i64,
    delivered: i64,
    /// None: not counted (yet, or any more).
    unread: Option<u32>,
    /// Whether unread > 0; None: uncertain until an answer.
    has: Option<bool>,
    /// Inserts that count as unread, streamed since the pending ask's bound.
    since: u32,
    gen: u32,
    asked: bool,
    /// Watermarks came from the list or the stream (not so for a chat the
    /// user was just added to).
    marks: bool,
}

/// A user's entries by chat: a sorted vector (exactly as big as needed; a
/// hash map kept a quarter to half of its room empty), found by binary
/// search. Lists arrive sorted; joins and leaves are rare.
#[derive(Debug, Default)]
struct Entries(Vec<(Uuid, Entry)>);

impl Entries {
    fn find(&self, chat: &Uuid) -> Result<usize, usize> {
        self.0.binary_search_by(|(c, _)| c.cmp(chat))
    }

    fn get(&self, chat: &Uuid) -> Option<&Entry> {
        self.find(chat).ok().map(|i| &self.0[i].1)
    }

    fn get_mut(&mut self, chat: &Uuid) -> Option<&mut Entry> {
        self.find(chat).ok().map(|i| &mut self.0[i].1)
    }

    fn contains_key(&self, chat: &Uuid) -> bool {
        self.find(chat).is_ok()
    }

    fn insert(&mut self, chat: Uuid, entry: Entry) -> Option<Entry> {
        match self.find(&chat) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, entry)),
            Err(i) => {
                if self.0.len() == self.0.capacity() {
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, (chat, entry));
                None
            }
        }
    }

    fn remove(&mut self, chat: &Uuid) -> Option<Entry> {
        self.find(chat).ok().map(|i| self.0.remove(i).1)
    }

    fn keys(&self) -> impl Iterator<Item = &Uuid> {
        self.0.iter().map(|(c, _)| c)
    }

    fn iter(&self) -> impl Iterator<Item = (&Uuid, &Entry)> {
        self.0.iter().map(|(c, e)| (c, e))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

#[derive(Debug, Default)]
struct User {
    entries: Entries,
    /// Entries with has == Some(true).
    unread_chats: u32,
    /// Entries with has == None.
    uncertain: u32,
    /// Chats whose frame waits for an answer.
    dirty: HashSet<Uuid>,
    /// Connections and requests that need this user's list.
    holders: u32,
}

/// Events kept while lists are being read, so that what streamed
/// meanwhile is applied to them.
#[derive(Debug, Default)]
struct Log {
    changes: Vec<Change>,
    /// Absolute index of `changes[0]`.
    base: u64,
    /// Loads in flight: id → first change they must see, and when it began.
    loads: HashMap<u64, (u64, Instant)>,
    /// Loads that lost changes (the log overflowed).
    lost: HashSet<u64>,
    next_id: u64,
}

/// Joins and leaves remembered for lists read right after them: at most
/// this many, and only this recent.
const MEMBERS_CAP: usize = 4096;
const MEMBERS_FOR: Duration = Duration::from_secs(10);

/// An answer from a table behind the stream is asked again this many times
/// (20 ms apart), then taken as the truth.
const PATIENCE: u32 = 50;

/// Deleted seqs remembered per chat until the table confirms them.
const GONE_CAP: usize = 64;

/// Changes kept for loads in flight, at most; past it those loads read again.
pub const LOG_CAP: usize = 200_000;

/// The inbox's state.
#[derive(Debug, Default)]
pub struct State {
    users: HashMap<Uuid, User>,
    chats: HashMap<Uuid, Chat>,
    log: Log,
    out: Vec<Out>,
    asks: Vec<Ask>,
    /// The latest joins and leaves streamed, whoever they were for.
    members: VecDeque<(Instant, Change)>,
    /// Asks to repeat shortly (the table was behind the stream).
    retry: Vec<Ask>,
}

/// A load could not be installed: read the list again.
#[derive(Debug, PartialEq, Eq)]
pub struct Reload;

impl State {
    /// Whether any inbox user here is in this chat.
    pub fn wants(&self, chat: &Uuid) -> bool {
        self.chats.contains_key(chat) || !self.log.loads.is_empty()
    }

    /// Frames to send, and questions to ask, since the last call.
    pub fn drain(&mut self) -> (Vec<Out>, Vec<Ask>) {
        (std::mem::take(&mut self.out), std::mem::take(&mut self.asks))
    }

    /// Questions to ask again after a short pause.
    pub fn drain_retries(&mut self) -> Vec<Ask> {
        std::mem::take(&mut self.retry)
    }

    #[cfg(test)]
    pub fn users(&self) -> usize {
        self.users.len()
    }

    #[cfg(test)]
    pub fn chats(&self) -> usize {
        self.chats.len()
    }

    /// Users whose lists are held.
    pub fn user_ids(&self) -> Vec<Uuid> {
        self.users.keys().copied().collect()
    }

    /// One more holder of a loaded user's list. False when it is not loaded.
    pub fn hold(&mut self, user: Uuid) -> bool {
        match self.users.get_mut(&user) {
            Some(u) => {
                u.holders += 1;
                true
            }
            None => false,
        }
    }

    /// One holder less; the last one drops the user's list.
    pub fn release(&mut self, user: Uuid) {
        let Some(u) = self.users.get_mut(&user) else { return };
        u.holders = u.holders.saturating_sub(1);
        if u.holders > 0 {
            return;
        }
        if let Some(u) = self.users.remove(&user) {
            for chat in u.entries.keys() {
                self.leave_chat(*chat, user);
            }
        }
    }

    fn leave_chat(&mut self, chat: Uuid, user: Uuid) {
        if let Some(c) = self.chats.get_mut(&chat) {
            c.users.retain(|u| *u != user);
            if c.users.is_empty() {
                self.chats.remove(&chat);
            }
        }
    }

    /// A list is about to be read: changes from now on are kept for it.
    pub fn begin_load(&mut self) -> u64 {
        let id = self.log.next_id;
        self.log.next_id += 1;
        let at = self.log.base + self.log.changes.len() as u64;
        self.log.loads.insert(id, (at, Instant::now()));
        id
    }

    /// The load ended without being installed.
    pub fn abort_load(&mut self, id: u64) {
        self.log.loads.remove(&id);
        self.log.lost.remove(&id);
        self.trim_log();
    }

    fn trim_log(&mut self) {
        if self.log.loads.is_empty() {
            self.log.base += self.log.changes.len() as u64;
            self.log.changes.clear();
            self.log.changes.shrink_to(1024);
        }
    }

    /// Installs a user's list read by load `id` (one holder for the caller).
    /// With `replace`, the list replaces what is held (after a resync):
    /// chats missing from it are removed, and every held one is asked again.
    pub fn install(&mut self, id: u64, user: Uuid, listed: Vec<Listed>, replace: bool) -> Result<(), Reload> {
        let Some((start, began)) = self.log.loads.remove(&id) else { return Err(Reload) };
        if self.log.lost.remove(&id) {
            self.trim_log();
            return Err(Reload);
        }
        let skip = (start.saturating_sub(self.log.base)) as usize;
        let changes: Vec<Change> = self.log.changes.get(skip..).map(|c| c.to_vec()).unwrap_or_default();
        self.trim_log();
        let fresh = !self.users.contains_key(&user);
        if !fresh && !replace {
            // Loaded meanwhile by another request: that list is as good.
            self.hold(user);
            return Ok(());
        }
        if fresh && replace {
            // Released while it was read again: nobody needs it.
            return Ok(());
        }
        // What streamed while the list was read, per chat.
        let mut touched: HashMap<Uuid, i64> = HashMap::new();
        for c in &changes {
            match c {
                Change::Insert { chat, seq, .. } => {
                    let m = touched.entry(*chat).or_insert(0);
                    *m = (*m).max(*seq);
                }
                Change::Update { chat, .. } | Change::Delete { chat, .. } => {
                    touched.entry(*chat).or_insert(0);
                }
                _ => {}
            }
        }
        let listed_ids: HashSet<Uuid> = listed.iter().map(|l| l.chat).collect();
        if replace {
            let held: Vec<Uuid> =
                self.users.get(&user).map(|u| u.entries.keys().copied().collect()).unwrap_or_default();
            for chat in held.into_iter().filter(|c| !listed_ids.contains(c)) {
                self.remove_entry(user, chat);
            }
        }
        if !replace {
            let u = self.users.entry(user).or_default();
            u.holders += 1;
            u.entries.0.reserve_exact(listed.len());
        }
        // In chat order, so a new list is built by appending.
        let mut listed = listed;
        listed.sort_unstable_by_key(|l| l.chat);
        for l in listed {
            let entry = Entry {
                read: l.read,
                delivered: l.delivered,
                unread: (!l.has_unread).then_some(0),
                has: Some(l.has_unread),
                since: 0,
                gen: 0,
                asked: false,
                marks: true,
            };
            let last = if l.last_seq == 0 { Last::Empty } else { Last::Unknown };
            let c = self.chats.entry(l.chat).or_insert_with(|| Chat::new(l.last_seq, true, l.at, last));
            c.join(user);
            let late = l.streamed.filter(|n| *n > l.last_seq);
            let streamed = touched.get(&l.chat).copied().max(late);
            // The list and the stream disagree about this chat (or the
            // stream moved on while it was read): count from the table.
            let consistent = c.last_seq == l.last_seq && streamed.is_none();
            if let Some(m) = streamed {
                if m > c.last_seq {
                    c.last_seq = m;
                }
                c.last = Last::Unknown;
                c.gen += 1;
                c.asked = false;
            }
            let u = self.users.entry(user).or_default();
            u.put(l.chat, entry);
            if !consistent || replace {
                self.invalidate(user, l.chat);
            }
            if replace {
                self.touch(user, l.chat);
            }
        }
        // Joins and leaves of this user streamed just before the list was
        // read: its statement may not see them yet (a commit is decoded a
        // moment before it is visible). Replayed in order, the latest wins.
        let recent: Vec<Change> = self
            .members
            .iter()
            .filter(|_| !replace)
            .filter(|(at, c)| *at <= began && began.duration_since(*at) < MEMBERS_FOR && c.user() == Some(user))
            .map(|(_, c)| c.clone())
            .collect();
        for c in recent {
            self.apply_for(&c, Some(user));
        }
        // Watermarks and membership of this user that streamed meanwhile.
        for c in changes {
            match c {
                Change::Marks { user: who, .. } | Change::Member { user: who, .. } if who == user => {
                    self.apply_for(&c, Some(user));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Applies one change from the stream.
    pub fn apply(&mut self, change: Change) {
        if let Change::Member { .. } = change {
            if self.members.len() == MEMBERS_CAP {
                self.members.pop_front();
            }
            self.members.push_back((Instant::now(), change.clone()));
        }
        if !self.log.loads.is_empty() {
            if self.log.changes.len() >= LOG_CAP {
                let ids: Vec<u64> = self.log.loads.keys().copied().collect();
                self.log.lost.extend(ids);
                self.log.base += self.log.changes.len() as u64;
                self.log.changes.clear();
            }
            self.log.changes.push(change.clone());
        }
        self.apply_for(&change, None);
    }

    /// Applies a change; `only` limits user-level effects to one user (replay).
    fn apply_for(&mut self, change: &Change, only: Option<Uuid>) {
        let chat_id = change.chat();
        match change {
            Change::Insert { seq, sender, at, row, .. } => {
                let Some(c) = self.chats.get_mut(&chat_id) else { return };
                if *seq <= c.last_seq {
                    return;
                }
                c.last_seq = *seq;
                if !c.known {
                    // The table is asked for everything up to its last seq.
                    return;
                }
                c.at = *at;
                c.last = Last::Row { seq: *seq, row: row.clone() };
                c.gen += 1;
                c.asked = false;
                let users = c.users.clone();
                for user in users {
                    let Some(u) = self.users.get_mut(&user) else { continue };
                    let Some(e) = u.entries.get_mut(&chat_id) else { continue };
                    if *sender != Some(user) && *seq > e.read {
                        match &mut e.unread {
                            Some(n) => *n = (*n + 1).min(SATURATED),
                            None => e.since = e.since.saturating_add(1),
                        }
                        set_has(u, chat_id, Some(true));
                    }
                    self.touch(user, chat_id);
                }
            }
            Change::Update { seq, at, row, .. } => {
                let Some(c) = self.chats.get_mut(&chat_id) else { return };
                if !matches!(c.last, Last::Row { seq: s, .. } if s == *seq) {
                    return;
                }
                c.last = Last::Row { seq: *seq, row: row.clone() };
                c.at = *at;
                for user in c.users.clone() {
                    self.touch(user, chat_id);
                }
            }
            Change::Delete { seq, .. } => {
                let Some(c) = self.chats.get_mut(&chat_id) else { return };
                let newest = match &c.last {
                    Last::Row { seq: s, .. } => *s <= *seq,
                    Last::Unknown => true,
                    Last::Empty => false,
                };
                if c.gone.len() == GONE_CAP {
                    c.gone.remove(0);
                }
                c.gone.push(*seq);
                if newest {
                    c.last = Last::Unknown;
                    c.gen += 1;
                    c.asked = false;
                }
                for user in c.users.clone() {
                    let affected = self
                        .users
                        .get(&user)
                        .and_then(|u| u.entries.get(&chat_id))
                        .is_some_and(|e| *seq > e.read && e.unread != Some(0));
                    if affected {
                        self.invalidate(user, chat_id);
                    }
                    if affected || newest {
                        self.touch(user, chat_id);
                    }
                }
            }
            Change::Marks { user, read, delivered, .. } => {
                if only.is_some_and(|o| o != *user) {
                    return;
                }
                let last_seq = self.chats.get(&chat_id).map(|c| (c.last_seq, c.known));
                let Some(u) = self.users.get_mut(user) else { return };
                let Some(e) = u.entries.get_mut(&chat_id) else { return };
                if e.marks && e.read == *read && e.delivered == *delivered {
                    return;
                }
                let moved_read = !e.marks || e.read != *read;
                let was_zero = e.unread == Some(0);
                let forward = *read >= e.read;
                e.read = *read;
                e.delivered = *delivered;
                e.marks = true;
                if moved_read {
                    match last_seq {
                        Some((last, true)) if *read >= last => {
                            e.gen += 1;
                            e.asked = false;
                            e.since = 0;
                            e.unread = Some(0);
                            set_has(u, chat_id, Some(false));
                        }
                        _ if was_zero && forward => {}
                        _ => self.invalidate(*user, chat_id),
                    }
                }
                self.touch(*user, chat_id);
            }
            Change::Member { user, member, .. } => {
                if only.is_some_and(|o| o != *user) {
                    return;
                }
                if !self.users.contains_key(user) {
                    return;
                }
                let has = self.users.get(user).is_some_and(|u| u.entries.contains_key(&chat_id));
                match (member, has) {
                    (true, false) => self.add_entry(*user, chat_id),
                    (false, true) => self.remove_entry(*user, chat_id),
                    _ => {}
                }
            }
        }
    }

    /// The user was added to a chat: everything about it is asked.
    fn add_entry(&mut self, user: Uuid, chat: Uuid) {
        self.chats.entry(chat).or_insert_with(|| Chat::new(0, false, 0, Last::Unknown)).join(user);
        let Some(u) = self.users.get_mut(&user) else { return };
        u.put(
            chat,
            Entry { read: 0, delivered: 0, unread: None, has: None, since: 0, gen: 0, asked: false, marks: false },
        );
        self.ask(user, chat);
        self.touch(user, chat);
    }

    fn remove_entry(&mut self, user: Uuid, chat: Uuid) {
        let Some(u) = self.users.get_mut(&user) else { return };
        if u.take(&chat).is_none() {
            return;
        }
        u.dirty.remove(&chat);
        self.leave_chat(chat, user);
        self.out.push(Out::Removed { user, chat });
        // The badge may have changed; frames that waited on this entry go.
        self.flush(user);
    }

    /// The count is unknown from here on: ask.
    fn invalidate(&mut self, user: Uuid, chat: Uuid) {
        let Some(u) = self.users.get_mut(&user) else { return };
        let Some(e) = u.entries.get_mut(&chat) else { return };
        e.gen += 1;
        e.asked = false;
        e.since = 0;
        e.unread = None;
        set_has(u, chat, None);
        self.ask(user, chat);
    }

    /// Asks what is missing for (user, chat), once per generation.
    fn ask(&mut self, user: Uuid, chat: Uuid) {
        let Some(c) = self.chats.get_mut(&chat) else { return };
        let Some(u) = self.users.get_mut(&user) else { return };
        let Some(e) = u.entries.get_mut(&chat) else { return };
        let bound = c.known.then_some(c.last_seq);
        let want_last = matches!(c.last, Last::Unknown) && !c.asked;
        let want_user = e.unread.is_none() && !e.asked;
        if !want_last && !want_user {
            return;
        }
        if want_last {
            c.asked = true;
        }
        if want_user {
            e.asked = true;
            // The count asked covers every insert applied so far.
            e.since = 0;
        }
        self.asks.push(Ask {
            chat,
            bound,
            last: want_last.then_some(c.gen),
            user: want_user.then_some(AskUser { user, read: e.marks.then_some(e.read), gen: e.gen }),
            gone: c.gone.clone(),
            tries: 0,
        });
    }

    /// The summary of (user, chat) changed.
    fn touch(&mut self, user: Uuid, chat: Uuid) {
        let Some(u) = self.users.get_mut(&user) else { return };
        u.dirty.insert(chat);
        self.flush(user);
    }

    /// Sends what can be sent exactly: nothing while a flag is uncertain.
    fn flush(&mut self, user: Uuid) {
        let Some(u) = self.users.get(&user) else { return };
        if u.dirty.is_empty() {
            return;
        }
        if u.uncertain > 0 {
            for chat in u.dirty.clone() {
                self.ask(user, chat);
            }
            return;
        }
        let mut ready = Vec::new();
        let mut waiting = Vec::new();
        for chat in &u.dirty {
            match self.is_exact(u, chat) {
                true => ready.push(*chat),
                false => waiting.push(*chat),
            }
        }
        if let Some(u) = self.users.get_mut(&user) {
            for chat in &ready {
                u.dirty.remove(chat);
            }
        }
        for chat in waiting {
            self.ask(user, chat);
        }
        ready.sort();
        self.out.extend(ready.into_iter().map(|chat| Out::Chat { user, chat }));
    }

    fn is_exact(&self, u: &User, chat: &Uuid) -> bool {
        let Some(e) = u.entries.get(chat) else { return false };
        let Some(c) = self.chats.get(chat) else { return false };
        e.unread.is_some() && c.known && !matches!(c.last, Last::Unknown)
    }

    /// Of `chats`, those whose summary for `user` is not exact yet (and asks
    /// for them), or that the user is not in any more (left out).
    pub fn missing(&mut self, user: Uuid, chats: &[Uuid]) -> Vec<Uuid> {
        let Some(u) = self.users.get(&user) else { return Vec::new() };
        let missing: Vec<Uuid> =
            chats.iter().filter(|c| u.entries.contains_key(c) && !self.is_exact(u, c)).copied().collect();
        for chat in &missing {
            self.ask(user, *chat);
        }
        missing
    }

    /// Whether every unread flag of the user is certain (the badge is exact).
    pub fn badge_certain(&self, user: &Uuid) -> bool {
        self.users.get(user).is_some_and(|u| u.uncertain == 0)
    }

    /// Asks pending for the uncertain flags of `user` (to answer a page).
    pub fn ask_uncertain(&mut self, user: Uuid) {
        let Some(u) = self.users.get(&user) else { return };
        let chats: Vec<Uuid> = u.entries.iter().filter(|(_, e)| e.has.is_none()).map(|(c, _)| *c).collect();
        for chat in chats {
            self.ask(user, chat);
        }
    }

    /// Applies the table's answer.
    pub fn answer(&mut self, a: Answer) {
        let chat_id = a.ask.chat;
        let Some(c) = self.chats.get_mut(&chat_id) else { return };
        let bound = a.ask.bound.unwrap_or(a.last_seq);
        // The table does not show yet what the stream already did (a commit
        // is decoded a moment before it is visible to new snapshots): ask
        // the same again a little later, while it still matters.
        let behind = a.stale || a.last_seq < bound || (a.ask.user.is_some() && !a.member);
        if behind && a.ask.tries < PATIENCE {
            // (The chat's part and the user's part each may still matter.)
            let user_matters = a.ask.user.as_ref().is_some_and(|au| {
                self.users.get(&au.user).and_then(|u| u.entries.get(&chat_id)).is_some_and(|e| e.gen == au.gen)
            });
            let matters = user_matters || a.ask.last == Some(c.gen);
            if matters {
                let mut ask = a.ask;
                ask.tries += 1;
                self.retry.push(ask);
            }
            return;
        }
        if behind && !a.member {
            // Asked for a second: the table is the truth, the stream will
            // not say more (a table truncated, say). The user is not in it.
            if let Some(au) = &a.ask.user {
                let current =
                    self.users.get(&au.user).and_then(|u| u.entries.get(&chat_id)).is_some_and(|e| e.gen == au.gen);
                if current {
                    self.remove_entry(au.user, chat_id);
                }
            }
            return;
        }
        let Some(c) = self.chats.get_mut(&chat_id) else { return };
        // Those deletes are visible now.
        c.gone.retain(|g| !a.ask.gone.contains(g));
        let last = || match &a.last {
            Some((seq, row)) => Last::Row { seq: *seq, row: row.clone() },
            None => Last::Empty,
        };
        // Whether counts up to `bound` fit what the stream applied.
        let mut fits = true;
        if !c.known {
            if a.last_seq >= c.last_seq {
                c.last_seq = a.last_seq;
                c.known = true;
                c.at = a.at;
                c.last = last();
                c.asked = false;
            } else {
                // The stream is ahead of what was read: ask up to it.
                c.known = true;
                c.last = Last::Unknown;
                c.gen += 1;
                c.asked = false;
                fits = false;
            }
        } else {
            if a.ask.last == Some(c.gen) {
                c.asked = false;
                if c.last_seq == bound {
                    c.at = a.at;
                    c.last = last();
                }
            }
            // Asked without a bound of ours: only good if nothing streamed since.
            if a.ask.bound.is_none() && a.last_seq != c.last_seq {
                fits = false;
            }
        }
        let users = c.users.clone();
        if let Some(au) = &a.ask.user {
            let user = au.user;
            if let Some(u) = self.users.get_mut(&user) {
                if let Some(e) = u.entries.get_mut(&chat_id).filter(|e| e.gen == au.gen) {
                    e.asked = false;
                    if !fits {
                        e.gen += 1;
                        e.since = 0;
                    } else {
                        if au.read.is_none() && !e.marks {
                            e.read = a.read;
                            e.delivered = a.delivered;
                            e.marks = true;
                        }
                        let since = if a.ask.bound.is_some() { e.since } else { 0 };
                        let n = a.unread.saturating_add(since).min(SATURATED);
                        e.since = 0;
                        e.unread = Some(n);
                        set_has(u, chat_id, Some(n > 0));
                    }
                }
            }
        }
        for user in users {
            if !fits {
                self.ask(user, chat_id);
            }
            self.flush(user);
        }
    }

    /// The stream lost continuity: nothing known about chats can be trusted.
    /// Returns the users whose lists must be read again (with `replace`).
    pub fn resync(&mut self) -> Vec<Uuid> {
        // Joins and leaves from before are no guide to a table read after.
        self.members.clear();
        for c in self.chats.values_mut() {
            // Read the table's last seq again: the stream may have skipped some.
            c.known = false;
            c.last = Last::Unknown;
            c.gen += 1;
            c.asked = false;
        }
        self.user_ids()
    }

    /// The user's chats in list order: activity descending, then chat id.
    pub fn order(&self, user: &Uuid) -> Vec<(Micros, Uuid)> {
        let Some(u) = self.users.get(user) else { return Vec::new() };
        let mut list: Vec<(Micros, Uuid)> =
            u.entries.keys().map(|c| (self.chats.get(c).map(|c| c.at).unwrap_or(0), *c)).collect();
        list.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        list
    }

    /// Whether the user is (still) in the chat.
    pub fn has_chat(&self, user: &Uuid, chat: &Uuid) -> bool {
        self.users.get(user).is_some_and(|u| u.entries.contains_key(chat))
    }

    /// The summary, when exact.
    pub fn summary(&self, user: &Uuid, chat: &Uuid) -> Option<Summary> {
        let u = self.users.get(user)?;
        let e = u.entries.get(chat)?;
        let c = self.chats.get(chat)?;
        let last = match &c.last {
            Last::Unknown => return None,
            Last::Empty => None,
            Last::Row { row, .. } => Some(row.clone()),
        };
        Some(Summary {
            chat: *chat,
            last_seq: c.last_seq,
            last,
            at: c.at,
            unread: e.unread?.min(SATURATED - 1),
            read: e.read,
            delivered: e.delivered,
        })
    }

    pub fn unread_chats(&self, user: &Uuid) -> u32 {
        self.users.get(user).map(|u| u.unread_chats).unwrap_or(0)
    }

    /// Chats of a user's list.
    #[cfg(test)]
    pub fn entries(&self, user: &Uuid) -> usize {
        self.users.get(user).map(|u| u.entries.len()).unwrap_or(0)
    }
}

impl User {
    /// Counts (or, with `add` false, un-counts) an entry's unread flag in
    /// the badge or among the uncertain ones.
    fn tally(&mut self, has: Option<bool>, add: bool) {
        let counter = match has {
            Some(true) => &mut self.unread_chats,
            None => &mut self.uncertain,
            Some(false) => return,
        };
        if add {
            *counter += 1;
        } else {
            *counter -= 1;
        }
    }

    /// Sets an entry, its flag counted.
    fn put(&mut self, chat: Uuid, entry: Entry) {
        let has = entry.has;
        if let Some(old) = self.entries.insert(chat, entry) {
            self.tally(old.has, false);
        }
        self.tally(has, true);
    }

    /// Removes an entry, its flag no longer counted.
    fn take(&mut self, chat: &Uuid) -> Option<Entry> {
        let e = self.entries.remove(chat)?;
        self.tally(e.has, false);
        Some(e)
    }
}

fn set_has(u: &mut User, chat: Uuid, has: Option<bool>) {
    let Some(e) = u.entries.get_mut(&chat) else { return };
    let old = std::mem::replace(&mut e.has, has);
    if old != has {
        u.tally(old, false);
        u.tally(has, true);
    }
}

#[cfg(test)]
mod tests;

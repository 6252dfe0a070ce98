//! catchup: what each subscription of one connection still owes its client,
//! and in which order, as pure state (no I/O, no clock).
//!
//! Per subscribed chat it remembers the last message seq written (`last`).
//! A live message at or below it is dropped (the seam between history and
//! live, or a replay); the next one (`last + 1`) is written; one further
//! ahead means something is missing, and the chat owes a read of the table
//! from `last` on instead. An `update` or `delete` above `last` is dropped
//! too: its message is not written yet, and when it is read from the table
//! it shows the change already (or is gone). So what a client sees per chat
//! is contiguous, increasing, never repeated, and no change arrives before
//! its message.
//!
//! Table work ([`Step`]) is what a subscription owes beyond the live stream:
//! messages after `after_seq`, a gap, a catch-up after it fell behind in the
//! hub ([`Behind`]: the updates, deletes and receipts it missed), a
//! resynchronisation. Chats take their turn in the order their work arose.
//!
//! A `ping` is a barrier: its `pong` is due once every live frame queued
//! before it was taken and every piece of table work created before it is
//! done ([`Catchup::pong`]).
//!
//! The session does the reading and the writing; this module decides.

use std::collections::{HashSet, VecDeque};

use rustc_hash::FxHashMap;
use uuid::Uuid;

use crate::protocol::{EventFrame, FrameKind};

/// Users whose dropped receipts are remembered per subscription; past it, the
/// catch-up sends every participant's watermarks.
pub const MAX_REMEMBERED_RECEIPTS: usize = 256;

/// What a subscription that fell behind in the hub missed that reading
/// messages after its last seq from the table would not bring back.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Behind {
    /// Frames of this connection queued before the first drop: they are
    /// older than anything dropped, so the session handles them first.
    pub after: u64,
    /// Lowest seq of a dropped `update`.
    pub updates_from: Option<i64>,
    /// Dropped deletes: (seq, id).
    pub deletes: Vec<(i64, Uuid)>,
    /// Users whose dropped receipts must be sent again.
    pub receipts: HashSet<Uuid>,
    /// More receipts were dropped than remembered: send every participant's.
    pub all_receipts: bool,
}

impl Behind {
    /// Notes a dropped frame; false when `deletes_left` (a per-connection
    /// bound) is used up.
    pub fn note(&mut self, frame: &EventFrame, deletes_left: &mut usize) -> bool {
        match frame.kind {
            FrameKind::Message | FrameKind::Typing => {}
            FrameKind::Update => self.updates_from = Some(self.updates_from.map_or(frame.seq, |s| s.min(frame.seq))),
            FrameKind::Delete => {
                if *deletes_left == 0 {
                    return false;
                }
                *deletes_left -= 1;
                self.deletes.push((frame.seq, frame.subject.unwrap_or_default()));
            }
            FrameKind::Receipt => {
                if let Some(user) = frame.subject {
                    if self.receipts.len() < MAX_REMEMBERED_RECEIPTS {
                        self.receipts.insert(user);
                    } else {
                        self.all_receipts = true;
                    }
                }
            }
        }
        true
    }
}

/// Table work of one subscription.
#[derive(Debug, Default)]
struct Work {
    /// Messages after `last`, from the table.
    messages: bool,
    /// The read must reach this seq: it was streamed, so it is committed,
    /// but may not be visible yet (synchronous replication).
    until: Option<i64>,
    /// Its transaction was seen visible: a read that still ends short of
    /// it means the message was deleted since.
    until_visible: bool,
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

impl Work {
    /// Adds what a subscription missed while behind.
    fn merge_behind(&mut self, b: Behind, last: i64) {
        self.behind = true;
        self.messages = true;
        // Messages after `last` are read from the table as they are now; rows
        // up to it the client has, and may have missed updates of.
        if let Some(from) = b.updates_from.filter(|f| *f <= last) {
            self.updates = Some(match self.updates {
                Some((f, t)) => (f.min(from), t.max(last)),
                None => (from, last),
            });
        }
        self.deletes.extend(b.deletes.into_iter().filter(|(seq, _)| *seq <= last));
        if b.all_receipts {
            self.receipts = Some(None);
        } else if !b.receipts.is_empty() {
            match &mut self.receipts {
                Some(None) => {}
                Some(Some(users)) => users.extend(b.receipts),
                None => self.receipts = Some(Some(b.receipts)),
            }
        }
    }
}

#[derive(Debug)]
struct Sub {
    /// Highest message seq written for this chat.
    last: i64,
    work: Option<Work>,
    /// Seqs at or below `last` that a table read stepped over (deleted
    /// before it read them, or never stored): the client never had those
    /// messages, so no update or delete of them may reach it. The newest
    /// [`MAX_SKIPPED`] ranges, inclusive.
    skipped: VecDeque<(i64, i64)>,
}

impl Sub {
    fn new(last: i64) -> Sub {
        Sub { last, work: None, skipped: VecDeque::new() }
    }

    /// Whether the client was given message `seq` (or had it before).
    fn has(&self, seq: i64) -> bool {
        seq <= self.last && !self.skipped.iter().any(|(from, to)| (*from..=*to).contains(&seq))
    }
}

/// Ranges of stepped-over seqs remembered per subscription. Past it the
/// oldest is forgotten: a change of a message that old and never delivered
/// may then reach the client, which has nothing to apply it to.
pub const MAX_SKIPPED: usize = 64;

/// The next piece of table work, for one chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Read a page of messages with seq above `after`; hand each row to
    /// [`Catchup::table_message`], then [`Catchup::messages_read`].
    Messages { after: i64 },
    /// Read rows `from..=to` again and write them as `update`s; then
    /// [`Catchup::updates_read`].
    Updates { from: i64, to: i64 },
    /// Write these deletes (sorted, once each).
    Deletes(Vec<(i64, Uuid)>),
    /// Write the watermarks of these users (None: every participant's).
    Receipts(Option<Vec<Uuid>>),
}

/// What to do with a live frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it.
    Write,
    /// Written already, not subscribed, or its message is not written yet.
    Drop,
    /// Something before it is missing: the chat now owes a table read
    /// (which brings this one too).
    Gap,
}

/// A `pong` waiting until what was owed before its `ping` is written.
#[derive(Debug)]
struct Barrier<R> {
    reference: R,
    /// Live frames queued before the ping.
    taken: u64,
    /// Table work created before the ping.
    generation: u64,
}

/// One connection's subscriptions and what they owe; `R` is what a `pong`
/// echoes (the ping's `ref`).
#[derive(Debug)]
pub struct Catchup<R> {
    subs: FxHashMap<Uuid, Sub>,
    /// Highest seq written per chat, kept after unsubscribe: a resubscribe
    /// on this connection never repeats a message.
    written: FxHashMap<Uuid, i64>,
    /// Chats with table work, in the order it arose.
    pending: VecDeque<Uuid>,
    next_generation: u64,
    barriers: VecDeque<Barrier<R>>,
    /// Live frames taken from the queue so far.
    taken: u64,
}

impl<R> Default for Catchup<R> {
    fn default() -> Self {
        Catchup {
            subs: FxHashMap::default(),
            written: FxHashMap::default(),
            pending: VecDeque::new(),
            // Barriers take the next generation; work older than a barrier
            // has a lower one (see `live`), so it starts above 0.
            next_generation: 1,
            barriers: VecDeque::new(),
            taken: 0,
        }
    }
}

impl<R> Catchup<R> {
    pub fn is_subscribed(&self, chat: &Uuid) -> bool {
        self.subs.contains_key(chat)
    }

    /// Every subscribed chat.
    pub fn chats(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.subs.keys().copied()
    }

    /// Live frames taken from the queue so far (what the hub's behind
    /// bookkeeping counts against).
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// A checked subscription begins. The chat's newest seq is `latest`;
    /// the client asked for what follows `after_seq` (or only what follows
    /// `latest`). Never starts below what this connection already wrote.
    pub fn start(&mut self, chat: Uuid, latest: i64, after_seq: Option<i64>) {
        let floor = self.written.get(&chat).copied().unwrap_or(i64::MIN);
        let start = after_seq.unwrap_or(latest).max(floor);
        self.subs.insert(chat, Sub::new(start));
        if after_seq.is_some_and(|a| a < latest) {
            self.owe(chat, |w, _| w.messages = true);
        }
    }

    /// Ends a subscription, however it ends, dropping its table work and
    /// remembering the last seq written. Returns whether it was subscribed.
    pub fn end(&mut self, chat: Uuid) -> bool {
        let Some(sub) = self.subs.remove(&chat) else { return false };
        if sub.work.is_some() {
            self.pending.retain(|c| *c != chat);
        }
        let e = self.written.entry(chat).or_insert(sub.last);
        *e = (*e).max(sub.last);
        true
    }

    /// The stream lost continuity: every subscription reads the table.
    pub fn resync(&mut self) {
        let chats: Vec<Uuid> = self.subs.keys().copied().collect();
        for chat in chats {
            self.owe(chat, |w, _| w.messages = true);
        }
    }

    /// Message `seq` was streamed before this subscription could hear it,
    /// and the table did not show it yet: the subscription reads until it
    /// does.
    pub fn expect(&mut self, chat: Uuid, seq: i64) {
        if self.subs.get(&chat).is_none_or(|s| s.last >= seq) {
            return;
        }
        self.owe(chat, |w, _| {
            w.messages = true;
            w.until = Some(w.until.map_or(seq, |u| u.max(seq)));
        });
    }

    /// The subscription fell behind in the hub and missed `behind`.
    pub fn fell_behind(&mut self, chat: Uuid, mut behind: Behind) {
        if let Some(sub) = self.subs.get(&chat) {
            behind.deletes.retain(|(seq, _)| sub.has(*seq));
        }
        self.owe(chat, |w, last| w.merge_behind(behind, last));
    }

    fn owe(&mut self, chat: Uuid, add: impl FnOnce(&mut Work, i64)) {
        let generation = self.next_generation;
        self.owe_as_of(chat, generation, add);
    }

    /// Adds table work; new work counts as created at `generation` (for
    /// ping barriers).
    fn owe_as_of(&mut self, chat: Uuid, generation: u64, add: impl FnOnce(&mut Work, i64)) {
        let Some(sub) = self.subs.get_mut(&chat) else { return };
        let work = sub.work.get_or_insert_with(|| {
            self.pending.push_back(chat);
            self.next_generation += 1;
            Work { generation, ..Default::default() }
        });
        add(work, sub.last);
    }

    /// A live frame taken from the queue. `reading_held`: the table cannot
    /// be read right now (retrying): nothing of a chat that owes a read
    /// goes out unchecked meanwhile.
    pub fn live(&mut self, frame: &EventFrame, reading_held: bool) -> Verdict {
        self.taken += 1;
        let Some(sub) = self.subs.get_mut(&frame.chat_id) else { return Verdict::Drop };
        match frame.kind {
            FrameKind::Message => {
                if frame.seq <= sub.last {
                    return Verdict::Drop;
                }
                if reading_held && sub.work.as_ref().is_some_and(|w| w.messages) {
                    return Verdict::Drop;
                }
                if frame.seq > sub.last + 1 {
                    // The read it needs is owed since the frame was queued:
                    // before any ping that counted the frame.
                    let generation = self
                        .barriers
                        .iter()
                        .find(|b| b.taken >= self.taken)
                        .map_or(self.next_generation, |b| b.generation - 1);
                    self.owe_as_of(frame.chat_id, generation, |w, _| w.messages = true);
                    return Verdict::Gap;
                }
                sub.last = frame.seq;
                Verdict::Write
            }
            // Its message is not written yet (a table read brings the row as
            // it is then), or never will be.
            FrameKind::Update | FrameKind::Delete if !sub.has(frame.seq) => Verdict::Drop,
            FrameKind::Update | FrameKind::Delete | FrameKind::Receipt | FrameKind::Typing => Verdict::Write,
        }
    }

    /// Whether any table work waits.
    pub fn has_work(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The oldest chat's next piece of table work. None when nothing is
    /// owed; a chat whose work is all done is finished on the way (and its
    /// catch-up counted through `caught_up` when it had fallen behind).
    pub fn next_step(&mut self, mut caught_up: impl FnMut(Uuid)) -> Option<(Uuid, Step)> {
        while let Some(&chat) = self.pending.front() {
            let Some(Sub { last, work: Some(w), .. }) = self.subs.get_mut(&chat) else {
                self.pending.pop_front();
                continue;
            };
            let step = if w.messages {
                Step::Messages { after: *last }
            } else if let Some((from, to)) = w.updates {
                Step::Updates { from, to }
            } else if !w.deletes.is_empty() {
                let mut deletes = std::mem::take(&mut w.deletes);
                deletes.sort_unstable();
                deletes.dedup();
                Step::Deletes(deletes)
            } else if let Some(users) = w.receipts.take() {
                Step::Receipts(users.map(|u| u.into_iter().collect()))
            } else {
                if w.behind {
                    caught_up(chat);
                }
                if let Some(sub) = self.subs.get_mut(&chat) {
                    sub.work = None;
                }
                self.pending.pop_front();
                continue;
            };
            return Some((chat, step));
        }
        None
    }

    /// A message row read from the table for [`Step::Messages`]: true when
    /// it is new to the client (write it), false when it was written already.
    pub fn table_message(&mut self, chat: Uuid, seq: i64) -> bool {
        match self.subs.get_mut(&chat) {
            Some(sub) if seq > sub.last => {
                if seq > sub.last + 1 {
                    if sub.skipped.len() == MAX_SKIPPED {
                        sub.skipped.pop_front();
                    }
                    sub.skipped.push_back((sub.last + 1, seq - 1));
                }
                sub.last = seq;
                true
            }
            _ => false,
        }
    }

    /// A page of [`Step::Messages`] is written; `more`: the table had more.
    /// False when the table ended before a seq the read must reach
    /// ([`Catchup::expect`]): that message is not visible yet, or was
    /// deleted; [`Catchup::visible_up_to`] tells which.
    pub fn messages_read(&mut self, chat: Uuid, more: bool) -> bool {
        let Some(sub) = self.subs.get_mut(&chat) else { return true };
        let last = sub.last;
        let Some(w) = sub.work.as_mut() else { return true };
        let short = !more && !w.until_visible && w.until.is_some_and(|u| last < u);
        if !more && !short {
            w.until = None;
            w.until_visible = false;
        }
        w.messages = more || short;
        !short
    }

    /// After a short read: the chat's visible newest seq is `latest`. When
    /// that reaches the awaited seq, its transaction is visible now: true,
    /// and the next read settles it (the message, or, if that read still
    /// ends short, the message was deleted). Else false: read again later.
    pub fn visible_up_to(&mut self, chat: Uuid, latest: i64) -> bool {
        let Some(w) = self.work(chat) else { return true };
        if w.until.is_some_and(|u| latest < u) {
            return false;
        }
        w.until_visible = true;
        true
    }

    /// A page of [`Step::Updates`] is written; what remains of the range.
    pub fn updates_read(&mut self, chat: Uuid, rest: Option<(i64, i64)>) {
        if let Some(w) = self.work(chat) {
            w.updates = rest;
        }
    }

    fn work(&mut self, chat: Uuid) -> Option<&mut Work> {
        self.subs.get_mut(&chat).and_then(|s| s.work.as_mut())
    }

    /// A `ping` arrived while `queued` live frames wait in the queue.
    pub fn ping(&mut self, reference: R, queued: u64) {
        self.barriers.push_back(Barrier { reference, taken: self.taken + queued, generation: self.next_generation });
    }

    /// The next `pong` that is due, if any (call until None).
    pub fn pong(&mut self) -> Option<R> {
        let b = self.barriers.front()?;
        let frames_done = self.taken >= b.taken;
        let work_done = self
            .pending
            .iter()
            .filter_map(|c| self.subs.get(c)?.work.as_ref().map(|w| w.generation))
            .min()
            .is_none_or(|g| g >= b.generation);
        if !(frames_done && work_done) {
            return None;
        }
        self.barriers.pop_front().map(|b| b.reference)
    }

    /// Pongs not yet due.
    pub fn pongs_waiting(&self) -> usize {
        self.barriers.len()
    }
}

#[cfg(test)]
mod tests;

//! sequencer: exactly once and in order, per chat.
//!
//! Between the decoder and the fan-out. For every chat it knows the highest
//! `seq` handed on (the high-water mark). A message insert is dropped and
//! counted as a duplicate when its `id` or `(chat_id, client_generated_id)` was
//! already handed on (bounded TTL+LRU caches) or its `seq` is at or below the
//! mark (the usual cause: WAL replayed after a reconnect). An insert that jumps
//! ahead of the mark makes the chat hold its later events for a short window;
//! then the driver asks the database for the missing seqs ([`GapFill`]) and
//! hands the result to [`Sequencer::fill`]: what exists is inserted in order,
//! what does not is counted as a gap and skipped. Other chats never wait.
//!
//! Held events are kept in a map ordered by seq, so holding and releasing
//! cost O(log n) per event however many wait behind a hole. Their number is
//! bounded across chats ([`Sequencer::set_held_budget`]): a chat whose hold
//! would go past it drops its held messages and takes them, and the rest of
//! its messages up to the highest seq seen, from the table instead, through
//! the same [`GapFill`] lookups (at most the budget's worth of seqs each).
//! Until it has caught up, its new messages are dropped the same way, its
//! updates and deletes of those messages too (the table has the rows as they
//! are now), and its other events pass at once.
//!
//! Non-insert events (updates, deletes, participant changes) keep their place
//! relative to the inserts of their chat; replays of them (a transaction at or
//! below the last seen LSN) are dropped.
//!
//! Transactions are fed one event at a time ([`Sequencer::begin`],
//! [`Sequencer::event`], [`Sequencer::commit`]), so a transaction of any size
//! passes without being held in memory. State per chat is small and is
//! dropped when the chat has been quiet for a while ([`Sequencer::evict_idle`]):
//! it is only an optimisation over the table, since each session also checks
//! seqs against what it wrote and reads the table when something is missing.
//!
//! The state machine is synchronous and takes `now` as an argument, so it can
//! be driven by property tests; [`crate::pipeline`] drives it for real.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lru::LruCache;
use uuid::Uuid;

#[cfg(test)]
use crate::event::ChatTxn;
use crate::event::{ChatEvent, MessageRow};
use crate::lsn::{Lsn, Position};
use crate::metrics::{self as m, DupKey};

// Counts units of work on held events (a comparison, a visit), so tests can
// tell linear from quadratic without timing anything.
#[cfg(test)]
thread_local! {
    static WORK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[inline]
fn tally() {
    #[cfg(test)]
    WORK.with(|w| w.set(w.get() + 1));
}

/// Events held across chats, by default: past it a chat's held messages are
/// read back from the table instead (see the module docs).
pub const DEFAULT_HELD_BUDGET: usize = 10_000;

/// Tunables.
#[derive(Debug, Clone)]
pub struct SequencerConfig {
    pub dedupe_capacity: usize,
    pub dedupe_ttl: Duration,
    pub gap_window: Duration,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        SequencerConfig {
            dedupe_capacity: 100_000,
            dedupe_ttl: Duration::from_secs(600),
            gap_window: Duration::from_millis(50),
        }
    }
}

/// An event cleared for fan-out, with the commit time of its transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequenced {
    pub commit_time: DateTime<Utc>,
    pub event: ChatEvent,
    /// Where the change stands in the WAL (None for rows read from the table).
    pub position: Option<Position>,
}

/// A request to look up a chat's missing messages: seqs in `(after, before)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GapFill {
    pub chat_id: Uuid,
    pub after: i64,
    pub before: i64,
}

/// Where a held event waits: inserts at their seq, other events at the seq
/// of the last insert held before them; events with one key in arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    key: i64,
    arrival: u64,
}

impl Ord for Slot {
    fn cmp(&self, other: &Self) -> Ordering {
        tally();
        self.key.cmp(&other.key).then(self.arrival.cmp(&other.arrival))
    }
}

impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

struct Held {
    commit_lsn: Lsn,
    item: Sequenced,
}

/// A chat that went past the held budget: its messages up to `until` come
/// from the table.
#[derive(Debug, Clone, Copy)]
struct Spill {
    until: i64,
    /// Commit LSN of the oldest transaction whose events were dropped: not
    /// confirmed until the table has been read.
    lsn: Lsn,
}

struct ChatState {
    /// Highest seq handed on; None until the first insert is seen.
    high_water: Option<i64>,
    held: BTreeMap<Slot, Held>,
    spill: Option<Spill>,
    deadline: Option<Instant>,
    fill_requested: bool,
    /// Last event seen, for eviction.
    active: Instant,
}

impl ChatState {
    fn new(now: Instant) -> ChatState {
        ChatState {
            high_water: None,
            held: BTreeMap::new(),
            spill: None,
            deadline: None,
            fill_requested: false,
            active: now,
        }
    }

    /// Whether an insert with this seq is held.
    fn holds_insert(&self, seq: i64) -> bool {
        self.held
            .range(Slot { key: seq, arrival: 0 }..=Slot { key: seq, arrival: u64::MAX })
            .any(|(_, h)| matches!(&h.item.event, ChatEvent::Inserted(x) if x.seq == seq))
    }

    /// Whether the table read of a spilled chat will answer for this update
    /// or delete (its message is among those the table is to be read for).
    fn spill_covers(&self, event: &ChatEvent) -> bool {
        let (Some(spill), Some(hw)) = (self.spill, self.high_water) else {
            return false;
        };
        let seq = match event {
            ChatEvent::Updated(m) => m.seq,
            ChatEvent::Deleted { seq, .. } => *seq,
            _ => return false,
        };
        seq > hw && seq <= spill.until
    }
}

fn pin(lsns: &mut BTreeMap<Lsn, usize>, lsn: Lsn) {
    *lsns.entry(lsn).or_default() += 1;
}

fn unpin(lsns: &mut BTreeMap<Lsn, usize>, lsn: Lsn) {
    if let Some(n) = lsns.get_mut(&lsn) {
        *n -= 1;
        if *n == 0 {
            lsns.remove(&lsn);
        }
    }
}

/// The transaction whose events are being fed.
#[derive(Debug, Clone, Copy)]
struct Current {
    commit_lsn: Lsn,
    end_lsn: Lsn,
    commit_time: DateTime<Utc>,
    replay: bool,
    /// Events of the transaction so far.
    events: u32,
}

/// A TTL+LRU map from a row key to the seq it was handed on with. A key seen
/// again with the same seq is a replay; with another seq it is a new row
/// (an app re-inserting a deleted message's id gets a new seq).
struct Seen<K: Hash + Eq> {
    cache: LruCache<K, (i64, Instant)>,
    ttl: Duration,
}

impl<K: Hash + Eq> Seen<K> {
    fn new(capacity: usize, ttl: Duration) -> Self {
        Seen { cache: LruCache::new(NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN)), ttl }
    }
    fn contains(&mut self, k: &K, seq: i64, now: Instant) -> bool {
        let hit = match self.cache.peek(k) {
            Some((s, t)) if now.duration_since(*t) < self.ttl => *s == seq,
            Some(_) => {
                self.cache.pop(k);
                false
            }
            None => false,
        };
        m::dedupe_cache(hit);
        hit
    }
    fn insert(&mut self, k: K, seq: i64, now: Instant) {
        self.cache.put(k, (seq, now));
    }
}

/// The per-chat ordering and dedupe state machine.
pub struct Sequencer {
    cfg: SequencerConfig,
    chats: HashMap<Uuid, ChatState>,
    /// By (chat, id): a message deleted from one chat and inserted into
    /// another under its id may get the same seq there; it is not a replay.
    ids: Seen<(Uuid, Uuid)>,
    client_ids: Seen<(Uuid, Uuid)>,
    last_end: Lsn,
    /// Commit LSNs of transactions with held events, with how many are held.
    held_lsns: BTreeMap<Lsn, usize>,
    /// Chats with held events: deadlines are looked up among these only, so
    /// the per-transaction cost does not grow with the number of chats.
    holding: HashSet<Uuid>,
    current: Option<Current>,
    /// Events held across chats, and the most that may be.
    held_total: usize,
    held_budget: usize,
    /// Arrival counter of held events.
    arrivals: u64,
}

impl Sequencer {
    pub fn new(cfg: SequencerConfig) -> Sequencer {
        Sequencer {
            ids: Seen::new(cfg.dedupe_capacity, cfg.dedupe_ttl),
            client_ids: Seen::new(cfg.dedupe_capacity, cfg.dedupe_ttl),
            cfg,
            chats: HashMap::new(),
            last_end: Lsn(0),
            held_lsns: BTreeMap::new(),
            holding: HashSet::new(),
            current: None,
            held_total: 0,
            held_budget: DEFAULT_HELD_BUDGET,
            arrivals: 0,
        }
    }

    /// Sets the most events held across chats (at least 1).
    pub fn set_held_budget(&mut self, events: usize) {
        self.held_budget = events.max(1);
    }

    /// Events held now, across chats.
    #[cfg(test)]
    pub fn held_events(&self) -> usize {
        self.held_total
    }

    /// Forgets everything: the stream starts over (a new slot or another
    /// server, so old seqs, ids and positions mean nothing any more; or a
    /// new leadership term, which replays what an earlier one may have
    /// dropped unpublished).
    pub fn reset(&mut self) {
        let budget = self.held_budget;
        *self = Sequencer::new(self.cfg.clone());
        self.held_budget = budget;
    }

    /// Declares a chat's high-water mark (everything up to `seq` is handed on).
    #[cfg(test)]
    pub fn set_high_water(&mut self, chat_id: Uuid, seq: i64) {
        let now = Instant::now();
        self.chats.entry(chat_id).or_insert_with(|| ChatState::new(now)).high_water = Some(seq);
    }

    /// Chats with state.
    pub fn chats(&self) -> usize {
        self.chats.len()
    }

    /// Forgets chats that have held nothing and seen nothing for `idle`.
    /// Returns how many were dropped.
    pub fn evict_idle(&mut self, now: Instant, idle: Duration) -> usize {
        let before = self.chats.len();
        self.chats
            .retain(|_, c| !c.held.is_empty() || c.spill.is_some() || now.saturating_duration_since(c.active) < idle);
        before - self.chats.len()
    }

    /// The chat's high-water mark, if known.
    #[cfg(test)]
    pub fn high_water(&self, chat_id: &Uuid) -> Option<i64> {
        self.chats.get(chat_id).and_then(|c| c.high_water)
    }

    /// The position that is safe to confirm: the end of the last transaction,
    /// or, while events are held, the commit LSN of the oldest one holding them
    /// (so that a restart replays it).
    pub fn safe_lsn(&self) -> Lsn {
        self.held_lsns.keys().next().copied().unwrap_or(self.last_end)
    }

    /// When the earliest hold expires.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.holding
            .iter()
            .filter_map(|c| self.chats.get(c))
            .filter(|c| !c.fill_requested)
            .filter_map(|c| c.deadline)
            .min()
    }

    /// Takes one committed transaction; returns what may be handed on now.
    #[cfg(test)]
    pub fn push(&mut self, txn: ChatTxn, now: Instant) -> Vec<Sequenced> {
        self.begin(txn.commit_lsn, txn.end_lsn, txn.commit_time);
        let mut out = Vec::with_capacity(txn.events.len());
        for event in txn.events {
            self.event(event, now, &mut out);
        }
        self.commit();
        out
    }

    /// Starts feeding a committed transaction's events.
    pub fn begin(&mut self, commit_lsn: Lsn, end_lsn: Lsn, commit_time: DateTime<Utc>) {
        let replay = end_lsn <= self.last_end;
        self.current = Some(Current { commit_lsn, end_lsn, commit_time, replay, events: 0 });
    }

    /// One event of the transaction begun last; what may be handed on now is
    /// appended to `out`.
    pub fn event(&mut self, event: ChatEvent, now: Instant, out: &mut Vec<Sequenced>) {
        let Some(cur) = self.current.as_mut() else {
            tracing::error!("sequencer event outside a transaction; dropped");
            return;
        };
        let position = Position { commit_lsn: cur.commit_lsn, index: cur.events };
        cur.events += 1;
        let cur = *cur;
        let item = Sequenced { commit_time: cur.commit_time, event, position: Some(position) };
        match &item.event {
            ChatEvent::Inserted(_) => self.on_insert(item, cur.commit_lsn, now, out),
            _ if cur.replay => tracing::debug!(lsn = %cur.commit_lsn, "dropping replayed change"),
            _ => {
                let Some(chat) = item.event.chat_id() else {
                    out.push(item);
                    return;
                };
                if let Some(state) = self.chats.get_mut(&chat) {
                    state.active = now;
                    if state.spill_covers(&item.event) {
                        return;
                    }
                    if let Some((last, _)) = state.held.last_key_value() {
                        let key = last.key;
                        self.arrivals += 1;
                        state
                            .held
                            .insert(Slot { key, arrival: self.arrivals }, Held { commit_lsn: cur.commit_lsn, item });
                        pin(&mut self.held_lsns, cur.commit_lsn);
                        self.held_total += 1;
                        self.holding.insert(chat);
                        if self.held_total > self.held_budget {
                            self.spill(chat, cur.commit_lsn, now, out);
                        }
                        return;
                    }
                }
                out.push(item);
            }
        }
    }

    /// The transaction begun last is complete.
    pub fn commit(&mut self) {
        if let Some(cur) = self.current.take() {
            self.last_end = self.last_end.max(cur.end_lsn);
        }
    }

    fn on_insert(&mut self, item: Sequenced, commit_lsn: Lsn, now: Instant, out: &mut Vec<Sequenced>) {
        let ChatEvent::Inserted(msg) = &item.event else {
            return;
        };
        if self.ids.contains(&(msg.chat_id, msg.id), msg.seq, now) {
            m::duplicate(DupKey::Id);
            return;
        }
        if let Some(cgid) = msg.client_generated_id {
            if self.client_ids.contains(&(msg.chat_id, cgid), msg.seq, now) {
                m::duplicate(DupKey::ClientGeneratedId);
                return;
            }
        }
        let state = self.chats.entry(msg.chat_id).or_insert_with(|| ChatState::new(now));
        state.active = now;
        if state.high_water.is_some_and(|hw| msg.seq <= hw) || state.holds_insert(msg.seq) {
            m::duplicate(DupKey::Seq);
            return;
        }
        if let Some(spill) = state.spill.as_mut() {
            // The table will be read for it (and for anything below it).
            spill.until = spill.until.max(msg.seq);
            return;
        }
        let in_order = state.high_water.is_none_or(|hw| msg.seq == hw + 1);
        if state.held.is_empty() && in_order {
            let (id, chat, cgid, seq) = (msg.id, msg.chat_id, msg.client_generated_id, msg.seq);
            state.high_water = Some(seq);
            self.remember(id, chat, cgid, seq, now);
            out.push(item);
            return;
        }
        // Out of order, or behind held events: hold it (and, through `push`,
        // what follows in this chat), then release whatever became contiguous.
        let seq = msg.seq;
        let chat = msg.chat_id;
        if state.deadline.is_none() {
            state.deadline = Some(now + self.cfg.gap_window);
        }
        self.arrivals += 1;
        state.held.insert(Slot { key: seq, arrival: self.arrivals }, Held { commit_lsn, item });
        pin(&mut self.held_lsns, commit_lsn);
        self.held_total += 1;
        self.holding.insert(chat);
        out.extend(self.release(chat, Vec::new(), None, now));
        if self.held_total > self.held_budget {
            self.spill(chat, commit_lsn, now, out);
        }
    }

    /// The chat's hold went past the budget: drop its held messages (and
    /// their updates and deletes) for the table to answer for, and hand on
    /// its other held events now, in order.
    fn spill(&mut self, chat_id: Uuid, commit_lsn: Lsn, now: Instant, out: &mut Vec<Sequenced>) {
        let Some(state) = self.chats.get_mut(&chat_id) else {
            return;
        };
        let Some(hw) = state.high_water.filter(|_| !state.held.is_empty()) else {
            return; // nothing held, or nothing to read the table after
        };
        let mut spill = state.spill.unwrap_or(Spill { until: hw, lsn: commit_lsn });
        let was_spilled = state.spill.is_some();
        let mut oldest = spill.lsn;
        for (_, h) in std::mem::take(&mut state.held) {
            tally();
            self.held_total -= 1;
            unpin(&mut self.held_lsns, h.commit_lsn);
            match &h.item.event {
                ChatEvent::Inserted(msg) => {
                    spill.until = spill.until.max(msg.seq);
                    oldest = oldest.min(h.commit_lsn);
                }
                // The table has these rows as they are now (or not at all).
                ChatEvent::Updated(MessageRow { seq, .. }) | ChatEvent::Deleted { seq, .. } if *seq > hw => {
                    spill.until = spill.until.max(*seq);
                    oldest = oldest.min(h.commit_lsn);
                }
                _ => out.push(h.item),
            }
        }
        if was_spilled {
            unpin(&mut self.held_lsns, spill.lsn);
        }
        spill.lsn = oldest;
        pin(&mut self.held_lsns, spill.lsn);
        tracing::warn!(
            chat_id = %chat_id,
            after = hw,
            until = spill.until,
            budget = self.held_budget,
            "too many events held behind a seq gap; reading the chat's messages from the table"
        );
        state.spill = Some(spill);
        state.deadline.get_or_insert(now + self.cfg.gap_window);
        self.holding.insert(chat_id);
    }

    fn remember(&mut self, id: Uuid, chat: Uuid, cgid: Option<Uuid>, seq: i64, now: Instant) {
        self.ids.insert((chat, id), seq, now);
        if let Some(c) = cgid {
            self.client_ids.insert((chat, c), seq, now);
        }
    }

    /// Chats whose hold window has passed and that need a database lookup.
    pub fn expired(&mut self, now: Instant) -> Vec<GapFill> {
        let mut fills = Vec::new();
        for chat_id in &self.holding {
            let Some(state) = self.chats.get_mut(chat_id) else { continue };
            if state.fill_requested || state.deadline.is_none_or(|d| d > now) {
                continue;
            }
            if let (Some(spill), Some(after)) = (state.spill, state.high_water) {
                // Spilled: read the table in ranges of at most the budget.
                let width = i64::try_from(self.held_budget).unwrap_or(i64::MAX);
                let before = spill.until.min(after.saturating_add(width)).saturating_add(1);
                state.fill_requested = true;
                fills.push(GapFill { chat_id: *chat_id, after, before });
                continue;
            }
            // Held inserts are in seq order: the first is the lowest.
            let first_held = state.held.values().find_map(|h| {
                tally();
                match &h.item.event {
                    ChatEvent::Inserted(m) => Some(m.seq),
                    _ => None,
                }
            });
            match (state.high_water, first_held) {
                (Some(after), Some(before)) => {
                    state.fill_requested = true;
                    fills.push(GapFill { chat_id: *chat_id, after, before });
                }
                _ => state.deadline = Some(now), // nothing to look up; released by `fill`
            }
        }
        fills
    }

    /// The lookup for `gap` failed: keep holding and ask again after a window.
    pub fn retry(&mut self, gap: GapFill, now: Instant) {
        if let Some(state) = self.chats.get_mut(&gap.chat_id) {
            state.fill_requested = false;
            state.deadline = Some(now + self.cfg.gap_window.max(Duration::from_millis(500)));
        }
    }

    /// Hands in the database's answer to a [`GapFill`]: `found` are the
    /// messages of the missing range that exist. Releases the chat's held
    /// events in order up to the range's end; seqs still missing there are
    /// counted as gaps. A later gap starts its own window.
    pub fn fill(&mut self, gap: GapFill, found: Vec<MessageRow>, now: Instant) -> Vec<Sequenced> {
        let found =
            found.into_iter().filter(|r| r.chat_id == gap.chat_id && r.seq > gap.after && r.seq < gap.before).collect();
        let out = self.release(gap.chat_id, found, Some(gap.before), now);
        self.advance_spill(gap, now);
        out
    }

    /// After a lookup for a spilled chat: everything below `gap.before` is
    /// now handed on or a real gap. Done once the table has been read up to
    /// the highest seq dropped; until then, the next range is due at once.
    fn advance_spill(&mut self, gap: GapFill, now: Instant) {
        let Some(state) = self.chats.get_mut(&gap.chat_id) else {
            return;
        };
        let Some(spill) = state.spill else {
            return;
        };
        let end = gap.before.saturating_sub(1);
        let hw = state.high_water.unwrap_or(gap.after);
        if end > hw {
            m::seq_gap();
            tracing::warn!(chat_id = %gap.chat_id, after = hw, next = end + 1, "seq gap: missing messages not found");
            state.high_water = Some(end);
        }
        state.fill_requested = false;
        if state.high_water.is_some_and(|hw| hw >= spill.until) {
            state.spill = None;
            unpin(&mut self.held_lsns, spill.lsn);
            if state.held.is_empty() {
                state.deadline = None;
                self.holding.remove(&gap.chat_id);
            }
        } else {
            state.deadline = Some(now);
            self.holding.insert(gap.chat_id);
        }
    }

    /// Hands on held events in order. Inserts pass when contiguous, or when
    /// their seq is at most `force_until` (the end of a range the database was
    /// asked about: what it did not return is a real gap).
    fn release(
        &mut self,
        chat_id: Uuid,
        found: Vec<MessageRow>,
        force_until: Option<i64>,
        now: Instant,
    ) -> Vec<Sequenced> {
        let Some(state) = self.chats.get_mut(&chat_id) else {
            return Vec::new();
        };
        let commit_time = state.held.first_key_value().map(|(_, h)| h.item.commit_time).unwrap_or_else(Utc::now);
        let mut repaired = 0u64;
        for row in found {
            self.arrivals += 1;
            self.held_total += 1;
            state.held.insert(
                Slot { key: row.seq, arrival: self.arrivals },
                Held {
                    commit_lsn: Lsn(0),
                    item: Sequenced { commit_time, event: ChatEvent::Inserted(row), position: None },
                },
            );
        }
        let mut out = Vec::new();
        // In key order; followers stay after their insert. Stops at the first
        // insert that may not pass yet: what follows it waits too.
        while let Some(entry) = state.held.first_entry() {
            tally();
            let h = entry.get();
            let lsn = h.commit_lsn;
            let pass = match &h.item.event {
                ChatEvent::Inserted(msg) => {
                    let hw = state.high_water;
                    let stale = hw.is_some_and(|hw| msg.seq <= hw);
                    if stale || self.ids.contains(&(chat_id, msg.id), msg.seq, now) {
                        m::duplicate(if stale { DupKey::Seq } else { DupKey::Id });
                        false
                    } else if hw.is_none_or(|hw| msg.seq == hw + 1) || force_until.is_some_and(|f| msg.seq <= f) {
                        if hw.is_some_and(|hw| msg.seq > hw + 1) {
                            m::seq_gap();
                            tracing::warn!(chat_id = %chat_id, after = ?hw, next = msg.seq, "seq gap: missing messages not found");
                        }
                        if lsn == Lsn(0) {
                            repaired += 1;
                        }
                        state.high_water = Some(msg.seq);
                        self.ids.insert((chat_id, msg.id), msg.seq, now);
                        if let Some(c) = msg.client_generated_id {
                            self.client_ids.insert((chat_id, c), msg.seq, now);
                        }
                        true
                    } else {
                        break;
                    }
                }
                _ => true,
            };
            let h = entry.remove();
            self.held_total -= 1;
            if pass {
                out.push(h.item);
            }
            if lsn != Lsn(0) {
                unpin(&mut self.held_lsns, lsn);
            }
        }
        if repaired > 0 {
            m::gap_repaired(repaired);
        }
        if state.held.is_empty() {
            state.deadline = None;
            state.fill_requested = false;
            self.holding.remove(&chat_id);
        } else if force_until.is_some() {
            // Still blocked after a lookup, by a later gap: give it its own window.
            state.deadline = Some(now + self.cfg.gap_window);
            state.fill_requested = false;
        }
        out
    }
}

#[cfg(test)]
mod tests;

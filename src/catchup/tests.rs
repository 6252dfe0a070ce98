//! Catch-up bookkeeping alone: examples, then a model of one connection
//! (a table per chat, the hub's queue that drops into `Behind` when full,
//! table reads a page at a time, pings) run against random schedules.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use proptest::prelude::*;

use super::*;

fn frame(chat: Uuid, kind: FrameKind, seq: i64) -> Arc<EventFrame> {
    Arc::new(EventFrame {
        chat_id: chat,
        seq,
        kind,
        commit_time: None,
        subject: None,
        text: Utf8Bytes::from("{}"),
        position: None,
    })
}

#[test]
fn live_messages_pass_once_in_order_and_a_gap_owes_a_read() {
    let chat = Uuid::new_v4();
    let mut c = Catchup::<u32>::default();
    c.start(chat, 5, None);
    assert!(!c.has_work(), "nothing before latest was asked for");
    assert_eq!(c.live(&frame(chat, FrameKind::Message, 5), false), Verdict::Drop, "seam");
    assert_eq!(c.live(&frame(chat, FrameKind::Message, 6), false), Verdict::Write);
    assert_eq!(c.live(&frame(chat, FrameKind::Update, 7), false), Verdict::Drop, "its message is not written");
    assert_eq!(c.live(&frame(chat, FrameKind::Message, 8), false), Verdict::Gap);
    assert_eq!(c.next_step(|_| ()), Some((chat, Step::Messages { after: 6 })));
    assert!(c.table_message(chat, 7));
    assert!(c.table_message(chat, 8));
    assert!(!c.table_message(chat, 8));
    c.messages_read(chat, false);
    assert_eq!(c.next_step(|_| ()), None);
    assert_eq!(c.live(&frame(chat, FrameKind::Message, 8), false), Verdict::Drop);
    assert_eq!(c.taken(), 5);
}

#[test]
fn a_resubscribe_on_the_same_connection_never_repeats() {
    let chat = Uuid::new_v4();
    let mut c = Catchup::<u32>::default();
    c.start(chat, 0, Some(0));
    assert_eq!(c.live(&frame(chat, FrameKind::Message, 1), false), Verdict::Write);
    assert!(c.end(chat));
    assert!(!c.end(chat));
    c.start(chat, 1, Some(0));
    let (_, step) = c.next_step(|_| ()).unwrap();
    assert_eq!(step, Step::Messages { after: 1 }, "starts at what was written");
}

#[test]
fn behind_work_reads_messages_then_updates_deletes_and_receipts_once() {
    let (chat, gone, who) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut c = Catchup::<u32>::default();
    c.start(chat, 10, None);
    let mut b = Behind::default();
    let mut left = 10;
    let mut delete = EventFrame { subject: Some(gone), ..(*frame(chat, FrameKind::Delete, 4)).clone_frame() };
    assert!(b.note(&frame(chat, FrameKind::Update, 3), &mut left));
    assert!(b.note(&delete, &mut left));
    delete.seq = 12; // of a message the client never had: the table read covers it
    assert!(b.note(&delete, &mut left));
    let receipt = EventFrame { subject: Some(who), ..(*frame(chat, FrameKind::Receipt, 9)).clone_frame() };
    assert!(b.note(&receipt, &mut left));
    c.fell_behind(chat, b);
    let mut counted = Vec::new();
    assert_eq!(c.next_step(|c| counted.push(c)), Some((chat, Step::Messages { after: 10 })));
    c.messages_read(chat, false);
    assert_eq!(c.next_step(|c| counted.push(c)), Some((chat, Step::Updates { from: 3, to: 10 })));
    c.updates_read(chat, None);
    assert_eq!(c.next_step(|c| counted.push(c)), Some((chat, Step::Deletes(vec![(4, gone)]))));
    assert_eq!(c.next_step(|c| counted.push(c)), Some((chat, Step::Receipts(Some(vec![who])))));
    assert!(counted.is_empty());
    assert_eq!(c.next_step(|c| counted.push(c)), None);
    assert_eq!(counted, [chat], "one catch-up counted");
}

#[test]
fn deletes_past_the_bound_say_so() {
    let chat = Uuid::new_v4();
    let mut b = Behind::default();
    let mut left = 1;
    assert!(b.note(&frame(chat, FrameKind::Delete, 1), &mut left));
    assert!(!b.note(&frame(chat, FrameKind::Delete, 2), &mut left));
}

#[test]
fn receipts_past_the_bound_become_everyone() {
    let chat = Uuid::new_v4();
    let mut b = Behind::default();
    let mut left = 0;
    for _ in 0..=MAX_REMEMBERED_RECEIPTS {
        let f = EventFrame { subject: Some(Uuid::new_v4()), ..(*frame(chat, FrameKind::Receipt, 1)).clone_frame() };
        b.note(&f, &mut left);
    }
    assert!(b.all_receipts);
    let mut c = Catchup::<u32>::default();
    c.start(chat, 1, None);
    c.fell_behind(chat, b);
    c.next_step(|_| ());
    c.messages_read(chat, false);
    assert_eq!(c.next_step(|_| ()), Some((chat, Step::Receipts(None))));
}

#[test]
fn a_pong_waits_for_queued_frames_and_older_work_only() {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut c = Catchup::<u32>::default();
    c.start(a, 3, Some(0)); // owes a read
    c.start(b, 0, None);
    c.ping(1, 1); // one frame queued
    assert_eq!(c.pong(), None);
    c.live(&frame(b, FrameKind::Message, 1), false);
    assert_eq!(c.pong(), None, "the read of a is older");
    c.next_step(|_| ());
    c.messages_read(a, false);
    assert_eq!(c.next_step(|_| ()), None, "a is done");
    c.resync(); // new work, after the ping: not waited for
    assert_eq!(c.pong(), Some(1));
    assert!(c.has_work(), "the resync's reads are pending");
    assert_eq!(c.pongs_waiting(), 0);
}

/// A message that was missing when a later one came live, and deleted
/// before the table read: the client never has it, so its delete must not
/// reach the client either.
#[test]
fn no_change_of_a_message_the_client_never_had() {
    let chat = Uuid::new_v4();
    let mut c = Catchup::<u32>::default();
    c.start(chat, 5, None);
    assert_eq!(c.live(&frame(chat, FrameKind::Message, 7), false), Verdict::Gap);
    assert_eq!(c.next_step(|_| ()), Some((chat, Step::Messages { after: 5 })));
    // 7 was deleted before the read: the table has 6 and 8.
    assert!(c.table_message(chat, 6));
    assert!(c.table_message(chat, 8));
    c.messages_read(chat, false);
    assert_eq!(c.live(&frame(chat, FrameKind::Delete, 7), false), Verdict::Drop);
    assert_eq!(c.live(&frame(chat, FrameKind::Update, 7), false), Verdict::Drop);
    assert_eq!(c.live(&frame(chat, FrameKind::Delete, 6), false), Verdict::Write);
    // Nor through a catch-up of deletes missed while behind.
    let mut b = Behind::default();
    let mut left = 10;
    b.note(&frame(chat, FrameKind::Delete, 7), &mut left);
    c.fell_behind(chat, b);
    c.next_step(|_| ());
    c.messages_read(chat, false);
    assert_eq!(c.next_step(|_| ()), None, "no delete of 7 owed");
}

/// A frame queued before a ping that turns out to need a table read: the
/// pong waits for that read.
#[test]
fn a_gap_found_in_a_frame_queued_before_a_ping_holds_its_pong() {
    let chat = Uuid::new_v4();
    let mut c = Catchup::<u32>::default();
    c.start(chat, 3, None);
    c.ping(1, 1); // message 5 is queued; 4 will never come (deleted)
    assert_eq!(c.live(&frame(chat, FrameKind::Message, 5), false), Verdict::Gap);
    assert_eq!(c.pong(), None, "5 is not written yet");
    assert_eq!(c.next_step(|_| ()), Some((chat, Step::Messages { after: 3 })));
    assert!(c.table_message(chat, 5));
    c.messages_read(chat, false);
    assert_eq!(c.next_step(|_| ()), None);
    assert_eq!(c.pong(), Some(1));
}

/// A message streamed but not yet visible in the table: the read is not
/// done until it shows (and says so, so the session reads again later).
#[test]
fn a_read_owed_until_a_streamed_seq_is_visible() {
    let chat = Uuid::new_v4();
    let mut c = Catchup::<u32>::default();
    c.start(chat, 4, None);
    c.expect(chat, 5);
    assert_eq!(c.next_step(|_| ()), Some((chat, Step::Messages { after: 4 })));
    assert!(!c.messages_read(chat, false), "5 not read yet");
    assert_eq!(c.next_step(|_| ()), Some((chat, Step::Messages { after: 4 })), "read again");
    assert!(c.table_message(chat, 5));
    assert!(c.messages_read(chat, false));
    assert_eq!(c.next_step(|_| ()), None);
    // Nothing owed for what the client has already.
    c.expect(chat, 3);
    assert!(!c.has_work());
    // Streamed, then deleted before the read: once the chat's visible
    // newest seq is past it, the read is done without it.
    c.expect(chat, 7);
    c.next_step(|_| ());
    assert!(c.table_message(chat, 6));
    assert!(!c.messages_read(chat, false));
    assert!(!c.visible_up_to(chat, 6), "7 not visible yet");
    assert!(c.visible_up_to(chat, 8), "7 visible now");
    // Read again: that read settles it (here 7 was deleted; 8 is there).
    assert_eq!(c.next_step(|_| ()), Some((chat, Step::Messages { after: 6 })));
    assert!(c.table_message(chat, 8));
    assert!(c.messages_read(chat, false));
    assert_eq!(c.next_step(|_| ()), None);
    // Visible and read short again: deleted, done.
    c.expect(chat, 10);
    c.next_step(|_| ());
    assert!(!c.messages_read(chat, false));
    assert!(c.visible_up_to(chat, 10));
    c.next_step(|_| ());
    assert!(c.messages_read(chat, false), "10 is gone");
    assert_eq!(c.next_step(|_| ()), None);
}

#[test]
fn ending_a_subscription_drops_its_work_and_frees_pongs() {
    let chat = Uuid::new_v4();
    let mut c = Catchup::<u32>::default();
    c.start(chat, 9, Some(1));
    c.ping(7, 0);
    assert_eq!(c.pong(), None);
    c.end(chat);
    assert!(!c.has_work());
    assert_eq!(c.pong(), Some(7));
}

impl EventFrame {
    fn clone_frame(&self) -> EventFrame {
        EventFrame {
            chat_id: self.chat_id,
            seq: self.seq,
            kind: self.kind,
            commit_time: self.commit_time,
            subject: self.subject,
            text: self.text.clone(),
            position: self.position,
        }
    }
}

/// One step of a random schedule.
#[derive(Debug, Clone)]
enum Op {
    /// A message commits in chat `0` or `1`.
    Commit(usize),
    /// An update of an existing message (by a fraction of the chat's length).
    Update(usize, u8),
    /// A delete of an existing message.
    Delete(usize, u8),
    /// The connection's queue is full from now on (frames drop into Behind).
    Fill,
    /// The queue has room again; behind chats are taken once what was queued
    /// before them is taken.
    Drain,
    /// The session takes one live frame.
    Take,
    /// The session does one step of table work.
    Work,
    /// A ping.
    Ping,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..2).prop_map(Op::Commit),
        1 => (0usize..2, any::<u8>()).prop_map(|(c, f)| Op::Update(c, f)),
        1 => (0usize..2, any::<u8>()).prop_map(|(c, f)| Op::Delete(c, f)),
        1 => Just(Op::Fill),
        1 => Just(Op::Drain),
        4 => Just(Op::Take),
        3 => Just(Op::Work),
        1 => Just(Op::Ping),
    ]
}

/// A chat's table and what the client has seen of it.
#[derive(Default)]
struct ModelChat {
    /// Seqs stored (deleted ones removed).
    rows: BTreeSet<i64>,
    latest: i64,
    /// What the client got: messages in order, and the messages it has.
    messages: Vec<i64>,
    has: BTreeSet<i64>,
}

struct Model {
    chats: [Uuid; 2],
    table: HashMap<Uuid, ModelChat>,
    /// The hub's queue, and its view of behind chats: (frames queued before
    /// the first drop, what was dropped).
    queue: VecDeque<Arc<EventFrame>>,
    queued_total: u64,
    full: bool,
    behind: HashMap<Uuid, Behind>,
    deletes_left: usize,
    c: Catchup<(u64, [i64; 2])>,
    pings: u64,
}

const PAGE: usize = 3;

impl Model {
    fn new(after: [Option<i64>; 2], existing: [i64; 2]) -> Model {
        let chats = [Uuid::new_v4(), Uuid::new_v4()];
        let mut m = Model {
            chats,
            table: HashMap::new(),
            queue: VecDeque::new(),
            queued_total: 0,
            full: false,
            behind: HashMap::new(),
            deletes_left: 1000,
            c: Catchup::default(),
            pings: 0,
        };
        for i in 0..2 {
            let mut chat = ModelChat { latest: existing[i], rows: (1..=existing[i]).collect(), ..Default::default() };
            let start = after[i].map_or(existing[i], |a| a.min(existing[i]));
            chat.has = (1..=start).collect();
            m.table.insert(chats[i], chat);
            m.c.start(chats[i], existing[i], after[i].map(|a| a.min(existing[i])));
        }
        m
    }

    fn offer(&mut self, f: Arc<EventFrame>) {
        if let Some(b) = self.behind.get_mut(&f.chat_id) {
            assert!(b.note(&f, &mut self.deletes_left));
        } else if self.full {
            let mut b = Behind { after: self.queued_total, ..Default::default() };
            assert!(b.note(&f, &mut self.deletes_left));
            self.behind.insert(f.chat_id, b);
        } else {
            self.queue.push_back(f);
            self.queued_total += 1;
        }
    }

    /// The hub hands over behind chats once their earlier frames are taken.
    fn take_behind(&mut self) {
        if self.full {
            return;
        }
        let taken = self.c.taken();
        let ready: Vec<Uuid> = self.behind.iter().filter(|(_, b)| b.after <= taken).map(|(c, _)| *c).collect();
        for chat in ready {
            if let Some(b) = self.behind.remove(&chat) {
                self.c.fell_behind(chat, b);
            }
        }
    }

    fn write(&mut self, chat: Uuid, kind: FrameKind, seq: i64) {
        let m = self.table.get_mut(&chat).unwrap();
        match kind {
            FrameKind::Message => {
                assert!(m.messages.last().is_none_or(|l| seq > *l), "out of order: {seq} after {:?}", m.messages);
                assert!(m.has.insert(seq), "message {seq} twice");
                m.messages.push(seq);
            }
            FrameKind::Update | FrameKind::Delete => {
                assert!(m.has.contains(&seq), "{kind:?} {seq} before its message");
            }
            _ => {}
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Commit(i) => {
                let chat = self.chats[i];
                let m = self.table.get_mut(&chat).unwrap();
                m.latest += 1;
                m.rows.insert(m.latest);
                let seq = m.latest;
                self.offer(frame(chat, FrameKind::Message, seq));
            }
            Op::Update(i, f) | Op::Delete(i, f) => {
                let chat = self.chats[i];
                let m = self.table.get_mut(&chat).unwrap();
                let Some(&seq) = m.rows.iter().nth(f as usize % m.rows.len().max(1)) else { return };
                let kind = if matches!(op, Op::Update(..)) { FrameKind::Update } else { FrameKind::Delete };
                if kind == FrameKind::Delete {
                    m.rows.remove(&seq);
                }
                self.offer(frame(chat, kind, seq));
            }
            Op::Fill => self.full = true,
            Op::Drain => {
                self.full = false;
                self.take_behind();
            }
            Op::Take => {
                if let Some(f) = self.queue.pop_front() {
                    if self.c.live(&f, false) == Verdict::Write {
                        self.write(f.chat_id, f.kind, f.seq);
                    }
                }
                self.take_behind();
            }
            Op::Work => self.work(),
            Op::Ping => {
                self.pings += 1;
                // The model's promise: what was committed before the ping, in
                // chats not dropping frames, is written when the pong is.
                let latest = self.chats.map(|c| if self.behind.contains_key(&c) { 0 } else { self.table[&c].latest });
                self.c.ping((self.pings, latest), self.queue.len() as u64);
            }
        }
        while let Some((_, latest)) = self.c.pong() {
            for (i, chat) in self.chats.iter().enumerate() {
                let m = &self.table[chat];
                for seq in m.rows.range(..=latest[i]) {
                    assert!(m.has.contains(seq), "pong before message {seq} of chat {i}");
                }
            }
        }
    }

    fn work(&mut self) {
        let Some((chat, step)) = self.c.next_step(|_| ()) else { return };
        match step {
            Step::Messages { after } => {
                let rows: Vec<i64> = self.table[&chat].rows.range(after + 1..).copied().collect();
                let more = rows.len() > PAGE;
                for seq in rows.into_iter().take(PAGE) {
                    if self.c.table_message(chat, seq) {
                        self.write(chat, FrameKind::Message, seq);
                    }
                }
                self.c.messages_read(chat, more);
            }
            Step::Updates { from, to } => {
                let rows: Vec<i64> = self.table[&chat].rows.range(from..=to).copied().collect();
                let rest = rows.get(PAGE).map(|s| (*s, to));
                for seq in rows.into_iter().take(PAGE) {
                    self.write(chat, FrameKind::Update, seq);
                }
                self.c.updates_read(chat, rest);
            }
            Step::Deletes(deletes) => {
                for (seq, _) in deletes {
                    self.write(chat, FrameKind::Delete, seq);
                }
            }
            Step::Receipts(_) => {}
        }
    }

    /// Lets everything settle: room in the queue, every frame taken, every
    /// piece of work done.
    fn settle(&mut self) {
        self.apply(Op::Drain);
        for _ in 0..100_000 {
            if self.queue.is_empty() && self.behind.is_empty() && !self.c.has_work() {
                break;
            }
            self.apply(Op::Take);
            self.apply(Op::Work);
        }
        assert_eq!(self.c.pongs_waiting(), 0, "a pong never came");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Whatever the schedule: per chat, messages arrive strictly increasing
    /// and once, no update or delete before its message, each pong only once
    /// what came before its ping is written, and once everything settles the
    /// client has every stored message after where it started.
    #[test]
    fn every_schedule_delivers_each_message_once_in_order(
        existing in [0i64..6, 0i64..6],
        after in [proptest::option::of(0i64..6), proptest::option::of(0i64..6)],
        ops in proptest::collection::vec(op(), 0..120),
    ) {
        let mut m = Model::new(after, existing);
        for op in ops {
            m.apply(op);
        }
        m.settle();
        for (i, chat) in m.chats.iter().enumerate() {
            let mc = &m.table[chat];
            let start = after[i].map_or(existing[i], |a| a.min(existing[i]));
            let want: BTreeSet<i64> = mc.rows.range(start + 1..).copied().collect();
            let got: BTreeSet<i64> = mc.messages.iter().copied().filter(|s| mc.rows.contains(s)).collect();
            prop_assert_eq!(got, want, "chat {}", i);
        }
    }
}

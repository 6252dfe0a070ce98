use std::collections::{BTreeSet, HashMap, HashSet};

use proptest::prelude::*;
use serde_json::{json, Map};

use super::*;

fn chat(n: u8) -> Uuid {
    Uuid::from_bytes([n; 16])
}

fn msg(c: u8, seq: i64) -> MessageRow {
    let mut id = [0u8; 16];
    id[0] = c;
    id[8..].copy_from_slice(&seq.to_be_bytes());
    let mut cg = id;
    cg[1] = 0xcc;
    let mut json = Map::new();
    json.insert("seq".into(), json!(seq));
    MessageRow {
        id: Uuid::from_bytes(id),
        chat_id: chat(c),
        seq,
        sender_id: None,
        client_generated_id: Some(Uuid::from_bytes(cg)),
        status: None,
        body: crate::event::RowBody::Json(json),
    }
}

fn txn(lsn: u64, events: Vec<ChatEvent>) -> ChatTxn {
    ChatTxn { commit_lsn: Lsn(lsn * 100), end_lsn: Lsn(lsn * 100 + 10), commit_time: Utc::now(), events }
}

fn inserted(out: &[Sequenced]) -> Vec<(Uuid, i64)> {
    out.iter()
        .filter_map(|s| match &s.event {
            ChatEvent::Inserted(m) => Some((m.chat_id, m.seq)),
            _ => None,
        })
        .collect()
}

fn cfg() -> SequencerConfig {
    SequencerConfig {
        dedupe_capacity: 1000,
        dedupe_ttl: Duration::from_secs(60),
        gap_window: Duration::from_millis(50),
    }
}

#[test]
fn in_order_stream_passes_and_replay_is_dropped() {
    let mut s = Sequencer::new(cfg());
    let now = Instant::now();
    let a = s.push(txn(1, vec![ChatEvent::Inserted(msg(1, 1)), ChatEvent::Inserted(msg(1, 2))]), now);
    assert_eq!(inserted(&a), vec![(chat(1), 1), (chat(1), 2)]);
    // The same transaction again (WAL replay after reconnect).
    let b = s.push(txn(1, vec![ChatEvent::Inserted(msg(1, 1)), ChatEvent::Inserted(msg(1, 2))]), now);
    assert!(b.is_empty());
    // A different row carrying an old seq is a seq duplicate.
    let mut stale = msg(1, 2);
    stale.id = Uuid::new_v4();
    stale.client_generated_id = None;
    assert!(s.push(txn(2, vec![ChatEvent::Inserted(stale)]), now).is_empty());
    assert_eq!(s.safe_lsn(), Lsn(210));
}

#[test]
fn replayed_updates_are_dropped_but_new_ones_pass() {
    let mut s = Sequencer::new(cfg());
    let now = Instant::now();
    s.push(txn(1, vec![ChatEvent::Inserted(msg(1, 1))]), now);
    let upd = ChatEvent::Updated(msg(1, 1));
    assert_eq!(s.push(txn(2, vec![upd.clone()]), now).len(), 1);
    assert!(s.push(txn(2, vec![upd.clone()]), now).is_empty(), "replayed update");
    assert_eq!(s.push(txn(3, vec![upd]), now).len(), 1, "a later update of the same row");
}

#[test]
fn gap_is_held_then_filled_from_the_database() {
    let mut s = Sequencer::new(cfg());
    let t0 = Instant::now();
    s.push(txn(1, vec![ChatEvent::Inserted(msg(1, 1))]), t0);
    // seq 4 arrives; 2 and 3 are missing. Chat 2 is unaffected.
    assert!(s.push(txn(2, vec![ChatEvent::Inserted(msg(1, 4)), ChatEvent::Updated(msg(1, 4))]), t0).is_empty());
    assert_eq!(inserted(&s.push(txn(3, vec![ChatEvent::Inserted(msg(2, 1))]), t0)), vec![(chat(2), 1)]);
    // While held, the safe LSN stays at the held transaction's commit.
    assert_eq!(s.safe_lsn(), Lsn(200));
    assert!(s.expired(t0 + Duration::from_millis(10)).is_empty());
    let fills = s.expired(t0 + Duration::from_millis(60));
    assert_eq!(fills, vec![GapFill { chat_id: chat(1), after: 1, before: 4 }]);
    assert!(s.expired(t0 + Duration::from_millis(70)).is_empty(), "asked once");
    // The database has seq 2 only (3 was deleted).
    let out = s.fill(fills[0], vec![msg(1, 2)], t0 + Duration::from_millis(70));
    assert_eq!(inserted(&out), vec![(chat(1), 2), (chat(1), 4)]);
    assert!(
        matches!(out.last().map(|o| &o.event), Some(ChatEvent::Updated(_))),
        "update keeps its place after its insert"
    );
    assert_eq!(s.safe_lsn(), Lsn(310));
    assert_eq!(s.high_water(&chat(1)), Some(4));
}

#[test]
fn missing_seq_arriving_within_the_window_releases_the_hold() {
    let mut s = Sequencer::new(cfg());
    let t0 = Instant::now();
    s.set_high_water(chat(1), 0);
    assert!(s.push(txn(1, vec![ChatEvent::Inserted(msg(1, 2))]), t0).is_empty());
    let out = s.push(txn(2, vec![ChatEvent::Inserted(msg(1, 1))]), t0);
    assert_eq!(inserted(&out), vec![(chat(1), 1), (chat(1), 2)]);
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn a_later_gap_gets_its_own_lookup() {
    let mut s = Sequencer::new(cfg());
    let t0 = Instant::now();
    s.set_high_water(chat(1), 0);
    s.push(txn(1, vec![ChatEvent::Inserted(msg(1, 3))]), t0);
    s.push(txn(2, vec![ChatEvent::Inserted(msg(1, 9))]), t0);
    let t1 = t0 + Duration::from_millis(60);
    let f = s.expired(t1);
    assert_eq!(f, vec![GapFill { chat_id: chat(1), after: 0, before: 3 }]);
    let out = s.fill(f[0], vec![msg(1, 1), msg(1, 2)], t1);
    assert_eq!(inserted(&out), vec![(chat(1), 1), (chat(1), 2), (chat(1), 3)], "9 waits for its own lookup");
    let f2 = s.expired(t1 + Duration::from_millis(60));
    assert_eq!(f2, vec![GapFill { chat_id: chat(1), after: 3, before: 9 }]);
    // Rows outside the asked range are ignored.
    let out = s.fill(f2[0], vec![msg(1, 5), msg(1, 42)], t1 + Duration::from_millis(60));
    assert_eq!(inserted(&out), vec![(chat(1), 5), (chat(1), 9)]);
}

#[test]
fn dedupe_cache_is_bounded_and_expires() {
    let mut seen = Seen::new(2, Duration::from_secs(1));
    let t0 = Instant::now();
    seen.insert(1, 10, t0);
    seen.insert(2, 20, t0);
    seen.insert(3, 30, t0);
    assert!(!seen.contains(&1, 10, t0), "evicted by capacity");
    assert!(seen.contains(&3, 30, t0));
    assert!(!seen.contains(&3, 31, t0), "the same key with another seq is another row");
    assert!(!seen.contains(&3, 30, t0 + Duration::from_secs(2)), "expired");
}

#[test]
fn an_id_inserted_again_after_its_delete_is_a_new_message() {
    let mut s = Sequencer::new(cfg());
    let now = Instant::now();
    let first = msg(1, 1);
    assert_eq!(inserted(&s.push(txn(1, vec![ChatEvent::Inserted(first.clone())]), now)), vec![(chat(1), 1)]);
    s.push(txn(2, vec![ChatEvent::Deleted { chat_id: chat(1), id: first.id, seq: 1 }]), now);
    // Same id and client_generated_id, next seq (the trigger gave it one).
    let mut again = first.clone();
    again.seq = 2;
    assert_eq!(inserted(&s.push(txn(3, vec![ChatEvent::Inserted(again.clone())]), now)), vec![(chat(1), 2)]);
    // Its replay is still a duplicate.
    assert!(s.push(txn(3, vec![ChatEvent::Inserted(again)]), now).is_empty());
}

#[test]
fn a_message_moved_to_another_chat_with_the_same_seq_is_not_a_duplicate() {
    let mut s = Sequencer::new(cfg());
    let now = Instant::now();
    for q in 1..=3 {
        s.push(txn(q as u64, vec![ChatEvent::Inserted(msg(2, q))]), now);
    }
    let first = msg(1, 4);
    s.set_high_water(chat(1), 3);
    assert_eq!(inserted(&s.push(txn(4, vec![ChatEvent::Inserted(first.clone())]), now)), vec![(chat(1), 4)]);
    // Deleted from chat 1 and inserted into chat 2 under the same id, where
    // it happens to get the same seq.
    let mut moved = first.clone();
    moved.chat_id = chat(2);
    moved.client_generated_id = None;
    let out = s.push(
        txn(5, vec![ChatEvent::Deleted { chat_id: chat(1), id: first.id, seq: 4 }, ChatEvent::Inserted(moved.clone())]),
        now,
    );
    assert_eq!(inserted(&out), vec![(chat(2), 4)], "the moved message was dropped as a duplicate");
    // Its replay is still one.
    assert!(s.push(txn(5, vec![ChatEvent::Inserted(moved)]), now).is_empty());
}

/// Drives a sequencer to quiescence: advances time past every window and
/// answers lookups from `db`.
fn drain(s: &mut Sequencer, db: &HashMap<(Uuid, i64), MessageRow>, mut now: Instant, out: &mut Vec<Sequenced>) {
    for _ in 0..1000 {
        let Some(deadline) = s.next_deadline() else {
            return;
        };
        now = now.max(deadline);
        for gap in s.expired(now) {
            let found = (gap.after + 1..gap.before).filter_map(|q| db.get(&(gap.chat_id, q)).cloned()).collect();
            out.extend(s.fill(gap, found, now));
        }
    }
    panic!("sequencer never settled");
}

fn check_order_and_uniqueness(out: &[Sequenced]) {
    let mut last: HashMap<Uuid, i64> = HashMap::new();
    let mut ids = HashSet::new();
    for o in out {
        if let ChatEvent::Inserted(m) = &o.event {
            let prev = last.insert(m.chat_id, m.seq);
            assert!(prev.is_none_or(|p| m.seq > p), "chat {} seq {} after {:?}", m.chat_id, m.seq, prev);
            assert!(ids.insert(m.id), "message {} twice", m.id);
        }
    }
}

proptest! {
    /// A WAL stream in commit order with arbitrary replays of earlier ranges
    /// (reconnects): every message comes out exactly once, in order.
    #[test]
    fn replayed_streams_come_out_exactly_once(
        sizes in prop::collection::vec(1i64..25, 1..5),
        merge in prop::collection::vec(any::<u8>(), 0..200),
        replays in prop::collection::vec((any::<u16>(), any::<u16>()), 0..6),
    ) {
        // Interleave chats, each in seq order.
        let mut next: Vec<i64> = vec![1; sizes.len()];
        let mut wal = Vec::new();
        let mut pick = merge.into_iter().cycle();
        while next.iter().zip(&sizes).any(|(n, s)| n <= s) {
            let open: Vec<usize> = (0..sizes.len()).filter(|&c| next[c] <= sizes[c]).collect();
            let c = open[pick.next().unwrap_or(0) as usize % open.len()];
            wal.push(txn(wal.len() as u64 + 1, vec![ChatEvent::Inserted(msg(c as u8, next[c]))]));
            next[c] += 1;
        }
        // Splice in replays: at position p, the stream restarts from position r <= p.
        let mut stream = wal.clone();
        for (p, r) in replays {
            let p = p as usize % (stream.len() + 1);
            let r = r as usize % (p + 1);
            let again: Vec<ChatTxn> = stream[r..p].to_vec();
            let tail = stream.split_off(p);
            stream.extend(again);
            stream.extend(tail);
        }
        let mut s = Sequencer::new(cfg());
        let now = Instant::now();
        let mut out = Vec::new();
        for t in stream {
            out.extend(s.push(t, now));
        }
        check_order_and_uniqueness(&out);
        let mut per_chat: HashMap<Uuid, Vec<i64>> = HashMap::new();
        for (c, q) in inserted(&out) {
            per_chat.entry(c).or_default().push(q);
        }
        for (c, n) in sizes.iter().enumerate() {
            prop_assert_eq!(per_chat.get(&chat(c as u8)).cloned().unwrap_or_default(), (1..=*n).collect::<Vec<_>>());
        }
        prop_assert!(s.next_deadline().is_none());
        prop_assert_eq!(s.safe_lsn(), wal.last().map(|t| t.end_lsn).unwrap_or_default());
    }

    /// Shuffled, duplicated and lossy streams: some messages never reach the
    /// WAL (only the database has them), some were deleted (neither has them).
    /// Output: strictly increasing per chat, nothing twice, and every message
    /// the database still has comes out when a later one of its chat arrived
    /// (a missing tail is invisible here; the gateway's resync covers it).
    #[test]
    fn shuffled_lossy_streams_are_repaired(
        sizes in prop::collection::vec(1i64..20, 1..4),
        fate in prop::collection::vec(0u8..10, 80),
        order in prop::collection::vec(any::<u32>(), 80),
        dups in prop::collection::vec(any::<u16>(), 0..10),
        steps in prop::collection::vec(0u64..80, 80),
        budget in prop_oneof![Just(usize::MAX), 1usize..6],
    ) {
        let mut db = HashMap::new();
        let mut wal_msgs = Vec::new();
        let mut i = 0;
        for (c, n) in sizes.iter().enumerate() {
            for q in 1..=*n {
                let m = msg(c as u8, q);
                let f = fate[i % fate.len()];
                i += 1;
                // 0: deleted after commit (WAL only); 1: lost from the WAL (DB only); else both.
                if f != 0 { db.insert((m.chat_id, q), m.clone()); }
                if f != 1 { wal_msgs.push(m); }
            }
        }
        // A gap is only detectable below a later arrival.
        let mut wal_top: HashMap<Uuid, i64> = HashMap::new();
        for m in &wal_msgs { let t = wal_top.entry(m.chat_id).or_default(); *t = (*t).max(m.seq); }
        let mut keyed: Vec<(u32, MessageRow)> = wal_msgs.into_iter().enumerate().map(|(k, m)| (order[k % order.len()], m)).collect();
        keyed.sort_by_key(|(k, _)| *k);
        let mut shuffled: Vec<MessageRow> = keyed.into_iter().map(|(_, m)| m).collect();
        for d in dups {
            if !shuffled.is_empty() {
                let m = shuffled[d as usize % shuffled.len()].clone();
                shuffled.push(m);
            }
        }
        let mut s = Sequencer::new(cfg());
        // A small budget sends chats to the table often.
        s.set_held_budget(budget);
        for c in 0..sizes.len() { s.set_high_water(chat(c as u8), 0); }
        let mut now = Instant::now();
        let mut out = Vec::new();
        for (k, m) in shuffled.into_iter().enumerate() {
            now += Duration::from_millis(steps[k % steps.len()]);
            for gap in s.expired(now) {
                let found = (gap.after + 1..gap.before).filter_map(|q| db.get(&(gap.chat_id, q)).cloned()).collect();
                out.extend(s.fill(gap, found, now));
            }
            out.extend(s.push(txn(k as u64 + 1, vec![ChatEvent::Inserted(m)]), now));
        }
        drain(&mut s, &db, now, &mut out);
        prop_assert!(s.held_events() <= budget);
        check_order_and_uniqueness(&out);
        let got: BTreeSet<(Uuid, i64)> = inserted(&out).into_iter().collect();
        for key in db.keys().filter(|(c, q)| wal_top.get(c).is_some_and(|t| q < t)) {
            prop_assert!(got.contains(key), "{:?} is in the database, below a later arrival, but never came out", key);
        }
        prop_assert!(s.next_deadline().is_none());
    }
}

#[test]
fn quiet_chats_are_forgotten_and_come_back_without_harm() {
    let mut s = Sequencer::new(cfg());
    let t0 = Instant::now();
    for c in 0..100u8 {
        s.push(txn(c as u64 + 1, vec![ChatEvent::Inserted(msg(c, 1))]), t0);
    }
    assert_eq!(s.chats(), 100);
    // Chat 0 is active later; the rest stay quiet.
    let t1 = t0 + Duration::from_secs(200);
    s.push(txn(200, vec![ChatEvent::Inserted(msg(0, 2))]), t1);
    assert_eq!(s.evict_idle(t0 + Duration::from_secs(301), Duration::from_secs(300)), 99);
    assert_eq!(s.chats(), 1);
    // A forgotten chat's next message passes; a replay of its old one is
    // still caught by the id cache.
    assert_eq!(inserted(&s.push(txn(201, vec![ChatEvent::Inserted(msg(5, 2))]), t1)), vec![(chat(5), 2)]);
    assert!(s.push(txn(202, vec![ChatEvent::Inserted(msg(5, 1))]), t1).is_empty());
}

#[test]
fn a_holding_chat_is_never_forgotten() {
    let mut s = Sequencer::new(cfg());
    let t0 = Instant::now();
    s.push(txn(1, vec![ChatEvent::Inserted(msg(1, 1))]), t0);
    s.push(txn(2, vec![ChatEvent::Inserted(msg(1, 3))]), t0); // 2 missing: held
    assert_eq!(s.evict_idle(t0 + Duration::from_secs(3600), Duration::from_secs(1)), 0);
}

fn work() -> u64 {
    WORK.with(|w| w.get())
}

/// One statement of `n` rows into a chat right after a burned seq: the work
/// (held-event comparisons and visits) to take them in and release them.
fn work_for_rows_after_a_hole(n: i64) -> u64 {
    let mut s = Sequencer::new(cfg());
    s.set_held_budget(usize::MAX);
    let t0 = Instant::now();
    s.push(txn(1, vec![ChatEvent::Inserted(msg(1, 1))]), t0);
    let start = work();
    let mut out = Vec::new();
    s.begin(Lsn(200), Lsn(210), Utc::now());
    for q in 3..3 + n {
        s.event(ChatEvent::Inserted(msg(1, q)), t0, &mut out);
    }
    s.commit();
    assert!(out.is_empty(), "held behind the hole");
    assert_eq!(s.held_events(), n as usize);
    let t1 = t0 + Duration::from_millis(60);
    let gaps = s.expired(t1);
    assert_eq!(gaps, vec![GapFill { chat_id: chat(1), after: 1, before: 3 }]);
    let out = s.fill(gaps[0], Vec::new(), t1);
    assert_eq!(inserted(&out).len(), n as usize);
    assert_eq!(s.held_events(), 0);
    work() - start
}

#[test]
fn a_hole_followed_by_many_rows_is_not_quadratic() {
    let small = work_for_rows_after_a_hole(2_000);
    let big = work_for_rows_after_a_hole(8_000);
    // Four times the rows: about four times the work when each row costs
    // O(log n) (a little more), sixteen times when each row walks the held list.
    assert!(big < small * 6, "2,000 rows: {small} units of work; 8,000 rows: {big} (quadratic?)");
    assert!(big < 8_000 * 200, "8,000 rows took {big} units of work");
}

/// Drives `s` to quiescence like [`drain`], and returns the ranges asked for.
fn drain_recording(
    s: &mut Sequencer,
    db: &HashMap<(Uuid, i64), MessageRow>,
    mut now: Instant,
    out: &mut Vec<Sequenced>,
) -> Vec<GapFill> {
    let mut asked = Vec::new();
    for _ in 0..10_000 {
        let Some(deadline) = s.next_deadline() else {
            return asked;
        };
        now = now.max(deadline);
        for gap in s.expired(now) {
            asked.push(gap);
            let found = (gap.after + 1..gap.before).filter_map(|q| db.get(&(gap.chat_id, q)).cloned()).collect();
            out.extend(s.fill(gap, found, now));
        }
    }
    panic!("sequencer never settled");
}

#[test]
fn past_the_held_budget_a_chat_falls_back_to_the_table() {
    let budget = 100;
    let mut s = Sequencer::new(cfg());
    s.set_held_budget(budget);
    let t0 = Instant::now();
    // Seq 2 was burned; 1 and 3..=1000 are in the table and the WAL.
    let db: HashMap<(Uuid, i64), MessageRow> =
        (1..=1000).filter(|&q| q != 2).map(|q| ((chat(1), q), msg(1, q))).collect();
    let mut out = s.push(txn(1, vec![ChatEvent::Inserted(msg(1, 1))]), t0);
    s.begin(Lsn(200), Lsn(210), Utc::now());
    for q in 3..=1000 {
        s.event(ChatEvent::Inserted(msg(1, q)), t0, &mut out);
        assert!(s.held_events() <= budget, "{} events held after seq {q}", s.held_events());
    }
    s.commit();
    // Nothing past the hole was confirmed: a restart would replay it.
    assert_eq!(s.safe_lsn(), Lsn(200));
    let asked = drain_recording(&mut s, &db, t0, &mut out);
    check_order_and_uniqueness(&out);
    let expected: Vec<(Uuid, i64)> = (1..=1000).filter(|&q| q != 2).map(|q| (chat(1), q)).collect();
    assert_eq!(inserted(&out), expected, "everything exactly once, in order");
    assert!(asked.len() > 1, "{asked:?}");
    for gap in &asked {
        assert!(gap.before - gap.after - 1 <= budget as i64, "one lookup asked for {gap:?}");
    }
    assert_eq!(s.safe_lsn(), Lsn(210));
    assert_eq!(s.high_water(&chat(1)), Some(1000));
    // The chat is back to normal: the next row passes at once.
    let next = s.push(txn(3, vec![ChatEvent::Inserted(msg(1, 1001))]), t0);
    assert_eq!(inserted(&next), vec![(chat(1), 1001)]);
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn a_hole_in_one_chat_never_delays_another() {
    let mut s = Sequencer::new(cfg());
    s.set_held_budget(50);
    let t0 = Instant::now();
    let db: HashMap<(Uuid, i64), MessageRow> =
        (1..=300).filter(|&q| q != 2).map(|q| ((chat(1), q), msg(1, q))).collect();
    s.push(txn(1, vec![ChatEvent::Inserted(msg(1, 1))]), t0);
    s.push(txn(2, vec![ChatEvent::Inserted(msg(2, 1))]), t0);
    // Chat 1 has a hole at 2 and holds, then spills; chat 2's events pass
    // in the call that brings them, whatever chat 1 is doing.
    let mut chat1 = Vec::new();
    for q in 3..=300 {
        chat1.extend(s.push(txn(q as u64 + 1, vec![ChatEvent::Inserted(msg(1, q))]), t0));
        let before = work();
        let (id_before, q2) = (msg(2, q - 2).id, q - 1);
        let events = vec![
            ChatEvent::Inserted(msg(2, q2)),
            ChatEvent::Updated(msg(2, q2)),
            ChatEvent::Deleted { chat_id: chat(2), id: id_before, seq: q2 - 1 },
        ];
        let out = s.push(txn(1000 + q as u64, events), t0);
        assert_eq!(out.len(), 3, "chat 2 waited at seq {q2}");
        assert!(work() - before < 50, "chat 2's events cost {} units of work", work() - before);
    }
    assert!(chat1.is_empty(), "chat 1 holds behind its hole");
    // While chat 1 is read back from the table, chat 2 goes on.
    let mut now = t0;
    let mut rounds = 0;
    while let Some(deadline) = s.next_deadline() {
        now = now.max(deadline);
        for gap in s.expired(now) {
            assert_eq!(gap.chat_id, chat(1), "only chat 1 asks the table");
            let found = (gap.after + 1..gap.before).filter_map(|q| db.get(&(gap.chat_id, q)).cloned()).collect();
            chat1.extend(s.fill(gap, found, now));
            rounds += 1;
            let q = 299 + rounds;
            let out = s.push(txn(5000 + rounds as u64, vec![ChatEvent::Inserted(msg(2, q))]), now);
            assert_eq!(inserted(&out), vec![(chat(2), q)], "chat 2 waited for chat 1's lookup");
        }
        assert!(rounds < 100, "never settled");
    }
    let expected: Vec<(Uuid, i64)> = (3..=300).map(|q| (chat(1), q)).collect();
    assert_eq!(inserted(&chat1), expected);
}

/// The sequencer as it was before held events moved into a map (a Vec,
/// re-sorted on every release), kept as the reference the map version must
/// agree with while under its budget (set to usize::MAX there).
#[allow(dead_code)]
mod reference {
    use super::*;

    struct Held {
        /// Inserts: their seq. Others: the seq of the insert they followed.
        key: i64,
        commit_lsn: Lsn,
        item: Sequenced,
    }

    struct ChatState {
        /// Highest seq handed on; None until the first insert is seen.
        high_water: Option<i64>,
        held: Vec<Held>,
        deadline: Option<Instant>,
        fill_requested: bool,
        /// Last event seen, for eviction.
        active: Instant,
    }

    impl ChatState {
        fn new(now: Instant) -> ChatState {
            ChatState { high_water: None, held: Vec::new(), deadline: None, fill_requested: false, active: now }
        }
    }

    /// The transaction whose events are being fed.
    #[derive(Debug, Clone, Copy)]
    struct Current {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: DateTime<Utc>,
        replay: bool,
        events: u32,
    }

    /// The per-chat ordering and dedupe state machine.
    pub struct Sequencer {
        cfg: SequencerConfig,
        chats: HashMap<Uuid, ChatState>,
        ids: Seen<Uuid>,
        client_ids: Seen<(Uuid, Uuid)>,
        last_end: Lsn,
        /// Commit LSNs of transactions with held events, with how many are held.
        held_lsns: BTreeMap<Lsn, usize>,
        /// Chats with held events: deadlines are looked up among these only, so
        /// the per-transaction cost does not grow with the number of chats.
        holding: HashSet<Uuid>,
        current: Option<Current>,
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
            }
        }

        /// Declares a chat's high-water mark (everything up to `seq` is handed on).
        pub fn set_high_water(&mut self, chat_id: Uuid, seq: i64) {
            let now = Instant::now();
            self.chats.entry(chat_id).or_insert_with(|| ChatState::new(now)).high_water = Some(seq);
        }

        /// The chat's high-water mark, if known.
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
            // Positions as the real sequencer gives them (added after the copy).
            let position = Position { commit_lsn: cur.commit_lsn, index: cur.events };
            cur.events += 1;
            let cur = *cur;
            let item = Sequenced { commit_time: cur.commit_time, event, position: Some(position) };
            match &item.event {
                ChatEvent::Inserted(_) => self.on_insert(item, cur.commit_lsn, now, out),
                _ if cur.replay => tracing::debug!(lsn = %cur.commit_lsn, "dropping replayed change"),
                _ => {
                    let chat = item.event.chat_id();
                    if let Some(state) = chat.and_then(|c| self.chats.get_mut(&c)) {
                        state.active = now;
                        if !state.held.is_empty() {
                            let key = state.held.last().map(|h| h.key).unwrap_or(0);
                            state.held.push(Held { key, commit_lsn: cur.commit_lsn, item });
                            *self.held_lsns.entry(cur.commit_lsn).or_default() += 1;
                            self.holding.extend(chat);
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
            if self.ids.contains(&msg.id, msg.seq, now) {
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
            if state.high_water.is_some_and(|hw| msg.seq <= hw)
                || state.held.iter().any(|h| matches!(&h.item.event, ChatEvent::Inserted(x) if x.seq == msg.seq))
            {
                m::duplicate(DupKey::Seq);
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
            state.held.push(Held { key: seq, commit_lsn, item });
            *self.held_lsns.entry(commit_lsn).or_default() += 1;
            self.holding.insert(chat);
            out.extend(self.release(chat, Vec::new(), None, now));
        }

        fn remember(&mut self, id: Uuid, chat: Uuid, cgid: Option<Uuid>, seq: i64, now: Instant) {
            self.ids.insert(id, seq, now);
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
                let first_held = state
                    .held
                    .iter()
                    .filter_map(|h| match &h.item.event {
                        ChatEvent::Inserted(m) => Some(m.seq),
                        _ => None,
                    })
                    .min();
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
            let found = found
                .into_iter()
                .filter(|r| r.chat_id == gap.chat_id && r.seq > gap.after && r.seq < gap.before)
                .collect();
            self.release(gap.chat_id, found, Some(gap.before), now)
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
            let mut held = std::mem::take(&mut state.held);
            let commit_time = held.first().map(|h| h.item.commit_time).unwrap_or_else(Utc::now);
            let mut repaired = 0u64;
            for row in found {
                held.push(Held {
                    key: row.seq,
                    commit_lsn: Lsn(0),
                    item: Sequenced { commit_time, event: ChatEvent::Inserted(row), position: None },
                });
            }
            held.sort_by_key(|h| h.key); // stable: followers stay after their insert
            let mut out = Vec::new();
            let mut rest = Vec::new();
            let mut blocked = false;
            for h in held {
                if blocked {
                    rest.push(h);
                    continue;
                }
                let lsn = h.commit_lsn;
                match &h.item.event {
                    ChatEvent::Inserted(msg) => {
                        let hw = state.high_water;
                        let stale = hw.is_some_and(|hw| msg.seq <= hw);
                        if stale || self.ids.contains(&msg.id, msg.seq, now) {
                            m::duplicate(if stale { DupKey::Seq } else { DupKey::Id });
                        } else if hw.is_none_or(|hw| msg.seq == hw + 1) || force_until.is_some_and(|f| msg.seq <= f) {
                            if hw.is_some_and(|hw| msg.seq > hw + 1) {
                                m::seq_gap();
                                tracing::warn!(chat_id = %chat_id, after = ?hw, next = msg.seq, "seq gap: missing messages not found");
                            }
                            if lsn == Lsn(0) {
                                repaired += 1;
                            }
                            state.high_water = Some(msg.seq);
                            self.ids.insert(msg.id, msg.seq, now);
                            if let Some(c) = msg.client_generated_id {
                                self.client_ids.insert((chat_id, c), msg.seq, now);
                            }
                            out.push(h.item);
                        } else {
                            blocked = true;
                            rest.push(h);
                            continue;
                        }
                    }
                    _ => out.push(h.item),
                }
                if lsn != Lsn(0) {
                    if let Some(n) = self.held_lsns.get_mut(&lsn) {
                        *n -= 1;
                        if *n == 0 {
                            self.held_lsns.remove(&lsn);
                        }
                    }
                }
            }
            if repaired > 0 {
                m::gap_repaired(repaired);
            }
            state.held = rest;
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
}

fn events(out: Vec<Sequenced>) -> Vec<ChatEvent> {
    out.into_iter().map(|s| s.event).collect()
}

proptest! {
    /// Under its budget the map-based sequencer does exactly what the
    /// Vec-based one did: same events out, in the same order, same lookups,
    /// same deadlines, same safe position, on streams with holes (filled
    /// late, or from the table, or never), replays, updates and deletes of
    /// earlier messages, participant changes, and time passing.
    #[test]
    fn holding_in_a_map_changes_no_behaviour(
        ops in prop::collection::vec((0u8..8, 0u8..3, any::<u8>()), 1..150),
    ) {
        let mut new = Sequencer::new(cfg());
        new.set_held_budget(usize::MAX);
        let mut old = reference::Sequencer::new(cfg());
        let mut now = Instant::now();
        let mut next = [1i64; 3];
        let mut skipped: Vec<Vec<i64>> = vec![Vec::new(); 3];
        let mut db: HashMap<(Uuid, i64), MessageRow> = HashMap::new();
        let mut wal: Vec<ChatTxn> = Vec::new();
        for (op, c, arg) in ops {
            let c = c as usize;
            let lsn = wal.len() as u64 + 1;
            let event = match op {
                // A message in order, or after a hole (arg decides whether the
                // skipped one is in the table, comes late, or never exists).
                0..=2 => {
                    if arg % 4 == 0 {
                        let hole = next[c];
                        next[c] += 1;
                        if arg % 8 == 0 {
                            db.insert((chat(c as u8), hole), msg(c as u8, hole));
                        }
                        if arg % 16 == 4 {
                            skipped[c].push(hole);
                        }
                    }
                    let m = msg(c as u8, next[c]);
                    next[c] += 1;
                    db.insert((m.chat_id, m.seq), m.clone());
                    Some(ChatEvent::Inserted(m))
                }
                // A skipped seq arrives late.
                3 => skipped[c].pop().map(|q| {
                    let m = msg(c as u8, q);
                    db.insert((m.chat_id, q), m.clone());
                    ChatEvent::Inserted(m)
                }),
                4 if next[c] > 1 => Some(ChatEvent::Updated(msg(c as u8, 1 + arg as i64 % (next[c] - 1)))),
                5 if next[c] > 1 => {
                    let q = 1 + arg as i64 % (next[c] - 1);
                    Some(ChatEvent::Deleted { chat_id: chat(c as u8), id: msg(c as u8, q).id, seq: q })
                }
                6 => Some(if arg % 2 == 0 {
                    ChatEvent::ParticipantChanged {
                        now: crate::event::Participant { chat_id: chat(c as u8), user_id: chat(9), delivered_seq: arg as i64, read_seq: 0 },
                        previous: None,
                    }
                } else {
                    ChatEvent::ParticipantRemoved { chat_id: chat(c as u8), user_id: chat(9) }
                }),
                // Time passes: both are asked for their lookups and get the same answers.
                _ => {
                    now += Duration::from_millis(arg as u64);
                    // (Chats in any order: each chat's lookup is its own.)
                    let (mut gn, mut go) = (new.expired(now), old.expired(now));
                    gn.sort_by_key(|g| g.chat_id);
                    go.sort_by_key(|g| g.chat_id);
                    prop_assert_eq!(&gn, &go);
                    for gap in gn {
                        let found: Vec<MessageRow> =
                            (gap.after + 1..gap.before).filter_map(|q| db.get(&(gap.chat_id, q)).cloned()).collect();
                        prop_assert_eq!(events(new.fill(gap, found.clone(), now)), events(old.fill(gap, found, now)));
                    }
                    None
                }
            };
            // Now and then the stream replays an earlier transaction.
            if op == 2 && arg % 3 == 0 && !wal.is_empty() {
                let t = wal[arg as usize % wal.len()].clone();
                prop_assert_eq!(events(new.push(t.clone(), now)), events(old.push(t, now)));
            }
            if let Some(event) = event {
                let t = txn(lsn, vec![event]);
                wal.push(t.clone());
                prop_assert_eq!(events(new.push(t.clone(), now)), events(old.push(t, now)));
            }
            prop_assert_eq!(new.safe_lsn(), old.safe_lsn());
            prop_assert_eq!(new.next_deadline(), old.next_deadline());
            for c in 0..3u8 {
                prop_assert_eq!(new.high_water(&chat(c)), old.high_water(&chat(c)));
            }
        }
    }
}

#[test]
fn a_spilled_chat_hands_on_other_events_and_leaves_updates_of_dropped_messages_to_the_table() {
    let mut s = Sequencer::new(cfg());
    s.set_held_budget(5);
    let t0 = Instant::now();
    let user = chat(9);
    let joined = crate::event::Participant { chat_id: chat(1), user_id: user, delivered_seq: 0, read_seq: 0 };
    s.push(txn(1, vec![ChatEvent::Inserted(msg(1, 1))]), t0);
    // Seq 2 is missing: 3..=6 and an update of 1 are held (5 events).
    for q in 3..=6 {
        assert!(s.push(txn(q as u64, vec![ChatEvent::Inserted(msg(1, q))]), t0).is_empty());
    }
    assert!(s.push(txn(7, vec![ChatEvent::Updated(msg(1, 1))]), t0).is_empty());
    assert_eq!(s.held_events(), 5);
    // The sixth goes past the budget: held messages are dropped, the rest
    // is handed on now, in order.
    let out = s.push(txn(8, vec![ChatEvent::ParticipantRemoved { chat_id: chat(1), user_id: user }]), t0);
    assert_eq!(
        events(out),
        vec![ChatEvent::Updated(msg(1, 1)), ChatEvent::ParticipantRemoved { chat_id: chat(1), user_id: user }]
    );
    assert_eq!(s.held_events(), 0);
    assert_eq!(s.safe_lsn(), Lsn(300), "the oldest dropped transaction is not confirmed");
    // Until the table has been read: updates and deletes of the dropped
    // messages are left to it, others pass, new messages join the read.
    assert!(s.push(txn(9, vec![ChatEvent::Updated(msg(1, 4))]), t0).is_empty());
    let deleted = ChatEvent::Deleted { chat_id: chat(1), id: msg(1, 5).id, seq: 5 };
    assert!(s.push(txn(10, vec![deleted]), t0).is_empty());
    let passing = vec![ChatEvent::Updated(msg(1, 1)), ChatEvent::ParticipantChanged { now: joined, previous: None }];
    assert_eq!(events(s.push(txn(11, passing.clone()), t0)), passing);
    assert!(s.push(txn(12, vec![ChatEvent::Inserted(msg(1, 7))]), t0).is_empty());
    // The table has 1, 3, 4 (as updated), 6 and 7; 5 was deleted.
    let db: HashMap<(Uuid, i64), MessageRow> = [1, 3, 4, 6, 7].map(|q| ((chat(1), q), msg(1, q))).into();
    let mut out = Vec::new();
    let asked = drain_recording(&mut s, &db, t0, &mut out);
    assert_eq!(
        asked,
        vec![GapFill { chat_id: chat(1), after: 1, before: 7 }, GapFill { chat_id: chat(1), after: 6, before: 8 }]
    );
    assert_eq!(inserted(&out), vec![(chat(1), 3), (chat(1), 4), (chat(1), 6), (chat(1), 7)]);
    assert_eq!(s.safe_lsn(), Lsn(1210));
    assert_eq!(inserted(&s.push(txn(13, vec![ChatEvent::Inserted(msg(1, 8))]), t0)), vec![(chat(1), 8)]);
}

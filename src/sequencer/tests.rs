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

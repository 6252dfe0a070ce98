//! Decoder tests on real bytes, captured from PostgreSQL 15 with
//! `pg_logical_slot_peek_binary_changes(slot, NULL, NULL, 'proto_version',
//! '1', 'publication_names', 'chat_relay', 'messages', 'true')` after:
//! a participant insert (xid 745), a message insert (746), a rolled-back
//! insert (747, absent by design), a large message insert (748),
//! `mark_messages_as_delivered` flipping two messages and one watermark (749),
//! a delete (750) and a transactional logical message (751).

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::json;

use super::*;

const CAPTURED: &str = include_str!("testdata/captured.txt");

pub(crate) fn captured() -> Vec<(u32, Bytes)> {
    CAPTURED
        .lines()
        .map(|l| {
            let mut parts = l.split('|');
            let _lsn = parts.next().unwrap();
            let xid: u32 = parts.next().unwrap().parse().unwrap();
            let hex = parts.next().unwrap();
            let bytes: Vec<u8> =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            (xid, Bytes::from(bytes))
        })
        .collect()
}

fn decode_all() -> Vec<Transaction> {
    let mut d = Decoder::new();
    captured().iter().filter_map(|(_, b)| d.feed(b).unwrap()).collect()
}

#[test]
fn captured_stream_decodes_to_committed_transactions_only() {
    let txns = decode_all();
    assert_eq!(txns.iter().map(|t| t.xid).collect::<Vec<_>>(), [745, 746, 748, 749, 750, 751], "747 rolled back");
    assert!(txns.windows(2).all(|w| w[0].end_lsn < w[1].end_lsn));
    for t in &txns {
        assert!(t.commit_lsn < t.end_lsn);
        assert_eq!(t.commit_time.format("%Y").to_string(), "2026");
    }
}

#[test]
fn captured_insert_has_typed_columns() {
    let txns = decode_all();
    let Change::Insert { new } = &txns[1].changes[0] else { panic!("{:?}", txns[1].changes) };
    assert_eq!(new.relation.name, "chat_messages");
    assert_eq!(new.relation.namespace, "public");
    let row = new.to_json();
    assert_eq!(row["id"], json!("33333333-3333-3333-3333-333333333333"));
    assert_eq!(row["content"], json!("hello"));
    assert_eq!(row["seq"], json!(1));
    assert_eq!(row["status"], json!("sent"));
    assert_eq!(row["created_at"], json!("2026-11-25T12:00:00.123456Z"));
    assert_eq!(row["client_generated_id"], json!("55555555-5555-5555-5555-555555555555"));
    let Change::Insert { new } = &txns[0].changes[0] else { panic!() };
    assert_eq!(new.relation.name, "chat_participants");
    assert_eq!(new.to_json()["last_read_seq"], json!(0));
}

#[test]
fn captured_updates_carry_full_old_rows_and_deletes_the_old_row() {
    let txns = decode_all();
    let updates = &txns[3].changes;
    assert_eq!(updates.len(), 3);
    let statuses: Vec<_> = updates
        .iter()
        .filter_map(|c| match c {
            Change::Update { old: Some(old), new } if new.relation.name == "chat_messages" => {
                Some((old.to_json()["status"].clone(), new.to_json()["status"].clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(statuses, vec![(json!("sent"), json!("delivered")); 2]);
    let watermark = updates.iter().find_map(|c| match c {
        Change::Update { new, .. } if new.relation.name == "chat_participants" => {
            Some(new.to_json()["last_delivered_seq"].clone())
        }
        _ => None,
    });
    assert_eq!(watermark, Some(json!(2)));
    // The large message's content survives intact in both tuples.
    let big = updates.iter().find_map(|c| match c {
        Change::Update { new, .. } => {
            new.to_json().get("content").and_then(|v| v.as_str()).filter(|s| s.len() > 10_000).map(|s| s.len())
        }
        _ => None,
    });
    assert!(big.is_some());
    let Change::Delete { old } = &txns[4].changes[0] else { panic!() };
    assert_eq!(old.to_json()["id"], json!("33333333-3333-3333-3333-333333333333"));
    let Change::Message { prefix, content } = &txns[5].changes[0] else { panic!() };
    assert_eq!((prefix.as_str(), &content[..]), ("demo", &b"payload"[..]));
}

#[test]
fn every_truncation_of_real_messages_is_an_error_not_a_panic() {
    for (_, msg) in captured() {
        for cut in 0..msg.len() {
            let short = msg.slice(..cut);
            assert!(parse(&short).is_err(), "a {cut}-byte prefix of a {}-byte message parsed", msg.len());
        }
        assert!(parse(&msg).is_ok());
    }
}

#[test]
fn unknown_tags_and_markers_are_errors() {
    assert_eq!(parse(&Bytes::from_static(b"Z")), Err(DecodeError::UnknownMessage(b'Z')));
    assert_eq!(parse(&Bytes::new()), Err(DecodeError::Truncated("message type")));
    // Insert with 'X' instead of 'N'.
    assert!(matches!(parse(&Bytes::from_static(b"I\0\0\0\x01X\0\0")), Err(DecodeError::BadMarker { .. })));
    // Tuple column of unknown kind.
    assert_eq!(parse(&Bytes::from_static(b"I\0\0\0\x01N\0\x01z")), Err(DecodeError::UnknownColumnKind(b'z')));
}

#[test]
fn decoder_state_errors() {
    let msgs = captured();
    let mut d = Decoder::new();
    // An Insert before its Relation message.
    let insert = msgs.iter().find(|(_, b)| b[0] == b'I').unwrap().1.clone();
    d.feed(&msgs[0].1).unwrap();
    assert!(matches!(d.feed(&insert), Err(DecodeError::UnknownRelation(_))));
    d.reset();
    // Relation, then Insert outside a transaction.
    let relation = msgs.iter().find(|(_, b)| b[0] == b'R').unwrap().1.clone();
    d.feed(&relation).unwrap();
    assert_eq!(d.feed(&insert.clone()).err(), Some(DecodeError::OutsideTransaction("Insert")));
    // Begin twice.
    let begin = msgs[0].1.clone();
    d.feed(&begin).unwrap();
    assert_eq!(d.feed(&begin).err(), Some(DecodeError::NestedBegin));
    // After a reset (disconnect), the half transaction is gone.
    d.reset();
    assert!(!d.in_transaction());
    let commit = msgs.iter().find(|(_, b)| b[0] == b'C').unwrap().1.clone();
    assert_eq!(d.feed(&commit).err(), Some(DecodeError::OutsideTransaction("Commit")));
}

fn relation_msg() -> Bytes {
    let mut b = vec![b'R'];
    b.extend(7u32.to_be_bytes());
    b.extend(b"public\0t\0");
    b.push(b'f');
    b.extend(2u16.to_be_bytes());
    for (name, oid) in [("id", 23u32), ("body", 25u32)] {
        b.push(1);
        b.extend(name.as_bytes());
        b.push(0);
        b.extend(oid.to_be_bytes());
        b.extend((-1i32).to_be_bytes());
    }
    Bytes::from(b)
}

#[test]
fn unchanged_toast_is_filled_from_the_old_row() {
    let mut d = Decoder::new();
    d.feed(&relation_msg()).unwrap();
    let mut begin = vec![b'B'];
    begin.extend(100u64.to_be_bytes());
    begin.extend(0i64.to_be_bytes());
    begin.extend(9u32.to_be_bytes());
    d.feed(&Bytes::from(begin)).unwrap();
    let mut upd = vec![b'U'];
    upd.extend(7u32.to_be_bytes());
    upd.push(b'O');
    upd.extend(2u16.to_be_bytes());
    upd.extend(b"t\0\0\0\x011t\0\0\0\x04long");
    upd.push(b'N');
    upd.extend(2u16.to_be_bytes());
    upd.extend(b"t\0\0\0\x012u");
    d.feed(&Bytes::from(upd)).unwrap();
    let mut commit = vec![b'C', 0];
    commit.extend(100u64.to_be_bytes());
    commit.extend(120u64.to_be_bytes());
    commit.extend(0i64.to_be_bytes());
    let txn = d.feed(&Bytes::from(commit)).unwrap().unwrap();
    let Change::Update { new, .. } = &txn.changes[0] else { panic!() };
    assert_eq!(new.to_json(), json!({"id": 2, "body": "long"}).as_object().unwrap().clone());
    assert_eq!((txn.commit_lsn, txn.end_lsn), (Lsn(100), Lsn(120)));
}

proptest! {
    /// Arbitrary corruption of real messages never panics the decoder.
    #[test]
    fn corrupted_real_messages_never_panic(which in 0usize..22, flips in prop::collection::vec((any::<u16>(), any::<u8>()), 1..8)) {
        let msgs = captured();
        let mut d = Decoder::new();
        // Prime the relation cache the way a real stream would.
        for (_, m) in msgs.iter().take(which) {
            let _ = d.feed(m);
        }
        let mut bytes = msgs[which % msgs.len()].1.to_vec();
        for (pos, val) in flips {
            let i = pos as usize % bytes.len();
            bytes[i] = val;
        }
        let _ = d.feed(&Bytes::from(bytes));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut d = Decoder::new();
        let _ = d.feed(&Bytes::from(bytes));
    }
}

/// Builds pgoutput messages by hand, for shapes the captured stream lacks.
pub(crate) mod build {
    pub fn begin(xid: u32) -> Vec<u8> {
        let mut b = vec![b'B'];
        b.extend_from_slice(&0x100u64.to_be_bytes());
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(&xid.to_be_bytes());
        b
    }
    pub fn commit(lsn: u64) -> Vec<u8> {
        let mut b = vec![b'C', 0];
        b.extend_from_slice(&lsn.to_be_bytes());
        b.extend_from_slice(&(lsn + 8).to_be_bytes());
        b.extend_from_slice(&0i64.to_be_bytes());
        b
    }
    pub fn relation(oid: u32, columns: &[&str]) -> Vec<u8> {
        relation_named(oid, "t", columns)
    }
    pub fn relation_named(oid: u32, name: &str, columns: &[&str]) -> Vec<u8> {
        let mut b = vec![b'R'];
        b.extend_from_slice(&oid.to_be_bytes());
        b.extend_from_slice(b"public\0");
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(b"\0f");
        b.extend_from_slice(&(columns.len() as u16).to_be_bytes());
        for c in columns {
            b.push(0);
            b.extend_from_slice(c.as_bytes());
            b.push(0);
            b.extend_from_slice(&25u32.to_be_bytes());
            b.extend_from_slice(&(-1i32).to_be_bytes());
        }
        b
    }
    pub fn insert(oid: u32, values: &[&str]) -> Vec<u8> {
        let mut b = vec![b'I'];
        b.extend_from_slice(&oid.to_be_bytes());
        b.push(b'N');
        b.extend_from_slice(&(values.len() as u16).to_be_bytes());
        for v in values {
            b.push(b't');
            b.extend_from_slice(&(v.len() as u32).to_be_bytes());
            b.extend_from_slice(v.as_bytes());
        }
        b
    }
}

fn all_changes(t: Transaction) -> Vec<Change> {
    t.into_changes().collect::<Result<Vec<_>, _>>().unwrap()
}

#[test]
fn spilled_transactions_yield_the_same_changes_and_release_their_memory() {
    let plain: Vec<Vec<Change>> = decode_all().into_iter().map(all_changes).collect();
    // The smallest budget (64 KiB): while the first transaction holds its
    // charge, every later one spills from its first change.
    let memory = TxnMemory::new(0, None);
    let mut d = Decoder::with_memory(memory.clone());
    let txns: Vec<Transaction> = captured().iter().filter_map(|(_, b)| d.feed(b).unwrap()).collect();
    assert!(txns[0].spilled.is_none());
    assert!(txns[1..].iter().all(|t| t.spilled.is_some() && t.changes.is_empty()), "{txns:?}");
    assert_eq!(txns.iter().map(|t| t.counts.total()).sum::<u64>(), 7);
    assert!(memory.available_kib() < memory.total_kib());
    let spilled: Vec<Vec<Change>> = txns.into_iter().map(all_changes).collect();
    assert_eq!(spilled, plain);
    assert_eq!(memory.available_kib(), memory.total_kib(), "every charge released");
}

#[test]
fn a_relation_that_changes_while_spilling_applies_to_the_changes_after_it() {
    let memory = TxnMemory::new(0, None);
    let mut d = Decoder::with_memory(memory.clone());
    let feed = |d: &mut Decoder, b: Vec<u8>| d.feed(&Bytes::from(b)).unwrap();
    feed(&mut d, build::relation(7, &["a", "b"]));
    // Exhaust the budget with a transaction that is kept alive.
    feed(&mut d, build::begin(1));
    let big = "x".repeat(60 * 1024);
    feed(&mut d, build::insert(7, &[&big, "1"]));
    let first = feed(&mut d, build::commit(0x200)).unwrap();
    assert!(first.spilled.is_none());
    // The next one spills; its relation gains a column half-way.
    feed(&mut d, build::begin(2));
    feed(&mut d, build::insert(7, &["p", "q"]));
    feed(&mut d, build::relation(7, &["a", "b", "c"]));
    feed(&mut d, build::insert(7, &["r", "s", "t"]));
    let second = feed(&mut d, build::commit(0x300)).unwrap();
    assert!(second.spilled.is_some());
    let shapes: Vec<Vec<String>> = all_changes(second)
        .into_iter()
        .map(|c| match c {
            Change::Insert { new } => new.relation.columns.iter().map(|c| c.name.clone()).collect(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(shapes, [vec!["a", "b"], vec!["a", "b", "c"]]);
    // The decoder itself knows the new shape for what follows.
    feed(&mut d, build::begin(3));
    drop(first);
    feed(&mut d, build::insert(7, &["u", "v", "w"]));
    let third = feed(&mut d, build::commit(0x400)).unwrap();
    assert!(third.spilled.is_none(), "memory was released by the first");
    assert_eq!(all_changes(third).len(), 1);
}

#[test]
fn a_disconnect_drops_the_half_spilled_transaction_and_its_charge() {
    let memory = TxnMemory::new(0, None);
    let mut d = Decoder::with_memory(memory.clone());
    let feed = |d: &mut Decoder, b: Vec<u8>| d.feed(&Bytes::from(b)).unwrap();
    feed(&mut d, build::relation(7, &["a"]));
    feed(&mut d, build::begin(1));
    for _ in 0..100 {
        feed(&mut d, build::insert(7, &[&"y".repeat(4096)]));
    }
    assert!(d.spilled_bytes() > 0);
    d.reset();
    assert_eq!(memory.available_kib(), memory.total_kib());
}

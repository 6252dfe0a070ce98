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

fn captured() -> Vec<(u32, Bytes)> {
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
    assert!(matches!(d.feed(&insert), Err(DecodeError::UnknownRelation(_))));
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

use super::*;
use crate::event::{MessageRow, Participant};
use serde_json::json;

#[test]
fn frames_are_read_back_into_changes_as_followers_receive_them() {
    let chat = Uuid::new_v4();
    let sender = Uuid::new_v4();
    let body = json!({"id": Uuid::new_v4(), "chat_id": chat, "seq": 4, "sender_id": sender,
                      "content": "hi", "created_at": "2026-11-30T01:02:03.000004Z"});
    let row = MessageRow::from_json(body.as_object().unwrap().clone()).unwrap();
    let Some(Change::Insert { seq, sender: s, at, row: raw, .. }) = change_of(&EventFrame::message(&row, None)) else {
        panic!("not an insert")
    };
    assert_eq!((seq, s), (4, Some(sender)));
    assert_eq!(rfc3339_micros(at), "2026-11-30T01:02:03.000004Z");
    assert_eq!(serde_json::from_str::<serde_json::Value>(raw.get()).unwrap(), body);
    let p = Participant { chat_id: chat, user_id: sender, delivered_seq: 3, read_seq: 2 };
    let Some(Change::Marks { read, delivered, user, .. }) = change_of(&EventFrame::receipt(&p, None)) else {
        panic!("not marks")
    };
    assert_eq!((read, delivered, user), (2, 3, sender));
}

#[test]
fn cursors_round_trip_and_nonsense_is_refused() {
    let chat = Uuid::new_v4();
    assert_eq!(parse_cursor(&format!("1700000000000000_{chat}")), Some((1_700_000_000_000_000, chat)));
    assert_eq!(parse_cursor("-5_nope"), None);
    assert_eq!(parse_cursor("nonsense"), None);
}

//! `history`: keyset pages of stored messages by `seq`, for participants only
//! (protocol 1.1).

mod support;

use serde_json::{json, Value};
use support::{insert, Db, Relay};
use uuid::Uuid;

fn seqs(page: &Value) -> Vec<i64> {
    page["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn history_pages_backwards_by_seq_for_participants_only() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    let (alice, eve) = (Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[alice]).await;
    let c = db.client().await;
    for i in 1..=120 {
        insert(&c, chat, alice, &format!("m{i}")).await;
    }
    // A deleted message leaves a hole; pages skip it.
    c.execute("DELETE FROM chat_messages WHERE chat_id = $1 AND seq = 100", &[&chat]).await.unwrap();
    let mut a = relay.ws(alice).await;

    // No before_seq: the newest 50 (default), oldest first.
    a.send(json!({"type": "history", "chat_id": chat, "ref": 1})).await;
    let page = a.expect("history").await;
    assert_eq!(page["ref"], 1);
    assert_eq!(page["chat_id"], chat.to_string());
    assert_eq!(seqs(&page), (70..=120).filter(|s| *s != 100).collect::<Vec<_>>());
    assert_eq!(page["has_more"], true);
    // Rows look like the `message` field of message events.
    let first = &page["messages"][0];
    assert_eq!(first["content"], "m70");
    assert_eq!(first["chat_id"], chat.to_string());
    assert!(first["created_at"].as_str().is_some_and(|t| t.ends_with('Z')));

    // Keyset: before the first seq of the page.
    a.send(json!({"type": "history", "chat_id": chat, "before_seq": 70, "limit": 30})).await;
    let page = a.expect("history").await;
    assert_eq!(seqs(&page), (40..=69).collect::<Vec<_>>());
    assert_eq!(page["has_more"], true);
    a.send(json!({"type": "history", "chat_id": chat, "before_seq": 40, "limit": 500})).await;
    let page = a.expect("history").await;
    assert_eq!(seqs(&page), (1..=39).collect::<Vec<_>>(), "a limit over 200 is taken as 200");
    assert_eq!(page["has_more"], false);
    a.send(json!({"type": "history", "chat_id": chat, "before_seq": 1})).await;
    let page = a.expect("history").await;
    assert!(seqs(&page).is_empty());
    assert_eq!(page["has_more"], false);

    // Bad requests and strangers.
    a.send(json!({"type": "history", "chat_id": chat, "limit": 0, "ref": "z"})).await;
    let v = a.next().await;
    assert_eq!((v["code"].as_str(), v["ref"].as_str()), (Some("bad_request"), Some("z")));
    let mut e = relay.ws(eve).await;
    e.send(json!({"type": "history", "chat_id": chat, "ref": 2})).await;
    let v = e.next().await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str(), v["ref"].as_i64()),
        (Some("error"), Some("forbidden"), Some(2))
    );
    // An empty chat of one's own: an empty page.
    let empty = db.chat(&[eve]).await;
    e.send(json!({"type": "history", "chat_id": empty})).await;
    let page = e.expect("history").await;
    assert!(seqs(&page).is_empty());
    assert_eq!(page["has_more"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn history_of_big_rows_is_cut_by_size_and_says_so() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    let user = Uuid::new_v4();
    let chat = db.chat(&[user]).await;
    let c = db.client().await;
    // 100 rows of ~15 KB: about 1.5 MB, more than one answer carries.
    c.execute(
        "INSERT INTO chat_messages (chat_id, sender_id, content) SELECT $1, $2, repeat('h', 15000) || g FROM generate_series(1, 100) g",
        &[&chat, &user],
    )
    .await
    .unwrap();
    let mut ws = relay.ws(user).await;
    ws.send(json!({"type": "history", "chat_id": chat, "limit": 100})).await;
    let page = ws.expect("history").await;
    let got = seqs(&page);
    assert!(got.len() < 100 && !got.is_empty(), "{} rows", got.len());
    assert_eq!(*got.last().unwrap(), 100, "the newest come first");
    assert_eq!(page["has_more"], true);
    // Paging on from there reaches the first message.
    let mut before = got[0];
    let mut all = got;
    while before > 1 {
        ws.send(json!({"type": "history", "chat_id": chat, "before_seq": before, "limit": 100})).await;
        let page = ws.expect("history").await;
        let s = seqs(&page);
        before = s[0];
        all.splice(0..0, s);
    }
    assert_eq!(all, (1..=100).collect::<Vec<_>>());
}

/// Issue #17, item 2: rows whose JSON is much bigger than their text (every
/// control character becomes `\u00XX`, six bytes) must not close the reader.
/// 60 messages of 16 KiB of control characters: about 5.6 MiB as JSON.
#[tokio::test(flavor = "multi_thread")]
async fn rows_that_grow_as_json_are_paged_not_a_reason_to_close() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[alice, bob]).await;
    let c = db.client().await;
    c.execute(
        "INSERT INTO chat_messages (chat_id, sender_id, content) \
         SELECT $1, $2, repeat(chr(1), 16384) FROM generate_series(1, 60)",
        &[&chat, &alice],
    )
    .await
    .unwrap();

    // History, newest first, page by page: every message once, no close.
    let mut ws = relay.ws(bob).await;
    let mut all = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let mut ask = json!({"type": "history", "chat_id": chat, "limit": 60});
        if let Some(b) = before {
            ask["before_seq"] = json!(b);
        }
        ws.send(ask).await;
        let page = match ws.next_or_end().await {
            Ok(page) => page,
            Err(end) => panic!("history closed the connection: {end:?}"),
        };
        assert_eq!(page["type"], "history", "{}", page["type"]);
        let s = seqs(&page);
        assert!(!s.is_empty() || page["has_more"] == false);
        all.splice(0..0, s.clone());
        if page["has_more"] == false {
            break;
        }
        before = s.first().copied();
    }
    assert_eq!(all, (1..=60).collect::<Vec<_>>());

    // Resuming from the start: the catch-up delivers all 60, then live.
    let mut ws = relay.ws(bob).await;
    ws.subscribe(chat, Some(0)).await;
    assert_eq!(ws.messages(chat, 60).await, (1..=60).collect::<Vec<_>>());
    let seq = insert(&c, chat, alice, "after").await;
    assert_eq!(ws.messages(chat, 1).await, vec![seq]);
}

/// A single row bigger than the relay's bound on unsent data is still
/// delivered to a reader that reads (4008 is for a client that takes
/// nothing, not for a big frame).
#[tokio::test(flavor = "multi_thread")]
async fn a_row_bigger_than_the_unsent_bound_is_delivered() {
    let db = Db::start().await;
    let relay = Relay::start_with(&db, &[("CHAT_RELAY_MAX_FRAME_BYTES", "65536")]).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[alice, bob]).await;
    let c = db.client().await;
    let mut live = relay.ws(bob).await;
    live.subscribe(chat, None).await;
    // 1 MiB of control characters: 6 MiB of JSON, past the 4 MiB bound.
    c.execute(
        "INSERT INTO chat_messages (chat_id, sender_id, content) VALUES ($1, $2, repeat(chr(2), 1048576))",
        &[&chat, &alice],
    )
    .await
    .unwrap();
    let v = live.expect("message").await;
    assert_eq!(v["message"]["content"].as_str().map(str::len), Some(1048576));
    let mut reader = relay.ws(bob).await;
    reader.send(json!({"type": "history", "chat_id": chat})).await;
    let page = reader.expect("history").await;
    assert_eq!(seqs(&page), vec![1]);
}

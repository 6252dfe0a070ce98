//! The inbox (protocol 1.2) against real PostgreSQL 15 and the relay
//! binary: pages, live `chat` / `chat_removed` frames, strangers, a client
//! that falls behind, metrics.

mod support;

use std::collections::HashSet;

use serde_json::{json, Value};
use support::{insert, Db, Relay, Ws};
use uuid::Uuid;

/// What the table says a user's list is: (chat, last_seq, unread), in
/// list order (activity descending, then chat id), computed in SQL.
async fn expected(c: &tokio_postgres::Client, user: Uuid) -> Vec<(String, i64, i64)> {
    c.query(
        "SELECT c.id::text, c.last_seq, least(get_unread_count(c.id, $1), 999)
           FROM chats c JOIN chat_participants p ON p.chat_id = c.id AND p.user_id = $1
          ORDER BY coalesce((SELECT m.created_at FROM chat_messages m WHERE m.chat_id = c.id
                             ORDER BY m.seq DESC LIMIT 1), c.created_at) DESC, c.id",
        &[&user],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

async fn badge(c: &tokio_postgres::Client, user: Uuid) -> i64 {
    c.query_one(
        "SELECT count(*) FROM chat_participants p WHERE p.user_id = $1 AND get_unread_count(p.chat_id, $1) > 0",
        &[&user],
    )
    .await
    .unwrap()
    .get(0)
}

async fn insert_at(c: &tokio_postgres::Client, chat: Uuid, sender: Uuid, content: &str, at: &str) -> i64 {
    c.query_one(
        "INSERT INTO chat_messages (chat_id, sender_id, content, created_at) VALUES ($1, $2, $3, $4::text::timestamptz) RETURNING seq",
        &[&chat, &sender, &content, &at],
    )
    .await
    .unwrap()
    .get(0)
}

/// Sends `inbox` and returns its answer.
async fn page(ws: &mut Ws, limit: Option<i64>, before: Option<&str>) -> Value {
    let tag = Uuid::new_v4().to_string();
    let mut f = json!({"type": "inbox", "ref": tag});
    if let Some(l) = limit {
        f["limit"] = json!(l);
    }
    if let Some(b) = before {
        f["before"] = json!(b);
    }
    ws.send(f).await;
    loop {
        let v = ws.next().await;
        if v["ref"] == tag.as_str() {
            assert_eq!(v["type"], "inbox", "{v}");
            return v;
        }
    }
}

/// The next `chat` or `chat_removed` frame (other frames are skipped).
async fn inbox_frame(ws: &mut Ws) -> Value {
    loop {
        let v = ws.next().await;
        if v["type"] == "chat" || v["type"] == "chat_removed" {
            return v;
        }
        assert_ne!(v["type"], "error", "{v}");
    }
}

/// Inbox frames that arrive before a ping's answer.
async fn inbox_frames_until_barrier(ws: &mut Ws) -> Vec<Value> {
    ws.barrier().await.into_iter().filter(|v| v["type"] == "chat" || v["type"] == "chat_removed").collect()
}

fn row(list: &[Value]) -> Vec<(String, i64, i64)> {
    list.iter()
        .map(|s| {
            (s["chat_id"].as_str().unwrap().to_string(), s["last_seq"].as_i64().unwrap(), s["unread"].as_i64().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_list_every_chat_once_in_activity_order_with_exact_unread_and_badge() {
    let db = Db::start().await;
    let c = db.client().await;
    let relay = Relay::start(&db).await;
    let (me, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let mut chats = Vec::new();
    for _ in 0..9 {
        chats.push(db.chat(&[me, bob]).await);
    }
    // A stranger's chat never shows.
    let theirs = db.chat(&[bob]).await;
    insert(&c, theirs, bob, "not for me").await;
    // Activity from explicit created_at, out of insert order; one chat
    // empty, one with only my own messages, one read to the end, one read
    // halfway, one imported with timestamps in the past.
    for (i, chat) in chats.iter().enumerate().take(8) {
        for k in 0..=i {
            let at = format!("2026-01-{:02} 10:{:02}:00+00", 1 + (i * 7) % 9, k);
            let sender = if i == 3 { me } else { bob };
            insert_at(&c, *chat, sender, &format!("m{k}"), &at).await;
        }
    }
    c.execute("SELECT mark_messages_as_read($1, $2, 100)", &[&chats[5], &me]).await.unwrap();
    c.execute("SELECT mark_messages_as_read($1, $2, 3)", &[&chats[6], &me]).await.unwrap();
    for k in 0..1200 {
        // More than the protocol's 999.
        if k == 0 {
            c.execute(
                "INSERT INTO chat_messages (chat_id, sender_id, content, created_at)
                 SELECT $1, $2, 'bulk ' || g, timestamptz '2025-06-01' + g * interval '1 second' FROM generate_series(1, 1200) g",
                &[&chats[7], &bob],
            )
            .await
            .unwrap();
        }
    }

    let mut ws = relay.ws(me).await;
    let want = expected(&c, me).await;
    assert_eq!(want.len(), 9);
    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let p = page(&mut ws, Some(4), cursor.as_deref()).await;
        assert_eq!(p["unread_chats"].as_i64().unwrap(), badge(&c, me).await, "{p}");
        let list = p["chats"].as_array().unwrap().clone();
        for s in &list {
            // The newest row, and the activity it gives.
            match s["last_message"].as_object() {
                Some(m) => {
                    assert_eq!(m["seq"], s["last_seq"], "{s}");
                    assert_eq!(m["created_at"], s["last_activity"], "{s}");
                }
                None => assert_eq!(s["last_seq"], 0, "{s}"),
            }
        }
        got.extend(list);
        pages += 1;
        if pages == 1 {
            // A chat listed on a later page gets a message between pages:
            // it is still listed exactly once.
            let later = want.last().unwrap().0.parse::<Uuid>().unwrap();
            let seq = insert(&c, later, bob, "between pages").await;
            // Live, since the inbox is on; and the next pages are as new.
            let f = inbox_frame(&mut ws).await;
            assert_eq!(
                (f["chat_id"].as_str(), f["last_seq"].as_i64()),
                (Some(want.last().unwrap().0.as_str()), Some(seq))
            );
        }
        match p["next"].as_str() {
            Some(n) => cursor = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let ids: Vec<String> = got.iter().map(|s| s["chat_id"].as_str().unwrap().to_string()).collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 9, "every chat once: {ids:?}");
    assert!(!ids.contains(&theirs.to_string()));
    // Order as it stood when the inbox started; counts as the table has them now.
    let want_ids: Vec<String> = want.iter().map(|w| w.0.clone()).collect();
    assert_eq!(ids, want_ids);
    let now: std::collections::HashMap<String, (i64, i64)> =
        expected(&c, me).await.into_iter().map(|(id, s, u)| (id, (s, u))).collect();
    for (id, last_seq, unread) in row(&got) {
        assert_eq!(now[&id], (last_seq, unread), "chat {id}");
    }
    let imported = got.iter().find(|s| s["chat_id"] == chats[7].to_string().as_str()).unwrap();
    assert_eq!(imported["unread"], 999, "at most 999");
    let halfway = got.iter().find(|s| s["chat_id"] == chats[6].to_string().as_str()).unwrap();
    assert_eq!((halfway["read_seq"].as_i64(), halfway["unread"].as_i64()), (Some(3), Some(4)));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_change_that_alters_a_summary_arrives_as_a_chat_frame() {
    let db = Db::start().await;
    let c = db.client().await;
    let relay = Relay::start(&db).await;
    let (me, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[me, bob]).await;
    let other = db.chat(&[me, bob]).await;
    let mut phone = relay.ws(me).await;
    let mut laptop = relay.ws(me).await;
    let first = page(&mut phone, None, None).await;
    assert_eq!(first["chats"].as_array().unwrap().len(), 2);
    assert_eq!(first["unread_chats"], 0);
    page(&mut laptop, None, None).await;

    // A message from bob: unread 1, the badge 1, the row.
    let s1 = insert(&c, chat, bob, "hello").await;
    let f = inbox_frame(&mut phone).await;
    assert_eq!((f["type"].as_str(), f["chat_id"].as_str()), (Some("chat"), Some(chat.to_string().as_str())), "{f}");
    assert_eq!(
        (f["last_seq"].as_i64(), f["unread"].as_i64(), f["unread_chats"].as_i64()),
        (Some(s1), Some(1), Some(1))
    );
    assert_eq!(f["last_message"]["content"], "hello");
    assert_eq!(f["last_message"]["created_at"], f["last_activity"]);
    // My own message: last message moves, unread does not.
    let s2 = insert(&c, chat, me, "mine").await;
    let f = inbox_frame(&mut phone).await;
    assert_eq!((f["last_seq"].as_i64(), f["unread"].as_i64()), (Some(s2), Some(1)), "{f}");
    // Three from bob in other transactions: a frame each, in order.
    for k in 0..3 {
        insert(&c, chat, bob, &format!("b{k}")).await;
    }
    let mut last = (0, 0);
    while last.0 < s2 + 3 {
        let f = inbox_frame(&mut phone).await;
        let now = (f["last_seq"].as_i64().unwrap(), f["unread"].as_i64().unwrap());
        assert!(now.0 > last.0, "in order: {now:?} after {last:?}");
        last = now;
    }
    assert_eq!(last, (s2 + 3, 4));

    // Read on the laptop, partially: phone's count is exact (2 left).
    laptop.send(json!({"type": "read", "chat_id": chat, "seq": s2 + 1})).await;
    let f = loop {
        let f = inbox_frame(&mut phone).await;
        if f["read_seq"] == s2 + 1 {
            break f;
        }
    };
    assert_eq!((f["unread"].as_i64(), f["unread_chats"].as_i64()), (Some(2), Some(1)), "{f}");
    // Read to the end: the badge clears on the phone.
    laptop.send(json!({"type": "read", "chat_id": chat, "seq": s2 + 3})).await;
    let f = loop {
        let f = inbox_frame(&mut phone).await;
        if f["read_seq"] == s2 + 3 {
            break f;
        }
    };
    assert_eq!((f["unread"].as_i64(), f["unread_chats"].as_i64()), (Some(0), Some(0)), "{f}");

    // Edit of the newest message, then its delete: the previous one shows.
    c.execute("UPDATE chat_messages SET content = 'edited' WHERE chat_id = $1 AND seq = $2", &[&chat, &(s2 + 3)])
        .await
        .unwrap();
    let f = loop {
        let f = inbox_frame(&mut phone).await;
        if f["last_message"]["content"] == "edited" {
            break f;
        }
    };
    assert_eq!(f["last_seq"].as_i64(), Some(s2 + 3));
    c.execute("DELETE FROM chat_messages WHERE chat_id = $1 AND seq = $2", &[&chat, &(s2 + 3)]).await.unwrap();
    let f = loop {
        let f = inbox_frame(&mut phone).await;
        if f["last_message"]["seq"] == s2 + 2 {
            break f;
        }
    };
    assert_eq!(f["last_message"]["content"], "b1", "{f}");
    assert_eq!(f["last_activity"], f["last_message"]["created_at"]);

    // Added to a chat: its summary, whatever its activity.
    let added = db.chat(&[bob]).await;
    insert_at(&c, added, bob, "old news", "2020-01-01 00:00:00+00").await;
    c.execute("INSERT INTO chat_participants (chat_id, user_id) VALUES ($1, $2)", &[&added, &me]).await.unwrap();
    let f = inbox_frame(&mut phone).await;
    assert_eq!((f["type"].as_str(), f["chat_id"].as_str()), (Some("chat"), Some(added.to_string().as_str())), "{f}");
    assert_eq!((f["unread"].as_i64(), f["unread_chats"].as_i64()), (Some(1), Some(1)), "{f}");
    assert_eq!(f["last_activity"], "2020-01-01T00:00:00Z");

    // Removed by DELETE, and by a row moved to another user: chat_removed,
    // then nothing of that chat.
    c.execute("DELETE FROM chat_participants WHERE chat_id = $1 AND user_id = $2", &[&added, &me]).await.unwrap();
    let f = inbox_frame(&mut phone).await;
    assert_eq!((f["type"].as_str(), f["chat_id"].as_str()), (Some("chat_removed"), Some(added.to_string().as_str())));
    c.execute(
        "UPDATE chat_participants SET user_id = $3 WHERE chat_id = $1 AND user_id = $2",
        &[&other, &me, &Uuid::new_v4()],
    )
    .await
    .unwrap();
    let f = inbox_frame(&mut phone).await;
    assert_eq!((f["type"].as_str(), f["chat_id"].as_str()), (Some("chat_removed"), Some(other.to_string().as_str())));
    insert(&c, added, bob, "after removal").await;
    insert(&c, other, bob, "after the move").await;
    let marker = insert(&c, chat, bob, "marker").await;
    let f = inbox_frame(&mut phone).await;
    assert_eq!((f["chat_id"].as_str(), f["last_seq"].as_i64()), (Some(chat.to_string().as_str()), Some(marker)), "{f}");
    assert!(inbox_frames_until_barrier(&mut phone).await.is_empty());

    // The laptop saw the same, ending with the marker.
    let mut seen = Vec::new();
    loop {
        let f = inbox_frame(&mut laptop).await;
        let done = f["last_seq"] == marker && f["chat_id"] == chat.to_string().as_str();
        seen.push(f);
        if done {
            break;
        }
    }
    assert!(seen.iter().any(|f| f["type"] == "chat_removed" && f["chat_id"] == added.to_string().as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn strangers_and_connections_without_the_inbox_get_no_chat_frames() {
    let db = Db::start().await;
    let c = db.client().await;
    let relay = Relay::start(&db).await;
    let (me, bob, stranger) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[me, bob]).await;
    let mut watcher = relay.ws(stranger).await;
    let p = page(&mut watcher, None, None).await;
    assert_eq!(p["chats"], json!([]));
    assert_eq!(p["next"], Value::Null);
    let mut plain = relay.ws(me).await;
    plain.subscribe(chat, None).await;
    let mut off = relay.ws(me).await;
    page(&mut off, None, None).await;
    off.send(json!({"type": "inbox_off", "ref": 1})).await;
    assert_eq!(off.expect("ok").await["ref"], 1);
    let seq = insert(&c, chat, bob, "hi").await;
    assert_eq!(plain.messages(chat, 1).await, [seq]);
    assert!(inbox_frames_until_barrier(&mut plain).await.is_empty());
    assert!(inbox_frames_until_barrier(&mut off).await.is_empty());
    assert!(inbox_frames_until_barrier(&mut watcher).await.is_empty());
    // Bad requests are answered and the connection stays usable.
    off.send(json!({"type": "inbox", "before": "nonsense", "ref": 2})).await;
    let e = off.expect("error").await;
    assert_eq!((e["code"].as_str(), e["ref"].as_i64()), (Some("bad_request"), Some(2)));
    off.send(json!({"type": "inbox", "limit": 0, "ref": 3})).await;
    assert_eq!(off.expect("error").await["code"], "bad_request");
}

#[tokio::test(flavor = "multi_thread")]
async fn inbox_metrics_count_connections_and_frames() {
    let db = Db::start().await;
    let c = db.client().await;
    let relay = Relay::start(&db).await;
    assert_eq!(relay.metric("chat_relay_inbox_connections").await, 0.0);
    assert_eq!(relay.metric("chat_relay_inbox_frames_total").await, 0.0);
    let (me, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[me, bob]).await;
    let mut ws = relay.ws(me).await;
    page(&mut ws, None, None).await;
    assert_eq!(relay.metric("chat_relay_inbox_connections").await, 1.0);
    insert(&c, chat, bob, "x").await;
    inbox_frame(&mut ws).await;
    assert_eq!(relay.metric("chat_relay_inbox_frames_total").await, 1.0);
    drop(ws);
    let deadline = tokio::time::Instant::now() + support::PATIENCE;
    while relay.metric("chat_relay_inbox_connections").await != 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "gauge not back to 0");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_falls_behind_gets_the_latest_summary_per_chat_and_stays_connected() {
    let db = Db::start().await;
    let relay = Relay::start_with(&db, &[("CHAT_RELAY_OUTBOUND_QUEUE", "8")]).await;
    let (me, bob, watcher) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let flood = db.chat(&[me, bob]).await;
    let busy = db.chat(&[me, bob]).await;
    let marker = db.chat(&[watcher]).await;
    let mut slow = relay.small_window_ws(me).await;
    page(&mut slow, None, None).await;
    slow.subscribe(flood, None).await;
    let mut w = relay.ws(watcher).await;
    w.subscribe(marker, None).await;
    let c = db.client().await;
    // ~4 MB the reader does not take: its socket and outbox fill up.
    c.execute(
        "INSERT INTO chat_messages (chat_id, sender_id, content) SELECT $1, $2, repeat('r', 2000) || g FROM generate_series(1, 2000) g",
        &[&flood, &bob],
    )
    .await
    .unwrap();
    // Then 200 changes of another chat, one transaction each.
    for k in 0..200 {
        insert(&c, busy, bob, &format!("busy {k}")).await;
    }
    // Later in the WAL than all of it.
    insert(&c, marker, watcher, "after").await;
    assert_eq!(w.messages(marker, 1).await, [1]);
    // Now read everything.
    let mut messages = Vec::new();
    let mut busy_frames = Vec::new();
    while messages.len() < 2000 || busy_frames.last().map(|f: &Value| f["last_seq"] != 200).unwrap_or(true) {
        let v = slow.next().await;
        match v["type"].as_str() {
            Some("message") => messages.push(v["seq"].as_i64().unwrap()),
            Some("chat") if v["chat_id"] == busy.to_string().as_str() => busy_frames.push(v),
            Some("error" | "unsubscribed") => panic!("{v}"),
            _ => {}
        }
    }
    assert_eq!(messages, (1..=2000).collect::<Vec<i64>>(), "every message once, in order");
    let last = busy_frames.last().unwrap();
    assert_eq!((last["unread"].as_i64(), last["unread_chats"].as_i64()), (Some(200), Some(2)), "{last}");
    eprintln!("{} chat frames for 200 changes", busy_frames.len());
    assert!(busy_frames.len() < 50, "merged while behind: {} frames for 200 changes", busy_frames.len());
    let seqs: Vec<i64> = busy_frames.iter().map(|f| f["last_seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    assert!(inbox_frames_until_barrier(&mut slow).await.iter().all(|f| f["chat_id"] != busy.to_string().as_str()));
    assert_eq!(relay.metric("chat_relay_slow_consumer_disconnects_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_on_one_replica_clears_the_badge_on_another() {
    let db = Db::start().await;
    let nats = chat_relay::tools::scratch::ScratchNats::start().unwrap();
    let env = [("CHAT_RELAY_NATS_URL", nats.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = Relay::start_with(&db, &env).await;
    let b = Relay::start_with(&db, &env).await;
    let (me, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[me, bob]).await;
    let mut phone = a.ws(me).await;
    let mut laptop = b.ws(me).await;
    page(&mut phone, None, None).await;
    page(&mut laptop, None, None).await;
    let c = db.client().await;
    let seq = insert(&c, chat, bob, "hi").await;
    for ws in [&mut phone, &mut laptop] {
        let f = inbox_frame(ws).await;
        assert_eq!((f["unread"].as_i64(), f["unread_chats"].as_i64()), (Some(1), Some(1)), "{f}");
    }
    phone.send(json!({"type": "read", "chat_id": chat, "seq": seq})).await;
    // mark_read moves the watermarks, then the row's status: one frame for
    // both, or two when the laptop takes the first before the second lands.
    loop {
        let f = inbox_frame(&mut laptop).await;
        assert_eq!(
            (f["chat_id"].as_str(), f["read_seq"].as_i64(), f["unread"].as_i64(), f["unread_chats"].as_i64()),
            (Some(chat.to_string().as_str()), Some(seq), Some(0), Some(0)),
            "{f}"
        );
        if f["last_message"]["status"] == "read" {
            break;
        }
    }
    // Added and removed on the other replica's stream too.
    let added = db.chat(&[bob]).await;
    c.execute("INSERT INTO chat_participants (chat_id, user_id) VALUES ($1, $2)", &[&added, &me]).await.unwrap();
    assert_eq!(inbox_frame(&mut laptop).await["chat_id"], added.to_string());
    c.execute("DELETE FROM chat_participants WHERE chat_id = $1 AND user_id = $2", &[&added, &me]).await.unwrap();
    let f = inbox_frame(&mut laptop).await;
    assert_eq!((f["type"].as_str(), f["chat_id"].as_str()), (Some("chat_removed"), Some(added.to_string().as_str())));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_table_reads_every_list_again() {
    let db = Db::start().await;
    let c = db.client().await;
    let relay = Relay::start(&db).await;
    let (me, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let gone = db.chat(&[me, bob]).await;
    let mut ws = relay.ws(me).await;
    page(&mut ws, None, None).await;
    // Everything of the participants table vanishes at once, then I am
    // added to a new chat: the list is read again from the table.
    c.batch_execute("TRUNCATE chat_participants").await.unwrap();
    let f = inbox_frame(&mut ws).await;
    assert_eq!((f["type"].as_str(), f["chat_id"].as_str()), (Some("chat_removed"), Some(gone.to_string().as_str())));
    let fresh = db.chat(&[me, bob]).await;
    let seq = insert(&c, fresh, bob, "after").await;
    let f = loop {
        let f = inbox_frame(&mut ws).await;
        if f["last_seq"] == seq {
            break f;
        }
    };
    assert_eq!((f["chat_id"].as_str(), f["unread"].as_i64()), (Some(fresh.to_string().as_str()), Some(1)));
}

#[tokio::test(flavor = "multi_thread")]
async fn steady_state_reads_nothing_from_the_table() {
    let db = Db::start().await;
    let c = db.client().await;
    let relay = Relay::start(&db).await;
    let (me, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let chats = [db.chat(&[me, bob]).await, db.chat(&[me, bob]).await];
    let mut ws = relay.ws(me).await;
    let mut other = relay.ws(bob).await;
    page(&mut ws, None, None).await;
    page(&mut other, None, None).await;
    let before = relay.metric("chat_relay_inbox_table_reads_total").await;
    // Messages both ways, deliveries, and reads to the end, on both sides.
    for round in 0..5 {
        for chat in chats {
            let s1 = insert(&c, chat, bob, &format!("r{round}")).await;
            let s2 = insert(&c, chat, me, &format!("m{round}")).await;
            c.execute("SELECT mark_messages_as_delivered($1, $2, $3)", &[&chat, &me, &s1]).await.unwrap();
            c.execute("SELECT mark_messages_as_read($1, $2, $3)", &[&chat, &me, &s2]).await.unwrap();
            c.execute("SELECT mark_messages_as_read($1, $2, $3)", &[&chat, &bob, &s2]).await.unwrap();
        }
    }
    let last = 10;
    let f = loop {
        let f = inbox_frame(&mut ws).await;
        if f["chat_id"] == chats[1].to_string().as_str() && f["read_seq"] == last {
            break f;
        }
    };
    assert_eq!((f["unread"].as_i64(), f["unread_chats"].as_i64()), (Some(0), Some(0)), "{f}");
    loop {
        let f = inbox_frame(&mut other).await;
        if f["chat_id"] == chats[1].to_string().as_str() && f["read_seq"] == last {
            break;
        }
    }
    assert_eq!(relay.metric("chat_relay_inbox_table_reads_total").await, before, "no table read per event");
}

#[tokio::test(flavor = "multi_thread")]
async fn inbox_requests_count_against_the_per_user_request_rate() {
    let db = Db::start().await;
    let relay = Relay::start_with(&db, &[("CHAT_RELAY_REQUEST_RATE", "5")]).await;
    let me = Uuid::new_v4();
    db.chat(&[me]).await;
    let mut ws = relay.ws(me).await;
    // Each one reads the user's whole list from the table.
    for i in 0..20 {
        ws.send(json!({"type": "inbox", "ref": i})).await;
    }
    let frames = ws.barrier().await;
    let refused: Vec<&Value> = frames.iter().filter(|v| v["code"] == "rate_limited").collect();
    assert!(refused.len() >= 10, "{frames:?}");
    assert!(refused.iter().all(|v| v["retry_after_ms"].as_u64().unwrap_or(0) >= 1 && v["chat_id"].is_null()));
    assert!(frames.iter().filter(|v| v["type"] == "inbox").count() >= 1);
}

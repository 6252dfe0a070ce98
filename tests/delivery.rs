//! Delivery lifecycle as a black box: idempotent send, debounced
//! delivered/read marking, receipts back to the sender.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{insert, Db, Relay, Ws, PATIENCE};
use uuid::Uuid;

async fn participant_marks(db: &Db, chat: Uuid, user: Uuid) -> (i64, i64) {
    let row = db
        .client()
        .await
        .query_one(
            "SELECT last_delivered_seq, last_read_seq FROM chat_participants WHERE chat_id = $1 AND user_id = $2",
            &[&chat, &user],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Waits for a receipt of `user` in `chat` with at least these watermarks.
async fn receipt(ws: &mut Ws, user: Uuid, delivered: i64, read: i64) -> Value {
    loop {
        let v = ws.next().await;
        if v["type"] == "receipt"
            && v["user_id"] == user.to_string()
            && v["delivered_seq"].as_i64() >= Some(delivered)
            && v["read_seq"].as_i64() >= Some(read)
        {
            return v;
        }
    }
}

/// The next `update` and `receipt`, in whichever order they come (one
/// marking transaction produces both).
async fn update_and_receipt(ws: &mut Ws) -> (Value, Value) {
    let (mut upd, mut rec) = (None, None);
    while upd.is_none() || rec.is_none() {
        let v = ws.next().await;
        match v["type"].as_str() {
            Some("update") => upd = Some(v),
            Some("receipt") => rec = Some(v),
            _ => {}
        }
    }
    (upd.unwrap_or_default(), rec.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_sends_of_one_client_generated_id_store_one_row_and_one_event() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[alice, bob]).await;
    let mut watcher = relay.ws(bob).await;
    watcher.subscribe(chat, None).await;
    let cgid = Uuid::new_v4();
    // Six connections of alice retry the same send at once.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let mut ws = relay.ws(alice).await;
        tasks.push(tokio::spawn(async move {
            ws.send(json!({"type": "send", "chat_id": chat, "client_generated_id": cgid, "content": "once", "ref": i}))
                .await;
            let v = ws.next().await;
            assert_eq!(v["type"], "sent", "{v}");
            assert_eq!(v["ref"], i);
            v
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let ids: std::collections::HashSet<_> = answers.iter().map(|a| (a["id"].clone(), a["seq"].clone())).collect();
    assert_eq!(ids.len(), 1, "every answer names the same row: {answers:?}");
    assert_eq!(answers.iter().filter(|a| a["duplicate"] == false).count(), 1, "{answers:?}");
    assert!(answers.iter().all(|a| a["client_generated_id"] == cgid.to_string() && a["chat_id"] == chat.to_string()));
    let rows: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM chat_messages WHERE chat_id = $1", &[&chat])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    // One message event, with the sender from the token.
    let msg = watcher.expect("message").await;
    assert_eq!(msg["message"]["sender_id"], alice.to_string());
    assert_eq!(msg["message"]["client_generated_id"], cgid.to_string());
    assert!(watcher.barrier().await.iter().all(|v| v["type"] != "message"), "one event only");
    // A retry much later still gets the original.
    let mut late = relay.ws(alice).await;
    late.send(json!({"type": "send", "chat_id": chat, "client_generated_id": cgid, "content": "once"})).await;
    let v = late.next().await;
    assert_eq!((v["duplicate"].as_bool(), &v["id"]), (Some(true), &answers[0]["id"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn send_is_validated_and_forbidden_for_strangers() {
    let db = Db::start().await;
    let relay = Relay::start_with(&db, &[("CHAT_RELAY_MAX_CONTENT_BYTES", "100")]).await;
    let alice = Uuid::new_v4();
    let chat = db.chat(&[alice]).await;
    let mut ws = relay.ws(alice).await;
    for (content, why) in [("", "empty"), (&*"x".repeat(101), "longer than 100")] {
        ws.send(json!({"type": "send", "chat_id": chat, "client_generated_id": Uuid::new_v4(), "content": content, "ref": "c"})).await;
        let v = ws.next().await;
        assert_eq!((v["code"].as_str(), v["ref"].as_str()), (Some("bad_request"), Some("c")), "{v}");
        assert!(v["message"].as_str().unwrap().contains(why));
    }
    ws.send(json!({"type": "send", "chat_id": chat, "client_generated_id": "nope", "content": "x"})).await;
    assert_eq!(ws.next().await["code"], "bad_request");
    let mut stranger = relay.ws(Uuid::new_v4()).await;
    stranger
        .send(json!({"type": "send", "chat_id": chat, "client_generated_id": Uuid::new_v4(), "content": "x"}))
        .await;
    assert_eq!(stranger.next().await["code"], "forbidden");
    let rows: i64 = db.client().await.query_one("SELECT count(*) FROM chat_messages", &[]).await.unwrap().get(0);
    assert_eq!(rows, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn send_answers_unavailable_quickly_while_the_database_is_down() {
    let mut db = Db::start().await;
    let relay = Relay::start(&db).await;
    let alice = Uuid::new_v4();
    let chat = db.chat(&[alice]).await;
    let mut ws = relay.ws(alice).await;
    // Membership cached while the database is up.
    ws.subscribe(chat, None).await;
    tokio::task::block_in_place(|| db.pg.stop().unwrap());
    let started = Instant::now();
    ws.send(json!({"type": "send", "chat_id": chat, "client_generated_id": Uuid::new_v4(), "content": "x", "ref": 1}))
        .await;
    let v = ws.next().await;
    assert_eq!((v["type"].as_str(), v["code"].as_str()), (Some("error"), Some("unavailable")), "{v}");
    // Bounded by the pool's connect timeout, far from hanging.
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    tokio::task::block_in_place(|| db.pg.start_again().unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ack_burst_costs_a_few_flushes_and_lands_exactly() {
    let db = Db::start().await;
    let relay = Relay::start_with(&db, &[("CHAT_RELAY_DELIVERED_DEBOUNCE_MS", "200")]).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[alice, bob]).await;
    let c = db.client().await;
    c.execute(
        "INSERT INTO chat_messages (chat_id, sender_id, content) SELECT $1, $2, 'm' || g FROM generate_series(1, 300) g",
        &[&chat, &alice],
    )
    .await
    .unwrap();
    insert(&c, chat, bob, "bob's own").await;
    let mut a = relay.ws(alice).await;
    a.subscribe(chat, None).await;
    let before = relay.metric("chat_relay_delivered_flushes_total").await;
    // 300 acks out of order (a shuffled walk with many regressions), then reads up to 120.
    let mut b = relay.ws(bob).await;
    let mut order: Vec<i64> = (1..=300).collect();
    for i in 0..order.len() {
        order.swap(i, (i * 7919) % 300);
    }
    for seq in &order {
        b.send(json!({"type": "ack", "chat_id": chat, "seq": seq})).await;
    }
    for seq in (1..=120).rev() {
        b.send(json!({"type": "read", "chat_id": chat, "seq": seq})).await;
    }
    assert!(b.barrier().await.is_empty(), "acks and reads are not answered");
    receipt(&mut a, bob, 300, 120).await;
    let flushes = relay.metric("chat_relay_delivered_flushes_total").await - before;
    assert!((1.0..=4.0).contains(&flushes), "{flushes} flushes for 420 marks");
    assert_eq!(participant_marks(&db, chat, bob).await, (300, 120));
    let statuses: Vec<(String, i64)> = c
        .query(
            "SELECT status, count(*) FROM chat_messages WHERE chat_id = $1 GROUP BY status ORDER BY status",
            &[&chat],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // Bob's own message stays 'sent': only other senders' messages flip.
    assert_eq!(statuses, [("delivered".to_string(), 180), ("read".to_string(), 120), ("sent".to_string(), 1)]);
    // A stale ack afterwards never moves the watermark back.
    b.send(json!({"type": "ack", "chat_id": chat, "seq": 5})).await;
    b.send(json!({"type": "read", "chat_id": chat, "seq": 121})).await;
    receipt(&mut a, bob, 300, 121).await;
    assert_eq!(participant_marks(&db, chat, bob).await, (300, 121));
}

#[tokio::test(flavor = "multi_thread")]
async fn marks_pending_across_a_postgres_restart_are_not_lost() {
    let mut db = Db::start().await;
    let relay = Relay::start_with(&db, &[("CHAT_RELAY_DELIVERED_DEBOUNCE_MS", "300")]).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[alice, bob]).await;
    let c = db.client().await;
    for i in 0..10 {
        insert(&c, chat, alice, &format!("m{i}")).await;
    }
    drop(c);
    let mut a = relay.ws(alice).await;
    a.subscribe(chat, None).await;
    let mut b = relay.ws(bob).await;
    b.subscribe(chat, None).await;
    b.send(json!({"type": "read", "chat_id": chat, "seq": 7})).await;
    b.barrier().await;
    // The flush is due in 300 ms; the database goes away before that.
    db.restart().await;
    // After the restart the retried flush lands, and its receipt reaches alice.
    let r = receipt(&mut a, bob, 7, 7).await;
    assert_eq!((r["delivered_seq"].as_i64(), r["read_seq"].as_i64()), (Some(7), Some(7)));
    assert_eq!(participant_marks(&db, chat, bob).await, (7, 7));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sender_sees_sent_delivered_read_and_receipts() {
    let db = Db::start().await;
    let relay = Relay::start_with(&db, &[("CHAT_RELAY_DELIVERED_DEBOUNCE_MS", "20")]).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[alice, bob]).await;
    let mut a = relay.ws(alice).await;
    let mut b = relay.ws(bob).await;
    a.subscribe(chat, None).await;
    b.subscribe(chat, None).await;
    a.send(json!({"type": "send", "chat_id": chat, "client_generated_id": Uuid::new_v4(), "content": "hi bob"})).await;
    let sent = a.expect("sent").await;
    let seq = sent["seq"].as_i64().unwrap();
    assert_eq!(a.expect("message").await["seq"], seq, "the sender gets its own message event too");
    assert_eq!(b.expect("message").await["message"]["status"], "sent");
    b.send(json!({"type": "ack", "chat_id": chat, "seq": seq})).await;
    let (upd, r) = update_and_receipt(&mut a).await;
    assert_eq!((upd["seq"].as_i64(), upd["message"]["status"].as_str()), (Some(seq), Some("delivered")));
    assert_eq!((r["chat_id"].as_str(), r["user_id"].as_str()), (Some(&*chat.to_string()), Some(&*bob.to_string())));
    assert_eq!((r["delivered_seq"].as_i64(), r["read_seq"].as_i64()), (Some(seq), Some(0)));
    b.send(json!({"type": "read", "chat_id": chat, "seq": seq})).await;
    let (upd, r) = update_and_receipt(&mut a).await;
    assert_eq!(upd["message"]["status"], "read");
    assert_eq!((r["delivered_seq"].as_i64(), r["read_seq"].as_i64()), (Some(seq), Some(seq)));
    // Two flushes (the counter moves once the write returns, which may be
    // after its receipt reached alice)...
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while relay.metric("chat_relay_delivered_flushes_total").await < 2.0 {
        assert!(tokio::time::Instant::now() < deadline, "the second flush was never counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ack/read of a chat the user is not in: forbidden.
    let other = db.chat(&[alice]).await;
    b.send(json!({"type": "ack", "chat_id": other, "seq": 1, "ref": "x"})).await;
    let v = b.expect("error").await;
    assert_eq!((v["code"].as_str(), v["ref"].as_str()), (Some("forbidden"), Some("x")));
    // ... and receipts do not loop: no further writes happened on their own.
    assert!(a.barrier().await.is_empty());
    assert_eq!(relay.metric("chat_relay_delivered_flushes_total").await, 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_delivered_marks_messages_written_to_a_recipient() {
    let db = Db::start().await;
    let relay =
        Relay::start_with(&db, &[("CHAT_RELAY_AUTO_DELIVERED", "true"), ("CHAT_RELAY_DELIVERED_DEBOUNCE_MS", "20")])
            .await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[alice, bob]).await;
    let mut a = relay.ws(alice).await;
    let mut b = relay.ws(bob).await;
    a.subscribe(chat, None).await;
    b.subscribe(chat, None).await;
    a.send(json!({"type": "send", "chat_id": chat, "client_generated_id": Uuid::new_v4(), "content": "no ack needed"}))
        .await;
    let seq = a.expect("sent").await["seq"].as_i64().unwrap();
    b.expect("message").await;
    // Bob never acks; the write to his socket counts.
    let upd = a.expect("update").await;
    assert_eq!((upd["seq"].as_i64(), upd["message"]["status"].as_str()), (Some(seq), Some("delivered")));
    assert_eq!(participant_marks(&db, chat, bob).await, (seq, 0));
    // Alice's own copy did not mark anything for her.
    assert_eq!(participant_marks(&db, chat, alice).await, (0, 0));
}

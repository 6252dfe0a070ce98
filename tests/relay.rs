//! `chat-relay serve` as a black box: real Postgres, the real binary, real
//! WebSocket clients. Guarantees 1 to 4 of the protocol, the endpoints, the
//! close codes, and faults (SIGKILL, Postgres restarts). Slow readers: tests/flow.rs.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::StreamExt;

use serde_json::{json, Value};
use support::{insert, token, token_with, Db, End, Relay, Ws, PATIENCE};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_and_every_contract_metric_from_startup() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    assert_eq!(relay.get("/healthz").await.0, 200);
    assert_eq!(relay.get("/readyz").await.0, 200);
    let (status, body) = relay.get("/metrics").await;
    assert_eq!(status, 200);
    for series in [
        "chat_relay_events_total{op=\"insert\"} 0",
        "chat_relay_events_total{op=\"update\"} 0",
        "chat_relay_events_total{op=\"delete\"} 0",
        "chat_relay_duplicates_total{key=\"id\"} 0",
        "chat_relay_duplicates_total{key=\"client_generated_id\"} 0",
        "chat_relay_duplicates_total{key=\"seq\"} 0",
        "chat_relay_seq_gaps_total 0",
        "chat_relay_replication_lag_bytes ",
        "chat_relay_ws_connections 0",
        "chat_relay_messages_sent_total 0",
        "chat_relay_slow_consumer_disconnects_total 0",
        "chat_relay_delivered_flushes_total 0",
        "chat_relay_catchups_total 0",
        "chat_relay_rate_limited_total 0",
        "chat_relay_commit_to_send_seconds_bucket",
        "# TYPE chat_relay_commit_to_send_seconds histogram",
    ] {
        assert!(body.contains(series), "missing {series:?} in\n{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_are_refused_with_401_and_a_json_body() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    let user = Uuid::new_v4();
    for (name, tok) in [
        ("missing", None),
        ("garbage", Some("not.a.jwt".to_string())),
        ("wrong key", Some(token_with(user, 600, "other-secret"))),
        ("expired", Some(token(user, -30))),
    ] {
        let url = match &tok {
            Some(t) => format!("ws://127.0.0.1:{}/v1/ws?access_token={t}", relay.port),
            None => format!("ws://127.0.0.1:{}/v1/ws", relay.port),
        };
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 401, "{name}");
                let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
                assert_eq!(body["error"], "unauthorized", "{name}");
                assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}");
            }
            other => panic!("{name}: expected 401, got {other:?}"),
        }
    }
    // The header form works too.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://127.0.0.1:{}/v1/ws", relay.port).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", token(user, 600)).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut ws_client = Ws::new(ws);
    ws_client.barrier().await;
    ws = ws_client.stream;
    drop(ws);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_frames_get_bad_request_and_the_connection_stays_usable() {
    let db = Db::start().await;
    let relay = Relay::start_with(&db, &[("CHAT_RELAY_MAX_FRAME_BYTES", "1024")]).await;
    let mut ws = relay.ws(Uuid::new_v4()).await;
    for (frame, reference) in [
        (Message::Text("{not json".into()), Value::Null),
        (Message::Text("[]".into()), Value::Null),
        (Message::Text(r#"{"type":"fly","ref":1}"#.into()), json!(1)),
        (Message::Text(r#"{"type":"subscribe","ref":"x"}"#.into()), json!("x")),
        (Message::Text(r#"{"type":"subscribe","chat_id":"nope"}"#.into()), Value::Null),
        (
            Message::Text(r#"{"type":"ack","chat_id":"00000000-0000-0000-0000-000000000000","seq":"1"}"#.into()),
            Value::Null,
        ),
        (Message::Binary(vec![1, 2, 3].into()), Value::Null),
    ] {
        ws.send_raw(frame).await;
        let v = ws.next().await;
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["code"], "bad_request", "{v}");
        assert_eq!(v.get("ref").cloned().unwrap_or(Value::Null), reference, "{v}");
    }
    // Still usable.
    ws.send(json!({"type": "ping", "ref": 9})).await;
    assert_eq!(ws.next().await, json!({"type": "pong", "ref": 9}));
    // Too big: closed with 1009.
    ws.send(json!({"type": "ping", "pad": "x".repeat(2000)})).await;
    assert_eq!(ws.close_code().await, End::Closed(Some(1009)));
}

#[tokio::test(flavor = "multi_thread")]
async fn strangers_see_nothing_and_removed_participants_are_cut_off() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    let (alice, bob, eve) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[alice, bob]).await;
    let mut a = relay.ws(alice).await;
    let mut b = relay.ws(bob).await;
    let mut e = relay.ws(eve).await;
    a.subscribe(chat, None).await;
    b.subscribe(chat, None).await;
    e.send(json!({"type": "subscribe", "chat_id": chat, "ref": 1})).await;
    let refused = e.next().await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str(), refused["ref"].as_i64()),
        (Some("error"), Some("forbidden"), Some(1))
    );
    e.send(json!({"type": "send", "chat_id": chat, "client_generated_id": Uuid::new_v4(), "content": "hi"})).await;
    assert_eq!(e.next().await["code"], "forbidden");

    let c = db.client().await;
    insert(&c, chat, alice, "one").await;
    assert_eq!(a.messages(chat, 1).await, [1]);
    assert_eq!(b.messages(chat, 1).await, [1]);
    assert!(e.barrier().await.is_empty(), "the stranger got something");

    // Bob is removed: unsubscribed(forbidden), then nothing more of the chat.
    c.execute("DELETE FROM chat_participants WHERE chat_id = $1 AND user_id = $2", &[&chat, &bob]).await.unwrap();
    let cut = b.next().await;
    assert_eq!(cut, json!({"type": "unsubscribed", "chat_id": chat, "reason": "forbidden"}));
    insert(&c, chat, alice, "two").await;
    assert_eq!(a.messages(chat, 1).await, [2]);
    assert!(b.barrier().await.is_empty(), "removed participant still receives");
    // And cannot come back in.
    b.send(json!({"type": "subscribe", "chat_id": chat, "after_seq": 0})).await;
    assert_eq!(b.next().await["code"], "forbidden");
    assert!(b.barrier().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writers_every_subscriber_gets_exactly_its_committed_rows_in_order() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    let users: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    // Four chats; user 0 is in all of them, the others in one or two.
    let mut chats = Vec::new();
    for i in 0..4 {
        chats.push(db.chat(&[users[0], users[1 + i], users[1 + (i + 1) % 5]]).await);
    }
    let mut clients = Vec::new();
    for u in &users {
        let mut ws = relay.ws(*u).await;
        let mut mine = Vec::new();
        for chat in &chats {
            ws.send(json!({"type": "subscribe", "chat_id": chat})).await;
            let v = ws.next().await;
            if v["type"] == "subscribed" {
                mine.push(*chat);
            } else {
                assert_eq!(v["code"], "forbidden");
            }
        }
        clients.push((ws, mine));
    }
    // Writers: multi-row transactions, some rolled back, across all chats.
    let mut writers = Vec::new();
    for w in 0..4 {
        let url = db.url.clone();
        let chats = chats.clone();
        let sender = users[0];
        writers.push(tokio::spawn(async move {
            let mut c = support::connect(&url).await;
            for i in 0..30 {
                let tx = c.transaction().await.unwrap();
                // Chats in one order within a transaction: the seq trigger locks
                // each chat row, so mixed orders could deadlock (as in any app).
                let mut mine: Vec<Uuid> = (0..(1 + i % 3)).map(|k| chats[(w + i + k) % chats.len()]).collect();
                mine.sort();
                for (k, chat) in mine.iter().enumerate() {
                    tx.execute(
                        "INSERT INTO chat_messages (chat_id, sender_id, content) VALUES ($1, $2, $3)",
                        &[chat, &sender, &format!("w{w} i{i} k{k}")],
                    )
                    .await
                    .unwrap();
                }
                if i % 7 == 3 {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut expected = HashMap::new();
    for chat in &chats {
        expected.insert(*chat, support::seqs_in_db(&db.client().await, *chat).await);
    }
    for (ws, mine) in &mut clients {
        let total: usize = mine.iter().map(|c| expected[c].len()).sum();
        let mut got: BTreeMap<Uuid, Vec<i64>> = BTreeMap::new();
        let mut n = 0;
        while n < total {
            let v = ws.next().await;
            if v["type"] == "message" {
                let chat: Uuid = v["chat_id"].as_str().unwrap().parse().unwrap();
                assert!(mine.contains(&chat), "message of a chat the user is not in");
                assert!(v["message"]["content"].as_str().is_some_and(|c| c.starts_with('w')));
                got.entry(chat).or_default().push(v["seq"].as_i64().unwrap());
                n += 1;
            }
        }
        for chat in mine.iter() {
            assert_eq!(
                got.get(chat).cloned().unwrap_or_default(),
                expected[chat],
                "chat {chat}: exactly the committed rows, in order"
            );
        }
        let extra: Vec<Value> = ws.barrier().await.into_iter().filter(|v| v["type"] == "message").collect();
        assert!(extra.is_empty(), "duplicates: {extra:?}");
    }
    assert!(relay.metric("chat_relay_messages_sent_total").await > 0.0);
    assert!(relay.metric("chat_relay_events_total{op=\"insert\"}").await > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_with_after_seq_while_inserts_race_misses_and_repeats_nothing() {
    let db = Db::start().await;
    let relay = Relay::start_with(&db, &[("CHAT_RELAY_BACKFILL_PAGE", "7")]).await;
    let user = Uuid::new_v4();
    let chat = db.chat(&[user]).await;
    let c = db.client().await;
    for i in 0..40 {
        insert(&c, chat, user, &format!("early {i}")).await;
    }
    let url = db.url.clone();
    let writer = tokio::spawn(async move {
        let c = support::connect(&url).await;
        for i in 0..200 {
            insert(&c, chat, user, &format!("racing {i}")).await;
        }
    });
    // Several resumes at different points while the writer runs.
    let mut clients = Vec::new();
    for after in [0i64, 13, 40] {
        let mut ws = relay.ws(user).await;
        let sub = ws.subscribe(chat, Some(after)).await;
        assert!(sub["latest_seq"].as_i64().unwrap() >= 40);
        clients.push((after, ws));
    }
    writer.await.unwrap();
    for (after, mut ws) in clients {
        let want: Vec<i64> = (after + 1..=240).collect();
        let got = ws.messages(chat, want.len()).await;
        assert_eq!(got, want, "after_seq {after}");
        assert!(ws.barrier().await.iter().all(|v| v["type"] != "message"), "nothing repeated after the seam");
    }
    // Without after_seq: only what comes after latest_seq.
    let mut ws = relay.ws(user).await;
    let sub = ws.subscribe(chat, None).await;
    assert_eq!(sub["latest_seq"], 240);
    insert(&c, chat, user, "new").await;
    assert_eq!(ws.messages(chat, 1).await, [241]);
    // Resubscribing on the same connection never repeats.
    ws.send(json!({"type": "unsubscribe", "chat_id": chat, "ref": 5})).await;
    assert_eq!(ws.next().await, json!({"type": "unsubscribed", "chat_id": chat, "ref": 5}));
    ws.subscribe(chat, Some(0)).await;
    insert(&c, chat, user, "newer").await;
    let v = ws.next().await;
    assert_eq!((v["type"].as_str(), v["seq"].as_i64()), (Some("message"), Some(242)));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_and_postgres_restart_then_resubscribe_loses_and_repeats_nothing() {
    let mut db = Db::start().await;
    let user = Uuid::new_v4();
    let chat = db.chat(&[user]).await;
    let mut relay = Relay::start(&db).await;
    let mut ws = relay.ws(user).await;
    ws.subscribe(chat, Some(0)).await;

    let mut received: Vec<i64> = Vec::new();
    let c = db.client().await;
    for i in 0..50 {
        insert(&c, chat, user, &format!("a{i}")).await;
    }
    received.extend(ws.messages(chat, 20).await);
    // Mid-stream: the relay dies hard.
    relay.kill();
    let (rest, _) = ws.until_end().await;
    received.extend(rest.iter().filter(|v| v["type"] == "message").map(|v| v["seq"].as_i64().unwrap()));
    for i in 0..30 {
        insert(&c, chat, user, &format!("b{i}")).await;
    }
    drop(c);
    // And Postgres restarts while no relay runs.
    db.restart().await;
    let c = db.client().await;
    for i in 0..30 {
        insert(&c, chat, user, &format!("c{i}")).await;
    }
    let relay = Relay::start(&db).await;
    let mut ws = relay.ws(user).await;
    let last = *received.last().unwrap();
    ws.subscribe(chat, Some(last)).await;
    // Postgres restarts again under the running relay.
    db.restart().await;
    relay.wait_ready().await;
    let c = db.client().await;
    for i in 0..20 {
        insert(&c, chat, user, &format!("d{i}")).await;
    }
    received.extend(ws.messages(chat, (130 - last) as usize).await);
    assert_eq!(received, (1..=130).collect::<Vec<i64>>());
    assert!(ws.barrier().await.iter().all(|v| v["type"] != "message"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_sockets_with_1001_confirms_and_exits_0() {
    let db = Db::start().await;
    let user = Uuid::new_v4();
    let chat = db.chat(&[user]).await;
    let mut relay = Relay::start(&db).await;
    let mut ws = relay.ws(user).await;
    ws.subscribe(chat, None).await;
    let c = db.client().await;
    insert(&c, chat, user, "last words").await;
    assert_eq!(ws.messages(chat, 1).await, [1]);
    let wal: String = c.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    let status = relay.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(ws.close_code().await, End::Closed(Some(1001)));
    // The server takes the final confirmation in its own time: once its WAL
    // sender is gone (the slot inactive), it has taken it. Reading the slot
    // before that failed under load, with the confirmation still in flight.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let active: bool = c
            .query_one("SELECT active FROM pg_replication_slots WHERE slot_name = 'chat_relay'", &[])
            .await
            .unwrap()
            .get(0);
        if !active {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the WAL sender never let go of the slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The final confirmation covers the message it delivered.
    let confirmed: bool = c
        .query_one(
            "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = 'chat_relay'",
            &[&wal],
        )
        .await
        .unwrap()
        .get(0);
    assert!(confirmed);
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_tokens_close_4001_unless_refreshed_with_auth() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    let user = Uuid::new_v4();
    let mut short = Ws::connect(relay.port, &token(user, 2)).await;
    let mut refreshed = Ws::connect(relay.port, &token(user, 2)).await;
    refreshed.send(json!({"type": "auth", "access_token": token(user, 600), "ref": "r"})).await;
    assert_eq!(refreshed.next().await, json!({"type": "ok", "ref": "r"}));
    assert_eq!(short.close_code().await, End::Closed(Some(4001)));
    // The refreshed one outlived the first token.
    assert!(refreshed.barrier().await.is_empty());
    // A bad token in `auth` is answered with an error and close 4001.
    refreshed.send(json!({"type": "auth", "access_token": "garbage", "ref": 2})).await;
    let v = refreshed.next().await;
    assert_eq!((v["type"].as_str(), v["code"].as_str()), (Some("error"), Some("unauthorized")));
    assert_eq!(refreshed.close_code().await, End::Closed(Some(4001)));
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_follows_the_database() {
    let mut db = Db::start().await;
    let relay = Relay::start(&db).await;
    tokio::task::block_in_place(|| db.pg.stop().unwrap());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = relay.get("/readyz").await;
        if status == 503 {
            assert!(body.starts_with("not ready"), "{body}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(relay.get("/healthz").await.0, 200, "alive even when not ready");
    tokio::task::block_in_place(|| db.pg.start_again().unwrap());
    relay.wait_ready().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_works_with_the_documented_least_privilege_role() {
    let db = Db::start().await;
    let sql = include_str!("../deploy/postgres/relay-role.sql").replace(":'relay_password'", "'relay-pw'");
    db.client().await.batch_execute(&sql).await.unwrap();
    let url = format!("postgres://chat_relay:relay-pw@127.0.0.1:{}/postgres?sslmode=disable", db.pg.port);
    let relay = Relay::start_url(&url, &[]).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[alice, bob]).await;
    let mut a = relay.ws(alice).await;
    let mut b = relay.ws(bob).await;
    a.subscribe(chat, Some(0)).await;
    b.subscribe(chat, Some(0)).await;
    a.send(
        json!({"type": "send", "chat_id": chat, "client_generated_id": Uuid::new_v4(), "content": "least privilege"}),
    )
    .await;
    assert_eq!(a.expect("sent").await["seq"], 1);
    assert_eq!(b.messages(chat, 1).await, [1]);
    b.send(json!({"type": "read", "chat_id": chat, "seq": 1})).await;
    loop {
        let v = a.next().await;
        if v["type"] == "update" && v["message"]["status"] == "read" {
            break;
        }
    }
    // Not a superuser, and it never needed to be.
    let sup: bool = db
        .client()
        .await
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = 'chat_relay'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!sup);
}

/// The next frame on the live subscription, checked byte for byte against the
/// same message replayed from the table by a fresh subscription after `after`.
async fn live_and_replayed(relay: &Relay, live: &mut Ws, user: Uuid, chat: Uuid, after: i64) -> String {
    let live_frame = live.stream.next().await.unwrap().unwrap().into_text().unwrap().to_string();
    let mut replay = relay.ws(user).await;
    replay.subscribe(chat, Some(after)).await;
    let replay_frame = replay.stream.next().await.unwrap().unwrap().into_text().unwrap().to_string();
    assert_eq!(live_frame, replay_frame);
    live_frame
}

#[tokio::test(flavor = "multi_thread")]
async fn backfilled_and_live_frames_of_a_row_are_identical() {
    let db = Db::start().await;
    let c = db.client().await;
    // Extra app columns of several types travel too.
    c.batch_execute("ALTER TABLE chat_messages ADD COLUMN meta jsonb, ADD COLUMN score numeric, ADD COLUMN pinned bool, ADD COLUMN note text")
        .await
        .unwrap();
    let relay = Relay::start(&db).await;
    let (user, chat, mut live) = relay.subscriber(&db).await;
    c.execute(
        "INSERT INTO chat_messages (chat_id, sender_id, content, client_generated_id, meta, score, pinned)
         VALUES ($1, $2, E'quote \" and \\n newline', gen_random_uuid(), '{\"b\": [1, 2], \"a\": null}', 12.50, true)",
        &[&chat, &user],
    )
    .await
    .unwrap();
    let live_frame = live_and_replayed(&relay, &mut live, user, chat, 0).await;
    let v: Value = serde_json::from_str(&live_frame).unwrap();
    assert_eq!(v["message"]["meta"], json!({"b": [1, 2], "a": null}));
    assert_eq!(v["message"]["score"], "12.50");
    assert_eq!(v["message"]["pinned"], true);
    assert_eq!(v["message"]["note"], Value::Null);
    assert!(live_frame.starts_with(r#"{"type":"message","chat_id":"#), "{live_frame}");

    // A column the app adds while the relay runs shows up in both paths at once.
    c.batch_execute("ALTER TABLE chat_messages ADD COLUMN mood text").await.unwrap();
    c.execute(
        "INSERT INTO chat_messages (chat_id, sender_id, content, mood) VALUES ($1, $2, 'later', 'calm')",
        &[&chat, &user],
    )
    .await
    .unwrap();
    let live_frame = live_and_replayed(&relay, &mut live, user, chat, 1).await;
    assert!(live_frame.contains(r#""mood":"calm""#), "{live_frame}");
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_peers_are_dropped_and_live_ones_kept() {
    let db = Db::start().await;
    let relay = Relay::start_with(&db, &[("CHAT_RELAY_PING_INTERVAL_SECS", "1")]).await;
    let mut alive = relay.ws(Uuid::new_v4()).await;
    let mut silent = relay.ws(Uuid::new_v4()).await;
    // One round trip each proves both sessions run (and are counted: the
    // gauge moves when a session starts, after the client saw the upgrade).
    // From here on `silent` is never polled, so it cannot answer pings.
    alive.barrier().await;
    silent.barrier().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    // The live client keeps talking (each barrier is a round trip) until the
    // relay has dropped the silent one: two intervals without a word.
    while relay.metric("chat_relay_ws_connections").await != 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "silent peer never dropped");
        alive.barrier().await;
        // Pacing only: the live client needs to speak within each interval.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, end) = silent.until_end().await;
    assert!(matches!(end, End::Eof | End::Closed(_)), "{end:?}");
    alive.barrier().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connected_clients_miss_nothing_when_the_slot_is_lost() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    let (user, chat, mut ws) = relay.subscriber(&db).await;
    let c = db.client().await;
    insert(&c, chat, user, "before").await;
    assert_eq!(ws.messages(chat, 1).await, [1]);
    // Lose the slot under the running relay: end its walsender and drop the
    // slot before the relay reconnects (it retries within a few hundred ms).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while c
        .batch_execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'chat_relay' AND active_pid IS NOT NULL;
             SELECT pg_drop_replication_slot('chat_relay');",
        )
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "could not drop the slot");
    }
    // Written right after the drop, most likely before the new slot exists:
    // then it is in no slot's WAL, and only the resync can deliver it.
    insert(&c, chat, user, "while the slot was gone").await;
    let frame = ws.expect("message").await;
    assert_eq!(
        (frame["seq"].as_i64(), frame["message"]["content"].as_str()),
        (Some(2), Some("while the slot was gone"))
    );
    relay.wait_ready().await;
    assert_eq!(relay.metric("chat_relay_slot_recreated_total").await, 1.0);
    insert(&c, chat, user, "after").await;
    assert_eq!(ws.messages(chat, 1).await, [3]);
    assert!(ws.barrier().await.iter().all(|v| v["type"] != "message"), "nothing twice");
}

/// Issue #17, item 10: under synchronous replication a commit is decoded
/// before it is visible. A subscribe in that moment reads `latest_seq` one
/// short; the message must still reach it without waiting for the chat's
/// next one. (A synchronous standby that never comes holds the commit.)
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_decoded_before_it_is_visible_still_reaches_a_new_subscriber() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[alice, bob]).await;
    let c = db.client().await;
    assert_eq!(insert(&c, chat, alice, "one").await, 1);
    let decoded = relay.metric("chat_relay_events_total{op=\"insert\"}").await;
    c.batch_execute("ALTER SYSTEM SET synchronous_standby_names = 'ghost'").await.unwrap();
    c.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let writer = db.client().await;
    let pending = tokio::spawn(async move { insert(&writer, chat, alice, "two").await });
    // The relay decodes it while the writer still waits for the standby.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while relay.metric("chat_relay_events_total{op=\"insert\"}").await <= decoded {
        assert!(tokio::time::Instant::now() < deadline, "the commit was never decoded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!pending.is_finished(), "the commit returned before the standby confirmed it");
    let mut ws = relay.ws(bob).await;
    let sub = ws.subscribe(chat, None).await;
    assert_eq!(sub["latest_seq"], 1, "not visible yet: {sub}");
    c.batch_execute("ALTER SYSTEM RESET synchronous_standby_names").await.unwrap();
    c.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    assert_eq!(pending.await.unwrap(), 2);
    assert_eq!(ws.messages(chat, 1).await, vec![2]);
}

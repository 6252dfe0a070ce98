//! Flow control: no client and no transaction can stall or bloat the relay
//! (issue "Flow control"). Slow readers are caught up from the table instead
//! of being thrown out or holding everyone else back; peers that stop reading
//! are closed on a deadline; big transactions pass in bounded memory.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::{insert, Db, End, Relay, Ws, PATIENCE};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// Peak resident memory of a process (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

/// Waits until a metric series reaches `want`; returns how long it took.
async fn until_metric(relay: &Relay, series: &str, want: f64) -> Duration {
    let started = Instant::now();
    while relay.metric(series).await != want {
        assert!(started.elapsed() < PATIENCE, "{series} never reached {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Reads frames at about `bytes_per_sec` until `n` messages of `chat` came;
/// checks they are exactly seqs 1..=n in order and that every update or
/// delete refers to a message already received. Returns every frame.
async fn read_slowly(ws: &mut Ws, chat: Uuid, n: i64, bytes_per_sec: f64) -> Vec<Value> {
    let started = Instant::now();
    let mut bytes = 0usize;
    let mut frames = Vec::new();
    let mut seen = 0i64;
    while seen < n {
        let msg = tokio::time::timeout(PATIENCE, ws.stream.next()).await.expect("no frame within patience");
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            other => panic!("connection ended after {seen} of {n} messages: {other:?}"),
        };
        bytes += text.len();
        let v: Value = serde_json::from_str(&text).unwrap();
        if v["chat_id"] == chat.to_string() {
            match v["type"].as_str() {
                Some("message") => {
                    seen += 1;
                    assert_eq!(v["seq"], seen, "messages must be exactly 1..={n}, in order");
                }
                Some("update") | Some("delete") => {
                    let seq = v["seq"].as_i64().unwrap();
                    assert!(seq <= seen, "{} for seq {seq} before its message (last message {seen})", v["type"]);
                }
                _ => {}
            }
        }
        frames.push(v);
        // Pace: never ahead of the allowed byte rate.
        let due = Duration::from_secs_f64(bytes as f64 / bytes_per_sec);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(ahead).await;
        }
    }
    frames
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_but_steady_reader_gets_a_20k_burst_exactly_once_and_stays_connected() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    let (user, chat, mut ws) = relay.subscriber(&db).await;
    // One 8 MB transaction: 20,000 messages of ~400 bytes.
    let c = db.client().await;
    c.execute(
        "INSERT INTO chat_messages (chat_id, sender_id, content) SELECT $1, $2, repeat('x', 300) || g FROM generate_series(1, 20000) g",
        &[&chat, &user],
    )
    .await
    .unwrap();
    // A phone on a real network, not a local client: ~4 MB/s.
    read_slowly(&mut ws, chat, 20_000, 4e6).await;
    assert!(ws.barrier().await.iter().all(|v| v["type"] != "message"), "nothing repeated");
    assert_eq!(relay.metric("chat_relay_slow_consumer_disconnects_total").await, 0.0);
    assert!(relay.metric("chat_relay_catchups_total").await >= 1.0, "it fell behind and was caught up");
    insert(&c, chat, user, "live again").await;
    assert_eq!(ws.messages(chat, 1).await, [20_001]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_stops_reading_is_closed_within_the_deadline_and_forgotten() {
    let db = Db::start().await;
    let relay = Relay::start_with(&db, &[("CHAT_RELAY_SLOW_CONSUMER_MS", "2000")]).await;
    let (stalled_user, other_user) = (Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[stalled_user, other_user]).await;
    let mut stalled = relay.ws(stalled_user).await;
    stalled.subscribe(chat, None).await;
    let mut other = relay.ws(other_user).await;
    other.subscribe(chat, None).await;
    assert_eq!(relay.metric("chat_relay_ws_connections").await, 2.0);
    // ~40 MB: far more than the kernel buffers between them. The stalled
    // peer never reads again; the other one reads everything.
    let c = db.client().await;
    c.execute(
        "INSERT INTO chat_messages (chat_id, sender_id, content) SELECT $1, $2, repeat('y', 4000) || g FROM generate_series(1, 10000) g",
        &[&chat, &other_user],
    )
    .await
    .unwrap();
    let reading = tokio::spawn(async move {
        let got = other.messages(chat, 10_000).await;
        (other, got)
    });
    let took = until_metric(&relay, "chat_relay_ws_connections", 1.0).await;
    // The deadline counts from the last progress; the burst takes a moment
    // to fill the buffers first. Generous, only against a pinned session.
    assert!(took < Duration::from_secs(15), "the stalled peer was dropped only after {took:?}");
    assert_eq!(relay.metric("chat_relay_slow_consumer_disconnects_total").await, 1.0);
    let (mut other, got) = reading.await.unwrap();
    assert_eq!(got, (1..=10_000).collect::<Vec<i64>>());
    assert!(other.barrier().await.is_empty());
    // Whatever the stalled peer still had in its buffers, it ends in 4008 or EOF.
    let (_, end) = stalled.until_end().await;
    assert!(matches!(end, End::Closed(Some(4008)) | End::Eof), "{end:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_chat_stays_fast_while_a_reader_in_another_chat_stalls() {
    let db = Db::start().await;
    // Long deadlines (slow consumer, and two ping intervals of silence): the
    // stalled reader is still connected throughout, however slow the machine.
    let relay =
        Relay::start_with(&db, &[("CHAT_RELAY_SLOW_CONSUMER_MS", "600000"), ("CHAT_RELAY_PING_INTERVAL_SECS", "3600")])
            .await;
    let (busy_user, quiet_user) = (Uuid::new_v4(), Uuid::new_v4());
    let busy = db.chat(&[busy_user]).await;
    let quiet = db.chat(&[quiet_user]).await;
    let mut stalled = relay.ws(busy_user).await;
    stalled.subscribe(busy, None).await;
    let mut q = relay.ws(quiet_user).await;
    q.subscribe(quiet, None).await;
    let c = db.client().await;
    c.execute(
        "INSERT INTO chat_messages (chat_id, sender_id, content) SELECT $1, $2, repeat('z', 4000) || g FROM generate_series(1, 10000) g",
        &[&busy, &busy_user],
    )
    .await
    .unwrap();
    // The burst precedes everything below in the WAL; the first quiet
    // message arrives once it is decoded (on main: once the stalled reader
    // is given up on, after CHAT_RELAY_SLOW_CONSUMER_MS).
    insert(&c, quiet, quiet_user, "after the burst").await;
    assert_eq!(q.messages(quiet, 1).await, [1]);
    // Then the quiet chat gets messages, one at a time.
    let mut worst = Duration::ZERO;
    for i in 2..=6 {
        let t = Instant::now();
        insert(&c, quiet, quiet_user, "hello").await;
        assert_eq!(q.messages(quiet, 1).await, [i]);
        worst = worst.max(t.elapsed());
    }
    // Normal latency here is milliseconds; a stalled pipeline is seconds.
    assert!(worst < Duration::from_secs(2), "quiet chat waited {worst:?} behind a stalled reader");
    assert_eq!(relay.metric("chat_relay_ws_connections").await, 2.0, "nobody was closed");
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delete_larger_than_the_memory_bound_passes_and_delivery_goes_on() {
    let db = Db::start().await;
    let (user, watcher) = (Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[user, watcher]).await;
    let other = db.chat(&[user]).await;
    let c = db.client().await;
    // ~120 MB of rows, written before the relay (and its slot) exists.
    c.execute(
        "INSERT INTO chat_messages (chat_id, sender_id, content) SELECT $1, $2, repeat('d', 4000) || g FROM generate_series(1, 30000) g",
        &[&chat, &user],
    )
    .await
    .unwrap();
    let relay = Relay::start_with(&db, &[("CHAT_RELAY_TXN_MEMORY_MB", "16")]).await;
    let pid = relay.child.id();
    let mut w = relay.ws(watcher).await;
    w.subscribe(chat, None).await;
    let mut ws = relay.ws(user).await;
    ws.subscribe(other, None).await;
    let before = peak_rss_mib(pid);
    // One transaction; REPLICA IDENTITY FULL puts every old row in the WAL.
    c.execute("DELETE FROM chat_messages WHERE chat_id = $1", &[&chat]).await.unwrap();
    insert(&c, other, user, "after the purge").await;
    assert_eq!(ws.messages(other, 1).await, [1], "delivery goes on after the big transaction");
    // The watcher of the purged chat sees every delete.
    let mut deleted = HashSet::new();
    while deleted.len() < 30_000 {
        let v = w.next().await;
        if v["type"] == "delete" {
            assert!(deleted.insert(v["seq"].as_i64().unwrap()), "delete repeated: {v}");
        }
    }
    assert_eq!(deleted, (1..=30_000).collect::<HashSet<i64>>());
    let peak = peak_rss_mib(pid);
    eprintln!("relay peak RSS: {before:.0} MiB before the delete, {peak:.0} MiB after");
    // The bound is for buffered transaction data; allow as much again for
    // everything else the delete touches (frames, socket buffers, allocator).
    assert!(
        peak - before < 40.0,
        "a 120 MB transaction took the relay from {before:.0} to {peak:.0} MiB (CHAT_RELAY_TXN_MEMORY_MB=16)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn updates_and_deletes_racing_a_catch_up_never_overtake_their_message() {
    let db = Db::start().await;
    let relay =
        Relay::start_with(&db, &[("CHAT_RELAY_BACKFILL_PAGE", "50"), ("CHAT_RELAY_OUTBOUND_QUEUE", "16")]).await;
    let user = Uuid::new_v4();
    let chat = db.chat(&[user]).await;
    let c = db.client().await;
    for _ in 0..20 {
        c.execute(
            "INSERT INTO chat_messages (chat_id, sender_id, content) SELECT $1, $2, 'early' FROM generate_series(1, 100)",
            &[&chat, &user],
        )
        .await
        .unwrap();
    }
    // A writer that inserts, updates and deletes while the reader resumes
    // from 0 and falls behind.
    let url = db.url.clone();
    let writer = tokio::spawn(async move {
        let c = support::connect(&url).await;
        for i in 0..300 {
            let seq = insert(&c, chat, user, &format!("racing {i}")).await;
            c.execute("UPDATE chat_messages SET content = 'edited' WHERE chat_id = $1 AND seq = $2", &[&chat, &seq])
                .await
                .unwrap();
            if i % 3 == 0 {
                c.execute("DELETE FROM chat_messages WHERE chat_id = $1 AND seq = $2", &[&chat, &(seq - 1)])
                    .await
                    .unwrap();
            }
        }
    });
    let mut ws = relay.ws(user).await;
    ws.subscribe(chat, Some(0)).await;
    let mut last = 0i64;
    let mut messages = HashMap::new();
    let mut edited = HashSet::new();
    let mut deleted = HashSet::new();
    // Seqs a change arrived for while their message had not: the message
    // must then never come (it was deleted before anyone read it).
    let mut changed_unseen = HashSet::new();
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        let v = ws.next().await;
        let seq = v["seq"].as_i64().unwrap_or(0);
        match v["type"].as_str() {
            Some("message") => {
                assert!(seq > last, "message {seq} after {last}");
                assert!(!changed_unseen.contains(&seq), "an update or delete of {seq} came before its message");
                last = seq;
                messages.insert(seq, v["message"]["content"].as_str().unwrap_or("").to_string());
            }
            Some("update") | Some("delete") => {
                if messages.contains_key(&seq) {
                    if v["type"] == "update" {
                        edited.insert(seq);
                    } else {
                        deleted.insert(seq);
                    }
                } else {
                    changed_unseen.insert(seq);
                }
            }
            _ => {}
        }
        if writer.is_finished() && last >= 2300 {
            break;
        }
        assert!(Instant::now() < deadline, "stuck at {last}");
    }
    writer.await.unwrap();
    // What was still on its way (the last edit, at least): a marker inserted
    // now comes after all of it in the WAL.
    insert(&c, chat, user, "marker").await;
    loop {
        let v = ws.next().await;
        let seq = v["seq"].as_i64().unwrap_or(0);
        if v["type"] == "message" {
            assert_eq!(seq, 2301, "{v}");
            break;
        }
        if v["type"] == "update" && messages.contains_key(&seq) {
            edited.insert(seq);
        }
    }
    for v in ws.barrier().await {
        let seq = v["seq"].as_i64().unwrap_or(0);
        assert_ne!(v["type"], "message", "{v}");
        if v["type"] == "update" && messages.contains_key(&seq) {
            edited.insert(seq);
        }
    }
    // Every racing message came with its edit: in the row itself (read from
    // the table after the edit) or as an update after it.
    for (seq, content) in &messages {
        if *seq > 2000 && content != "edited" {
            // A message deleted before its catch-up ran is told as deleted:
            // its edit is moot then (the row is gone when updates are read).
            assert!(edited.contains(seq) || deleted.contains(seq), "message {seq} ({content}) never showed its edit");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reader_of_a_steady_stream_gets_every_message_to_the_last() {
    let db = Db::start().await;
    let relay = Relay::start_with(&db, &[("CHAT_RELAY_OUTBOUND_QUEUE", "8")]).await;
    let user = Uuid::new_v4();
    let chat = db.chat(&[user]).await;
    let mut ws = relay.small_window_ws(user).await;
    ws.subscribe(chat, None).await;
    // Many small transactions, faster than the reader reads: four rows each
    // (a single-row insert a time ran slower than the reader on a loaded
    // machine, and the reader never fell behind).
    let url = db.url.clone();
    let writer = tokio::spawn(async move {
        let c = support::connect(&url).await;
        for i in 0..150 {
            c.execute(
                "INSERT INTO chat_messages (chat_id, sender_id, content) \
                 SELECT $1, $2, lpad((4 * $3::int + g)::text, 4, '0') || repeat('w', 1000) FROM generate_series(0, 3) g",
                &[&chat, &user, &i],
            )
            .await
            .unwrap();
        }
    });
    read_slowly(&mut ws, chat, 600, 256e3).await;
    writer.await.unwrap();
    assert!(ws.barrier().await.iter().all(|v| v["type"] != "message"), "nothing repeated");
    assert!(relay.metric("chat_relay_catchups_total").await >= 1.0, "it fell behind");
    assert_eq!(relay.metric("chat_relay_slow_consumer_disconnects_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_catch_up_that_meets_a_restarting_database_waits_for_it_and_loses_nothing() {
    let mut db = Db::start().await;
    let relay =
        Relay::start_with(&db, &[("CHAT_RELAY_OUTBOUND_QUEUE", "8"), ("CHAT_RELAY_SLOW_CONSUMER_MS", "60000")]).await;
    let (user, watcher) = (Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[user]).await;
    let marker = db.chat(&[watcher]).await;
    let mut slow = relay.small_window_ws(user).await;
    slow.subscribe(chat, None).await;
    let mut w = relay.ws(watcher).await;
    w.subscribe(marker, None).await;
    // ~4 MB the slow reader does not take yet: it falls behind in the hub.
    let c = db.client().await;
    c.execute(
        "INSERT INTO chat_messages (chat_id, sender_id, content) SELECT $1, $2, repeat('r', 2000) || g FROM generate_series(1, 2000) g",
        &[&chat, &user],
    )
    .await
    .unwrap();
    // Later in the WAL: once it arrives, the burst went through the hub.
    insert(&c, marker, watcher, "after the burst").await;
    assert_eq!(w.messages(marker, 1).await, [1]);
    drop(c);
    // The database goes away before the catch-up can read the table.
    tokio::task::block_in_place(|| db.pg.stop().unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut seqs: Vec<i64> = Vec::new();
        while seqs.len() < 2000 {
            let got = slow.messages(chat, 1).await;
            seqs.extend(&got);
            let _ = tx.send(got[0]);
        }
        (slow, seqs)
    });
    // It delivers what it holds, then waits: nothing arrives for a while
    // (on main an `unavailable` error ended the subscription here).
    loop {
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the reader ended: {:?}", reader.await.err()),
            Err(_) => break,
        }
    }
    assert!(!reader.is_finished(), "the whole burst came without the table");
    tokio::task::block_in_place(|| db.pg.start_again().unwrap());
    let (mut slow, seqs) = reader.await.unwrap();
    assert_eq!(seqs, (1..=2000).collect::<Vec<i64>>());
    assert!(slow.barrier().await.iter().all(|v| v["type"] != "message"), "nothing repeated");
}

/// Issue #17, item 7: a ping's pong waits until what was owed before it is
/// written, and pongs waiting so cost memory like anything else unsent.
/// Past 64 of them the relay reads no more of the connection's frames until
/// some are written: a request sent after 100 pings, while a catch-up is
/// owed, is answered only after the 64th pong (before, it was read at once
/// and answered ahead of every pong, and the pings piled up without bound).
#[tokio::test(flavor = "multi_thread")]
async fn pongs_waiting_for_a_catch_up_are_bounded() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    let user = Uuid::new_v4();
    let chat = db.chat(&[user]).await;
    let c = db.client().await;
    c.execute(
        "INSERT INTO chat_messages (chat_id, sender_id, content) SELECT $1, $2, repeat('p', 1000) || g FROM generate_series(1, 2000) g",
        &[&chat, &user],
    )
    .await
    .unwrap();
    let mut ws = relay.small_window_ws(user).await;
    ws.subscribe(chat, Some(0)).await; // owes 2 MB from the table
    for i in 0..100 {
        ws.send(json!({"type": "ping", "ref": i})).await;
    }
    let elsewhere = Uuid::new_v4();
    ws.send(json!({"type": "unsubscribe", "chat_id": elsewhere, "ref": "after the pings"})).await;
    let (mut pongs, mut messages) = (Vec::new(), 0);
    loop {
        let v = ws.next().await;
        match v["type"].as_str() {
            Some("pong") => pongs.push(v["ref"].as_i64().unwrap()),
            Some("message") => messages += 1,
            Some("unsubscribed") => break,
            _ => {}
        }
    }
    assert_eq!(messages, 2000, "every pong waited for the catch-up");
    // Read only once all 100 pings were, and with at most 64 pongs still
    // waiting then: at least 36 were written before its answer (on main it
    // was read at once and answered ahead of every pong). How many more
    // depends on when the catch-up's pages let the barriers pass.
    assert!(pongs.len() >= 100 - 64, "answered after only {} pongs", pongs.len());
    assert_eq!(pongs, (0..pongs.len() as i64).collect::<Vec<_>>());
    while pongs.len() < 100 {
        let v = ws.next().await;
        if v["type"] == "pong" {
            pongs.push(v["ref"].as_i64().unwrap());
        }
    }
    assert_eq!(pongs, (0..100).collect::<Vec<_>>());
}

//! Presence and typing: the live part of a chat that is not in the table
//! (issue "Presence and typing"), against real PostgreSQL 15 and the real
//! binary, in single-process mode.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};
use support::{Db, Relay, Ws, PATIENCE};
use uuid::Uuid;

/// A connection that shows presence frames.
async fn ws(relay: &Relay, user: Uuid) -> Ws {
    let mut w = relay.ws(user).await;
    w.hide_presence = false;
    w
}

fn online(subscribed: &Value) -> HashSet<String> {
    subscribed["online"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_string()).collect()
}

fn ids(users: &[Uuid]) -> HashSet<String> {
    users.iter().map(|u| u.to_string()).collect()
}

fn frames_of<'a>(frames: &'a [Value], ty: &str) -> Vec<&'a Value> {
    frames.iter().filter(|v| v["type"] == ty).collect()
}

/// Waits until the relay counts `n` WebSocket connections: a session that
/// ended has left every chat by then.
async fn until_connections(relay: &Relay, n: f64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while relay.metric("chat_relay_ws_connections").await != n {
        assert!(tokio::time::Instant::now() < deadline, "connections never reached {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn participants_see_each_other_online_and_tabs_count_once() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    let (alice, bob, mallory) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[alice, bob]).await;
    let mut a = ws(&relay, alice).await;
    assert_eq!(online(&a.subscribe(chat, None).await), ids(&[alice]));

    // Bob's first tab: he is announced, and he learns who is here.
    let mut b1 = ws(&relay, bob).await;
    assert_eq!(online(&b1.subscribe(chat, None).await), ids(&[alice, bob]));
    assert_eq!(
        a.expect("presence").await,
        json!({"type": "presence", "chat_id": chat, "user_id": bob, "online": true})
    );
    // His second tab is not news.
    let mut b2 = ws(&relay, bob).await;
    assert_eq!(online(&b2.subscribe(chat, None).await), ids(&[alice, bob]));
    // A stranger's refused subscribe is not presence either.
    let mut m = ws(&relay, mallory).await;
    m.send(json!({"type": "subscribe", "chat_id": chat})).await;
    assert_eq!(m.next().await["code"], "forbidden");
    assert!(frames_of(&a.barrier().await, "presence").is_empty(), "a second tab or a stranger announced");

    // One tab closes: Bob is still here.
    drop(b1);
    until_connections(&relay, 3.0).await;
    assert!(frames_of(&a.barrier().await, "presence").is_empty(), "offline while a tab remained");
    // The last one closes: he is gone, for Alice.
    drop(b2);
    assert_eq!(
        a.expect("presence").await,
        json!({"type": "presence", "chat_id": chat, "user_id": bob, "online": false})
    );
    // Unsubscribing ends presence too.
    let mut b3 = ws(&relay, bob).await;
    b3.subscribe(chat, None).await;
    assert_eq!(a.expect("presence").await["online"], true);
    b3.send(json!({"type": "unsubscribe", "chat_id": chat})).await;
    assert_eq!(
        a.expect("presence").await,
        json!({"type": "presence", "chat_id": chat, "user_id": bob, "online": false})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn typing_reaches_the_others_once_a_second_and_never_the_sender() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    let (alice, bob, carol) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[alice, bob, carol]).await;
    let mut a1 = ws(&relay, alice).await;
    let mut a2 = ws(&relay, alice).await;
    let mut b = ws(&relay, bob).await;
    a1.subscribe(chat, None).await;
    a2.subscribe(chat, None).await;
    b.subscribe(chat, None).await;
    // Carol is a participant but not subscribed: she hears nothing, and
    // cannot type into a chat she has not subscribed to.
    let mut c = ws(&relay, carol).await;

    a1.send(json!({"type": "typing", "chat_id": chat})).await;
    let want = json!({"type": "typing", "chat_id": chat, "user_id": alice});
    assert_eq!(b.expect("typing").await, want);
    assert_eq!(a2.expect("typing").await, want, "Alice's other tab sees it");
    // Not echoed, and nothing else (typing is not a message, not an answer).
    let back = a1.barrier().await;
    assert!(frames_of(&back, "typing").is_empty(), "typing came back to its sender: {back:?}");
    // Within the second: dropped silently.
    a1.send(json!({"type": "typing", "chat_id": chat})).await;
    assert!(a1.barrier().await.is_empty(), "no answer to typing");
    assert!(frames_of(&b.barrier().await, "typing").is_empty(), "two typings within a second");

    c.send(json!({"type": "typing", "chat_id": chat, "ref": 7})).await;
    let v = c.next().await;
    assert_eq!((v["code"].as_str(), v["ref"].as_i64()), (Some("forbidden"), Some(7)));
    assert!(c.barrier().await.is_empty());
    // Never stored, never replayed: a later subscriber gets no typing.
    c.subscribe(chat, Some(0)).await;
    assert!(frames_of(&c.barrier().await, "typing").is_empty());
    let n: i64 = db.client().await.query_one("SELECT count(*) FROM chat_messages", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_participant_goes_offline_for_the_others() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[alice, bob]).await;
    let mut a = ws(&relay, alice).await;
    let mut b = ws(&relay, bob).await;
    a.subscribe(chat, None).await;
    b.subscribe(chat, None).await;
    assert_eq!(a.expect("presence").await["online"], true);
    db.client()
        .await
        .execute("DELETE FROM chat_participants WHERE chat_id = $1 AND user_id = $2", &[&chat, &bob])
        .await
        .unwrap();
    assert_eq!(b.expect("unsubscribed").await["reason"], "forbidden");
    assert_eq!(
        a.expect("presence").await,
        json!({"type": "presence", "chat_id": chat, "user_id": bob, "online": false})
    );
    // And Bob hears nothing more of the chat, typing included.
    a.send(json!({"type": "typing", "chat_id": chat})).await;
    assert!(b.barrier().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_consumer_closed_with_4008_goes_offline() {
    let db = Db::start().await;
    let relay = Relay::start_with(&db, &[("CHAT_RELAY_SLOW_CONSUMER_MS", "1000")]).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[alice, bob]).await;
    let quiet = db.chat(&[alice, bob]).await;
    let mut a = ws(&relay, alice).await;
    a.subscribe(quiet, None).await;
    let mut b = ws(&relay, bob).await;
    b.subscribe(chat, None).await;
    b.subscribe(quiet, None).await;
    assert_eq!(a.expect("presence").await["online"], true);
    // Bob stops reading while ~20 MB of his chat come.
    db.client()
        .await
        .execute(
            "INSERT INTO chat_messages (chat_id, sender_id, content) SELECT $1, $2, repeat('x', 4000) FROM generate_series(1, 5000)",
            &[&chat, &alice],
        )
        .await
        .unwrap();
    let v = a.expect("presence").await;
    assert_eq!(v, json!({"type": "presence", "chat_id": quiet, "user_id": bob, "online": false}));
    assert_eq!(relay.metric("chat_relay_slow_consumer_disconnects_total").await, 1.0);
    drop(b);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_big_chat_tells_a_newcomer_in_one_frame() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    let users: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    let chat = db.chat(&users).await;
    let mut conns: Vec<Ws> = Vec::new();
    for u in &users[..39] {
        let mut w = ws(&relay, *u).await;
        w.subscribe(chat, None).await;
        conns.push(w);
    }
    let mut last = ws(&relay, users[39]).await;
    let sub = last.subscribe(chat, None).await;
    assert_eq!(online(&sub), ids(&users));
    assert!(sub.get("online_truncated").is_none());
    // The set came in `subscribed`, not as 39 presence frames.
    assert!(frames_of(&last.barrier().await, "presence").is_empty());
}

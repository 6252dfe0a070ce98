//! Trust: only participants, and a schema that existing app code lives with.
//! Each test here reproduces a way the first version leaked or broke
//! (issue "Trust"), against real PostgreSQL 15 and the real binary.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::{insert, token, Db, Relay, Ws, PATIENCE};
use uuid::Uuid;

/// The pid of the walsender serving the relay's slot.
async fn walsender_pid(c: &tokio_postgres::Client, slot: &str) -> i32 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let pid: Option<i32> = c
            .query_one("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .unwrap()
            .get(0);
        if let Some(pid) = pid {
            return pid;
        }
        assert!(tokio::time::Instant::now() < deadline, "no walsender for {slot}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops (SIGSTOP) a Postgres backend until the guard is dropped (SIGCONT):
/// with the walsender stopped, nothing new reaches the relay.
struct Paused(i32);

impl Paused {
    fn new(pid: i32) -> Paused {
        assert!(Command::new("kill").args(["-STOP", &pid.to_string()]).status().unwrap().success());
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0.to_string()]).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn moving_a_participant_row_revokes_the_old_user_and_chat() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    let (alice, bob, carol) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[alice, bob]).await;
    let other = db.chat(&[alice]).await;
    let mut a = relay.ws(alice).await;
    let mut b = relay.ws(bob).await;
    a.subscribe(chat, None).await;
    b.subscribe(chat, None).await;
    let c = db.client().await;

    // bob's row now names carol: bob is out.
    c.execute("UPDATE chat_participants SET user_id = $3 WHERE chat_id = $1 AND user_id = $2", &[&chat, &bob, &carol])
        .await
        .unwrap();
    assert_eq!(b.next().await, json!({"type": "unsubscribed", "chat_id": chat, "reason": "forbidden"}));
    insert(&c, chat, alice, "after the move").await;
    assert_eq!(a.messages(chat, 1).await, [1]);
    assert!(b.barrier().await.is_empty(), "the moved-away user still receives");
    // carol is in: she may subscribe and gets what follows.
    let mut k = relay.ws(carol).await;
    k.subscribe(chat, Some(0)).await;
    assert_eq!(k.messages(chat, 1).await, [1]);

    // alice's row moves to another chat: she loses `chat`, keeps `other`.
    a.subscribe(other, None).await;
    c.execute("DELETE FROM chat_participants WHERE chat_id = $1 AND user_id = $2", &[&other, &alice]).await.unwrap();
    assert_eq!(a.next().await, json!({"type": "unsubscribed", "chat_id": other, "reason": "forbidden"}));
    a.subscribe(chat, None).await;
    c.execute(
        "UPDATE chat_participants SET chat_id = $2 WHERE chat_id = $1 AND user_id = $3",
        &[&chat, &other, &alice],
    )
    .await
    .unwrap();
    assert_eq!(a.next().await, json!({"type": "unsubscribed", "chat_id": chat, "reason": "forbidden"}));
    insert(&c, chat, carol, "alice is gone").await;
    assert_eq!(k.messages(chat, 1).await, [2]);
    assert!(a.barrier().await.is_empty(), "the moved row still delivers its old chat");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_membership_check_that_fails_on_resync_ends_the_subscription() {
    let db = Db::start().await;
    let sql = include_str!("../deploy/postgres/relay-role.sql").replace(":'relay_password'", "'relay-pw'");
    let c = db.client().await;
    c.batch_execute(&sql).await.unwrap();
    let url = format!("postgres://chat_relay:relay-pw@127.0.0.1:{}/postgres?sslmode=disable", db.pg.port);
    let relay = Relay::start_url(&url, &[]).await;
    let (user, chat, mut ws) = relay.subscriber(&db).await;
    insert(&c, chat, user, "before").await;
    assert_eq!(ws.messages(chat, 1).await, [1]);

    // From now on the relay cannot read chat_participants, and the slot is
    // lost: every subscription must be re-checked, and the check fails.
    c.batch_execute("REVOKE SELECT ON chat_participants FROM chat_relay").await.unwrap();
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
    let v = ws.next().await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str(), v["chat_id"].as_str()),
        (Some("error"), Some("unavailable"), Some(chat.to_string().as_str())),
        "{v}"
    );
    relay.wait_ready().await;
    insert(&c, chat, user, "after").await;
    assert!(ws.barrier().await.iter().all(|v| v["type"] != "message"), "an unchecked subscription stayed on");
}

#[tokio::test(flavor = "multi_thread")]
async fn send_subscribe_history_and_backfill_are_refused_before_the_removal_streams() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[alice, bob]).await;
    let c = db.client().await;
    insert(&c, chat, alice, "one").await;
    let mut b = relay.ws(bob).await;
    // The relay has seen bob as a participant (its cache says so).
    b.subscribe(chat, None).await;
    b.send(json!({"type": "unsubscribe", "chat_id": chat})).await;
    b.expect("unsubscribed").await;

    let paused = Paused::new(walsender_pid(&c, "chat_relay").await);
    c.execute("DELETE FROM chat_participants WHERE chat_id = $1 AND user_id = $2", &[&chat, &bob]).await.unwrap();
    let cgid = Uuid::new_v4();
    b.send(json!({"type": "send", "chat_id": chat, "client_generated_id": cgid, "content": "sneaky", "ref": 1})).await;
    let v = b.next().await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str(), v["ref"].as_i64()),
        (Some("error"), Some("forbidden"), Some(1)),
        "{v}"
    );
    b.send(json!({"type": "subscribe", "chat_id": chat, "after_seq": 0, "ref": 2})).await;
    let v = b.next().await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str(), v["ref"].as_i64()),
        (Some("error"), Some("forbidden"), Some(2)),
        "{v}"
    );
    b.send(json!({"type": "history", "chat_id": chat, "ref": 3})).await;
    let v = b.next().await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str(), v["ref"].as_i64()),
        (Some("error"), Some("forbidden"), Some(3)),
        "{v}"
    );
    assert!(b.barrier().await.is_empty(), "history reached a removed user");
    drop(paused);
    let stored: i64 = c
        .query_one("SELECT count(*) FROM chat_messages WHERE client_generated_id = $1", &[&cgid])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0, "a removed user's send was stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_will_not_stream_a_publication_that_misses_participants() {
    let db = Db::start().await;
    let c = db.client().await;
    c.batch_execute("ALTER PUBLICATION chat_relay DROP TABLE chat_participants").await.unwrap();
    let relay = Relay::spawn(&db, &[]);
    // /readyz says why, and keeps saying it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let body = loop {
        if let Ok((503, body)) = support::http_get(relay.port, "/readyz").await {
            if body.contains("chat_participants") {
                break body;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "readyz never named the missing table");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(body.contains("migrate") || body.contains("ALTER PUBLICATION"), "the reason says the fix: {body}");
    // Replica identity must be FULL too.
    c.batch_execute("ALTER PUBLICATION chat_relay ADD TABLE chat_participants; ALTER TABLE chat_participants REPLICA IDENTITY DEFAULT")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok((503, body)) = support::http_get(relay.port, "/readyz").await {
            if body.contains("REPLICA IDENTITY") {
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "readyz never named the replica identity");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The advice works: `migrate` restores it, and the relay streams without a restart.
    db.migrate();
    relay.wait_ready().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_id_inserted_again_after_its_delete_is_delivered() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    let (user, chat, mut ws) = relay.subscriber(&db).await;
    let c = db.client().await;
    let id = Uuid::new_v4();
    let ins = "INSERT INTO chat_messages (id, chat_id, sender_id, content) VALUES ($1, $2, $3, $4)";
    c.execute(ins, &[&id, &chat, &user, &"first"]).await.unwrap();
    assert_eq!(ws.expect("message").await["seq"], 1);
    c.execute("DELETE FROM chat_messages WHERE id = $1", &[&id]).await.unwrap();
    assert_eq!(ws.expect("delete").await["id"], id.to_string());
    // An app restoring a message, or moving it back: same id, new seq.
    c.execute(ins, &[&id, &chat, &user, &"restored"]).await.unwrap();
    let v = ws.expect("message").await;
    assert_eq!((v["seq"].as_i64(), v["message"]["content"].as_str()), (Some(2), Some("restored")));
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_with_nbf_ahead_or_absurd_exp_are_refused_without_harm() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    let user = Uuid::new_v4();
    let now = chrono::Utc::now().timestamp();
    let sign = |claims: Value| support::sign(&claims);
    for (name, claims) in [
        ("nbf ahead", json!({"sub": user, "exp": now + 600, "nbf": now + 300})),
        ("absurd exp", json!({"sub": user, "exp": i64::MAX / 1000})),
        ("exp beyond u64 seconds of Duration", json!({"sub": user, "exp": 18_446_744_073_709_551_615u64})),
    ] {
        let url = format!("ws://127.0.0.1:{}/v1/ws?access_token={}", relay.port, sign(claims));
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 401, "{name}"),
            Ok((ws, _)) => {
                let mut ws = Ws::new(ws);
                let end = ws.next_or_end().await;
                panic!("{name}: accepted; then {end:?}");
            }
            Err(e) => panic!("{name}: {e}"),
        }
    }
    // nbf in the past is fine, and the relay is unharmed.
    let mut ws = Ws::connect(relay.port, &sign(json!({"sub": user, "exp": now + 600, "nbf": now - 5}))).await;
    assert!(ws.barrier().await.is_empty());
    let mut ok = Ws::connect(relay.port, &token(user, 60)).await;
    assert!(ok.barrier().await.is_empty());
}

/// A JWKS endpoint on a free local port: serves whatever set `keys` holds
/// and counts the requests it answered.
struct JwksServer {
    url: String,
    keys: std::sync::Arc<std::sync::Mutex<Value>>,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksServer {
    async fn start() -> JwksServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        let keys = std::sync::Arc::new(std::sync::Mutex::new(json!({"keys": []})));
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (k, h) = (keys.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let (k, h) = (k.clone(), h.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body = k.lock().unwrap().to_string();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        JwksServer { url, keys, hits }
    }

    fn publish(&self, jwks: Vec<Value>) {
        *self.keys.lock().unwrap() = json!({ "keys": jwks });
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A signing key made here, with its public JWK.
struct TestKey {
    kid: String,
    alg: jsonwebtoken::Algorithm,
    encoding: jsonwebtoken::EncodingKey,
    jwk: Value,
}

impl TestKey {
    fn es256(kid: &str) -> TestKey {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw(); // 0x04 || x || y
        TestKey {
            kid: kid.into(),
            alg: jsonwebtoken::Algorithm::ES256,
            encoding: jsonwebtoken::EncodingKey::from_ec_der(&kp.serialize_der()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                        "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}),
        }
    }

    fn ed25519(kid: &str) -> TestKey {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        TestKey {
            kid: kid.into(),
            alg: jsonwebtoken::Algorithm::EdDSA,
            encoding: jsonwebtoken::EncodingKey::from_ed_der(&kp.serialize_der()),
            // No "alg": implied by the key type.
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(kp.public_key_raw())}),
        }
    }

    fn rs256(kid: &str) -> TestKey {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        TestKey {
            kid: kid.into(),
            alg: jsonwebtoken::Algorithm::RS256,
            encoding: jsonwebtoken::EncodingKey::from_rsa_der(key.to_pkcs1_der().unwrap().as_bytes()),
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                        "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be())}),
        }
    }

    fn sign(&self, user: Uuid, ttl: i64) -> String {
        let mut header = jsonwebtoken::Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        let claims =
            json!({"sub": user, "exp": chrono::Utc::now().timestamp() + ttl, "iss": ISSUER, "aud": "authenticated"});
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }
}

const ISSUER: &str = "https://project.supabase.example/auth/v1";

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The upgrade's HTTP status for a token (101 when it was accepted).
async fn upgrade_status(port: u16, token: &str) -> u16 {
    let url = format!("ws://127.0.0.1:{port}/v1/ws?access_token={token}");
    match tokio_tungstenite::connect_async(url).await {
        Ok((mut ws, _)) => {
            let _ = futures_util::SinkExt::close(&mut ws).await;
            101
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn asymmetric_tokens_verify_against_a_jwks_with_rotation_beside_hs256() {
    let jwks = JwksServer::start().await;
    let (es, ed, rs) = (TestKey::es256("es-1"), TestKey::ed25519("ed-1"), TestKey::rs256("rs-1"));
    jwks.publish(vec![es.jwk.clone(), ed.jwk.clone(), rs.jwk.clone()]);
    let db = Db::start().await;
    let relay = Relay::start_with(
        &db,
        &[
            ("CHAT_RELAY_JWT_JWKS_URL", jwks.url.as_str()),
            ("CHAT_RELAY_JWT_ISSUER", ISSUER),
            ("CHAT_RELAY_JWT_AUDIENCE", "authenticated"),
        ],
    )
    .await;
    let user = Uuid::new_v4();
    let chat = db.chat(&[user]).await;
    for key in [&es, &ed, &rs] {
        let mut ws = Ws::connect(relay.port, &key.sign(user, 600)).await;
        ws.subscribe(chat, None).await;
    }
    // HS256 with the secret still works beside them (with the configured claims).
    let hs = support::sign(
        &json!({"sub": user, "exp": chrono::Utc::now().timestamp() + 600, "iss": ISSUER, "aud": "authenticated"}),
    );
    assert_eq!(upgrade_status(relay.port, &hs).await, 101);
    // Rotation: the auth server starts signing with a new key. The first
    // token with its kid makes the relay fetch the set again.
    let rotated = TestKey::es256("es-2");
    jwks.publish(vec![es.jwk.clone(), rotated.jwk.clone()]);
    let before = jwks.hits();
    assert_eq!(upgrade_status(relay.port, &rotated.sign(user, 600)).await, 101);
    assert_eq!(jwks.hits(), before + 1, "one fetch for the new kid");
    // A key that is not in the set, a wrong issuer, an expired token: 401.
    let stranger = TestKey::es256("es-unknown");
    assert_eq!(upgrade_status(relay.port, &stranger.sign(user, 600)).await, 401);
    assert_eq!(upgrade_status(relay.port, &es.sign(user, -10)).await, 401);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("es-1".into());
    let wrong_iss = jsonwebtoken::encode(
        &header,
        &json!({"sub": user, "exp": chrono::Utc::now().timestamp() + 600, "iss": "https://evil", "aud": "authenticated"}),
        &es.encoding,
    )
    .unwrap();
    assert_eq!(upgrade_status(relay.port, &wrong_iss).await, 401);
    // A key signed as ES256 but presented as another key's kid is refused.
    let mut forged = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    forged.kid = Some("rs-1".into());
    let forged = jsonwebtoken::encode(
        &forged,
        &json!({"sub": user, "exp": chrono::Utc::now().timestamp() + 600, "iss": ISSUER, "aud": "authenticated"}),
        &es.encoding,
    )
    .unwrap();
    assert_eq!(upgrade_status(relay.port, &forged).await, 401);

    // The stranger above and a burst of made-up kids, all within the
    // interval after the rotation's fetch, cost no fetch at all.
    let before = before + 1;
    for i in 0..20 {
        assert_eq!(upgrade_status(relay.port, &TestKey::ed25519(&format!("junk-{i}")).sign(user, 600)).await, 401);
    }
    assert_eq!(jwks.hits(), before, "unknown kids caused fetches");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_user_cannot_hold_more_than_the_connection_cap() {
    let db = Db::start().await;
    let relay = Relay::start_with(&db, &[("CHAT_RELAY_MAX_CONNECTIONS_PER_USER", "3")]).await;
    let (user, other) = (Uuid::new_v4(), Uuid::new_v4());
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(relay.ws(user).await);
    }
    let url = format!("ws://127.0.0.1:{}/v1/ws?access_token={}", relay.port, token(user, 600));
    match tokio_tungstenite::connect_async(url.clone()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429);
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["error"], "too_many_connections");
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        other => panic!("expected 429, got {other:?}"),
    }
    assert_eq!(relay.metric("chat_relay_rate_limited_total").await, 1.0);
    // Others are not affected; closing one frees a slot.
    let mut o = relay.ws(other).await;
    assert!(o.barrier().await.is_empty());
    let mut first = held.remove(0);
    first.stream.close(None).await.unwrap();
    assert!(matches!(first.close_code().await, support::End::Closed(_) | support::End::Eof));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio_tungstenite::connect_async(url.clone()).await {
            Ok((ws, _)) => {
                let mut ws = Ws::new(ws);
                assert!(ws.barrier().await.is_empty());
                break;
            }
            // The relay frees the slot once the session has ended.
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("slot never freed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sends_beyond_the_rate_are_refused_with_retry_after_and_not_stored() {
    let db = Db::start().await;
    let relay = Relay::start_with(&db, &[("CHAT_RELAY_SEND_RATE", "5")]).await;
    let user = Uuid::new_v4();
    let chat = db.chat(&[user]).await;
    let mut ws = relay.ws(user).await;
    let send = |i: usize| json!({"type": "send", "chat_id": chat, "client_generated_id": Uuid::new_v4(), "content": format!("m{i}"), "ref": i});
    for i in 0..5 {
        ws.send(send(i)).await;
    }
    ws.send(send(5)).await;
    let mut refused = None;
    let mut sent = 0;
    while sent + usize::from(refused.is_some()) < 6 {
        let v = ws.next().await;
        match v["type"].as_str() {
            Some("sent") => sent += 1,
            Some("error") => {
                assert_eq!(v["code"], "rate_limited", "{v}");
                assert_eq!(v["ref"], 5);
                assert_eq!(v["chat_id"], chat.to_string());
                refused = Some(v["retry_after_ms"].as_u64().expect("retry_after_ms"));
            }
            _ => {}
        }
    }
    assert_eq!(sent, 5, "a burst of the rate passes");
    let wait = refused.expect("the sixth send was refused");
    assert!(wait > 0 && wait <= 1000, "{wait}");
    let c = db.client().await;
    let stored: i64 =
        c.query_one("SELECT count(*) FROM chat_messages WHERE chat_id = $1", &[&chat]).await.unwrap().get(0);
    assert_eq!(stored, 5, "nothing stored for the refused send");
    assert!(relay.metric("chat_relay_rate_limited_total").await >= 1.0);
    // The client waits as told, and the send goes through.
    tokio::time::sleep(Duration::from_millis(wait)).await;
    ws.send(send(6)).await;
    assert_eq!(ws.expect("sent").await["ref"], 6);
}

/// Issue #17, item 11: `subscribe`, `history`, `ack` and `read` are limited
/// per user like `send`; ack/read of made-up chats cannot churn the
/// membership cache at wire speed.
#[tokio::test(flavor = "multi_thread")]
async fn requests_beyond_the_per_user_rate_are_refused_with_retry_after() {
    let db = Db::start().await;
    let relay = Relay::start_with(&db, &[("CHAT_RELAY_REQUEST_RATE", "5")]).await;
    let (user, other) = (Uuid::new_v4(), Uuid::new_v4());
    let chat = db.chat(&[user, other]).await;
    let mut ws = relay.ws(user).await;
    // A burst of acks for made-up chats, then the rest: everything past the
    // allowance is refused, each with when to try again.
    for i in 0..10 {
        ws.send(json!({"type": "ack", "chat_id": Uuid::new_v4(), "seq": 1, "ref": format!("a{i}")})).await;
    }
    for (i, ty) in ["subscribe", "history", "read"].iter().enumerate() {
        ws.send(json!({"type": ty, "chat_id": chat, "seq": 0, "ref": format!("r{i}")})).await;
    }
    let mut refused = Vec::new();
    let mut wait = 0;
    for v in ws.barrier().await {
        if v["code"] == "rate_limited" {
            wait = v["retry_after_ms"].as_u64().unwrap_or(0);
            assert!(wait >= 1, "{v}");
            refused.push(v["ref"].as_str().unwrap_or_default().to_string());
        }
    }
    for r in ["r0", "r1", "r2"] {
        assert!(refused.iter().any(|x| x == r), "{r} not refused: {refused:?}");
    }
    assert!(refused.len() >= 8, "{refused:?}");
    assert!(relay.metric("chat_relay_rate_limited_total").await >= 8.0);
    // Another user is not affected.
    let mut o = relay.ws(other).await;
    o.subscribe(chat, None).await;
    // And the allowance comes back when the refusal said it would.
    tokio::time::sleep(Duration::from_millis(wait)).await;
    ws.subscribe(chat, None).await;
}

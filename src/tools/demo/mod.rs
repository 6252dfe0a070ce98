//! demo: `chat-relay demo`, the relay working end to end on one screen.
//!
//! Starts a throwaway Postgres ([`crate::tools::scratch`]), migrates it, runs the
//! relay on a free port, seeds three people (alice, bob, carol) in four chats
//! (a pair each and a group of three, with earlier messages to scroll back
//! to), and serves a browser chat app for them ([`web`]): a conversation list
//! and a conversation per person, alice on two devices. In the terminal,
//! alice and bob then talk over WebSocket: alice sends; bob receives in
//! order, acks and reads; alice sees each message go sent → delivered → read.
//! Every few messages one is inserted by plain SQL, to show any writer works.
//! Everything is removed on exit.
//!
//! `--serve-only` skips the conversation and prints what a test needs to
//! use the relay (one JSON line), then serves until SIGINT or SIGTERM.

pub mod web;

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{DbArgs, DemoArgs, ServeArgs};
use crate::tools::scratch::ScratchPostgres;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const SECRET: &str = "demo-secret-not-for-production";

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let say = |line: &str| {
        if !args.serve_only {
            println!("{line}");
        }
    };
    say("chat-relay demo: starting a throwaway PostgreSQL 15 ...");
    let pg = tokio::task::spawn_blocking(ScratchPostgres::start).await??;
    say(&format!("  postgres on 127.0.0.1:{} (data in a temp dir, removed on exit)", pg.port));
    let url = pg.url("postgres");
    let info = crate::pgconn::ConnInfo::parse(&url)?;
    crate::migrate::run(&info, "chat_relay").await?;
    say("  migrations applied, publication chat_relay created");

    let port = match args.relay_port {
        0 => std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
        p => p,
    };
    let serve = serve_args(&url, port);
    let stop = CancellationToken::new();
    let relay = tokio::spawn(crate::relay::run(serve, stop.clone()));
    crate::server::wait_ready(port, Duration::from_secs(30)).await?;
    let ws_url = format!("ws://127.0.0.1:{port}/v1/ws");
    say(&format!("  relay ready: {ws_url}  (metrics: http://127.0.0.1:{port}/metrics)"));

    let db = crate::pgconn::connect(&info).await?;
    let seed = seed(&db).await?;
    let (chat, alice, bob) = (seed.alice_bob, seed.alice, seed.bob);
    let page = web::DemoPage {
        ws_url: ws_url.clone(),
        users: vec![("alice".into(), alice), ("bob".into(), bob), ("carol".into(), seed.carol)],
        chats: seed.chats(),
        secret: SECRET.into(),
        token_ttl_secs: args.token_ttl_secs,
    };
    let web_addr = web::serve(page, args.web_port, stop.clone()).await?;
    let web_url = format!("http://{web_addr}/");

    let result = if args.serve_only {
        let chats: serde_json::Map<String, Value> =
            seed.chats().into_iter().map(|c| (c.key.to_string(), json!(c.id))).collect();
        let line = json!({
            "database_url": url, "jwt_secret": SECRET, "ws_url": ws_url, "relay_port": port,
            "web_url": web_url, "chat_id": chat, "alice": alice, "bob": bob, "carol": seed.carol,
            "chats": chats,
        });
        println!("{line}");
        until_stopped().await
    } else {
        println!("  browser chat: {web_url}  (alice on a phone and a laptop, bob, carol: four chats)\n");
        println!("chat {} with alice and bob\n", short(&chat.to_string()));
        let talk = async {
            let mut a = connect(port, alice).await?;
            let mut b = connect(port, bob).await?;
            for ws in [&mut a, &mut b] {
                send(ws, json!({"type": "subscribe", "chat_id": chat})).await?;
                expect_type(ws, "subscribed").await?;
            }
            conversation(&args, &db, chat, alice, &mut a, &mut b).await
        };
        match talk.await {
            Ok(interrupted) => {
                println!("\ndone: every message arrived once, in order. Try `chat-relay --help` next.");
                if !args.exit && !interrupted {
                    println!("The browser chat stays up at {web_url} until Ctrl-C.");
                    until_stopped().await?;
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    };
    stop.cancel();
    let _ = relay.await;
    drop(pg);
    result
}

/// Who is in the demo, and their chats.
struct Seed {
    alice: Uuid,
    bob: Uuid,
    carol: Uuid,
    /// alice and bob: 60 earlier messages to scroll back through; the
    /// terminal conversation happens here.
    alice_bob: Uuid,
    group: Uuid,
    bob_carol: Uuid,
    alice_carol: Uuid,
}

impl Seed {
    fn chats(&self) -> Vec<web::DemoChat> {
        let (a, b, c) = ("alice", "bob", "carol");
        let chat = |key, id, title: Option<&str>, members: &[&str]| web::DemoChat {
            key,
            id,
            title: title.map(String::from),
            members: members.iter().map(|m| m.to_string()).collect(),
        };
        vec![
            chat("alice-bob", self.alice_bob, None, &[a, b]),
            chat("group", self.group, Some("Climbing Saturday"), &[a, b, c]),
            chat("bob-carol", self.bob_carol, None, &[b, c]),
            chat("alice-carol", self.alice_carol, None, &[a, c]),
        ]
    }
}

/// The people, their chats and what was said before the demo started. The
/// conversation lists start ordered alice-carol (one unread for alice), the
/// group, bob-carol, alice-bob; everything else is read.
async fn seed(db: &tokio_postgres::Client) -> anyhow::Result<Seed> {
    let s = Seed {
        alice: Uuid::new_v4(),
        bob: Uuid::new_v4(),
        carol: Uuid::new_v4(),
        alice_bob: Uuid::new_v4(),
        group: Uuid::new_v4(),
        bob_carol: Uuid::new_v4(),
        alice_carol: Uuid::new_v4(),
    };
    let members = [
        (s.alice_bob, vec![s.alice, s.bob]),
        (s.group, vec![s.alice, s.bob, s.carol]),
        (s.bob_carol, vec![s.bob, s.carol]),
        (s.alice_carol, vec![s.alice, s.carol]),
    ];
    for (chat, users) in &members {
        db.execute("INSERT INTO chats (id, created_at) VALUES ($1, now() - interval '1 day')", &[chat]).await?;
        for user in users {
            db.execute("INSERT INTO chat_participants (chat_id, user_id) VALUES ($1, $2)", &[chat, user]).await?;
        }
    }
    // alice and bob: an earlier conversation, two to three hours ago.
    db.execute(
        "INSERT INTO chat_messages (chat_id, sender_id, content, created_at) \
         SELECT $1, CASE WHEN g % 2 = 0 THEN $2::uuid ELSE $3::uuid END, 'earlier message #' || g, \
                now() - interval '3 hours' + g * interval '1 minute' \
         FROM generate_series(1, 60) g",
        &[&s.alice_bob, &s.alice, &s.bob],
    )
    .await?;
    let (a, b, c) = (s.alice, s.bob, s.carol);
    let lines: [(Uuid, Uuid, i32, &str); 12] = [
        (s.bob_carol, b, 75, "did you get the tickets?"),
        (s.bob_carol, c, 72, "yes, two for friday"),
        (s.bob_carol, b, 70, "nice, thanks!"),
        (s.group, c, 40, "Climbing on Saturday? The gym opens at 10"),
        (s.group, b, 38, "I'm in. Need to rent shoes though"),
        (s.group, a, 35, "Count me in! 10:30 at the entrance?"),
        (s.group, c, 33, "Perfect, I'll bring the chalk"),
        (s.group, b, 30, "see you there!"),
        (s.alice_carol, a, 25, "thanks for the book!"),
        (s.alice_carol, c, 20, "anytime. chapter 3 is the best"),
        (s.alice_carol, a, 18, "agreed"),
        (s.alice_carol, c, 15, "are you coming to the talk tonight?"),
    ];
    for (chat, sender, minutes_ago, content) in lines {
        db.execute(
            "INSERT INTO chat_messages (chat_id, sender_id, content, created_at) \
             VALUES ($1, $2, $3, now() - make_interval(mins => $4))",
            &[&chat, &sender, &content, &minutes_ago],
        )
        .await?;
    }
    // Everyone has read everything, except alice carol's question.
    for (chat, users) in &members {
        for user in users {
            let upto = if *chat == s.alice_carol && *user == a { 3i64 } else { i64::MAX };
            db.execute("SELECT mark_messages_as_read($1, $2, $3)", &[chat, user, &upto]).await?;
        }
    }
    Ok(s)
}

/// Waits for SIGINT or SIGTERM.
async fn until_stopped() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

async fn conversation(
    args: &DemoArgs,
    db: &tokio_postgres::Client,
    chat: Uuid,
    alice: Uuid,
    a: &mut Ws,
    b: &mut Ws,
) -> anyhow::Result<bool> {
    let mut n = 0u32;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        n += 1;
        if args.messages > 0 && n > args.messages {
            return Ok(false);
        }
        let text = format!("hello #{n}");
        if n % 4 == 0 {
            db.execute(
                "INSERT INTO chat_messages (chat_id, sender_id, content) VALUES ($1, $2, $3)",
                &[&chat, &alice, &format!("{text} (inserted by plain SQL)")],
            )
            .await?;
            println!("[sql]   INSERT INTO chat_messages ... \"{text} (inserted by plain SQL)\"");
        } else {
            send(a, json!({"type": "send", "chat_id": chat, "client_generated_id": Uuid::new_v4(), "content": text}))
                .await?;
            let sent = expect_type(a, "sent").await?;
            println!("[alice] send \"{text}\"  -> sent seq={}", sent["seq"]);
        }
        let msg = expect_type(b, "message").await?;
        let seq = msg["seq"].as_i64().unwrap_or(0);
        println!("[bob]   <- message seq={seq} \"{}\"", msg["message"]["content"].as_str().unwrap_or(""));
        send(b, json!({"type": "ack", "chat_id": chat, "seq": seq})).await?;
        let status = wait_status(a, seq, "delivered").await?;
        println!("[alice] <- update seq={seq} status={status}");
        send(b, json!({"type": "read", "chat_id": chat, "seq": seq})).await?;
        let status = wait_status(a, seq, "read").await?;
        println!("[alice] <- update seq={seq} status={status}");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(args.interval_ms)) => {}
            _ = &mut ctrl_c => return Ok(true),
        }
    }
}

fn serve_args(url: &str, port: u16) -> ServeArgs {
    ServeArgs {
        db: DbArgs { database_url: url.to_string(), publication: "chat_relay".into() },
        listen: ([127, 0, 0, 1], port).into(),
        jwt_secret: Some(SECRET.into()),
        jwt_jwks_url: None,
        jwt_audience: None,
        jwt_issuer: None,
        slot: "chat_relay".into(),
        nats_url: None,
        delivered_debounce_ms: 50,
        max_frame_bytes: 65536,
        max_content_bytes: 16384,
        pool_size: 4,
        outbound_queue: 1024,
        slow_consumer_ms: 30_000,
        txn_memory_mb: 64,
        spill_dir: None,
        dedupe_capacity: 10_000,
        dedupe_ttl_secs: 600,
        gap_window_ms: 50,
        membership_ttl_ms: 30_000,
        backfill_page: 500,
        max_connections_per_user: 50,
        send_rate: 20,
        request_rate: 200,
        held_events: 10_000,
        ping_interval_secs: 30,
        auto_delivered: false,
        log: "warn".into(),
        log_format: "text".into(),
    }
}

async fn connect(port: u16, user: Uuid) -> anyhow::Result<Ws> {
    let url = format!("ws://127.0.0.1:{port}/v1/ws?access_token={}", crate::gateway::issue(SECRET, user, 3600)?);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.context("websocket connect")?;
    Ok(ws)
}

async fn send(ws: &mut Ws, v: Value) -> anyhow::Result<()> {
    ws.send(Message::Text(v.to_string().into())).await?;
    Ok(())
}

async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("no frame within 10 s")?
            .context("connection closed")??;
        if let Message::Text(t) = msg {
            return Ok(serde_json::from_str(&t)?);
        }
    }
}

async fn expect_type(ws: &mut Ws, ty: &str) -> anyhow::Result<Value> {
    loop {
        let v = next_json(ws).await?;
        if v["type"] == ty {
            return Ok(v);
        }
        if v["type"] == "error" {
            bail!("server error: {v}");
        }
    }
}

async fn wait_status(ws: &mut Ws, seq: i64, status: &str) -> anyhow::Result<String> {
    loop {
        let v = next_json(ws).await?;
        if v["type"] == "update" && v["seq"] == seq && v["message"]["status"] == status {
            return Ok(status.to_string());
        }
    }
}

fn short(s: &str) -> &str {
    s.get(..8).unwrap_or(s)
}

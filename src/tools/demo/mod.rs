//! demo: `chat-relay demo`, the relay working end to end on one screen.
//!
//! Starts a throwaway Postgres ([`crate::tools::scratch`]), migrates it, runs the
//! relay on a free port, creates a chat for alice and bob (with some older
//! messages to scroll back to), and serves a browser chat for the two of
//! them ([`web`]). In the terminal, alice and bob then talk over WebSocket:
//! alice sends; bob receives in order, acks and reads; alice sees each
//! message go sent → delivered → read. Every few messages one is inserted by
//! plain SQL, to show any writer works. Everything is removed on exit.
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
    let (chat, alice, bob) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    db.execute("INSERT INTO chats (id) VALUES ($1)", &[&chat]).await?;
    db.execute("INSERT INTO chat_participants (chat_id, user_id) VALUES ($1, $2), ($1, $3)", &[&chat, &alice, &bob])
        .await?;
    // Earlier conversation, for the page to scroll back through.
    db.execute(
        "INSERT INTO chat_messages (chat_id, sender_id, content) \
         SELECT $1, CASE WHEN g % 2 = 0 THEN $2::uuid ELSE $3::uuid END, 'earlier message #' || g FROM generate_series(1, 60) g",
        &[&chat, &alice, &bob],
    )
    .await?;
    let page = web::DemoChat {
        ws_url: ws_url.clone(),
        chat_id: chat,
        users: vec![("alice".into(), alice), ("bob".into(), bob)],
        secret: SECRET.into(),
        token_ttl_secs: args.token_ttl_secs,
    };
    let web_addr = web::serve(page, args.web_port, stop.clone()).await?;
    let web_url = format!("http://{web_addr}/");

    let result = if args.serve_only {
        let line = json!({
            "database_url": url, "jwt_secret": SECRET, "ws_url": ws_url, "relay_port": port,
            "web_url": web_url, "chat_id": chat, "alice": alice, "bob": bob,
        });
        println!("{line}");
        until_stopped().await
    } else {
        println!("  browser chat: {web_url}  (alice and bob, side by side)\n");
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

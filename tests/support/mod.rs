//! Test support: a throwaway PostgreSQL 15 per test, the real `chat-relay`
//! binary as a child process, and a small WebSocket client.
//!
//! Each test gets its own cluster (its own port, data directory, slot), so
//! tests run in parallel and may stop and start their server to inject faults.
//! Waiting is always for an event (a frame, a readiness answer, a row), with
//! a generous deadline that only bounds a failing test.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

pub use chat_relay::tools::scratch::{ScratchOptions, ScratchPostgres};

pub const SECRET: &str = "test-secret";
/// Upper bound for any single wait; a passing test never comes close.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A cluster with the chat schema migrated into database `postgres`.
pub struct Db {
    pub pg: ScratchPostgres,
    pub url: String,
}

impl Db {
    pub async fn start() -> Db {
        Self::start_with(ScratchOptions::default()).await
    }

    pub async fn start_with(opts: ScratchOptions) -> Db {
        let pg = tokio::task::spawn_blocking(move || ScratchPostgres::start_with(opts)).await.unwrap().unwrap();
        let url = pg.url("postgres");
        let db = Db { pg, url };
        db.migrate();
        db
    }

    /// A cluster without the schema (for migration tests).
    pub async fn bare() -> Db {
        let pg = tokio::task::spawn_blocking(ScratchPostgres::start).await.unwrap().unwrap();
        let url = pg.url("postgres");
        Db { pg, url }
    }

    /// Runs `chat-relay migrate`; panics with its output when it fails.
    pub fn migrate(&self) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_chat-relay"))
            .arg("migrate")
            .env("DATABASE_URL", &self.url)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "migrate failed: {text}");
        text
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// Stops and starts the server (clients are disconnected).
    pub async fn restart(&mut self) {
        let pg = &mut self.pg;
        tokio::task::block_in_place(|| {
            pg.stop().unwrap();
            pg.start_again().unwrap();
        });
    }

    /// A chat with these participants.
    pub async fn chat(&self, participants: &[Uuid]) -> Uuid {
        let c = self.client().await;
        let chat = Uuid::new_v4();
        c.execute("INSERT INTO chats (id) VALUES ($1)", &[&chat]).await.unwrap();
        for p in participants {
            c.execute("INSERT INTO chat_participants (chat_id, user_id) VALUES ($1, $2)", &[&chat, p]).await.unwrap();
        }
        chat
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The seqs stored in a chat, ascending.
pub async fn seqs_in_db(c: &tokio_postgres::Client, chat: Uuid) -> Vec<i64> {
    c.query("SELECT seq FROM chat_messages WHERE chat_id = $1 ORDER BY seq", &[&chat])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Inserts a message by plain SQL; returns its seq.
pub async fn insert(c: &tokio_postgres::Client, chat: Uuid, sender: Uuid, content: &str) -> i64 {
    c.query_one(
        "INSERT INTO chat_messages (chat_id, sender_id, content) VALUES ($1, $2, $3) RETURNING seq",
        &[&chat, &sender, &content],
    )
    .await
    .unwrap()
    .get(0)
}

/// The `chat-relay serve` binary, running.
pub struct Relay {
    pub child: Child,
    pub port: u16,
    pub slot: String,
}

impl Relay {
    pub async fn start(db: &Db) -> Relay {
        Self::start_with(db, &[]).await
    }

    /// Starts `serve` with extra environment and waits for /readyz.
    pub async fn start_with(db: &Db, env: &[(&str, &str)]) -> Relay {
        let relay = Self::spawn(db, env);
        relay.wait_ready().await;
        relay
    }

    pub fn spawn(db: &Db, env: &[(&str, &str)]) -> Relay {
        Self::spawn_url(&db.url, env)
    }

    /// Starts `serve` against any database URL and waits for /readyz.
    pub async fn start_url(url: &str, env: &[(&str, &str)]) -> Relay {
        let relay = Self::spawn_url(url, env);
        relay.wait_ready().await;
        relay
    }

    pub fn spawn_url(url: &str, env: &[(&str, &str)]) -> Relay {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-relay"));
        cmd.arg("serve")
            .env("DATABASE_URL", url)
            .env("CHAT_RELAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("CHAT_RELAY_JWT_SECRET", SECRET)
            .env("RUST_LOG", std::env::var("TEST_RELAY_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let slot = env
            .iter()
            .find(|(k, _)| *k == "CHAT_RELAY_SLOT")
            .map(|(_, v)| v.to_string())
            .unwrap_or("chat_relay".into());
        Relay { child, port, slot }
    }

    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok((200, _)) = http_get(self.port, "/readyz").await {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "relay not ready within {PATIENCE:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, path).await.unwrap()
    }

    /// The value of one metric series (exact name with labels), from /metrics.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find_map(|l| {
                l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("metric {series} not exported"))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }

    /// A user alone in a new chat, subscribed to it from now on:
    /// (user, chat, connection).
    pub async fn subscriber(&self, db: &Db) -> (Uuid, Uuid, Ws) {
        let user = Uuid::new_v4();
        let chat = db.chat(&[user]).await;
        let mut ws = self.ws(user).await;
        ws.subscribe(chat, None).await;
        (user, chat, ws)
    }

    pub async fn ws(&self, user: Uuid) -> Ws {
        Ws::connect(self.port, &token(user, 3600)).await
    }

    /// A WebSocket whose socket has a fixed, small receive buffer (a client
    /// on a constrained path rather than loopback's tens of megabytes).
    pub async fn small_window_ws(&self, user: Uuid) -> Ws {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(32 * 1024).unwrap();
        let stream = sock.connect(([127, 0, 0, 1], self.port).into()).await.unwrap();
        let url = format!("ws://127.0.0.1:{}/v1/ws?access_token={}", self.port, token(user, 600));
        let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
        let (ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        Ws::new(ws)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal HTTP/1.0 GET: (status, body).
pub async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_request(port, &format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")).await
}

pub async fn http_request(port: u16, raw: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(raw.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// A token for `user` expiring `ttl_secs` from now (negative: already expired).
pub fn token(user: Uuid, ttl_secs: i64) -> String {
    token_with(user, ttl_secs, SECRET)
}

/// Any claims, HS256-signed with the relay's test secret.
pub fn sign(claims: &Value) -> String {
    encode(&Header::default(), claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

pub fn token_with(user: Uuid, ttl_secs: i64, secret: &str) -> String {
    let exp = chrono::Utc::now().timestamp() + ttl_secs;
    encode(&Header::default(), &json!({"sub": user, "exp": exp}), &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

type Stream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What the client observed when it stopped reading.
#[derive(Debug, PartialEq)]
pub enum End {
    Closed(Option<u16>),
    Eof,
}

/// A WebSocket client speaking JSON frames.
pub struct Ws {
    pub stream: Stream,
    /// Skip `presence` frames (tests about other things do not expect them
    /// between the frames they check); presence tests turn this off.
    pub hide_presence: bool,
}

impl Ws {
    pub fn new(stream: Stream) -> Ws {
        Ws { stream, hide_presence: true }
    }

    pub async fn connect(port: u16, token: &str) -> Ws {
        let url = format!("ws://127.0.0.1:{port}/v1/ws?access_token={token}");
        let (stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Ws::new(stream)
    }

    pub async fn send(&mut self, v: Value) {
        self.stream.send(Message::Text(v.to_string().into())).await.unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.stream.send(m).await.unwrap();
    }

    /// The next JSON frame; panics on close or after PATIENCE.
    pub async fn next(&mut self) -> Value {
        match self.next_or_end().await {
            Ok(v) => v,
            Err(end) => panic!("connection ended: {end:?}"),
        }
    }

    /// The next JSON frame, or how the connection ended.
    /// The server's pings do not count as frames: patience runs from the call.
    pub async fn next_or_end(&mut self) -> Result<Value, End> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.next()).await.expect("no frame within patience");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if self.hide_presence && v["type"] == "presence" {
                        continue;
                    }
                    return Ok(v);
                }
                Some(Ok(Message::Close(f))) => return Err(End::Closed(f.map(|f| u16::from(f.code)))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(End::Eof),
            }
        }
    }

    /// Reads until the connection ends; returns the frames and how it ended.
    pub async fn until_end(&mut self) -> (Vec<Value>, End) {
        let mut frames = Vec::new();
        loop {
            match self.next_or_end().await {
                Ok(v) => frames.push(v),
                Err(end) => return (frames, end),
            }
        }
    }

    /// Skips frames until one of `ty`.
    pub async fn expect(&mut self, ty: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == ty {
                return v;
            }
            assert_ne!(v["type"], "error", "unexpected error while waiting for {ty}: {v}");
        }
    }

    pub async fn subscribe(&mut self, chat: Uuid, after: Option<i64>) -> Value {
        let mut f = json!({"type": "subscribe", "chat_id": chat, "ref": "sub"});
        if let Some(a) = after {
            f["after_seq"] = json!(a);
        }
        self.send(f).await;
        let v = self.next().await;
        assert_eq!(v["type"], "subscribed", "{v}");
        v
    }

    /// Sends a ping and returns every frame that arrived before the pong:
    /// the hub's queue for this connection is drained before a pong is written.
    pub async fn barrier(&mut self) -> Vec<Value> {
        let tag = Uuid::new_v4().to_string();
        self.send(json!({"type": "ping", "ref": tag})).await;
        let mut before = Vec::new();
        loop {
            let v = self.next().await;
            if v["type"] == "pong" && v["ref"] == tag.as_str() {
                return before;
            }
            before.push(v);
        }
    }

    /// Collects `message` frames of `chat` until `n` have arrived.
    pub async fn messages(&mut self, chat: Uuid, n: usize) -> Vec<i64> {
        let mut seqs = Vec::new();
        while seqs.len() < n {
            let v = self.next().await;
            if v["chat_id"] != chat.to_string() {
                continue;
            }
            match v["type"].as_str() {
                Some("message") => seqs.push(v["seq"].as_i64().unwrap()),
                Some("error" | "unsubscribed") => panic!("subscription ended after {seqs:?}: {v}"),
                _ => {}
            }
        }
        seqs
    }

    pub async fn close_code(&mut self) -> End {
        self.until_end().await.1
    }
}

pub fn close_code(c: CloseCode) -> u16 {
    u16::from(c)
}

/// Records that a test could not run here (and so proved nothing): printed
/// as skipped at the end of `scripts/test`, and on stderr now.
pub fn skipped(test: &str, why: &str) {
    use std::io::Write;
    eprintln!("SKIPPED {test}: {why}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped-tests.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{test}: {why}");
    }
}

/// A TCP proxy on a free local port that can cut every connection through
/// it at once, losing whatever it had not forwarded yet: a network that
/// drops a connection mid-stream.
pub struct CutProxy {
    pub port: u16,
    cut: tokio::sync::watch::Sender<u64>,
}

impl CutProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut cuts = cuts.clone();
                cuts.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { return };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut cr, &mut sw) => {}
                        _ = tokio::io::copy(&mut sr, &mut cw) => {}
                        _ = cuts.changed() => {}
                    }
                    // Dropping both halves of both sockets: a reset, data lost.
                });
            }
        });
        CutProxy { port, cut }
    }

    /// Cuts every connection open now.
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

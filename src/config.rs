//! config: the command line. Every setting is a flag and an environment
//! variable; `--help` on each command lists them with their defaults.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::pgconn::ConnInfo;

#[derive(Debug, Parser)]
#[command(
    name = "chat-relay",
    version,
    about = "Realtime chat events from Postgres to WebSocket clients: exactly once, in seq order, only to participants",
    long_about = "chat-relay follows the chat_messages and chat_participants tables through logical \
replication (pgoutput), drops duplicates, keeps every chat's seq strictly increasing, and pushes the \
events to authorised WebSocket clients.\n\nStart with `chat-relay demo` to see it work against a \
throwaway local Postgres; in production run `chat-relay migrate` once, then `chat-relay serve`."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the schema migrations and create the publication (idempotent).
    Migrate(MigrateArgs),
    /// Run the relay until SIGTERM or SIGINT, then drain and exit 0.
    Serve(Box<ServeArgs>),
    /// Start a throwaway Postgres, the relay and a client, and show messages flowing.
    Demo(DemoArgs),
    /// Run the performance scenarios against throwaway local Postgres clusters (docs/benchmarks.md).
    Bench(BenchArgs),
}

/// Where the database is.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Postgres URL, e.g. postgres://user:pass@host:5432/db?sslmode=verify-full.
    /// The replication connection is derived from it. sslmode: disable, prefer
    /// (default), require, verify-ca, verify-full; sslrootcert=PATH for the CA.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Publication that carries chat_messages and chat_participants.
    #[arg(long, env = "CHAT_RELAY_PUBLICATION", default_value = "chat_relay", value_parser = parse_pg_name)]
    pub publication: String,
}

impl DbArgs {
    pub fn conn_info(&self) -> anyhow::Result<ConnInfo> {
        Ok(ConnInfo::parse(&self.database_url)?)
    }
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Tracing filter (e.g. info, chat_relay=debug).
    #[arg(long = "log", env = "RUST_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Address for HTTP and WebSocket (/v1/ws, /metrics, /healthz, /readyz).
    #[arg(long, env = "CHAT_RELAY_LISTEN", default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,

    /// HS256 secret that client JWTs are signed with. Required unless
    /// --jwt-jwks-url is set; both may be set (HS256 and asymmetric tokens side by side).
    #[arg(long, env = "CHAT_RELAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// JWKS URL whose keys (by `kid`) verify RS256, ES256 and EdDSA tokens, as Supabase Auth
    /// publishes them (`https://<project>.supabase.co/auth/v1/.well-known/jwks.json`). Fetched at
    /// start, every 10 minutes, and again (at most every 30 s) when a token names an unknown kid.
    #[arg(long, env = "CHAT_RELAY_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,

    /// When set, tokens must carry this `aud`.
    #[arg(long, env = "CHAT_RELAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// When set, tokens must carry this `iss`.
    #[arg(long, env = "CHAT_RELAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// NATS server(s) with JetStream (`nats://host:4222`, comma-separated).
    /// Unset: one relay does everything. Set: this relay is one of several
    /// replicas; they elect a leader through Postgres, and every replica
    /// serves its clients from a JetStream stream the leader publishes.
    #[arg(long, env = "CHAT_RELAY_NATS_URL")]
    pub nats_url: Option<String>,

    /// Logical replication slot (created when missing). Lowercase letters, digits, underscore.
    #[arg(long, env = "CHAT_RELAY_SLOT", default_value = "chat_relay", value_parser = parse_slot_name)]
    pub slot: String,

    /// Window in which delivered/read marks are coalesced into one write.
    #[arg(long, env = "CHAT_RELAY_DELIVERED_DEBOUNCE_MS", default_value_t = 200)]
    pub delivered_debounce_ms: u64,

    /// Largest client frame accepted; larger ones close the connection with 1009.
    #[arg(long, env = "CHAT_RELAY_MAX_FRAME_BYTES", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(256..))]
    pub max_frame_bytes: u32,

    /// Largest message content accepted by `send`, in bytes.
    #[arg(long, env = "CHAT_RELAY_MAX_CONTENT_BYTES", default_value_t = 16384)]
    pub max_content_bytes: usize,

    /// Connections in the query pool (backfill, membership, send, marking).
    #[arg(long, env = "CHAT_RELAY_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub pool_size: u32,

    /// Live event frames queued per connection. When a connection's queue is full, its
    /// subscriptions fall behind and are caught up from the table once it reads again;
    /// nobody else waits for it.
    #[arg(long, env = "CHAT_RELAY_OUTBOUND_QUEUE", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub outbound_queue: u32,

    /// A connection that takes nothing from its socket this long while frames wait is
    /// closed with 4008 (so is one whose unsent data passes 4 MiB). A client that keeps
    /// reading, however slowly, is never closed for being behind.
    #[arg(long, env = "CHAT_RELAY_SLOW_CONSUMER_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub slow_consumer_ms: u64,

    /// Memory for decoded transactions waiting for their commit and for the pipeline, in
    /// MiB. A transaction that does not fit spills to a temporary file (see --spill-dir)
    /// and is relayed from there: any size passes in this much memory.
    #[arg(long, env = "CHAT_RELAY_TXN_MEMORY_MB", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub txn_memory_mb: u32,

    /// Directory for spilled transactions (unnamed files, gone when closed, even on a
    /// crash). Needs room for the largest transaction's changes. Default: the system
    /// temporary directory.
    #[arg(long, env = "CHAT_RELAY_SPILL_DIR")]
    pub spill_dir: Option<std::path::PathBuf>,

    /// Entries kept in the duplicate-detection cache (ids and client_generated_ids).
    #[arg(long, env = "CHAT_RELAY_DEDUPE_CAPACITY", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub dedupe_capacity: u32,

    /// How long an entry stays in the duplicate-detection cache.
    #[arg(long, env = "CHAT_RELAY_DEDUPE_TTL_SECS", default_value_t = 600)]
    pub dedupe_ttl_secs: u64,

    /// How long a chat's later events wait for a missing seq before it is fetched from the database.
    #[arg(long, env = "CHAT_RELAY_GAP_WINDOW_MS", default_value_t = 50)]
    pub gap_window_ms: u64,

    /// How long a membership check is cached (changes to chat_participants invalidate it at once).
    #[arg(long, env = "CHAT_RELAY_MEMBERSHIP_TTL_MS", default_value_t = 30_000)]
    pub membership_ttl_ms: u64,

    /// Rows per page when replaying history for `subscribe` with `after_seq`.
    #[arg(long, env = "CHAT_RELAY_BACKFILL_PAGE", default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub backfill_page: i64,

    /// Open WebSocket connections one user may hold (tabs, devices); further upgrades by
    /// that user get HTTP 429. Per relay process.
    #[arg(long, env = "CHAT_RELAY_MAX_CONNECTIONS_PER_USER", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_user: u32,

    /// `send` frames per user per second, with bursts of as many; beyond it a send is
    /// refused with `rate_limited` and `retry_after_ms`, and nothing is stored. Per relay process.
    #[arg(long, env = "CHAT_RELAY_SEND_RATE", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub send_rate: u32,

    /// `subscribe` and `history` frames, and `ack`/`read` of chats that need a membership
    /// query (not subscribed on the connection, not cached), per user per second, with
    /// bursts of as many; beyond it the frame is refused with `rate_limited` and
    /// `retry_after_ms` (an `ack` or `read` refused is not applied). Per relay process.
    #[arg(long, env = "CHAT_RELAY_REQUEST_RATE", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub request_rate: u32,

    /// Events the sequencer holds, across chats, while it waits for an earlier seq of their
    /// chat; past it, the chat that went over is read from the table instead.
    #[arg(long, env = "CHAT_RELAY_HELD_EVENTS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub held_events: u32,

    /// Interval of WebSocket pings; a peer silent for two intervals is dropped.
    #[arg(long, env = "CHAT_RELAY_PING_INTERVAL_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub ping_interval_secs: u64,

    /// Count a message as delivered once its frame was written to a recipient's connection
    /// (for clients that never send `ack`).
    #[arg(long, env = "CHAT_RELAY_AUTO_DELIVERED", default_value_t = false)]
    pub auto_delivered: bool,

    /// Tracing filter (e.g. info, chat_relay=debug).
    #[arg(long = "log", env = "RUST_LOG", default_value = "info")]
    pub log: String,

    /// Log format: text or json.
    #[arg(long, env = "CHAT_RELAY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl ServeArgs {
    pub fn delivered_debounce(&self) -> Duration {
        Duration::from_millis(self.delivered_debounce_ms)
    }

    pub fn limits(&self) -> crate::limits::LimitsConfig {
        crate::limits::LimitsConfig {
            max_connections_per_user: self.max_connections_per_user,
            send_per_second: self.send_rate,
            requests_per_second: self.request_rate,
        }
    }

    pub fn auth(&self) -> crate::gateway::AuthConfig {
        crate::gateway::AuthConfig {
            secret: self.jwt_secret.clone(),
            jwks_url: self.jwt_jwks_url.clone(),
            audience: self.jwt_audience.clone(),
            issuer: self.jwt_issuer.clone(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// How many messages to send before stopping (0: until Ctrl-C).
    #[arg(long, default_value_t = 12)]
    pub messages: u32,

    /// Milliseconds between two messages.
    #[arg(long, default_value_t = 400)]
    pub interval_ms: u64,

    /// Exit after the scripted conversation instead of keeping the browser
    /// chat up until Ctrl-C.
    #[arg(long)]
    pub exit: bool,

    /// No scripted conversation: print one JSON line (database URL, JWT
    /// secret, relay and page addresses, the chat and its users) and serve
    /// until SIGINT/SIGTERM. For tests and tools that need a running relay.
    #[arg(long, conflicts_with = "exit")]
    pub serve_only: bool,

    /// Port of the browser chat page (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub web_port: u16,

    /// Port of the relay itself (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub relay_port: u16,

    /// Lifetime of the tokens the page gets; short ones show refresh at work.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(i64).range(5..))]
    pub token_ttl_secs: i64,

    /// Tracing filter for the relay's own logs during the demo.
    #[arg(long = "log", env = "RUST_LOG", default_value = "warn")]
    pub log: String,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Which scenario: all, catchup, latency, fanout, connections, writepath, slowreaders, bulkinsert, typing, replicas (needs nats-server), hole, inbox-pages, inbox-live; not in all: inbox-ab (latency and fan-out with and without inboxes, alternating), writepath-inbox (pgbench with 0008's triggers against 0009's), floor (the cost of fan-out's socket writes alone on this machine, no relay).
    #[arg(long, default_value = "all", value_parser = ["all", "catchup", "latency", "fanout", "connections", "writepath", "slowreaders", "bulkinsert", "typing", "replicas", "hole", "inbox-pages", "inbox-live", "inbox-ab", "writepath-inbox", "floor"])]
    pub scenario: String,

    /// Repetitions for scenarios that compare two runs (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub reps: u32,

    /// Small sizes, for a smoke run (figures are not comparable to the targets).
    #[arg(long)]
    pub quick: bool,

    /// fan-out: subscribers of the one chat (default 5000; 500 with --quick).
    #[arg(long)]
    pub subscribers: Option<usize>,

    /// fan-out, slowreaders, inbox-live: messages per second (defaults 100, 100, 1000; 20, 50, 200 with --quick).
    #[arg(long)]
    pub rate: Option<u64>,

    /// slowreaders: how many of the subscribers read at 64 KB/s (default 100; 0 is the control run).
    #[arg(long)]
    pub slow: Option<usize>,

    /// slowreaders: content bytes per message (default 1000).
    #[arg(long)]
    pub message_bytes: Option<usize>,

    /// latency, fanout: every subscriber also turns its inbox on (protocol 1.2), so each
    /// message is also a `chat` frame to each of them.
    #[arg(long)]
    pub inbox: bool,

    /// inbox-live: users, one connection each, in 50 chats of 10 (default 10000; 1000 with --quick).
    #[arg(long)]
    pub users: Option<usize>,

    /// inbox-live: seconds of measured load (default 20; 5 with --quick).
    #[arg(long)]
    pub secs: Option<f64>,

    /// inbox-live: `limit` of each user's first `inbox` page (default: none, the protocol's 50).
    /// A small one shows what the page itself leaves behind in each connection.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=200))]
    pub page_limit: Option<u64>,

    /// Tracing filter for the bench itself.
    #[arg(long = "log", env = "RUST_LOG", default_value = "warn")]
    pub log: String,
}

fn parse_slot_name(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        Ok(s.to_string())
    } else {
        Err("slot names are 1 to 63 characters of lowercase letters, digits and underscore".into())
    }
}

fn parse_pg_name(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.len() <= 63 && !s.contains('\0') {
        Ok(s.to_string())
    } else {
        Err("must be 1 to 63 characters".into())
    }
}

/// Sets up `tracing` with the given filter and format.
pub fn init_tracing(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("invalid log filter {filter:?} ({e}); using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn slot_names_are_validated() {
        assert!(parse_slot_name("chat_relay_2").is_ok());
        assert!(parse_slot_name("Chat").is_err());
        assert!(parse_slot_name("a-b").is_err());
        assert!(parse_slot_name("").is_err());
    }
}

//! chat-relay: committed chat messages from Postgres to WebSocket clients,
//! exactly once, in `seq` order, only to participants.
//!
//! # Layout
//!
//! The relay is a pipeline; each stage is a module with one job and a small
//! typed interface to the next. Read top to bottom:
//!
//! ```text
//!  replication ─Transaction─▶ pipeline ─Sequenced─▶ dyn Fanout ─────────────────────▶ hub ─EventFrame─▶ gateway
//!  (slot, wire)   (pgoutput)   event → sequencer     fanout::LocalFanout (one relay)     conn queues      sessions, catchup
//!       ▲                           │                cluster::publish → NATS → follow ─┤                  │
//!       └──── Checkpoint (LSN) ◀────┘                                                  └─▶ inbox ─chat─▶ protocol (frames)
//!                                                                                        (lists, summaries)
//! ```
//!
//! | module | job |
//! |---|---|
//! | [`lsn`] | WAL positions (a leaf: everything below the relay uses it) |
//! | [`replication`] | replication connection (own wire client), slot, START_REPLICATION, LSN feedback, reconnects |
//! | [`pgoutput`] | decode pgoutput bytes; hand on whole transactions only at Commit, in bounded memory (spilling beyond it) |
//! | [`event`] | see decoded rows as chat events (message insert/update/delete, participant changes and moves) |
//! | [`sequencer`] | drop duplicates (id, client_generated_id, seq), keep each chat's seq increasing, hold early messages, ask for gaps |
//! | [`pipeline`] | the stage: transactions → events → sequencer → fan-out; gap reads; the safe LSN back to the replicator |
//! | [`fanout`] | the seam behind the pipeline; [`fanout::LocalFanout`] is this process's receiving side (hub and membership) |
//! | [`hub`] | who is subscribed to which chat; offer each frame to every subscriber without waiting (written at once, or queued); presence and typing |
//! | [`inbox`] | every online user's conversation list, kept exact by the same events; pages and `chat` frames |
//! | [`catchup`] | what each subscription still owes its client (table reads, missed changes, ping barriers), as pure state |
//! | [`protocol`] | the wire codec: client frames parsed into requests, every server frame typed, HTTP error bodies |
//! | [`gateway`] | `/v1/ws`: JWT (HS256, JWKS), sessions, the link live frames are written through, history, catch-up from the table, 4008 |
//!
//! Side paths: [`store`] (all SQL: backfill, history, membership, send,
//! marking, lag), [`membership`] (the brief cache of who is in which chat,
//! corrected by the WAL), [`delivery`] (debounced delivered/read marking),
//! [`limits`] (per-user connection cap and send rate), [`metrics`] (every
//! Prometheus name; takes plain values), [`config`] (flags and env),
//! [`pgconn`] (URL, TLS, quoting), [`migrate`] (the `sql/` migrations),
//! [`server`] (healthz, readyz, metrics), and [`relay`], which only wires
//! the stages for `serve` and takes them down in order. [`cluster`] sits
//! behind the fan-out seam: leadership through Postgres, the leader's
//! events through NATS JetStream (one module, `cluster::format`, owns the
//! message format) into every replica's local fan-out.
//!
//! Apart from the stages: [`tools`] (`scratch` Postgres and NATS for the
//! demo, the tests and the benchmarks; `chat-relay demo`; `chat-relay
//! bench`) and `fuzzing` (the entry points of `fuzz/`, built for tests).
//! Nothing in a stage imports from them.
//!
//! # The path of one message
//!
//! 1. An `INSERT INTO chat_messages` commits; the `sql/` trigger gave it the
//!    chat's next `seq` under the chat row's lock.
//! 2. [`replication::Replicator`] receives its XLogData and feeds
//!    [`pgoutput::Decoder`], which returns the [`pgoutput::Transaction`] at
//!    Commit (its changes in memory, or spilled to a file past the budget).
//! 3. [`pipeline::Pipeline`] maps each change to chat events and feeds them
//!    through [`sequencer::Sequencer`], which lets the insert pass once and
//!    in order; [`pipeline::dispatch`] encodes it once as an
//!    [`protocol::EventFrame`] and hands it to the [`fanout::Fanout`].
//! 4. [`fanout::LocalFanout`] gives it to [`hub::Hub`], which offers that
//!    frame to every subscribed connection, never waiting: a connection
//!    takes it at once (its link, step 5), or queues it for its session, or,
//!    with a full queue, falls behind instead.
//! 5. [`catchup::Catchup`] decides what the connection does with it: write
//!    it, drop it (already written: the history seam, a replay), or read the
//!    table first (something is missing, or the subscription fell behind).
//!    When nothing is ahead of the frame, that is decided and the frame
//!    written to the socket right there, on the publisher's thread (the
//!    gateway's link: one lock, one write); otherwise the connection's
//!    session in [`gateway`] takes it from the queue in turn. What the socket
//!    does not take at once waits in the outbox, written by the session.
//! 6. The pipeline reports the safe LSN through a
//!    [`replication::Checkpoint`]; the replicator confirms it to the slot.
//!
//! Beside step 4, [`fanout::LocalFanout`] hands the same frame to the
//! [`inbox`]: each user of that chat whose inbox is on here gets one
//! `chat` frame with the chat's new summary, taken by the connection's link
//! like a live frame while its socket keeps up (with the message, in one
//! write), else beside its queue (the latest per chat waits there, so
//! nothing piles up).
//!
//! With replicas ([`cluster`]), only the leader runs steps 2 and 3; its
//! fan-out is JetStream ([`cluster::publish`]), every replica's consumer
//! ([`cluster::follow`]) hands the frames to its own local fan-out (step
//! 4), and step 6 waits for JetStream's acknowledgement.

// The map above names the crate-private stages too (read it with
// `cargo doc --document-private-items`).
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod catchup;
pub mod cluster;
pub mod config;
pub(crate) mod delivery;
pub(crate) mod event;
pub(crate) mod fanout;
#[cfg(any(test, fuzzing))]
pub mod fuzzing;
pub(crate) mod gateway;
pub(crate) mod hub;
pub(crate) mod inbox;
pub(crate) mod limits;
pub mod lsn;
pub(crate) mod membership;
pub mod metrics;
pub mod migrate;
pub mod pgconn;
pub mod pgoutput;
pub(crate) mod pipeline;
pub(crate) mod protocol;
pub mod relay;
pub mod replication;
pub(crate) mod sequencer;
pub(crate) mod server;
pub(crate) mod store;
pub mod tools;

/// `chat-relay migrate`.
pub async fn run_migrate(args: &config::MigrateArgs) -> anyhow::Result<()> {
    let info = args.db.conn_info()?;
    let report = migrate::run(&info, &args.db.publication).await?;
    if report.applied.is_empty() {
        println!("schema up to date ({} migrations already applied)", report.already);
    } else {
        println!("applied {}", report.applied.join(", "));
    }
    if report.publication_created {
        println!("created publication {}", args.db.publication);
    }
    Ok(())
}

//! chat-relay: committed chat messages from Postgres to WebSocket clients,
//! exactly once, in `seq` order, only to participants.
//!
//! # Layout
//!
//! The relay is a pipeline; each stage is a module with one job.
//!
//! | module | job |
//! |---|---|
//! | [`replication`] | replication connection (own wire client), slot, START_REPLICATION, LSN feedback, reconnects |
//! | [`pgoutput`] | decode pgoutput bytes; hand on whole transactions only at Commit, in bounded memory (spilling beyond it) |
//! | [`event`] | see decoded rows as chat events (message insert/update/delete, participant changes and moves) |
//! | [`sequencer`] | drop duplicates (id, client_generated_id, seq), keep each chat's seq increasing, repair gaps |
//! | [`hub`] | who is subscribed to which chat; encode once, fan out without ever waiting; note who fell behind; presence and typing |
//! | [`gateway`] | `/v1/ws`: JWT (HS256, JWKS), sessions, the protocol, history, catch-up from the table, 4008 |
//!
//! Side paths: [`store`] (all SQL: backfill, history, membership, send, marking, lag),
//! [`delivery`] (debounced delivered/read marking), [`limits`] (per-user
//! connection cap and send rate, beside the gateway), [`metrics`] (every
//! Prometheus name), [`config`] (flags and env), [`pgconn`] (URL and TLS),
//! [`migrate`] (the `sql/` migrations), [`server`] (healthz, readyz, metrics),
//! [`relay`] (wiring for `serve`), [`scratch`] (throwaway Postgres for demo,
//! tests, benchmarks), [`cluster`] (replicas: leadership through Postgres,
//! the leader's events through NATS JetStream into every replica's hub,
//! behind the hub's `Fanout` seam), [`demo`] (terminal demo, and the browser chat built
//! from the TypeScript client in `clients/typescript/`), [`bench`].
//!
//! # The path of one message
//!
//! 1. An `INSERT INTO chat_messages` commits; the `sql/` trigger gave it the
//!    chat's next `seq` under the chat row's lock.
//! 2. [`replication::Replicator`] receives its XLogData and feeds
//!    [`pgoutput::Decoder`], which returns the [`pgoutput::Transaction`] at
//!    Commit (its changes in memory, or spilled to a file past the budget).
//! 3. [`relay`]'s pipeline maps each change to [`event::ChatEvent`]s and feeds
//!    them through [`sequencer::Sequencer`], which lets the insert pass once and in order.
//! 4. [`relay::dispatch`] encodes it once as a [`hub::EventFrame`];
//!    [`hub::Hub`] offers that frame to every subscribed connection, never
//!    waiting: a connection whose queue is full falls behind instead.
//! 5. The connection's session in [`gateway`] drops it if already written
//!    (history seam, replay), reads the table instead when something is
//!    missing or the subscription fell behind, and hands it to its outbox,
//!    which writes when the socket takes it.
//! 6. The pipeline reports the transaction's end LSN through
//!    [`replication::Progress`]; the replicator confirms it to the slot.
//!
//! With replicas ([`cluster`]), only the leader runs steps 2 and 3; in step 4
//! its fan-out is JetStream ([`cluster::publish`]), every replica's consumer
//! ([`cluster::follow`]) offers the frames to its own hub, and step 6 waits
//! for JetStream's acknowledgement.

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
pub mod sequencer;
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

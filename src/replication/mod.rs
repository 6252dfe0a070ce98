//! replication: follow the slot, hand committed transactions on, confirm progress.
//!
//! [`Replicator::run`] owns one replication connection at a time ([`wire`]):
//! it makes sure the slot exists (creating it, or recreating it loudly when it
//! was dropped or invalidated underneath), runs `START_REPLICATION` from the
//! slot's confirmed position, feeds every XLogData payload to the
//! [`crate::pgoutput::Decoder`] and sends each committed
//! [`Transaction`] down a bounded channel.
//!
//! LSN feedback is careful: the position confirmed to the server (the slot's
//! `confirmed_flush_lsn`) is only ever one the downstream pipeline reported as
//! handed on through [`Progress`], or, when everything received has been handed
//! on, the server's own idle position from a keepalive. So a crash at any point
//! replays what was not yet handed on, never skips it. Status updates go out
//! promptly after progress (at most every 100 ms) and at least every 10 s.
//!
//! Any error or disconnect: log, back off with jitter, reconnect, resume from
//! the slot; the half-received transaction is dropped and comes again.

pub mod wire;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::lsn::Lsn;
use wire::{CopyMessage, ReplConnection, WireError};

use crate::metrics as m;
use crate::pgconn::{quote_ident, quote_literal, ConnInfo};
use crate::pgoutput::{DecodeError, Decoder, Transaction, TxnMemory};

/// Microseconds between 1970-01-01 and Postgres's epoch 2000-01-01.
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Settings of the replication stream.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    pub conn: ConnInfo,
    pub slot: String,
    pub publication: String,
    /// Longest time between two standby status updates.
    pub status_interval: Duration,
    /// Budget for decoded transactions (None: unbounded, for tests and tools).
    pub memory: Option<TxnMemory>,
}

/// What the stream hands downstream, in order.
#[derive(Debug)]
pub enum StreamEvent {
    /// A committed transaction.
    Transaction(Transaction),
    /// The slot was lost (dropped or invalidated) and recreated: changes
    /// between the loss and now are not in the stream, so anyone relying on it
    /// must resynchronise from the tables.
    SlotReset { reason: String },
    /// A replica became leader (term `n`, see `cluster::leader`) and is about
    /// to stream from the slot's confirmed position: what the pipeline saw in
    /// an earlier term may come again, and must be handed on again.
    Term(u64),
}

/// How far the downstream pipeline has handed transactions on; shared between
/// the pipeline (writer) and the replication task (reader). Positions belong
/// to an epoch: when the stream starts over (a new slot, another server) the
/// pipeline resets it in order with the events, and the replicator ignores
/// progress from an epoch before its own.
#[derive(Debug, Clone)]
pub struct Progress {
    tx: Arc<watch::Sender<(u64, Lsn)>>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress { tx: Arc::new(watch::channel((0, Lsn(0))).0) }
    }
}

impl Progress {
    /// Everything up to `lsn` (a transaction's end LSN) has left the pipeline.
    pub fn handed_on(&self, lsn: Lsn) {
        self.tx.send_if_modified(|cur| {
            if lsn > cur.1 {
                cur.1 = lsn;
                true
            } else {
                false
            }
        });
    }
    pub fn current(&self) -> Lsn {
        self.tx.borrow().1
    }
    /// The stream started over: positions count from zero in a new epoch.
    pub fn reset(&self) {
        self.tx.send_modify(|cur| *cur = (cur.0 + 1, Lsn(0)));
    }
    fn epoch(&self) -> u64 {
        self.tx.borrow().0
    }
    fn subscribe(&self) -> watch::Receiver<(u64, Lsn)> {
        self.tx.subscribe()
    }
}

/// Where the pipeline reports what it has handed on: straight to
/// [`Progress`] for a single relay, through JetStream's acknowledgements for
/// a cluster leader.
pub trait Checkpoint: Send + Sync {
    fn handed_on(&self, lsn: Lsn);
    fn reset(&self);
    /// What follows belongs to leadership term `term` (replicas only).
    fn term(&self, _term: u64) {}
}

impl Checkpoint for Progress {
    fn handed_on(&self, lsn: Lsn) {
        Progress::handed_on(self, lsn)
    }
    fn reset(&self) {
        Progress::reset(self)
    }
}

/// Whether the stream is running, and why not; read by `/readyz`.
#[derive(Debug)]
pub struct Health {
    streaming: AtomicBool,
    reason: Mutex<String>,
    changed: watch::Sender<(bool, String)>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            streaming: AtomicBool::new(false),
            reason: Mutex::new("starting".into()),
            changed: watch::channel((false, "starting".into())).0,
        }
    }
}

impl Health {
    pub fn is_streaming(&self) -> bool {
        self.streaming.load(Ordering::Acquire)
    }

    /// Resolves once the stream is running (immediately if it is).
    pub async fn wait_streaming(&self) {
        self.wait_for(|streaming, _| streaming).await
    }

    /// Resolves once `(streaming, reason)` satisfies `pred`.
    pub async fn wait_for(&self, mut pred: impl FnMut(bool, &str) -> bool) {
        let mut rx = self.changed.subscribe();
        let _ = rx.wait_for(|(s, r)| pred(*s, r)).await;
    }
    pub fn reason(&self) -> String {
        self.reason.lock().map(|r| r.clone()).unwrap_or_default()
    }
    pub fn set(&self, streaming: bool, reason: impl Into<String>) {
        let reason = reason.into();
        self.streaming.store(streaming, Ordering::Release);
        if let Ok(mut r) = self.reason.lock() {
            r.clone_from(&reason);
        }
        m::streaming(streaming);
        self.changed.send_replace((streaming, reason));
    }
}

/// Why one streaming session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("decoding pgoutput: {0}")]
    Decode(#[from] DecodeError),
    #[error("slot {slot} belongs to another consumer ({detail})")]
    SlotBusy { slot: String, detail: String },
    #[error("slot {0} exists but is not a pgoutput logical slot of this database; refusing to touch it")]
    ForeignSlot(String),
    #[error("{0}")]
    Publication(String),
    #[error("malformed replication message: {0}")]
    Malformed(&'static str),
    #[error("downstream pipeline stopped")]
    Downstream,
}

/// The replication task.
pub struct Replicator {
    cfg: ReplicationConfig,
    out: mpsc::Sender<StreamEvent>,
    progress: Progress,
    health: Arc<Health>,
    decoder: Decoder,
    /// The slot existed at some point in this process: its disappearance is a loss.
    slot_seen: bool,
    /// Highest position confirmed to the server (never moves backwards).
    confirmed: Lsn,
    /// End LSN of the last transaction sent downstream.
    forwarded: Lsn,
    /// Server position at the last keepalive received between transactions.
    idle_position: Lsn,
    /// The server streamed from last: (system identifier, timeline).
    server: Option<(String, String)>,
    /// Progress epoch this stream's positions belong to.
    epoch: u64,
}

impl Replicator {
    pub fn new(
        cfg: ReplicationConfig,
        out: mpsc::Sender<StreamEvent>,
        progress: Progress,
        health: Arc<Health>,
    ) -> Self {
        // A replicator started later (a new leadership term) continues the
        // pipeline's current epoch.
        let epoch = progress.epoch();
        let decoder = match cfg.memory.clone() {
            Some(m) => Decoder::with_memory(m),
            None => Decoder::new(),
        };
        Replicator {
            cfg,
            out,
            progress,
            health,
            decoder,
            slot_seen: false,
            confirmed: Lsn(0),
            forwarded: Lsn(0),
            idle_position: Lsn(0),
            server: None,
            epoch,
        }
    }

    /// Streams until `shutdown`, reconnecting as needed. On shutdown it waits
    /// (bounded) for the pipeline to hand on what was forwarded, then confirms
    /// that position to the server.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut busy_logged = false;
        let mut publication_logged = false;
        while !shutdown.is_cancelled() {
            let started = Instant::now();
            let result = self.session(&shutdown).await;
            self.health.set(false, "replication stream not running");
            self.decoder.reset();
            match result {
                Ok(()) => break, // clean shutdown
                Err(SessionError::Downstream) => break,
                Err(SessionError::SlotBusy { slot, detail }) => {
                    // Another relay holds the slot (rolling update): wait quietly.
                    if !busy_logged {
                        tracing::info!(
                            slot,
                            detail,
                            "slot is in use by another consumer; waiting for it to be released"
                        );
                        busy_logged = true;
                    } else {
                        tracing::debug!(slot, "slot still in use");
                    }
                    self.health.set(false, format!("waiting for slot {slot}, in use by another consumer"));
                    let wait = Duration::from_millis(1000 + fastrand::u64(0..1000));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    continue;
                }
                Err(SessionError::Publication(why)) => {
                    // Not a fault of the connection: the schema needs an
                    // operator. Say so loudly once, then check again quietly.
                    if !publication_logged {
                        tracing::error!(reason = %why, "not streaming until the publication is fixed");
                        publication_logged = true;
                    }
                    self.health.set(false, why);
                    let wait = Duration::from_millis(2000 + fastrand::u64(0..1000));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    continue;
                }
                Err(e) => {
                    // A later busy period is news again.
                    busy_logged = false;
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff.reset();
                    }
                    let wait = backoff.next();
                    m::replication_errors();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "replication stream failed; reconnecting");
                    self.health.set(false, format!("replication stream failed: {e}"));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
        self.health.set(false, "shutting down");
    }

    async fn session(&mut self, shutdown: &CancellationToken) -> Result<(), SessionError> {
        let mut conn = tokio::select! {
            c = ReplConnection::connect(&self.cfg.conn) => c?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let ident = conn.simple_query("IDENTIFY_SYSTEM").await?;
        let field = |i: usize| ident.first().and_then(|row| row.get(i).cloned().flatten()).unwrap_or_default();
        let (system, timeline) = (field(0), field(1));
        tracing::info!(
            systemid = system,
            timeline,
            xlogpos = field(2),
            tls = conn.tls,
            "replication connection established"
        );
        if let Some((old_system, old_timeline)) = self.server.replace((system.clone(), timeline.clone())) {
            if old_system != system || old_timeline != timeline {
                // A failed-over or restored server: its positions are not the
                // old one's, and what the old one streamed last may never
                // have happened here.
                let reason = format!(
                    "the server changed (system identifier {old_system} -> {system}, timeline {old_timeline} -> {timeline})"
                );
                tracing::error!(reason, "streaming from a different server; clients are told to resynchronise");
                m::slot_recreated();
                self.reset_positions();
                self.slot_seen = false;
                self.out.send(StreamEvent::SlotReset { reason }).await.map_err(|_| SessionError::Downstream)?;
            }
        }
        let deadline = receive_deadline(&mut conn, self.cfg.status_interval).await;
        self.check_publication(&mut conn).await?;
        let slot_confirmed = self.ensure_slot(&mut conn).await?;
        self.confirmed = self.confirmed.max(slot_confirmed);
        // Everything at or before the slot position is done by definition.
        self.forwarded = self.forwarded.max(slot_confirmed);

        let start = format!(
            "START_REPLICATION SLOT {} LOGICAL 0/0 (proto_version '1', publication_names {}, messages 'true')",
            quote_ident(&self.cfg.slot),
            quote_literal(&quote_ident(&self.cfg.publication)),
        );
        if let Err(e) = conn.start_copy_both(&start).await {
            return Err(self.classify_start_error(e));
        }
        tracing::info!(slot = %self.cfg.slot, from = %self.confirmed, "streaming");
        self.health.set(true, "streaming");

        let mut progress = self.progress.subscribe();
        let mut last_status = Instant::now();
        let mut last_heard = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.drain_and_confirm(&mut conn, &mut progress).await;
                    conn.close().await;
                    return Ok(());
                }
                // Nothing from the server, not even the keepalive our status
                // messages ask for: the connection is dead (a silent network
                // would otherwise hold it for the kernel's 15 minutes).
                _ = tokio::time::sleep_until((last_heard + deadline.silence).into()) => {
                    return Err(SessionError::Wire(WireError::Timeout("no data from the server within the receive deadline")));
                }
                msg = conn.recv_copy() => {
                    last_heard = Instant::now();
                    match msg? {
                        CopyMessage::Done => {
                            return Err(SessionError::Wire(WireError::Protocol("server ended the stream".into())));
                        }
                        CopyMessage::Data(data) => {
                            if self.on_copy_data(data).await? {
                                self.send_status(&mut conn, false).await?;
                                last_status = Instant::now();
                            }
                        }
                    }
                }
                // Progress is looked at on this tick, not on every handed-on
                // transaction: one wakeup per 100 ms instead of one per commit.
                _ = tick.tick() => {
                    // Every `ask` the status asks the server to answer, so a
                    // live connection is never silent for long.
                    let due = last_status.elapsed() >= deadline.ask;
                    if self.confirmable() > self.confirmed || due {
                        self.send_status(&mut conn, due).await?;
                        last_status = Instant::now();
                    }
                }
            }
        }
    }

    /// Handles one CopyData payload; true when the server asked for a reply now.
    async fn on_copy_data(&mut self, mut data: Bytes) -> Result<bool, SessionError> {
        if data.is_empty() {
            return Err(SessionError::Malformed("empty CopyData"));
        }
        match data.get_u8() {
            b'w' => {
                if data.len() < 24 {
                    return Err(SessionError::Malformed("short XLogData header"));
                }
                let _wal_start = data.get_u64();
                let _wal_end = data.get_u64();
                let _send_time = data.get_i64();
                if let Some(txn) = self.decoder.feed(&data)? {
                    let n = txn.counts;
                    m::events_decoded(n.inserts, n.updates, n.deletes);
                    tracing::debug!(
                        xid = txn.xid,
                        commit_lsn = %txn.commit_lsn,
                        end_lsn = %txn.end_lsn,
                        changes = n.total(),
                        "committed transaction"
                    );
                    let end = txn.end_lsn;
                    self.out.send(StreamEvent::Transaction(txn)).await.map_err(|_| SessionError::Downstream)?;
                    self.forwarded = self.forwarded.max(end);
                }
                Ok(false)
            }
            b'k' => {
                if data.len() < 17 {
                    return Err(SessionError::Malformed("short keepalive"));
                }
                let wal_end = Lsn(data.get_u64());
                let _send_time = data.get_i64();
                let reply = data.get_u8() == 1;
                if !self.decoder.in_transaction() {
                    self.idle_position = self.idle_position.max(wal_end);
                }
                Ok(reply)
            }
            _ => Err(SessionError::Malformed("unknown CopyData message")),
        }
    }

    /// The position that is safe to confirm now: what the pipeline handed on,
    /// but never beyond what this server itself sent (the pipeline's progress
    /// may still be the previous server's).
    fn confirmable(&self) -> Lsn {
        if self.progress.epoch() != self.epoch {
            // The pipeline has not reached the reset yet: what it reports
            // belongs to the stream before.
            return self.confirmed;
        }
        let handed = self.progress.current();
        let pos = if handed >= self.forwarded { handed.max(self.idle_position) } else { handed };
        pos.min(self.forwarded.max(self.idle_position)).max(self.confirmed)
    }

    /// Forgets every position: they belong to a slot or server that is gone.
    fn reset_positions(&mut self) {
        self.epoch += 1;
        self.confirmed = Lsn(0);
        self.forwarded = Lsn(0);
        self.idle_position = Lsn(0);
    }

    async fn send_status(&mut self, conn: &mut ReplConnection, reply: bool) -> Result<(), SessionError> {
        let pos = self.confirmable();
        let mut msg = Vec::with_capacity(34);
        msg.push(b'r');
        msg.extend_from_slice(&pos.0.to_be_bytes()); // written
        msg.extend_from_slice(&pos.0.to_be_bytes()); // flushed: becomes confirmed_flush_lsn
        msg.extend_from_slice(&pos.0.to_be_bytes()); // applied
        msg.extend_from_slice(&now_pg_micros().to_be_bytes());
        msg.push(reply as u8);
        conn.send_copy_data(&msg).await?;
        if pos > self.confirmed {
            tracing::trace!(lsn = %pos, "confirmed");
        }
        self.confirmed = pos;
        Ok(())
    }

    /// Shutdown: give the pipeline a moment to hand on what it holds, then
    /// confirm the final position.
    async fn drain_and_confirm(&mut self, conn: &mut ReplConnection, progress: &mut watch::Receiver<(u64, Lsn)>) {
        let forwarded = self.forwarded;
        let epoch = self.epoch;
        let wait = progress.wait_for(|(e, lsn)| *e == epoch && *lsn >= forwarded);
        let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
        match self.send_status(conn, false).await {
            Ok(()) => tracing::info!(lsn = %self.confirmed, "final position confirmed"),
            Err(e) => tracing::warn!(error = %e, "could not confirm the final position"),
        }
    }

    /// Refuses to stream unless the publication carries inserts, updates and
    /// deletes of both chat tables with REPLICA IDENTITY FULL: without
    /// chat_participants, removals never reach the relay (revocation would
    /// silently never happen); without FULL, updates and deletes lack the
    /// chat and user they belong to.
    async fn check_publication(&mut self, conn: &mut ReplConnection) -> Result<(), SessionError> {
        let publication = &self.cfg.publication;
        let pub_lit = quote_literal(publication);
        let pub_ident = quote_ident(publication);
        let rows = conn
            .simple_query(&format!(
                "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = {pub_lit}"
            ))
            .await?;
        let fix = "run `chat-relay migrate`";
        let Some(row) = rows.first() else {
            return Err(SessionError::Publication(format!(
                "publication {publication} does not exist: {fix} (or set CHAT_RELAY_PUBLICATION to the one it created)"
            )));
        };
        // Every kind of change: a TRUNCATE of chat_participants not published
        // would revoke nobody.
        let missing: Vec<&str> = ["insert", "update", "delete", "truncate"]
            .into_iter()
            .enumerate()
            .filter(|(i, _)| row.get(*i).cloned().flatten().as_deref() != Some("t"))
            .map(|(_, op)| op)
            .collect();
        if !missing.is_empty() {
            return Err(SessionError::Publication(format!(
                "publication {publication} does not publish {} (the relay must see every change of the chat tables; \
                 an unpublished TRUNCATE of chat_participants would revoke nobody): \
                 ALTER PUBLICATION {pub_ident} SET (publish = 'insert, update, delete, truncate')",
                missing.join(", ")
            )));
        }
        // Row filters and column lists (PostgreSQL 15) hide changes or
        // columns. Read through to_jsonb so that older servers, whose
        // pg_publication_rel lacks those columns, answer "none".
        let rows = conn
            .simple_query(&format!(
                "SELECT c.relname, c.relreplident::text, EXISTS (SELECT 1 FROM pg_publication_tables p \
                   WHERE p.pubname = {pub_lit} AND p.schemaname = n.nspname AND p.tablename = c.relname), \
                   EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid \
                     WHERE p.pubname = {pub_lit} AND r.prrelid = c.oid AND to_jsonb(r) ->> 'prqual' IS NOT NULL), \
                   EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid \
                     WHERE p.pubname = {pub_lit} AND r.prrelid = c.oid AND to_jsonb(r) ->> 'prattrs' IS NOT NULL) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') \
                   AND c.relname IN ('chat_messages', 'chat_participants') ORDER BY 1"
            ))
            .await?;
        for table in ["chat_messages", "chat_participants"] {
            let row = rows.iter().find(|r| r.first().cloned().flatten().as_deref() == Some(table));
            let Some(row) = row else {
                return Err(SessionError::Publication(format!("table {table} does not exist: {fix}")));
            };
            let get = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
            if get(2) != "t" {
                return Err(SessionError::Publication(format!(
                    "publication {publication} does not publish {table}{}: {fix}, or ALTER PUBLICATION {pub_ident} ADD TABLE {table}",
                    if table == "chat_participants" { " (removals would never revoke anyone)" } else { "" },
                )));
            }
            let republish = format!(
                "ALTER PUBLICATION {pub_ident} DROP TABLE {table}, then ALTER PUBLICATION {pub_ident} ADD TABLE {table} \
                 (no WHERE, no column list)"
            );
            if get(3) == "t" {
                return Err(SessionError::Publication(format!(
                    "publication {publication} has a row filter on {table}: changes of the rows it leaves out never \
                     reach the relay{}: {republish}",
                    if table == "chat_participants" { " (removing those users would revoke nobody)" } else { "" },
                )));
            }
            if get(4) == "t" {
                return Err(SessionError::Publication(format!(
                    "publication {publication} has a column list on {table}: the relay needs every column: {republish}"
                )));
            }
            if get(1) != "f" {
                return Err(SessionError::Publication(format!(
                    "{table} must have REPLICA IDENTITY FULL (updates and deletes must say which chat and user \
                     they belong to): {fix}, or ALTER TABLE {table} REPLICA IDENTITY FULL"
                )));
            }
        }
        Ok(())
    }

    /// Makes sure the slot exists and is usable; returns its confirmed position.
    async fn ensure_slot(&mut self, conn: &mut ReplConnection) -> Result<Lsn, SessionError> {
        let query = format!(
            "SELECT slot_type, plugin, database = current_database(), wal_status, \
             confirmed_flush_lsn, active_pid FROM pg_replication_slots WHERE slot_name = {}",
            quote_literal(&self.cfg.slot)
        );
        let rows = conn.simple_query(&query).await?;
        let lost_reason = match rows.first() {
            None if self.slot_seen => Some("the slot was dropped while the relay was using it".to_string()),
            None => None,
            Some(row) => {
                let get = |i: usize| row.get(i).cloned().flatten();
                if get(0).as_deref() != Some("logical")
                    || get(1).as_deref() != Some("pgoutput")
                    || get(2).as_deref() != Some("t")
                {
                    return Err(SessionError::ForeignSlot(self.cfg.slot.clone()));
                }
                if let Some(pid) = get(5) {
                    return Err(SessionError::SlotBusy {
                        slot: self.cfg.slot.clone(),
                        detail: format!("active pid {pid}"),
                    });
                }
                if get(3).as_deref() == Some("lost") {
                    let reason = "the slot was invalidated (max_slot_wal_keep_size exceeded)".to_string();
                    conn.simple_query(&format!("DROP_REPLICATION_SLOT {}", quote_ident(&self.cfg.slot))).await?;
                    Some(reason)
                } else {
                    self.slot_seen = true;
                    let lsn = get(4).and_then(|s| s.parse::<Lsn>().ok()).unwrap_or_default();
                    return Ok(lsn);
                }
            }
        };
        let created = conn
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'nothing')",
                quote_ident(&self.cfg.slot)
            ))
            .await;
        let rows = match created {
            Ok(rows) => rows,
            // Another relay created it between our check and now.
            Err(e) if e.sqlstate() == Some("42710") => {
                return Err(SessionError::SlotBusy {
                    slot: self.cfg.slot.clone(),
                    detail: "created concurrently".into(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let lsn = rows
            .first()
            .and_then(|r| r.get(1).cloned().flatten())
            .and_then(|s| s.parse::<Lsn>().ok())
            .unwrap_or_default();
        self.slot_seen = true;
        match lost_reason {
            Some(reason) => {
                m::slot_recreated();
                tracing::error!(
                    slot = %self.cfg.slot,
                    reason,
                    lsn = %lsn,
                    "replication slot LOST and recreated: changes since the loss were not streamed; clients are told to resynchronise"
                );
                // The old positions belong to the old slot.
                self.reset_positions();
                self.out.send(StreamEvent::SlotReset { reason }).await.map_err(|_| SessionError::Downstream)?;
            }
            None => tracing::info!(slot = %self.cfg.slot, lsn = %lsn, "replication slot created"),
        }
        Ok(lsn)
    }

    fn classify_start_error(&mut self, e: WireError) -> SessionError {
        match e.sqlstate() {
            // object_in_use: "replication slot ... is active for PID ...": wait quietly.
            Some("55006") => SessionError::SlotBusy { slot: self.cfg.slot.clone(), detail: e.to_string() },
            // Anything else (including a slot dropped between our check and
            // START) is retried; the next session recreates what is missing.
            _ => e.into(),
        }
    }
}

/// How long the stream may be silent, and how often to ask the server for
/// a keepalive.
struct Deadline {
    silence: Duration,
    ask: Duration,
}

/// About twice the server's `wal_sender_timeout` (the server gives up on us
/// after one), at least 2 s; asks for a keepalive at a quarter of it.
async fn receive_deadline(conn: &mut ReplConnection, status_interval: Duration) -> Deadline {
    let configured = match conn.simple_query("SHOW wal_sender_timeout").await {
        Ok(rows) => rows.first().and_then(|r| r.first().cloned().flatten()).and_then(|v| parse_pg_duration(&v)),
        Err(e) => {
            tracing::debug!(error = %e, "could not read wal_sender_timeout; assuming 60 s");
            None
        }
    };
    // 0 disables the server's timeout: keep our own at the default's scale.
    let timeout = configured.filter(|d| !d.is_zero()).unwrap_or(Duration::from_secs(60));
    let silence = (timeout * 2).max(Duration::from_secs(2));
    Deadline { silence, ask: (silence / 4).min(status_interval) }
}

/// `500ms`, `2s`, `1min`, `1h`, `1d`, or a bare number of milliseconds.
fn parse_pg_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit.trim() {
        "" | "ms" => n,
        "s" => n.checked_mul(1000)?,
        "min" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

fn now_pg_micros() -> i64 {
    chrono::Utc::now().timestamp_micros() - PG_EPOCH_OFFSET_MICROS
}

/// Exponential backoff with full jitter.
struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    fn new(base: Duration, cap: Duration) -> Self {
        Backoff { base, cap, attempt: 0 }
    }
    fn reset(&mut self) {
        self.attempt = 0;
    }
    fn next(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16)).min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        // Half fixed, half random: never zero, never in lockstep with peers.
        let half = exp / 2;
        half + Duration::from_millis(fastrand::u64(0..=half.as_millis() as u64))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn postgres_durations_parse_as_show_prints_them() {
        use std::time::Duration;
        assert_eq!(super::parse_pg_duration("1min"), Some(Duration::from_secs(60)));
        assert_eq!(super::parse_pg_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(super::parse_pg_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(super::parse_pg_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(super::parse_pg_duration("0"), Some(Duration::ZERO));
        assert_eq!(super::parse_pg_duration("soon"), None);
        assert_eq!(super::parse_pg_duration("99999999999999999999d"), None);
    }

    use super::*;

    #[test]
    fn backoff_grows_to_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..20 {
            let d = b.next();
            assert!(d <= Duration::from_secs(2) && d >= Duration::from_millis(50));
        }
        assert!(b.next() >= Duration::from_secs(1));
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(&quote_ident("pub")), "'\"pub\"'");
    }

    #[test]
    fn progress_only_moves_forward() {
        let p = Progress::default();
        p.handed_on(Lsn(10));
        p.handed_on(Lsn(5));
        assert_eq!(p.current(), Lsn(10));
    }
}

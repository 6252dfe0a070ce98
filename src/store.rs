//! store: every SQL query the relay makes on ordinary connections.
//!
//! Backfill pages and gap lookups, membership, latest seq, idempotent send,
//! batched delivered/read marking, and the lag probe, on a deadpool pool of
//! tokio-postgres connections. Waiting for a connection and creating one are
//! bounded by short timeouts, so a database that is down answers
//! [`StoreError::Unavailable`] quickly instead of hanging a client.
//!
//! Message rows are read in text format and converted with the same
//! type-OID rules as the WAL decoder ([`crate::pgoutput::text_to_json`]), so a
//! message replayed from the table and one streamed live are the same JSON.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::Map;
use tokio_postgres::SimpleQueryMessage;
use uuid::Uuid;

use crate::event::MessageRow;
use crate::pgconn::{self, ConnInfo};
use crate::pgoutput::text_to_json;
use crate::replication::quote_ident;

/// What a query can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("unexpected result: {0}")]
    Unexpected(&'static str),
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// Outcome of an idempotent send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOutcome {
    pub id: Uuid,
    pub seq: i64,
    /// This client_generated_id was stored before: the original row is returned.
    pub duplicate: bool,
}

/// One pending watermark move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mark {
    pub chat_id: Uuid,
    pub user_id: Uuid,
    pub seq: i64,
}

/// `chat_messages` columns with their type OIDs, in table order.
type Columns = Arc<Vec<(String, u32)>>;

/// The query pool.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

impl Store {
    pub fn new(info: &ConnInfo, size: usize) -> anyhow::Result<Store> {
        let mut cfg = info.pg_config();
        // Same value rendering as the replication connection.
        cfg.options("-c TimeZone=UTC -c DateStyle=ISO,YMD");
        cfg.connect_timeout(info.connect_timeout.min(Duration::from_secs(3)));
        let mgr_cfg = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let mgr = match info.tls_config()? {
            None => Manager::from_config(cfg, tokio_postgres::NoTls, mgr_cfg),
            Some(tls) => Manager::from_config(cfg, pgconn::make_tls(tls), mgr_cfg),
        };
        let pool = Pool::builder(mgr)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(3)))
            .create_timeout(Some(Duration::from_secs(3)))
            .recycle_timeout(Some(Duration::from_secs(2)))
            .build()?;
        Ok(Store { pool })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// Answers when the database does.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.client().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Is `user_id` a participant of `chat_id`?
    pub async fn is_participant(&self, chat_id: Uuid, user_id: Uuid) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let st = c.prepare_cached("SELECT 1 FROM chat_participants WHERE chat_id = $1 AND user_id = $2").await?;
        Ok(c.query_opt(&st, &[&chat_id, &user_id]).await?.is_some())
    }

    /// The chat's highest seq (0 for an empty or unknown chat).
    pub async fn latest_seq(&self, chat_id: Uuid) -> Result<i64, StoreError> {
        let c = self.client().await?;
        let st = c.prepare_cached("SELECT get_latest_seq($1)").await?;
        let row = c.query_one(&st, &[&chat_id]).await?;
        Ok(row.try_get::<_, Option<i64>>(0)?.unwrap_or(0))
    }

    /// `chat_messages` columns with type OIDs, read fresh each time: a column
    /// added by the app must appear in replayed rows exactly as the WAL shows
    /// it in live ones. A prepared catalog lookup per backfill page is cheap.
    async fn message_columns(&self, c: &deadpool_postgres::Object) -> Result<Columns, StoreError> {
        let st = c
            .prepare_cached(
                "SELECT attname::text, atttypid::oid FROM pg_attribute \
                 WHERE attrelid = 'chat_messages'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            )
            .await?;
        let rows = c.query(&st, &[]).await?;
        let mut cols = Vec::with_capacity(rows.len());
        for r in rows {
            cols.push((r.try_get::<_, String>(0)?, r.try_get::<_, u32>(1)?));
        }
        if cols.is_empty() {
            return Err(StoreError::Unexpected("chat_messages has no columns"));
        }
        Ok(Arc::new(cols))
    }

    /// Up to `limit` messages of a chat with `seq > after`, oldest first.
    pub async fn messages_after(&self, chat_id: Uuid, after: i64, limit: i64) -> Result<Vec<MessageRow>, StoreError> {
        self.messages(chat_id, after, i64::MAX, limit).await
    }

    /// The messages of a chat with `after < seq < before`, oldest first.
    pub async fn messages_between(
        &self,
        chat_id: Uuid,
        after: i64,
        before: i64,
    ) -> Result<Vec<MessageRow>, StoreError> {
        self.messages(chat_id, after, before, before.saturating_sub(after).clamp(0, 100_000)).await
    }

    async fn messages(
        &self,
        chat_id: Uuid,
        after: i64,
        before: i64,
        limit: i64,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let c = self.client().await?;
        let mut retried = false;
        loop {
            let cols = self.message_columns(&c).await?;
            let list: Vec<String> = cols.iter().map(|(n, _)| quote_ident(n)).collect();
            // Simple (text) protocol so values render exactly as in the WAL; the
            // inlined values are a Uuid and integers, never user text.
            let sql = format!(
                "SELECT {} FROM chat_messages WHERE chat_id = '{chat_id}' AND seq > {after} AND seq < {before} \
                 ORDER BY seq LIMIT {limit}",
                list.join(", ")
            );
            let result = c.simple_query(&sql).await;
            let msgs = match result {
                Ok(m) => m,
                // A column dropped between the two queries: look again once.
                Err(e) if !retried && e.code().is_some_and(|c| c.code() == "42703") => {
                    retried = true;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            for m in msgs {
                if let SimpleQueryMessage::Row(row) = m {
                    let mut json = Map::new();
                    for (i, (name, oid)) in cols.iter().enumerate() {
                        let v = row.get(i).map(|t| text_to_json(*oid, t)).unwrap_or(serde_json::Value::Null);
                        json.insert(name.clone(), v);
                    }
                    out.push(
                        MessageRow::from_json(json).ok_or(StoreError::Unexpected("message row without id or seq"))?,
                    );
                }
            }
            return Ok(out);
        }
    }

    /// Inserts a message once per (chat, client_generated_id); a retry gets
    /// the original row back with `duplicate: true`.
    pub async fn send(
        &self,
        chat_id: Uuid,
        sender_id: Uuid,
        client_generated_id: Uuid,
        content: &str,
    ) -> Result<SendOutcome, StoreError> {
        let c = self.client().await?;
        let existing = c
            .prepare_cached("SELECT id, seq FROM chat_messages WHERE chat_id = $1 AND client_generated_id = $2")
            .await?;
        if let Some(row) = c.query_opt(&existing, &[&chat_id, &client_generated_id]).await? {
            return Ok(SendOutcome { id: row.get(0), seq: row.get(1), duplicate: true });
        }
        let insert = c
            .prepare_cached(
                "INSERT INTO chat_messages (chat_id, sender_id, content, client_generated_id) \
                 VALUES ($1, $2, $3, $4) RETURNING id, seq",
            )
            .await?;
        match c.query_one(&insert, &[&chat_id, &sender_id, &content, &client_generated_id]).await {
            Ok(row) => Ok(SendOutcome { id: row.get(0), seq: row.get(1), duplicate: false }),
            // A concurrent send of the same id won (the trigger or the unique
            // index said so): return the row it stored.
            Err(e) if e.code().is_some_and(|c| c.code() == "23505") => {
                let row = c
                    .query_opt(&existing, &[&chat_id, &client_generated_id])
                    .await?
                    .ok_or(StoreError::Unexpected("duplicate reported but no row found"))?;
                Ok(SendOutcome { id: row.get(0), seq: row.get(1), duplicate: true })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Applies many delivered and read marks in ONE statement. Watermarks only
    /// move forward (the SQL functions clamp and compare).
    pub async fn apply_marks(&self, delivered: &[Mark], read: &[Mark]) -> Result<(), StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(
                "SELECT count(*) FROM ( \
                   SELECT mark_messages_as_delivered(d.chat_id, d.user_id, d.seq) \
                     FROM unnest($1::uuid[], $2::uuid[], $3::bigint[]) AS d(chat_id, user_id, seq) \
                   UNION ALL \
                   SELECT mark_messages_as_read(r.chat_id, r.user_id, r.seq) \
                     FROM unnest($4::uuid[], $5::uuid[], $6::bigint[]) AS r(chat_id, user_id, seq) \
                 ) applied",
            )
            .await?;
        let cols = |ms: &[Mark]| {
            (
                ms.iter().map(|m| m.chat_id).collect::<Vec<_>>(),
                ms.iter().map(|m| m.user_id).collect::<Vec<_>>(),
                ms.iter().map(|m| m.seq).collect::<Vec<_>>(),
            )
        };
        let (dc, du, ds) = cols(delivered);
        let (rc, ru, rs) = cols(read);
        c.query_one(&st, &[&dc, &du, &ds, &rc, &ru, &rs]).await?;
        Ok(())
    }

    /// Server WAL position minus the slot's confirmed position, in bytes.
    pub async fn slot_lag(&self, slot: &str) -> Result<Option<i64>, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?;
        Ok(row.and_then(|r| r.get::<_, Option<i64>>(0)))
    }
}

//! store: every SQL query the relay makes on ordinary connections.
//!
//! Backfill pages and gap lookups, membership, latest seq, idempotent send,
//! history, batched delivered/read marking, and the lag probe, on a deadpool
//! pool of tokio-postgres connections. Everything a user asks for (subscribe,
//! catch-up, history, send) checks participation in the same statement that
//! reads or writes, so a stale cache can only ever refuse too much, never
//! allow ([`StoreError::NotParticipant`]). Waiting for a connection and creating one are
//! bounded by short timeouts, so a database that is down answers
//! [`StoreError::Unavailable`] quickly instead of hanging a client.
//!
//! Message rows are read in text format and converted with the same
//! type-OID rules as the WAL decoder ([`crate::pgoutput::text_to_json`]), so a
//! message replayed from the table and one streamed live are the same JSON.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::value::RawValue;
use serde_json::Map;
use tokio_postgres::SimpleQueryMessage;
use uuid::Uuid;

use crate::event::{MessageRow, Participant};
use crate::inbox::state::{Answer, Ask, Listed, SATURATED};
use crate::pgconn::quote_ident;
use crate::pgconn::{self, ConnInfo};
use crate::pgoutput::text_to_json;

/// What a query can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not a participant of this chat")]
    NotParticipant,
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("unexpected result: {0}")]
    Unexpected(&'static str),
}

/// The server's own words when there are some (tokio-postgres says "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

impl StoreError {
    /// A database that is restarting, unreachable or out of connections:
    /// the same statement may well succeed in a moment.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Db(e) => match e.as_db_error() {
                // Connection exception, insufficient resources, operator
                // intervention (admin shutdown, cannot connect now).
                Some(db) => matches!(db.code().code().get(..2), Some("08" | "53" | "57")),
                // Closed connection, I/O error.
                None => true,
            },
            StoreError::NotParticipant | StoreError::Unexpected(_) => false,
        }
    }
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

/// Which seqs to read, and in which order.
#[derive(Debug, Clone, Copy)]
struct Range {
    after: i64,
    until: i64,
    newest_first: bool,
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

    /// The messages of a chat with `after < seq < before`, oldest first (gap
    /// lookups of the pipeline: no user involved).
    pub async fn messages_between(
        &self,
        chat_id: Uuid,
        after: i64,
        before: i64,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let range = Range { after, until: before.saturating_sub(1), newest_first: false };
        let limit = before.saturating_sub(after).clamp(0, 100_000);
        self.rows(chat_id, None, range, limit, i64::MAX).await.map(|(rows, _)| rows)
    }

    /// For `user_id`, who must be a participant: up to `limit` messages with
    /// `after < seq <= until`, oldest first, cut after about `max_bytes` of
    /// row JSON (always at least one row); and whether more may follow.
    pub async fn page(
        &self,
        chat_id: Uuid,
        user_id: Uuid,
        after: i64,
        until: i64,
        limit: i64,
        max_bytes: i64,
    ) -> Result<(Vec<MessageRow>, bool), StoreError> {
        let range = Range { after, until, newest_first: false };
        let (rows, cut) = self.rows(chat_id, Some(user_id), range, limit, max_bytes).await?;
        let more = cut || rows.len() as i64 >= limit;
        Ok((rows, more))
    }

    /// For `user_id`, who must be a participant: the `limit` newest messages
    /// with `seq < before` (all when None), returned oldest first, cut after
    /// about `max_bytes` of row JSON; and whether older ones exist.
    pub async fn history(
        &self,
        chat_id: Uuid,
        user_id: Uuid,
        before: Option<i64>,
        limit: i64,
        max_bytes: i64,
    ) -> Result<(Vec<MessageRow>, bool), StoreError> {
        let range = Range { after: i64::MIN, until: before.unwrap_or(i64::MAX).saturating_sub(1), newest_first: true };
        let (mut rows, cut) = self.rows(chat_id, Some(user_id), range, limit + 1, max_bytes).await?;
        let more = cut || rows.len() as i64 > limit;
        rows.truncate(limit.max(0) as usize);
        rows.reverse();
        Ok((rows, more))
    }

    /// Reads message rows in text form, so they render exactly as in the WAL.
    /// With `user`, the same statement checks participation. Returns the rows
    /// in the range's order and whether the byte cap cut the page.
    async fn rows(
        &self,
        chat_id: Uuid,
        user: Option<Uuid>,
        range: Range,
        limit: i64,
        max_bytes: i64,
    ) -> Result<(Vec<MessageRow>, bool), StoreError> {
        let c = self.client().await?;
        let mut retried = false;
        loop {
            let cols = self.message_columns(&c).await?;
            let list: Vec<String> = cols.iter().map(|(n, _)| format!("x.{}", quote_ident(n))).collect();
            let order = if range.newest_first { "DESC" } else { "ASC" };
            // Simple (text) protocol: the inlined values are uuids and
            // integers, never user text. The window runs over the LIMITed
            // rows only; each row costs what its JSON does (Postgres escapes
            // control characters as \u00XX like the relay, so a row of them
            // costs six times its text).
            let rows_sql = format!(
                "SELECT {list}, x.chat_relay_n FROM ( \
                   SELECT w.*, sum(octet_length(to_jsonb(w)::text)) OVER (ORDER BY w.seq {order}) \
                          - octet_length(to_jsonb(w)::text) AS chat_relay_before, \
                          count(*) OVER () AS chat_relay_n \
                   FROM (SELECT m.* FROM chat_messages m WHERE m.chat_id = '{chat_id}' AND m.seq > {after} AND m.seq <= {until} \
                         ORDER BY m.seq {order} LIMIT {limit}) w \
                 ) x WHERE x.chat_relay_before < {max_bytes} ORDER BY x.seq {order}",
                list = list.join(", "),
                after = range.after,
                until = range.until,
                limit = limit.max(0),
                max_bytes = max_bytes.max(1),
            );
            let sql = match user {
                None => format!("SELECT true, page.* FROM ({rows_sql}) page"),
                // One row with ok = false and no columns for a stranger; for a
                // participant without rows, one row of NULLs.
                Some(u) => format!(
                    "SELECT p.ok, page.* FROM (SELECT EXISTS (SELECT 1 FROM chat_participants \
                       WHERE chat_id = '{chat_id}' AND user_id = '{u}') AS ok) p \
                     LEFT JOIN LATERAL ({rows_sql}) page ON p.ok"
                ),
            };
            let msgs = match c.simple_query(&sql).await {
                Ok(m) => m,
                // A column dropped between the two queries: look again once.
                Err(e) if !retried && e.code().is_some_and(|c| c.code() == "42703") => {
                    retried = true;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            let mut member = user.is_none();
            let mut fetched = 0i64;
            for m in msgs {
                let SimpleQueryMessage::Row(row) = m else { continue };
                member |= row.get(0) == Some("t");
                // The id column is never NULL in a real row.
                if row.get(1).is_none() {
                    continue;
                }
                let json = row_json(&row, &cols, 1);
                fetched = row.get(cols.len() + 1).and_then(|n| n.parse().ok()).unwrap_or(fetched);
                out.push(MessageRow::from_json(json).ok_or(StoreError::Unexpected("message row without id or seq"))?);
            }
            if !member {
                return Err(StoreError::NotParticipant);
            }
            // Cut by bytes: the LIMIT found more rows than the cap let through.
            let cut = (out.len() as i64) < fetched;
            return Ok((out, cut));
        }
    }

    /// Every chat of `user_id` for the inbox, at most `cap` (one more tells
    /// the caller there are more): last seq, activity, the user's
    /// watermarks, and whether anything is unread: known without reading
    /// messages when the newest (whose sender the chat row keeps) is someone
    /// else's and past the read mark; otherwise one probe of the
    /// (chat_id, seq) index.
    pub async fn inbox_list(&self, user_id: Uuid, cap: i64) -> Result<Vec<Listed>, StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(
                "SELECT c.id, c.last_seq, \
                        (extract(epoch FROM coalesce(c.last_activity, c.created_at)) * 1000000)::int8, \
                        p.last_read_seq, p.last_delivered_seq, \
                        c.last_seq > p.last_read_seq AND (c.last_sender_id <> p.user_id \
                          OR EXISTS (SELECT 1 FROM chat_messages m \
                          WHERE m.chat_id = c.id AND m.seq > p.last_read_seq AND m.seq <= c.last_seq \
                            AND m.sender_id <> p.user_id)) \
                   FROM chat_participants p JOIN chats c ON c.id = p.chat_id \
                  WHERE p.user_id = $1 LIMIT $2",
            )
            .await?;
        let rows = c.query(&st, &[&user_id, &cap]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(Listed {
                chat: r.try_get(0)?,
                last_seq: r.try_get(1)?,
                at: r.try_get(2)?,
                read: r.try_get(3)?,
                delivered: r.try_get(4)?,
                has_unread: r.try_get::<_, Option<bool>>(5)?.unwrap_or(false),
                streamed: None,
            });
        }
        Ok(out)
    }

    /// Answers the inbox's questions ([`Ask`]) in one statement: per ask, the
    /// chat's last seq, its newest message up to the bound and the activity
    /// that goes with it, and for a user their participant row and unread
    /// count up to the bound (at most [`SATURATED`]).
    pub async fn inbox_answers(&self, asks: Vec<Ask>) -> Result<Vec<Answer>, StoreError> {
        if asks.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.client().await?;
        let cols = self.message_columns(&c).await?;
        let list: Vec<String> = cols.iter().map(|(n, _)| format!("lm.{}", quote_ident(n))).collect();
        let int = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "NULL".into());
        let values: Vec<String> = asks
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let (user, read) = match &a.user {
                    Some(u) => (u.user, u.read),
                    None => (Uuid::nil(), None),
                };
                let gone: Vec<String> = a.gone.iter().map(i64::to_string).collect();
                format!(
                    "({i}, '{}'::uuid, '{user}'::uuid, {}::int8, {}::int8, ARRAY[{}]::int8[])",
                    a.chat,
                    int(read),
                    int(a.bound),
                    gone.join(",")
                )
            })
            .collect();
        // Simple (text) protocol, so rows render exactly as in the WAL; the
        // inlined values are uuids and integers only.
        let sql = format!(
            "SELECT b.i, coalesce(c.last_seq, 0), p.ok IS NOT NULL, p.r, p.d, \
                    (extract(epoch FROM coalesce(lm.created_at, c.created_at)) * 1000000)::int8, \
                    (SELECT count(*) FROM (SELECT 1 FROM chat_messages m WHERE m.chat_id = b.chat \
                       AND m.seq > coalesce(b.read, p.r) AND m.seq <= coalesce(b.bound, c.last_seq) \
                       AND m.sender_id <> b.usr LIMIT {SATURATED}) x), \
                    EXISTS (SELECT 1 FROM chat_messages g WHERE g.chat_id = b.chat AND g.seq = ANY(b.gone)), \
                    lm.id IS NOT NULL, {list} \
               FROM (VALUES {values}) b(i, chat, usr, read, bound, gone) \
               LEFT JOIN chats c ON c.id = b.chat \
               LEFT JOIN LATERAL (SELECT true AS ok, last_read_seq AS r, last_delivered_seq AS d \
                                    FROM chat_participants WHERE chat_id = b.chat AND user_id = b.usr) p ON true \
               LEFT JOIN LATERAL (SELECT m.* FROM chat_messages m WHERE m.chat_id = b.chat \
                                    AND m.seq <= coalesce(b.bound, c.last_seq) ORDER BY m.seq DESC LIMIT 1) lm ON true",
            list = list.join(", "),
            values = values.join(", "),
        );
        let msgs = c.simple_query(&sql).await?;
        let mut asks: Vec<Option<Ask>> = asks.into_iter().map(Some).collect();
        let mut out = Vec::with_capacity(asks.len());
        let num = |v: Option<&str>| v.and_then(|t| t.parse::<i64>().ok()).unwrap_or(0);
        for m in msgs {
            let SimpleQueryMessage::Row(row) = m else { continue };
            let i = num(row.get(0)) as usize;
            let Some(ask) = asks.get_mut(i).and_then(Option::take) else { continue };
            let last = if row.get(8) == Some("t") {
                let json = row_json(&row, &cols, 9);
                let seq = json.get("seq").and_then(serde_json::Value::as_i64).unwrap_or(0);
                let text = serde_json::to_string(&json).map_err(|_| StoreError::Unexpected("row JSON"))?;
                let raw = RawValue::from_string(text).map_err(|_| StoreError::Unexpected("row JSON"))?;
                Some((seq, Arc::from(raw)))
            } else {
                None
            };
            out.push(Answer {
                ask,
                last_seq: num(row.get(1)),
                last,
                at: num(row.get(5)),
                member: row.get(2) == Some("t"),
                read: num(row.get(3)),
                delivered: num(row.get(4)),
                unread: num(row.get(6)).clamp(0, SATURATED as i64) as u32,
                stale: row.get(7) == Some("t"),
            });
        }
        Ok(out)
    }

    /// For a subscribe by `user_id`: the chat's latest seq, if they are a
    /// participant (checked in the same statement, never from a cache).
    pub async fn subscribe_check(&self, chat_id: Uuid, user_id: Uuid) -> Result<i64, StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM chat_participants WHERE chat_id = $1 AND user_id = $2), get_latest_seq($1)",
            )
            .await?;
        let row = c.query_one(&st, &[&chat_id, &user_id]).await?;
        if !row.try_get::<_, bool>(0)? {
            return Err(StoreError::NotParticipant);
        }
        Ok(row.try_get::<_, Option<i64>>(1)?.unwrap_or(0))
    }

    /// Current watermarks of a chat's participants (of `users` when given).
    pub async fn watermarks(&self, chat_id: Uuid, users: Option<&[Uuid]>) -> Result<Vec<Participant>, StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(
                "SELECT user_id, last_delivered_seq, last_read_seq FROM chat_participants \
                 WHERE chat_id = $1 AND ($2::uuid[] IS NULL OR user_id = ANY($2)) ORDER BY user_id",
            )
            .await?;
        let users: Option<Vec<Uuid>> = users.map(<[Uuid]>::to_vec);
        let rows = c.query(&st, &[&chat_id, &users]).await?;
        rows.iter()
            .map(|r| {
                Ok(Participant {
                    chat_id,
                    user_id: r.try_get(0)?,
                    delivered_seq: r.try_get(1)?,
                    read_seq: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// Inserts a message once per (chat, client_generated_id), if the sender
    /// is a participant (checked in the same statement); a retry gets the
    /// original row back with `duplicate: true`. No retry takes a seq.
    pub async fn send(
        &self,
        chat_id: Uuid,
        sender_id: Uuid,
        client_generated_id: Uuid,
        content: &str,
    ) -> Result<SendOutcome, StoreError> {
        let c = self.client().await?;
        let insert = c
            .prepare_cached(
                "WITH member AS (SELECT 1 FROM chat_participants WHERE chat_id = $1 AND user_id = $2), \
                 ins AS (INSERT INTO chat_messages (chat_id, sender_id, content, client_generated_id) \
                         SELECT $1, $2, $3, $4 FROM member \
                         ON CONFLICT (chat_id, client_generated_id) DO NOTHING RETURNING id, seq) \
                 SELECT EXISTS (SELECT 1 FROM member), (SELECT id FROM ins), (SELECT seq FROM ins)",
            )
            .await?;
        let row = c.query_one(&insert, &[&chat_id, &sender_id, &content, &client_generated_id]).await?;
        if !row.try_get::<_, bool>(0)? {
            return Err(StoreError::NotParticipant);
        }
        if let (Some(id), Some(seq)) = (row.try_get::<_, Option<Uuid>>(1)?, row.try_get::<_, Option<i64>>(2)?) {
            return Ok(SendOutcome { id, seq, duplicate: false });
        }
        // Stored before (ON CONFLICT waited for a concurrent twin to commit).
        let existing = c
            .prepare_cached("SELECT id, seq FROM chat_messages WHERE chat_id = $1 AND client_generated_id = $2")
            .await?;
        let row = c
            .query_opt(&existing, &[&chat_id, &client_generated_id])
            .await?
            .ok_or(StoreError::Unexpected("duplicate reported but no row found"))?;
        Ok(SendOutcome { id: row.try_get(0)?, seq: row.try_get(1)?, duplicate: true })
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

/// A message row of a simple-protocol result, its columns from `first` on,
/// as JSON rendered exactly as the WAL renders it.
fn row_json(row: &tokio_postgres::SimpleQueryRow, cols: &Columns, first: usize) -> Map<String, serde_json::Value> {
    let mut json = Map::new();
    for (k, (name, oid)) in cols.iter().enumerate() {
        let v = row.get(k + first).map(|t| text_to_json(*oid, t)).unwrap_or(serde_json::Value::Null);
        json.insert(name.clone(), v);
    }
    json
}

//! event: decoded row changes seen as chat events.
//!
//! [`ChatTxn::from_transaction`] maps a committed pgoutput transaction onto the
//! two tables the relay cares about: message inserts/updates/deletes and
//! participant changes. Rows lacking a field the relay needs (a NULL `seq`
//! from before the migration, say) are skipped with a warning, never a panic.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::pgoutput::{Change, Datum, Row, Transaction};
use crate::replication::Lsn;

/// A chat message row, with its published columns as typed JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageRow {
    pub id: Uuid,
    pub chat_id: Uuid,
    pub seq: i64,
    pub sender_id: Option<Uuid>,
    pub client_generated_id: Option<Uuid>,
    pub status: Option<String>,
    /// Every published column (the `message` field of the protocol's frames).
    pub json: Map<String, Value>,
}

impl MessageRow {
    /// Builds the typed view from a JSON row (WAL or database alike).
    pub fn from_json(json: Map<String, Value>) -> Option<MessageRow> {
        let uuid = |k: &str| json.get(k).and_then(Value::as_str).and_then(|s| Uuid::parse_str(s).ok());
        Some(MessageRow {
            id: uuid("id")?,
            chat_id: uuid("chat_id")?,
            seq: json.get("seq").and_then(Value::as_i64)?,
            sender_id: uuid("sender_id"),
            client_generated_id: uuid("client_generated_id"),
            status: json.get("status").and_then(Value::as_str).map(str::to_string),
            json,
        })
    }
}

/// A participant's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Participant {
    pub chat_id: Uuid,
    pub user_id: Uuid,
    pub delivered_seq: i64,
    pub read_seq: i64,
}

impl Participant {
    fn from_row(row: &Row) -> Option<Participant> {
        let uuid = |k: &str| row.get(k).and_then(Datum::as_str).and_then(|s| Uuid::parse_str(s).ok());
        let int = |k: &str| row.get(k).and_then(Datum::as_str).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
        Some(Participant {
            chat_id: uuid("chat_id")?,
            user_id: uuid("user_id")?,
            delivered_seq: int("last_delivered_seq"),
            read_seq: int("last_read_seq"),
        })
    }
}

/// One thing that happened to a chat.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    Inserted(MessageRow),
    Updated(MessageRow),
    Deleted {
        chat_id: Uuid,
        id: Uuid,
        seq: i64,
    },
    /// A participant row appeared or changed; `previous` is the old row (None for inserts).
    ParticipantChanged {
        now: Participant,
        previous: Option<Participant>,
    },
    ParticipantRemoved {
        chat_id: Uuid,
        user_id: Uuid,
    },
    /// A published table was truncated: anything may have vanished.
    Truncated,
}

impl ChatEvent {
    /// The chat this event belongs to (None for truncation).
    pub fn chat_id(&self) -> Option<Uuid> {
        match self {
            ChatEvent::Inserted(m) | ChatEvent::Updated(m) => Some(m.chat_id),
            ChatEvent::Deleted { chat_id, .. } | ChatEvent::ParticipantRemoved { chat_id, .. } => Some(*chat_id),
            ChatEvent::ParticipantChanged { now, .. } => Some(now.chat_id),
            ChatEvent::Truncated => None,
        }
    }
}

/// A committed transaction's chat events.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatTxn {
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: DateTime<Utc>,
    pub events: Vec<ChatEvent>,
}

impl ChatTxn {
    pub fn from_transaction(txn: &Transaction) -> ChatTxn {
        let mut events = Vec::with_capacity(txn.changes.len());
        for change in &txn.changes {
            let table = change.relation().map(|r| r.name.as_str());
            let event = match (table, change) {
                (Some("chat_messages"), Change::Insert { new }) => message(new).map(ChatEvent::Inserted),
                (Some("chat_messages"), Change::Update { new, .. }) => message(new).map(ChatEvent::Updated),
                (Some("chat_messages"), Change::Delete { old }) => {
                    message(old).map(|m| ChatEvent::Deleted { chat_id: m.chat_id, id: m.id, seq: m.seq })
                }
                (Some("chat_participants"), Change::Insert { new }) => {
                    Participant::from_row(new).map(|now| ChatEvent::ParticipantChanged { now, previous: None })
                }
                (Some("chat_participants"), Change::Update { old, new }) => Participant::from_row(new).map(|now| {
                    ChatEvent::ParticipantChanged { now, previous: old.as_ref().and_then(Participant::from_row) }
                }),
                (Some("chat_participants"), Change::Delete { old }) => Participant::from_row(old)
                    .map(|p| ChatEvent::ParticipantRemoved { chat_id: p.chat_id, user_id: p.user_id }),
                (_, Change::Truncate { .. }) => Some(ChatEvent::Truncated),
                _ => continue,
            };
            match event {
                Some(e) => events.push(e),
                None => {
                    tracing::warn!(table, lsn = %txn.commit_lsn, "skipping a change that lacks ids or seq")
                }
            }
        }
        ChatTxn { commit_lsn: txn.commit_lsn, end_lsn: txn.end_lsn, commit_time: txn.commit_time, events }
    }
}

fn message(row: &Row) -> Option<MessageRow> {
    MessageRow::from_json(row.to_json())
}

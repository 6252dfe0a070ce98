//! event: decoded row changes seen as chat events.
//!
//! [`push_events`] maps each change of a committed pgoutput transaction onto the
//! two tables the relay cares about: message inserts/updates/deletes and
//! participant changes. Rows lacking a field the relay needs (a NULL `seq`
//! from before the migration, say) are skipped with a warning, never a panic.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::pgoutput::{datum_to_json, Change, Datum, Row};

/// Every published column of a message row: the `message` field of the
/// protocol's frames. Rows from the WAL stay as decoded and are turned into
/// JSON only when a frame is encoded (never, for chats nobody watches); rows
/// read from the table arrive as JSON already. Both serialise identically.
#[derive(Debug, Clone, PartialEq)]
pub enum RowBody {
    Wal(Row),
    Json(Map<String, Value>),
}

impl Serialize for RowBody {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RowBody::Json(map) => map.serialize(s),
            RowBody::Wal(row) => {
                let cols = row.relation.columns.iter().zip(&row.values).filter(|(_, d)| **d != Datum::Unchanged);
                let mut m = s.serialize_map(None)?;
                for (col, datum) in cols {
                    m.serialize_entry(col.name.as_str(), &datum_to_json(col.type_oid, datum))?;
                }
                m.end()
            }
        }
    }
}

impl RowBody {
    /// The columns as a JSON object (allocates; for tests and tools).
    pub fn to_json(&self) -> Map<String, Value> {
        match self {
            RowBody::Json(m) => m.clone(),
            RowBody::Wal(row) => row.to_json(),
        }
    }
}

/// A chat message row: the fields the relay reasons about, plus its columns.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageRow {
    pub id: Uuid,
    pub chat_id: Uuid,
    pub seq: i64,
    pub sender_id: Option<Uuid>,
    pub client_generated_id: Option<Uuid>,
    pub status: Option<String>,
    pub body: RowBody,
}

impl MessageRow {
    /// Builds the typed view from a JSON row (read from the table).
    pub fn from_json(json: Map<String, Value>) -> Option<MessageRow> {
        let uuid = |k: &str| json.get(k).and_then(Value::as_str).and_then(|s| Uuid::parse_str(s).ok());
        Some(MessageRow {
            id: uuid("id")?,
            chat_id: uuid("chat_id")?,
            seq: json.get("seq").and_then(Value::as_i64)?,
            sender_id: uuid("sender_id"),
            client_generated_id: uuid("client_generated_id"),
            status: json.get("status").and_then(Value::as_str).map(str::to_string),
            body: RowBody::Json(json),
        })
    }

    /// Builds the typed view from a decoded WAL row, without converting the
    /// other columns.
    pub fn from_wal(row: Row) -> Option<MessageRow> {
        let text = |k: &str| row.get(k).and_then(Datum::as_str);
        let uuid = |k: &str| text(k).and_then(|s| Uuid::parse_str(s).ok());
        Some(MessageRow {
            id: uuid("id")?,
            chat_id: uuid("chat_id")?,
            seq: text("seq").and_then(|s| s.parse().ok())?,
            sender_id: uuid("sender_id"),
            client_generated_id: uuid("client_generated_id"),
            status: text("status").map(str::to_string),
            body: RowBody::Wal(row),
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

#[cfg(any(test, fuzzing))]
pub use whole::ChatTxn;

#[cfg(any(test, fuzzing))]
mod whole {
    use chrono::{DateTime, Utc};

    use super::{push_events, ChatEvent};
    use crate::lsn::Lsn;
    use crate::pgoutput::Transaction;

    /// A committed transaction's chat events, all at once (tests and fuzzing;
    /// the pipeline takes them one by one, see [`push_events`]).
    #[derive(Debug, Clone, PartialEq)]
    pub struct ChatTxn {
        pub commit_lsn: Lsn,
        pub end_lsn: Lsn,
        pub commit_time: DateTime<Utc>,
        pub events: Vec<ChatEvent>,
    }

    impl ChatTxn {
        /// All of a transaction's events in memory at once (tests and tools; the
        /// relay's pipeline takes them one by one, see [`push_events`]).
        pub fn from_transaction(txn: Transaction) -> ChatTxn {
            let (commit_lsn, end_lsn, commit_time) = (txn.commit_lsn, txn.end_lsn, txn.commit_time);
            let mut events = Vec::with_capacity(txn.changes.len());
            for change in txn.into_changes() {
                match change {
                    Ok(change) => {
                        if let Err(table) = push_events(change, &mut events) {
                            tracing::warn!(table, lsn = %commit_lsn, "skipping a change that lacks ids or seq");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, lsn = %commit_lsn, "cannot read a spilled change"),
                }
            }
            ChatTxn { commit_lsn, end_lsn, commit_time, events }
        }
    }
}

/// Appends the chat events one row change stands for (none for other
/// tables; two when a row moves between chats or users). Err names the
/// table of a row that lacks the ids or seq the relay needs.
pub fn push_events(change: Change, out: &mut Vec<ChatEvent>) -> Result<(), Option<String>> {
    let table = change.relation().map(|r| r.name.clone());
    let missing = || table.clone();
    match (table.as_deref(), change) {
        (Some("chat_messages"), Change::Insert { new }) => {
            out.push(ChatEvent::Inserted(message(new).ok_or_else(missing)?))
        }
        (Some("chat_messages"), Change::Update { old, new }) => {
            let new = message(new).ok_or_else(missing)?;
            // A message moved to another chat is gone from the old one.
            if let Some(old) = old.and_then(message).filter(|o| o.chat_id != new.chat_id) {
                out.push(ChatEvent::Deleted { chat_id: old.chat_id, id: old.id, seq: old.seq });
            }
            out.push(ChatEvent::Updated(new));
        }
        (Some("chat_messages"), Change::Delete { old }) => {
            let m = message(old).ok_or_else(missing)?;
            out.push(ChatEvent::Deleted { chat_id: m.chat_id, id: m.id, seq: m.seq });
        }
        (Some("chat_participants"), Change::Insert { new }) => {
            let now = Participant::from_row(&new).ok_or_else(missing)?;
            out.push(ChatEvent::ParticipantChanged { now, previous: None });
        }
        (Some("chat_participants"), Change::Update { old, new }) => {
            let now = Participant::from_row(&new).ok_or_else(missing)?;
            let previous = old.as_ref().and_then(Participant::from_row);
            match previous {
                // The row now names another user or chat: the old pair is
                // removed as surely as by a DELETE.
                Some(p) if (p.chat_id, p.user_id) != (now.chat_id, now.user_id) => {
                    out.push(ChatEvent::ParticipantRemoved { chat_id: p.chat_id, user_id: p.user_id });
                    out.push(ChatEvent::ParticipantChanged { now, previous: None });
                }
                previous => out.push(ChatEvent::ParticipantChanged { now, previous }),
            }
        }
        (Some("chat_participants"), Change::Delete { old }) => {
            let p = Participant::from_row(&old).ok_or_else(missing)?;
            out.push(ChatEvent::ParticipantRemoved { chat_id: p.chat_id, user_id: p.user_id });
        }
        (_, Change::Truncate { .. }) => out.push(ChatEvent::Truncated),
        _ => {}
    }
    Ok(())
}

fn message(row: Row) -> Option<MessageRow> {
    MessageRow::from_wal(row)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::pgoutput::{Column, Relation};

    #[test]
    fn wal_rows_serialise_like_their_json() {
        let col = |name: &str, oid| Column { name: name.into(), type_oid: oid, type_modifier: -1, key: false };
        let relation = Arc::new(Relation {
            oid: 1,
            namespace: "public".into(),
            name: "chat_messages".into(),
            replica_identity: b'f',
            columns: vec![
                col("id", 2950),
                col("chat_id", 2950),
                col("seq", 20),
                col("content", 25),
                col("meta", 3802),
                col("x", 25),
            ],
        });
        let t = |s: &'static str| Datum::Text(Bytes::from_static(s.as_bytes()));
        let row = Row {
            relation,
            values: vec![
                t("0b7c1a52-5f0e-4a65-9d9c-6b1a2f0a9b11"),
                t("1b7c1a52-5f0e-4a65-9d9c-6b1a2f0a9b11"),
                t("7"),
                t("he said \"hi\"\n"),
                t(r#"{"b": 1, "a": [true]}"#),
                Datum::Null,
            ],
        };
        let msg = MessageRow::from_wal(row.clone()).unwrap();
        assert_eq!((msg.seq, msg.client_generated_id), (7, None));
        let wal = serde_json::to_string(&RowBody::Wal(row.clone())).unwrap();
        let json = serde_json::to_string(&RowBody::Json(row.to_json())).unwrap();
        assert_eq!(wal, json);
        assert!(wal.starts_with(r#"{"id":"0b7c"#), "columns in table order: {wal}");
    }

    fn participant_row(chat: &str, user: &str) -> Row {
        let col = |name: &str| Column { name: name.into(), type_oid: 2950, type_modifier: -1, key: true };
        let relation = Arc::new(Relation {
            oid: 2,
            namespace: "public".into(),
            name: "chat_participants".into(),
            replica_identity: b'f',
            columns: vec![col("chat_id"), col("user_id")],
        });
        let t = |s: &str| Datum::Text(Bytes::copy_from_slice(s.as_bytes()));
        Row { relation, values: vec![t(chat), t(user)] }
    }

    #[test]
    fn a_participant_row_that_moves_removes_the_old_pair_first() {
        let (c1, c2) = ("0b7c1a52-5f0e-4a65-9d9c-6b1a2f0a9b11", "1b7c1a52-5f0e-4a65-9d9c-6b1a2f0a9b11");
        let (u1, u2) = ("2b7c1a52-5f0e-4a65-9d9c-6b1a2f0a9b11", "3b7c1a52-5f0e-4a65-9d9c-6b1a2f0a9b11");
        let id = |s: &str| Uuid::parse_str(s).unwrap();
        for (old, new) in [((c1, u1), (c1, u2)), ((c1, u1), (c2, u1))] {
            let change =
                Change::Update { old: Some(participant_row(old.0, old.1)), new: participant_row(new.0, new.1) };
            let mut out = Vec::new();
            push_events(change, &mut out).unwrap();
            assert_eq!(out.len(), 2, "{out:?}");
            assert_eq!(out[0], ChatEvent::ParticipantRemoved { chat_id: id(old.0), user_id: id(old.1) });
            assert!(matches!(&out[1], ChatEvent::ParticipantChanged { now, previous: None }
                if now.chat_id == id(new.0) && now.user_id == id(new.1)));
        }
        // Same pair (watermarks moved): one change, with its previous row.
        let mut out = Vec::new();
        push_events(Change::Update { old: Some(participant_row(c1, u1)), new: participant_row(c1, u1) }, &mut out)
            .unwrap();
        assert!(matches!(&out[..], [ChatEvent::ParticipantChanged { previous: Some(_), .. }]));
    }
}

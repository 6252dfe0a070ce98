//! protocol: the WebSocket protocol's frames, typed (docs/protocol.md).
//!
//! The one place that knows what a frame looks like on the wire. Client
//! frames are parsed into a [`Request`] ([`parse`]: by hand, so that a bad
//! frame is answered with the field at fault); every server frame is a
//! [`ServerFrame`], serialised by serde with its `type` tag, and an event
//! that many connections receive is encoded once into an [`EventFrame`].
//! The HTTP error body of a refused upgrade is [`HttpError`]. Nothing else
//! in the relay writes frame JSON.

use axum::extract::ws::Utf8Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::event::{MessageRow, Participant, RowBody};
use crate::lsn::Position;

/// A parsed client frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Subscribe {
        chat_id: Uuid,
        after_seq: Option<i64>,
    },
    Unsubscribe {
        chat_id: Uuid,
    },
    Send {
        chat_id: Uuid,
        client_generated_id: Uuid,
        content: String,
    },
    Ack {
        chat_id: Uuid,
        seq: i64,
    },
    Read {
        chat_id: Uuid,
        seq: i64,
    },
    Auth {
        access_token: String,
    },
    History {
        chat_id: Uuid,
        before_seq: Option<i64>,
        limit: i64,
    },
    Typing {
        chat_id: Uuid,
    },
    /// Start (or restart) the inbox with its first page, or, with `before`,
    /// the next older page.
    Inbox {
        limit: usize,
        before: Option<String>,
    },
    InboxOff,
    Ping,
}

impl Request {
    /// Whether the request costs a database query or a cache entry and is
    /// limited per user (`send` has a limit of its own); with its chat, if
    /// it names one.
    pub fn costly(&self) -> Option<Option<Uuid>> {
        match self {
            Request::Subscribe { chat_id, .. }
            | Request::History { chat_id, .. }
            | Request::Ack { chat_id, .. }
            | Request::Read { chat_id, .. } => Some(Some(*chat_id)),
            Request::Inbox { .. } => Some(None),
            Request::Unsubscribe { .. }
            | Request::Send { .. }
            | Request::Auth { .. }
            | Request::Typing { .. }
            | Request::InboxOff
            | Request::Ping => None,
        }
    }
}

/// What kind of event a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Message,
    Update,
    Delete,
    Receipt,
    /// Ephemeral: someone is typing (`subject`); `seq` is 0.
    Typing,
}

/// One event, encoded once, shared by all its recipients.
#[derive(Debug)]
pub struct EventFrame {
    pub chat_id: Uuid,
    pub seq: i64,
    pub kind: FrameKind,
    /// Commit time of the transaction (None for rows read from the table).
    pub commit_time: Option<DateTime<Utc>>,
    /// Messages: the sender, so auto-delivered marking can skip them.
    /// Deletes: the deleted row's id. Receipts: the participant.
    pub subject: Option<Uuid>,
    pub text: Utf8Bytes,
    /// The change it comes from, when it comes from the WAL (names it
    /// between replicas; not sent to clients).
    pub position: Option<Position>,
}

impl EventFrame {
    pub fn message(row: &MessageRow, commit_time: Option<DateTime<Utc>>) -> EventFrame {
        let frame = ServerFrame::Message { chat_id: row.chat_id, seq: row.seq, message: &row.body };
        Self::row(FrameKind::Message, frame, row, commit_time)
    }

    pub fn update(row: &MessageRow, commit_time: Option<DateTime<Utc>>) -> EventFrame {
        let frame = ServerFrame::Update { chat_id: row.chat_id, seq: row.seq, message: &row.body };
        Self::row(FrameKind::Update, frame, row, commit_time)
    }

    fn row(kind: FrameKind, frame: ServerFrame, row: &MessageRow, commit_time: Option<DateTime<Utc>>) -> EventFrame {
        let text = frame.encode(None);
        EventFrame {
            chat_id: row.chat_id,
            seq: row.seq,
            kind,
            commit_time,
            subject: row.sender_id,
            text,
            position: None,
        }
    }

    pub fn delete(chat_id: Uuid, id: Uuid, seq: i64, commit_time: Option<DateTime<Utc>>) -> EventFrame {
        let text = ServerFrame::Delete { chat_id, seq, id }.encode(None);
        EventFrame { chat_id, seq, kind: FrameKind::Delete, commit_time, subject: Some(id), text, position: None }
    }

    pub fn typing(chat_id: Uuid, user_id: Uuid) -> EventFrame {
        let text = ServerFrame::Typing { chat_id, user_id }.encode(None);
        EventFrame {
            chat_id,
            seq: 0,
            kind: FrameKind::Typing,
            commit_time: None,
            subject: Some(user_id),
            text,
            position: None,
        }
    }

    pub fn receipt(p: &Participant, commit_time: Option<DateTime<Utc>>) -> EventFrame {
        let frame = ServerFrame::Receipt {
            chat_id: p.chat_id,
            user_id: p.user_id,
            delivered_seq: p.delivered_seq,
            read_seq: p.read_seq,
        };
        EventFrame {
            chat_id: p.chat_id,
            seq: p.delivered_seq.max(p.read_seq),
            kind: FrameKind::Receipt,
            commit_time,
            subject: Some(p.user_id),
            text: frame.encode(None),
            position: None,
        }
    }

    /// The same frame, naming the change it comes from.
    pub fn at(mut self, position: Option<Position>) -> EventFrame {
        self.position = position;
        self
    }
}

/// `inbox` page size when the client names none, and the most it may ask.
pub const INBOX_DEFAULT: usize = 50;
pub const INBOX_MAX: usize = 200;

/// A chat summary (protocol 1.2, *Inbox*): what a conversation list shows
/// for one chat, for one user.
#[derive(Debug, Serialize)]
pub struct ChatSummary<'a> {
    pub chat_id: Uuid,
    pub last_seq: i64,
    pub last_message: Option<&'a serde_json::value::RawValue>,
    pub last_activity: String,
    pub unread: u32,
    pub read_seq: i64,
    pub delivered_seq: i64,
}

/// A `chat` frame's part that every user of the chat shares (the chat, its
/// newest row, its activity), encoded once per change; [`ChatFrameHead::frame`]
/// completes it per user. The frame is the summary's fields with `type` and
/// `unread_chats`.
pub struct ChatFrameHead(String);

impl ChatFrameHead {
    pub fn new(chat_id: Uuid, last_seq: i64, last_message: Option<&serde_json::value::RawValue>, at: i64) -> Self {
        #[derive(Serialize)]
        struct Head<'a> {
            #[serde(rename = "type")]
            ty: &'static str,
            chat_id: Uuid,
            last_seq: i64,
            last_message: Option<&'a serde_json::value::RawValue>,
            last_activity: String,
        }
        let head = Head { ty: "chat", chat_id, last_seq, last_message, last_activity: rfc3339_micros(at) };
        // Serialising plain data into a String cannot fail.
        let mut text = serde_json::to_string(&head).unwrap_or_default();
        text.pop(); // the closing brace: the user's fields follow
        ChatFrameHead(text)
    }

    /// The whole frame for one user.
    pub fn frame(&self, unread: u32, read_seq: i64, delivered_seq: i64, unread_chats: u32) -> Utf8Bytes {
        use std::fmt::Write;
        let mut text = String::with_capacity(self.0.len() + 96);
        text.push_str(&self.0);
        let _ = write!(
            text,
            r#","unread":{unread},"read_seq":{read_seq},"delivered_seq":{delivered_seq},"unread_chats":{unread_chats}}}"#
        );
        text.into()
    }
}

/// RFC 3339 for Unix microseconds, spelled as message timestamps are.
pub fn rfc3339_micros(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// `history` page size when the client names none, and the most it may ask.
pub const HISTORY_DEFAULT: i64 = 50;
pub const HISTORY_MAX: i64 = 200;

/// A frame that could not be understood: answered with `bad_request`.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    pub message: String,
    pub reference: Option<Value>,
}

/// Parses one text frame into its request and its `ref` (if any).
pub fn parse(text: &str) -> Result<(Request, Option<Value>), BadRequest> {
    let bad = |message: String, reference: Option<Value>| BadRequest { message, reference };
    let value: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}"), None))?;
    let Value::Object(obj) = value else {
        return Err(bad("a frame must be a JSON object".into(), None));
    };
    let reference = match obj.get("ref") {
        None | Some(Value::Null) => None,
        Some(r @ (Value::String(_) | Value::Number(_))) => Some(r.clone()),
        Some(_) => return Err(bad("ref must be a string or a number".into(), None)),
    };
    let fail = |m: String| bad(m, reference.clone());
    let ty = obj.get("type").and_then(Value::as_str).ok_or_else(|| fail("missing or non-string field type".into()))?;
    let request = match ty {
        "subscribe" => Request::Subscribe {
            chat_id: uuid(&obj, "chat_id").map_err(fail)?,
            after_seq: optional(&obj, "after_seq", seq).map_err(fail)?,
        },
        "unsubscribe" => Request::Unsubscribe { chat_id: uuid(&obj, "chat_id").map_err(fail)? },
        "send" => Request::Send {
            chat_id: uuid(&obj, "chat_id").map_err(fail)?,
            client_generated_id: uuid(&obj, "client_generated_id").map_err(fail)?,
            content: string(&obj, "content").map_err(fail)?,
        },
        "ack" => Request::Ack { chat_id: uuid(&obj, "chat_id").map_err(fail)?, seq: seq(&obj, "seq").map_err(fail)? },
        "read" => Request::Read { chat_id: uuid(&obj, "chat_id").map_err(fail)?, seq: seq(&obj, "seq").map_err(fail)? },
        "auth" => Request::Auth { access_token: string(&obj, "access_token").map_err(fail)? },
        "history" => Request::History {
            chat_id: uuid(&obj, "chat_id").map_err(fail)?,
            before_seq: optional(&obj, "before_seq", seq).map_err(fail)?,
            limit: match optional(&obj, "limit", seq).map_err(fail)? {
                None => HISTORY_DEFAULT,
                Some(0) => return Err(fail("field limit must be at least 1".into())),
                Some(n) => n.min(HISTORY_MAX),
            },
        },
        "typing" => Request::Typing { chat_id: uuid(&obj, "chat_id").map_err(fail)? },
        "inbox" => Request::Inbox {
            limit: match optional(&obj, "limit", seq).map_err(fail)? {
                None => INBOX_DEFAULT,
                Some(0) => return Err(fail("field limit must be at least 1".into())),
                Some(n) => (n as usize).min(INBOX_MAX),
            },
            before: optional(&obj, "before", string).map_err(fail)?,
        },
        "inbox_off" => Request::InboxOff,
        "ping" => Request::Ping,
        other => return Err(fail(format!("unknown type {other:?}"))),
    };
    Ok((request, reference))
}

/// A field that may be absent or null.
fn optional<T>(
    obj: &Map<String, Value>,
    field: &str,
    read: fn(&Map<String, Value>, &str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => read(obj, field).map(Some),
    }
}

fn uuid(obj: &Map<String, Value>, field: &str) -> Result<Uuid, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(format!("missing field {field}")),
        Some(Value::String(s)) => Uuid::parse_str(s).map_err(|_| format!("field {field} must be a uuid")),
        Some(_) => Err(format!("field {field} must be a uuid string")),
    }
}

fn seq(obj: &Map<String, Value>, field: &str) -> Result<i64, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(format!("missing field {field}")),
        Some(v) => {
            v.as_i64().filter(|n| *n >= 0).ok_or_else(|| format!("field {field} must be a non-negative integer"))
        }
    }
}

fn string(obj: &Map<String, Value>, field: &str) -> Result<String, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(format!("missing field {field}")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("field {field} must be a string")),
    }
}

/// Error codes of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    /// In the protocol; no request of this relay answers it today.
    #[allow(dead_code)]
    NotFound,
    RateLimited,
    Internal,
    Unavailable,
}

/// Why a subscription ended without the client asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnsubscribeReason {
    /// The user is no longer a participant.
    Forbidden,
}

/// Every frame the server writes, by its `type`. Event frames that many
/// connections share are encoded once into an [`EventFrame`]; everything
/// else is encoded per connection with [`ServerFrame::encode`].
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Subscribed {
        chat_id: Uuid,
        latest_seq: i64,
        online: &'a [Uuid],
        /// More users were online than `online` lists.
        #[serde(skip_serializing_if = "is_false")]
        online_truncated: bool,
    },
    Unsubscribed {
        chat_id: Uuid,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<UnsubscribeReason>,
    },
    Message {
        chat_id: Uuid,
        seq: i64,
        message: &'a RowBody,
    },
    Update {
        chat_id: Uuid,
        seq: i64,
        message: &'a RowBody,
    },
    Delete {
        chat_id: Uuid,
        seq: i64,
        id: Uuid,
    },
    Receipt {
        chat_id: Uuid,
        user_id: Uuid,
        delivered_seq: i64,
        read_seq: i64,
    },
    Typing {
        chat_id: Uuid,
        user_id: Uuid,
    },
    Presence {
        chat_id: Uuid,
        user_id: Uuid,
        online: bool,
    },
    Sent {
        chat_id: Uuid,
        client_generated_id: Uuid,
        id: Uuid,
        seq: i64,
        duplicate: bool,
    },
    History {
        chat_id: Uuid,
        messages: Vec<&'a RowBody>,
        has_more: bool,
    },
    Inbox {
        chats: &'a [ChatSummary<'a>],
        next: Option<&'a str>,
        unread_chats: u32,
    },
    ChatRemoved {
        chat_id: Uuid,
    },
    Ok,
    Pong,
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        chat_id: Option<Uuid>,
        /// `rate_limited` only: when to try again.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A frame with the `ref` of the request it answers.
#[derive(Serialize)]
struct Answer<'a> {
    #[serde(flatten)]
    frame: &'a ServerFrame<'a>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Value>,
}

impl ServerFrame<'_> {
    /// The frame's text, carrying `reference` as `ref` when given.
    pub fn encode(&self, reference: Option<&Value>) -> Utf8Bytes {
        // Serialising plain data into a String cannot fail.
        serde_json::to_string(&Answer { frame: self, reference }).unwrap_or_default().into()
    }

    /// An `error` frame.
    pub fn error(code: ErrorCode, message: &str, chat_id: Option<Uuid>) -> ServerFrame<'_> {
        ServerFrame::Error { code, message, chat_id, retry_after_ms: None }
    }

    /// `rate_limited`, saying when to try again.
    pub fn rate_limited(message: &str, chat_id: Option<Uuid>, retry_after: std::time::Duration) -> ServerFrame<'_> {
        let ms = retry_after.as_millis().clamp(1, u64::MAX as u128) as u64;
        ServerFrame::Error { code: ErrorCode::RateLimited, message, chat_id, retry_after_ms: Some(ms) }
    }
}

/// The JSON body of a refused HTTP request (`/v1/ws` before the upgrade).
#[derive(Debug, Serialize)]
pub struct HttpError<'a> {
    /// `unauthorized`, `unavailable`, `too_many_connections`.
    pub error: &'static str,
    pub message: &'a str,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_every_request() {
        let c = Uuid::new_v4();
        let (r, reference) =
            parse(&format!(r#"{{"type":"subscribe","chat_id":"{c}","after_seq":5,"ref":7}}"#)).unwrap();
        assert_eq!(r, Request::Subscribe { chat_id: c, after_seq: Some(5) });
        assert_eq!(reference, Some(json!(7)));
        assert_eq!(
            parse(&format!(r#"{{"type":"subscribe","chat_id":"{c}"}}"#)).unwrap().0,
            Request::Subscribe { chat_id: c, after_seq: None }
        );
        assert_eq!(parse(r#"{"type":"ping","ref":"a"}"#).unwrap(), (Request::Ping, Some(json!("a"))));
        assert!(matches!(
            parse(&format!(r#"{{"type":"ack","chat_id":"{c}","seq":3}}"#)).unwrap().0,
            Request::Ack { seq: 3, .. }
        ));
        assert_eq!(
            parse(&format!(r#"{{"type":"history","chat_id":"{c}"}}"#)).unwrap().0,
            Request::History { chat_id: c, before_seq: None, limit: HISTORY_DEFAULT }
        );
        assert_eq!(
            parse(&format!(r#"{{"type":"history","chat_id":"{c}","before_seq":9,"limit":500}}"#)).unwrap().0,
            Request::History { chat_id: c, before_seq: Some(9), limit: HISTORY_MAX }
        );
        assert!(parse(&format!(r#"{{"type":"history","chat_id":"{c}","limit":0}}"#)).is_err());
        assert_eq!(
            parse(&format!(r#"{{"type":"typing","chat_id":"{c}"}}"#)).unwrap().0,
            Request::Typing { chat_id: c }
        );
        assert_eq!(parse(r#"{"type":"inbox"}"#).unwrap().0, Request::Inbox { limit: INBOX_DEFAULT, before: None });
        assert_eq!(
            parse(r#"{"type":"inbox","limit":1000,"before":"12_x","ref":1}"#).unwrap().0,
            Request::Inbox { limit: INBOX_MAX, before: Some("12_x".into()) }
        );
        assert_eq!(parse(r#"{"type":"inbox","before":null}"#).unwrap().0, Request::Inbox { limit: 50, before: None });
        assert!(parse(r#"{"type":"inbox","limit":0}"#).unwrap_err().message.contains("at least 1"));
        assert!(parse(r#"{"type":"inbox","before":5}"#).unwrap_err().message.contains("before"));
        assert_eq!(parse(r#"{"type":"inbox_off"}"#).unwrap().0, Request::InboxOff);
    }

    #[test]
    fn summaries_are_encoded_as_the_protocol_says() {
        let c = Uuid::new_v4();
        let row = serde_json::value::RawValue::from_string(r#"{"seq":3,"content":"hi"}"#.into()).unwrap();
        let s = ChatSummary {
            chat_id: c,
            last_seq: 3,
            last_message: Some(&row),
            last_activity: rfc3339_micros(1_764_464_400_000_100),
            unread: 2,
            read_seq: 1,
            delivered_seq: 3,
        };
        let head = ChatFrameHead::new(c, 3, Some(&row), 1_764_464_400_000_100);
        let v: Value = serde_json::from_str(&head.frame(2, 1, 3, 4)).unwrap();
        assert_eq!(
            v,
            json!({"type": "chat", "chat_id": c, "last_seq": 3, "last_message": {"seq": 3, "content": "hi"},
                   "last_activity": "2025-11-30T01:00:00.000100Z", "unread": 2, "read_seq": 1, "delivered_seq": 3,
                   "unread_chats": 4})
        );
        let list = [s];
        let page: Value = serde_json::from_str(
            &ServerFrame::Inbox { chats: &list, next: None, unread_chats: 4 }.encode(Some(&json!("r"))),
        )
        .unwrap();
        assert_eq!(
            (page["type"].as_str(), page["next"].is_null(), page["ref"].as_str()),
            (Some("inbox"), true, Some("r"))
        );
        assert_eq!(page["chats"][0]["last_message"]["content"], "hi");
        let gone: Value = serde_json::from_str(&ServerFrame::ChatRemoved { chat_id: c }.encode(None)).unwrap();
        assert_eq!(gone, json!({"type": "chat_removed", "chat_id": c}));
    }

    #[test]
    fn bad_frames_say_why_and_keep_ref() {
        let c = Uuid::new_v4();
        for (frame, why) in [
            ("nope", "not JSON"),
            ("[1]", "JSON object"),
            (r#"{"type":1}"#, "type"),
            (r#"{"type":"dance"}"#, "unknown type"),
            (r#"{"type":"subscribe"}"#, "missing field chat_id"),
            (r#"{"type":"subscribe","chat_id":"x"}"#, "uuid"),
            (r#"{"type":"ping","ref":[1]}"#, "ref must be"),
        ] {
            let e = parse(frame).unwrap_err();
            assert!(e.message.contains(why), "{frame}: {}", e.message);
        }
        let e = parse(&format!(r#"{{"type":"ack","chat_id":"{c}","seq":-1,"ref":"r1"}}"#)).unwrap_err();
        assert!(e.message.contains("non-negative"));
        assert_eq!(e.reference, Some(json!("r1")));
        let e = parse(&format!(r#"{{"type":"send","chat_id":"{c}","client_generated_id":"{c}","content":5}}"#))
            .unwrap_err();
        assert!(e.message.contains("content"));
    }

    #[test]
    fn answers_carry_ref() {
        let s = ServerFrame::error(ErrorCode::Forbidden, "no", Some(Uuid::nil())).encode(Some(&json!(1)));
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["code"], "forbidden");
        assert_eq!(v["ref"], 1);
        assert_eq!(v["chat_id"], Uuid::nil().to_string());
    }

    /// Every server frame, as the protocol spells it: optional fields are
    /// left out, never null.
    #[test]
    fn server_frames_encode_as_the_protocol_says() {
        let c = Uuid::nil();
        let enc = |f: ServerFrame| -> Value { serde_json::from_str(&f.encode(None)).unwrap() };
        let z = c.to_string();
        assert_eq!(
            enc(ServerFrame::Subscribed { chat_id: c, latest_seq: 4, online: &[c], online_truncated: false }),
            json!({"type": "subscribed", "chat_id": z, "latest_seq": 4, "online": [z]})
        );
        assert_eq!(
            enc(ServerFrame::Subscribed { chat_id: c, latest_seq: 4, online: &[], online_truncated: true }),
            json!({"type": "subscribed", "chat_id": z, "latest_seq": 4, "online": [], "online_truncated": true})
        );
        assert_eq!(
            enc(ServerFrame::Unsubscribed { chat_id: c, reason: None }),
            json!({"type": "unsubscribed", "chat_id": z})
        );
        assert_eq!(
            enc(ServerFrame::Unsubscribed { chat_id: c, reason: Some(UnsubscribeReason::Forbidden) }),
            json!({"type": "unsubscribed", "chat_id": z, "reason": "forbidden"})
        );
        assert_eq!(
            enc(ServerFrame::Presence { chat_id: c, user_id: c, online: false }),
            json!({"type": "presence", "chat_id": z, "user_id": z, "online": false})
        );
        assert_eq!(
            enc(ServerFrame::Sent { chat_id: c, client_generated_id: c, id: c, seq: 9, duplicate: true }),
            json!({"type": "sent", "chat_id": z, "client_generated_id": z, "id": z, "seq": 9, "duplicate": true})
        );
        assert_eq!(
            enc(ServerFrame::History { chat_id: c, messages: vec![], has_more: false }),
            json!({"type": "history", "chat_id": z, "messages": [], "has_more": false})
        );
        assert_eq!(enc(ServerFrame::Ok), json!({"type": "ok"}));
        assert_eq!(enc(ServerFrame::Pong), json!({"type": "pong"}));
        assert_eq!(
            enc(ServerFrame::error(ErrorCode::BadRequest, "why", None)),
            json!({"type": "error", "code": "bad_request", "message": "why"})
        );
        assert_eq!(
            enc(ServerFrame::rate_limited("slow down", Some(c), std::time::Duration::from_micros(10))),
            json!({"type": "error", "code": "rate_limited", "message": "slow down", "chat_id": z, "retry_after_ms": 1})
        );
        let p = Participant { chat_id: c, user_id: c, delivered_seq: 3, read_seq: 2 };
        let receipt: Value = serde_json::from_str(&EventFrame::receipt(&p, None).text).unwrap();
        assert_eq!(receipt, json!({"type": "receipt", "chat_id": z, "user_id": z, "delivered_seq": 3, "read_seq": 2}));
        let delete: Value = serde_json::from_str(&EventFrame::delete(c, c, 5, None).text).unwrap();
        assert_eq!(delete, json!({"type": "delete", "chat_id": z, "seq": 5, "id": z}));
        let typing: Value = serde_json::from_str(&EventFrame::typing(c, c).text).unwrap();
        assert_eq!(typing, json!({"type": "typing", "chat_id": z, "user_id": z}));
        assert_eq!(
            serde_json::to_value(HttpError { error: "unauthorized", message: "no token" }).unwrap(),
            json!({"error": "unauthorized", "message": "no token"})
        );
    }

    #[test]
    fn an_event_frame_is_the_row_under_its_type() {
        let mut body = Map::new();
        body.insert("seq".into(), json!(7));
        body.insert("content".into(), json!("hi"));
        let row = MessageRow {
            id: Uuid::nil(),
            chat_id: Uuid::nil(),
            seq: 7,
            sender_id: None,
            client_generated_id: None,
            status: None,
            body: RowBody::Json(body),
        };
        let text = EventFrame::message(&row, None).text;
        assert_eq!(
            text.as_str(),
            format!(r#"{{"type":"message","chat_id":"{}","seq":7,"message":{{"seq":7,"content":"hi"}}}}"#, Uuid::nil())
        );
        let v: Value = serde_json::from_str(&EventFrame::update(&row, None).text).unwrap();
        assert_eq!(v["type"], "update");
    }
}

//! Client frames in, answer frames out (protocol version 1.1).

use axum::extract::ws::Utf8Bytes;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::event::{MessageRow, Participant, RowBody};
use uuid::Uuid;

/// A parsed client frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Subscribe { chat_id: Uuid, after_seq: Option<i64> },
    Unsubscribe { chat_id: Uuid },
    Send { chat_id: Uuid, client_generated_id: Uuid, content: String },
    Ack { chat_id: Uuid, seq: i64 },
    Read { chat_id: Uuid, seq: i64 },
    Auth { access_token: String },
    History { chat_id: Uuid, before_seq: Option<i64>, limit: i64 },
    Typing { chat_id: Uuid },
    Ping,
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
}

impl EventFrame {
    pub fn message(row: &MessageRow, commit_time: Option<DateTime<Utc>>) -> EventFrame {
        Self::row(FrameKind::Message, "message", row, commit_time)
    }

    pub fn update(row: &MessageRow, commit_time: Option<DateTime<Utc>>) -> EventFrame {
        Self::row(FrameKind::Update, "update", row, commit_time)
    }

    fn row(kind: FrameKind, ty: &'static str, row: &MessageRow, commit_time: Option<DateTime<Utc>>) -> EventFrame {
        #[derive(serde::Serialize)]
        struct RowFrame<'a> {
            #[serde(rename = "type")]
            ty: &'static str,
            chat_id: Uuid,
            seq: i64,
            message: &'a RowBody,
        }
        let frame = RowFrame { ty, chat_id: row.chat_id, seq: row.seq, message: &row.body };
        // Serialising plain data into a String cannot fail.
        let text = serde_json::to_string(&frame).unwrap_or_default();
        EventFrame { chat_id: row.chat_id, seq: row.seq, kind, commit_time, subject: row.sender_id, text: text.into() }
    }

    pub fn delete(chat_id: Uuid, id: Uuid, seq: i64, commit_time: Option<DateTime<Utc>>) -> EventFrame {
        let text = json!({"type": "delete", "chat_id": chat_id, "seq": seq, "id": id}).to_string();
        EventFrame { chat_id, seq, kind: FrameKind::Delete, commit_time, subject: Some(id), text: text.into() }
    }

    pub fn typing(chat_id: Uuid, user_id: Uuid) -> EventFrame {
        let text = json!({"type": "typing", "chat_id": chat_id, "user_id": user_id}).to_string();
        EventFrame {
            chat_id,
            seq: 0,
            kind: FrameKind::Typing,
            commit_time: None,
            subject: Some(user_id),
            text: text.into(),
        }
    }

    pub fn receipt(p: &Participant, commit_time: Option<DateTime<Utc>>) -> EventFrame {
        let text = json!({
            "type": "receipt", "chat_id": p.chat_id, "user_id": p.user_id,
            "delivered_seq": p.delivered_seq, "read_seq": p.read_seq,
        })
        .to_string();
        EventFrame {
            chat_id: p.chat_id,
            seq: p.delivered_seq.max(p.read_seq),
            kind: FrameKind::Receipt,
            commit_time,
            subject: Some(p.user_id),
            text: text.into(),
        }
    }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    RateLimited,
    Internal,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// Adds `ref` to an answer when the request had one.
pub fn with_ref(mut frame: Value, reference: &Option<Value>) -> String {
    if let (Some(r), Value::Object(map)) = (reference, &mut frame) {
        map.insert("ref".into(), r.clone());
    }
    frame.to_string()
}

/// `rate_limited`, saying when to try again.
pub fn rate_limited(
    message: &str,
    chat_id: Option<Uuid>,
    retry_after: std::time::Duration,
    reference: &Option<Value>,
) -> String {
    let mut frame = json!({
        "type": "error", "code": ErrorCode::RateLimited.as_str(), "message": message,
        "retry_after_ms": retry_after.as_millis().max(1) as u64,
    });
    if let (Some(c), Value::Object(map)) = (chat_id, &mut frame) {
        map.insert("chat_id".into(), json!(c));
    }
    with_ref(frame, reference)
}

pub fn error(code: ErrorCode, message: &str, chat_id: Option<Uuid>, reference: &Option<Value>) -> String {
    let mut frame = json!({"type": "error", "code": code.as_str(), "message": message});
    if let (Some(c), Value::Object(map)) = (chat_id, &mut frame) {
        map.insert("chat_id".into(), json!(c));
    }
    with_ref(frame, reference)
}

#[cfg(test)]
mod tests {
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
        let s = error(ErrorCode::Forbidden, "no", Some(Uuid::nil()), &Some(json!(1)));
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["code"], "forbidden");
        assert_eq!(v["ref"], 1);
        assert_eq!(v["chat_id"], Uuid::nil().to_string());
    }
}

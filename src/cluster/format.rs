//! The NATS message format between replicas: the one place that knows it.
//!
//! **Stream messages** (JetStream, subject per chat or the control subject)
//! carry an event the leader's pipeline handed on. A frame's payload is the
//! frame text exactly as clients receive it, so a follower re-encodes
//! nothing; the headers carry what the hub needs to route it:
//!
//! | header | meaning |
//! |---|---|
//! | `k` | kind: `m` message, `u` update, `d` delete, `r` receipt |
//! | `s` | seq (receipts: the higher watermark) |
//! | `u` | messages: the sender; deletes: the row id; receipts and control: the user |
//! | `t` | commit time, Unix microseconds |
//! | `op`, `c`, `in` | control subject: `revoke`, `member` (`in` = 1 or 0) or `resync`, and the chat |
//! | [`PUBLISHER`] | the replica that published it |
//! | [`SENT_AT`] | when this copy was handed to NATS, Unix microseconds |
//!
//! The JetStream message id ([`Outgoing::id`]) makes a replayed or retried
//! publish of the same change a duplicate JetStream drops.
//!
//! **Live messages** (NATS core, outside the stream): presence and typing,
//! JSON bodies with the sender's replica id `r`, on
//! `<live>.presence.{sync,hb,delta,typing}`.

use std::hash::{Hash, Hasher};

use async_nats::HeaderMap;
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Names;
use crate::protocol::{EventFrame, FrameKind};

/// Header naming the replica that published a message (for operators, and
/// for tests that check who published what).
pub const PUBLISHER: &str = "l";
/// Header with when this copy was handed to NATS (Unix microseconds): a
/// retry carries its own time.
pub const SENT_AT: &str = "at";

/// What the leader puts on the stream.
#[derive(Debug, Clone)]
pub enum StreamEvent {
    Frame(std::sync::Arc<EventFrame>),
    Revoke { chat_id: Uuid, user_id: Uuid },
    Member { chat_id: Uuid, user_id: Uuid, member: bool },
    Resync,
}

/// One JetStream message, ready to publish (kept until acknowledged, for
/// retries).
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    pub id: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

impl Outgoing {
    /// The headers of this copy, stamped with when it is handed to NATS.
    pub fn headers_sent_at(&self, at: std::time::SystemTime) -> HeaderMap {
        let mut headers = self.headers.clone();
        let micros = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros();
        headers.insert(SENT_AT, micros.to_string().as_str());
        headers
    }
}

fn kind_code(kind: FrameKind) -> &'static str {
    match kind {
        FrameKind::Message => "m",
        FrameKind::Update => "u",
        FrameKind::Delete => "d",
        FrameKind::Receipt => "r",
        FrameKind::Typing => "y",
    }
}

/// The stream message for one event, published by `publisher`.
pub fn encode(names: &Names, publisher: &str, event: StreamEvent) -> Outgoing {
    let mut headers = HeaderMap::new();
    headers.insert(PUBLISHER, publisher);
    // Control events are not replayed byte for byte: any id will do.
    let control = |headers: HeaderMap| Outgoing {
        subject: names.control(),
        id: Uuid::new_v4().to_string(),
        headers,
        payload: Bytes::new(),
    };
    match event {
        StreamEvent::Frame(f) => {
            let kind = kind_code(f.kind);
            headers.insert("k", kind);
            headers.insert("s", f.seq.to_string().as_str());
            if let Some(subject) = f.subject {
                headers.insert("u", subject.to_string().as_str());
            }
            if let Some(t) = f.commit_time {
                headers.insert("t", t.timestamp_micros().to_string().as_str());
            }
            let id = stream_id(&f);
            Outgoing {
                subject: names.chat(&f.chat_id),
                id,
                headers,
                payload: Bytes::copy_from_slice(f.text.as_bytes()),
            }
        }
        StreamEvent::Revoke { chat_id, user_id } => {
            headers.insert("op", "revoke");
            headers.insert("c", chat_id.to_string().as_str());
            headers.insert("u", user_id.to_string().as_str());
            control(headers)
        }
        StreamEvent::Member { chat_id, user_id, member } => {
            headers.insert("op", "member");
            headers.insert("c", chat_id.to_string().as_str());
            headers.insert("u", user_id.to_string().as_str());
            headers.insert("in", if member { "1" } else { "0" });
            control(headers)
        }
        StreamEvent::Resync => {
            headers.insert("op", "resync");
            control(headers)
        }
    }
}

/// The JetStream message id of a frame: the same change published again (a
/// retry, a new leader replaying the WAL) has the same id, and JetStream
/// drops it; two changes never share one. An insert is named by its chat
/// and seq (each seq is inserted once); any other change by its place in
/// the WAL, since the same row text can come again (an edit undone and
/// redone). Only a frame without a position (never published by the
/// pipeline) falls back to its text.
pub fn stream_id(f: &EventFrame) -> String {
    let kind = kind_code(f.kind);
    match (f.kind, f.position) {
        (FrameKind::Message, _) => format!("{kind}:{}:{}", f.chat_id, f.seq),
        (_, Some(p)) => format!("{kind}:{}:{}:{}:{}", f.chat_id, f.seq, p.commit_lsn, p.index),
        (_, None) => {
            let mut h = rustc_hash::FxHasher::default();
            f.text.as_str().hash(&mut h);
            format!("{kind}:{}:{}:{:016x}", f.chat_id, f.seq, h.finish())
        }
    }
}

/// A stream message a follower could not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("unreadable control message")]
    Control,
    #[error("message on an unexpected subject")]
    Subject,
    #[error("frame without a kind")]
    Kind,
    #[error("frame without a seq, or not UTF-8")]
    Frame,
}

/// Reads one stream message back into the event it carries.
pub fn decode(
    names: &Names,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<StreamEvent, FormatError> {
    let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    let uuid = |name: &str| header(name).and_then(|v| Uuid::parse_str(v).ok());
    if subject == names.control() {
        return match (header("op"), uuid("c"), uuid("u")) {
            (Some("revoke"), Some(chat_id), Some(user_id)) => Ok(StreamEvent::Revoke { chat_id, user_id }),
            (Some("member"), Some(chat_id), Some(user_id)) => {
                Ok(StreamEvent::Member { chat_id, user_id, member: header("in") == Some("1") })
            }
            (Some("resync"), _, _) => Ok(StreamEvent::Resync),
            _ => Err(FormatError::Control),
        };
    }
    let chat_id = subject
        .strip_prefix(&names.prefix)
        .and_then(|rest| rest.strip_prefix(".chat."))
        .and_then(|c| Uuid::parse_str(c).ok())
        .ok_or(FormatError::Subject)?;
    let kind = match header("k") {
        Some("m") => FrameKind::Message,
        Some("u") => FrameKind::Update,
        Some("d") => FrameKind::Delete,
        Some("r") => FrameKind::Receipt,
        _ => return Err(FormatError::Kind),
    };
    let seq = header("s").and_then(|s| s.parse::<i64>().ok()).ok_or(FormatError::Frame)?;
    let text = std::str::from_utf8(payload).map_err(|_| FormatError::Frame)?;
    let commit_time = header("t").and_then(|t| t.parse::<i64>().ok()).and_then(DateTime::<Utc>::from_timestamp_micros);
    Ok(StreamEvent::Frame(std::sync::Arc::new(EventFrame {
        chat_id,
        seq,
        kind,
        commit_time,
        subject: uuid("u"),
        text: Utf8Bytes::from(text),
        position: None,
    })))
}

/// What replicas tell each other about who is here, outside the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Live {
    /// A replica started: everyone answers with a heartbeat.
    Sync { replica: String },
    /// Everything a replica holds now: (chat, user) pairs.
    Heartbeat { replica: String, set: Vec<(Uuid, Uuid)> },
    /// One user came or went in one chat.
    Delta { replica: String, chat_id: Uuid, user_id: Uuid, online: bool },
    /// One user is typing in one chat.
    Typing { replica: String, chat_id: Uuid, user_id: Uuid },
}

/// The JSON body of a live message.
#[derive(Debug, Default, Serialize, Deserialize)]
struct LiveBody {
    r: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    set: Option<Vec<(Uuid, Uuid)>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    u: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on: Option<bool>,
}

/// Every live message of a slot's replicas.
pub fn live_subjects(names: &Names) -> String {
    format!("{}.presence.>", names.live)
}

impl Live {
    /// The sending replica.
    pub fn replica(&self) -> &str {
        match self {
            Live::Sync { replica }
            | Live::Heartbeat { replica, .. }
            | Live::Delta { replica, .. }
            | Live::Typing { replica, .. } => replica,
        }
    }

    /// Subject and body.
    pub fn encode(&self, names: &Names) -> (String, Bytes) {
        let (kind, body) = match self {
            Live::Sync { replica } => ("sync", LiveBody { r: replica.clone(), ..Default::default() }),
            Live::Heartbeat { replica, set } => {
                ("hb", LiveBody { r: replica.clone(), set: Some(set.clone()), ..Default::default() })
            }
            Live::Delta { replica, chat_id, user_id, online } => (
                "delta",
                LiveBody { r: replica.clone(), c: Some(*chat_id), u: Some(*user_id), on: Some(*online), set: None },
            ),
            Live::Typing { replica, chat_id, user_id } => {
                ("typing", LiveBody { r: replica.clone(), c: Some(*chat_id), u: Some(*user_id), ..Default::default() })
            }
        };
        // Serialising plain data cannot fail.
        let payload = serde_json::to_vec(&body).unwrap_or_default();
        (format!("{}.presence.{kind}", names.live), Bytes::from(payload))
    }

    /// Reads a live message; None for anything unreadable.
    pub fn decode(subject: &str, payload: &[u8]) -> Option<Live> {
        let body: LiveBody = serde_json::from_slice(payload).ok()?;
        let replica = body.r;
        Some(match subject.rsplit('.').next()? {
            "sync" => Live::Sync { replica },
            "hb" => Live::Heartbeat { replica, set: body.set.unwrap_or_default() },
            "delta" => Live::Delta { replica, chat_id: body.c?, user_id: body.u?, online: body.on == Some(true) },
            "typing" => Live::Typing { replica, chat_id: body.c?, user_id: body.u? },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn names() -> Names {
        Names::new("chat_relay")
    }

    fn round_trip(event: StreamEvent) -> (Outgoing, StreamEvent) {
        let out = encode(&names(), "replica-1", event);
        let back = decode(&names(), &out.subject, Some(&out.headers), &out.payload).unwrap();
        assert_eq!(out.headers.get(PUBLISHER).map(|v| v.as_str()), Some("replica-1"));
        (out, back)
    }

    #[test]
    fn frames_come_back_as_they_were_sent() {
        let (chat, user) = (Uuid::new_v4(), Uuid::new_v4());
        let t = DateTime::<Utc>::from_timestamp_micros(1_700_000_000_123_456);
        for kind in [FrameKind::Message, FrameKind::Update, FrameKind::Delete, FrameKind::Receipt] {
            let frame = EventFrame {
                chat_id: chat,
                seq: 42,
                kind,
                commit_time: t,
                subject: Some(user),
                text: Utf8Bytes::from(r#"{"type":"message","x":"\u0001"}"#),
                position: None,
            };
            let (out, back) = round_trip(StreamEvent::Frame(Arc::new(frame)));
            assert_eq!(out.subject, names().chat(&chat));
            let StreamEvent::Frame(f) = back else { panic!("{back:?}") };
            assert_eq!((f.chat_id, f.seq, f.kind, f.commit_time, f.subject), (chat, 42, kind, t, Some(user)));
            assert_eq!(f.text.as_str(), r#"{"type":"message","x":"\u0001"}"#);
        }
    }

    #[test]
    fn control_events_come_back_as_they_were_sent() {
        let (chat_id, user_id) = (Uuid::new_v4(), Uuid::new_v4());
        let (out, back) = round_trip(StreamEvent::Revoke { chat_id, user_id });
        assert_eq!(out.subject, names().control());
        assert!(matches!(back, StreamEvent::Revoke { chat_id: c, user_id: u } if c == chat_id && u == user_id));
        for member in [true, false] {
            let (_, back) = round_trip(StreamEvent::Member { chat_id, user_id, member });
            assert!(matches!(back, StreamEvent::Member { member: m, .. } if m == member));
        }
        assert!(matches!(round_trip(StreamEvent::Resync).1, StreamEvent::Resync));
    }

    /// Issue #17 item 4: an edit b, a, b: the second b is a change of its
    /// own, not a duplicate of the first.
    #[test]
    fn the_same_text_at_another_place_in_the_wal_has_another_id() {
        use crate::lsn::{Lsn, Position};
        let chat = Uuid::new_v4();
        let update = |index: u32| {
            StreamEvent::Frame(Arc::new(EventFrame {
                chat_id: chat,
                seq: 1,
                kind: FrameKind::Update,
                commit_time: None,
                subject: None,
                text: Utf8Bytes::from(r#"{"type":"update","content":"b"}"#),
                position: Some(Position { commit_lsn: Lsn(77), index }),
            }))
        };
        let id = |e| encode(&names(), "r", e).id;
        assert_ne!(id(update(0)), id(update(2)));
        assert_eq!(id(update(2)), id(update(2)), "a replay of the same change");
    }

    #[test]
    fn the_same_frame_has_the_same_id_and_another_frame_another() {
        let chat = Uuid::new_v4();
        let frame = |seq: i64, text: &str| {
            StreamEvent::Frame(Arc::new(EventFrame {
                chat_id: chat,
                seq,
                kind: FrameKind::Message,
                commit_time: None,
                subject: None,
                text: Utf8Bytes::from(text.to_string()),
                position: None,
            }))
        };
        let id = |e| encode(&names(), "r", e).id;
        assert_eq!(id(frame(1, "a")), id(frame(1, "a")));
        assert_ne!(id(frame(1, "a")), id(frame(2, "a")));
    }

    #[test]
    fn unreadable_messages_are_errors() {
        let n = names();
        let chat = n.chat(&Uuid::new_v4());
        assert_eq!(decode(&n, &n.control(), None, b"").unwrap_err(), FormatError::Control);
        assert_eq!(decode(&n, "elsewhere.chat.x", None, b"").unwrap_err(), FormatError::Subject);
        assert_eq!(decode(&n, &chat, None, b"{}").unwrap_err(), FormatError::Kind);
        let mut h = HeaderMap::new();
        h.insert("k", "m");
        assert_eq!(decode(&n, &chat, Some(&h), b"{}").unwrap_err(), FormatError::Frame);
        h.insert("s", "1");
        assert_eq!(decode(&n, &chat, Some(&h), &[0xff]).unwrap_err(), FormatError::Frame);
    }

    #[test]
    fn live_messages_round_trip() {
        let (c, u) = (Uuid::new_v4(), Uuid::new_v4());
        let r = "replica-9".to_string();
        for live in [
            Live::Sync { replica: r.clone() },
            Live::Heartbeat { replica: r.clone(), set: vec![(c, u), (u, c)] },
            Live::Heartbeat { replica: r.clone(), set: vec![] },
            Live::Delta { replica: r.clone(), chat_id: c, user_id: u, online: true },
            Live::Delta { replica: r.clone(), chat_id: c, user_id: u, online: false },
            Live::Typing { replica: r.clone(), chat_id: c, user_id: u },
        ] {
            let (subject, payload) = live.encode(&names());
            assert!(subject.starts_with("chat_relay_live.chat_relay.presence."), "{subject}");
            assert_eq!(Live::decode(&subject, &payload), Some(live));
        }
        assert_eq!(Live::decode("chat_relay_live.x.presence.delta", br#"{"r":"a"}"#), None);
        assert_eq!(Live::decode("chat_relay_live.x.presence.hb", b"not json"), None);
    }

    #[test]
    fn live_bodies_keep_the_format_replicas_already_speak() {
        let (c, u) = (Uuid::nil(), Uuid::nil());
        let (_, body) = Live::Delta { replica: "r".into(), chat_id: c, user_id: u, online: true }.encode(&names());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, serde_json::json!({"r": "r", "c": c.to_string(), "u": u.to_string(), "on": true}));
        let (_, body) = Live::Heartbeat { replica: "r".into(), set: vec![(c, u)] }.encode(&names());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, serde_json::json!({"r": "r", "set": [[c.to_string(), u.to_string()]]}));
    }
}

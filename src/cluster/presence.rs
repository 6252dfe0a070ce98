//! Presence and typing across replicas, over NATS core subjects (ephemeral:
//! nothing of this is stored; JetStream is for messages).
//!
//! Each replica publishes its users' presence changes and typing as they
//! happen, and a heartbeat with everything it holds every [`HEARTBEAT`]. A
//! replica that starts asks the others for theirs at once. A replica not
//! heard from for [`EXPIRE`] is taken as gone: its users go offline
//! everywhere (well within 10 s of its death).
//!
//! Subjects: `chat_relay_live.<slot>.presence.{delta,hb,sync,typing}` (outside
//! the JetStream stream's subjects), JSON bodies
//! with the sender's replica id `r`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Names;
use crate::hub::{Hub, PresenceOut};

pub const HEARTBEAT: Duration = Duration::from_secs(2);
pub const EXPIRE: Duration = Duration::from_secs(6);

/// Runs until `stop`.
/// `replica` is this process's id, as in [`super::publish`]'s headers.
pub async fn run(client: async_nats::Client, names: Names, replica: Uuid, hub: Arc<Hub>, stop: CancellationToken) {
    let me = replica.to_string();
    let subject = |kind: &str| format!("{}.presence.{kind}", names.live);
    let mut out = hub.presence_out();
    let mut incoming = match client.subscribe(format!("{}.presence.>", names.live)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to presence; presence stays local to this replica");
            return;
        }
    };
    let publish = |kind: &str, body: Value| {
        let (client, subject) = (client.clone(), subject(kind));
        async move {
            if let Err(e) = client.publish(subject, body.to_string().into()).await {
                tracing::debug!(error = %e, "presence publish failed");
            }
        }
    };
    let heartbeat = |hub: &Hub| {
        let set: Vec<[String; 2]> =
            hub.local_presence().into_iter().map(|(c, u)| [c.to_string(), u.to_string()]).collect();
        json!({"r": me, "set": set})
    };
    // Learn the others' sets now, not a heartbeat from now.
    publish("sync", json!({"r": me})).await;
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                publish("hb", heartbeat(&hub)).await;
                let now = Instant::now();
                let gone: Vec<String> = seen.iter().filter(|(_, t)| now - **t > EXPIRE).map(|(r, _)| r.clone()).collect();
                for r in gone {
                    tracing::info!(replica = r, "replica silent; its users go offline");
                    seen.remove(&r);
                    hub.remote_replace(&r, HashSet::new());
                }
            }
            o = out.recv() => match o {
                Some(PresenceOut::Changed(c, u, on)) => publish("delta", json!({"r": me, "c": c, "u": u, "on": on})).await,
                Some(PresenceOut::Typing(c, u)) => publish("typing", json!({"r": me, "c": c, "u": u})).await,
                None => return,
            },
            m = incoming.next() => {
                let Some(m) = m else { return };
                let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else { continue };
                let Some(r) = v["r"].as_str().filter(|r| *r != me) else { continue };
                let uuid = |k: &str| v[k].as_str().and_then(|s| Uuid::parse_str(s).ok());
                match m.subject.as_str().rsplit('.').next() {
                    Some("hb") => {
                        seen.insert(r.to_string(), Instant::now());
                        let set = v["set"].as_array().map(|a| a.iter().filter_map(|p| {
                            let c = Uuid::parse_str(p.get(0)?.as_str()?).ok()?;
                            let u = Uuid::parse_str(p.get(1)?.as_str()?).ok()?;
                            Some((c, u))
                        }).collect()).unwrap_or_default();
                        hub.remote_replace(r, set);
                    }
                    Some("delta") => {
                        seen.insert(r.to_string(), Instant::now());
                        if let (Some(c), Some(u)) = (uuid("c"), uuid("u")) {
                            hub.remote_set(r, c, u, v["on"].as_bool() == Some(true));
                        }
                    }
                    Some("typing") => {
                        if let (Some(c), Some(u)) = (uuid("c"), uuid("u")) {
                            hub.remote_typing(c, u);
                        }
                    }
                    Some("sync") => publish("hb", heartbeat(&hub)).await,
                    _ => {}
                }
            }
        }
    }
}

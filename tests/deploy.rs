//! The dashboard and the alert rules may only name metrics the relay really
//! exports: compared with a live `/metrics` scrape of the real binary.

mod support;

use std::collections::BTreeSet;

use support::{Db, Relay};

/// Every `chat_relay_…` name in `text`, with Prometheus' histogram suffixes
/// folded back onto their base name.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("chat_relay_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let mut name = &tail[..end];
        for suffix in ["_bucket", "_count", "_sum"] {
            if let Some(base) = name.strip_suffix(suffix) {
                name = base;
            }
        }
        names.insert(name.to_string());
        rest = &tail[end..];
    }
    names
}

fn exported(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_and_alerts_use_only_exported_metrics() {
    let db = Db::start().await;
    let relay = Relay::start(&db).await;
    let (status, scrape) = relay.get("/metrics").await;
    assert_eq!(status, 200);
    let live = exported(&scrape);
    for name in chat_relay::metrics::CONTRACT {
        assert!(live.contains(name), "contract metric {name} not exported:\n{scrape}");
    }
    // A single relay holds the slot: it is the leader.
    assert_eq!(relay.metric("chat_relay_leader").await, 1.0);

    let dashboard = include_str!("../deploy/grafana/chat-relay.json");
    let parsed: serde_json::Value = serde_json::from_str(dashboard).expect("dashboard is valid JSON");
    let panels = parsed["panels"].as_array().expect("dashboard has panels");
    assert!(
        panels.iter().all(|p| p["targets"].as_array().is_some_and(|t| !t.is_empty())),
        "every panel queries something"
    );
    let used = metric_names(dashboard);
    let missing: Vec<_> = used.difference(&live).collect();
    assert!(missing.is_empty(), "dashboard uses metrics the relay does not export: {missing:?}");
    // The dashboard covers what operators watch.
    for name in [
        "chat_relay_events_total",
        "chat_relay_commit_to_send_seconds",
        "chat_relay_replication_lag_bytes",
        "chat_relay_ws_connections",
        "chat_relay_duplicates_total",
        "chat_relay_seq_gaps_total",
        "chat_relay_slow_consumer_disconnects_total",
        "chat_relay_inbox_connections",
        "chat_relay_inbox_frames_total",
        "chat_relay_delivered_flushes_total",
    ] {
        assert!(used.contains(name), "dashboard lacks {name}");
    }

    let alerts = include_str!("../deploy/prometheus/alerts.yaml");
    let used = metric_names(alerts);
    let missing: Vec<_> = used.difference(&live).collect();
    assert!(missing.is_empty(), "alerts use metrics the relay does not export: {missing:?}");
    assert!(used.len() >= 6, "{used:?}");
}

#[test]
fn metric_name_scanner_folds_histogram_suffixes() {
    let names = metric_names(r#"rate(chat_relay_commit_to_send_seconds_bucket[5m]) + chat_relay_x_total{a="b"}"#);
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["chat_relay_commit_to_send_seconds", "chat_relay_x_total"]);
}

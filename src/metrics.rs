//! metrics: every Prometheus series the relay exports, named in one place.
//!
//! The names are part of the operating contract (dashboards and alerts read
//! them); [`install`] registers every one at zero so the series exist before
//! the first event. Elsewhere the code calls the small functions below, never
//! the `metrics` macros with a literal name.

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const EVENTS: &str = "chat_relay_events_total";
pub const DUPLICATES: &str = "chat_relay_duplicates_total";
pub const SEQ_GAPS: &str = "chat_relay_seq_gaps_total";
pub const LAG_BYTES: &str = "chat_relay_replication_lag_bytes";
pub const WS_CONNECTIONS: &str = "chat_relay_ws_connections";
pub const MESSAGES_SENT: &str = "chat_relay_messages_sent_total";
pub const SLOW_CONSUMERS: &str = "chat_relay_slow_consumer_disconnects_total";
pub const DELIVERED_FLUSHES: &str = "chat_relay_delivered_flushes_total";
pub const COMMIT_TO_SEND: &str = "chat_relay_commit_to_send_seconds";
pub const CATCHUPS: &str = "chat_relay_catchups_total";
pub const RATE_LIMITED: &str = "chat_relay_rate_limited_total";
pub const LEADER: &str = "chat_relay_leader";
pub const INBOX_CONNECTIONS: &str = "chat_relay_inbox_connections";
pub const INBOX_FRAMES: &str = "chat_relay_inbox_frames_total";
// Beyond the contract: operational detail.
pub const SLOT_RECREATED: &str = "chat_relay_slot_recreated_total";
pub const REPLICATION_ERRORS: &str = "chat_relay_replication_errors_total";
pub const GAPS_REPAIRED: &str = "chat_relay_seq_gaps_repaired_total";
pub const DEDUPE_CACHE: &str = "chat_relay_dedupe_cache_total";
pub const STREAMING: &str = "chat_relay_replication_streaming";
pub const READY: &str = "chat_relay_ready";
pub const JETSTREAM_PENDING: &str = "chat_relay_jetstream_pending";
pub const INBOX_ASKS: &str = "chat_relay_inbox_table_reads_total";

/// The contract's metric names, for tests and the dashboard check.
pub const CONTRACT: [&str; 14] = [
    EVENTS,
    DUPLICATES,
    SEQ_GAPS,
    LAG_BYTES,
    WS_CONNECTIONS,
    MESSAGES_SENT,
    SLOW_CONSUMERS,
    DELIVERED_FLUSHES,
    COMMIT_TO_SEND,
    CATCHUPS,
    RATE_LIMITED,
    LEADER,
    INBOX_CONNECTIONS,
    INBOX_FRAMES,
];

/// Installs the global Prometheus recorder and registers every series at zero.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(COMMIT_TO_SEND.to_string()),
            &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        )?
        .install_recorder()?;
    describe();
    for op in ["insert", "update", "delete"] {
        counter!(EVENTS, "op" => op).absolute(0);
    }
    for key in ["id", "client_generated_id", "seq"] {
        counter!(DUPLICATES, "key" => key).absolute(0);
    }
    for result in ["hit", "miss"] {
        counter!(DEDUPE_CACHE, "result" => result).absolute(0);
    }
    counter!(SEQ_GAPS).absolute(0);
    counter!(GAPS_REPAIRED).absolute(0);
    gauge!(LAG_BYTES).set(0.0);
    gauge!(WS_CONNECTIONS).set(0.0);
    counter!(MESSAGES_SENT).absolute(0);
    counter!(SLOW_CONSUMERS).absolute(0);
    counter!(DELIVERED_FLUSHES).absolute(0);
    counter!(CATCHUPS).absolute(0);
    counter!(RATE_LIMITED).absolute(0);
    counter!(SLOT_RECREATED).absolute(0);
    counter!(REPLICATION_ERRORS).absolute(0);
    gauge!(STREAMING).set(0.0);
    gauge!(READY).set(0.0);
    gauge!(LEADER).set(0.0);
    gauge!(JETSTREAM_PENDING).set(0.0);
    gauge!(INBOX_CONNECTIONS).set(0.0);
    counter!(INBOX_FRAMES).absolute(0);
    counter!(INBOX_ASKS).absolute(0);
    // Registering the histogram makes its (empty) buckets appear.
    let _ = histogram!(COMMIT_TO_SEND);
    // Resolve the per-frame and per-event series once, now that the recorder
    // exists: the macros look the name up in the registry on every call.
    let _ = hot();
    Ok(handle)
}

/// Handles for the series touched per event or per frame.
struct Hot {
    events: [Counter; 3],
    duplicates: [Counter; 3],
    cache_hit: Counter,
    cache_miss: Counter,
    messages_sent: Counter,
    inbox_frames: Counter,
    commit_to_send: Histogram,
    ws_connections: Gauge,
}

fn hot() -> &'static Hot {
    static HOT: OnceLock<Hot> = OnceLock::new();
    HOT.get_or_init(|| Hot {
        events: ["insert", "update", "delete"].map(|op| counter!(EVENTS, "op" => op)),
        duplicates: ["id", "client_generated_id", "seq"].map(|k| counter!(DUPLICATES, "key" => k)),
        cache_hit: counter!(DEDUPE_CACHE, "result" => "hit"),
        cache_miss: counter!(DEDUPE_CACHE, "result" => "miss"),
        messages_sent: counter!(MESSAGES_SENT),
        inbox_frames: counter!(INBOX_FRAMES),
        commit_to_send: histogram!(COMMIT_TO_SEND),
        ws_connections: gauge!(WS_CONNECTIONS),
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(EVENTS, "Row changes decoded from the WAL, by operation");
    describe_counter!(DUPLICATES, "Events dropped as duplicates, by the key that matched");
    describe_counter!(SEQ_GAPS, "Times a chat's seq skipped and the missing messages could not be found");
    describe_counter!(GAPS_REPAIRED, "Missing seqs filled from the database");
    describe_counter!(DEDUPE_CACHE, "Lookups in the duplicate-detection cache");
    describe_gauge!(LAG_BYTES, Unit::Bytes, "Server WAL end minus the slot's confirmed position");
    describe_gauge!(WS_CONNECTIONS, "Open WebSocket connections");
    describe_counter!(MESSAGES_SENT, "Event frames written to clients");
    describe_counter!(
        SLOW_CONSUMERS,
        "Connections closed with 4008: their socket took nothing for the slow-consumer time, or too much waited"
    );
    describe_counter!(CATCHUPS, "Subscriptions that fell behind and were caught up from the table");
    describe_counter!(RATE_LIMITED, "Frames refused with rate_limited and upgrades refused with 429");
    describe_counter!(DELIVERED_FLUSHES, "Batched delivered/read-marking writes");
    describe_histogram!(COMMIT_TO_SEND, Unit::Seconds, "Transaction commit time to event frame written");
    describe_counter!(SLOT_RECREATED, "Replication slot lost (dropped or invalidated) and recreated");
    describe_counter!(REPLICATION_ERRORS, "Replication stream failures that caused a reconnect");
    describe_gauge!(STREAMING, "1 while the replication stream runs (the slot is active), else 0");
    describe_gauge!(READY, "1 while streaming and the database answers (what /readyz reports), else 0");
    describe_gauge!(
        JETSTREAM_PENDING,
        "Replicas: events in the JetStream stream not yet delivered to this replica's consumer"
    );
    describe_gauge!(INBOX_CONNECTIONS, "Connections whose inbox is on");
    describe_counter!(INBOX_FRAMES, "Inbox frames (chat, chat_removed) written to clients");
    describe_counter!(
        INBOX_ASKS,
        "Chat summaries the inbox read from the table (counts after partial reads, newest rows after deletes, chats joined); none per event in steady state"
    );
    describe_gauge!(LEADER, "1 on the replica that holds the replication slot, else 0 (always 1 for a single relay)");
}

/// Counts the row changes of a committed transaction.
pub fn events_decoded(inserts: u64, updates: u64, deletes: u64) {
    for (i, n) in [inserts, updates, deletes].into_iter().enumerate() {
        if n > 0 {
            hot().events[i].increment(n);
        }
    }
}

/// Which key identified a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DupKey {
    Id = 0,
    ClientGeneratedId = 1,
    Seq = 2,
}

pub fn duplicate(key: DupKey) {
    hot().duplicates[key as usize].increment(1);
}

pub fn dedupe_cache(hit: bool) {
    if hit {
        hot().cache_hit.increment(1)
    } else {
        hot().cache_miss.increment(1)
    }
}

pub fn seq_gap() {
    counter!(SEQ_GAPS).increment(1);
}

pub fn gap_repaired(n: u64) {
    counter!(GAPS_REPAIRED).increment(n);
}

pub fn lag_bytes(bytes: i64) {
    gauge!(LAG_BYTES).set(bytes.max(0) as f64);
}

pub fn ws_connected() {
    hot().ws_connections.increment(1.0);
}

pub fn ws_disconnected() {
    hot().ws_connections.decrement(1.0);
}

pub fn messages_sent(n: u64) {
    hot().messages_sent.increment(n);
}

pub fn inbox_connections(n: usize) {
    gauge!(INBOX_CONNECTIONS).set(n as f64);
}

pub fn inbox_table_reads(n: u64) {
    counter!(INBOX_ASKS).increment(n);
}

pub fn inbox_frames(n: u64) {
    hot().inbox_frames.increment(n);
}

pub fn slow_consumer() {
    counter!(SLOW_CONSUMERS).increment(1);
}

pub fn rate_limited() {
    counter!(RATE_LIMITED).increment(1);
}

pub fn catchup() {
    counter!(CATCHUPS).increment(1);
}

pub fn delivered_flush() {
    counter!(DELIVERED_FLUSHES).increment(1);
}

pub fn commit_to_send(seconds: f64) {
    hot().commit_to_send.record(seconds);
}

pub fn slot_recreated() {
    counter!(SLOT_RECREATED).increment(1);
}

pub fn replication_errors() {
    counter!(REPLICATION_ERRORS).increment(1);
}

pub fn streaming(on: bool) {
    gauge!(STREAMING).set(if on { 1.0 } else { 0.0 });
}

pub fn jetstream_pending(n: u64) {
    gauge!(JETSTREAM_PENDING).set(n as f64);
}

pub fn leader(on: bool) {
    gauge!(LEADER).set(if on { 1.0 } else { 0.0 });
}

pub fn ready(on: bool) {
    gauge!(READY).set(if on { 1.0 } else { 0.0 });
}

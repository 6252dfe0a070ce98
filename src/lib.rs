//! chat-relay (layout doc written below once all modules exist)
pub mod config;
pub mod event;
pub mod metrics;
pub mod migrate;
pub mod pgconn;
pub mod pgoutput;
pub mod replication;
pub mod scratch;
pub mod sequencer;

//! Leadership through Postgres: whoever holds a session advisory lock on a
//! direct connection runs the replicator.
//!
//! The lock connection is checked every second. When that check fails (the
//! database went away, a pooler or the network dropped the session, the
//! server ended it) the replicator is stopped at once: without the lock,
//! another replica may already be streaming. The session sets
//! `idle_session_timeout`, so a leader that stops running (SIGSTOP, a frozen
//! VM) loses the lock within seconds instead of holding it forever; the
//! new leader then ends the old walsender, which would otherwise keep the
//! slot until `wal_sender_timeout`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::pgconn::ConnInfo;

/// How often the lock is tried, and its connection checked.
const EVERY: Duration = Duration::from_secs(1);
/// A leader silent this long loses its session (and the lock).
const IDLE_SESSION: &str = "5s";

/// Competes for leadership until `stop`; while leading, runs `lead(term)`,
/// cancelling `term` the moment leadership is lost.
pub async fn compete<F, Fut>(info: ConnInfo, slot: String, leading: Arc<AtomicBool>, stop: CancellationToken, lead: F)
where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    m::leader(false);
    loop {
        if stop.is_cancelled() {
            return;
        }
        match hold(&info, &slot, &leading, &stop, &lead).await {
            Ok(()) => {}
            Err(e) => tracing::debug!(error = %e, "leadership attempt failed"),
        }
        leading.store(false, Ordering::Release);
        m::leader(false);
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One connection: wait for the lock, lead while it holds.
async fn hold<F, Fut>(
    info: &ConnInfo,
    slot: &str,
    leading: &AtomicBool,
    stop: &CancellationToken,
    lead: &F,
) -> anyhow::Result<()>
where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let c = crate::pgconn::connect(info).await?;
    c.batch_execute(&format!("SET idle_session_timeout = '{IDLE_SESSION}'")).await?;
    let key = format!("chat_relay:{slot}");
    loop {
        let got: bool = c.query_one("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", &[&key]).await?.get(0);
        if got {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.cancelled() => return Ok(()),
        }
    }
    // The previous leader may be gone without its walsender noticing yet.
    let ended: i64 = match c
        .query_one(
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&slot],
        )
        .await
    {
        Ok(row) => row.get(0),
        Err(e) => {
            tracing::warn!(error = %e, "could not end the previous leader's walsender; waiting for it to time out");
            0
        }
    };
    tracing::info!(slot, ended_walsenders = ended, "leading: this replica holds the replication slot");
    leading.store(true, Ordering::Release);
    m::leader(true);
    let term = CancellationToken::new();
    let running = tokio::spawn(lead(term.clone()));
    let why = loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.cancelled() => break None,
        }
        match tokio::time::timeout(EVERY * 2, c.simple_query("SELECT 1")).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => break Some(e.to_string()),
            Err(_) => break Some("the lock connection did not answer within 2 s".to_string()),
        }
    };
    // Leadership ends here: nothing streams past this point.
    leading.store(false, Ordering::Release);
    m::leader(false);
    match why {
        // Lost: stop dead, confirming nothing (another replica may lead now).
        Some(why) => {
            running.abort();
            let _ = running.await;
            tracing::warn!(reason = why, "lost leadership; the replication stream stopped");
        }
        // Shutting down while still leading: drain and confirm as usual.
        None => {
            term.cancel();
            let _ = running.await;
        }
    }
    Ok(())
}

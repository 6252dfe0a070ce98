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
//!
//! Each time a replica takes the lock it starts a new *term*. The [`Lease`]
//! tells the JetStream publisher whether a term still leads: it is renewed
//! by every successful check and runs out after [`LEASE`], shorter than the
//! idle timeout after which the server can release the lock. A replica that
//! froze and wakes finds its lease run out before it can publish anything
//! queued; once its check fails the term is over and the publisher drops
//! what that term left (the next leader replays it from the slot).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::pgconn::ConnInfo;

/// How often the lock is tried, and its connection checked.
const EVERY: Duration = Duration::from_secs(1);
/// A leader silent this long loses its session (and the lock).
const IDLE_SESSION: &str = "5s";
/// How long a successful check vouches for the lock, counted from when the
/// check was sent: well under `IDLE_SESSION`, which the server counts from
/// when the check's answer was sent.
pub const LEASE: Duration = Duration::from_secs(3);

/// Whether a term may publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The lock was confirmed within [`LEASE`].
    Leading,
    /// Not confirmed lately (a slow check, or the process was stopped): wait.
    Unsure,
    /// The term ended (or never was): drop what it left.
    Over,
}

/// The current term and how long it is vouched for; shared between
/// [`compete`] and the publisher.
#[derive(Debug, Default)]
pub struct Lease {
    /// The term leading now; 0 while none is.
    live: AtomicU64,
    /// The last term begun.
    last: AtomicU64,
    until: Mutex<Option<Instant>>,
}

impl Lease {
    fn begin(&self, confirmed_at: Instant) -> u64 {
        let term = self.last.fetch_add(1, Ordering::AcqRel) + 1;
        self.set_until(Some(confirmed_at + LEASE));
        self.live.store(term, Ordering::Release);
        term
    }

    fn renew(&self, confirmed_at: Instant) {
        self.set_until(Some(confirmed_at + LEASE));
    }

    fn end(&self) {
        self.live.store(0, Ordering::Release);
        self.set_until(None);
    }

    fn set_until(&self, until: Option<Instant>) {
        if let Ok(mut u) = self.until.lock() {
            *u = until;
        }
    }

    /// Where `term` stands now.
    pub fn standing(&self, term: u64) -> Standing {
        if term == 0 || self.live.load(Ordering::Acquire) != term {
            return Standing::Over;
        }
        match self.until.lock() {
            Ok(u) if u.is_some_and(|u| Instant::now() < u) => Standing::Leading,
            _ => Standing::Unsure,
        }
    }

    /// Waits until `term` is [`Standing::Leading`] (true) or over (false).
    pub async fn leading(&self, term: u64, stop: &CancellationToken) -> bool {
        loop {
            match self.standing(term) {
                Standing::Leading => return true,
                Standing::Over => return false,
                Standing::Unsure => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                _ = stop.cancelled() => return false,
            }
        }
    }
}

/// Competes for leadership until `stop`; while leading, runs
/// `lead(cancel, term)` (`term` numbers this leadership in `lease`), and
/// stops it the moment leadership is lost.
pub async fn compete<F, Fut>(
    info: ConnInfo,
    slot: String,
    leading: Arc<AtomicBool>,
    lease: Arc<Lease>,
    stop: CancellationToken,
    lead: F,
) where
    F: Fn(CancellationToken, u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    m::leader(false);
    loop {
        if stop.is_cancelled() {
            return;
        }
        match hold(&info, &slot, &leading, &lease, &stop, &lead).await {
            Ok(()) => {}
            Err(e) => tracing::debug!(error = %e, "leadership attempt failed"),
        }
        lease.end();
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
    lease: &Lease,
    stop: &CancellationToken,
    lead: &F,
) -> anyhow::Result<()>
where
    F: Fn(CancellationToken, u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let c = crate::pgconn::connect(info).await?;
    c.batch_execute(&format!("SET idle_session_timeout = '{IDLE_SESSION}'")).await?;
    let key = format!("chat_relay:{slot}");
    let taken_at = loop {
        let asked = Instant::now();
        let got: bool = c.query_one("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", &[&key]).await?.get(0);
        if got {
            break asked;
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.cancelled() => return Ok(()),
        }
    };
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
    let term = lease.begin(taken_at);
    tracing::info!(slot, term, ended_walsenders = ended, "leading: this replica holds the replication slot");
    leading.store(true, Ordering::Release);
    m::leader(true);
    let cancel = CancellationToken::new();
    let mut running = tokio::spawn(lead(cancel.clone(), term));
    let why = loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.cancelled() => break None,
        }
        if let Err(why) = check(&c, lease).await {
            break Some(why);
        }
    };
    // Leadership ends here: nothing streams past this point.
    leading.store(false, Ordering::Release);
    m::leader(false);
    let lost = match why {
        Some(why) => Some(why),
        // Shutting down while still leading: drain and confirm as usual,
        // still checking the lock (the lease vouches for the publishing).
        None => {
            cancel.cancel();
            loop {
                tokio::select! {
                    _ = &mut running => break None,
                    _ = tokio::time::sleep(EVERY) => {}
                }
                if let Err(why) = check(&c, lease).await {
                    break Some(why);
                }
            }
        }
    };
    // Lost: stop dead, confirming nothing (another replica may lead now);
    // the publisher drops what this term left unpublished.
    lease.end();
    if let Some(why) = lost {
        running.abort();
        let _ = running.await;
        tracing::warn!(reason = why, term, "lost leadership; the replication stream stopped");
    }
    Ok(())
}

/// One check of the lock connection; renews the lease when it answers.
async fn check(c: &tokio_postgres::Client, lease: &Lease) -> Result<(), String> {
    let asked = Instant::now();
    match tokio::time::timeout(EVERY * 2, c.simple_query("SELECT 1")).await {
        Ok(Ok(_)) => {
            lease.renew(asked);
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the lock connection did not answer within 2 s".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_term_leads_while_vouched_for_waits_after_and_is_over_once_ended() {
        let lease = Lease::default();
        assert_eq!(lease.standing(0), Standing::Over, "no term yet");
        let t1 = lease.begin(Instant::now());
        assert_eq!(lease.standing(t1), Standing::Leading);
        // Not vouched for since long ago (a frozen process waking up).
        lease.renew(Instant::now() - LEASE * 2);
        assert_eq!(lease.standing(t1), Standing::Unsure);
        lease.renew(Instant::now());
        assert_eq!(lease.standing(t1), Standing::Leading);
        lease.end();
        assert_eq!(lease.standing(t1), Standing::Over);
        // A later term is a different one: the first stays over.
        let t2 = lease.begin(Instant::now());
        assert_ne!(t1, t2);
        assert_eq!((lease.standing(t1), lease.standing(t2)), (Standing::Over, Standing::Leading));
    }

    #[tokio::test]
    async fn waiting_ends_when_the_term_is_confirmed_or_over() {
        let lease = Arc::new(Lease::default());
        let stop = CancellationToken::new();
        let term = lease.begin(Instant::now() - LEASE * 2);
        let waiter = {
            let (lease, stop) = (lease.clone(), stop.clone());
            tokio::spawn(async move { lease.leading(term, &stop).await })
        };
        lease.renew(Instant::now());
        assert!(waiter.await.unwrap());
        lease.renew(Instant::now() - LEASE * 2);
        let waiter = {
            let (lease, stop) = (lease.clone(), stop.clone());
            tokio::spawn(async move { lease.leading(term, &stop).await })
        };
        lease.end();
        assert!(!waiter.await.unwrap());
    }
}

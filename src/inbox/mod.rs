//! inbox: each online user's conversation list, live (protocol 1.2).
//!
//! While a connection has its inbox on, the user's list is held here: read
//! once from the table ([`Store::inbox_list`]: every chat of the user with
//! its last seq, activity, watermarks and whether anything is unread), then
//! kept exact by the same stream that feeds the hub ([`Inbox::frame`],
//! [`Inbox::member`], called by the local fan-out, so replicas do it from
//! the stream they already consume). Counts and rows the stream cannot
//! tell are asked of the table by one task in batches ([`state`] says
//! when); in steady state (new messages, reads to the end, deliveries)
//! nothing is asked.
//!
//! Each change yields one `chat` frame per user, encoded once and offered
//! to each of the user's inbox connections ([`Conn::inbox_frame`]): taken
//! at once when the connection is parked with nothing waiting, like a live
//! frame (and written by this thread once it lets go of the inbox's lock),
//! else left beside its frame queue, where the latest per chat waits, so a
//! client that is behind gets merged summaries and nothing stalls.
//!
//! Pages ([`Pager`]) are cut from the list as it stood when the inbox
//! started, so every chat is listed once across `next` cursors however
//! activity moves meanwhile; the summaries on a page are current.

pub mod state;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::hub::{Conn, ConnId, Hub};
use crate::metrics as m;
use crate::protocol::{rfc3339_micros, ChatFrameHead, ChatSummary, EventFrame, FrameKind, ServerFrame};
use crate::store::{Store, StoreError};
use state::{Ask, Change, Micros, Out, State, Summary};

/// Chats of one user the inbox holds, at most.
pub const MAX_CHATS: usize = 100_000;
/// Questions per statement.
const BATCH: usize = 500;
/// How long a page waits for its answers before giving up.
const PAGE_PATIENCE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the user is in more than {MAX_CHATS} chats")]
    TooMany,
    #[error("the database did not answer in time")]
    Timeout,
    #[error("cursor not understood")]
    BadCursor,
}

struct Inner {
    state: State,
    /// Connections whose inbox is on, per user.
    conns: HashMap<Uuid, Vec<Arc<Conn>>>,
}

impl Inner {
    /// Sets the gauge; under the lock, so the last writer saw the last change.
    fn count_connections(&self) {
        m::inbox_connections(self.conns.values().map(Vec::len).sum());
    }
}

/// The inbox of this process.
pub struct Inbox {
    inner: Mutex<Inner>,
    store: Store,
    /// The newest seq streamed per chat.
    hub: Arc<Hub>,
    asks: mpsc::UnboundedSender<Job>,
    /// Signalled after answers were applied.
    answered: Notify,
}

impl Inbox {
    /// The inbox and the task that asks the table (run it until `stop`).
    pub fn new(
        store: Store,
        hub: Arc<Hub>,
        stop: CancellationToken,
    ) -> (Arc<Inbox>, impl std::future::Future<Output = ()>) {
        let (tx, rx) = mpsc::unbounded_channel::<Job>();
        let inbox = Arc::new(Inbox {
            inner: Mutex::new(Inner { state: State::default(), conns: HashMap::new() }),
            store,
            hub,
            asks: tx,
            answered: Notify::new(),
        });
        let task = asker(Arc::downgrade(&inbox), rx, stop);
        (inbox, task)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding it leaves plain data; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state, then sends what it produced.
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut inner = self.lock();
        let t = f(&mut inner.state);
        let writes = self.dispatch(&mut inner);
        drop(inner);
        writes.write();
        t
    }

    /// Offers the frames the state produced; the connections that took some
    /// are written once the caller has released the lock.
    fn dispatch(&self, inner: &mut Inner) -> Writes {
        let (outs, asks) = inner.state.drain();
        if !asks.is_empty() {
            m::inbox_table_reads(asks.len() as u64);
            let _ = self.asks.send(Job::Now(asks));
        }
        let retries = inner.state.drain_retries();
        if !retries.is_empty() {
            m::inbox_table_reads(retries.len() as u64);
            let _ = self.asks.send(Job::Later(retries));
        }
        // The chat's part of a frame is encoded once per change, the rest
        // once per user (shared by the user's connections); nothing for a
        // user without an inbox connection (a page being answered).
        let mut heads: HashMap<Uuid, ChatFrameHead> = HashMap::new();
        let mut writes = Vec::new();
        for out in outs {
            let (Out::Chat { user, chat } | Out::Removed { user, chat }) = out;
            let Some(conns) = inner.conns.get(&user).filter(|c| !c.is_empty()) else { continue };
            let text = match out {
                Out::Chat { .. } => {
                    let Some(s) = inner.state.summary(&user, &chat) else { continue };
                    let head = heads
                        .entry(chat)
                        .or_insert_with(|| ChatFrameHead::new(chat, s.last_seq, s.last.as_deref(), s.at));
                    head.frame(s.unread, s.read, s.delivered, inner.state.unread_chats(&user))
                }
                Out::Removed { .. } => ServerFrame::ChatRemoved { chat_id: chat }.encode(None),
            };
            for c in conns {
                if c.inbox_frame(chat, text.clone()) {
                    writes.push(c.clone());
                }
            }
        }
        Writes(writes)
    }

    /// Whether events of this chat matter to an inbox here.
    pub fn wants(&self, chat: &Uuid) -> bool {
        self.lock().state.wants(chat)
    }

    /// A frame the stream produced (message, update, delete, receipt).
    pub fn frame(&self, frame: &EventFrame) {
        if !self.wants(&frame.chat_id) {
            return;
        }
        let Some(change) = change_of(frame) else { return };
        self.with(|s| s.apply(change));
    }

    /// The user is (now) a participant of the chat, or no longer one.
    pub fn member(&self, chat: Uuid, user: Uuid, member: bool) {
        // Every join and leave is noted (a list read a moment later may not
        // show it yet), whether or not an inbox here cares now.
        self.with(|s| s.apply(Change::Member { chat, user, member }));
    }

    /// The stream lost continuity: every held list is read again.
    pub fn resync(self: &Arc<Self>) {
        let users = self.with(|s| s.resync());
        for user in users {
            let inbox = self.clone();
            tokio::spawn(async move {
                if let Err(e) = inbox.load(user, true).await {
                    tracing::warn!(%user, error = %e, "inbox: reading a list again after a resync failed");
                }
            });
        }
    }

    /// Holds the user's list, reading it when nobody here holds it yet.
    async fn open(&self, user: Uuid) -> Result<(), InboxError> {
        if self.with(|s| s.hold(user)) {
            return Ok(());
        }
        self.load(user, false).await
    }

    async fn load(&self, user: Uuid, replace: bool) -> Result<(), InboxError> {
        for _ in 0..5 {
            let id = self.with(|s| s.begin_load());
            let listed = match self.store.inbox_list(user, MAX_CHATS as i64 + 1).await {
                Ok(l) if l.len() > MAX_CHATS => {
                    self.with(|s| s.abort_load(id));
                    return Err(InboxError::TooMany);
                }
                Ok(mut l) => {
                    for item in &mut l {
                        item.streamed = self.hub.newest(&item.chat);
                    }
                    l
                }
                Err(e) => {
                    self.with(|s| s.abort_load(id));
                    return Err(e.into());
                }
            };
            if self.with(|s| s.install(id, user, listed, replace)).is_ok() {
                return Ok(());
            }
        }
        Err(InboxError::Timeout)
    }

    fn close(&self, user: Uuid) {
        self.with(|s| s.release(user));
    }

    /// Exact summaries of `chats` (those the user is still in), waiting for
    /// the table where needed; with `forget`, inbox frames of those chats
    /// not taken yet by that connection are dropped (the answer supersedes
    /// them).
    async fn summaries(
        &self,
        user: Uuid,
        chats: &[Uuid],
        forget: Option<&Conn>,
    ) -> Result<(Vec<Summary>, u32), InboxError> {
        let deadline = tokio::time::Instant::now() + PAGE_PATIENCE;
        loop {
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            let done = self.with(|s| {
                let missing = s.missing(user, chats);
                if !s.badge_certain(&user) {
                    s.ask_uncertain(user);
                    return None;
                }
                if !missing.is_empty() {
                    return None;
                }
                let list: Vec<Summary> = chats.iter().filter_map(|c| s.summary(&user, c)).collect();
                if let Some(conn) = forget {
                    conn.inbox_forget(Some(chats));
                }
                Some((list, s.unread_chats(&user)))
            });
            if let Some(done) = done {
                return Ok(done);
            }
            if tokio::time::timeout_at(deadline, answered).await.is_err() {
                return Err(InboxError::Timeout);
            }
        }
    }
}

/// One connection's inbox: whether it is on, and the rest of the list as it
/// stood when it started.
#[derive(Debug, Default)]
pub struct Pager {
    on: bool,
    /// Chats not listed yet, in list order, and the cursor that continues them.
    rest: Vec<(Micros, Uuid)>,
    cursor: Option<String>,
}

/// A page, encoded.
pub struct Page {
    pub text: Utf8Bytes,
}

impl Pager {
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// `inbox` without `before`: (re)starts this connection's inbox.
    pub async fn start(
        &mut self,
        inbox: &Inbox,
        conn: &Arc<Conn>,
        limit: usize,
        reference: Option<&serde_json::Value>,
    ) -> Result<Page, InboxError> {
        self.stop(inbox, conn);
        inbox.open(conn.user_id).await?;
        // The list is cut and the connection attached at one moment: every
        // later change reaches it as a frame, after this answer.
        let order = {
            let mut inner = inbox.lock();
            let order = inner.state.order(&conn.user_id);
            conn.inbox_forget(None);
            inner.conns.entry(conn.user_id).or_default().push(conn.clone());
            inner.count_connections();
            order
        };
        self.on = true;
        self.rest = order;
        self.cursor = None;
        self.next_page(inbox, conn, limit, reference).await
    }

    /// `inbox` with `before`.
    pub async fn more(
        &mut self,
        inbox: &Inbox,
        conn: &Arc<Conn>,
        before: &str,
        limit: usize,
        reference: Option<&serde_json::Value>,
    ) -> Result<Page, InboxError> {
        if self.on && self.cursor.as_deref() == Some(before) {
            return self.next_page(inbox, conn, limit, reference).await;
        }
        // A cursor of another connection, or of an inbox since stopped:
        // continue after it in today's order.
        let after = parse_cursor(before).ok_or(InboxError::BadCursor)?;
        let user = conn.user_id;
        inbox.open(user).await?;
        let order = inbox.lock().state.order(&user);
        let rest: Vec<(Micros, Uuid)> =
            order.into_iter().filter(|(at, c)| *at < after.0 || (*at == after.0 && *c > after.1)).collect();
        let mut once = Pager { on: false, rest, cursor: None };
        let page = once.next_page(inbox, conn, limit, reference).await;
        // (This connection's own pages, if its inbox is on, go on as they were.)
        inbox.close(user);
        page
    }

    async fn next_page(
        &mut self,
        inbox: &Inbox,
        conn: &Arc<Conn>,
        limit: usize,
        reference: Option<&serde_json::Value>,
    ) -> Result<Page, InboxError> {
        let user = conn.user_id;
        // Chats the user left meanwhile are skipped.
        let take: Vec<(Micros, Uuid)> = {
            let inner = inbox.lock();
            let mut take = Vec::with_capacity(limit);
            let mut used = 0;
            for item in &self.rest {
                used += 1;
                if inner.state.has_chat(&user, &item.1) {
                    take.push(*item);
                    if take.len() == limit {
                        break;
                    }
                }
            }
            self.rest.drain(..used);
            if self.rest.is_empty() {
                // Not kept at capacity once every page is out.
                self.rest = Vec::new();
            }
            take
        };
        let chats: Vec<Uuid> = take.iter().map(|(_, c)| *c).collect();
        let forget = self.on.then_some(&**conn);
        let (list, badge) = inbox.summaries(user, &chats, forget).await?;
        let next = match (self.rest.is_empty(), take.last()) {
            (false, Some((at, chat))) => Some(format!("{at}_{chat}")),
            _ => None,
        };
        if self.on {
            self.cursor = next.clone();
        }
        let wire: Vec<ChatSummary> = list.iter().map(wire).collect();
        let frame = ServerFrame::Inbox { chats: &wire, next: next.as_deref(), unread_chats: badge };
        Ok(Page { text: frame.encode(reference) })
    }

    /// `inbox_off`, or the connection ends.
    pub fn stop(&mut self, inbox: &Inbox, conn: &Conn) {
        if !std::mem::take(&mut self.on) {
            return;
        }
        self.rest = Vec::new();
        self.cursor = None;
        let writes = {
            let mut inner = inbox.lock();
            let id: ConnId = conn.id;
            if let Some(list) = inner.conns.get_mut(&conn.user_id) {
                list.retain(|c| c.id != id);
                if list.is_empty() {
                    inner.conns.remove(&conn.user_id);
                }
            }
            inner.state.release(conn.user_id);
            let writes = inbox.dispatch(&mut inner);
            inner.count_connections();
            writes
        };
        writes.write();
        conn.inbox_forget(None);
    }
}

/// Connections holding inbox frames to write: written once the inbox's
/// lock is released, so no socket write ever waits under it (the pipeline
/// asks the inbox about every frame).
#[must_use]
struct Writes(Vec<Arc<Conn>>);

impl Writes {
    fn write(self) {
        for c in self.0 {
            c.flush();
        }
    }
}

fn parse_cursor(cursor: &str) -> Option<(Micros, Uuid)> {
    let (at, chat) = cursor.split_once('_')?;
    Some((at.parse().ok()?, Uuid::parse_str(chat).ok()?))
}

fn wire(s: &Summary) -> ChatSummary<'_> {
    ChatSummary {
        chat_id: s.chat,
        last_seq: s.last_seq,
        last_message: s.last.as_deref(),
        last_activity: rfc3339_micros(s.at),
        unread: s.unread,
        read_seq: s.read,
        delivered_seq: s.delivered,
    }
}

/// The parts of an event frame a summary needs, read from its text (the
/// same on every replica: followers have only the text).
fn change_of(frame: &EventFrame) -> Option<Change> {
    #[derive(Deserialize)]
    struct Row<'a> {
        #[serde(borrow)]
        message: &'a RawValue,
    }
    #[derive(Deserialize)]
    struct Created {
        created_at: Option<String>,
    }
    #[derive(Deserialize)]
    struct Marks {
        delivered_seq: i64,
        read_seq: i64,
    }
    let chat = frame.chat_id;
    let row = || -> Option<(Micros, Arc<RawValue>)> {
        let r: Row = serde_json::from_str(frame.text.as_str()).ok()?;
        let created: Created = serde_json::from_str(r.message.get()).ok()?;
        let at = created
            .created_at
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.timestamp_micros())
            .or_else(|| frame.commit_time.map(|t| t.timestamp_micros()))
            .unwrap_or(0);
        Some((at, Arc::from(r.message.to_owned())))
    };
    match frame.kind {
        FrameKind::Message => {
            let (at, row) = row()?;
            Some(Change::Insert { chat, seq: frame.seq, sender: frame.subject, at, row })
        }
        FrameKind::Update => {
            let (at, row) = row()?;
            Some(Change::Update { chat, seq: frame.seq, at, row })
        }
        FrameKind::Delete => Some(Change::Delete { chat, seq: frame.seq }),
        FrameKind::Receipt => {
            let marks: Marks = serde_json::from_str(frame.text.as_str()).ok()?;
            Some(Change::Marks { chat, user: frame.subject?, read: marks.read_seq, delivered: marks.delivered_seq })
        }
        FrameKind::Typing => None,
    }
}

/// Work for the asker.
enum Job {
    Now(Vec<Ask>),
    /// The table was behind the stream: ask again after [`RETRY_AFTER`].
    Later(Vec<Ask>),
}

const RETRY_AFTER: Duration = Duration::from_millis(20);

/// Asks the table, in batches, until `stop`; retries while it is away.
async fn asker(inbox: std::sync::Weak<Inbox>, mut rx: mpsc::UnboundedReceiver<Job>, stop: CancellationToken) {
    let mut pending: Vec<Ask> = Vec::new();
    let mut later: Vec<Ask> = Vec::new();
    let mut later_at: Option<tokio::time::Instant> = None;
    let take = |job: Job, pending: &mut Vec<Ask>, later: &mut Vec<Ask>, at: &mut Option<tokio::time::Instant>| match job
    {
        Job::Now(asks) => pending.extend(asks),
        Job::Later(asks) => {
            later.extend(asks);
            at.get_or_insert_with(|| tokio::time::Instant::now() + RETRY_AFTER);
        }
    };
    loop {
        if pending.is_empty() {
            let due = later_at;
            tokio::select! {
                got = rx.recv() => match got {
                    Some(job) => take(job, &mut pending, &mut later, &mut later_at),
                    None => return,
                },
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                    pending.append(&mut later);
                    later_at = None;
                }
                _ = stop.cancelled() => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            take(job, &mut pending, &mut later, &mut later_at);
        }
        if pending.is_empty() {
            continue;
        }
        let Some(inbox) = inbox.upgrade() else { return };
        let batch: Vec<Ask> = pending.drain(..pending.len().min(BATCH)).collect();
        match inbox.store.inbox_answers(batch.clone()).await {
            Ok(answers) => {
                inbox.with(|s| {
                    for a in answers {
                        s.answer(a);
                    }
                });
                inbox.answered.notify_waiters();
            }
            Err(e) => {
                tracing::warn!(error = %e, asks = batch.len(), "inbox: reading summaries failed; retrying");
                pending.splice(0..0, batch);
                drop(inbox);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
